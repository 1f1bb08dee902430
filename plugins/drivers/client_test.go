package drivers

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/corral-dev/corral/plugins/drivers/proto"
	"github.com/corral-dev/corral/structs"
)

func TestErrorMapping(t *testing.T) {
	for _, sentinel := range []error{ErrTaskNotFound, ErrTaskExists, ErrInvalidConfig, ErrNotSupported, ErrTaskNotRunning, context.Canceled} {
		t.Run(sentinel.Error(), func(t *testing.T) {
			orig := fmt.Errorf("%w: task %q", sentinel, "k1")
			got := fromStatus(toStatus(orig))
			if !errors.Is(got, sentinel) {
				t.Errorf("errors.Is(%v, %v) = false after the round trip", got, sentinel)
			}
			if got.Error() != orig.Error() {
				t.Errorf("message = %q, want %q", got, orig)
			}
		})
	}
	plain := fromStatus(toStatus(errors.New("disk on fire")))
	for _, s := range []error{ErrTaskNotFound, ErrTaskExists, ErrInvalidConfig, ErrNotSupported, ErrTaskNotRunning} {
		if errors.Is(plain, s) {
			t.Errorf("a plain error came back as %v", s)
		}
	}
	if plain.Error() != "disk on fire" {
		t.Errorf("plain error = %q", plain)
	}
	// A method the plugin does not know (an older plugin) is "not supported".
	unknown := fromStatus(status.Error(codes.Unimplemented, "unknown method Exec"))
	if !errors.Is(unknown, ErrNotSupported) || !strings.Contains(unknown.Error(), "unknown method Exec") {
		t.Errorf("Unimplemented = %v, want ErrNotSupported with the message", unknown)
	}
}

func TestConversionsRoundTrip(t *testing.T) {
	started := time.Now().Add(-time.Minute)
	cfg := &TaskConfig{
		ID: "k1", SessionID: "s1", Hostname: "main1", Image: "img", Command: []string{"sh", "-c", "x"},
		Env: map[string]string{"A": "1"}, WorkDir: "/w", TaskDir: "/t",
		Resources:  structs.Slots{structs.SlotCPU: 1500, structs.SlotMem: structs.Whole(1 << 20)},
		StdoutPath: "/o", StderrPath: "/e", User: "nobody",
		RootFS: "/images/abc", NetNSPath: "/run/netns/k1",
		ImageConfig: &ImageConfig{Entrypoint: []string{"/init"}, Cmd: []string{"serve"}, Env: []string{"A=1"}, WorkingDir: "/app", User: "1000:1000"},
		Mounts: []Mount{{Source: "/launch", Destination: "/corral/launch", ReadOnly: true},
			{Source: "/vols/alice/data", Destination: "/data", Volume: true, Owner: &MountOwner{UID: 65534, GID: 65534}}},
	}
	if got := taskConfigFromProto(taskConfigToProto(cfg)); !reflect.DeepEqual(got, cfg) {
		t.Errorf("TaskConfig round trip = %+v, want %+v", got, cfg)
	}
	if taskConfigFromProto(taskConfigToProto(nil)) != nil {
		t.Error("a nil TaskConfig came back non-nil")
	}
	h := &TaskHandle{Version: 2, Driver: "d", Config: cfg, State: TaskStateRunning, DriverState: []byte(`{"pid":1}`), StartedAt: started}
	gotH := taskHandleFromProto(taskHandleToProto(h))
	if !gotH.StartedAt.Equal(started) {
		t.Errorf("StartedAt = %v, want %v", gotH.StartedAt, started)
	}
	gotH.StartedAt = started
	if !reflect.DeepEqual(gotH, h) {
		t.Errorf("TaskHandle round trip = %+v, want %+v", gotH, h)
	}
	st := &TaskStatus{ID: "k1", State: TaskStateExited, StartedAt: started,
		ExitResult: &ExitResult{ExitCode: 137, Signal: 9, OOMKilled: true, Err: errors.New("boom")}}
	gotS := taskStatusFromProto(taskStatusToProto(st))
	if !gotS.CompletedAt.IsZero() || gotS.ExitResult.Err == nil || gotS.ExitResult.Err.Error() != "boom" ||
		gotS.ExitResult.ExitCode != 137 || gotS.ExitResult.Signal != 9 || !gotS.ExitResult.OOMKilled {
		t.Errorf("TaskStatus round trip = %+v (%+v)", gotS, gotS.ExitResult)
	}
}

func TestPluginLoggerFormat(t *testing.T) {
	var buf bytes.Buffer
	l := slog.New(pluginLogHandler(&buf, slog.LevelDebug))
	l.Warn("hello", "kernel_id", "k1")
	var m map[string]any
	if err := json.Unmarshal(buf.Bytes(), &m); err != nil {
		t.Fatal(err)
	}
	if m["@level"] != "warn" || m["@message"] != "hello" || m["kernel_id"] != "k1" {
		t.Errorf("log line = %s", buf.Bytes())
	}
	if _, err := time.Parse(hclogTimeFormat, fmt.Sprint(m["@timestamp"])); err != nil {
		t.Errorf("timestamp: %v", err)
	}
}

// infoServer answers PluginInfo with info, and Capabilities.
type infoServer struct {
	proto.UnimplementedDriverServer
	info *proto.PluginInfoResponse
}

func (s *infoServer) PluginInfo(context.Context, *proto.PluginInfoRequest) (*proto.PluginInfoResponse, error) {
	return s.info, nil
}

func (s *infoServer) Capabilities(context.Context, *proto.CapabilitiesRequest) (*proto.CapabilitiesResponse, error) {
	return &proto.CapabilitiesResponse{Exec: true}, nil
}

func TestNewClientChecksPluginInfo(t *testing.T) {
	tests := []struct {
		name string
		info *proto.PluginInfoResponse
		want string // "" for accepted
	}{
		{"ok", &proto.PluginInfoResponse{Type: PluginTypeDriver, Name: "x", ApiVersion: APIVersion}, ""},
		{"old API", &proto.PluginInfoResponse{Type: PluginTypeDriver, Name: "x", ApiVersion: "0.0.1"}, "API version 0.0.1, agent wants " + APIVersion},
		{"wrong type", &proto.PluginInfoResponse{Type: "device", Name: "x", ApiVersion: APIVersion}, `plugin type "device"`},
		{"no name", &proto.PluginInfoResponse{Type: PluginTypeDriver, ApiVersion: APIVersion}, "empty name"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			conn, srv := plugin.TestGRPCConn(t, func(s *grpc.Server) {
				proto.RegisterDriverServer(s, &infoServer{info: tc.info})
			})
			defer srv.Stop()
			defer conn.Close()
			c, err := NewClient(context.Background(), conn)
			if tc.want == "" {
				if err != nil || c.Name() != "x" || !c.Capabilities().Exec {
					t.Fatalf("NewClient = %v, %v", c, err)
				}
				return
			}
			if !errors.Is(err, ErrIncompatiblePlugin) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("NewClient: err = %v, want ErrIncompatiblePlugin saying %q", err, tc.want)
			}
		})
	}
}

// blockingDriver is a driver whose one task "t1" never exits; it counts
// the Waits whose context ended.
type blockingDriver struct {
	ExecNotSupported
	mu        sync.Mutex
	cancelled int
}

func (d *blockingDriver) Name() string { return "blocking" }
func (d *blockingDriver) Fingerprint(context.Context) (*Fingerprint, error) {
	return &Fingerprint{Health: HealthHealthy}, nil
}
func (d *blockingDriver) Capabilities() Capabilities { return Capabilities{} }
func (d *blockingDriver) Start(context.Context, *TaskConfig) (*TaskHandle, error) {
	return nil, ErrNotSupported
}

func (d *blockingDriver) Wait(ctx context.Context, id string) (<-chan *ExitResult, error) {
	if id != "t1" {
		return nil, fmt.Errorf("%w: %q", ErrTaskNotFound, id)
	}
	go func() {
		<-ctx.Done()
		d.mu.Lock()
		d.cancelled++
		d.mu.Unlock()
	}()
	return make(chan *ExitResult), nil
}

func (d *blockingDriver) Stop(context.Context, string, time.Duration, string) error { return nil }
func (d *blockingDriver) Destroy(context.Context, string, bool) error               { return nil }
func (d *blockingDriver) Inspect(_ context.Context, id string) (*TaskStatus, error) {
	return &TaskStatus{ID: id, State: TaskStateRunning}, nil
}
func (d *blockingDriver) Stats(context.Context, string) (*TaskStats, error) {
	return &TaskStats{Time: time.Now()}, nil
}
func (d *blockingDriver) Recover(context.Context, *TaskHandle) error { return nil }

func (d *blockingDriver) cancelledWaits() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cancelled
}

// connect serves d over a gRPC connection and returns a client whose
// plugin "exits" when exit is called.
func connect(t *testing.T, d Driver) (c *Client, exit func()) {
	t.Helper()
	conn, srv := plugin.TestGRPCConn(t, func(s *grpc.Server) { proto.RegisterDriverServer(s, newServer(d)) })
	t.Cleanup(func() {
		conn.Close()
		srv.Stop()
	})
	done, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	c, err := NewClient(done, conn)
	if err != nil {
		t.Fatal(err)
	}
	return c, cancel
}

func TestWaitCallerGivesUp(t *testing.T) {
	d := &blockingDriver{}
	c, _ := connect(t, d)
	if _, err := c.Wait(context.Background(), "nope"); !errors.Is(err, ErrTaskNotFound) {
		t.Errorf("Wait of an unknown task: err = %v, want ErrTaskNotFound", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ch, err := c.Wait(ctx, "t1")
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case res := <-ch:
		t.Errorf("Wait whose context ended yielded %+v", res)
	case <-time.After(200 * time.Millisecond):
	}
	// The plugin side's Wait ends too.
	deadline := time.Now().Add(5 * time.Second)
	for d.cancelledWaits() < 1 {
		if time.Now().After(deadline) {
			t.Fatal("the driver's Wait context did not end with the caller's")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestCallsFailOncePluginExited(t *testing.T) {
	c, exit := connect(t, &blockingDriver{})
	ch, err := c.Wait(context.Background(), "t1")
	if err != nil {
		t.Fatal(err)
	}
	exit()
	select {
	case res := <-ch:
		if res == nil || res.ExitCode != -1 || !errors.Is(res.Err, ErrPluginExited) {
			t.Errorf("pending Wait = %+v, want exit code -1 and ErrPluginExited", res)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("pending Wait hangs after the plugin exited")
	}
	select {
	case <-c.Done():
	default:
		t.Error("Done is not closed")
	}
	if _, err := c.Inspect(context.Background(), "t1"); !errors.Is(err, ErrPluginExited) || !strings.Contains(err.Error(), `driver "blocking"`) {
		t.Errorf("Inspect: err = %v, want ErrPluginExited naming the driver", err)
	}
	if _, err := c.Exec(context.Background(), "t1", &ExecOptions{Command: []string{"true"}, Stdin: strings.NewReader("x")}); !errors.Is(err, ErrPluginExited) {
		t.Errorf("Exec: err = %v, want ErrPluginExited", err)
	}
}

// TestExecStdinOfNoInterest: an exec driver that does not read stdin must
// not block the stream, and a stdin that never ends must not block Exec.
func TestExecStdinNeverEnds(t *testing.T) {
	c, _ := connect(t, &echoDriver{})
	pr, pw := io.Pipe()
	defer pw.Close()
	var out bytes.Buffer
	go func() { _, _ = pw.Write([]byte("hello ")) }()
	done := make(chan struct{})
	var code int
	var err error
	go func() {
		defer close(done)
		code, err = c.Exec(context.Background(), "t1", &ExecOptions{Command: []string{"x"}, Stdin: pr, Stdout: &out})
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Exec blocks on a stdin that never ends")
	}
	if err != nil || code != 3 || out.String() != "hello " {
		t.Errorf("Exec = %d, %v, stdout %q; want 3 and the first stdin chunk", code, err, out.String())
	}
}

// echoDriver's Exec copies the first stdin chunk to stdout and exits 3.
type echoDriver struct{ blockingDriver }

func (d *echoDriver) Name() string { return "echo" }
func (d *echoDriver) Exec(_ context.Context, _ string, opts *ExecOptions) (int, error) {
	buf := make([]byte, 64)
	n, err := opts.Stdin.Read(buf)
	if err != nil {
		return -1, err
	}
	_, _ = opts.Stdout.Write(buf[:n])
	return 3, nil
}

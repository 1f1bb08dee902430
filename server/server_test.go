package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/corral-dev/corral/agent"
	"github.com/corral-dev/corral/api"
	execdriver "github.com/corral-dev/corral/drivers/exec"
	"github.com/corral-dev/corral/plugins/drivers"
	"github.com/corral-dev/corral/server"
	"github.com/corral-dev/corral/structs"
)

type cluster struct {
	srv    *server.Server
	agent  *agent.Agent
	client *api.Client
	addr   string
	token  string
}

func mustToken(dir string) string {
	tok, _ := tokens.Load(dir)
	s, _ := tok.(string)
	return s
}

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("CORRAL_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// startServer starts a server on loopback ports chosen by the kernel.
// tokens holds the admin token each test server's data dir bootstrapped.
var tokens sync.Map

func startServer(t testing.TB, dir string, join ...string) *server.Server {
	t.Helper()
	return startServerCfg(t, dir, func(c *server.Config) { c.Join = join })
}

// startServerCfg is startServer with mod applied to the config.
func startServerCfg(t testing.TB, dir string, mod func(*server.Config)) *server.Server {
	t.Helper()
	cfg := server.Config{
		OnBootstrapToken: func(tok string) { tokens.Store(dir, tok) },
		NodeName:         "test-server", DataDir: dir, HTTPAddr: "127.0.0.1:0", RPCAddr: "127.0.0.1:0",
		SerfAddr: "127.0.0.1:0", Logger: testLogger(t), LogOutput: io.Discard, FastGossip: true,
		// Tests serve images from registries on 127.0.0.1, as corral dev may.
		AllowLoopbackRegistries: true,
	}
	mod(&cfg)
	srv, err := server.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve() }()
	servers.Store(srv.SerfAddr(), srv)
	t.Cleanup(func() { servers.Delete(srv.SerfAddr()) })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.WaitForLeader(ctx); err != nil {
		t.Fatal(err)
	}
	for ctx.Err() == nil {
		if _, ok := tokens.Load(dir); ok {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	return srv
}

// client returns an admin API client of a server started on dir.
func client(t *testing.T, srv *server.Server, dir string) *api.Client {
	t.Helper()
	c, err := api.NewClient("http://" + srv.HTTPAddr())
	if err != nil {
		t.Fatal(err)
	}
	tok, _ := tokens.Load(dir)
	c.SetToken(tok.(string))
	return c
}

func startAgent(t testing.TB, dir, join string, capacity structs.Slots) *agent.Agent {
	t.Helper()
	return startAgentCfg(t, dir, join, capacity, execdriver.New(testLogger(t)))
}

func startAgentWith(t *testing.T, dir, join string, d drivers.Driver) *agent.Agent {
	t.Helper()
	return startAgentCfg(t, dir, join, nil, d)
}

// servers maps the gossip address of each test server to it, so that an
// agent joining it gets its join token (automatic TLS).
var servers sync.Map

// agentSeq gives every test agent its own gossip node name.
var agentSeq atomic.Int64

func startAgentCfg(t testing.TB, dir, join string, capacity structs.Slots, d drivers.Driver, mods ...func(*agent.Config)) *agent.Agent {
	t.Helper()
	cfg := agent.Config{
		Name: fmt.Sprintf("test-agent-%d", agentSeq.Add(1)), DataDir: dir, RPCAddr: "127.0.0.1:0", SerfAddr: "127.0.0.1:0", Join: []string{join},
		Drivers: []drivers.Driver{d}, Capacity: capacity,
		Logger: testLogger(t), LogOutput: io.Discard, FastGossip: true, AllowLoopbackRegistries: true,
		KernelHelper: kernelHelper,
	}
	if v, ok := servers.Load(join); ok && v.(*server.Server).AutoTLS() {
		srv := v.(*server.Server)
		cfg.JoinToken, cfg.EnrollAddr = srv.JoinToken(), srv.RPCAddr()
	}
	for _, mod := range mods {
		mod(&cfg)
	}
	a, err := agent.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func startCluster(t *testing.T, capacity structs.Slots) *cluster {
	t.Helper()
	dir := t.TempDir()
	srv := startServer(t, dir)
	a := startAgent(t, t.TempDir(), srv.SerfAddr(), capacity)
	t.Cleanup(func() {
		a.StopKernels(5 * time.Second)
		a.Shutdown()
		srv.Shutdown()
	})
	c := client(t, srv, dir)
	cl := &cluster{srv: srv, agent: a, client: c, addr: "http://" + srv.HTTPAddr(), token: mustToken(dir)}
	cl.waitAgentAlive(t, a.ID())
	return cl
}

func (c *cluster) waitAgentAlive(t *testing.T, id string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		a, err := c.client.GetAgent(context.Background(), id)
		if err == nil && a.Status == structs.AgentAlive && len(a.Drivers) > 0 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("agent %s never became ALIVE", id)
}

// waitAgentStatus polls until the agent has the status and returns it.
func (c *cluster) waitAgentStatus(t *testing.T, id string, want structs.AgentStatus, within time.Duration) *structs.Agent {
	t.Helper()
	deadline := time.Now().Add(within)
	var last *structs.Agent
	for time.Now().Before(deadline) {
		a, err := c.client.GetAgent(context.Background(), id)
		if err == nil && a.Status == want {
			return a
		}
		last = a
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("agent %s never became %s within %s (last: %+v)", id, want, within, last)
	return nil
}

// waitFor follows a session with blocking queries until cond holds.
func (c *cluster) waitFor(t *testing.T, ref string, cond func(*api.SessionDetail) bool) *api.SessionDetail {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var index uint64
	var last *api.SessionDetail
	for {
		d, idx, err := c.client.WaitSession(ctx, ref, index, 5*time.Second)
		if err != nil {
			t.Fatalf("waiting for session %s: %v (last: %+v)", ref, err, last)
		}
		last = d
		if cond(d) {
			return d
		}
		index = idx
	}
}

func terminal(d *api.SessionDetail) bool { return d.Session.Status.Terminal() }

func create(t *testing.T, c *cluster, req *api.CreateSessionRequest) *api.SessionDetail {
	t.Helper()
	d, err := c.client.CreateSession(context.Background(), req)
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	return d
}

var small = structs.Slots{structs.SlotCPU: 100, structs.SlotMem: structs.Whole(32 << 20)}

func TestBatchSessionsEndToEnd(t *testing.T) {
	c := startCluster(t, nil)
	ctx := context.Background()

	ok := create(t, c, &api.CreateSessionRequest{Type: "batch", Command: []string{"sh", "-c", "echo hello; echo oops >&2; exit 0"}, Resources: small})
	d := c.waitFor(t, ok.Session.ID, terminal)
	if d.Session.Status != structs.SessionTerminated || d.Session.Result != structs.ResultSuccess {
		t.Fatalf("got %s/%s (%s)", d.Session.Status, d.Session.Result, d.Session.StatusInfo)
	}
	if k := d.Kernels[0]; k.ExitCode == nil || *k.ExitCode != 0 || k.AgentID != c.agent.ID() {
		t.Fatalf("kernel: %+v", k)
	}
	logs, err := c.client.SessionLogs(ctx, ok.Session.ID[:8], "main1")
	if err != nil {
		t.Fatal(err)
	}
	if logs.Stdout != "hello\n" || logs.Stderr != "oops\n" {
		t.Fatalf("logs: %q / %q", logs.Stdout, logs.Stderr)
	}

	bad := create(t, c, &api.CreateSessionRequest{Type: "batch", Command: []string{"sh", "-c", "exit 3"}, Resources: small})
	d = c.waitFor(t, bad.Session.ID, terminal)
	if d.Session.Result != structs.ResultFailure || *d.Kernels[0].ExitCode != 3 {
		t.Fatalf("failing batch: %s/%s exit %v", d.Session.Status, d.Session.Result, d.Kernels[0].ExitCode)
	}
	// Every slot is free again.
	a, err := c.client.GetAgent(ctx, c.agent.ID())
	if err != nil {
		t.Fatal(err)
	}
	if len(a.Occupied) != 0 {
		t.Fatalf("occupied after all sessions ended: %v", a.Occupied)
	}
}

func TestInteractiveExecAndDestroy(t *testing.T) {
	c := startCluster(t, nil)
	ctx := context.Background()
	create(t, c, &api.CreateSessionRequest{Name: "nb", Type: "interactive", Command: []string{"sleep", "infinity"}, Env: map[string]string{"GREETING": "hi"}, Resources: small})
	d := c.waitFor(t, "nb", func(d *api.SessionDetail) bool { return d.Session.Status == structs.SessionRunning || terminal(d) })
	if d.Session.Status != structs.SessionRunning {
		t.Fatalf("nb is %s: %s", d.Session.Status, d.Session.StatusInfo)
	}
	var out, errb bytes.Buffer
	code, err := c.client.Exec(ctx, "nb", &api.ExecRequest{Command: []string{"sh", "-c", "echo from inside $GREETING $CORRAL_CLUSTER_HOST; pwd; echo e >&2; exit 4"}}, &out, &errb)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if code != 4 || lines[0] != "from inside hi main1" || !strings.Contains(lines[1], d.Kernels[0].ID) || errb.String() != "e\n" {
		t.Fatalf("exec: code %d, stdout %q, stderr %q", code, out.String(), errb.String())
	}
	// A second session may not take the same live name.
	_, err = c.client.CreateSession(ctx, &api.CreateSessionRequest{Name: "nb", Type: "interactive", Command: []string{"true"}})
	var apiErr *api.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusConflict {
		t.Fatalf("duplicate name: %v", err)
	}
	if _, err := c.client.DestroySession(ctx, "nb"); err != nil {
		t.Fatal(err)
	}
	d = c.waitFor(t, d.Session.ID, terminal)
	if d.Session.Status != structs.SessionTerminated || !strings.Contains(d.Session.StatusInfo, "destroyed by user") {
		t.Fatalf("after destroy: %s %q", d.Session.Status, d.Session.StatusInfo)
	}
	// exec into an ended session is refused with a clear reason.
	_, err = c.client.Exec(ctx, d.Session.ID, &api.ExecRequest{Command: []string{"true"}}, io.Discard, io.Discard)
	if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusConflict || !strings.Contains(apiErr.Message, "RUNNING") {
		t.Fatalf("exec after destroy: %v", err)
	}
}

func TestUnplaceableSessionStaysPendingWithReason(t *testing.T) {
	c := startCluster(t, structs.Slots{structs.SlotCPU: structs.Whole(2)})
	d := create(t, c, &api.CreateSessionRequest{Type: "batch", Command: []string{"true"}, Resources: structs.Slots{structs.SlotCPU: structs.Whole(64)}})
	d = c.waitFor(t, d.Session.ID, func(d *api.SessionDetail) bool { return strings.Contains(d.Session.StatusInfo, "cpu") })
	if d.Session.Status != structs.SessionPending {
		t.Fatalf("status %s", d.Session.Status)
	}
	// Destroying it cancels it.
	if _, err := c.client.DestroySession(context.Background(), d.Session.ID); err != nil {
		t.Fatal(err)
	}
	d = c.waitFor(t, d.Session.ID, terminal)
	if d.Session.Status != structs.SessionCancelled {
		t.Fatalf("status %s", d.Session.Status)
	}
}

func TestBadInput(t *testing.T) {
	c := startCluster(t, nil)
	for _, tc := range []struct {
		name, method, path, body string
		code                     int
		want                     string
	}{
		{"malformed", "POST", "/v1/sessions", `{"command": [`, 400, "malformed JSON"},
		{"unknown field", "POST", "/v1/sessions", `{"command": ["true"], "colour": 1}`, 400, "unknown field"},
		{"empty command", "POST", "/v1/sessions", `{"command": []}`, 400, "command is empty"},
		{"zero cpu", "POST", "/v1/sessions", `{"command": ["true"], "resources": {"cpu": 0}}`, 400, "must be positive"},
		{"negative mem", "POST", "/v1/sessions", `{"command": ["true"], "resources": {"mem": -5}}`, 400, "must be positive"},
		{"absurd cpu", "POST", "/v1/sessions", `{"command": ["true"], "resources": {"cpu": 1000000}}`, 400, "out of range"},
		{"unknown slot", "POST", "/v1/sessions", `{"command": ["true"], "resources": {"tpu": 1}}`, 400, "unknown resource slot"},
		{"unknown driver", "POST", "/v1/sessions", `{"command": ["true"], "driver": "docker"}`, 400, "unknown driver"},
		{"unknown type", "POST", "/v1/sessions", `{"command": ["true"], "type": "party"}`, 400, "unknown session type"},
		{"bad name", "POST", "/v1/sessions", `{"command": ["true"], "name": "a b"}`, 400, "invalid session name"},
		{"unknown session", "GET", "/v1/sessions/nope", ``, 404, "no session"},
		{"unknown session logs", "GET", "/v1/sessions/nope/logs", ``, 404, "no session"},
		{"unknown session delete", "DELETE", "/v1/sessions/nope", ``, 404, "no session"},
		{"exec empty", "POST", "/v1/sessions/nope/exec", `{"command": []}`, 400, "command is empty"},
		{"bad status filter", "GET", "/v1/sessions?status=SLEEPY", ``, 400, "unknown session status"},
		{"unknown agent", "GET", "/v1/agents/nope", ``, 404, "no agent"},
		{"bad index", "GET", "/v1/sessions/x?index=abc", ``, 400, "invalid index"},
		{"bad lost_after", "POST", "/v1/sessions", `{"command": ["true"], "lost_after": "soon"}`, 400, "lost_after \"soon\""},
		{"negative lost_after", "POST", "/v1/sessions", `{"command": ["true"], "lost_after": "-1s"}`, 400, "positive Go duration"},
		{"tiny pids limit", "POST", "/v1/sessions", `{"command": ["true"], "resources": {"pids": 2}}`, 400, "limit pids=2 is out of range"},
		{"id-like name", "POST", "/v1/sessions", `{"command": ["true"], "name": "dead-beef"}`, 400, "reads as a session ID prefix"},
		{"leave unknown agent", "POST", "/v1/agents/nope/leave", ``, 404, "no agent"},
		{"bad policy pids", "POST", "/v1/policies", `{"name": "p", "pids_per_kernel": 3}`, 400, "pids_per_kernel 3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, c.addr+tc.path, strings.NewReader(tc.body))
			req.Header.Set("Authorization", "Bearer "+c.token)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var e api.ErrorResponse
			if err := json.NewDecoder(resp.Body).Decode(&e); err != nil {
				t.Fatalf("body is not JSON: %v", err)
			}
			if resp.StatusCode != tc.code || !strings.Contains(e.Error, tc.want) {
				t.Fatalf("got %d %q, want %d containing %q", resp.StatusCode, e.Error, tc.code, tc.want)
			}
		})
	}
	// Nothing was half-created.
	list, err := c.client.ListSessions(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 0 {
		t.Fatalf("bad input created %d sessions", len(list))
	}
}

// TestServerRestartKeepsStateAndAgentReconnects restarts the server on the
// same data dir while an interactive kernel runs: the session, its history
// and the agent's occupancy survive, and the agent reconnects.
func TestServerRestartKeepsStateAndAgentReconnects(t *testing.T) {
	dir := t.TempDir()
	srv := startServer(t, dir)
	a := startAgent(t, t.TempDir(), srv.SerfAddr(), nil)
	defer func() {
		a.StopKernels(5 * time.Second)
		a.Shutdown()
	}()
	c := client(t, srv, dir)
	cl := &cluster{srv: srv, agent: a, client: c}
	cl.waitAgentAlive(t, a.ID())
	done := create(t, cl, &api.CreateSessionRequest{Type: "batch", Command: []string{"true"}, Resources: small})
	cl.waitFor(t, done.Session.ID, terminal)
	live := create(t, cl, &api.CreateSessionRequest{Name: "live", Type: "interactive", Command: []string{"sleep", "infinity"}, Resources: small})
	cl.waitFor(t, "live", func(d *api.SessionDetail) bool { return d.Session.Status == structs.SessionRunning })
	srv.Shutdown()

	// The new server comes up on new ports and joins the agent's gossip.
	srv2 := startServer(t, dir, a.SerfAddr())
	defer srv2.Shutdown()
	c2 := client(t, srv2, dir)
	cl2 := &cluster{srv: srv2, agent: a, client: c2}
	d, err := c2.GetSession(context.Background(), done.Session.ID)
	if err != nil {
		t.Fatal(err)
	}
	if d.Session.Result != structs.ResultSuccess || len(d.Session.History) < 4 {
		t.Fatalf("finished session after restart: %s %s history=%d", d.Session.Status, d.Session.Result, len(d.Session.History))
	}
	d, err = c2.GetSession(context.Background(), live.Session.ID)
	if err != nil || d.Session.Status != structs.SessionRunning {
		t.Fatalf("live session after restart: %+v %v", d, err)
	}
	// The agent reconnects: a destroy through the new server reaches it.
	if _, err := c2.DestroySession(context.Background(), "live"); err != nil {
		t.Fatal(err)
	}
	d = cl2.waitFor(t, live.Session.ID, terminal)
	if d.Session.Status != structs.SessionTerminated {
		t.Fatalf("live session after destroy: %s %q", d.Session.Status, d.Session.StatusInfo)
	}
}

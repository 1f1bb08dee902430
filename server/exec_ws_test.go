package server_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/corral-dev/corral/agent"
	"github.com/corral-dev/corral/api"
	execdriver "github.com/corral-dev/corral/drivers/exec"
	"github.com/corral-dev/corral/plugins/drivers/testutils"
	"github.com/corral-dev/corral/rpc"
	"github.com/corral-dev/corral/rpc/tlsutil"
	"github.com/corral-dev/corral/rpc/tlsutil/tlstest"
	"github.com/corral-dev/corral/server"
	"github.com/corral-dev/corral/structs"
)

// execWait bounds each wait for output in the exec tests; it only keeps a
// broken exec from hanging the test.
const execWait = 60 * time.Second

// wsExec is one exec over the WebSocket API, driven by a test.
type wsExec struct {
	in     *io.PipeWriter
	out    *testutils.SafeBuffer
	errOut *testutils.SafeBuffer
	resize chan api.TermSize
	done   chan struct{}
	code   int
	err    error
}

func startWSExec(t *testing.T, c *api.Client, ref string, req *api.ExecRequest) *wsExec {
	t.Helper()
	pr, pw := io.Pipe()
	e := &wsExec{in: pw, out: &testutils.SafeBuffer{}, errOut: &testutils.SafeBuffer{}, resize: make(chan api.TermSize, 1), done: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() {
		cancel()
		pw.Close()
		<-e.done
	})
	go func() {
		defer close(e.done)
		e.code, e.err = c.ExecInteractive(ctx, ref, req, api.ExecStreams{Stdin: pr, Stdout: e.out, Stderr: e.errOut, Resize: e.resize})
	}()
	return e
}

func (e *wsExec) waitOutput(t *testing.T, substr string) {
	t.Helper()
	if !e.out.WaitFor(substr, execWait) {
		t.Fatalf("output %q never showed %q", e.out.String(), substr)
	}
}

func (e *wsExec) wait(t *testing.T) int {
	t.Helper()
	select {
	case <-e.done:
	case <-time.After(execWait):
		t.Fatalf("exec did not end; output so far %q", e.out.String())
	}
	if e.err != nil {
		t.Fatalf("ExecInteractive: %v (output %q)", e.err, e.out.String())
	}
	return e.code
}

// checkInteractiveExec runs the interactive exec checks against session
// ref through c: stdin over pipes, and a terminal's size, resize, ^C,
// echo and exit code.
func checkInteractiveExec(t *testing.T, c *api.Client, ref string) {
	t.Run("pipes", func(t *testing.T) {
		e := startWSExec(t, c, ref, &api.ExecRequest{Command: []string{"sh", "-c", "read x; echo got:$x; echo err >&2; exit 5"}, Stdin: true})
		if _, err := e.in.Write([]byte("hello\n")); err != nil {
			t.Fatal(err)
		}
		e.in.Close()
		if code := e.wait(t); code != 5 || e.out.String() != "got:hello\n" || e.errOut.String() != "err\n" {
			t.Fatalf("exit %d, stdout %q, stderr %q; want 5, got:hello and err", code, e.out.String(), e.errOut.String())
		}
	})
	t.Run("tty resize", func(t *testing.T) {
		e := startWSExec(t, c, ref, &api.ExecRequest{
			Command: []string{"sh", "-c", `trap 'stty size; exit 7' WINCH; tty; stty size; echo ready; while :; do sleep 0.05; done`},
			Stdin:   true, TTY: true, Rows: 30, Cols: 100,
		})
		e.waitOutput(t, "ready")
		e.resize <- api.TermSize{Rows: 41, Cols: 132}
		if code := e.wait(t); code != 7 {
			t.Fatalf("exit %d after the resize, want 7 (output %q)", code, e.out.String())
		}
		lines := strings.Split(e.out.String(), "\r\n")
		if len(lines) < 4 || !strings.HasPrefix(lines[0], "/dev/pts/") || lines[1] != "30 100" || lines[2] != "ready" || lines[3] != "41 132" {
			t.Fatalf("output %q; want the tty's name, 30 100, ready, 41 132", e.out.String())
		}
	})
	t.Run("tty ctrl-c", func(t *testing.T) {
		e := startWSExec(t, c, ref, &api.ExecRequest{Command: []string{"sh", "-c", "echo ready; exec sleep 100"}, Stdin: true, TTY: true})
		e.waitOutput(t, "ready")
		if _, err := e.in.Write([]byte{0x03}); err != nil {
			t.Fatal(err)
		}
		if code := e.wait(t); code != 130 {
			t.Fatalf("^C: exit %d, want 130 (output %q)", code, e.out.String())
		}
	})
	t.Run("tty shell", func(t *testing.T) {
		e := startWSExec(t, c, ref, &api.ExecRequest{Command: []string{"sh"}, Stdin: true, TTY: true})
		if _, err := e.in.Write([]byte("echo hi-$((6*7))\r")); err != nil {
			t.Fatal(err)
		}
		e.waitOutput(t, "hi-42\r\n")
		if !strings.Contains(e.out.String(), "echo hi-$((6*7))\r\n") {
			t.Errorf("the terminal did not echo the input: %q", e.out.String())
		}
		if _, err := e.in.Write([]byte("exit 3\r")); err != nil {
			t.Fatal(err)
		}
		if code := e.wait(t); code != 3 {
			t.Fatalf("exit %d, want 3 (output %q)", code, e.out.String())
		}
	})
}

func TestExecWebSocket(t *testing.T) {
	c := startCluster(t, nil)
	create(t, c, &api.CreateSessionRequest{Name: "nb", Type: "interactive", Command: []string{"sleep", "infinity"}, Resources: small})
	d := c.waitFor(t, "nb", func(d *api.SessionDetail) bool { return d.Session.Status == structs.SessionRunning || terminal(d) })
	if d.Session.Status != structs.SessionRunning {
		t.Fatalf("nb is %s: %s", d.Session.Status, d.Session.StatusInfo)
	}
	checkInteractiveExec(t, c.client, "nb")
	t.Run("errors", func(t *testing.T) {
		ctx := context.Background()
		_, err := c.client.ExecInteractive(ctx, "nb", &api.ExecRequest{Command: []string{"true"}, Kernel: "sub9", TTY: true}, api.ExecStreams{})
		if err == nil || !strings.Contains(err.Error(), "sub9") {
			t.Errorf("exec in a missing kernel: %v", err)
		}
		_, err = c.client.ExecInteractive(ctx, "no-such-session", &api.ExecRequest{Command: []string{"true"}}, api.ExecStreams{})
		if err == nil {
			t.Error("exec in a missing session worked")
		}
		// The streaming POST refuses what only the WebSocket does.
		_, err = c.client.Exec(ctx, "nb", &api.ExecRequest{Command: []string{"true"}, TTY: true}, io.Discard, io.Discard)
		var apiErr *api.Error
		if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusBadRequest {
			t.Errorf("POST exec with tty: %v, want 400", err)
		}
		unauth, _ := api.NewClient(c.addr)
		_, err = unauth.ExecInteractive(ctx, "nb", &api.ExecRequest{Command: []string{"true"}}, api.ExecStreams{})
		if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusUnauthorized {
			t.Errorf("exec without a token: %v, want 401", err)
		}
	})
}

// TestExecWebSocketThroughTLSFollower: interactive exec through a
// follower, which forwards the WebSocket to the leader, over https.
func TestExecWebSocketThroughTLSFollower(t *testing.T) {
	p := tlstest.New(t)
	const token = "exec-quorum-token"
	srvs, admin := startQuorumCfg(t, 3, func(c *server.Config) {
		c.Security = &rpc.Security{TLS: p.Node(t, tlsutil.RoleServer, ""), JoinToken: token}
		c.HTTPTLS = true
	})
	var follower *server.Server
	for _, s := range srvs {
		if !s.IsLeader() {
			follower = s
			break
		}
	}
	a := startAgentCfg(t, t.TempDir(), follower.SerfAddr(), nil, execdriver.New(testLogger(t)), func(c *agent.Config) {
		c.Name = "exec-quorum-agent"
		c.Security = &rpc.Security{TLS: p.Node(t, tlsutil.RoleAgent, ""), JoinToken: token}
	})
	t.Cleanup(func() { a.StopKernels(5 * time.Second); a.Shutdown() })
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(p.CAPEM)
	hc, err := api.NewClient("https://" + follower.HTTPAddr())
	if err != nil {
		t.Fatal(err)
	}
	hc.SetToken(admin)
	hc.SetTLS(&tls.Config{RootCAs: pool})
	c := &cluster{srv: follower, agent: a, client: hc, addr: "https://" + follower.HTTPAddr(), token: admin}
	c.waitAgentAlive(t, a.ID())
	create(t, c, &api.CreateSessionRequest{Name: "nb", Type: "interactive", Command: []string{"sleep", "infinity"}, Resources: small})
	d := c.waitFor(t, "nb", func(d *api.SessionDetail) bool { return d.Session.Status == structs.SessionRunning || terminal(d) })
	if d.Session.Status != structs.SessionRunning {
		t.Fatalf("nb is %s: %s", d.Session.Status, d.Session.StatusInfo)
	}
	if follower.IsLeader() {
		t.Skip("leadership moved to the server the test took for a follower")
	}
	checkInteractiveExec(t, hc, "nb")
}

// TestExecTTYEchoFigures measures one keystroke's round trip through an
// interactive exec (API client, server, agent, the remote terminal's
// echo and back) and logs p50/p99; it asserts nothing about time. Run
// with CORRAL_FIGURES=1.
func TestExecTTYEchoFigures(t *testing.T) {
	if os.Getenv("CORRAL_FIGURES") == "" {
		t.Skip("figures only: set CORRAL_FIGURES=1")
	}
	c := startCluster(t, nil)
	create(t, c, &api.CreateSessionRequest{Name: "nb", Type: "interactive", Command: []string{"sleep", "infinity"}, Resources: small})
	c.waitFor(t, "nb", func(d *api.SessionDetail) bool { return d.Session.Status == structs.SessionRunning || terminal(d) })
	echoed := make(chan struct{}, 1)
	out := writerFunc(func(p []byte) (int, error) {
		if bytes.Contains(p, []byte("x")) {
			echoed <- struct{}{}
		}
		return len(p), nil
	})
	pr, pw := io.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		// stty -echo: only cat's own output comes back, once per byte.
		_, _ = c.client.ExecInteractive(ctx, "nb", &api.ExecRequest{Command: []string{"sh", "-c", "stty raw -echo; exec cat"}, Stdin: true, TTY: true}, api.ExecStreams{Stdin: pr, Stdout: out})
	}()
	var rtts []time.Duration
	for i := range 520 {
		start := time.Now()
		if _, err := pw.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		<-echoed
		if i >= 20 { // the first ones wait for stty
			rtts = append(rtts, time.Since(start))
		}
	}
	cancel()
	pw.Close()
	<-done
	slices.Sort(rtts)
	t.Logf("keystroke round trip over %d keys: p50 %v, p99 %v, max %v", len(rtts), rtts[len(rtts)/2], rtts[len(rtts)*99/100], rtts[len(rtts)-1])
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

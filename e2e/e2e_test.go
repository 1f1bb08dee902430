// Package e2e runs whole clusters of real corral processes: the binary is
// built once, servers and agents run as separate processes on loopback,
// and the CLI drives them as a user would.
package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/structs"
)

var corralBin string

// e2eVersion is the version the test binaries are built with (as make
// sets it through the version package).
const e2eVersion = "v0.0.0-e2e"

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "corral-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	corralBin = filepath.Join(dir, "corral")
	// corral-shim next to corral: the exec kernels' shims run from it;
	// corral-kernel (static) too: cluster kernels get it.
	for _, b := range []struct{ out, pkg string }{{corralBin, "./cmd/corral"}, {filepath.Join(dir, "corral-shim"), "./cmd/corral-shim"},
		{filepath.Join(dir, "corral-kernel"), "./cmd/corral-kernel"}} {
		build := exec.Command("go", "build", "-ldflags", "-X github.com/corral-dev/corral/version.Version="+e2eVersion, "-o", b.out, b.pkg)
		build.Dir = ".."
		if strings.HasSuffix(b.pkg, "corral-kernel") {
			build.Env = append(os.Environ(), "CGO_ENABLED=0")
		}
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			fmt.Fprintf(os.Stderr, "building %s: %v\n", b.pkg, err)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// freePort asks the kernel for a free loopback port.
func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// proc is a corral daemon started by a test.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  *syncBuffer
	done chan struct{}
}

// syncBuffer is a bytes.Buffer safe for a process's writes and a test's reads.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (p *proc) output() string { return p.log.String() }

func start(t *testing.T, name string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, log: &syncBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(corralBin, args...)
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.stop(10 * time.Second)
		if t.Failed() {
			t.Logf("--- %s output ---\n%s", p.name, p.log.String())
		}
	})
	return p
}

// stop sends SIGTERM and kills after timeout.
func (p *proc) stop(timeout time.Duration) {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(timeout):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// kill9 kills the process without giving it a chance to clean up.
func (p *proc) kill9() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

type result struct {
	code           int
	stdout, stderr string
}

// cli runs the corral CLI against addr.
func cli(t *testing.T, addr string, args ...string) result {
	t.Helper()
	cmd := exec.Command(corralBin, args...)
	tok, _ := apiTokens.Load(addr)
	tokStr, _ := tok.(string)
	cmd.Env = append(os.Environ(), "CORRAL_ADDR="+addr, "CORRAL_TOKEN="+tokStr, "HOME="+t.TempDir())
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("running corral %v: %v", args, err)
	}
	return result{code: code, stdout: out.String(), stderr: errb.String()}
}

func mustCLI(t *testing.T, addr string, want int, args ...string) result {
	t.Helper()
	r := cli(t, addr, args...)
	if r.code != want {
		t.Fatalf("corral %s: exit %d, want %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.code, want, r.stdout, r.stderr)
	}
	return r
}

// eventually retries f until it returns nil or the timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for time.Now().Before(deadline) {
		if err = f(); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s: %v", what, err)
}

type serverPorts struct{ http, rpc, serf string }

// apiTokens maps a server's API address to the admin token its first
// start printed.
var apiTokens sync.Map

// joinTokens maps a server's gossip address to the join token its first
// start printed.
var joinTokens sync.Map

// joinTokenIn finds the join token in a server's output.
func joinTokenIn(out string) (string, bool) {
	for _, line := range strings.Split(out, "\n") {
		if _, tok, ok := strings.Cut(line, "corral agent -join "); ok && strings.Contains(tok, "-join-token ") {
			_, tok, _ = strings.Cut(tok, "-join-token ")
			return strings.TrimSpace(tok), true
		}
	}
	return "", false
}

// agentJoin are the flags of an agent that joins the server on ports
// with its join token.
func agentJoin(t *testing.T, ports serverPorts) []string {
	t.Helper()
	tok, ok := joinTokens.Load(ports.serf)
	if !ok {
		t.Fatalf("no join token of the server on %s", ports.serf)
	}
	return []string{"-join", ports.serf, "-join-token", tok.(string), "-server", ports.rpc}
}

// adminTokenIn reads the first admin token a server wrote into its data
// dir (the server prints it only on a terminal).
func adminTokenIn(dataDir string) (string, bool) {
	b, err := os.ReadFile(filepath.Join(dataDir, "admin-token"))
	if err != nil || len(bytes.TrimSpace(b)) == 0 {
		return "", false
	}
	return string(bytes.TrimSpace(b)), true
}

func startServerProc(t *testing.T, dir string, ports serverPorts, extra ...string) *proc {
	p := start(t, "server", append([]string{"server", "-data-dir", dir, "-http", ports.http, "-rpc", ports.rpc, "-serf", ports.serf, "-fast-gossip"}, extra...)...)
	addr := "http://" + ports.http
	if _, ok := apiTokens.Load(addr); !ok {
		eventually(t, 20*time.Second, "server writes the admin token and prints the join token", func() error {
			jt, ok := joinTokenIn(p.output())
			if !ok {
				return fmt.Errorf("no join token line yet")
			}
			if tok, ok := adminTokenIn(dir); ok {
				apiTokens.Store(addr, tok)
				joinTokens.Store(ports.serf, jt)
				return nil
			}
			return fmt.Errorf("no admin token file yet")
		})
	}
	eventually(t, 20*time.Second, "server answers", func() error {
		r := cli(t, "http://"+ports.http, "node", "list")
		if r.code != 0 {
			return fmt.Errorf("node list: %s", r.stderr)
		}
		return nil
	})
	return p
}

func sessionsJSON(t *testing.T, addr string) map[string]*structs.Session {
	t.Helper()
	r := mustCLI(t, addr, 0, "session", "list", "-json")
	var list []*structs.Session
	if err := json.Unmarshal([]byte(r.stdout), &list); err != nil {
		t.Fatalf("session list -json: %v\n%s", err, r.stdout)
	}
	out := map[string]*structs.Session{}
	for _, s := range list {
		out[s.ID] = s
	}
	return out
}

// TestTourAndServerKill9 runs the README's tour against a server and an
// agent running as separate processes, then kills the server with SIGKILL,
// restarts it on the same data dir and checks that nothing was lost.
func TestTourAndServerKill9(t *testing.T) {
	ports := serverPorts{http: freePort(t), rpc: freePort(t), serf: freePort(t)}
	addr := "http://" + ports.http
	serverDir := t.TempDir()
	srv := startServerProc(t, serverDir, ports)
	agentDir := t.TempDir()
	reapKernels(t, agentDir)
	start(t, "agent", append([]string{"agent", "-data-dir", agentDir, "-rpc", freePort(t), "-serf", freePort(t), "-fast-gossip"}, agentJoin(t, ports)...)...)
	eventually(t, 20*time.Second, "agent is ALIVE", func() error {
		r := cli(t, addr, "node", "list", "-json")
		var agents []*structs.Agent
		if err := json.Unmarshal([]byte(r.stdout), &agents); err != nil {
			return err
		}
		if len(agents) != 1 || agents[0].Status != structs.AgentAlive || len(agents[0].Drivers) == 0 {
			return fmt.Errorf("agents: %s", r.stdout)
		}
		return nil
	})

	r := mustCLI(t, addr, 0, "session", "create", "-type", "batch", "-wait", "--", "sh", "-c", "echo hello; exit 0")
	if !strings.Contains(r.stdout, "hello") {
		t.Fatalf("batch output: %q", r.stdout)
	}
	r = mustCLI(t, addr, 1, "session", "create", "-type", "batch", "-wait", "--", "sh", "-c", "exit 3")
	if !strings.Contains(r.stderr, "FAILURE") {
		t.Fatalf("failed batch says: %q", r.stderr)
	}
	mustCLI(t, addr, 0, "session", "create", "-type", "interactive", "-name", "nb", "-cpu", "1", "-mem", "256M", "-wait", "--", "sleep", "infinity")
	r = mustCLI(t, addr, 4, "session", "exec", "nb", "--", "sh", "-c", "echo from inside; exit 4")
	if strings.TrimSpace(r.stdout) != "from inside" {
		t.Fatalf("exec output: %q", r.stdout)
	}
	r = mustCLI(t, addr, 0, "session", "list")
	for _, want := range []string{"nb", "interactive", "RUNNING", "SUCCESS", "FAILURE"} {
		if !strings.Contains(r.stdout, want) {
			t.Fatalf("session list lacks %q:\n%s", want, r.stdout)
		}
	}
	r = mustCLI(t, addr, 0, "session", "status", "nb")
	for _, want := range []string{"RUNNING", "main1", "PENDING", "SCHEDULED"} {
		if !strings.Contains(r.stdout, want) {
			t.Fatalf("session status lacks %q:\n%s", want, r.stdout)
		}
	}
	before := sessionsJSON(t, addr)
	var helloID string
	for id, s := range before {
		if s.Result == structs.ResultSuccess {
			helloID = id
		}
	}
	r = mustCLI(t, addr, 0, "session", "logs", helloID[:8])
	if strings.TrimSpace(r.stdout) != "hello" {
		t.Fatalf("logs: %q", r.stdout)
	}
	r = mustCLI(t, addr, 0, "node", "list")
	if !strings.Contains(r.stdout, "ALIVE") {
		t.Fatalf("node list:\n%s", r.stdout)
	}
	mustCLI(t, addr, 2, "session", "create", "-type", "batch")
	mustCLI(t, addr, 1, "session", "status", "does-not-exist")

	// kill -9 the server and restart it on the same data dir.
	srv.kill9()
	startServerProc(t, serverDir, ports)
	after := sessionsJSON(t, addr)
	if len(after) != len(before) {
		t.Fatalf("%d sessions before the kill, %d after", len(before), len(after))
	}
	for id, b := range before {
		a := after[id]
		if a == nil || a.Status != b.Status || a.Result != b.Result || len(a.History) != len(b.History) {
			t.Fatalf("session %s changed across the kill: before %+v after %+v", id, b, a)
		}
	}
	// The agent reconnects: exec and destroy reach the running kernel.
	eventually(t, 20*time.Second, "exec after server restart", func() error {
		r := cli(t, addr, "session", "exec", "nb", "--", "true")
		if r.code != 0 {
			return fmt.Errorf("exit %d: %s", r.code, r.stderr)
		}
		return nil
	})
	mustCLI(t, addr, 0, "session", "destroy", "nb")
	eventually(t, 20*time.Second, "nb terminated", func() error {
		r := cli(t, addr, "session", "status", "nb", "-json")
		var d api.SessionDetail
		if err := json.Unmarshal([]byte(r.stdout), &d); err != nil {
			return err
		}
		if d.Session.Status != structs.SessionTerminated {
			return fmt.Errorf("nb is %s", d.Session.Status)
		}
		return nil
	})
}

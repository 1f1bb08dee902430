package e2e

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"
)

// ttyWait bounds each wait for output in TestExecTTY; it only keeps a
// broken exec from hanging the test.
const ttyWait = 60 * time.Second

// ptyCLI is the corral CLI running on a pseudo-terminal, as a user at a
// terminal runs it.
type ptyCLI struct {
	cmd  *exec.Cmd
	ptmx *os.File
	tty  *os.File
	mu   sync.Mutex
	out  strings.Builder
	done chan struct{}
	code int
}

func startPtyCLI(t *testing.T, addr string, rows, cols uint16, args ...string) *ptyCLI {
	t.Helper()
	cmd := exec.Command(corralBin, args...)
	tok, _ := apiTokens.Load(addr)
	tokStr, _ := tok.(string)
	cmd.Env = append(os.Environ(), "CORRAL_ADDR="+addr, "CORRAL_TOKEN="+tokStr, "HOME="+t.TempDir())
	ptmx, tty, err := pty.Open()
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	if err := pty.Setsize(ptmx, &pty.Winsize{Rows: rows, Cols: cols}); err != nil {
		t.Fatal(err)
	}
	// The CLI leads a new session on the terminal, as a login shell's
	// child would; the test keeps the slave open to look at its modes.
	cmd.Stdin, cmd.Stdout, cmd.Stderr = tty, tty, tty
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting corral on a terminal: %v", err)
	}
	p := &ptyCLI{cmd: cmd, ptmx: ptmx, tty: tty, done: make(chan struct{})}
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := ptmx.Read(buf)
			p.mu.Lock()
			p.out.Write(buf[:n])
			p.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	go func() {
		defer close(p.done)
		err := cmd.Wait()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			p.code = ee.ExitCode()
		} else if err != nil {
			p.code = -1
		}
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.done
		ptmx.Close()
		tty.Close()
	})
	return p
}

func (p *ptyCLI) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

func (p *ptyCLI) waitOutput(t *testing.T, substr string) {
	t.Helper()
	eventually(t, ttyWait, fmt.Sprintf("the terminal shows %q", substr), func() error {
		if !strings.Contains(p.output(), substr) {
			return fmt.Errorf("output so far %q", p.output())
		}
		return nil
	})
}

func (p *ptyCLI) write(t *testing.T, s string) {
	t.Helper()
	if _, err := p.ptmx.Write([]byte(s)); err != nil {
		t.Fatal(err)
	}
}

func (p *ptyCLI) wait(t *testing.T) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(ttyWait):
		t.Fatalf("corral did not end; terminal so far %q", p.output())
	}
	return p.code
}

// restored checks that the CLI left the terminal in its cooked modes.
func (p *ptyCLI) restored(t *testing.T) {
	t.Helper()
	tio, err := unix.IoctlGetTermios(int(p.tty.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	if tio.Lflag&(unix.ECHO|unix.ICANON|unix.ISIG) != unix.ECHO|unix.ICANON|unix.ISIG {
		t.Errorf("corral left the terminal in raw mode (lflag %#x)", tio.Lflag)
	}
}

// TestExecTTY drives `corral session exec -i -t` through a real
// pseudo-terminal, as a user would: the remote terminal's name and size,
// a resize of the local terminal, ^C typed at it, the echo of typed
// input and the exit code; -i without -t streams stdin over pipes; any
// kernel of a cluster session.
func TestExecTTY(t *testing.T) {
	ports := serverPorts{http: freePort(t), rpc: freePort(t), serf: freePort(t)}
	addr := "http://" + ports.http
	startServerProc(t, t.TempDir(), ports)
	agentDir := t.TempDir()
	reapKernels(t, agentDir)
	start(t, "agent", append([]string{"agent", "-data-dir", agentDir, "-rpc", freePort(t), "-serf", freePort(t), "-fast-gossip"}, agentJoin(t, ports)...)...)
	mustCLI(t, addr, 0, "session", "create", "-type", "interactive", "-name", "nb", "-cluster-size", "2", "-cpu", "1", "-mem", "256M", "-wait", "--", "sleep", "infinity")
	checkCLIExecTTY(t, addr, "nb")
}

// TestExecTTYRunc is TestExecTTY with container kernels.
func TestExecTTYRunc(t *testing.T) {
	if why := runcUnavailable(); why != "" {
		t.Skip(why)
	}
	ref := startRegistry(t, busyboxImage(t), "corral/busybox:1")
	ports := serverPorts{http: freePort(t), rpc: freePort(t), serf: freePort(t)}
	addr := "http://" + ports.http
	regHost := strings.SplitN(ref, "/", 2)[0]
	startServerProc(t, t.TempDir(), ports, "-allow-registry", regHost)
	agentDir := t.TempDir()
	reapKernels(t, agentDir)
	start(t, "agent", append([]string{"agent", "-data-dir", agentDir, "-rpc", freePort(t), "-serf", freePort(t), "-fast-gossip",
		"-allow-registry", regHost}, agentJoin(t, ports)...)...)
	agentAlive(t, addr)
	agentRunsRunc(t, addr)
	mustCLI(t, addr, 0, "session", "create", "-driver", "runc", "-image", ref, "-type", "interactive", "-name", "box", "-cluster-size", "2",
		"-cpu", "0.5", "-mem", "64M", "-wait", "--", "sleep", "1000")
	checkCLIExecTTY(t, addr, "box")
}

// checkCLIExecTTY runs the CLI checks of interactive exec against session
// ref, a cluster session of two kernels.
func checkCLIExecTTY(t *testing.T, addr, ref string) {
	t.Run("pipes", func(t *testing.T) {
		cmd := exec.Command(corralBin, "session", "exec", "-i", ref, "--", "sh", "-c", "read x; echo got:$x")
		tok, _ := apiTokens.Load(addr)
		cmd.Env = append(os.Environ(), "CORRAL_ADDR="+addr, "CORRAL_TOKEN="+tok.(string), "HOME="+t.TempDir())
		cmd.Stdin = strings.NewReader("hello\n")
		out, err := cmd.CombinedOutput()
		if err != nil || string(out) != "got:hello\n" {
			t.Fatalf("echo hello | corral session exec -i: %v, %q; want got:hello", err, out)
		}
	})
	t.Run("resize", func(t *testing.T) {
		p := startPtyCLI(t, addr, 30, 100, "session", "exec", "-i", "-t", ref, "--",
			"sh", "-c", `trap 'stty size; exit 7' WINCH; tty; stty size; echo ready; while :; do sleep 0.05; done`)
		p.waitOutput(t, "ready")
		if err := pty.Setsize(p.ptmx, &pty.Winsize{Rows: 41, Cols: 132}); err != nil {
			t.Fatal(err)
		}
		if code := p.wait(t); code != 7 {
			t.Fatalf("exit %d, want 7 (terminal %q)", code, p.output())
		}
		p.restored(t)
		p.waitOutput(t, "41 132\r\n")
		lines := strings.Split(p.output(), "\r\n")
		if len(lines) < 4 || !strings.HasPrefix(lines[0], "/dev/pts/") || lines[1] != "30 100" || lines[2] != "ready" || lines[3] != "41 132" {
			t.Fatalf("terminal %q; want the tty's name, 30 100, ready, 41 132", p.output())
		}
	})
	t.Run("ctrl-c", func(t *testing.T) {
		p := startPtyCLI(t, addr, 24, 80, "session", "exec", "-i", "-t", ref, "--", "sh", "-c", "echo ready; exec sleep 100")
		p.waitOutput(t, "ready")
		p.write(t, "\x03")
		if code := p.wait(t); code != 130 {
			t.Fatalf("^C: exit %d, want 130 (terminal %q)", code, p.output())
		}
		p.restored(t)
	})
	t.Run("shell on sub1", func(t *testing.T) {
		p := startPtyCLI(t, addr, 24, 80, "session", "exec", "-i", "-t", "-kernel", "sub1", ref, "--", "sh")
		p.write(t, "echo on-$CORRAL_CLUSTER_HOST-$((6*7))\r")
		p.waitOutput(t, "on-sub1-42\r\n")
		if !strings.Contains(p.output(), "echo on-$CORRAL_CLUSTER_HOST-$((6*7))\r\n") {
			t.Errorf("no echo of the typed line: %q", p.output())
		}
		p.write(t, "exit 3\r")
		if code := p.wait(t); code != 3 {
			t.Fatalf("exit %d, want 3 (terminal %q)", code, p.output())
		}
		p.restored(t)
	})
	t.Run("-t needs a terminal", func(t *testing.T) {
		r := mustCLI(t, addr, 1, "session", "exec", "-i", "-t", ref, "--", "true")
		if !strings.Contains(r.stderr, "-t needs a terminal") {
			t.Errorf("stderr %q", r.stderr)
		}
	})
}

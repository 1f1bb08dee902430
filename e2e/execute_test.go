package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestSessionRunAndWait drives `corral session run` (shell, python, code
// from stdin, exit status) and `corral session wait` / `create -wait
// -wait-timeout` against a real server and agent.
func TestSessionRunAndWait(t *testing.T) {
	ports := serverPorts{http: freePort(t), rpc: freePort(t), serf: freePort(t)}
	addr := "http://" + ports.http
	startServerProc(t, t.TempDir(), ports)
	agentDir := t.TempDir()
	reapKernels(t, agentDir)
	start(t, "agent", append([]string{"agent", "-data-dir", agentDir, "-rpc", freePort(t), "-serf", freePort(t), "-fast-gossip"}, agentJoin(t, ports)...)...)
	agentAlive(t, addr)
	mustCLI(t, addr, 0, "session", "create", "-type", "interactive", "-name", "nb", "-cpu", "0.5", "-mem", "128M", "-wait", "--", "sleep", "infinity")

	r := mustCLI(t, addr, 3, "session", "run", "nb", "--", "echo hi; echo err >&2; exit 3")
	if r.stdout != "hi\n" || r.stderr != "err\n" {
		t.Fatalf("session run (shell): stdout %q stderr %q", r.stdout, r.stderr)
	}
	if _, err := exec.LookPath("python3"); err == nil {
		r = mustCLI(t, addr, 0, "session", "run", "nb", "-runtime", "python", "--", "print(1+1)")
		if r.stdout != "2\n" {
			t.Fatalf("session run (python): stdout %q", r.stdout)
		}
	}
	// Code from stdin.
	cmd := exec.Command(corralBin, "session", "run", "nb", "-run-id", "from-stdin", "--", "-")
	tok, _ := apiTokens.Load(addr)
	tokStr, _ := tok.(string)
	cmd.Env = append(os.Environ(), "CORRAL_ADDR="+addr, "CORRAL_TOKEN="+tokStr, "HOME="+t.TempDir())
	cmd.Stdin = strings.NewReader("x=$CORRAL_RUN_ID\necho \"$x\"\nexit 7\n")
	var out bytes.Buffer
	cmd.Stdout = &out
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 7 || out.String() != "from-stdin\n" {
		t.Fatalf("session run - (stdin): %v, stdout %q", err, out.String())
	}
	r = mustCLI(t, addr, 1, "session", "run", "nb", "-runtime", "perl", "--", "print 1")
	if !strings.Contains(r.stderr, "unknown runtime") {
		t.Fatalf("session run -runtime perl: stderr %q", r.stderr)
	}

	// session wait: an interactive session runs; waiting for its end
	// times out with one line; a batch session's end is its result.
	mustCLI(t, addr, 0, "session", "wait", "nb", "-until", "running")
	r = mustCLI(t, addr, 1, "session", "wait", "nb", "-timeout", "500ms")
	if lines := strings.Split(strings.TrimSpace(r.stderr), "\n"); len(lines) != 1 || !strings.Contains(lines[0], "still RUNNING after -timeout 500ms") {
		t.Fatalf("session wait -timeout: stderr %q", r.stderr)
	}
	ok := strings.Fields(mustCLI(t, addr, 0, "session", "create", "--", "true").stdout)[0]
	mustCLI(t, addr, 0, "session", "wait", ok)
	bad := strings.Fields(mustCLI(t, addr, 0, "session", "create", "--", "sh", "-c", "exit 2").stdout)[0]
	if r := mustCLI(t, addr, 1, "session", "wait", bad); !strings.Contains(r.stderr, "FAILURE") && !strings.Contains(r.stderr, "failure") {
		t.Fatalf("session wait on a failing session: stderr %q", r.stderr)
	}
	// create -wait gives up after -wait-timeout, the session goes on.
	r = mustCLI(t, addr, 1, "session", "create", "-wait", "-wait-timeout", "1s", "--", "sleep", "1000")
	if !strings.Contains(r.stderr, "after -wait-timeout 1s") {
		t.Fatalf("create -wait -wait-timeout: stderr %q", r.stderr)
	}
}

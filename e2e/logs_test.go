package e2e

import (
	"bufio"
	"encoding/json"
	"strings"
	"testing"
)

// TestSessionLogsFlags: `session logs -f` follows a running batch session
// to its end; -tail, -stderr and -json shape what is printed.
func TestSessionLogsFlags(t *testing.T) {
	ports := serverPorts{http: freePort(t), rpc: freePort(t), serf: freePort(t)}
	addr := "http://" + ports.http
	startServerProc(t, t.TempDir(), ports)
	agentDir := t.TempDir()
	reapKernels(t, agentDir)
	start(t, "agent", append([]string{"agent", "-data-dir", agentDir, "-rpc", freePort(t), "-serf", freePort(t), "-fast-gossip"}, agentJoin(t, ports)...)...)
	agentAlive(t, addr)

	// The kernel writes while the follower follows: the last lines come
	// after a pause, and the session ends by itself.
	id := strings.Fields(mustCLI(t, addr, 0, "session", "create", "-cpu", "0.5", "-mem", "64M", "--", "sh", "-c",
		"for i in 1 2 3 4; do echo out$i; echo err$i >&2; sleep 0.4; done").stdout)[0]
	r := mustCLI(t, addr, 0, "session", "logs", "-f", id)
	if r.stdout != "out1\nout2\nout3\nout4\n" || r.stderr != "err1\nerr2\nerr3\nerr4\n" {
		t.Fatalf("logs -f: stdout %q stderr %q", r.stdout, r.stderr)
	}
	if r := mustCLI(t, addr, 0, "session", "logs", "-tail", "2", id); r.stdout != "out3\nout4\n" || r.stderr != "err3\nerr4\n" {
		t.Fatalf("logs -tail 2: stdout %q stderr %q", r.stdout, r.stderr)
	}
	if r := mustCLI(t, addr, 0, "session", "logs", "-stderr", "-tail", "1", id); r.stdout != "err4\n" || r.stderr != "" {
		t.Fatalf("logs -stderr -tail 1: stdout %q stderr %q", r.stdout, r.stderr)
	}
	r = mustCLI(t, addr, 0, "session", "logs", "-json", id)
	got := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(r.stdout))
	for sc.Scan() {
		var f struct {
			Kernel, Stream string
			Data           []byte
		}
		if err := json.Unmarshal(sc.Bytes(), &f); err != nil || f.Kernel != "main1" {
			t.Fatalf("logs -json line %q: %v", sc.Text(), err)
		}
		got[f.Stream] += string(f.Data)
	}
	if got["stdout"] != "out1\nout2\nout3\nout4\n" || got["stderr"] != "err1\nerr2\nerr3\nerr4\n" {
		t.Fatalf("logs -json: %q", got)
	}
}

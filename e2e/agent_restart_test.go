package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/structs"
)

func sessionDetail(t *testing.T, addr, ref string) (*api.SessionDetail, error) {
	t.Helper()
	r := cli(t, addr, "session", "status", ref, "-json")
	if r.code != 0 {
		return nil, fmt.Errorf("session status %s: %s", ref, r.stderr)
	}
	var d api.SessionDetail
	if err := json.Unmarshal([]byte(r.stdout), &d); err != nil {
		return nil, err
	}
	return &d, nil
}

func waitStatus(t *testing.T, addr, ref string, want structs.SessionStatus) *api.SessionDetail {
	t.Helper()
	var d *api.SessionDetail
	eventually(t, 30*time.Second, "session "+ref+" is "+string(want), func() error {
		var err error
		if d, err = sessionDetail(t, addr, ref); err != nil {
			return err
		}
		if d.Session.Status != want {
			return fmt.Errorf("%s is %s (%s)", ref, d.Session.Status, d.Session.StatusInfo)
		}
		return nil
	})
	return d
}

func agentAlive(t *testing.T, addr string) {
	t.Helper()
	eventually(t, 30*time.Second, "agent is ALIVE", func() error {
		r := cli(t, addr, "node", "list", "-json")
		var agents []*structs.Agent
		if err := json.Unmarshal([]byte(r.stdout), &agents); err != nil {
			return err
		}
		if len(agents) != 1 || agents[0].Status != structs.AgentAlive {
			return fmt.Errorf("agents: %s", r.stdout)
		}
		return nil
	})
}

// TestAgentKill9Recovery kills the agent with SIGKILL while exec kernels
// run, restarts it on the same data dir, and checks that it reattached:
// the interactive kernel still runs and takes exec, the batch kernel's real
// exit code arrives later, and a kernel whose process died while the agent
// was away is reported with a reason.
func TestAgentKill9Recovery(t *testing.T) {
	ports := serverPorts{http: freePort(t), rpc: freePort(t), serf: freePort(t)}
	addr := "http://" + ports.http
	startServerProc(t, t.TempDir(), ports)
	agentDir := t.TempDir()
	reapKernels(t, agentDir)
	agentArgs := []string{"agent", "-data-dir", agentDir, "-rpc", freePort(t), "-serf", freePort(t), "-join", ports.serf, "-fast-gossip"}
	agent := start(t, "agent", agentArgs...)
	agentAlive(t, addr)

	pids := t.TempDir()
	mustCLI(t, addr, 0, "session", "create", "-type", "interactive", "-name", "keep", "-cpu", "0.1", "-mem", "32M", "-wait", "--", "sleep", "infinity")
	mustCLI(t, addr, 0, "session", "create", "-type", "batch", "-name", "later", "-cpu", "0.1", "-mem", "32M", "--",
		"sh", "-c", "sleep 4; exit 7")
	mustCLI(t, addr, 0, "session", "create", "-type", "interactive", "-name", "victim", "-cpu", "0.1", "-mem", "32M", "-wait", "--",
		"sh", "-c", "echo $$ > "+filepath.Join(pids, "victim")+"; exec sleep 1000")
	waitStatus(t, addr, "later", structs.SessionRunning)

	agent.kill9()
	// While the agent is away, one kernel's process dies.
	b, err := os.ReadFile(filepath.Join(pids, "victim"))
	if err != nil {
		t.Fatal(err)
	}
	victim, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	if err := syscall.Kill(victim, syscall.SIGKILL); err != nil {
		t.Fatalf("killing the victim kernel (pid %d): %v", victim, err)
	}

	start(t, "agent-restarted", agentArgs...)
	agentAlive(t, addr)
	eventually(t, 30*time.Second, "exec into the reattached kernel", func() error {
		r := cli(t, addr, "session", "exec", "keep", "--", "sh", "-c", "echo still here")
		if r.code != 0 || strings.TrimSpace(r.stdout) != "still here" {
			return fmt.Errorf("exit %d: %s %s", r.code, r.stdout, r.stderr)
		}
		return nil
	})
	d := waitStatus(t, addr, "later", structs.SessionTerminated)
	if d.Session.Result != structs.ResultFailure || d.Kernels[0].ExitCode == nil || *d.Kernels[0].ExitCode != 7 {
		t.Fatalf("batch kernel after recovery: result %s exit %v (%s)", d.Session.Result, d.Kernels[0].ExitCode, d.Session.StatusInfo)
	}
	eventually(t, 30*time.Second, "victim reported", func() error {
		d, err := sessionDetail(t, addr, "victim")
		if err != nil {
			return err
		}
		if !d.Session.Status.Terminal() || d.Session.StatusInfo == "" {
			return fmt.Errorf("victim is %s (%s)", d.Session.Status, d.Session.StatusInfo)
		}
		return nil
	})
	if d := waitStatus(t, addr, "keep", structs.SessionRunning); d.Kernels[0].Status != structs.KernelRunning {
		t.Fatalf("keep: %s", d.Kernels[0].Status)
	}
	mustCLI(t, addr, 0, "session", "destroy", "keep")
	waitStatus(t, addr, "keep", structs.SessionTerminated)
}

package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/corral-dev/corral/structs"
)

// buildExamplePlugin builds the example driver plugin into a fresh plugin
// dir and returns the dir and the binary's path.
func buildExamplePlugin(t *testing.T) (dir, bin string) {
	t.Helper()
	dir = t.TempDir()
	bin = filepath.Join(dir, "corral-driver-example")
	build := exec.Command("go", "build", "-o", bin, "./cmd/corral-driver-example")
	build.Dir = ".."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the example plugin: %v\n%s", err, out)
	}
	return dir, bin
}

// childrenRunning returns the pids of the live children of parent that run
// the binary at path.
func childrenRunning(parent int, path string) []int {
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		exe, err := os.Readlink(filepath.Join("/proc", e.Name(), "exe"))
		if err != nil || exe != path {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		if len(f) > 1 && f[0] != "Z" && f[1] == strconv.Itoa(parent) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// pluginOf waits until agent runs exactly one plugin process of bin other
// than not, and returns its pid.
func pluginOf(t *testing.T, agent *proc, bin string, not int) int {
	t.Helper()
	var pid int
	eventually(t, 30*time.Second, "the agent runs its plugin", func() error {
		pids := childrenRunning(agent.cmd.Process.Pid, bin)
		if len(pids) != 1 || pids[0] == not {
			return fmt.Errorf("plugin processes %v (killed: %d)", pids, not)
		}
		pid = pids[0]
		return nil
	})
	return pid
}

// TestPluginKill9 runs sessions on the example driver plugin of a real
// agent and kills the plugin process with SIGKILL under a running batch
// session: the agent relaunches the plugin, the session stays RUNNING and
// ends with its task's real exit code, and the relaunched plugin takes new
// sessions. Then the agent itself is killed with SIGKILL: its plugin dies
// with it while the plugin's tasks run on, and the restarted agent
// reattaches them. Finally the plugin is crashed until the agent stops
// advertising its driver.
func TestPluginKill9(t *testing.T) {
	pluginDir, bin := buildExamplePlugin(t)
	ports := serverPorts{http: freePort(t), rpc: freePort(t), serf: freePort(t)}
	addr := "http://" + ports.http
	startServerProc(t, t.TempDir(), ports)
	agentDir := t.TempDir()
	reapKernels(t, agentDir)
	agentArgs := append([]string{"agent", "-data-dir", agentDir, "-rpc", freePort(t), "-serf", freePort(t),
		"-fast-gossip", "-plugin-dir", pluginDir}, agentJoin(t, ports)...)
	agent := start(t, "agent", agentArgs...)
	agentAlive(t, addr)
	eventually(t, 30*time.Second, "the agent advertises the example driver", func() error {
		r := cli(t, addr, "node", "list", "-json")
		var agents []*structs.Agent
		if err := json.Unmarshal([]byte(r.stdout), &agents); err != nil {
			return err
		}
		if len(agents) != 1 || !agents[0].HasDriver("example") {
			return fmt.Errorf("agents: %s", r.stdout)
		}
		return nil
	})
	create := func(typ, name string, cmd ...string) {
		a := []string{"session", "create", "-type", typ, "-name", name, "-cpu", "0.1", "-mem", "32M", "-driver", "example"}
		if typ == "interactive" {
			a = append(a, "-wait")
		}
		mustCLI(t, addr, 0, append(append(a, "--"), cmd...)...)
	}

	create("batch", "exit7", untilSignalled(7)...)
	waitStatus(t, addr, "exit7", structs.SessionRunning)
	kernel := kernelOf(t, addr, "exit7").ID
	old := pluginOf(t, agent, bin, 0)
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	relaunched := pluginOf(t, agent, bin, old)
	t.Logf("plugin %d killed, relaunched as %d", old, relaunched)
	// Give a wrong TERMINATED report the time to show.
	time.Sleep(time.Second)
	if d, err := sessionDetail(t, addr, "exit7"); err != nil || d.Kernels[0].Status != structs.KernelRunning {
		t.Fatalf("session after the plugin's crash: %+v, %v; want its kernel RUNNING", d, err)
	}
	if signalKernel(t, kernel, syscall.SIGUSR1) == 0 {
		t.Fatal("the task's process is gone after the plugin's crash")
	}
	d := waitStatus(t, addr, "exit7", structs.SessionTerminated)
	if k := d.Kernels[0]; k.Status != structs.KernelTerminated || k.ExitCode == nil || *k.ExitCode != 7 || d.Session.Result != structs.ResultFailure {
		t.Fatalf("session after the relaunch: result %s, kernel %s exit %v (%s); want exit code 7", d.Session.Result, k.Status, k.ExitCode, k.StatusInfo)
	}

	create("batch", "after", "sh", "-c", "exit 3")
	d = waitStatus(t, addr, "after", structs.SessionTerminated)
	if k := d.Kernels[0]; k.ExitCode == nil || *k.ExitCode != 3 {
		t.Fatalf("session on the relaunched plugin: kernel %s exit %v (%s); want exit code 3", k.Status, k.ExitCode, k.StatusInfo)
	}

	// The agent dies: its plugin with it, the task under the plugin not.
	create("interactive", "keep", "sleep", "100000")
	keep := kernelOf(t, addr, "keep").ID
	agent.kill9()
	eventually(t, 10*time.Second, "the plugin dies with its agent", func() error {
		if !processGone(relaunched) {
			return fmt.Errorf("plugin process %d still runs", relaunched)
		}
		return nil
	})
	if len(kernelProcs([]string{keep})[keep]) == 0 {
		t.Fatal("the task died with the plugin's agent")
	}
	agent = start(t, "agent-restarted", agentArgs...)
	plugin := pluginOf(t, agent, bin, relaunched)
	eventually(t, 30*time.Second, "exec into the reattached kernel", func() error {
		r := cli(t, addr, "session", "exec", "keep", "--", "sh", "-c", "echo still here")
		if r.code != 0 || strings.TrimSpace(r.stdout) != "still here" {
			return fmt.Errorf("exit %d: %q %q", r.code, r.stdout, r.stderr)
		}
		return nil
	})
	mustCLI(t, addr, 0, "session", "destroy", "keep")
	waitStatus(t, addr, "keep", structs.SessionTerminated)
	checkNoLeftovers(t, agentDir)

	// A plugin that keeps crashing is no longer advertised.
	for range 5 {
		if err := syscall.Kill(plugin, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		plugin = pluginOf(t, agent, bin, plugin)
	}
	eventually(t, 30*time.Second, "the example driver is reported unhealthy", func() error {
		r := cli(t, addr, "node", "list", "-json")
		var agents []*structs.Agent
		if err := json.Unmarshal([]byte(r.stdout), &agents); err != nil {
			return err
		}
		if len(agents) != 1 || agents[0].HasDriver("example") || !strings.Contains(agents[0].UnhealthyDrivers["example"], "crashed 5 times") {
			return fmt.Errorf("agents: %s", r.stdout)
		}
		return nil
	})
	if r := mustCLI(t, addr, 0, "node", "list"); !strings.Contains(r.stdout, "example(unhealthy)") {
		t.Errorf("node list does not show the unhealthy driver:\n%s", r.stdout)
	}
	// A stopped agent ends its plugin too.
	agent.stop(10 * time.Second)
	if !processGone(plugin) {
		t.Errorf("plugin process %d outlives the stopped agent", plugin)
	}
}

// processGone reports whether pid no longer runs (or is a zombie).
func processGone(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && (s[i+2] == 'Z' || s[i+2] == 'X')
}

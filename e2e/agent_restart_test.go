package e2e

import (
	"encoding/json"
	"fmt"
	"slices"
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

// kernelOf returns the only kernel of session ref.
func kernelOf(t *testing.T, addr, ref string) *structs.Kernel {
	t.Helper()
	d, err := sessionDetail(t, addr, ref)
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Kernels) != 1 {
		t.Fatalf("session %s has %d kernels, want 1", ref, len(d.Kernels))
	}
	return d.Kernels[0]
}

// signalKernel sends sig to every process of the kernel (found by its
// environment, in a container too) and returns how many it signalled.
func signalKernel(t *testing.T, kernelID string, sig syscall.Signal) int {
	t.Helper()
	pids := kernelProcs([]string{kernelID})[kernelID]
	for _, pid := range pids {
		if err := syscall.Kill(pid, sig); err != nil && err != syscall.ESRCH {
			t.Fatalf("signalling process %d of kernel %s: %v", pid, kernelID, err)
		}
	}
	return len(pids)
}

// untilSignalled is a batch command that runs until the test sends its
// processes SIGUSR1, then exits with code: the test decides when the
// kernel ends (after the agent's restart), the kernel sets the exit code.
func untilSignalled(code int) []string {
	return []string{"sh", "-c", fmt.Sprintf("trap 'exit %d' USR1; while :; do sleep 1; done", code)}
}

// TestAgentKill9Recovery kills the agent with SIGKILL while exec and runc
// kernels run (runc ones from an image on a loopback registry, where this
// machine can run containers), restarts it on the same data dir, and checks
// for each driver that it reattached: the kernels are still RUNNING, an
// interactive one takes exec, batch ones that end after the restart get
// their real exit code and result, and a kernel whose process died while
// the agent was away is reported TERMINATED or ERROR with a reason. Once
// everything is destroyed, nothing is left of the kernels on the host.
func TestAgentKill9Recovery(t *testing.T) {
	testAgentRestart(t, "SIGKILL", 0)
}

// TestAgentStopAndRestart is the upgrade path: the agent is stopped with
// SIGTERM (it does not leave the pool), stays away for 30 s, far longer
// than gossip takes to fail it (the servers hold it DISCONNECTED, its
// sessions RUNNING), and a new agent process on the same data dir
// reattaches every kernel; nothing is restarted.
func TestAgentStopAndRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("keeps the agent away for 30 s")
	}
	testAgentRestart(t, "SIGTERM", 30*time.Second)
}

// agentStatus is the only agent's record.
func agentStatus(t *testing.T, addr string) (*structs.Agent, error) {
	t.Helper()
	r := cli(t, addr, "node", "list", "-json")
	var agents []*structs.Agent
	if err := json.Unmarshal([]byte(r.stdout), &agents); err != nil {
		return nil, err
	}
	if len(agents) != 1 {
		return nil, fmt.Errorf("agents: %s", r.stdout)
	}
	return agents[0], nil
}

// testAgentRestart stops the agent with sig while kernels run, keeps it
// away for at least away, restarts it and checks that it reattached.
func testAgentRestart(t *testing.T, sig string, away time.Duration) {
	drivers := map[string][]string{"exec": {"-driver", "exec"}}
	why := runcUnavailable()
	runc := why == ""
	var allow []string // the registry is on loopback: server and agent allow it
	if runc {
		ref := startRegistry(t, busyboxImage(t), "corral/busybox:1")
		drivers["runc"] = []string{"-driver", "runc", "-image", ref}
		allow = []string{"-allow-registry", strings.SplitN(ref, "/", 2)[0]}
	} else {
		t.Logf("exec kernels only: %s", why)
	}
	ports := serverPorts{http: freePort(t), rpc: freePort(t), serf: freePort(t)}
	addr := "http://" + ports.http
	startServerProc(t, t.TempDir(), ports, allow...)
	agentDir := t.TempDir()
	reapKernels(t, agentDir)
	agentArgs := append(append([]string{"agent", "-data-dir", agentDir, "-rpc", freePort(t), "-serf", freePort(t), "-fast-gossip"}, agentJoin(t, ports)...), allow...)
	agent := start(t, "agent", agentArgs...)
	agentAlive(t, addr)
	if runc {
		agentRunsRunc(t, addr)
	}

	// For each driver: an interactive kernel that stays, one that dies
	// while the agent is away, and batch kernels that end after the
	// restart with code 7 and 0.
	kernels := map[string]string{} // session name -> kernel ID
	for drv, args := range drivers {
		create := func(typ, name string, cmd ...string) {
			a := append([]string{"session", "create", "-type", typ, "-name", name + "-" + drv, "-cpu", "0.1", "-mem", "32M"}, args...)
			if typ == "interactive" {
				a = append(a, "-wait")
			}
			mustCLI(t, addr, 0, append(append(a, "--"), cmd...)...)
		}
		create("interactive", "keep", "sleep", "100000")
		create("interactive", "victim", "sleep", "100000")
		create("batch", "exit7", untilSignalled(7)...)
		create("batch", "exit0", untilSignalled(0)...)
	}
	for drv := range drivers {
		for _, s := range []string{"keep", "victim", "exit7", "exit0"} {
			ref := s + "-" + drv
			waitStatus(t, addr, ref, structs.SessionRunning)
			kernels[ref] = kernelOf(t, addr, ref).ID
		}
	}
	// The victims' processes, found while the agent still runs, so that it
	// is away as briefly as possible (gossip declares it lost after about
	// a second, and the server would then fail its kernels itself).
	victims := map[string][]int{}
	for drv := range drivers {
		ref := "victim-" + drv
		if victims[ref] = kernelProcs([]string{kernels[ref]})[kernels[ref]]; len(victims[ref]) == 0 {
			t.Fatalf("no process of kernel %s (%s) found", kernels[ref], ref)
		}
	}

	keepPids := map[string][]int{}
	for drv := range drivers {
		ref := "keep-" + drv
		keepPids[ref] = kernelProcs([]string{kernels[ref]})[kernels[ref]]
	}
	stoppedAt := time.Now()
	if sig == "SIGTERM" {
		agent.stop(10 * time.Second)
		if !strings.Contains(agent.output(), "shutting down") {
			t.Fatalf("the agent did not stop on SIGTERM:\n%s", agent.output())
		}
	} else {
		agent.kill9()
	}
	// While the agent is away, the victims' processes die (a container's
	// init takes all of the container with it).
	for ref, pids := range victims {
		for _, pid := range pids {
			if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && err != syscall.ESRCH {
				t.Fatalf("killing process %d of %s: %v", pid, ref, err)
			}
		}
	}
	if away > 0 {
		// Away: DISCONNECTED once gossip failed it and its heartbeats
		// stopped; its sessions untouched however long it stays away
		// within the grace period.
		eventually(t, 20*time.Second, "agent DISCONNECTED", func() error {
			a, err := agentStatus(t, addr)
			if err != nil {
				return err
			}
			if a.Status != structs.AgentDisconnected {
				return fmt.Errorf("agent %s (%s)", a.Status, a.StatusInfo)
			}
			return nil
		})
		time.Sleep(time.Until(stoppedAt.Add(away)))
		a, err := agentStatus(t, addr)
		if err != nil || a.Status != structs.AgentDisconnected {
			t.Fatalf("agent away for %v: %+v %v", away, a, err)
		}
		t.Logf("agent away %v: %s (%s)", time.Since(stoppedAt).Round(time.Second), a.Status, a.StatusInfo)
		for ref := range kernels {
			d, err := sessionDetail(t, addr, ref)
			if err != nil || d.Session.Status != structs.SessionRunning {
				t.Fatalf("%s while its agent is away: %+v %v", ref, d.Session, err)
			}
			if why := d.Unknown[kernels[ref]]; !strings.HasPrefix(why, "UNKNOWN: agent ") {
				t.Errorf("%s while its agent is away: unknown_kernels = %v, want its kernel UNKNOWN", ref, d.Unknown)
			}
		}
	}
	start(t, "agent-restarted", agentArgs...)
	agentAlive(t, addr)
	// Reattached, not restarted: the same processes.
	for ref, pids := range keepPids {
		now := kernelProcs([]string{kernels[ref]})[kernels[ref]]
		slices.Sort(now)
		slices.Sort(pids)
		if len(pids) == 0 || !slices.Equal(now, pids) {
			t.Fatalf("%s after the restart: processes %v, before %v", ref, now, pids)
		}
	}

	for drv := range drivers {
		keep := "keep-" + drv
		eventually(t, 30*time.Second, "exec into the reattached kernel "+keep, func() error {
			r := cli(t, addr, "session", "exec", keep, "--", "sh", "-c", "echo still here; exit 5")
			if r.code != 5 || strings.TrimSpace(r.stdout) != "still here" {
				return fmt.Errorf("exit %d: %q %q", r.code, r.stdout, r.stderr)
			}
			return nil
		})
		// The batch kernels run on under the restarted agent.
		for _, ref := range []string{keep, "exit7-" + drv, "exit0-" + drv} {
			d, err := sessionDetail(t, addr, ref)
			if err != nil {
				t.Fatal(err)
			}
			if d.Session.Status != structs.SessionRunning || d.Kernels[0].Status != structs.KernelRunning {
				t.Fatalf("%s after the restart: session %s, kernel %s (%s)", ref, d.Session.Status, d.Kernels[0].Status, d.Kernels[0].StatusInfo)
			}
		}
		for _, ref := range []string{"exit7-" + drv, "exit0-" + drv} {
			if signalKernel(t, kernels[ref], syscall.SIGUSR1) == 0 {
				t.Fatalf("no process of kernel %s (%s) after the restart", kernels[ref], ref)
			}
		}
	}
	for drv := range drivers {
		for ref, want := range map[string]int{"exit7-" + drv: 7, "exit0-" + drv: 0} {
			d := waitStatus(t, addr, ref, structs.SessionTerminated)
			k := d.Kernels[0]
			result := structs.ResultSuccess
			if want != 0 {
				result = structs.ResultFailure
			}
			if d.Session.Result != result || k.Hostname != "main1" || k.Status != structs.KernelTerminated || k.ExitCode == nil || *k.ExitCode != want {
				t.Fatalf("%s after recovery: result %s, kernel %s %s exit %v (%s), want %s exit %d",
					ref, d.Session.Result, k.Hostname, k.Status, k.ExitCode, k.StatusInfo, result, want)
			}
		}
		victim := "victim-" + drv
		eventually(t, 30*time.Second, victim+" reported", func() error {
			d, err := sessionDetail(t, addr, victim)
			if err != nil {
				return err
			}
			k := d.Kernels[0]
			if (d.Session.Status != structs.SessionTerminated && d.Session.Status != structs.SessionError) ||
				(k.Status != structs.KernelTerminated && k.Status != structs.KernelError) || k.StatusInfo == "" {
				return fmt.Errorf("%s is %s (%s), its kernel %s (%s)", victim, d.Session.Status, d.Session.StatusInfo, k.Status, k.StatusInfo)
			}
			if strings.Contains(k.StatusInfo, "agent lost") {
				t.Fatalf("%s: the server gave up on the agent instead of hearing from it: %s", victim, k.StatusInfo)
			}
			t.Logf("%s: session %s (%s), kernel %s (%s)", victim, d.Session.Status, d.Session.StatusInfo, k.Status, k.StatusInfo)
			return nil
		})
		keep := "keep-" + drv
		mustCLI(t, addr, 0, "session", "destroy", keep)
		waitStatus(t, addr, keep, structs.SessionTerminated)
	}
	checkNoLeftovers(t, agentDir)
}

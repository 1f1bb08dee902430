package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/corral-dev/corral/gpu/fakenvml"
	"github.com/corral-dev/corral/internal/devnode"
	"github.com/corral-dev/corral/structs"
)

// fakeNVIDIADev makes /dev/nvidia0..n-1 and /dev/nvidiactl as fake nodes
// (a major no driver registered: opening one gives ENXIO where the device
// cgroup allows it, EPERM where it denies it) and removes them after the
// test. A host with NVIDIA nodes of its own skips: scripts/gpu-check is
// the test there.
func fakeNVIDIADev(t *testing.T, n int) {
	t.Helper()
	names := []string{"nvidiactl"}
	for i := 0; i < n; i++ {
		names = append(names, "nvidia"+strconv.Itoa(i))
	}
	for _, name := range names {
		if _, err := os.Lstat("/dev/" + name); err == nil {
			t.Skipf("this host has /dev/%s: the fake GPU test would shadow a real device (run scripts/gpu-check)", name)
		}
	}
	major, err := devnode.UnusedCharMajor()
	if err != nil {
		t.Fatal(err)
	}
	for i, name := range names {
		t.Cleanup(func() { _ = os.Remove("/dev/" + name) })
		minor := i - 1
		if name == "nvidiactl" {
			minor = 255
		}
		if err := devnode.Make("/dev/"+name, major, minor); err != nil {
			t.Fatal(err)
		}
	}
}

// kernelGPUs returns the GPUs a session's main kernel holds.
func kernelGPUs(t *testing.T, addr, ref string) []string {
	t.Helper()
	return kernelOf(t, addr, ref).GPUs
}

func waitLog(t *testing.T, addr, ref, want string) string {
	t.Helper()
	var out string
	eventually(t, 30*time.Second, ref+" logs "+want, func() error {
		out = cli(t, addr, "session", "logs", ref).stdout
		if !strings.Contains(out, want) {
			return fmt.Errorf("logs so far: %q", out)
		}
		return nil
	})
	return out
}

// TestGPUs runs an agent on a fake 8-GPU node (the fake libnvidia-ml of
// gpu/fakenvml through -nvml-lib, so go-nvml's real path runs): GPUs 0-3
// and 4-7 are NVLink islands, GPU 7 is in MIG mode with 7 instances of
// 1g.10gb; after a restart of the agent, GPU 5 raises an XID error.
func TestGPUs(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("device nodes and device cgroups need root")
	}
	fakeNVIDIADev(t, 8)
	libDir := t.TempDir()
	lib, err := fakenvml.Build(libDir)
	if err != nil {
		t.Fatal(err)
	}
	m := fakenvml.EightH100(true)
	machine := filepath.Join(libDir, "machine")
	if err := m.Write(machine); err != nil {
		t.Fatal(err)
	}
	t.Setenv(fakenvml.ConfigEnv, machine) // the agent inherits it
	uuid := func(i int) string { return m.GPUs[i].UUID }

	why := runcUnavailable()
	var allow, runcArgs []string
	if why == "" {
		ref := startRegistry(t, busyboxImage(t), "corral/busybox:1")
		runcArgs = []string{"-driver", "runc", "-image", ref}
		allow = []string{"-allow-registry", strings.SplitN(ref, "/", 2)[0]}
	} else {
		t.Logf("no runc kernel: %s", why)
	}
	ports := serverPorts{http: freePort(t), rpc: freePort(t), serf: freePort(t)}
	addr := "http://" + ports.http
	startServerProc(t, t.TempDir(), ports, allow...)
	agentDir := t.TempDir()
	reapKernels(t, agentDir)
	agentArgs := append(append([]string{"agent", "-data-dir", agentDir, "-rpc", freePort(t), "-serf", freePort(t),
		"-fast-gossip", "-nvml-lib", lib}, agentJoin(t, ports)...), allow...)
	agent := start(t, "agent", agentArgs...)
	agentAlive(t, addr)
	eventually(t, 20*time.Second, "the agent's 7 GPUs and 7 MIG slices", func() error {
		if out := cli(t, addr, "node", "list").stdout; !strings.Contains(out, "0/7 1g.10gb:0/7") {
			return fmt.Errorf("node list:\n%s", out)
		}
		return nil
	})

	// Whole GPUs on NVLink islands, MIG slices, all disjoint.
	sleeper := func(name string, args ...string) {
		a := append([]string{"session", "create", "-type", "interactive", "-name", name, "-cpu", "0.1", "-mem", "32M"}, args...)
		a = append(a, "--", "sh", "-c", `echo CVD=$CUDA_VISIBLE_DEVICES; for n in /dev/nvidia[0-9]*; do cat $n 2>&1 | sed "s|^|$n: |"; done; echo done; exec sleep 100000`)
		mustCLI(t, addr, 0, a...)
	}
	sleeper("g4", "-gpu", "4")
	sleeper("g2", "-gpu", "2")
	sleeper("g1", "-gpu", "1")
	sleeper("mig", "-slot", "cuda.mig-1g.10gb=2")
	for _, s := range []string{"g4", "g2", "g1", "mig"} {
		waitStatus(t, addr, s, structs.SessionRunning)
	}
	got := map[string][]string{}
	for _, s := range []string{"g4", "g2", "g1", "mig"} {
		got[s] = kernelGPUs(t, addr, s)
	}
	want := map[string][]string{
		"g4":  {uuid(0), uuid(1), uuid(2), uuid(3)}, // one whole island
		"g2":  {uuid(4), uuid(5)},                   // an NVLinked pair of the other
		"g1":  {uuid(6)},
		"mig": {m.GPUs[7].MIG[0].UUID, m.GPUs[7].MIG[1].UUID},
	}
	for s, w := range want {
		g := slices.Clone(got[s])
		slices.Sort(g)
		if !slices.Equal(g, w) {
			t.Errorf("%s holds %v, want %v", s, got[s], w)
		}
	}
	// The exec kernel sees only its GPU: its node opens (ENXIO: the fake
	// has no driver), the others are denied by its device cgroup.
	out := waitLog(t, addr, "g1", "done")
	if !strings.Contains(out, "CVD="+uuid(6)+"\n") {
		t.Errorf("g1 env: %q", out)
	}
	for i := 0; i < 8; i++ {
		line := fmt.Sprintf("/dev/nvidia%d: ", i)
		want := "Operation not permitted"
		if i == 6 {
			want = "No such device or address"
		}
		if !strings.Contains(out, line) || !strings.Contains(out[strings.Index(out, line):], want) {
			t.Errorf("g1 opening /dev/nvidia%d: want %q in\n%s", i, want, out)
		}
	}
	if out := waitLog(t, addr, "mig", "done"); !strings.Contains(out, "CVD="+m.GPUs[7].MIG[0].UUID+","+m.GPUs[7].MIG[1].UUID) {
		t.Errorf("mig env: %q", out)
	}
	// No whole GPU is left: a new one waits, and says why.
	mustCLI(t, addr, 0, "session", "create", "-name", "waits", "-gpu", "1", "--", "true")
	eventually(t, 20*time.Second, "waits PENDING for a GPU", func() error {
		d, err := sessionDetail(t, addr, "waits")
		if err != nil {
			return err
		}
		if d.Session.Status != structs.SessionPending || !strings.Contains(d.Session.StatusInfo, "cuda.device") {
			return fmt.Errorf("%s: %s", d.Session.Status, d.Session.StatusInfo)
		}
		return nil
	})
	mustCLI(t, addr, 0, "session", "destroy", "waits")

	// After termination the device is free again: a runc kernel gets it
	// and sees exactly its node and the control node.
	mustCLI(t, addr, 0, "session", "destroy", "g1")
	eventually(t, 20*time.Second, "GPU 6 free again", func() error {
		a, err := agentStatus(t, addr)
		if err != nil {
			return err
		}
		if h := a.GPUHolders[uuid(6)]; h != "" {
			return fmt.Errorf("held by %s", h)
		}
		return nil
	})
	next := "g1b"
	if runcArgs != nil {
		next = "runc1"
		a := append([]string{"session", "create", "-type", "interactive", "-name", next, "-gpu", "1"}, runcArgs...)
		a = append(a, "--", "sh", "-c", `echo CVD=$CUDA_VISIBLE_DEVICES; ls /dev | grep nvidia | tr '\n' ' '; echo; echo done; exec sleep 100000`)
		mustCLI(t, addr, 0, a...)
		waitStatus(t, addr, next, structs.SessionRunning)
		out := waitLog(t, addr, next, "done")
		if !strings.Contains(out, "CVD="+uuid(6)) || !strings.Contains(out, "nvidia6 nvidiactl \n") {
			t.Errorf("runc kernel with GPU 6: want only nvidia6 and nvidiactl in its /dev:\n%s", out)
		}
	} else {
		sleeper(next, "-gpu", "1")
		waitStatus(t, addr, next, structs.SessionRunning)
	}
	if g := kernelGPUs(t, addr, next); !slices.Equal(g, []string{uuid(6)}) {
		t.Errorf("%s holds %v, want GPU 6 freed by g1", next, g)
	}

	// An agent restart keeps every allocation. The restarted agent's
	// NVML reports an XID error on GPU 5 a few seconds after its init.
	const xidAfter = 3 * time.Second
	m.GPUs[5].XIDAfterMs, m.GPUs[5].XID = int(xidAfter/time.Millisecond), 79
	if err := m.Write(machine); err != nil {
		t.Fatal(err)
	}
	agent.stop(30 * time.Second)
	agent = start(t, "agent-again", agentArgs...)
	agentAlive(t, addr)
	for s, w := range map[string][]string{"g4": want["g4"], "g2": want["g2"], "mig": want["mig"], next: {uuid(6)}} {
		waitStatus(t, addr, s, structs.SessionRunning)
		g := slices.Clone(kernelGPUs(t, addr, s))
		slices.Sort(g)
		if !slices.Equal(g, w) {
			t.Errorf("after the agent restart %s holds %v, want %v", s, g, w)
		}
	}

	// GPU 5's XID error (after the restarted agent's NVML init): it is
	// shown unhealthy and gets no new work once its kernel is gone.
	eventually(t, xidAfter+30*time.Second, "GPU 5 unhealthy after its XID", func() error {
		out := cli(t, addr, "node", "status", agentName(t, addr)).stdout
		for _, line := range strings.Split(out, "\n") {
			if strings.Contains(line, uuid(5)) && strings.Contains(line, "XID 79") {
				return nil
			}
		}
		return fmt.Errorf("node status:\n%s", out)
	})
	mustCLI(t, addr, 0, "session", "destroy", "g2") // frees GPUs 4 and 5
	sleeper("after", "-gpu", "1")
	waitStatus(t, addr, "after", structs.SessionRunning)
	if g := kernelGPUs(t, addr, "after"); !slices.Equal(g, []string{uuid(4)}) {
		t.Errorf("a new kernel got %v, want GPU 4 (GPU 5 had an XID error)", g)
	}
	mustCLI(t, addr, 0, "session", "create", "-name", "pair", "-gpu", "2", "--", "true")
	eventually(t, 20*time.Second, "pair PENDING: 5 is sick, 6 and 4 held", func() error {
		d, err := sessionDetail(t, addr, "pair")
		if err != nil {
			return err
		}
		if d.Session.Status != structs.SessionPending {
			return fmt.Errorf("%s: %s", d.Session.Status, d.Session.StatusInfo)
		}
		return nil
	})

	// Eight whole GPUs: with every session gone, the operator turns MIG off
	// on GPU 7 and the XID is cleared (the restarted agent re-reads NVML);
	// one kernel then takes all eight.
	for _, s := range []string{"g4", "mig", next, "after", "pair"} {
		mustCLI(t, addr, 0, "session", "destroy", s)
	}
	for _, s := range []string{"g4", "mig", next, "after"} {
		waitStatus(t, addr, s, structs.SessionTerminated)
	}
	m = fakenvml.EightH100(false)
	if err := m.Write(machine); err != nil {
		t.Fatal(err)
	}
	agent.stop(30 * time.Second)
	start(t, "agent-eight", agentArgs...)
	agentAlive(t, addr)
	eventually(t, 20*time.Second, "the agent's 8 whole GPUs, all free", func() error {
		if out := cli(t, addr, "node", "list").stdout; !strings.Contains(out, " 0/8") {
			return fmt.Errorf("node list:\n%s", out)
		}
		return nil
	})
	sleeper("g8", "-gpu", "8")
	waitStatus(t, addr, "g8", structs.SessionRunning)
	g := slices.Clone(kernelGPUs(t, addr, "g8"))
	slices.Sort(g)
	all := make([]string, 8)
	for i := range all {
		all[i] = uuid(i)
	}
	slices.Sort(all)
	if !slices.Equal(g, all) {
		t.Errorf("an 8-GPU kernel holds %v, want all of %v", g, all)
	}
}

// agentName returns the name of the only agent.
func agentName(t *testing.T, addr string) string {
	t.Helper()
	a, err := agentStatus(t, addr)
	if err != nil {
		t.Fatal(err)
	}
	return a.Name
}

package runc

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	osexec "os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/corral-dev/corral/drivers/internal/drivertest"
	"github.com/corral-dev/corral/drivers/shim"
	"github.com/corral-dev/corral/plugins/drivers"
	"github.com/corral-dev/corral/plugins/drivers/testutils"
)

// fakeAgentEnv, set to a fakeAgent in JSON, makes the test binary a fake
// agent: it starts the task with a fresh driver, prints the task handle as
// JSON on stdout and waits to be killed.
const fakeAgentEnv = "CORRAL_RUNC_TEST_FAKE_AGENT"

// noShimEnv, when set, keeps the test binary from calling shim.MaybeRun,
// as a binary that cannot run shims.
const noShimEnv = "CORRAL_RUNC_TEST_NO_SHIM"

// fakeAgent is what a fake agent gets: the driver's settings and the task.
type fakeAgent struct {
	StateDir     string              `json:"state_dir"`
	CgroupParent string              `json:"cgroup_parent"`
	Task         *drivers.TaskConfig `json:"task"`
	// Wait makes the agent wait for the task's result, print it after the
	// handle, destroy the task and exit.
	Wait bool `json:"wait,omitempty"`
}

// fakeAgentResult is what a fake agent with Wait prints after the handle.
type fakeAgentResult struct {
	ExitCode     int    `json:"exit_code"`
	Signal       int    `json:"signal"`
	Err          string `json:"err"`
	Fingerprint  string `json:"fingerprint"`
	DestroyError string `json:"destroy_error"`
}

func runFakeAgent() int {
	var fa fakeAgent
	if err := json.Unmarshal([]byte(os.Getenv(fakeAgentEnv)), &fa); err != nil {
		fmt.Fprintln(os.Stderr, "fake agent:", err)
		return 2
	}
	d := New(nil, WithStateDir(fa.StateDir), WithCgroupParent(fa.CgroupParent))
	h, err := d.Start(context.Background(), fa.Task)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fake agent:", err)
		return 1
	}
	if err := json.NewEncoder(os.Stdout).Encode(h); err != nil {
		return 1
	}
	if !fa.Wait {
		time.Sleep(time.Hour)
		return 0
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	var out fakeAgentResult
	if fp, err := d.Fingerprint(ctx); err == nil {
		out.Fingerprint = fp.Attributes["driver.runc.shim"]
	}
	ch, err := d.Wait(ctx, fa.Task.ID)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fake agent:", err)
		return 1
	}
	res := <-ch
	if res == nil {
		fmt.Fprintln(os.Stderr, "fake agent: no result")
		return 1
	}
	out.ExitCode, out.Signal = res.ExitCode, res.Signal
	if res.Err != nil {
		out.Err = res.Err.Error()
	}
	if err := d.Destroy(ctx, fa.Task.ID, true); err != nil {
		out.DestroyError = err.Error()
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		return 1
	}
	return 0
}

// stateOf returns the driver state in h, which must name the shim.
func stateOf(t *testing.T, h *drivers.TaskHandle) driverState {
	t.Helper()
	st := drivertest.DriverState[driverState](t, h)
	if st.ShimDir == "" || st.ShimPid <= 0 || st.ShimStartTime == 0 || st.InitPid <= 0 || st.InitStartTime == 0 {
		t.Fatalf("driver state %s lacks what Recover needs", h.DriverState)
	}
	return st
}

// recoverTask recovers h on a new driver with opts, as a restarted agent
// does, and destroys the task when the test ends.
func recoverTask(t *testing.T, h *drivers.TaskHandle, opts ...Option) *Driver {
	t.Helper()
	d := newTestDriver(t, opts...)
	drivertest.Recover(t, d, h)
	return d
}

// destroyAndCheck destroys the task and checks that nothing of it is left:
// processes (its shim included), cgroups, mounts, directories, and the
// cgroup parent when given.
func destroyAndCheck(t *testing.T, d *Driver, id, cgroupParent string) {
	t.Helper()
	left := snapshot(t, d, id)
	tk, _ := d.get(id)
	shimPid := tk.state.ShimPid
	if err := d.Destroy(context.Background(), id, true); err != nil {
		t.Fatalf("Destroy: %v", err)
	}
	left.check(t)
	if shimPid > 0 && !testutils.ProcessGone(shimPid) {
		t.Errorf("shim %d still runs after Destroy", shimPid)
	}
	if cgroupParent != "" {
		if dirs := cgroupParentDirs(t, cgroupParent); len(dirs) > 0 {
			t.Errorf("cgroup parents left: %v", dirs)
		}
	}
}

func TestRecoverRealExitCode(t *testing.T) {
	parent := randomName(t, "corral-runc-leak-")
	first := newTestDriver(t, WithCgroupParent(parent))
	cfg := taskConfig(t, "/bin/sh", "-c", "sleep 1; exit 7")
	h := testutils.StartTask(t, first, cfg)
	stateOf(t, h)
	// The agent restarts: a new driver knows the task only by its handle.
	second := recoverTask(t, h, WithCgroupParent(parent))
	st, err := second.Inspect(context.Background(), cfg.ID)
	if err != nil || st.State != drivers.TaskStateRunning {
		t.Fatalf("Inspect = %+v, %v; want running", st, err)
	}
	res := testutils.WaitResult(t, second, cfg.ID, testTimeout)
	if res.ExitCode != 7 || res.Signal != 0 || res.Err != nil {
		t.Fatalf("recovered result = %+v, want exit code 7", res)
	}
	if st, _ := second.Inspect(context.Background(), cfg.ID); st.State != drivers.TaskStateExited || st.CompletedAt.Before(st.StartedAt) {
		t.Errorf("Inspect after exit = %+v", st)
	}
	destroyAndCheck(t, second, cfg.ID, parent)
}

func TestRecoverExitedWhileAway(t *testing.T) {
	first := newTestDriver(t)
	cfg := taskConfig(t, "/bin/sh", "-c", "exit 3")
	h := testutils.StartTask(t, first, cfg)
	st := stateOf(t, h)
	drivertest.WaitGone(t, st.InitPid, st.ShimPid)
	before := time.Now()
	second := recoverTask(t, h)
	res := testutils.WaitResult(t, second, cfg.ID, time.Second)
	if res.ExitCode != 3 || res.Signal != 0 || res.Err != nil {
		t.Fatalf("result = %+v, want exit code 3", res)
	}
	ins, err := second.Inspect(context.Background(), cfg.ID)
	if err != nil || ins.State != drivers.TaskStateExited || !ins.CompletedAt.Before(before) {
		t.Errorf("Inspect = %+v, %v; want exited before the recovery at %v", ins, err, before)
	}
	if _, err := second.Exec(context.Background(), cfg.ID, &drivers.ExecOptions{Command: []string{"true"}}); !errors.Is(err, drivers.ErrTaskNotRunning) {
		t.Errorf("Exec: %v, want ErrTaskNotRunning", err)
	}
	// Stop of an exited task is fine; Destroy (without force) removes
	// everything, the shim's files included.
	if err := second.Stop(context.Background(), cfg.ID, time.Second, ""); err != nil {
		t.Errorf("Stop: %v", err)
	}
	left := snapshot(t, second, cfg.ID)
	if err := second.Destroy(context.Background(), cfg.ID, false); err != nil {
		t.Fatalf("Destroy: %v", err)
	}
	left.check(t)
	if _, err := os.Stat(st.ShimDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("shim directory left after Destroy: %v", err)
	}
}

func TestRecoverStop(t *testing.T) {
	t.Run("after the restart", func(t *testing.T) {
		t.Parallel()
		first := newTestDriver(t)
		cfg := taskConfig(t, "sleep", "1000")
		h := testutils.StartTask(t, first, cfg)
		second := recoverTask(t, h)
		ch, err := second.Wait(context.Background(), cfg.ID)
		if err != nil {
			t.Fatal(err)
		}
		// sleep, as pid 1, has no handler for SIGTERM: Stop kills it and
		// reports SIGTERM.
		if err := second.Stop(context.Background(), cfg.ID, 5*time.Second, "SIGTERM"); err != nil {
			t.Fatalf("Stop: %v", err)
		}
		select {
		case res := <-ch:
			if res.Signal != int(syscall.SIGTERM) || res.ExitCode != 128+int(syscall.SIGTERM) || res.Err != nil {
				t.Errorf("recovered result = %+v, want SIGTERM", res)
			}
		case <-time.After(testTimeout):
			t.Fatal("Wait on a recovered task got no result")
		}
	})
	t.Run("before the restart", func(t *testing.T) {
		t.Parallel()
		first := newTestDriver(t)
		cfg := taskConfig(t, "sleep", "1000")
		h := testutils.StartTask(t, first, cfg)
		if err := first.Stop(context.Background(), cfg.ID, 5*time.Second, "SIGINT"); err != nil {
			t.Fatalf("Stop: %v", err)
		}
		if res := testutils.WaitResult(t, first, cfg.ID, testTimeout); res.Signal != int(syscall.SIGINT) {
			t.Fatalf("result = %+v, want SIGINT", res)
		}
		// The new driver reads the SIGKILL that the shim saw, and the
		// stop signal that the first one recorded.
		second := recoverTask(t, h)
		res := testutils.WaitResult(t, second, cfg.ID, time.Second)
		if res.Signal != int(syscall.SIGINT) || res.ExitCode != 128+int(syscall.SIGINT) || res.Err != nil {
			t.Errorf("recovered result = %+v, want SIGINT", res)
		}
	})
}

// TestShimOutsideContainerCgroups checks that the init is the shim's child
// and that the shim stays in the cgroups of the process that launched it,
// outside the container's.
func TestShimOutsideContainerCgroups(t *testing.T) {
	d := newTestDriver(t)
	cfg := taskConfig(t, "sleep", "1000")
	st := stateOf(t, testutils.StartTask(t, d, cfg))
	tk, _ := d.get(cfg.ID)
	if ppid := procPPid(t, st.InitPid); ppid != st.ShimPid {
		t.Errorf("init %d has parent %d, want the shim %d", st.InitPid, ppid, st.ShimPid)
	}
	if pids := cgroupPids(tk.state.CgroupPaths); slices.Contains(pids, st.ShimPid) || !slices.Contains(pids, st.InitPid) || len(pids) != 1 {
		t.Errorf("container cgroups hold %v; want only the init %d, not the shim %d", pids, st.InitPid, st.ShimPid)
	}
	self, shimCg := procCgroups(t, os.Getpid()), procCgroups(t, st.ShimPid)
	if !slices.Equal(self, shimCg) {
		t.Errorf("shim cgroups %v, want the launcher's %v", shimCg, self)
	}
	leaf := "/" + testCgroupParent + "/runc-" + cfg.ID
	for _, line := range shimCg {
		if strings.Contains(line, leaf) {
			t.Errorf("shim is in the container's cgroup %s", line)
		}
	}
	in := 0
	for _, line := range procCgroups(t, st.InitPid) {
		if strings.HasSuffix(line, ":"+leaf) {
			in++
		}
	}
	if in == 0 || in < len(tk.state.CgroupPaths)/2 {
		t.Errorf("init is in %d of the container's cgroups %v", in, tk.state.CgroupPaths)
	}
}

func procPPid(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(line, "PPid:"); ok {
			n, err := strconv.Atoi(strings.TrimSpace(rest))
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatalf("process %d: no PPid", pid)
	return 0
}

// procCgroups returns the lines of /proc/<pid>/cgroup, sorted.
func procCgroups(t *testing.T, pid int) []string {
	t.Helper()
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	slices.Sort(lines)
	return lines
}

func TestRecoverShimDied(t *testing.T) {
	first := newTestDriver(t)
	cfg := taskConfig(t, "sleep", "1000")
	h := testutils.StartTask(t, first, cfg)
	st := stateOf(t, h)
	_ = syscall.Kill(st.ShimPid, syscall.SIGKILL)
	drivertest.WaitGone(t, st.ShimPid)
	second := recoverTask(t, h)
	if ins, err := second.Inspect(context.Background(), cfg.ID); err != nil || ins.State != drivers.TaskStateRunning {
		t.Fatalf("Inspect = %+v, %v; want still running", ins, err)
	}
	if err := second.Stop(context.Background(), cfg.ID, 5*time.Second, "SIGTERM"); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	res := testutils.WaitResult(t, second, cfg.ID, testTimeout)
	if res.ExitCode != -1 || !errors.Is(res.Err, ErrExitCodeUnknown) || !errors.Is(res.Err, shim.ErrNoExitStatus) {
		t.Fatalf("result = %+v, want exit code -1, ErrExitCodeUnknown and shim.ErrNoExitStatus", res)
	}
}

// TestRecoverWithoutShim recovers the handle of an agent that ran
// containers without shims: the task can be used and stopped, its exit
// code is unknown.
func TestRecoverWithoutShim(t *testing.T) {
	old := recoverPollInterval
	recoverPollInterval = 20 * time.Millisecond
	t.Cleanup(func() { recoverPollInterval = old })

	first := newTestDriver(t)
	cfg := taskConfig(t, "sleep", "1000")
	h := testutils.StartTask(t, first, cfg)
	// The handle as such an agent wrote it.
	var st map[string]any
	if err := json.Unmarshal(h.DriverState, &st); err != nil {
		t.Fatal(err)
	}
	delete(st, "shim_dir")
	delete(st, "shim_pid")
	delete(st, "shim_start_time")
	legacy := *h
	legacy.DriverState, _ = json.Marshal(st)
	second := recoverTask(t, &legacy)
	if out, code := execOutput(t, second, cfg.ID, nil, "hostname"); out != "kernel\n" || code != 0 {
		t.Errorf("exec after Recover: %q, %d", out, code)
	}
	if err := second.Stop(context.Background(), cfg.ID, 5*time.Second, ""); err != nil {
		t.Fatal(err)
	}
	res := testutils.WaitResult(t, second, cfg.ID, testTimeout)
	if res.ExitCode != -1 || !errors.Is(res.Err, ErrExitCodeUnknown) || !errors.Is(res.Err, errNoShim) {
		t.Errorf("result = %+v, want exit code -1 and ErrExitCodeUnknown", res)
	}
	t.Run("exited", func(t *testing.T) {
		other := recoverTask(t, &legacy)
		res := testutils.WaitResult(t, other, cfg.ID, time.Second)
		if res.ExitCode != -1 || !errors.Is(res.Err, ErrExitCodeUnknown) {
			t.Errorf("result = %+v, want exit code -1 and ErrExitCodeUnknown", res)
		}
	})
}

// TestAgentKilled kills -9 a real agent process (the test binary as fake
// agent) that started a container: the container keeps running under its
// shim, and a new driver recovers it and learns its real exit code,
// whether it ends after the recovery or while no agent runs.
func TestAgentKilled(t *testing.T) {
	for _, whileAway := range []bool{false, true} {
		t.Run(fmt.Sprintf("exits while away=%v", whileAway), func(t *testing.T) {
			t.Parallel()
			parent := randomName(t, "corral-runc-leak-")
			cfg := taskConfig(t, "/bin/sh", "-c", "while [ ! -e /release ]; do sleep 0.05; done; exit 7")
			h, st := startInFakeAgent(t, parent, cfg)
			if testutils.ProcessGone(st.InitPid) || testutils.ProcessGone(st.ShimPid) {
				t.Fatal("the container or its shim died with the agent")
			}
			release := func() {
				if err := os.WriteFile(filepath.Join(st.RootFS.RootFS, "release"), nil, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if whileAway {
				release()
				drivertest.WaitGone(t, st.InitPid, st.ShimPid)
			}
			before := time.Now()
			d := recoverTask(t, h, WithCgroupParent(parent))
			if !whileAway {
				if ins, err := d.Inspect(context.Background(), cfg.ID); err != nil || ins.State != drivers.TaskStateRunning {
					t.Fatalf("Inspect = %+v, %v; want running", ins, err)
				}
				if out, code := execOutput(t, d, cfg.ID, nil, "cat", "/proc/1/cmdline"); code != 0 || !strings.HasPrefix(out, "/bin/sh\x00") {
					t.Errorf("exec after Recover: %q, %d", out, code)
				}
				release()
			}
			res := testutils.WaitResult(t, d, cfg.ID, testTimeout)
			if res.ExitCode != 7 || res.Signal != 0 || res.Err != nil {
				t.Fatalf("result = %+v, want exit code 7", res)
			}
			if ins, _ := d.Inspect(context.Background(), cfg.ID); whileAway && !ins.CompletedAt.Before(before) {
				t.Errorf("CompletedAt %v, want before the recovery at %v", ins.CompletedAt, before)
			}
			destroyAndCheck(t, d, cfg.ID, parent)
		})
	}
}

// startInFakeAgent starts cfg in a fake agent process with its cgroups
// below cgroupParent, kills that process with SIGKILL and returns the
// handle it printed.
func startInFakeAgent(t *testing.T, cgroupParent string, cfg *drivers.TaskConfig) (*drivers.TaskHandle, driverState) {
	t.Helper()
	h, killAgent := drivertest.StartFakeAgent(t, fakeAgentEnv, fakeAgent{StateDir: t.TempDir(), CgroupParent: cgroupParent, Task: cfg})
	st := stateOf(t, h)
	// Whatever happens next, leave nothing behind: recover the task on a
	// driver of its own and destroy it (a no-op once the test did).
	t.Cleanup(func() {
		d := New(nil, WithCgroupParent(cgroupParent))
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		if err := d.Recover(ctx, h); err == nil {
			_ = d.Destroy(ctx, cfg.ID, true)
		}
	})
	killAgent()
	return h, st
}

// TestWithoutShimBinary runs a container from a binary that never called
// shim.MaybeRun (the test binary re-executed as such): the container runs
// as a child of the agent itself and still reports its exit code.
func TestWithoutShimBinary(t *testing.T) {
	parent := randomName(t, "corral-runc-leak-")
	cfg := taskConfig(t, "/bin/sh", "-c", "exit 5")
	b, err := json.Marshal(fakeAgent{StateDir: t.TempDir(), CgroupParent: parent, Task: cfg, Wait: true})
	if err != nil {
		t.Fatal(err)
	}
	agent := osexec.Command(os.Args[0])
	agent.Env = append(os.Environ(), fakeAgentEnv+"="+string(b), noShimEnv+"=1")
	var stdout, stderr bytes.Buffer
	agent.Stdout, agent.Stderr = &stdout, &stderr
	if err := agent.Run(); err != nil {
		t.Fatalf("agent without shims: %v; stderr: %s", err, stderr.String())
	}
	dec := json.NewDecoder(&stdout)
	var h drivers.TaskHandle
	var res fakeAgentResult
	if err := dec.Decode(&h); err != nil {
		t.Fatal(err)
	}
	if err := dec.Decode(&res); err != nil {
		t.Fatal(err)
	}
	var st driverState
	if err := json.Unmarshal(h.DriverState, &st); err != nil {
		t.Fatal(err)
	}
	if st.ShimPid != agent.Process.Pid {
		t.Errorf("shim pid %d, want the agent's own %d", st.ShimPid, agent.Process.Pid)
	}
	if res.ExitCode != 5 || res.Signal != 0 || res.Err != "" || res.DestroyError != "" || res.Fingerprint != "in-process" {
		t.Errorf("agent without shims reported %+v, want exit code 5 and the in-process fingerprint", res)
	}
	drivertest.WaitGone(t, st.InitPid)
	if dirs := cgroupParentDirs(t, parent); len(dirs) > 0 {
		t.Errorf("cgroup parents left: %v", dirs)
	}
	if _, err := os.Stat(st.RootFS.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("container dir left: %v", err)
	}
}

package exec

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	osexec "os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/corral-dev/corral/drivers/internal/drivertest"
	"github.com/corral-dev/corral/drivers/shim"
	"github.com/corral-dev/corral/plugins/drivers"
	"github.com/corral-dev/corral/plugins/drivers/testutils"
)

// fakeAgentEnv, set to a task config in JSON, makes the test binary a fake
// agent: it starts the task with a fresh driver, prints the task handle as
// JSON on stdout and waits to be killed.
const fakeAgentEnv = "CORRAL_EXEC_TEST_FAKE_AGENT"

func runFakeAgent() int {
	var cfg drivers.TaskConfig
	if err := json.Unmarshal([]byte(os.Getenv(fakeAgentEnv)), &cfg); err != nil {
		fmt.Fprintln(os.Stderr, "fake agent:", err)
		return 2
	}
	h, err := New(nil).Start(context.Background(), &cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fake agent:", err)
		return 1
	}
	if err := json.NewEncoder(os.Stdout).Encode(h); err != nil {
		return 1
	}
	time.Sleep(time.Hour)
	return 0
}

func stateOf(t *testing.T, h *drivers.TaskHandle) driverState {
	t.Helper()
	st := drivertest.DriverState[driverState](t, h)
	if st.ShimDir == "" || st.ShimPid <= 0 || st.ShimStartTime == 0 || st.Pid <= 0 || st.StartTime == 0 {
		t.Fatalf("driver state %s lacks what Recover needs", h.DriverState)
	}
	return st
}

// recoverTask recovers h on a new driver, as a restarted agent does, and
// destroys the task when the test ends.
func recoverTask(t *testing.T, h *drivers.TaskHandle) *Driver {
	t.Helper()
	d := newTestDriver(t)
	drivertest.Recover(t, d, h)
	return d
}

func TestRecoverRealExitCode(t *testing.T) {
	first := newTestDriver(t)
	cfg := testutils.TaskConfig(t, "/bin/sh", "-c", "sleep 1; exit 7")
	h := testutils.StartTask(t, first, cfg)
	// The agent restarts: a new driver knows the task only by its handle.
	second := recoverTask(t, h)
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
}

func TestRecoverStop(t *testing.T) {
	first := newTestDriver(t)
	cfg := testutils.TaskConfig(t, "sleep", "100")
	h := testutils.StartTask(t, first, cfg)
	second := recoverTask(t, h)
	ch, err := second.Wait(context.Background(), cfg.ID)
	if err != nil {
		t.Fatal(err)
	}
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
}

func TestRecoverExitedWhileAway(t *testing.T) {
	first := newTestDriver(t)
	cfg := testutils.TaskConfig(t, "/bin/sh", "-c", "exit 3")
	h := testutils.StartTask(t, first, cfg)
	st := stateOf(t, h)
	drivertest.WaitGone(t, st.Pid, st.ShimPid)
	before := time.Now()
	second := recoverTask(t, h)
	res := testutils.WaitResult(t, second, cfg.ID, time.Second)
	if res.ExitCode != 3 || res.Err != nil {
		t.Fatalf("result = %+v, want exit code 3", res)
	}
	ins, err := second.Inspect(context.Background(), cfg.ID)
	if err != nil || ins.State != drivers.TaskStateExited || !ins.CompletedAt.Before(before) {
		t.Errorf("Inspect = %+v, %v; want exited before the recovery at %v", ins, err, before)
	}
	// Stop of an exited task is fine; Destroy removes its shim files.
	if err := second.Stop(context.Background(), cfg.ID, time.Second, ""); err != nil {
		t.Errorf("Stop: %v", err)
	}
	if err := second.Destroy(context.Background(), cfg.ID, false); err != nil {
		t.Fatalf("Destroy: %v", err)
	}
	if _, err := os.Stat(st.ShimDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("shim directory left after Destroy: %v", err)
	}
}

func TestRecoverShimDied(t *testing.T) {
	t.Run("task gone too", func(t *testing.T) {
		first := newTestDriver(t)
		cfg := testutils.TaskConfig(t, "sleep", "1000")
		h := testutils.StartTask(t, first, cfg)
		st := stateOf(t, h)
		// Kill the shim first so that it records nothing.
		_ = syscall.Kill(st.ShimPid, syscall.SIGKILL)
		drivertest.WaitGone(t, st.ShimPid)
		_ = syscall.Kill(-st.Pgid, syscall.SIGKILL)
		drivertest.WaitGone(t, st.Pid)
		second := recoverTask(t, h)
		res := testutils.WaitResult(t, second, cfg.ID, testTimeout)
		checkLost(t, res)
	})
	t.Run("task still running", func(t *testing.T) {
		first := newTestDriver(t)
		cfg := testutils.TaskConfig(t, "sleep", "1000")
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
		drivertest.WaitGone(t, st.Pid)
		checkLost(t, testutils.WaitResult(t, second, cfg.ID, testTimeout))
	})
}

// checkLost checks the result of a task whose shim died unrecorded.
func checkLost(t *testing.T, res *drivers.ExitResult) {
	t.Helper()
	if res.ExitCode != -1 || !errors.Is(res.Err, ErrExitCodeUnknown) || !errors.Is(res.Err, shim.ErrNoExitStatus) {
		t.Fatalf("result = %+v, want exit code -1 and ErrNoExitStatus", res)
	}
	if !strings.Contains(res.Err.Error(), "shim died without recording the exit status") {
		t.Errorf("error %q does not say what happened", res.Err)
	}
}

// TestAgentKilled kills -9 a real agent process (the test binary as fake
// agent) that started a task: the task keeps running under its shim, and
// a new driver recovers it and learns its real exit code, whether the task
// ends after the recovery or while no agent runs.
func TestAgentKilled(t *testing.T) {
	for _, whileAway := range []bool{false, true} {
		t.Run(fmt.Sprintf("exits while away=%v", whileAway), func(t *testing.T) {
			t.Parallel()
			cfg := testutils.TaskConfig(t, "/bin/sh", "-c", "while [ ! -e release ]; do sleep 0.02; done; exit 7")
			h, st := startInFakeAgent(t, cfg)
			if testutils.ProcessGone(st.Pid) || testutils.ProcessGone(st.ShimPid) {
				t.Fatal("the task or its shim died with the agent")
			}
			release := func() {
				if err := os.WriteFile(filepath.Join(cfg.WorkDir, "release"), nil, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if whileAway {
				release()
				drivertest.WaitGone(t, st.Pid)
			}
			d := recoverTask(t, h)
			if !whileAway {
				if ins, err := d.Inspect(context.Background(), cfg.ID); err != nil || ins.State != drivers.TaskStateRunning {
					t.Fatalf("Inspect = %+v, %v; want running", ins, err)
				}
				release()
			}
			res := testutils.WaitResult(t, d, cfg.ID, testTimeout)
			if res.ExitCode != 7 || res.Signal != 0 || res.Err != nil {
				t.Fatalf("result = %+v, want exit code 7", res)
			}
		})
	}
}

// startInFakeAgent starts cfg in a fake agent process, kills that process
// with SIGKILL and returns the handle it printed.
func startInFakeAgent(t *testing.T, cfg *drivers.TaskConfig) (*drivers.TaskHandle, driverState) {
	t.Helper()
	h, killAgent := drivertest.StartFakeAgent(t, fakeAgentEnv, cfg)
	st := stateOf(t, h)
	// Whatever happens next, leave no process behind.
	t.Cleanup(func() {
		if !testutils.ProcessGone(st.Pid) {
			_ = syscall.Kill(-st.Pgid, syscall.SIGKILL)
		}
	})
	killAgent()
	return h, st
}

func TestRecoverGoneOrReused(t *testing.T) {
	d := newTestDriver(t)
	other := newTestDriver(t)
	live := testutils.TaskConfig(t, "sleep", "1000")
	liveState := stateOf(t, testutils.StartTask(t, other, live))

	// A shim directory whose state.json names the live process, but with
	// other start times: the pids were reused.
	reused := t.TempDir()
	b, _ := json.Marshal(shim.State{Kind: "exec", ShimPid: liveState.Pid, ShimStartTime: liveState.StartTime + 1,
		Pid: liveState.Pid, StartTime: liveState.StartTime + 1})
	if err := os.WriteFile(filepath.Join(reused, "state.json"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		state driverState
	}{
		{"pid reused", driverState{ShimDir: reused, ShimPid: liveState.Pid, ShimStartTime: liveState.StartTime + 1,
			Pid: liveState.Pid, Pgid: liveState.Pgid, StartTime: liveState.StartTime + 1}},
		{"no shim files", driverState{ShimDir: t.TempDir(), ShimPid: 1 << 30, Pid: 1 << 30, Pgid: 1 << 30, StartTime: 1}},
		{"no shim, no such pid", driverState{Pid: 1 << 30, Pgid: 1 << 30, StartTime: 1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st, _ := json.Marshal(tc.state)
			cfg := testutils.TaskConfig(t, "sleep", "1000")
			h := &drivers.TaskHandle{Version: 1, Driver: "exec", Config: cfg, DriverState: st, StartedAt: time.Now()}
			if err := d.Recover(context.Background(), h); err != nil {
				t.Fatalf("Recover: %v", err)
			}
			res := testutils.WaitResult(t, d, cfg.ID, testTimeout)
			if res.ExitCode != -1 || !errors.Is(res.Err, ErrExitCodeUnknown) {
				t.Errorf("result = %+v, want unknown exit", res)
			}
			if err := d.Destroy(context.Background(), cfg.ID, false); err != nil {
				t.Fatalf("Destroy: %v", err)
			}
		})
	}
	// Destroying the stale tasks must not have touched the live process.
	if testutils.ProcessGone(liveState.Pid) {
		t.Fatal("Destroy of a stale recovered task killed the process that reused its pid")
	}
}

// TestRecoverWithoutShim recovers a handle of an agent that ran tasks
// without shims: the task can be stopped, its exit code is unknown.
func TestRecoverWithoutShim(t *testing.T) {
	old := recoverPollInterval
	recoverPollInterval = 20 * time.Millisecond
	t.Cleanup(func() { recoverPollInterval = old })

	cmd := osexec.Command("sleep", "1000")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// This test is the parent: reap the process but tell nobody.
	go func() { _ = cmd.Wait() }()
	t.Cleanup(func() { _ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) })
	ps, err := readProcStat(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := json.Marshal(driverState{Pid: cmd.Process.Pid, Pgid: cmd.Process.Pid, StartTime: ps.StartTime})
	cfg := testutils.TaskConfig(t, "sleep", "1000")
	d := recoverTask(t, &drivers.TaskHandle{Version: 1, Driver: "exec", Config: cfg, DriverState: st, StartedAt: time.Now()})
	if err := d.Stop(context.Background(), cfg.ID, 5*time.Second, "SIGTERM"); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	res := testutils.WaitResult(t, d, cfg.ID, testTimeout)
	if res.ExitCode != -1 || !errors.Is(res.Err, ErrExitCodeUnknown) || !errors.Is(res.Err, errNoShim) {
		t.Errorf("result = %+v, want unknown exit", res)
	}
}

// TestExecReachedByStop checks that Stop reaches an Exec command, which runs
// in a process group of its own because the task's group lives in the
// shim's session.
func TestExecReachedByStop(t *testing.T) {
	d := newTestDriver(t)
	d.cgroups = nil // the process groups are all there is
	cfg := testutils.TaskConfig(t, "sleep", "1000")
	testutils.StartTask(t, d, cfg)
	var out testutils.SafeBuffer
	done := make(chan error, 1)
	go func() {
		_, err := d.Exec(context.Background(), cfg.ID, &drivers.ExecOptions{
			Command: []string{"/bin/sh", "-c", "echo $$; exec sleep 1000"}, Stdout: &out,
		})
		done <- err
	}()
	if !out.WaitFor("\n", testTimeout) {
		t.Fatal("exec'd command printed nothing")
	}
	var pid int
	if _, err := fmt.Sscan(out.String(), &pid); err != nil {
		t.Fatal(err)
	}
	pid = hostPids(t, d, cfg.ID, []int{pid})[0]
	if err := d.Stop(context.Background(), cfg.ID, 5*time.Second, "SIGTERM"); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	select {
	case <-done:
	case <-time.After(testTimeout):
		t.Fatal("Exec did not return after Stop")
	}
	drivertest.WaitGone(t, pid)
}

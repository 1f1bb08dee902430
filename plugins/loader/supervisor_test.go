package loader_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/corral-dev/corral/plugins/drivers"
	"github.com/corral-dev/corral/plugins/drivers/testutils"
	"github.com/corral-dev/corral/plugins/loader"
)

// supervise starts the example plugin under a Supervisor closed when the
// test ends.
func supervise(t *testing.T, p loader.Policy) *loader.Supervisor {
	t.Helper()
	s, err := loader.Supervise(binary(t, "corral-driver-example"), testutils.TestLogger(t), p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// eventually polls cond every 20ms until it returns nil or timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %v", what, timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// crash kills the supervised plugin process with SIGKILL and waits until a
// new one runs; it returns the new pid.
func crash(t *testing.T, s *loader.Supervisor) int {
	t.Helper()
	old := s.Pid()
	if old == 0 {
		t.Fatal("no plugin process runs")
	}
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	var pid int
	eventually(t, 15*time.Second, "plugin relaunched", func() error {
		if pid = s.Pid(); pid == 0 || pid == old {
			return fmt.Errorf("pid %d (killed: %d)", pid, old)
		}
		return nil
	})
	if !testutils.ProcessGone(old) {
		t.Errorf("killed plugin process %d still runs", old)
	}
	return pid
}

// TestSupervisorRelaunchRecovers kills the plugin under two running tasks:
// one ends while no plugin runs, the other after the relaunch. Both report
// their real exit codes through Waits made before the crash, and the
// relaunched plugin starts new tasks.
func TestSupervisorRelaunchRecovers(t *testing.T) {
	// A long first backoff lets the short task end while no plugin runs.
	s := supervise(t, loader.Policy{MinBackoff: time.Second})
	ctx := context.Background()
	short := testutils.TaskConfig(t, "sh", "-c", "sleep 0.3; exit 3")
	long := testutils.TaskConfig(t, "sh", "-c", "sleep 2.5; exit 7")
	testutils.StartTask(t, s, short)
	testutils.StartTask(t, s, long)
	waits := map[string]<-chan *drivers.ExitResult{}
	for _, cfg := range []*drivers.TaskConfig{short, long} {
		ch, err := s.Wait(ctx, cfg.ID)
		if err != nil {
			t.Fatalf("Wait(%s): %v", cfg.ID, err)
		}
		waits[cfg.ID] = ch
	}
	crash(t, s)
	if st, err := s.Inspect(ctx, long.ID); err != nil || st.State != drivers.TaskStateRunning {
		t.Errorf("long task after the relaunch: %+v, %v; want running", st, err)
	}
	for id, want := range map[string]int{short.ID: 3, long.ID: 7} {
		select {
		case res := <-waits[id]:
			if res == nil || res.Err != nil || res.ExitCode != want {
				t.Errorf("task %s: result %+v, want exit code %d and no error", id, res, want)
			}
		case <-time.After(15 * time.Second):
			t.Fatalf("task %s: no result after the relaunch", id)
		}
	}
	cfg := testutils.TaskConfig(t, "sh", "-c", "exit 5")
	testutils.StartTask(t, s, cfg)
	if res := testutils.WaitResult(t, s, cfg.ID, 10*time.Second); res.ExitCode != 5 || res.Err != nil {
		t.Errorf("new task on the relaunched plugin: %+v, want exit code 5", res)
	}
	if h, _, _ := s.Health(); h != drivers.HealthHealthy {
		t.Errorf("health after one crash: %s, want healthy", h)
	}
}

// TestSupervisorWaitDuringRelaunch makes calls while no plugin runs: they
// wait for the relaunch instead of failing.
func TestSupervisorWaitDuringRelaunch(t *testing.T) {
	s := supervise(t, loader.Policy{MinBackoff: 500 * time.Millisecond})
	if err := syscall.Kill(s.Pid(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "plugin seen exited", func() error {
		if s.Pid() != 0 {
			return errors.New("still running")
		}
		return nil
	})
	cfg := testutils.TaskConfig(t, "sh", "-c", "exit 4")
	testutils.StartTask(t, s, cfg)
	if res := testutils.WaitResult(t, s, cfg.ID, 10*time.Second); res.ExitCode != 4 || res.Err != nil {
		t.Errorf("task started during the relaunch: %+v, want exit code 4", res)
	}
}

// TestSupervisorUnhealthy crashes the plugin until it is reported
// unhealthy, then lets it stay up until it is healthy again.
func TestSupervisorUnhealthy(t *testing.T) {
	const stable = 2 * time.Second
	s := supervise(t, loader.Policy{MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond, MaxCrashes: 3, StableAfter: stable})
	_, _, changed := s.Health()
	for range 3 {
		crash(t, s)
	}
	select {
	case <-changed:
	case <-time.After(5 * time.Second):
		t.Fatal("no health change after 3 crashes")
	}
	h, reason, changed := s.Health()
	if h != drivers.HealthUnhealthy || !strings.Contains(reason, "crashed 3 times") {
		t.Fatalf("health after 3 crashes: %s (%s), want unhealthy saying why", h, reason)
	}
	if fp, err := s.Fingerprint(context.Background()); err != nil || fp.Health != drivers.HealthUnhealthy {
		t.Errorf("Fingerprint of an unhealthy plugin: %+v, %v", fp, err)
	}
	// Unhealthy still relaunches: the driver keeps working for its tasks.
	cfg := testutils.TaskConfig(t, "true")
	testutils.StartTask(t, s, cfg)
	if res := testutils.WaitResult(t, s, cfg.ID, 10*time.Second); res.ExitCode != 0 {
		t.Errorf("task on the unhealthy plugin: %+v", res)
	}
	select {
	case <-changed:
	case <-time.After(stable + 5*time.Second):
		t.Fatal("the plugin stayed up but was not reported healthy again")
	}
	if h, reason, _ := s.Health(); h != drivers.HealthHealthy || reason != "" {
		t.Errorf("health after staying up: %s (%s), want healthy", h, reason)
	}
}

// TestSupervisorClose ends the plugin for good: no relaunch, calls fail.
func TestSupervisorClose(t *testing.T) {
	s := supervise(t, loader.Policy{MinBackoff: 10 * time.Millisecond})
	pid := s.Pid()
	s.Close()
	s.Close()
	if !testutils.ProcessGone(pid) {
		t.Errorf("plugin process %d runs after Close", pid)
	}
	time.Sleep(100 * time.Millisecond)
	if p := s.Pid(); p != 0 {
		t.Errorf("plugin relaunched after Close: pid %d", p)
	}
	if _, err := s.Inspect(context.Background(), "x"); !errors.Is(err, drivers.ErrPluginExited) {
		t.Errorf("Inspect after Close: err = %v, want ErrPluginExited", err)
	}
}

// TestSupervisorTaskLostWhileDown kills a task and its shim while no
// plugin runs: the Wait made before yields an error saying that the exit
// status is lost, not that the plugin exited.
func TestSupervisorTaskLostWhileDown(t *testing.T) {
	s := supervise(t, loader.Policy{MinBackoff: time.Second})
	ctx := context.Background()
	cfg := testutils.TaskConfig(t, "sleep", "1000")
	h := testutils.StartTask(t, s, cfg)
	var st struct {
		Pid     int `json:"pid"`
		ShimPid int `json:"shim_pid"`
	}
	if err := json.Unmarshal(h.DriverState, &st); err != nil || st.Pid == 0 || st.ShimPid == 0 {
		t.Fatalf("driver state %s: %v", h.DriverState, err)
	}
	ch, err := s.Wait(ctx, cfg.ID)
	if err != nil {
		t.Fatal(err)
	}
	for _, pid := range []int{s.Pid(), st.ShimPid, st.Pid} {
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case res := <-ch:
		if res == nil || res.ExitCode != -1 || res.Err == nil || errors.Is(res.Err, drivers.ErrPluginExited) ||
			!strings.Contains(res.Err.Error(), "exit code unknown") {
			t.Errorf("result %+v, want exit code -1 and an error saying the exit code is unknown", res)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("no result after the relaunch")
	}
}

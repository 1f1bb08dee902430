package testutils

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/corral-dev/corral/plugins/drivers"
)

// RestartFunc ends a driver as an agent or plugin restart does (a plugin
// process killed, an in-process driver dropped without destroying its
// tasks) and returns a new driver of the same kind on the same node, which
// knows none of the old one's tasks until Recover.
type RestartFunc func(t *testing.T, old drivers.Driver) drivers.Driver

// RunRecoveryConformance runs the recovery scenarios every driver with the
// Recover capability must pass, one per subtest, in parallel: a task that
// runs across a restart (found running, exec works where the driver can
// exec, Stop ends it with SIGTERM's result), a task that exits after the
// restart (the new driver learns its exit code), a task that exited before
// it (found exited, with its exit code), a second Recover of a known
// task (a no-op: the agent may hand a relaunched plugin a handle twice)
// and Recover(nil), which is an invalid config. timeout bounds each wait for a task (drivers that boot a VM need
// more than a process does).
func RunRecoveryConformance(t *testing.T, newDriver func(t *testing.T) drivers.Driver, restart RestartFunc, timeout time.Duration) {
	t.Helper()
	tests := []struct {
		name string
		fn   func(*testing.T, drivers.Driver, RestartFunc, time.Duration)
	}{
		{"RecoverRunning", testRecoverRunning},
		{"RecoverThenExit", testRecoverThenExit},
		{"RecoverExited", testRecoverExited},
		{"RecoverNil", func(t *testing.T, d drivers.Driver, _ RestartFunc, _ time.Duration) {
			if err := d.Recover(context.Background(), nil); !errors.Is(err, drivers.ErrInvalidConfig) {
				t.Errorf("Recover(nil) = %v, want ErrInvalidConfig", err)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			d := newDriver(t)
			if !d.Capabilities().Recover {
				t.Skip("driver cannot recover tasks")
			}
			tc.fn(t, d, restart, timeout)
		})
	}
}

// persisted round-trips h through JSON as the agent's state store does.
func persisted(t *testing.T, h *drivers.TaskHandle) *drivers.TaskHandle {
	t.Helper()
	b, err := json.Marshal(h)
	if err != nil {
		t.Fatal(err)
	}
	var out drivers.TaskHandle
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	return &out
}

// startUnmanaged starts cfg on d without the cleanup of StartTask, which
// would go to the old driver: the recovering one destroys the task.
func startUnmanaged(t *testing.T, d drivers.Driver, cfg *drivers.TaskConfig) *drivers.TaskHandle {
	t.Helper()
	h, err := d.Start(context.Background(), cfg)
	if err != nil {
		t.Fatalf("Start(%v): %v", cfg.Command, err)
	}
	return h
}

// recoverOn recovers h on d and destroys the task (with force) when the
// test ends.
func recoverOn(t *testing.T, d drivers.Driver, h *drivers.TaskHandle) {
	t.Helper()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := d.Destroy(ctx, h.Config.ID, true); err != nil && !errors.Is(err, drivers.ErrTaskNotFound) {
			t.Errorf("cleanup: Destroy(%s): %v", h.Config.ID, err)
		}
	})
	if err := d.Recover(context.Background(), persisted(t, h)); err != nil {
		t.Fatalf("Recover: %v", err)
	}
}

// destroyOnFailure destroys the task on the old driver if the test fails
// before the new driver took it over.
func destroyOnFailure(t *testing.T, d drivers.Driver, id string) (handedOver func()) {
	done := false
	t.Cleanup(func() {
		if !done {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_ = d.Destroy(ctx, id, true)
		}
	})
	return func() { done = true }
}

func testRecoverRunning(t *testing.T, d drivers.Driver, restart RestartFunc, timeout time.Duration) {
	cfg := TaskConfig(t, "/bin/sh", "-c", "echo started; exec sleep 1000")
	h := startUnmanaged(t, d, cfg)
	handedOver := destroyOnFailure(t, d, cfg.ID)
	WaitForLog(t, cfg.StdoutPath, "started", timeout)
	d2 := restart(t, d)
	handedOver()
	recoverOn(t, d2, h)
	ctx := context.Background()
	st, err := d2.Inspect(ctx, cfg.ID)
	if err != nil || st.State != drivers.TaskStateRunning {
		t.Fatalf("Inspect after Recover = %+v, %v; want running", st, err)
	}
	if !st.StartedAt.Equal(h.StartedAt) && st.StartedAt.Sub(h.StartedAt).Abs() > time.Second {
		t.Errorf("StartedAt after Recover = %v, want the original %v", st.StartedAt, h.StartedAt)
	}
	if err := d2.Recover(ctx, persisted(t, h)); err != nil {
		t.Errorf("second Recover of a known task: err = %v, want nil (a no-op)", err)
	}
	if st, err := d2.Inspect(ctx, cfg.ID); err != nil || st.State != drivers.TaskStateRunning {
		t.Errorf("Inspect after a second Recover = %+v, %v; want still running", st, err)
	}
	if d2.Capabilities().Exec {
		var out SafeBuffer
		ectx, cancel := context.WithTimeout(ctx, timeout)
		code, err := d2.Exec(ectx, cfg.ID, &drivers.ExecOptions{Command: []string{"/bin/sh", "-c", "echo recovered"}, Stdout: &out})
		cancel()
		if err != nil || code != 0 || out.String() != "recovered\n" {
			t.Errorf("Exec in the recovered task = %d, %v, stdout %q; want 0 and \"recovered\\n\"", code, err, out.String())
		}
	}
	ch, err := d2.Wait(ctx, cfg.ID)
	if err != nil {
		t.Fatalf("Wait: %v", err)
	}
	if err := d2.Stop(ctx, cfg.ID, timeout, "SIGTERM"); err != nil {
		t.Fatalf("Stop of the recovered task: %v", err)
	}
	select {
	case res := <-ch:
		if res == nil || res.Signal != 15 || res.ExitCode != 143 {
			t.Errorf("result of the recovered task after Stop = %+v, want SIGTERM (143)", res)
		}
	case <-time.After(timeout):
		t.Fatal("no result after Stop of the recovered task")
	}
}

func testRecoverThenExit(t *testing.T, d drivers.Driver, restart RestartFunc, timeout time.Duration) {
	cfg := TaskConfig(t, "/bin/sh", "-c", "echo started; sleep 2; echo done; exit 3")
	h := startUnmanaged(t, d, cfg)
	handedOver := destroyOnFailure(t, d, cfg.ID)
	d2 := restart(t, d)
	handedOver()
	recoverOn(t, d2, h)
	res := WaitResult(t, d2, cfg.ID, timeout)
	if res.ExitCode != 3 || res.Signal != 0 {
		t.Fatalf("result of a task that exited after Recover = %+v, want exit code 3", res)
	}
	if got := ReadLog(t, cfg.StdoutPath); got != "started\ndone\n" {
		t.Errorf("stdout = %q, want both lines", got)
	}
}

func testRecoverExited(t *testing.T, d drivers.Driver, restart RestartFunc, timeout time.Duration) {
	cfg := TaskConfig(t, "/bin/sh", "-c", "echo bye; exit 3")
	h := startUnmanaged(t, d, cfg)
	handedOver := destroyOnFailure(t, d, cfg.ID)
	if res := WaitResult(t, d, cfg.ID, timeout); res.ExitCode != 3 {
		t.Fatalf("result before the restart = %+v, want exit code 3", res)
	}
	d2 := restart(t, d)
	handedOver()
	recoverOn(t, d2, h)
	res := WaitResult(t, d2, cfg.ID, timeout)
	if res.ExitCode != 3 || res.Signal != 0 {
		t.Errorf("result of a task that exited before Recover = %+v, want exit code 3", res)
	}
	st, err := d2.Inspect(context.Background(), cfg.ID)
	if err != nil || st.State != drivers.TaskStateExited {
		t.Errorf("Inspect = %+v, %v; want exited", st, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := d2.Destroy(ctx, cfg.ID, false); err != nil {
		t.Errorf("Destroy without force of the exited, recovered task: %v", err)
	}
}

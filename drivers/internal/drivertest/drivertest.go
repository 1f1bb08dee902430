// Package drivertest holds the helpers that the recovery tests of the
// built-in drivers (exec and runc) share: a handle as the agent's state
// store gives it back, a recovery on a fresh driver, waiting for processes
// to be gone, and a fake agent (the test binary run again) killed with
// SIGKILL once it started a task.
package drivertest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	osexec "os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/corral-dev/corral/plugins/drivers"
	"github.com/corral-dev/corral/plugins/drivers/testutils"
)

// Timeout bounds every wait of these helpers.
const Timeout = 10 * time.Second

// Persisted round-trips h through JSON as the agent's state store does.
func Persisted(t testing.TB, h *drivers.TaskHandle) *drivers.TaskHandle {
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

// DriverState decodes h's driver state into an S.
func DriverState[S any](t testing.TB, h *drivers.TaskHandle) S {
	t.Helper()
	var st S
	if err := json.Unmarshal(h.DriverState, &st); err != nil {
		t.Fatal(err)
	}
	return st
}

// Recover recovers h, persisted, on d (a new driver, as a restarted agent
// has) and destroys the task when the test ends.
func Recover(t testing.TB, d drivers.Driver, h *drivers.TaskHandle) {
	t.Helper()
	if err := d.Recover(context.Background(), Persisted(t, h)); err != nil {
		t.Fatalf("Recover: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), Timeout)
		defer cancel()
		if err := d.Destroy(ctx, h.Config.ID, true); err != nil && !errors.Is(err, drivers.ErrTaskNotFound) {
			t.Errorf("cleanup: Destroy: %v", err)
		}
	})
}

// WaitGone waits until none of pids runs.
func WaitGone(t testing.TB, pids ...int) {
	t.Helper()
	deadline := time.Now().Add(Timeout)
	for _, pid := range pids {
		for !testutils.ProcessGone(pid) {
			if time.Now().After(deadline) {
				t.Fatalf("process %d still runs", pid)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// StartFakeAgent runs the test binary again with env set to payload in
// JSON, which makes it a fake agent that starts a task and prints its
// handle on stdout, and returns that handle with a func that kills the
// agent with SIGKILL and reaps it.
func StartFakeAgent(t testing.TB, env string, payload any) (*drivers.TaskHandle, func()) {
	t.Helper()
	b, err := json.Marshal(payload)
	if err != nil {
		t.Fatal(err)
	}
	agent := osexec.Command(os.Args[0])
	agent.Env = append(os.Environ(), env+"="+string(b))
	var stderr bytes.Buffer
	agent.Stderr = &stderr
	out, err := agent.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	kill := func() {
		_ = agent.Process.Signal(syscall.SIGKILL)
		_ = agent.Wait()
	}
	var h drivers.TaskHandle
	if err := json.NewDecoder(out).Decode(&h); err != nil {
		kill()
		t.Fatalf("reading the fake agent's handle: %v; its stderr: %s", err, stderr.String())
	}
	return &h, kill
}

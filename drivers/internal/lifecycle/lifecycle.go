// Package lifecycle holds what the built-in drivers (exec and runc) share
// about a task's life: how it ended and when (Task), its handle and
// status, the wait on its shim, and the shape of Stop (the stop signal, a
// grace period, then SIGKILL) and of Destroy's kill loop. What reaches the
// task's processes (a process group, a container) stays with each driver,
// behind Workload.
package lifecycle

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"syscall"
	"time"

	"github.com/corral-dev/corral/drivers/shim"
	"github.com/corral-dev/corral/plugins/drivers"
)

// Kind is what a driver tells the shared code about itself, once.
type Kind struct {
	// Name is the driver's name, which its handles carry.
	Name string
	// ErrExitCodeUnknown is wrapped by the result of a task whose exit
	// status is lost.
	ErrExitCodeUnknown error
	// Waiting names what the shim waited for, in the error of a result
	// whose shim could not tell how the task ended.
	Waiting string
	// PollInterval is how often Stop and Destroy check for leftover
	// processes.
	PollInterval time.Duration
	// StopAwaitsAll makes Stop, once it sent SIGKILL, wait until no
	// process of the task is left; otherwise only until the main process
	// exited.
	StopAwaitsAll bool
}

// UnknownExit is the result of a task whose exit status is lost, and why.
func (k *Kind) UnknownExit(why error) *drivers.ExitResult {
	return &drivers.ExitResult{ExitCode: -1, Err: fmt.Errorf("%w: %w", k.ErrExitCodeUnknown, why)}
}

// CheckHandle checks that Recover can use handle: it has a task config
// and, when it names one, belongs to this driver.
func (k *Kind) CheckHandle(handle *drivers.TaskHandle) error {
	if handle == nil || handle.Config == nil {
		return fmt.Errorf("%w: recover needs a handle with its task config", drivers.ErrInvalidConfig)
	}
	if handle.Driver != "" && handle.Driver != k.Name {
		return fmt.Errorf("%w: handle belongs to driver %q, not %q", drivers.ErrInvalidConfig, handle.Driver, k.Name)
	}
	return nil
}

// Workload is the driver's side of a task: how to reach its processes and
// what only the driver knows about how it ended.
type Workload interface {
	// Signal sends sig to the task (its main process or processes); a
	// task already gone is not an error.
	Signal(sig syscall.Signal) error
	// Kill sends SIGKILL to every process of the task it can find.
	Kill()
	// Members returns the live processes of the task.
	Members() []int
	// Amend adjusts the result that the first Finish records, before it
	// is logged (an OOM kill, a signal delivered as SIGKILL).
	Amend(res *drivers.ExitResult)
}

// Task is the state that both drivers keep for a task, embedded in their
// own task type. Make it with New; it is safe for concurrent use.
type Task struct {
	Config    *drivers.TaskConfig
	StartedAt time.Time
	// Recovered is set for a task that Recover found again.
	Recovered bool
	Logger    *slog.Logger

	kind     *Kind
	workload Workload

	done        chan struct{} // closed once result is set
	once        sync.Once
	mu          sync.Mutex
	result      *drivers.ExitResult
	completedAt time.Time
}

// New returns the state of a running task of kind with workload w (the
// driver's task, which embeds the result).
func New(kind *Kind, w Workload, cfg *drivers.TaskConfig, startedAt time.Time, logger *slog.Logger) Task {
	return Task{
		Config: cfg, StartedAt: startedAt, Logger: logger,
		kind: kind, workload: w, done: make(chan struct{}),
	}
}

// Handle returns the task's handle with state as its driver state.
func (t *Task) Handle(state any) (*drivers.TaskHandle, error) {
	st, err := json.Marshal(state)
	if err != nil {
		return nil, err
	}
	return &drivers.TaskHandle{
		Version:     1,
		Driver:      t.kind.Name,
		Config:      t.Config,
		State:       drivers.TaskStateRunning,
		DriverState: st,
		StartedAt:   t.StartedAt,
	}, nil
}

// Done is closed once the task's result is known.
func (t *Task) Done() <-chan struct{} { return t.done }

// Finish records how the task ended and when (now if at is zero); only
// the first call counts.
func (t *Task) Finish(res *drivers.ExitResult, at time.Time) {
	t.once.Do(func() {
		t.workload.Amend(res)
		if at.IsZero() {
			at = time.Now()
		}
		t.mu.Lock()
		t.result, t.completedAt = res, at
		t.mu.Unlock()
		close(t.done)
		t.Logger.Info("task exited", "exit_code", res.ExitCode, "signal", res.Signal,
			"oom_killed", res.OOMKilled, "error", res.Err)
	})
}

// Exited reports whether the task's result is known.
func (t *Task) Exited() bool {
	select {
	case <-t.done:
		return true
	default:
		return false
	}
}

// ExitResult returns a copy of the result, nil while the task runs.
func (t *Task) ExitResult() *drivers.ExitResult {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.result == nil {
		return nil
	}
	r := *t.result
	return &r
}

// Status reports whether the task runs and, once it exited, how.
func (t *Task) Status() *drivers.TaskStatus {
	st := &drivers.TaskStatus{ID: t.Config.ID, State: drivers.TaskStateRunning, StartedAt: t.StartedAt}
	if res := t.ExitResult(); res != nil {
		t.mu.Lock()
		st.State, st.CompletedAt, st.ExitResult = drivers.TaskStateExited, t.completedAt, res
		t.mu.Unlock()
	}
	return st
}

// Wait returns a channel that receives the task's result once it has
// exited, at once if it already has; if ctx ends first, nothing is sent.
func (t *Task) Wait(ctx context.Context) <-chan *drivers.ExitResult {
	ch := make(chan *drivers.ExitResult, 1)
	go func() {
		select {
		case <-t.done:
			ch <- t.ExitResult()
			close(ch)
		case <-ctx.Done():
		}
	}()
	return ch
}

// WaitExited waits until the task's main process has exited or ctx ends.
func (t *Task) WaitExited(ctx context.Context) error {
	select {
	case <-t.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// WaitShim records the task's exit once its shim knows it.
func (t *Task) WaitShim(h *shim.Handle) {
	<-h.Done()
	st, err := h.Result()
	if err != nil {
		t.Finish(t.kind.UnknownExit(err), time.Time{})
		return
	}
	res := &drivers.ExitResult{ExitCode: st.ExitCode, Signal: st.Signal, OOMKilled: st.OOMKilled}
	if st.Error != "" {
		res.Err = fmt.Errorf("waiting for %s: %s", t.kind.Waiting, st.Error)
	}
	t.Finish(res, st.ExitedAt)
}

// Poll watches a task whose exit status nobody can learn (it has no shim
// to ask) every interval until alive says it is gone, and then records an
// unknown exit, for why.
func (t *Task) Poll(interval time.Duration, alive func() bool, why error) {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for range tick.C {
		if !alive() {
			t.Finish(t.kind.UnknownExit(why), time.Time{})
			return
		}
	}
}

// Gone reports whether the task's main process has exited and no process
// of it is left.
func (t *Task) Gone() bool { return t.Exited() && len(t.workload.Members()) == 0 }

// WaitGone polls until the task is gone or ctx ends.
func (t *Task) WaitGone(ctx context.Context) error {
	for !t.Gone() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("task %s: %w", t.Config.ID, t.stillAlive(ctx))
		case <-t.done:
			// The main process is gone; poll for the rest.
			select {
			case <-ctx.Done():
			case <-time.After(t.kind.PollInterval):
			}
		}
	}
	return nil
}

// KillAll kills the task's processes until none is left or ctx ends, as
// Destroy does.
func (t *Task) KillAll(ctx context.Context) error {
	for !t.Gone() {
		t.workload.Kill()
		select {
		case <-ctx.Done():
			return t.stillAlive(ctx)
		case <-time.After(t.kind.PollInterval):
		}
	}
	return nil
}

func (t *Task) stillAlive(ctx context.Context) error {
	return fmt.Errorf("processes %v still alive: %w", t.workload.Members(), ctx.Err())
}

// Stop sends sig to the task and SIGKILL to all its processes if some are
// left after timeout. It returns once the task's main process has exited
// (and, with Kind.StopAwaitsAll, no process is left), or ctx ended.
func (t *Task) Stop(ctx context.Context, sig syscall.Signal, timeout time.Duration) error {
	if t.Gone() {
		return nil
	}
	t.Logger.Info("stopping task", "signal", sig.String(), "timeout", timeout)
	if err := t.workload.Signal(sig); err != nil {
		return err
	}
	grace, cancel := context.WithTimeout(ctx, timeout)
	err := t.WaitGone(grace)
	cancel()
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return fmt.Errorf("stopping task %s: %w", t.Config.ID, ctx.Err())
	}
	t.Logger.Info("task did not stop in time; killing it", "processes", t.workload.Members())
	t.workload.Kill()
	if t.kind.StopAwaitsAll {
		err = t.WaitGone(ctx)
	} else {
		err = t.WaitExited(ctx)
	}
	if err != nil {
		return fmt.Errorf("stopping task %s: %w", t.Config.ID, err)
	}
	return nil
}

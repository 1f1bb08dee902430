package lifecycle

import (
	"context"
	"fmt"
	"sync"
	"syscall"
	"time"

	"github.com/corral-dev/corral/plugins/drivers"
)

// Owner is a driver's task type: a pointer to a struct that embeds Task.
type Owner interface {
	comparable
	base() *Task
}

func (t *Task) base() *Task { return t }

// Tasks is a driver's tasks by ID, and the driver methods that need
// nothing but the shared Task. The zero value is empty and ready; it is
// safe for concurrent use.
type Tasks[T Owner] struct {
	mu sync.Mutex
	// m holds every started task; a zero value reserves an ID while the
	// task is being started.
	m map[string]T
}

// Get returns the task with id or ErrTaskNotFound.
func (ts *Tasks[T]) Get(id string) (T, error) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	var zero T
	t := ts.m[id]
	if t == zero {
		return zero, fmt.Errorf("%w: %q", drivers.ErrTaskNotFound, id)
	}
	return t, nil
}

// Reserve keeps id for a task being started, or returns ErrTaskExists.
// Set the task once it runs, or Unreserve the ID if it does not.
func (ts *Tasks[T]) Reserve(id string) error {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if _, ok := ts.m[id]; ok {
		return fmt.Errorf("%w: %q", drivers.ErrTaskExists, id)
	}
	ts.set(id, *new(T))
	return nil
}

// Unreserve forgets id, whose task did not start.
func (ts *Tasks[T]) Unreserve(id string) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	delete(ts.m, id)
}

// Set records t, started with id.
func (ts *Tasks[T]) Set(id string, t T) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	ts.set(id, t)
}

// Add records t, recovered with id, unless the ID is known or reserved;
// it reports whether it did.
func (ts *Tasks[T]) Add(id string, t T) bool {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if _, ok := ts.m[id]; ok {
		return false
	}
	ts.set(id, t)
	return true
}

func (ts *Tasks[T]) set(id string, t T) {
	if ts.m == nil {
		ts.m = map[string]T{}
	}
	ts.m[id] = t
}

// Wait is the driver's Wait: a channel that receives the task's result
// once it has exited, at once if it already has. Every call gets its own
// channel; if ctx ends first, nothing is sent.
func (ts *Tasks[T]) Wait(ctx context.Context, id string) (<-chan *drivers.ExitResult, error) {
	t, err := ts.Get(id)
	if err != nil {
		return nil, err
	}
	return t.base().Wait(ctx), nil
}

// Inspect is the driver's Inspect: whether the task runs and, once it
// exited, how.
func (ts *Tasks[T]) Inspect(id string) (*drivers.TaskStatus, error) {
	t, err := ts.Get(id)
	if err != nil {
		return nil, err
	}
	return t.base().Status(), nil
}

// Stop is the driver's Stop once it parsed the signal: see Task.Stop.
func (ts *Tasks[T]) Stop(ctx context.Context, id string, sig syscall.Signal, timeout time.Duration) error {
	t, err := ts.Get(id)
	if err != nil {
		return err
	}
	return t.base().Stop(ctx, sig, timeout)
}

// Destroy is the driver's Destroy: it kills every process left of the
// task (a running task only when force is set), waits until they are gone
// (within timeout), has cleanup remove what the driver made for the task
// and forgets the task.
func (ts *Tasks[T]) Destroy(ctx context.Context, id string, force bool, timeout time.Duration,
	cleanup func(context.Context, T) error) error {
	t, err := ts.Get(id)
	if err != nil {
		return err
	}
	b := t.base()
	if !b.Exited() && !force {
		return fmt.Errorf("task %s is still running: stop it first or destroy it with force", id)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := b.KillAll(ctx); err != nil {
		return fmt.Errorf("destroying task %s: %w", id, err)
	}
	if err := cleanup(ctx, t); err != nil {
		return fmt.Errorf("destroying task %s: %w", id, err)
	}
	ts.mu.Lock()
	if ts.m[id] == t {
		delete(ts.m, id)
	}
	ts.mu.Unlock()
	b.Logger.Info("task destroyed")
	return nil
}

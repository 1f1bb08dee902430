package loader

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"runtime"
	"sync"
	"time"

	"github.com/corral-dev/corral/plugins/drivers"
)

// recoverTimeout bounds the Recover of one task on a relaunched plugin.
const recoverTimeout = 30 * time.Second

// retryPause is how long a call waits before it tries a plugin again that
// failed as if it had exited but still runs.
const retryPause = 100 * time.Millisecond

// Policy tunes how a Supervisor relaunches its plugin and judges its
// health. Zero fields take the defaults in parentheses.
type Policy struct {
	// MinBackoff is the wait before the first relaunch after a crash
	// (100ms); it doubles with every crash in a row up to MaxBackoff (30s).
	MinBackoff, MaxBackoff time.Duration
	// MaxCrashes crashes within CrashWindow (5 within 3 minutes) mark the
	// driver unhealthy. A relaunch that fails counts as a crash.
	MaxCrashes  int
	CrashWindow time.Duration
	// StableAfter is how long a plugin must stay up to count as recovered
	// (1 minute): the backoff and the crash count start over, and an
	// unhealthy driver is healthy again.
	StableAfter time.Duration
	// CallWait bounds how long a call waits for the relaunch while no
	// plugin process runs (1 minute). Wait waits as long as its ctx.
	CallWait time.Duration
}

func (p Policy) withDefaults() Policy {
	def := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&p.MinBackoff, 100*time.Millisecond)
	def(&p.MaxBackoff, 30*time.Second)
	def(&p.CrashWindow, 3*time.Minute)
	def(&p.StableAfter, time.Minute)
	def(&p.CallWait, time.Minute)
	if p.MaxCrashes <= 0 {
		p.MaxCrashes = 5
	}
	return p
}

// Supervisor is the driver of one external plugin as the agent uses it: it
// launches the plugin process, relaunches it with backoff whenever it
// exits, and makes the relaunched process Recover every task the driver
// had started or recovered, from the handles they returned. Calls made
// while no plugin runs wait for the relaunch and a call that failed
// because the plugin died is retried on the next one, except Start and
// Exec, which may have had effects. A Wait survives relaunches: it yields
// the task's real exit result, or an error result when the relaunched
// plugin cannot recover the task. A plugin that keeps crashing is reported
// unhealthy through drivers.HealthWatcher until it stays up again.
type Supervisor struct {
	path   string
	log    *slog.Logger
	policy Policy
	name   string
	caps   drivers.Capabilities

	closing   chan struct{} // closed by Close
	closeOnce sync.Once
	done      chan struct{} // closed when run returns

	mu      sync.Mutex
	cur     *drivers.Client // nil while no plugin process runs
	pid     int
	ready   chan struct{} // closed once cur is set
	gone    chan struct{} // closed once cur is unset again
	tasks   map[string]*drivers.TaskHandle
	lost    map[string]error // tasks a relaunched plugin could not recover, and why
	crashes []time.Time
	health  drivers.HealthState
	reason  string
	changed chan struct{} // closed at the next health change
}

var (
	_ drivers.Driver        = (*Supervisor)(nil)
	_ drivers.HealthWatcher = (*Supervisor)(nil)
)

// Supervise launches the plugin binary at path (see Launch) and returns
// its supervising driver, or the *RefusedError of the first launch. Call
// Close to end the plugin for good.
func Supervise(path string, logger *slog.Logger, policy Policy) (*Supervisor, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s := &Supervisor{
		path: path, log: logger, policy: policy.withDefaults(),
		closing: make(chan struct{}), done: make(chan struct{}), ready: make(chan struct{}),
		tasks: map[string]*drivers.TaskHandle{}, lost: map[string]error{},
		health: drivers.HealthHealthy, changed: make(chan struct{}),
	}
	started := make(chan error, 1)
	go s.run(started)
	if err := <-started; err != nil {
		<-s.done
		return nil, err
	}
	return s, nil
}

// run launches the plugin and relaunches it each time it exits, until Close.
func (s *Supervisor) run(started chan<- error) {
	defer close(s.done)
	// Launch has the kernel kill the plugin when the thread that started it
	// ends (as when the agent dies): keep this goroutine, which starts every
	// process of the plugin, on one thread that ends when it returns.
	runtime.LockOSThread()
	c, pid, kill, err := launch(s.path, s.log)
	if err != nil {
		started <- err
		return
	}
	s.name, s.caps = c.Name(), c.Capabilities()
	s.log = s.log.With("driver", s.name)
	s.publish(c, pid)
	started <- nil
	backoff := s.policy.MinBackoff
	for {
		stable := time.NewTimer(s.policy.StableAfter)
		exited := false
	up:
		for {
			select {
			case <-stable.C:
				backoff = s.policy.MinBackoff
				s.setStable()
			case <-c.Done():
				exited = true
				break up
			case <-s.closing:
				break up
			}
		}
		stable.Stop()
		s.unpublish()
		kill()
		if !exited {
			return
		}
		s.crashed(fmt.Errorf("the plugin process %d exited", pid))
		s.log.Warn("driver plugin exited; relaunching it", "pid", pid)
		for {
			s.log.Info("relaunching driver plugin", "in", backoff)
			select {
			case <-time.After(backoff):
			case <-s.closing:
				return
			}
			backoff = min(2*backoff, s.policy.MaxBackoff)
			if c, pid, kill, err = s.relaunch(); err == nil {
				break
			}
			s.log.Error("relaunching driver plugin failed", "error", err)
			s.crashed(err)
		}
		s.publish(c, pid)
	}
}

// relaunch starts a new plugin process and has it recover every task the
// driver knows.
func (s *Supervisor) relaunch() (*drivers.Client, int, func(), error) {
	c, pid, kill, err := launch(s.path, s.log)
	if err != nil {
		return nil, 0, nil, err
	}
	if c.Name() != s.name {
		kill()
		return nil, 0, nil, fmt.Errorf("the plugin now calls its driver %q, not %q", c.Name(), s.name)
	}
	s.mu.Lock()
	handles := maps.Clone(s.tasks)
	s.mu.Unlock()
	recovered := 0
	for id, h := range handles {
		ctx, cancel := context.WithTimeout(context.Background(), recoverTimeout)
		err := c.Recover(ctx, h)
		cancel()
		if errors.Is(err, drivers.ErrPluginExited) {
			kill()
			return nil, 0, nil, fmt.Errorf("recovering task %s: %w", id, err)
		}
		if err != nil {
			s.log.Warn("the relaunched plugin cannot recover a task", "kernel_id", id, "error", err)
			s.mu.Lock()
			delete(s.tasks, id)
			s.lost[id] = err
			s.mu.Unlock()
			continue
		}
		recovered++
	}
	s.log.Info("driver plugin relaunched", "pid", pid, "tasks_recovered", recovered, "tasks_lost", len(handles)-recovered)
	return c, pid, kill, nil
}

// publish makes c the plugin that calls go to.
func (s *Supervisor) publish(c *drivers.Client, pid int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cur, s.pid = c, pid
	s.gone = make(chan struct{})
	close(s.ready)
}

// unpublish makes calls wait for the next plugin process.
func (s *Supervisor) unpublish() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cur, s.pid = nil, 0
	s.ready = make(chan struct{})
	close(s.gone)
}

// crashed counts a crash (or failed relaunch) and marks the driver
// unhealthy once there were too many within the window.
func (s *Supervisor) crashed(why error) {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	kept := s.crashes[:0]
	for _, t := range s.crashes {
		if now.Sub(t) < s.policy.CrashWindow {
			kept = append(kept, t)
		}
	}
	s.crashes = append(kept, now)
	if len(s.crashes) >= s.policy.MaxCrashes {
		reason := fmt.Sprintf("driver plugin crashed %d times within %v, last: %v", len(s.crashes), s.policy.CrashWindow, why)
		if s.health != drivers.HealthUnhealthy {
			s.log.Error("driver plugin marked unhealthy: it keeps crashing", "crashes", len(s.crashes), "window", s.policy.CrashWindow, "error", why)
		}
		s.setHealth(drivers.HealthUnhealthy, reason)
	}
}

// setStable records that the plugin stayed up: it is healthy again.
func (s *Supervisor) setStable() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.crashes = nil
	if s.health != drivers.HealthHealthy {
		s.log.Info("driver plugin healthy again: it stayed up", "after", s.policy.StableAfter)
	}
	s.setHealth(drivers.HealthHealthy, "")
}

// setHealth changes the health and wakes its watchers; s.mu is held.
func (s *Supervisor) setHealth(h drivers.HealthState, reason string) {
	if s.health == h && s.reason == reason {
		return
	}
	s.health, s.reason = h, reason
	close(s.changed)
	s.changed = make(chan struct{})
}

// Health returns whether the plugin is healthy or keeps crashing, why, and
// a channel closed at the next change.
func (s *Supervisor) Health() (drivers.HealthState, string, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.health, s.reason, s.changed
}

// Pid returns the pid of the running plugin process, 0 while none runs.
func (s *Supervisor) Pid() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pid
}

// Close ends the plugin process and its relaunches for good; later calls
// fail with an error wrapping drivers.ErrPluginExited. The plugin's tasks
// keep running. It is safe to call more than once.
func (s *Supervisor) Close() {
	s.closeOnce.Do(func() { close(s.closing) })
	<-s.done
}

// client returns the running plugin other than prev, waiting for a relaunch
// until deadline (zero: no deadline) or ctx's end.
func (s *Supervisor) client(ctx context.Context, prev *drivers.Client, deadline time.Time) (*drivers.Client, error) {
	var timeout <-chan time.Time
	if !deadline.IsZero() {
		t := time.NewTimer(time.Until(deadline))
		defer t.Stop()
		timeout = t.C
	}
	for {
		s.mu.Lock()
		c, ready, gone := s.cur, s.ready, s.gone
		s.mu.Unlock()
		var again <-chan time.Time
		switch {
		case c == nil:
		case c != prev:
			return c, nil
		case isDone(c.Done()):
			// prev has exited; wait for its relaunch.
			ready = gone
		default:
			// The call failed as if prev had exited, yet it runs (a
			// transient failure): try it again shortly.
			ready, again = nil, time.After(retryPause)
		}
		select {
		case <-ready:
		case <-again:
			return c, nil
		case <-s.closing:
			return nil, fmt.Errorf("driver %q: %w: the agent closed it", s.name, drivers.ErrPluginExited)
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-timeout:
			return nil, fmt.Errorf("driver %q: %w and was not relaunched within %v", s.name, drivers.ErrPluginExited, s.policy.CallWait)
		}
	}
}

func isDone(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// do runs op on the running plugin, again on the next one when the plugin
// died under it, until it has waited longer than CallWait for a relaunch.
func (s *Supervisor) do(ctx context.Context, op func(*drivers.Client) error) error {
	return s.retry(ctx, nil, time.Now().Add(s.policy.CallWait), op)
}

// retry is do on a plugin other than prev (nil: any), with a deadline
// (zero: none) for the relaunch.
func (s *Supervisor) retry(ctx context.Context, prev *drivers.Client, deadline time.Time, op func(*drivers.Client) error) error {
	for {
		c, err := s.client(ctx, prev, deadline)
		if err != nil {
			return err
		}
		if err = op(c); !errors.Is(err, drivers.ErrPluginExited) || ctx.Err() != nil {
			return err
		}
		prev = c
	}
}

// lostErr explains a task that the driver does not know because a
// relaunched plugin could not recover it.
func (s *Supervisor) lostErr(taskID string, err error) error {
	if !errors.Is(err, drivers.ErrTaskNotFound) {
		return err
	}
	s.mu.Lock()
	why := s.lost[taskID]
	s.mu.Unlock()
	if why == nil {
		return err
	}
	return fmt.Errorf("%w: driver plugin %q was relaunched and could not recover task %s: %v", drivers.ErrTaskNotFound, s.name, taskID, why)
}

// Name returns the driver name the plugin reported at its first launch.
func (s *Supervisor) Name() string { return s.name }

// Capabilities returns what the plugin reported at its first launch.
func (s *Supervisor) Capabilities() drivers.Capabilities { return s.caps }

// Fingerprint asks the running plugin; an unhealthy plugin is reported
// unhealthy without asking.
func (s *Supervisor) Fingerprint(ctx context.Context) (*drivers.Fingerprint, error) {
	if h, reason, _ := s.Health(); h != drivers.HealthHealthy {
		return &drivers.Fingerprint{Health: h, Description: reason}, nil
	}
	var fp *drivers.Fingerprint
	err := s.do(ctx, func(c *drivers.Client) (err error) {
		fp, err = c.Fingerprint(ctx)
		return err
	})
	return fp, err
}

// Start starts a task on the running plugin (waiting for a relaunch if
// none runs) and keeps its handle for relaunches. It is not retried: a
// plugin that died during Start may have started the task.
func (s *Supervisor) Start(ctx context.Context, cfg *drivers.TaskConfig) (*drivers.TaskHandle, error) {
	c, err := s.client(ctx, nil, time.Now().Add(s.policy.CallWait))
	if err != nil {
		return nil, err
	}
	h, err := c.Start(ctx, cfg)
	if err != nil {
		return nil, err
	}
	s.keep(cfg.ID, h)
	return h, nil
}

// Recover has the running plugin reattach to the task and keeps its handle
// for relaunches.
func (s *Supervisor) Recover(ctx context.Context, h *drivers.TaskHandle) error {
	if err := s.do(ctx, func(c *drivers.Client) error { return c.Recover(ctx, h) }); err != nil {
		return err
	}
	if h != nil && h.Config != nil {
		s.keep(h.Config.ID, h)
	}
	return nil
}

func (s *Supervisor) keep(id string, h *drivers.TaskHandle) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tasks[id] = h
	delete(s.lost, id)
}

// Wait returns a channel that receives the task's exit result. When the
// plugin dies while the task runs, it waits for the relaunched plugin,
// which has recovered the task, and waits there again; a task the
// relaunched plugin could not recover yields exit code -1 and an error
// wrapping drivers.ErrTaskNotFound that says why. If ctx ends first,
// nothing is sent.
func (s *Supervisor) Wait(ctx context.Context, taskID string) (<-chan *drivers.ExitResult, error) {
	var ch <-chan *drivers.ExitResult
	var cur *drivers.Client
	wait := func(c *drivers.Client) (err error) {
		cur = c
		ch, err = c.Wait(ctx, taskID)
		return err
	}
	if err := s.retry(ctx, nil, time.Time{}, wait); err != nil {
		return nil, s.lostErr(taskID, err)
	}
	out := make(chan *drivers.ExitResult, 1)
	send := func(res *drivers.ExitResult) {
		out <- res
		close(out)
	}
	go func() {
		for {
			var res *drivers.ExitResult
			select {
			case res = <-ch:
			case <-ctx.Done():
				return // like Client.Wait: nothing is sent
			}
			if res == nil || !errors.Is(res.Err, drivers.ErrPluginExited) {
				send(res)
				return
			}
			s.log.Info("driver plugin exited under a running task; waiting for its relaunch", "kernel_id", taskID)
			err := s.retry(ctx, cur, time.Time{}, wait)
			if ctx.Err() != nil {
				return
			}
			if err != nil {
				send(&drivers.ExitResult{ExitCode: -1, Err: s.lostErr(taskID, err)})
				return
			}
		}
	}()
	return out, nil
}

// Stop asks the plugin to stop the task, on the relaunched plugin if it
// died meanwhile.
func (s *Supervisor) Stop(ctx context.Context, taskID string, timeout time.Duration, signal string) error {
	return s.lostErr(taskID, s.do(ctx, func(c *drivers.Client) error { return c.Stop(ctx, taskID, timeout, signal) }))
}

// Destroy asks the plugin to destroy the task and forgets its handle.
func (s *Supervisor) Destroy(ctx context.Context, taskID string, force bool) error {
	err := s.do(ctx, func(c *drivers.Client) error { return c.Destroy(ctx, taskID, force) })
	if err == nil || errors.Is(err, drivers.ErrTaskNotFound) {
		s.mu.Lock()
		delete(s.tasks, taskID)
		delete(s.lost, taskID)
		s.mu.Unlock()
	}
	return err
}

// Inspect asks the plugin for the task's state.
func (s *Supervisor) Inspect(ctx context.Context, taskID string) (*drivers.TaskStatus, error) {
	var st *drivers.TaskStatus
	err := s.do(ctx, func(c *drivers.Client) (err error) {
		st, err = c.Inspect(ctx, taskID)
		return err
	})
	return st, s.lostErr(taskID, err)
}

// Stats asks the plugin for the task's resource usage.
func (s *Supervisor) Stats(ctx context.Context, taskID string) (*drivers.TaskStats, error) {
	var st *drivers.TaskStats
	err := s.do(ctx, func(c *drivers.Client) (err error) {
		st, err = c.Stats(ctx, taskID)
		return err
	})
	return st, s.lostErr(taskID, err)
}

// Exec runs a command in the task through the running plugin. It is not
// retried: the command may have run.
func (s *Supervisor) Exec(ctx context.Context, taskID string, opts *drivers.ExecOptions) (int, error) {
	c, err := s.client(ctx, nil, time.Now().Add(s.policy.CallWait))
	if err != nil {
		return -1, err
	}
	code, err := c.Exec(ctx, taskID, opts)
	return code, s.lostErr(taskID, err)
}

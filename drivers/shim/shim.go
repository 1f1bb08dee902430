// Package shim runs a task's workload under a small supervisor process, a
// re-exec of the current binary or of a helper binary (UseHelper), so that
// the workload outlives the agent that started it and its exit status is
// still collected: the shim is the workload's parent, waits for it and
// records how it ended in a file that a restarted agent reads (as
// containerd-shim and Nomad's executor do).
//
// A binary that starts tasks calls MaybeRun first thing in main (test
// binaries in TestMain); drivers Register a Runner for their kind of
// workload in init; Launch starts a shim and Reattach finds one again after
// a restart. Everything about one shim lives in one directory:
//
//	config.json  what to run: the kind and the runner's config (written by Launch)
//	state.json   the shim's and the workload's pids and start times
//	exit.json    the workload's ExitStatus, written atomically once it ended
//	shim.log     the shim's stdout and stderr
package shim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"
)

// Arg is the first argument that turns a binary into a shim (see MaybeRun).
const Arg = "__corral_shim"

// Files of a shim directory.
const (
	configFile = "config.json"
	stateFile  = "state.json"
	exitFile   = "exit.json"
	logFile    = "shim.log"
)

// ErrNoExitStatus means the shim ended without recording how its workload
// ended (it was killed, or could not write exit.json), so nobody knows.
var ErrNoExitStatus = errors.New("shim died without recording the exit status")

// pollInterval is how often a reattached Handle looks for the exit status
// and checks that the shim still runs.
var pollInterval = 25 * time.Millisecond

// Runner starts the workload that config describes as a child of the
// calling process (the shim) and waits for it. Once the workload runs, the
// runner calls started with its pid; when started returns an error, the
// runner must kill the workload, reap it and return that error. An error
// returned before started was called means the workload did not start: its
// message is what Launch returns. After started, the ExitStatus says how
// the workload ended and an error that waiting for it failed.
type Runner func(ctx context.Context, config json.RawMessage, started func(pid int) error) (ExitStatus, error)

// ExitStatus is how a workload ended, as its shim recorded it in exit.json.
type ExitStatus struct {
	// ExitCode is the workload's exit code, 128+N when signal N killed
	// it, -1 when Error is set.
	ExitCode int `json:"exit_code"`
	// Signal is the signal that killed the workload, 0 if none did.
	Signal int `json:"signal,omitempty"`
	// OOMKilled is set when the runner knows that the kernel's OOM killer
	// ended the workload.
	OOMKilled bool `json:"oom_killed,omitempty"`
	// Error says why the runner could not tell how the workload ended.
	Error string `json:"error,omitempty"`
	// ExitedAt is when the shim saw the workload end.
	ExitedAt time.Time `json:"exited_at"`
}

// State identifies a shim and its workload. The shim records it in
// state.json as soon as the workload runs; start times (field 22 of
// /proc/<pid>/stat) tell a process from a later one that reuses its pid.
type State struct {
	Kind          string    `json:"kind"`
	ShimPid       int       `json:"shim_pid"`
	ShimStartTime uint64    `json:"shim_start_time"`
	Pid           int       `json:"pid"`
	StartTime     uint64    `json:"start_time"`
	StartedAt     time.Time `json:"started_at"`
	// InProcess is set when the binary cannot act as a shim (it never
	// called MaybeRun) and the runner ran inside the launching process,
	// which is then the workload's parent.
	InProcess bool `json:"in_process,omitempty"`
}

var (
	runnersMu sync.RWMutex
	runners   = map[string]Runner{}
	// available records that MaybeRun was called, so that this binary
	// turns into a shim when re-executed with Arg.
	available atomic.Bool
)

// Register makes r the runner of workloads of kind. Drivers call it from
// init so that it is registered in the shim process too. It panics when
// kind is empty, r is nil or kind already has a runner.
func Register(kind string, r Runner) {
	runnersMu.Lock()
	defer runnersMu.Unlock()
	if kind == "" || r == nil {
		panic("shim: Register needs a kind and a runner")
	}
	if _, dup := runners[kind]; dup {
		panic("shim: Register called twice for kind " + kind)
	}
	runners[kind] = r
}

func lookup(kind string) Runner {
	runnersMu.RLock()
	defer runnersMu.RUnlock()
	return runners[kind]
}

// Available reports whether Launch starts shims as separate processes,
// that is whether this binary called MaybeRun. When it did not, Launch runs
// the runner inside the calling process: the workload still runs and
// reports its exit status, but dies with (or is orphaned by) that process.
func Available() bool { return available.Load() }

// shimConfig is the content of config.json.
type shimConfig struct {
	Kind   string          `json:"kind"`
	Config json.RawMessage `json:"config"`
}

// Launch writes config to dir (created if missing) and starts a shim that
// runs it with the runner registered for kind. The shim is detached from
// the caller (its own session, output to dir/shim.log) so that it outlives
// the caller, even a kill -9 of it. Launch returns once the workload runs,
// or with the runner's error when it could not start; when ctx ends first,
// the shim stops the workload and Launch returns ctx's error. After a
// failure only shim.log is left in dir.
func Launch(ctx context.Context, kind, dir string, config any) (_ *Handle, err error) {
	if lookup(kind) == nil {
		return nil, fmt.Errorf("no shim runner registered for %q", kind)
	}
	raw, err := json.Marshal(config)
	if err != nil {
		return nil, fmt.Errorf("encoding the %s shim config: %w", kind, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating shim directory: %w", err)
	}
	if st, err := readState(dir); err == nil && processAlive(st.ShimPid, st.ShimStartTime) {
		if _, err := readExit(dir); errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("shim directory %s is in use by the running shim %d of an earlier start", dir, st.ShimPid)
		}
	}
	for _, f := range []string{stateFile, exitFile} {
		if err := os.Remove(filepath.Join(dir, f)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("clearing shim directory: %w", err)
		}
	}
	defer func() {
		if err != nil {
			_ = os.Remove(filepath.Join(dir, configFile))
			_ = os.Remove(filepath.Join(dir, stateFile))
		}
	}()
	if err := writeFileAtomic(dir, configFile, shimConfig{Kind: kind, Config: raw}, false); err != nil {
		return nil, fmt.Errorf("writing shim config: %w", err)
	}
	if !Available() {
		return launchInProcess(ctx, dir)
	}
	return launchProcess(ctx, kind, dir)
}

// Reattach returns a handle on the shim that supervises (or supervised) the
// workload recorded in dir, typically after the agent restarted. The handle
// yields the recorded exit status, at once if the workload already ended.
// If the shim is gone without having recorded one (it was killed, or the
// pid in state.json now belongs to another process), the handle waits
// until the workload too is gone and then yields ErrNoExitStatus.
func Reattach(dir string) (*Handle, error) {
	st, err := readState(dir)
	if err != nil {
		return nil, fmt.Errorf("reattaching to shim: %w", err)
	}
	h := newHandle(dir, st)
	if h.tryExitFile() {
		return h, nil
	}
	go h.watch()
	return h, nil
}

// Handle follows one shim until its workload's exit status is known.
type Handle struct {
	dir   string
	state State
	done  chan struct{}

	once   sync.Once
	mu     sync.Mutex
	status *ExitStatus
	err    error
}

func newHandle(dir string, st State) *Handle {
	return &Handle{dir: dir, state: st, done: make(chan struct{})}
}

// Dir returns the shim's directory.
func (h *Handle) Dir() string { return h.dir }

// State returns the pids and start times of the shim and its workload.
func (h *Handle) State() State { return h.state }

// Done is closed once the exit status is known (or known to be lost).
func (h *Handle) Done() <-chan struct{} { return h.done }

// Result returns how the workload ended once Done is closed, or an error
// (wrapping ErrNoExitStatus when the shim died without recording it) that
// says why that is unknown. Before that it returns nil, nil.
func (h *Handle) Result() (*ExitStatus, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.status == nil {
		return nil, h.err
	}
	st := *h.status
	return &st, nil
}

// Wait blocks until the exit status is known or ctx ends, and returns what
// Result returns.
func (h *Handle) Wait(ctx context.Context) (*ExitStatus, error) {
	select {
	case <-h.done:
		return h.Result()
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// finish records the outcome; only the first call counts.
func (h *Handle) finish(st *ExitStatus, err error) {
	h.once.Do(func() {
		h.mu.Lock()
		h.status, h.err = st, err
		h.mu.Unlock()
		close(h.done)
	})
}

// tryExitFile finishes h from exit.json and reports whether it did: when
// the file exists, or cannot be read for another reason than not existing.
func (h *Handle) tryExitFile() bool {
	st, err := readExit(h.dir)
	if errors.Is(err, fs.ErrNotExist) {
		return false
	}
	h.finish(st, err)
	return true
}

// finishAfterShim finishes h once its shim has ended: from exit.json, or
// with ErrNoExitStatus and why (how the shim ended).
func (h *Handle) finishAfterShim(why string) {
	if h.tryExitFile() {
		return
	}
	h.finish(nil, fmt.Errorf("%w (%s; see %s)", ErrNoExitStatus, why, filepath.Join(h.dir, logFile)))
}

// watch polls a shim that is not this process's child until its exit
// status appears, or until it and its workload are gone.
func (h *Handle) watch() {
	shimGone := false
	for {
		if h.tryExitFile() {
			return
		}
		if !shimGone && !processAlive(h.state.ShimPid, h.state.ShimStartTime) {
			// It may have written exit.json just before exiting.
			shimGone = true
			continue
		}
		if shimGone && !processAlive(h.state.Pid, h.state.StartTime) {
			h.finishAfterShim(fmt.Sprintf("shim %d is gone", h.state.ShimPid))
			return
		}
		time.Sleep(pollInterval)
	}
}

func readState(dir string) (State, error) {
	var st State
	b, err := os.ReadFile(filepath.Join(dir, stateFile))
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("reading %s: %w", filepath.Join(dir, stateFile), err)
	}
	if st.ShimPid <= 0 || st.Pid <= 0 {
		return st, fmt.Errorf("%s has no pids", filepath.Join(dir, stateFile))
	}
	return st, nil
}

// readExit reads exit.json; a missing file is fs.ErrNotExist.
func readExit(dir string) (*ExitStatus, error) {
	b, err := os.ReadFile(filepath.Join(dir, exitFile))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		return nil, fmt.Errorf("reading exit status: %w", err)
	}
	var st ExitStatus
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("reading %s: %w", filepath.Join(dir, exitFile), err)
	}
	return &st, nil
}

// writeFileAtomic writes v as JSON to dir/name through a temporary file
// and a rename, so that readers see all of it or nothing. With durable,
// the file and the directory are synced too, so that the content survives
// a crash of the machine: only the exit status needs that. The config and
// the state describe processes that a machine crash ends anyway; a crash
// of the agent or the shim alone leaves them complete without a sync, and
// the two fsyncs they would cost are most of a kernel's start on a busy
// disk.
func writeFileAtomic(dir, name string, v any, durable bool) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "."+name+".*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(b)
	if err == nil && durable {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(dir, name))
	}
	if err != nil {
		_ = os.Remove(tmp)
		return err
	}
	if !durable {
		return nil
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}

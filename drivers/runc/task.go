package runc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/opencontainers/runc/libcontainer"
	"golang.org/x/sys/unix"

	"github.com/corral-dev/corral/drivers/shim"
	"github.com/corral-dev/corral/plugins/drivers"
)

// driverState is what TaskHandle.DriverState holds for the runc driver:
// enough to find the container, its cgroups and its rootfs again.
type driverState struct {
	// Root is libcontainer's state root, ContainerID the container's name
	// in it (libcontainer.Load(Root, ContainerID)).
	Root        string `json:"root"`
	ContainerID string `json:"container_id"`
	InitPid     int    `json:"init_pid"`
	// InitStartTime is field 22 of /proc/<pid>/stat: with InitPid it
	// identifies the init even after its pid number is reused.
	InitStartTime uint64            `json:"init_start_time"`
	RootFS        rootfsState       `json:"rootfs"`
	CgroupPaths   map[string]string `json:"cgroup_paths"`
	// CgroupParents are the parent cgroups the container's Start created.
	CgroupParents  []string    `json:"cgroup_parents,omitempty"`
	Process        processSpec `json:"process"`
	CgroupsVersion string      `json:"cgroups_version,omitempty"`
	// ShimDir is the directory of the container's shim (state.json,
	// exit.json, shim.log), whose process is the init's parent and
	// records how it ended; empty in handles of agents that ran
	// containers without shims.
	ShimDir       string `json:"shim_dir,omitempty"`
	ShimPid       int    `json:"shim_pid,omitempty"`
	ShimStartTime uint64 `json:"shim_start_time,omitempty"`
}

// task is one container and what the driver made for it.
type task struct {
	cfg   *drivers.TaskConfig
	state driverState
	// container is nil for a recovered task whose container state is gone.
	container *libcontainer.Container
	startedAt time.Time
	recovered bool
	logger    *slog.Logger

	// emulated is the signal that Stop delivered as SIGKILL because the
	// init, as its pid namespace's init, would not have received it.
	emulated atomic.Int32

	done        chan struct{} // closed once result is set
	once        sync.Once
	mu          sync.Mutex
	result      *drivers.ExitResult
	completedAt time.Time
}

func (t *task) handle() (*drivers.TaskHandle, error) {
	st, err := json.Marshal(t.state)
	if err != nil {
		return nil, err
	}
	return &drivers.TaskHandle{
		Version:     1,
		Driver:      driverName,
		Config:      t.cfg,
		State:       drivers.TaskStateRunning,
		DriverState: st,
		StartedAt:   t.startedAt,
	}, nil
}

// finish records how the task ended and when (now if at is zero); only
// the first call counts.
func (t *task) finish(res *drivers.ExitResult, at time.Time) {
	t.once.Do(func() {
		if res.Signal == int(unix.SIGKILL) {
			if sig := t.emulatedSignal(); sig != 0 {
				// Stop's SIGKILL stood in for sig, which the init did
				// not handle: report the end the signal would have
				// brought.
				res.Signal, res.ExitCode = int(sig), 128+int(sig)
			}
		}
		if oomKilled(t.state.CgroupPaths) {
			res.OOMKilled = true
		}
		if at.IsZero() {
			at = time.Now()
		}
		t.mu.Lock()
		t.result, t.completedAt = res, at
		t.mu.Unlock()
		close(t.done)
		t.logger.Info("task exited", "exit_code", res.ExitCode, "signal", res.Signal,
			"oom_killed", res.OOMKilled, "error", res.Err)
	})
}

func (t *task) exited() bool {
	select {
	case <-t.done:
		return true
	default:
		return false
	}
}

// exitResult returns a copy of the result, nil while the task runs.
func (t *task) exitResult() *drivers.ExitResult {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.result == nil {
		return nil
	}
	r := *t.result
	return &r
}

func (t *task) status() *drivers.TaskStatus {
	st := &drivers.TaskStatus{ID: t.cfg.ID, State: drivers.TaskStateRunning, StartedAt: t.startedAt}
	if res := t.exitResult(); res != nil {
		t.mu.Lock()
		st.State, st.CompletedAt, st.ExitResult = drivers.TaskStateExited, t.completedAt, res
		t.mu.Unlock()
	}
	return st
}

// waitShim records the task's exit once its shim knows it.
func (t *task) waitShim(h *shim.Handle) {
	<-h.Done()
	st, err := h.Result()
	if err != nil {
		t.finish(unknownExit(err), time.Time{})
		return
	}
	res := &drivers.ExitResult{ExitCode: st.ExitCode, Signal: st.Signal, OOMKilled: st.OOMKilled}
	if st.Error != "" {
		res.Err = fmt.Errorf("waiting for the container's init: %s", st.Error)
	}
	t.finish(res, st.ExitedAt)
}

// poll watches the init of a recovered container without a shim to
// reattach to, whose exit status this process cannot learn, until it is
// gone; why says why the status is unknown.
func (t *task) poll(interval time.Duration, why error) {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for range tick.C {
		if !t.initAlive() {
			t.finish(unknownExit(why), time.Time{})
			return
		}
	}
}

// initAlive reports whether the container's init still runs.
func (t *task) initAlive() bool {
	if t.container == nil {
		return false
	}
	s, err := t.container.Status()
	return err == nil && s != libcontainer.Stopped
}

// unknownExit is the result of a task whose exit status is lost, and why.
func unknownExit(why error) *drivers.ExitResult {
	return &drivers.ExitResult{ExitCode: -1, Err: fmt.Errorf("%w: %w", ErrExitCodeUnknown, why)}
}

// stopSignalFile, in the container's dir, records the signal that Stop
// delivered as SIGKILL, so that an agent that recovers the task after a
// restart still reports the signal asked for.
const stopSignalFile = "stop-signal"

// emulatedSignal returns the signal that a Stop of this or of an earlier
// agent process delivered as SIGKILL, 0 if none did.
func (t *task) emulatedSignal() unix.Signal {
	if sig := unix.Signal(t.emulated.Load()); sig != 0 {
		return sig
	}
	if t.state.RootFS.Dir == "" {
		return 0
	}
	b, err := os.ReadFile(filepath.Join(t.state.RootFS.Dir, stopSignalFile))
	if err != nil {
		return 0
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || n <= 0 || n > 64 {
		return 0
	}
	return unix.Signal(n)
}

// recordEmulated records that Stop delivers sig as SIGKILL, in memory and
// in the container's dir; only the first signal counts.
func (t *task) recordEmulated(sig unix.Signal) {
	if !t.emulated.CompareAndSwap(0, int32(sig)) || t.state.RootFS.Dir == "" {
		return
	}
	dir := t.state.RootFS.Dir
	tmp := filepath.Join(dir, "."+stopSignalFile+".tmp")
	err := os.WriteFile(tmp, []byte(strconv.Itoa(int(sig))+"\n"), 0o600)
	if err == nil {
		err = os.Rename(tmp, filepath.Join(dir, stopSignalFile))
	}
	if err != nil {
		_ = os.Remove(tmp)
		t.logger.Warn("cannot record the stop signal: after an agent restart the task will report SIGKILL", "error", err)
	}
}

// shimAlive reports whether the task's shim process still runs. A shim
// that ran inside this process (see shim.Available) does not count.
func (t *task) shimAlive() bool {
	pid := t.state.ShimPid
	return pid > 0 && pid != os.Getpid() && procAlive(pid, t.state.ShimStartTime)
}

// waitShimExit waits until the task's shim has exited, which it does right
// after recording the exit status of the init, and kills it if it takes
// longer than grace.
func (t *task) waitShimExit(ctx context.Context, grace time.Duration) error {
	deadline := time.Now().Add(grace)
	for t.shimAlive() {
		if time.Now().After(deadline) {
			_ = unix.Kill(t.state.ShimPid, unix.SIGKILL)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("task %s: shim %d still runs: %w", t.cfg.ID, t.state.ShimPid, ctx.Err())
		case <-time.After(pollInterval):
		}
	}
	return nil
}

// procAlive reports whether pid is a live (not zombie) process that started
// at start (field 22 of /proc/<pid>/stat).
func procAlive(pid int, start uint64) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return false
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 || f[0] == "Z" || f[0] == "X" {
		return false
	}
	st, err := strconv.ParseUint(f[19], 10, 64)
	return err == nil && st == start
}

// signal sends sig to the container's init. The init of a pid namespace
// receives only the signals it handles; when it would die of sig outside
// one (it neither handles nor ignores sig, whose default action ends a
// process) the kernel drops sig, so signal kills the container instead and
// the task's result reports sig.
func (t *task) signal(sig unix.Signal) error {
	if t.container == nil || t.exited() {
		return nil
	}
	if sig != unix.SIGKILL && terminatesByDefault(sig) {
		if def, err := hasDefaultAction(t.state.InitPid, sig); err == nil && def {
			t.logger.Debug("init has no handler for the stop signal, which its pid namespace's init never receives: killing it",
				"signal", sig.String())
			t.recordEmulated(sig)
			t.kill()
			return nil
		}
	}
	err := t.container.Signal(sig)
	if err != nil && !errors.Is(err, libcontainer.ErrNotRunning) && !errors.Is(err, unix.ESRCH) && !t.exited() {
		return fmt.Errorf("signalling task %s: %w", t.cfg.ID, err)
	}
	return nil
}

// kill sends SIGKILL to the init, which takes its whole pid namespace
// along, and to every process in the container's cgroups.
func (t *task) kill() {
	if t.container != nil && !t.exited() {
		_ = t.container.Signal(unix.SIGKILL)
	}
	for _, pid := range cgroupPids(t.state.CgroupPaths) {
		_ = unix.Kill(pid, unix.SIGKILL)
	}
}

// members returns the processes left in the container's cgroups.
func (t *task) members() []int { return cgroupPids(t.state.CgroupPaths) }

// gone reports whether the init has exited and no process is left.
func (t *task) gone() bool { return t.exited() && len(t.members()) == 0 }

// waitGone polls until gone or ctx ends.
func (t *task) waitGone(ctx context.Context) error {
	for !t.gone() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("task %s: processes %v still alive: %w", t.cfg.ID, t.members(), ctx.Err())
		case <-t.done:
			// The init is gone; poll for the rest.
			select {
			case <-ctx.Done():
			case <-time.After(pollInterval):
			}
		}
	}
	return nil
}

package exec

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"

	"github.com/corral-dev/corral/drivers/exec/cgroup"
	"github.com/corral-dev/corral/drivers/exec/taskrun"
	"github.com/corral-dev/corral/drivers/internal/lifecycle"
	"github.com/corral-dev/corral/drivers/shim"
	"github.com/corral-dev/corral/plugins/drivers"
)

// driverState is what TaskHandle.DriverState holds for the exec driver:
// everything Recover needs to find the task, its shim and its cgroups.
type driverState struct {
	// ShimDir is the directory of the task's shim (state.json, exit.json,
	// shim.log); empty in handles of agents that ran tasks without shims.
	ShimDir       string `json:"shim_dir,omitempty"`
	ShimPid       int    `json:"shim_pid,omitempty"`
	ShimStartTime uint64 `json:"shim_start_time,omitempty"`
	Pid           int    `json:"pid"`
	Pgid          int    `json:"pgid"`
	// StartTime is field 22 of /proc/<pid>/stat: with Pid it identifies the
	// process even after the pid number is reused.
	StartTime uint64        `json:"start_time"`
	Cgroup    *cgroup.Group `json:"cgroup,omitempty"`
	// Isolation is set for a task isolated by the exec driver: Pid is its
	// init, whose namespaces Exec enters. Handles of host tasks, and of
	// agents from before the isolation, have none.
	Isolation *Isolation `json:"isolation,omitempty"`
}

// execKind and hostKind are what the shared task code knows of the exec
// and host drivers.
var (
	execKind = &lifecycle.Kind{
		Name:               driverName,
		ErrExitCodeUnknown: ErrExitCodeUnknown,
		Waiting:            "task",
		PollInterval:       pollInterval,
	}
	hostKind = &lifecycle.Kind{
		Name:               hostDriverName,
		ErrExitCodeUnknown: ErrExitCodeUnknown,
		Waiting:            "task",
		PollInterval:       pollInterval,
	}
)

// task is one running or exited process tree.
type task struct {
	lifecycle.Task
	env  map[string]string
	cred *syscall.Credential
	iso  *Isolation // nil: the task runs in the host's namespaces
	// execAs, for a task that runs in the host's namespaces under the
	// exec driver (started before the isolation), is who Exec runs as.
	execAs    *Isolation
	userErr   error // why cfg.User could not be resolved on recovery
	pid       int
	pgid      int // 0: not verified on recovery, never signalled
	startTime uint64
	group     *cgroup.Group // nil without cgroups
	shimDir   string        // "" for a task recovered from a handle without shim
	shim      shim.State

	mu sync.Mutex
	// execs holds the process groups of running Exec commands that could
	// not join the task's group (it lives in its shim's session), so that
	// Stop and Destroy reach them too.
	execs map[int]struct{}
}

func (t *task) state() driverState {
	return driverState{
		ShimDir: t.shimDir, ShimPid: t.shim.ShimPid, ShimStartTime: t.shim.ShimStartTime,
		Pid: t.pid, Pgid: t.pgid, StartTime: t.startTime, Cgroup: t.group, Isolation: t.iso,
	}
}

// Amend marks the result of a task that the OOM killer ended.
func (t *task) Amend(res *drivers.ExitResult) {
	if t.group != nil && t.group.OOMKilled() {
		res.OOMKilled = true
	}
}

// exitResultOf turns a reaped process state into an ExitResult; a process
// killed by signal N reports exit code 128+N like a shell.
func exitResultOf(ps *os.ProcessState, err error) *drivers.ExitResult {
	r := taskrun.ResultOf(ps, err)
	return &drivers.ExitResult{ExitCode: r.ExitCode, Signal: r.Signal, Err: r.Err}
}

// Signal sends sig to the task's process group and to those of its
// running Exec commands. A group that is already empty is not an error.
func (t *task) Signal(sig syscall.Signal) error {
	var errs []error
	for _, pgid := range t.groups() {
		if err := syscall.Kill(-pgid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
			errs = append(errs, fmt.Errorf("signalling process group %d: %w", pgid, err))
		}
	}
	return errors.Join(errs...)
}

// groups returns the task's process group (unless it could not be
// verified on recovery) and those of its running Exec commands.
func (t *task) groups() []int {
	var out []int
	if t.pgid > 0 {
		out = append(out, t.pgid)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for pgid := range t.execs {
		out = append(out, pgid)
	}
	return out
}

// addExec tracks the process group of a running Exec command; the
// returned func forgets it.
func (t *task) addExec(pgid int) func() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.execs == nil {
		t.execs = map[int]struct{}{}
	}
	t.execs[pgid] = struct{}{}
	return func() {
		t.mu.Lock()
		defer t.mu.Unlock()
		delete(t.execs, pgid)
	}
}

// Kill sends SIGKILL to the process group and to every process in the
// task's cgroups, which also catches processes that left the group.
func (t *task) Kill() {
	_ = t.Signal(syscall.SIGKILL)
	if t.group != nil {
		if pids, err := t.group.Pids(); err == nil {
			for _, pid := range pids {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
}

// Members returns the live processes of the task: those in its cgroups when
// it has some, else those in its process groups.
func (t *task) Members() []int {
	if t.group != nil {
		pids, err := t.group.Pids()
		if err == nil {
			live := pids[:0]
			for _, pid := range pids {
				if alive(pid, 0) {
					live = append(live, pid)
				}
			}
			return live
		}
	}
	var pids []int
	for _, pgid := range t.groups() {
		pids = append(pids, groupMembers(pgid)...)
	}
	return pids
}

package runc

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/opencontainers/runc/libcontainer"
	"golang.org/x/sys/unix"

	"github.com/corral-dev/corral/drivers/internal/lifecycle"
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
	// DiskLimit is how many bytes the kernel may write into its scratch
	// space before the driver stops it; 0: no limit.
	DiskLimit int64 `json:"disk_limit,omitempty"`
}

// kind is what the shared task code knows of this driver.
var kind = &lifecycle.Kind{
	Name:               driverName,
	ErrExitCodeUnknown: ErrExitCodeUnknown,
	Waiting:            "the container's init",
	PollInterval:       pollInterval,
	StopAwaitsAll:      true,
}

// task is one container and what the driver made for it.
type task struct {
	lifecycle.Task
	state driverState
	// container is nil for a recovered task whose container state is gone.
	container *libcontainer.Container

	// emulated is the signal that Stop delivered as SIGKILL because the
	// init, as its pid namespace's init, would not have received it.
	emulated atomic.Int32
	// diskExceeded is the disk limit that the task went past, 0 if none.
	diskExceeded atomic.Int64
}

// Amend reports the signal that Stop's SIGKILL stood in for, an OOM kill,
// and a kill for going past the disk limit (as an error wrapping
// ErrDiskLimit).
func (t *task) Amend(res *drivers.ExitResult) {
	if limit := t.diskLimitExceeded(); limit > 0 && res.Err == nil {
		res.Err = &diskLimitError{limit: limit}
	}
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
}

// initAlive reports whether the container's init still runs.
func (t *task) initAlive() bool {
	if t.container == nil {
		return false
	}
	s, err := t.container.Status()
	return err == nil && s != libcontainer.Stopped
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
		t.Logger.Warn("cannot record the stop signal: after an agent restart the task will report SIGKILL", "error", err)
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
			return fmt.Errorf("task %s: shim %d still runs: %w", t.Config.ID, t.state.ShimPid, ctx.Err())
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

// Signal sends sig to the container's init. The init of a pid namespace
// receives only the signals it handles; when it would die of sig outside
// one (it neither handles nor ignores sig, whose default action ends a
// process) the kernel drops sig, so signal kills the container instead and
// the task's result reports sig.
func (t *task) Signal(sig unix.Signal) error {
	if t.container == nil || t.Exited() {
		return nil
	}
	if sig != unix.SIGKILL && terminatesByDefault(sig) {
		if def, err := hasDefaultAction(t.state.InitPid, sig); err == nil && def {
			t.Logger.Debug("init has no handler for the stop signal, which its pid namespace's init never receives: killing it",
				"signal", sig.String())
			t.recordEmulated(sig)
			t.Kill()
			return nil
		}
	}
	err := t.container.Signal(sig)
	if err != nil && !errors.Is(err, libcontainer.ErrNotRunning) && !errors.Is(err, unix.ESRCH) && !t.Exited() {
		return fmt.Errorf("signalling task %s: %w", t.Config.ID, err)
	}
	return nil
}

// Kill sends SIGKILL to the init, which takes its whole pid namespace
// along, and to every process in the container's cgroups.
func (t *task) Kill() {
	if t.container != nil && !t.Exited() {
		_ = t.container.Signal(unix.SIGKILL)
	}
	for _, pid := range cgroupPids(t.state.CgroupPaths) {
		_ = unix.Kill(pid, unix.SIGKILL)
	}
}

// Members returns the processes left in the container's cgroups.
func (t *task) Members() []int { return cgroupPids(t.state.CgroupPaths) }

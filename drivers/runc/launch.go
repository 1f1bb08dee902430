package runc

import (
	"errors"
	"fmt"
	"os"
	osexec "os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/opencontainers/cgroups"
	"github.com/opencontainers/runc/libcontainer"
	"github.com/opencontainers/runc/libcontainer/configs"

	"github.com/corral-dev/corral/drivers/internal/logcap"
	"github.com/corral-dev/corral/plugins/drivers"
)

// containerSpec is what launch needs to create and start one container.
// It is plain data so that a supervising process (a shim that outlives
// agent restarts) can receive it as JSON and call launch in the driver's
// place.
type containerSpec struct {
	// Root is libcontainer's state root; the container's state lives in
	// Root/ID.
	Root       string          `json:"root"`
	ID         string          `json:"id"`
	Config     *configs.Config `json:"config"`
	Process    processSpec     `json:"process"`
	StdoutPath string          `json:"stdout_path"`
	StderrPath string          `json:"stderr_path"`
	// MaxLogSize caps what each log file and its rotated generation hold
	// (see logcap.Log); 0: the container appends to the files directly.
	MaxLogSize int64 `json:"max_log_size,omitempty"`
}

// runningContainer is a container whose init process runs; whoever
// launched it reaps the init with wait.
type runningContainer struct {
	container *libcontainer.Container
	process   *libcontainer.Process
	pid       int // of the init, in the launcher's pid namespace
	logs      *logcap.Pipes
}

// launch creates the container and starts its init process with stdout and
// stderr appended to the spec's log files (through pipes that this process
// copies into capped logs when the spec caps them). It returns once the
// init runs the kernel's command (or failed to); on failure nothing of the
// container is left but the cgroup parents the caller made.
func launch(spec *containerSpec) (_ *runningContainer, err error) {
	if spec.MaxLogSize > 0 {
		return launchWith(spec, nil)
	}
	stdout, err := openLog(spec.StdoutPath)
	if err != nil {
		return nil, fmt.Errorf("opening stdout log: %w", err)
	}
	defer stdout.Close()
	stderr, err := openLog(spec.StderrPath)
	if err != nil {
		return nil, fmt.Errorf("opening stderr log: %w", err)
	}
	defer stderr.Close()
	return launchWith(spec, []*os.File{stdout, stderr})
}

// launchWith is launch with stdio the container's stdout and stderr, or
// nil for capped logs.
func launchWith(spec *containerSpec, stdio []*os.File) (_ *runningContainer, err error) {
	var logs *logcap.Pipes
	if stdio == nil {
		if logs, err = logcap.NewPipes(spec.StdoutPath, spec.StderrPath, spec.MaxLogSize); err != nil {
			return nil, err
		}
		defer func() {
			if err != nil {
				logs.Drain(0)
			}
		}()
		stdio = []*os.File{logs.Stdout, logs.Stderr}
	}
	// The CPU quota comes once the init executed the kernel's command:
	// the init's own start (a Go runtime, the rootfs, mounts) inside a
	// small quota (0.05 CPU is 5 ms per 100 ms period) would wait for the
	// next period, making starts up to a period slower.
	var quota int64
	if r := spec.Config.Cgroups.Resources; r != nil && r.CpuQuota > 0 {
		quota = r.CpuQuota
		r.CpuQuota = 0
	}
	c, err := libcontainer.Create(spec.Root, spec.ID, spec.Config)
	if errors.Is(err, libcontainer.ErrExist) {
		return nil, fmt.Errorf("%w: container state %s is left from an earlier container: destroy that task first",
			drivers.ErrTaskExists, filepath.Join(spec.Root, spec.ID))
	}
	if err != nil {
		return nil, fmt.Errorf("creating container: %w", err)
	}
	p := newProcess(&spec.Process, true)
	p.Stdout, p.Stderr = stdio[0], stdio[1]
	err = c.Run(p)
	if logs != nil {
		logs.Started()
	}
	if err != nil {
		_ = c.Destroy()
		return nil, fmt.Errorf("starting container: %w", err)
	}
	pid, err := p.Pid()
	if err != nil {
		_ = c.Signal(syscall.SIGKILL)
		_, _ = p.Wait()
		_ = c.Destroy()
		return nil, fmt.Errorf("starting container: %w", err)
	}
	waitExec(pid, execTimeout)
	if quota > 0 {
		if err := limitCPU(c, quota, spec.Config.Cgroups.Resources.CpuPeriod); err != nil {
			_ = c.Signal(syscall.SIGKILL)
			_, _ = p.Wait()
			_ = c.Destroy()
			return nil, fmt.Errorf("limiting the container's CPU: %w", err)
		}
		spec.Config.Cgroups.Resources.CpuQuota = quota
	}
	return &runningContainer{container: c, process: p, pid: pid, logs: logs}, nil
}

// limitCPU writes a started container's CFS quota (microseconds per
// period) into its cgroup, v1 or v2.
func limitCPU(c *libcontainer.Container, quota int64, period uint64) error {
	st, err := c.State()
	if err != nil {
		return err
	}
	if period == 0 {
		period = cfsPeriod
	}
	if d := st.CgroupPaths["cpu"]; d != "" && !cgroups.IsCgroup2UnifiedMode() {
		if err := cgroups.WriteFile(d, "cpu.cfs_period_us", strconv.FormatUint(period, 10)); err != nil {
			return err
		}
		return cgroups.WriteFile(d, "cpu.cfs_quota_us", strconv.FormatInt(quota, 10))
	}
	if d := st.CgroupPaths[""]; d != "" {
		return cgroups.WriteFile(d, "cpu.max", strconv.FormatInt(quota, 10)+" "+strconv.FormatUint(period, 10))
	}
	return fmt.Errorf("no cpu cgroup in %v", st.CgroupPaths)
}

// execTimeout bounds how long launch waits for the init to execute the
// kernel's command.
const execTimeout = 5 * time.Second

// waitExec waits until process pid is no longer libcontainer's init stage
// (named "runc:[2:INIT]"), i.e. has executed the kernel's command or
// exited. Container.Run returns once it released the init, a moment before
// that: a signal sent in between would reach the init stage's Go runtime.
func waitExec(pid int, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for delay := 20 * time.Microsecond; ; delay = min(2*delay, 5*time.Millisecond) {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			return
		}
		s := string(b)
		open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || end < open || end+2 >= len(s) {
			return
		}
		if !strings.HasPrefix(s[open+1:end], "runc:[") || s[end+2] == 'Z' || time.Now().After(deadline) {
			return
		}
		time.Sleep(delay)
	}
}

// wait reaps the container's init and returns how it ended, once its
// output is in the logs.
func (r *runningContainer) wait() *drivers.ExitResult {
	res := exitResultOf(r.process.Wait())
	if r.logs != nil {
		r.logs.Drain(logDrainTimeout)
	}
	return res
}

// newProcess returns the libcontainer process for ps, without stdio.
func newProcess(ps *processSpec, init bool) *libcontainer.Process {
	return &libcontainer.Process{
		Args:             slices.Clone(ps.Args),
		Env:              slices.Clone(ps.Env),
		Cwd:              ps.Cwd,
		UID:              ps.User.UID,
		GID:              ps.User.GID,
		AdditionalGroups: slices.Clone(ps.User.Groups),
		Rlimits:          slices.Clone(ps.Rlimits),
		Init:             init,
	}
}

// openLog opens path for appending, creating it and its directory.
func openLog(path string) (*os.File, error) {
	if path == "" {
		return os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	return os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
}

// exitResultOf turns a reaped process's state into an ExitResult; a
// process killed by signal N reports exit code 128+N like a shell (where
// libcontainer says -1).
func exitResultOf(ps *os.ProcessState, err error) *drivers.ExitResult {
	if ps == nil {
		return &drivers.ExitResult{ExitCode: -1, Err: fmt.Errorf("waiting for the process: %w", err)}
	}
	res := &drivers.ExitResult{ExitCode: ps.ExitCode()}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		res.Signal = int(ws.Signal())
		res.ExitCode = 128 + res.Signal
	}
	var ee *osexec.ExitError
	if err != nil && !errors.As(err, &ee) {
		res.Err = err
	}
	return res
}

// Package taskrun is the part of the exec driver that runs in a task's
// processes rather than in the agent: the shim's runner for kind "exec"
// (Run), which starts the task's command, and the init of an isolated task
// (see init.go), which sets the task's namespaces up and becomes the
// command's parent. It imports only the standard library, x/sys/unix,
// package shim, package cgroup and package logcap, so that the small corral-shim binary
// can run shims and inits without the agent's start-up cost.
package taskrun

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	osexec "os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/corral-dev/corral/drivers/exec/cgroup"
	"github.com/corral-dev/corral/drivers/internal/logcap"
	"github.com/corral-dev/corral/drivers/shim"
)

// Kind is the shim kind of exec and host driver tasks: their shims run
// Run.
const Kind = "exec"

// JoinTimeout bounds how long a start waits for a process to join its
// cgroups, or for an init to report, when ctx has no deadline.
const JoinTimeout = 30 * time.Second

// joinScript runs as `/bin/sh -c joinScript corral-join N procs... cmd args...`
// on cgroup v1: it writes its own pid to the N cgroup.procs files, tells the
// driver through fd 3 that it is inside the cgroups, and only then execs the
// command, so the command never runs outside its limits.
const joinScript = `n=$1; shift
while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 125; shift; n=$((n-1)); done
printf x >&3 || exit 125
exec 3>&-
exec "$@"`

// Config is what the exec driver hands to Run in the task's shim: the
// command, already resolved and checked, and where it runs.
type Config struct {
	Path       string              `json:"path"`
	Args       []string            `json:"args"`
	Dir        string              `json:"dir"`
	Env        []string            `json:"env"`
	StdoutPath string              `json:"stdout_path"`
	StderrPath string              `json:"stderr_path"`
	Credential *syscall.Credential `json:"credential,omitempty"`
	Cgroup     *cgroup.Group       `json:"cgroup,omitempty"`
	// Isolation, when set, runs the command under an init in namespaces
	// of its own, as Isolation's user (Credential is then unset).
	Isolation *Isolation `json:"isolation,omitempty"`
	// MaxLogSize, when > 0, caps what each log file and its rotated
	// generation (.1) hold: the command writes into pipes that the shim
	// copies into capped logs (see logcap). 0: the command appends to the
	// files directly.
	MaxLogSize int64 `json:"max_log_size,omitempty"`
	// Limits are the task's rlimits, its CPU affinity where no cpuset
	// cgroup pins it, and, for an isolated task, its /dev/shm size and
	// bind mounts.
	Limits
	Binds []Bind `json:"binds,omitempty"`
}

// Limits are what the task's process gets besides its cgroups.
type Limits struct {
	// Rlimits are set (setrlimit) before the command starts.
	Rlimits []Rlimit `json:"rlimits,omitempty"`
	// Affinity pins the command to these CPUs ("0-1,4") with
	// sched_setaffinity, for a node without a cpuset cgroup; the command
	// cannot widen it without CAP_SYS_NICE.
	Affinity string `json:"affinity,omitempty"`
	// ShmBytes sizes an isolated task's private /dev/shm (0: no size
	// given, the tmpfs default of half the RAM).
	ShmBytes int64 `json:"shm_bytes,omitempty"`
}

// Rlimit is one resource limit (setrlimit's resource and values;
// RLIM_INFINITY for unlimited).
type Rlimit struct {
	Resource int    `json:"resource"`
	Soft     uint64 `json:"soft"`
	Hard     uint64 `json:"hard"`
}

// Bind is a bind mount in an isolated task's mount namespace.
type Bind struct {
	Source      string `json:"source"`
	Destination string `json:"destination"`
	ReadOnly    bool   `json:"read_only,omitempty"`
}

// SetRlimits sets the calling process's rlimits (they are the process's,
// not the thread's, and its children inherit them).
func SetRlimits(rls []Rlimit) error {
	for _, rl := range rls {
		// syscall's Setrlimit keeps the runtime's record of RLIMIT_NOFILE
		// right, which it restores in children otherwise.
		if err := syscall.Setrlimit(rl.Resource, &syscall.Rlimit{Cur: rl.Soft, Max: rl.Hard}); err != nil {
			return fmt.Errorf("setting rlimit %d to %d/%d: %w", rl.Resource, rl.Soft, rl.Hard, err)
		}
	}
	return nil
}

func init() { shim.Register(Kind, Run) }

// Run is the exec driver's shim.Runner: it starts the command of the
// Config in raw in its own process group and inside its cgroups, with
// stdout and stderr appended to the log files, and waits for it.
func Run(ctx context.Context, raw json.RawMessage, started func(pid int) error) (shim.ExitStatus, error) {
	var rc Config
	if err := json.Unmarshal(raw, &rc); err != nil {
		return shim.ExitStatus{}, fmt.Errorf("reading exec task config: %w", err)
	}
	var logs *logcap.Pipes
	var stdout, stderr *os.File
	if rc.MaxLogSize > 0 {
		var err error
		if logs, err = logcap.NewPipes(rc.StdoutPath, rc.StderrPath, rc.MaxLogSize); err != nil {
			return shim.ExitStatus{}, err
		}
		stdout, stderr = logs.Stdout, logs.Stderr
	} else {
		var err error
		if stdout, err = OpenLog(rc.StdoutPath); err != nil {
			return shim.ExitStatus{}, fmt.Errorf("opening stdout log: %w", err)
		}
		defer stdout.Close()
		if stderr, err = OpenLog(rc.StderrPath); err != nil {
			return shim.ExitStatus{}, fmt.Errorf("opening stderr log: %w", err)
		}
		defer stderr.Close()
	}
	// The shim closes its copies of the pipes' write ends once the command
	// (or its init) holds its own, so that the copies see EOF when the
	// task's last writer is gone; drained is called before the exit
	// status is returned, so that the task's last output is in the logs.
	startedLogs, drained := func() {}, func(time.Duration) {}
	if logs != nil {
		startedLogs, drained = logs.Started, logs.Drain
	}
	// Any return path drains (at once when the command never ran); the
	// shim's write ends are closed by then, whichever path returned.
	drainTimeout := time.Duration(0)
	defer func() { startedLogs(); drained(drainTimeout) }()
	if rc.Isolation != nil {
		// The init sets the limits up in the task's namespaces.
		st, err := runIsolated(ctx, &rc, stdout, stderr, startedLogs, started)
		drainTimeout = logcap.DrainTimeout
		return st, err
	}
	cmd := &osexec.Cmd{
		Path:        rc.Path,
		Args:        rc.Args,
		Dir:         rc.Dir,
		Env:         rc.Env,
		Stdout:      stdout,
		Stderr:      stderr,
		SysProcAttr: &syscall.SysProcAttr{Setpgid: true, Credential: rc.Credential},
	}
	// The shim is the task's own process: the command inherits its
	// rlimits (the driver refuses ulimits when it runs no shims).
	if err := SetRlimits(rc.Rlimits); err != nil {
		startedLogs()
		return shim.ExitStatus{}, err
	}
	err := withAffinity(rc.Affinity, func() error { return StartCmd(ctx, cmd, rc.Cgroup) })
	startedLogs()
	if err != nil {
		return shim.ExitStatus{}, err
	}
	drainTimeout = logcap.DrainTimeout
	if err := started(cmd.Process.Pid); err != nil {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Wait()
		return shim.ExitStatus{}, err
	}
	err = cmd.Wait()
	drained(logcap.DrainTimeout)
	drained = func(time.Duration) {}
	res := ResultOf(cmd.ProcessState, err)
	st := shim.ExitStatus{ExitCode: res.ExitCode, Signal: res.Signal, ExitedAt: time.Now()}
	st.OOMKilled = rc.Cgroup != nil && rc.Cgroup.OOMKilled()
	return st, res.Err
}

// runIsolated starts the task's init in new pid, mount and IPC namespaces
// (and inside the task's cgroups), waits until it started the command and
// then until the command ended, and returns how it ended as the init
// reported it (or how the init ended, if it was killed).
// startedLogs runs once the init was started (or failed to be).
func runIsolated(ctx context.Context, rc *Config, stdout, stderr *os.File, startedLogs func(), started func(pid int) error) (shim.ExitStatus, error) {
	icfg := &InitConfig{Mode: ModeInit, Path: rc.Path, Args: rc.Args, Dir: rc.Dir, Env: rc.Env, Isolation: rc.Isolation,
		Limits: rc.Limits, Binds: rc.Binds}
	cmd, cfgW, statusR, closeChild, err := InitCmd(context.Background(), icfg)
	if err != nil {
		return shim.ExitStatus{}, err
	}
	defer statusR.Close()
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Cloneflags: namespaceFlags}
	procs, release, err := CgroupFD(cmd, rc.Cgroup)
	if err != nil {
		closeChild()
		cfgW.Close()
		return shim.ExitStatus{}, err
	}
	icfg.Procs = procs
	err = cmd.Start()
	release()
	closeChild()
	startedLogs()
	if err != nil {
		cfgW.Close()
		return shim.ExitStatus{}, fmt.Errorf("starting the task's init in new namespaces: %w", err)
	}
	kill := func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}
	br := bufio.NewReader(statusR)
	if err := SendConfig(cfgW, icfg); err != nil {
		kill()
		return shim.ExitStatus{}, err
	}
	if err := ReadStatus(ctx, statusR, br, false); err != nil {
		kill()
		return shim.ExitStatus{}, err
	}
	if err := started(cmd.Process.Pid); err != nil {
		kill()
		return shim.ExitStatus{}, err
	}
	werr := cmd.Wait()
	res := ResultOf(cmd.ProcessState, werr)
	if code, sig, ok := parseExitLine(br); ok {
		res = Result{ExitCode: code, Signal: sig}
	}
	st := shim.ExitStatus{ExitCode: res.ExitCode, Signal: res.Signal, ExitedAt: time.Now()}
	st.OOMKilled = rc.Cgroup != nil && rc.Cgroup.OOMKilled()
	return st, res.Err
}

// Result is how a reaped process ended.
type Result struct {
	// ExitCode is the exit code, 128+N when signal N killed the process,
	// -1 when it could not be waited for.
	ExitCode int
	// Signal is the signal that killed the process, 0 if none did.
	Signal int
	// Err is set when waiting failed for another reason than the
	// process's exit status.
	Err error
}

// ResultOf turns a reaped process state and the error of its Wait into a
// Result; a process killed by signal N reports exit code 128+N like a
// shell.
func ResultOf(ps *os.ProcessState, err error) Result {
	if ps == nil {
		return Result{ExitCode: -1, Err: fmt.Errorf("waiting for task: %w", err)}
	}
	res := Result{ExitCode: ps.ExitCode()}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		res.Signal = int(ws.Signal())
		res.ExitCode = 128 + res.Signal
	}
	var ee *osexec.ExitError
	if err != nil && !errors.As(err, &ee) && !errors.Is(err, osexec.ErrWaitDelay) {
		res.Err = err
	}
	return res
}

// OpenLog opens path for appending, creating it and its directory; an empty
// path discards the output.
func OpenLog(path string) (*os.File, error) {
	if path == "" {
		return os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	return os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
}

// StartCmd starts cmd inside the cgroups of g (none when g is nil) and
// returns only once the process is inside them. On cgroup v2 the kernel
// places the child in the cgroup at clone time (CLONE_INTO_CGROUP); on v1
// cmd is wrapped in joinScript. cmd.SysProcAttr must be set.
func StartCmd(ctx context.Context, cmd *osexec.Cmd, g *cgroup.Group) error {
	switch {
	case g == nil:
		return cmd.Start()
	case g.Version == cgroup.V2:
		f, err := os.Open(g.UnifiedDir())
		if err != nil {
			return fmt.Errorf("opening cgroup: %w", err)
		}
		defer f.Close()
		cmd.SysProcAttr.UseCgroupFD = true
		cmd.SysProcAttr.CgroupFD = int(f.Fd())
		return cmd.Start()
	}
	if len(cmd.ExtraFiles) != 0 {
		return errors.New("StartCmd: cmd must not have ExtraFiles")
	}
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	defer r.Close()
	procs := g.ProcsFiles()
	args := []string{"/bin/sh", "-c", joinScript, "corral-join", strconv.Itoa(len(procs))}
	args = append(args, procs...)
	args = append(args, cmd.Path)
	args = append(args, cmd.Args[1:]...)
	cmd.Path, cmd.Args = "/bin/sh", args
	cmd.ExtraFiles = []*os.File{w} // fd 3 in the child
	err = cmd.Start()
	w.Close()
	if err != nil {
		return err
	}
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(JoinTimeout)
	}
	_ = r.SetReadDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { _ = r.SetReadDeadline(time.Now()) })
	defer stop()
	buf := make([]byte, 1)
	if _, err = io.ReadFull(r, buf); err == nil {
		return nil
	}
	// The wrapper died or hung before joining: make sure it is gone.
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	_ = cmd.Process.Kill()
	werr := cmd.Wait()
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("joining cgroups: %w", cerr)
	}
	return fmt.Errorf("joining cgroups %v failed (%v); the reason is in the task's stderr", procs, werr)
}

package exec

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	osexec "os/exec"
	"syscall"
	"time"

	"github.com/corral-dev/corral/drivers/exec/cgroup"
	"github.com/corral-dev/corral/drivers/shim"
	"github.com/corral-dev/corral/plugins/drivers"
)

// runConfig is what Start hands to the exec runner in the task's shim:
// the command, already resolved and checked, and where it runs.
type runConfig struct {
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
}

func init() { shim.Register(driverName, runTask) }

// runTask is the exec driver's shim.Runner: it starts the command in its
// own process group and inside its cgroups, with stdout and stderr appended
// to the log files, and waits for it.
func runTask(ctx context.Context, raw json.RawMessage, started func(pid int) error) (shim.ExitStatus, error) {
	var rc runConfig
	if err := json.Unmarshal(raw, &rc); err != nil {
		return shim.ExitStatus{}, fmt.Errorf("reading exec task config: %w", err)
	}
	stdout, err := openLog(rc.StdoutPath)
	if err != nil {
		return shim.ExitStatus{}, fmt.Errorf("opening stdout log: %w", err)
	}
	defer stdout.Close()
	stderr, err := openLog(rc.StderrPath)
	if err != nil {
		return shim.ExitStatus{}, fmt.Errorf("opening stderr log: %w", err)
	}
	defer stderr.Close()
	if rc.Isolation != nil {
		return runIsolated(ctx, &rc, stdout, stderr, started)
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
	if err := startCmd(ctx, cmd, rc.Cgroup); err != nil {
		return shim.ExitStatus{}, err
	}
	if err := started(cmd.Process.Pid); err != nil {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Wait()
		return shim.ExitStatus{}, err
	}
	err = cmd.Wait()
	res := exitResultOf(cmd.ProcessState, err)
	st := shim.ExitStatus{ExitCode: res.ExitCode, Signal: res.Signal, ExitedAt: time.Now()}
	st.OOMKilled = rc.Cgroup != nil && rc.Cgroup.OOMKilled()
	return st, res.Err
}

// runIsolated starts the task's init in new pid, mount and IPC namespaces
// (and inside the task's cgroups), waits until it started the command and
// then until the command ended, and returns how it ended as the init
// reported it (or how the init ended, if it was killed).
func runIsolated(ctx context.Context, rc *runConfig, stdout, stderr *os.File, started func(pid int) error) (shim.ExitStatus, error) {
	icfg := &initConfig{Mode: modeInit, Path: rc.Path, Args: rc.Args, Dir: rc.Dir, Env: rc.Env, Isolation: rc.Isolation}
	cmd, cfgW, statusR, closeChild, err := initCmd(context.Background(), icfg)
	if err != nil {
		return shim.ExitStatus{}, err
	}
	defer statusR.Close()
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Cloneflags: namespaceFlags}
	procs, release, err := cgroupFD(cmd, rc.Cgroup)
	if err != nil {
		closeChild()
		cfgW.Close()
		return shim.ExitStatus{}, err
	}
	icfg.Procs = procs
	err = cmd.Start()
	release()
	closeChild()
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
	if err := sendConfig(cfgW, icfg); err != nil {
		kill()
		return shim.ExitStatus{}, err
	}
	if err := readStatus(ctx, statusR, br, false); err != nil {
		kill()
		return shim.ExitStatus{}, err
	}
	if err := started(cmd.Process.Pid); err != nil {
		kill()
		return shim.ExitStatus{}, err
	}
	werr := cmd.Wait()
	res := exitResultOf(cmd.ProcessState, werr)
	if code, sig, ok := parseExitLine(br); ok {
		res = &drivers.ExitResult{ExitCode: code, Signal: sig}
	}
	st := shim.ExitStatus{ExitCode: res.ExitCode, Signal: res.Signal, ExitedAt: time.Now()}
	st.OOMKilled = rc.Cgroup != nil && rc.Cgroup.OOMKilled()
	return st, res.Err
}

package exec

import (
	"context"
	"encoding/json"
	"fmt"
	osexec "os/exec"
	"syscall"
	"time"

	"github.com/corral-dev/corral/drivers/exec/cgroup"
	"github.com/corral-dev/corral/drivers/shim"
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

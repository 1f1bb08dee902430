package shim

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// The shim reports to Launch on reportFD and reads Launch's answer on
// ackFD: one byte once Launch has taken the started workload over, end of
// file when Launch gave up (then the shim kills the workload). The shim
// closes reportFD once it recorded the exit status, which tells a launcher
// that is still running to read it without waiting for the shim to exit.
const (
	reportFD = 3
	ackFD    = 4
)

// exitGrace bounds how long Launch waits for a shim that failed or was
// abandoned to exit by itself before it kills it.
const exitGrace = 5 * time.Second

// logTail is how much of shim.log a start error quotes.
const logTail = 2048

// errGaveUp is what started returns when Launch gave up on the shim.
var errGaveUp = errors.New("the launcher gave up before the workload started")

// reply is the shim's one message to Launch.
type reply struct {
	State *State `json:"state,omitempty"` // the workload runs
	Error string `json:"error,omitempty"` // it could not start
}

// MaybeRun turns the process into a shim and exits when its first argument
// is Arg, and returns at once otherwise. Binaries that start tasks call it
// first thing in main (test binaries in TestMain), after the package
// initialisers that register runners have run.
func MaybeRun() {
	available.Store(true)
	if len(os.Args) < 2 || os.Args[1] != Arg {
		return
	}
	os.Exit(shimMain(os.Args[2:]))
}

// shimMain is the shim process: args is its directory.
func shimMain(args []string) int {
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("shim_pid", os.Getpid())
	if len(args) != 1 {
		logger.Error("usage: " + Arg + " DIR (started by shim.Launch, not by hand)")
		return 2
	}
	// The pipes from Launch must not leak into the workload.
	syscall.CloseOnExec(reportFD)
	syscall.CloseOnExec(ackFD)
	reportW, ackR := os.NewFile(reportFD, "shim-report"), os.NewFile(ackFD, "shim-ack")
	// The shim ends when its workload does: stopping a task means
	// signalling the workload, never the shim. Caught (not ignored)
	// signals are reset to their defaults in the workload.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGINT, syscall.SIGTERM, syscall.SIGQUIT)
	go func() {
		for s := range sigs {
			logger.Warn("shim ignores the signal; signal the workload to stop it", "signal", s.String())
		}
	}()
	report := func(m reply) error {
		if err := json.NewEncoder(reportW).Encode(m); err != nil {
			return fmt.Errorf("%w: %v", errGaveUp, err)
		}
		if m.State == nil {
			return nil
		}
		defer ackR.Close()
		if _, err := io.ReadFull(ackR, make([]byte, 1)); err != nil {
			return errGaveUp
		}
		return nil
	}
	err := supervise(context.Background(), args[0], false, report)
	reportW.Close()
	if err != nil {
		logger.Error("shim failed", "dir", args[0], "error", err)
		return 1
	}
	return 0
}

// supervise runs the workload configured in dir with its kind's runner,
// reports its start (or why it failed to start) through report, and
// records its exit status in dir. report returns an error when Launch gave
// up; the runner then kills the workload.
func supervise(ctx context.Context, dir string, inProcess bool, report func(reply) error) error {
	fail := func(err error) error {
		_ = report(reply{Error: err.Error()})
		return err
	}
	b, err := os.ReadFile(filepath.Join(dir, configFile))
	if err != nil {
		return fail(fmt.Errorf("reading shim config: %w", err))
	}
	var cfg shimConfig
	if err := json.Unmarshal(b, &cfg); err != nil {
		return fail(fmt.Errorf("reading shim config %s: %w", filepath.Join(dir, configFile), err))
	}
	run := lookup(cfg.Kind)
	if run == nil {
		exe, _ := os.Executable()
		return fail(fmt.Errorf("binary %s has no shim runner for %q: the driver package must be linked in", exe, cfg.Kind))
	}
	self := os.Getpid()
	selfStart, err := startTime(self)
	if err != nil {
		return fail(fmt.Errorf("reading the shim's own start time: %w", err))
	}
	var reported, startedOK bool
	started := func(pid int) error {
		st := State{Kind: cfg.Kind, ShimPid: self, ShimStartTime: selfStart, Pid: pid, StartedAt: time.Now(), InProcess: inProcess}
		var err error
		if st.StartTime, err = startTime(pid); err != nil {
			return fmt.Errorf("reading the workload's start time: %w", err)
		}
		if err := writeFileAtomic(dir, stateFile, st, false); err != nil {
			return fmt.Errorf("recording shim state: %w", err)
		}
		reported = true
		if err := report(reply{State: &st}); err != nil {
			return err
		}
		startedOK = true
		return nil
	}
	status, err := run(ctx, cfg.Config, started)
	if !startedOK {
		if err == nil {
			err = fmt.Errorf("the %s runner returned without starting the workload", cfg.Kind)
		}
		if !reported {
			return fail(err)
		}
		return err
	}
	if err != nil {
		status.ExitCode, status.Error = -1, err.Error()
	}
	if status.ExitedAt.IsZero() {
		status.ExitedAt = time.Now()
	}
	if err := writeFileAtomic(dir, exitFile, status, true); err != nil {
		return fmt.Errorf("recording the exit status %+v: %w", status, err)
	}
	return nil
}

var (
	helpersMu sync.RWMutex
	helpers   = map[string]string{}
)

// UseHelper makes Launch start the shims of the given kinds from the
// binary at path, a small program that calls MaybeRun and registers the
// same runners (such as corral-shim), instead of re-executing the current
// binary, whose start-up may cost much more. An empty path goes back to
// re-executing the current binary for those kinds. The helper must come
// from the same build as the caller: the config it reads is the caller's.
func UseHelper(path string, kinds ...string) {
	helpersMu.Lock()
	defer helpersMu.Unlock()
	for _, k := range kinds {
		if path == "" {
			delete(helpers, k)
		} else {
			helpers[k] = path
		}
	}
}

// Helper returns the binary that runs the shims of kind (see UseHelper),
// or "" when they re-execute the current binary.
func Helper(kind string) string {
	helpersMu.RLock()
	defer helpersMu.RUnlock()
	return helpers[kind]
}

// launchProcess starts the shim process of kind for the config in dir and
// waits for its report.
func launchProcess(ctx context.Context, kind, dir string) (*Handle, error) {
	logPath := filepath.Join(dir, logFile)
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening shim log: %w", err)
	}
	defer logf.Close()
	reportR, reportW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	ackR, ackW, err := os.Pipe()
	if err != nil {
		reportR.Close()
		reportW.Close()
		return nil, err
	}
	defer ackW.Close()
	// /proc/self/exe still works when the binary was replaced on disk.
	path, exe := "/proc/self/exe", Helper(kind)
	if exe != "" {
		path = exe
	} else if exe, err = os.Executable(); err != nil {
		exe = os.Args[0]
	}
	cmd := &exec.Cmd{
		Path:        path,
		Args:        []string{exe, Arg, dir},
		Dir:         "/",
		Stdout:      logf,
		Stderr:      logf,
		ExtraFiles:  []*os.File{reportW, ackR}, // fds 3 and 4
		SysProcAttr: &syscall.SysProcAttr{Setsid: true},
	}
	err = cmd.Start()
	reportW.Close()
	ackR.Close()
	if err != nil {
		reportR.Close()
		return nil, fmt.Errorf("starting shim: %w", err)
	}

	stop := context.AfterFunc(ctx, func() { _ = reportR.SetReadDeadline(time.Now()) })
	var rep reply
	dec := json.NewDecoder(reportR)
	rerr := dec.Decode(&rep)
	stop()
	if rerr == nil && rep.State != nil && ctx.Err() == nil {
		if _, err := ackW.Write([]byte{'y'}); err == nil {
			_ = reportR.SetReadDeadline(time.Time{})
			h := newHandle(dir, *rep.State)
			go func() {
				// End of file: the exit status is recorded, or the shim died.
				_, _ = io.Copy(io.Discard, io.MultiReader(dec.Buffered(), reportR))
				reportR.Close()
				if !h.tryExitFile() {
					_ = cmd.Wait()
					h.finishAfterShim("shim " + cmd.ProcessState.String())
					return
				}
				_ = cmd.Wait()
			}()
			return h, nil
		}
	}
	// No start: closing the pipes tells a shim that is still starting to
	// kill its workload; then it exits.
	reportR.Close()
	ackW.Close()
	werr := waitOrKill(cmd, exitGrace)
	switch {
	case rerr == nil && rep.Error != "":
		return nil, errors.New(rep.Error)
	case ctx.Err() != nil:
		return nil, fmt.Errorf("starting shim: %w", ctx.Err())
	}
	return nil, fmt.Errorf("shim exited before starting the workload (%v); %s", werr, describeLog(logPath))
}

// waitOrKill waits up to grace for cmd to exit, then kills it.
func waitOrKill(cmd *exec.Cmd, grace time.Duration) error {
	t := time.AfterFunc(grace, func() { _ = cmd.Process.Kill() })
	defer t.Stop()
	err := cmd.Wait()
	if err == nil {
		return errors.New("exit status 0")
	}
	return err
}

// describeLog quotes the end of the shim log at path for an error message.
func describeLog(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "no shim log: " + err.Error()
	}
	b = bytes.TrimSpace(b)
	if len(b) == 0 {
		return "the shim log " + path + " is empty"
	}
	if len(b) > logTail {
		b = b[len(b)-logTail:]
	}
	return fmt.Sprintf("the shim log %s ends with: %s", path, strings.ReplaceAll(string(b), "\n", " | "))
}

// launchInProcess runs the runner for the config in dir on a goroutine of
// this process, for binaries that cannot act as a shim.
func launchInProcess(ctx context.Context, dir string) (*Handle, error) {
	replies := make(chan reply, 1)
	acks := make(chan bool, 1)
	var h *Handle
	handleSet := make(chan struct{})
	go func() {
		report := func(m reply) error {
			replies <- m
			if m.State == nil {
				return nil
			}
			if !<-acks {
				return errGaveUp
			}
			return nil
		}
		err := supervise(context.Background(), dir, true, report)
		select {
		case <-handleSet: // the workload started: record its end
		default:
			return
		}
		if err != nil {
			h.finish(nil, fmt.Errorf("%w: %v", ErrNoExitStatus, err))
			return
		}
		h.finishAfterShim("in-process supervisor ended")
	}()
	select {
	case rep := <-replies:
		if rep.State == nil {
			return nil, errors.New(rep.Error)
		}
		if ctx.Err() != nil {
			acks <- false
			return nil, fmt.Errorf("starting task: %w", ctx.Err())
		}
		h = newHandle(dir, *rep.State)
		close(handleSet)
		acks <- true
		return h, nil
	case <-ctx.Done():
		go func() {
			if rep := <-replies; rep.State != nil {
				acks <- false
			}
		}()
		return nil, fmt.Errorf("starting task: %w", ctx.Err())
	}
}

package shim

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

const testTimeout = 10 * time.Second

// testConfig is the config of the "test" runner.
type testConfig struct {
	Argv  []string      `json:"argv"`
	Fail  string        `json:"fail,omitempty"`  // fail to start with this message
	Delay time.Duration `json:"delay,omitempty"` // before starting
	// PidFile receives the workload's pid before the runner reports it.
	PidFile string `json:"pid_file,omitempty"`
}

// testRunner runs testConfig.Argv in a process group of its own.
func testRunner(ctx context.Context, raw json.RawMessage, started func(pid int) error) (ExitStatus, error) {
	var c testConfig
	if err := json.Unmarshal(raw, &c); err != nil {
		return ExitStatus{}, err
	}
	time.Sleep(c.Delay)
	if c.Fail != "" {
		return ExitStatus{}, errors.New(c.Fail)
	}
	cmd := exec.Command(c.Argv[0], c.Argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return ExitStatus{}, err
	}
	if c.PidFile != "" {
		if err := os.WriteFile(c.PidFile, []byte(strconv.Itoa(cmd.Process.Pid)), 0o600); err != nil {
			return ExitStatus{}, err
		}
	}
	if err := started(cmd.Process.Pid); err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return ExitStatus{}, err
	}
	_ = cmd.Wait()
	st := ExitStatus{ExitCode: cmd.ProcessState.ExitCode()}
	if ws := cmd.ProcessState.Sys().(syscall.WaitStatus); ws.Signaled() {
		st.Signal = int(ws.Signal())
		st.ExitCode = 128 + st.Signal
	}
	return st, nil
}

func init() { Register("test", testRunner) }

func TestMain(m *testing.M) {
	MaybeRun()
	os.Exit(m.Run())
}

func launch(t *testing.T, dir string, c testConfig) *Handle {
	t.Helper()
	h, err := Launch(context.Background(), "test", dir, c)
	if err != nil {
		t.Fatalf("Launch: %v", err)
	}
	t.Cleanup(func() {
		if processAlive(h.State().Pid, h.State().StartTime) {
			_ = syscall.Kill(-h.State().Pid, syscall.SIGKILL)
		}
		_, _ = h.Wait(context.Background())
	})
	return h
}

func wait(t *testing.T, h *Handle) (*ExitStatus, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	st, err := h.Wait(ctx)
	if errors.Is(err, context.DeadlineExceeded) {
		t.Fatal("no exit status in time")
	}
	return st, err
}

func waitGone(t *testing.T, pid int, start uint64) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for processAlive(pid, start) {
		if time.Now().After(deadline) {
			t.Fatalf("process %d still runs", pid)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestLaunchAndWait(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "shim")
	before := time.Now()
	h := launch(t, dir, testConfig{Argv: []string{"/bin/sh", "-c", "sleep 0.1; exit 5"}})
	st := h.State()
	if st.Kind != "test" || st.InProcess || st.ShimPid == os.Getpid() || st.Pid == st.ShimPid || st.StartTime == 0 || st.ShimStartTime == 0 {
		t.Errorf("State = %+v, want a shim process of its own", st)
	}
	if st.StartedAt.Before(before) || st.StartedAt.After(time.Now()) {
		t.Errorf("StartedAt = %v, want after %v", st.StartedAt, before)
	}
	if got, err := h.Result(); got != nil || err != nil {
		t.Errorf("Result while running = %+v, %v", got, err)
	}
	es, err := wait(t, h)
	if err != nil || es.ExitCode != 5 || es.Signal != 0 || es.ExitedAt.Before(st.StartedAt) {
		t.Fatalf("Wait = %+v, %v; want exit code 5", es, err)
	}
	if fileSt, err := readExit(dir); err != nil || *fileSt != *es {
		t.Errorf("exit.json = %+v, %v; want %+v", fileSt, err, es)
	}
	// The shim ran in its own session, as a child of this process.
	waitGone(t, st.ShimPid, st.ShimStartTime)
}

func TestLaunchStartFailure(t *testing.T) {
	dir := t.TempDir()
	_, err := Launch(context.Background(), "test", dir, testConfig{Fail: "no such thing: give another"})
	if err == nil || err.Error() != "no such thing: give another" {
		t.Fatalf("Launch: err = %v, want the runner's message", err)
	}
	if _, err := Launch(context.Background(), "no-such-kind", dir, nil); err == nil || !strings.Contains(err.Error(), "no-such-kind") {
		t.Errorf("Launch of an unknown kind: err = %v", err)
	}
}

func TestLaunchCancelled(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(t.TempDir(), "pid")
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := Launch(ctx, "test", dir, testConfig{Argv: []string{"sleep", "1000"}, Delay: 300 * time.Millisecond, PidFile: pidFile})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Launch: err = %v, want the context's error", err)
	}
	// The shim started the workload after Launch gave up, then killed it
	// and exited; Launch waited for that and cleaned up.
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatalf("the runner did not start the workload: %v", err)
	}
	pid, _ := strconv.Atoi(string(b))
	if state, _, err := procStat(pid); err == nil && state != 'Z' {
		t.Errorf("workload %d still runs after Launch gave up", pid)
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if e.Name() != logFile {
			t.Errorf("%s left in the shim directory after a failed Launch", e.Name())
		}
	}
}

func TestReattach(t *testing.T) {
	dir := t.TempDir()
	h := launch(t, dir, testConfig{Argv: []string{"sleep", "1000"}})
	r, err := Reattach(dir)
	if err != nil {
		t.Fatalf("Reattach: %v", err)
	}
	if r.State() != h.State() {
		t.Errorf("reattached State = %+v, want %+v", r.State(), h.State())
	}
	select {
	case <-r.Done():
		t.Fatal("reattached handle done while the workload runs")
	case <-time.After(3 * pollInterval):
	}
	_ = syscall.Kill(h.State().Pid, syscall.SIGTERM)
	es, err := wait(t, r)
	if err != nil || es.Signal != int(syscall.SIGTERM) || es.ExitCode != 143 {
		t.Fatalf("reattached Wait = %+v, %v; want SIGTERM", es, err)
	}
	// After the end, a new Reattach has the status at once.
	r2, err := Reattach(dir)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-r2.Done():
	default:
		t.Fatal("Reattach after the exit is not done at once")
	}
	if es2, err := r2.Result(); err != nil || *es2 != *es {
		t.Errorf("Result = %+v, %v; want %+v", es2, err, es)
	}
	if _, err := Reattach(t.TempDir()); err == nil {
		t.Error("Reattach to an empty directory succeeded")
	}
}

func TestShimKilled(t *testing.T) {
	dir := t.TempDir()
	h := launch(t, dir, testConfig{Argv: []string{"sleep", "1000"}})
	st := h.State()
	r, err := Reattach(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Launch(context.Background(), "test", dir, testConfig{Argv: []string{"true"}}); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("Launch into the directory of a running shim: err = %v", err)
	}
	_ = syscall.Kill(st.ShimPid, syscall.SIGKILL)
	// The launching process, the shim's parent, knows at once.
	if _, err := wait(t, h); !errors.Is(err, ErrNoExitStatus) || !strings.Contains(err.Error(), "killed") {
		t.Errorf("Wait after the shim was killed: err = %v, want ErrNoExitStatus", err)
	}
	// A reattached handle waits for the orphaned workload.
	select {
	case <-r.Done():
		t.Fatal("reattached handle done while the orphaned workload runs")
	case <-time.After(5 * pollInterval):
	}
	_ = syscall.Kill(st.Pid, syscall.SIGKILL)
	if _, err := wait(t, r); !errors.Is(err, ErrNoExitStatus) {
		t.Errorf("reattached Wait: err = %v, want ErrNoExitStatus", err)
	}
}

func TestShimIgnoresSignals(t *testing.T) {
	dir := t.TempDir()
	h := launch(t, dir, testConfig{Argv: []string{"/bin/sh", "-c", "sleep 0.3; exit 4"}})
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP} {
		_ = syscall.Kill(h.State().ShimPid, sig)
	}
	if es, err := wait(t, h); err != nil || es.ExitCode != 4 {
		t.Fatalf("Wait = %+v, %v; want exit code 4 recorded despite the signals", es, err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, logFile)); !strings.Contains(string(b), "shim ignores the signal") {
		t.Errorf("shim log %q does not mention the signals", b)
	}
}

func TestInProcess(t *testing.T) {
	available.Store(false)
	t.Cleanup(func() { available.Store(true) })
	dir := t.TempDir()
	h := launch(t, dir, testConfig{Argv: []string{"/bin/sh", "-c", "exit 6"}})
	if st := h.State(); !st.InProcess || st.ShimPid != os.Getpid() {
		t.Errorf("State = %+v, want in process %d", st, os.Getpid())
	}
	if es, err := wait(t, h); err != nil || es.ExitCode != 6 {
		t.Fatalf("Wait = %+v, %v; want exit code 6", es, err)
	}
	if r, err := Reattach(dir); err != nil {
		t.Error(err)
	} else if es, err := r.Result(); err != nil || es.ExitCode != 6 {
		t.Errorf("reattached Result = %+v, %v", es, err)
	}
	if _, err := Launch(context.Background(), "test", dir, testConfig{Fail: "bad config"}); err == nil || err.Error() != "bad config" {
		t.Errorf("in-process start failure: err = %v", err)
	}
}

func TestUseHelper(t *testing.T) {
	t.Cleanup(func() { UseHelper("", "a", "b") })
	UseHelper("/x/helper", "a", "b")
	if Helper("a") != "/x/helper" || Helper("b") != "/x/helper" || Helper("c") != "" {
		t.Fatalf("helpers a, b, c = %q, %q, %q; want /x/helper for a and b only", Helper("a"), Helper("b"), Helper("c"))
	}
	UseHelper("", "a")
	if Helper("a") != "" || Helper("b") != "/x/helper" {
		t.Fatalf("after UseHelper(\"\", a): a, b = %q, %q", Helper("a"), Helper("b"))
	}
}

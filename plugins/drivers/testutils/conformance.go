package testutils

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/corral-dev/corral/plugins/drivers"
)

// exitTimeout bounds every wait for a task that is expected to exit,
// unless WithTimeout says otherwise.
const exitTimeout = 10 * time.Second

// RunConformance runs the behaviour every driver must share against fresh
// drivers made by newDriver, one per subtest, in parallel. The tasks use
// /bin/sh, sleep and kill and print pids of the host's pid namespace, so
// the suite suits drivers that run tasks on the host (exec) or can see the
// host's tools. newDriver should skip the test when the driver cannot run
// on this node. Drivers that isolate tasks further adapt the suite with
// options (WithHostPids, SkipConformance).
func RunConformance(t *testing.T, newDriver func(t *testing.T) drivers.Driver, opts ...ConformanceOption) {
	t.Helper()
	o := &conformanceOptions{timeout: exitTimeout}
	for _, opt := range opts {
		opt(o)
	}
	tests := []struct {
		name string
		fn   func(*testing.T, drivers.Driver)
	}{
		{"Identity", func(t *testing.T, d drivers.Driver) { testIdentity(t, d, o) }},
		{"ExitCodeAndLogs", func(t *testing.T, d drivers.Driver) { testExitCodeAndLogs(t, d, o) }},
		{"KilledBySignal", func(t *testing.T, d drivers.Driver) { testKilledBySignal(t, d, o) }},
		{"WaitManyCallers", func(t *testing.T, d drivers.Driver) { testWaitManyCallers(t, d, o) }},
		{"Env", func(t *testing.T, d drivers.Driver) { testEnv(t, d, o) }},
		{"InspectRunning", func(t *testing.T, d drivers.Driver) { testInspectRunning(t, d, o) }},
		{"StopSignal", func(t *testing.T, d drivers.Driver) { testStopSignal(t, d, o) }},
		{"StopEscalatesToKill", func(t *testing.T, d drivers.Driver) { testStopEscalates(t, d, o) }},
		{"DestroyKillsChildren", func(t *testing.T, d drivers.Driver) { testDestroyKillsChildren(t, d, o) }},
		{"DestroyRunningNeedsForce", func(t *testing.T, d drivers.Driver) { testDestroyNeedsForce(t, d, o) }},
		{"Exec", func(t *testing.T, d drivers.Driver) { testExec(t, d, o) }},
		{"ExecStreams", func(t *testing.T, d drivers.Driver) { testExecStreams(t, d, o) }},
		{"ExecCancel", func(t *testing.T, d drivers.Driver) { testExecCancel(t, d, o) }},
		{"ExecNotRunning", func(t *testing.T, d drivers.Driver) { testExecNotRunning(t, d, o) }},
		{"InvalidConfig", func(t *testing.T, d drivers.Driver) { testInvalidConfig(t, d, o) }},
		{"DuplicateID", func(t *testing.T, d drivers.Driver) { testDuplicateID(t, d, o) }},
		{"UnknownTask", func(t *testing.T, d drivers.Driver) { testUnknownTask(t, d, o) }},
		{"Stats", func(t *testing.T, d drivers.Driver) { testStats(t, d, o) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if why, ok := o.skip[tc.name]; ok {
				t.Skip(why)
			}
			t.Parallel()
			tc.fn(t, newDriver(t))
		})
	}
}

// ConformanceOption adapts RunConformance to a driver.
type ConformanceOption func(*conformanceOptions)

type conformanceOptions struct {
	skip     map[string]string
	timeout  time.Duration
	hostPids func(t testing.TB, d drivers.Driver, taskID string, pids []int) []int
}

// WithHostPids is for drivers that give each task its own pid namespace:
// hostPids turns pids that a running task printed (`echo $$ $!`), which are
// its namespace's, into the host's, so that the suite can check that those
// processes are gone.
func WithHostPids(hostPids func(t testing.TB, d drivers.Driver, taskID string, pids []int) []int) ConformanceOption {
	return func(o *conformanceOptions) { o.hostPids = hostPids }
}

// WithTimeout bounds each wait for a task's output or exit by d instead of
// 10 seconds: for drivers whose tasks take long to start, such as VMs that
// boot a kernel under software emulation. Bounds on how fast Stop returns
// scale with it.
func WithTimeout(d time.Duration) ConformanceOption {
	return func(o *conformanceOptions) { o.timeout = d }
}

// SkipConformance skips the subtest name (as RunConformance lists it) and
// logs why: for behaviour that the driver's isolation rules out.
func SkipConformance(name, why string) ConformanceOption {
	return func(o *conformanceOptions) {
		if o.skip == nil {
			o.skip = map[string]string{}
		}
		o.skip[name] = why
	}
}

// taskPids waits until the task's stdout log starts with a line of n pids
// and returns them as the host's pids.
func (o *conformanceOptions) taskPids(t *testing.T, d drivers.Driver, cfg *drivers.TaskConfig, n int) []int {
	t.Helper()
	pids := WaitForPids(t, cfg.StdoutPath, n, o.timeout)
	if o.hostPids != nil {
		pids = o.hostPids(t, d, cfg.ID, pids)
	}
	return pids
}

func testIdentity(t *testing.T, d drivers.Driver, o *conformanceOptions) {
	if d.Name() == "" {
		t.Error("Name() is empty")
	}
	fp, err := d.Fingerprint(context.Background())
	if err != nil {
		t.Fatalf("Fingerprint: %v", err)
	}
	if fp == nil || fp.Health != drivers.HealthHealthy {
		t.Fatalf("Fingerprint = %+v, want healthy", fp)
	}
}

func testExitCodeAndLogs(t *testing.T, d drivers.Driver, o *conformanceOptions) {
	for _, code := range []int{0, 3, 42} {
		t.Run(fmt.Sprint(code), func(t *testing.T) {
			t.Parallel()
			cfg := TaskConfig(t, "/bin/sh", "-c", fmt.Sprintf("echo out-%[1]d; echo err-%[1]d >&2; exit %[1]d", code))
			StartTask(t, d, cfg)
			res := WaitResult(t, d, cfg.ID, o.timeout)
			if res.ExitCode != code || res.Signal != 0 || res.Err != nil {
				t.Fatalf("result = %+v, want exit code %d", res, code)
			}
			if res.Successful() != (code == 0) {
				t.Errorf("Successful() = %v for exit code %d", res.Successful(), code)
			}
			if got := ReadLog(t, cfg.StdoutPath); got != fmt.Sprintf("out-%d\n", code) {
				t.Errorf("stdout log = %q", got)
			}
			if got := ReadLog(t, cfg.StderrPath); got != fmt.Sprintf("err-%d\n", code) {
				t.Errorf("stderr log = %q", got)
			}
			st, err := d.Inspect(context.Background(), cfg.ID)
			if err != nil {
				t.Fatalf("Inspect: %v", err)
			}
			if st.State != drivers.TaskStateExited || st.ExitResult == nil || st.ExitResult.ExitCode != code {
				t.Errorf("Inspect = %+v, want exited with %d", st, code)
			}
			if st.CompletedAt.IsZero() || st.CompletedAt.Before(st.StartedAt) {
				t.Errorf("Inspect times: started %v, completed %v", st.StartedAt, st.CompletedAt)
			}
		})
	}
}

func testKilledBySignal(t *testing.T, d drivers.Driver, o *conformanceOptions) {
	cfg := TaskConfig(t, "/bin/sh", "-c", "kill -KILL $$")
	StartTask(t, d, cfg)
	res := WaitResult(t, d, cfg.ID, o.timeout)
	if res.Signal != int(syscall.SIGKILL) || res.ExitCode != 128+int(syscall.SIGKILL) {
		t.Fatalf("result = %+v, want signal 9 and exit code 137", res)
	}
	if res.Successful() {
		t.Error("a killed task reports success")
	}
}

func testWaitManyCallers(t *testing.T, d drivers.Driver, o *conformanceOptions) {
	cfg := TaskConfig(t, "/bin/sh", "-c", "sleep 0.3; exit 7")
	StartTask(t, d, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	var wg sync.WaitGroup
	for i := 0; i < 3; i++ {
		ch, err := d.Wait(ctx, cfg.ID)
		if err != nil {
			t.Fatalf("Wait: %v", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case res := <-ch:
				if res == nil || res.ExitCode != 7 {
					t.Errorf("concurrent waiter %d: result %+v, want exit code 7", i, res)
				}
			case <-ctx.Done():
				t.Errorf("concurrent waiter %d got no result", i)
			}
		}()
	}
	wg.Wait()
	// After the exit, a new Wait still gets the result, every time.
	for i := 0; i < 2; i++ {
		if res := WaitResult(t, d, cfg.ID, time.Second); res.ExitCode != 7 {
			t.Errorf("late waiter %d: result %+v, want exit code 7", i, res)
		}
	}
}

func testEnv(t *testing.T, d drivers.Driver, o *conformanceOptions) {
	cfg := TaskConfig(t, "/bin/sh", "-c", `echo "FOO=$FOO BAR=$BAR"`)
	cfg.Env = map[string]string{"FOO": "foo value", "BAR": "b=r"}
	StartTask(t, d, cfg)
	if res := WaitResult(t, d, cfg.ID, o.timeout); !res.Successful() {
		t.Fatalf("result = %+v", res)
	}
	if got, want := ReadLog(t, cfg.StdoutPath), "FOO=foo value BAR=b=r\n"; got != want {
		t.Errorf("stdout = %q, want %q", got, want)
	}
}

func testInspectRunning(t *testing.T, d drivers.Driver, o *conformanceOptions) {
	cfg := TaskConfig(t, "sleep", "1000")
	before := time.Now()
	h := StartTask(t, d, cfg)
	if h.Config == nil || h.Config.ID != cfg.ID || h.Driver != d.Name() {
		t.Errorf("handle = %+v, want config of %s and driver %s", h, cfg.ID, d.Name())
	}
	st, err := d.Inspect(context.Background(), cfg.ID)
	if err != nil {
		t.Fatalf("Inspect: %v", err)
	}
	if st.ID != cfg.ID || st.State != drivers.TaskStateRunning || st.ExitResult != nil {
		t.Errorf("Inspect = %+v, want running", st)
	}
	if st.StartedAt.Before(before.Add(-time.Second)) || st.StartedAt.After(time.Now()) {
		t.Errorf("StartedAt = %v, want about %v", st.StartedAt, before)
	}
}

func testStopSignal(t *testing.T, d drivers.Driver, o *conformanceOptions) {
	cfg := TaskConfig(t, "sleep", "1000")
	StartTask(t, d, cfg)
	start := time.Now()
	if err := d.Stop(context.Background(), cfg.ID, o.timeout/2, "SIGTERM"); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if el := time.Since(start); el > o.timeout*2/5 {
		t.Errorf("Stop took %v for a task that dies of SIGTERM", el)
	}
	res := WaitResult(t, d, cfg.ID, o.timeout)
	if res.Signal != int(syscall.SIGTERM) || res.ExitCode != 128+int(syscall.SIGTERM) {
		t.Errorf("result = %+v, want SIGTERM and exit code 143", res)
	}
	// Stopping a stopped task is fine.
	if err := d.Stop(context.Background(), cfg.ID, time.Second, ""); err != nil {
		t.Errorf("second Stop: %v", err)
	}
}

func testStopEscalates(t *testing.T, d drivers.Driver, o *conformanceOptions) {
	// Both the shell and its child ignore SIGTERM.
	cfg := TaskConfig(t, "/bin/sh", "-c", `trap "" TERM; sleep 1000 & echo $$ $!; wait`)
	StartTask(t, d, cfg)
	pids := o.taskPids(t, d, cfg, 2)
	start := time.Now()
	if err := d.Stop(context.Background(), cfg.ID, 300*time.Millisecond, "SIGTERM"); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if el := time.Since(start); el < 250*time.Millisecond {
		t.Errorf("Stop returned after %v, before its timeout", el)
	}
	res := WaitResult(t, d, cfg.ID, o.timeout)
	if res.Signal != int(syscall.SIGKILL) {
		t.Errorf("result = %+v, want SIGKILL after the timeout", res)
	}
	waitGone(t, pids...)
}

func testDestroyKillsChildren(t *testing.T, d drivers.Driver, o *conformanceOptions) {
	cfg := TaskConfig(t, "/bin/sh", "-c", "sleep 1000 & echo $$ $!; sleep 1000")
	StartTask(t, d, cfg)
	pids := o.taskPids(t, d, cfg, 2)
	ch, err := d.Wait(context.Background(), cfg.ID)
	if err != nil {
		t.Fatalf("Wait: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	if err := d.Destroy(ctx, cfg.ID, true); err != nil {
		t.Fatalf("Destroy: %v", err)
	}
	for _, pid := range pids {
		if !ProcessGone(pid) {
			t.Errorf("process %d (of %v: shell, backgrounded child) still runs after Destroy", pid, pids)
		}
	}
	select {
	case res := <-ch:
		if res == nil || res.Signal != int(syscall.SIGKILL) {
			t.Errorf("result after Destroy = %+v, want SIGKILL", res)
		}
	case <-time.After(o.timeout):
		t.Error("a Wait from before Destroy got no result")
	}
	if _, err := d.Inspect(context.Background(), cfg.ID); !errors.Is(err, drivers.ErrTaskNotFound) {
		t.Errorf("Inspect after Destroy: err = %v, want ErrTaskNotFound", err)
	}
	if err := d.Destroy(ctx, cfg.ID, true); !errors.Is(err, drivers.ErrTaskNotFound) {
		t.Errorf("second Destroy: err = %v, want ErrTaskNotFound", err)
	}
}

func testDestroyNeedsForce(t *testing.T, d drivers.Driver, o *conformanceOptions) {
	cfg := TaskConfig(t, "sleep", "1000")
	StartTask(t, d, cfg)
	ctx := context.Background()
	if err := d.Destroy(ctx, cfg.ID, false); err == nil {
		t.Fatal("Destroy without force of a running task succeeded")
	}
	if st, err := d.Inspect(ctx, cfg.ID); err != nil || st.State != drivers.TaskStateRunning {
		t.Fatalf("after refused Destroy: Inspect = %+v, %v; want still running", st, err)
	}
	if err := d.Stop(ctx, cfg.ID, time.Second, "SIGKILL"); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	WaitResult(t, d, cfg.ID, o.timeout)
	if err := d.Destroy(ctx, cfg.ID, false); err != nil {
		t.Fatalf("Destroy of an exited task: %v", err)
	}
}

// skipNoExec checks that a driver without exec says so with ErrNotSupported
// and then skips the test.
func skipNoExec(t *testing.T, d drivers.Driver, taskID string) {
	t.Helper()
	if d.Capabilities().Exec {
		return
	}
	_, err := d.Exec(context.Background(), taskID, &drivers.ExecOptions{Command: []string{"true"}})
	if !errors.Is(err, drivers.ErrNotSupported) {
		t.Errorf("Exec of a driver without the capability: err = %v, want ErrNotSupported", err)
	}
	t.Skip("driver cannot exec")
}

func testExec(t *testing.T, d drivers.Driver, o *conformanceOptions) {
	cfg := TaskConfig(t, "sleep", "1000")
	cfg.Env = map[string]string{"FOO": "from-task"}
	StartTask(t, d, cfg)
	skipNoExec(t, d, cfg.ID)
	var stdout, stderr SafeBuffer
	code, err := d.Exec(context.Background(), cfg.ID, &drivers.ExecOptions{
		Command: []string{"/bin/sh", "-c", `echo "out $FOO $BAR"; echo err >&2; exit 5`},
		Env:     map[string]string{"BAR": "from-exec"},
		Stdout:  &stdout,
		Stderr:  &stderr,
	})
	if err != nil {
		t.Fatalf("Exec: %v", err)
	}
	if code != 5 {
		t.Errorf("exit code = %d, want 5", code)
	}
	if got := stdout.String(); got != "out from-task from-exec\n" {
		t.Errorf("stdout = %q", got)
	}
	if got := stderr.String(); got != "err\n" {
		t.Errorf("stderr = %q", got)
	}
	if _, err := d.Exec(context.Background(), cfg.ID, &drivers.ExecOptions{}); !errors.Is(err, drivers.ErrInvalidConfig) {
		t.Errorf("Exec with no command: err = %v, want ErrInvalidConfig", err)
	}
}

func testExecStreams(t *testing.T, d drivers.Driver, o *conformanceOptions) {
	cfg := TaskConfig(t, "sleep", "1000")
	StartTask(t, d, cfg)
	skipNoExec(t, d, cfg.ID)
	var stdout SafeBuffer
	stdinR, stdinW := io.Pipe()
	defer stdinW.Close()
	type result struct {
		code int
		err  error
	}
	done := make(chan result, 1)
	go func() {
		code, err := d.Exec(context.Background(), cfg.ID, &drivers.ExecOptions{
			Command: []string{"/bin/sh", "-c", "echo first; read line; echo got $line"},
			Stdin:   stdinR,
			Stdout:  &stdout,
		})
		done <- result{code, err}
	}()
	// "first" must arrive while the command still waits for input.
	if !stdout.WaitFor("first\n", o.timeout) {
		t.Fatalf("no streamed output before the command ended; stdout = %q", stdout.String())
	}
	if _, err := io.WriteString(stdinW, "ping\n"); err != nil {
		t.Fatalf("writing stdin: %v", err)
	}
	select {
	case r := <-done:
		if r.err != nil || r.code != 0 {
			t.Fatalf("Exec = %d, %v", r.code, r.err)
		}
	case <-time.After(o.timeout):
		t.Fatal("Exec did not return")
	}
	if got := stdout.String(); got != "first\ngot ping\n" {
		t.Errorf("stdout = %q", got)
	}
}

func testExecCancel(t *testing.T, d drivers.Driver, o *conformanceOptions) {
	cfg := TaskConfig(t, "sleep", "1000")
	StartTask(t, d, cfg)
	skipNoExec(t, d, cfg.ID)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := d.Exec(ctx, cfg.ID, &drivers.ExecOptions{Command: []string{"sleep", "1000"}})
	if err == nil {
		t.Fatal("Exec whose context ended returned no error")
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("Exec returned %v after its context ended", el)
	}
	if st, err := d.Inspect(context.Background(), cfg.ID); err != nil || st.State != drivers.TaskStateRunning {
		t.Errorf("task after cancelled exec: %+v, %v; want still running", st, err)
	}
}

func testExecNotRunning(t *testing.T, d drivers.Driver, o *conformanceOptions) {
	cfg := TaskConfig(t, "true")
	StartTask(t, d, cfg)
	WaitResult(t, d, cfg.ID, o.timeout)
	skipNoExec(t, d, cfg.ID)
	_, err := d.Exec(context.Background(), cfg.ID, &drivers.ExecOptions{Command: []string{"true"}})
	if !errors.Is(err, drivers.ErrTaskNotRunning) {
		t.Errorf("Exec in an exited task: err = %v, want ErrTaskNotRunning", err)
	}
}

func testInvalidConfig(t *testing.T, d drivers.Driver, o *conformanceOptions) {
	tests := []struct {
		name string
		cfg  func(*drivers.TaskConfig) *drivers.TaskConfig
	}{
		{"nil config", func(*drivers.TaskConfig) *drivers.TaskConfig { return nil }},
		{"no command", func(c *drivers.TaskConfig) *drivers.TaskConfig { c.Command = nil; return c }},
		{"empty program", func(c *drivers.TaskConfig) *drivers.TaskConfig { c.Command = []string{"", "x"}; return c }},
		{"empty ID", func(c *drivers.TaskConfig) *drivers.TaskConfig { c.ID = ""; return c }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.cfg(TaskConfig(t, "true"))
			h, err := d.Start(context.Background(), cfg)
			if !errors.Is(err, drivers.ErrInvalidConfig) {
				t.Errorf("Start: handle %v, err = %v; want ErrInvalidConfig", h, err)
			}
			if err != nil && strings.TrimSpace(err.Error()) == drivers.ErrInvalidConfig.Error() {
				t.Errorf("error %q does not say what is wrong", err)
			}
		})
	}
}

func testDuplicateID(t *testing.T, d drivers.Driver, o *conformanceOptions) {
	cfg := TaskConfig(t, "sleep", "1000")
	StartTask(t, d, cfg)
	dup := TaskConfig(t, "true")
	dup.ID = cfg.ID
	if _, err := d.Start(context.Background(), dup); !errors.Is(err, drivers.ErrTaskExists) {
		t.Errorf("Start with a duplicate ID: err = %v, want ErrTaskExists", err)
	}
	// The original task is unharmed.
	if st, err := d.Inspect(context.Background(), cfg.ID); err != nil || st.State != drivers.TaskStateRunning {
		t.Errorf("original task: %+v, %v; want running", st, err)
	}
}

func testUnknownTask(t *testing.T, d drivers.Driver, o *conformanceOptions) {
	ctx := context.Background()
	const id = "no-such-task"
	calls := map[string]func() error{
		"Wait":    func() error { _, err := d.Wait(ctx, id); return err },
		"Stop":    func() error { return d.Stop(ctx, id, time.Second, "SIGTERM") },
		"Destroy": func() error { return d.Destroy(ctx, id, true) },
		"Inspect": func() error { _, err := d.Inspect(ctx, id); return err },
		"Stats":   func() error { _, err := d.Stats(ctx, id); return err },
		"Exec": func() error {
			_, err := d.Exec(ctx, id, &drivers.ExecOptions{Command: []string{"true"}})
			if errors.Is(err, drivers.ErrNotSupported) {
				return drivers.ErrTaskNotFound
			}
			return err
		},
	}
	for name, call := range calls {
		if err := call(); !errors.Is(err, drivers.ErrTaskNotFound) {
			t.Errorf("%s of an unknown task: err = %v, want ErrTaskNotFound", name, err)
		}
	}
}

func testStats(t *testing.T, d drivers.Driver, o *conformanceOptions) {
	// Burn a little CPU, then idle.
	cfg := TaskConfig(t, "/bin/sh", "-c", `i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done; echo ready; exec sleep 1000`)
	StartTask(t, d, cfg)
	WaitForLog(t, cfg.StdoutPath, "ready", o.timeout)
	deadline := time.Now().Add(o.timeout)
	for {
		st, err := d.Stats(context.Background(), cfg.ID)
		if err != nil {
			t.Fatalf("Stats: %v", err)
		}
		if st.Time.IsZero() {
			t.Fatal("Stats.Time is zero")
		}
		if st.CPUUsageNanos > 0 && st.MemoryRSSBytes > 0 && st.Pids >= 1 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("Stats = %+v; want CPU time, memory and at least one pid", st)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitGone fails the test unless every pid is gone within a few seconds.
func waitGone(t *testing.T, pids ...int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for _, pid := range pids {
		for !ProcessGone(pid) {
			if time.Now().After(deadline) {
				t.Errorf("process %d still runs", pid)
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

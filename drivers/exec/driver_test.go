package exec

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	osexec "os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/corral-dev/corral/drivers/exec/cgroup"
	"github.com/corral-dev/corral/drivers/exec/taskrun"
	"github.com/corral-dev/corral/plugins/drivers"
	"github.com/corral-dev/corral/plugins/drivers/testutils"
	"github.com/corral-dev/corral/structs"
)

const testTimeout = 10 * time.Second

// newTestDriver returns a driver that logs to stderr (shown by go test only
// for failing packages or with -v).
func newTestDriver(t *testing.T) *Driver {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the exec driver isolates kernels, which needs root")
	}
	return New(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
}

// slogWarn returns a logger of warnings to stderr.
func slogWarn() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

func TestConformance(t *testing.T) {
	testutils.RunConformance(t, func(t *testing.T) drivers.Driver { return newTestDriver(t) }, testutils.WithHostPids(hostPids))
}

// TestRecoveryConformance runs the recovery scenarios; the restart is a new
// driver, as a restarted agent has, while the tasks run on under their
// shims.
func TestRecoveryConformance(t *testing.T) {
	testutils.RunRecoveryConformance(t, func(t *testing.T) drivers.Driver { return newTestDriver(t) },
		func(t *testing.T, _ drivers.Driver) drivers.Driver { return newTestDriver(t) }, 10*time.Second)
}

// hostPids turns pids that an isolated task printed, which are its pid
// namespace's, into the host's (see testutils.WithHostPids).
func hostPids(t testing.TB, d drivers.Driver, taskID string, pids []int) []int {
	t.Helper()
	tk, err := d.(*Driver).get(taskID)
	if err != nil {
		t.Fatal(err)
	}
	if tk.iso == nil {
		return pids
	}
	ns, err := os.Readlink("/proc/" + itoa(tk.pid) + "/ns/pid")
	if err != nil {
		t.Fatal(err)
	}
	return testutils.HostPids(t, taskID, pids, func(procDir string) bool {
		l, err := os.Readlink(procDir + "/ns/pid")
		return err == nil && l == ns
	})
}

func TestCapabilitiesAndFingerprint(t *testing.T) {
	d := newTestDriver(t)
	c := d.Capabilities()
	if !c.Exec || !c.Recover || !c.HostNetworking {
		t.Errorf("Capabilities = %+v, want exec, recover and host networking", c)
	}
	if want := d.cgroups != nil && d.cgroups.CanLimitCPU() && d.cgroups.CanLimitMemory(); c.ResourceLimits != want {
		t.Errorf("ResourceLimits = %v, want %v", c.ResourceLimits, want)
	}
	fp, err := d.Fingerprint(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if fp.Health != drivers.HealthHealthy || fp.Attributes["driver.exec.kernel_version"] == "" {
		t.Errorf("Fingerprint = %+v, want healthy with a kernel version", fp)
	}
	if d.Name() != "exec" {
		t.Errorf("Name = %q", d.Name())
	}
}

func TestWorkDirEnvAndLogDirs(t *testing.T) {
	d := newTestDriver(t)
	cfg := testutils.TaskConfig(t, "/bin/sh", "-c", `pwd; echo "$HOME"; echo "$PATH"`)
	cfg.WorkDir = filepath.Join(cfg.TaskDir, "not", "yet", "there")
	cfg.StdoutPath = filepath.Join(cfg.TaskDir, "deep", "logs", "out.log")
	testutils.StartTask(t, d, cfg)
	if res := testutils.WaitResult(t, d, cfg.ID, testTimeout); !res.Successful() {
		t.Fatalf("result = %+v", res)
	}
	want := cfg.WorkDir + "\n" + cfg.WorkDir + "\n" + basePath + "\n"
	if got := testutils.ReadLog(t, cfg.StdoutPath); got != want {
		t.Errorf("stdout = %q, want %q", got, want)
	}
}

func TestTaskEnvOverridesBase(t *testing.T) {
	d := newTestDriver(t)
	cfg := testutils.TaskConfig(t, "/bin/sh", "-c", `echo "$HOME $PATH"`)
	cfg.Env = map[string]string{"HOME": "/nowhere", "PATH": "/bin"}
	testutils.StartTask(t, d, cfg)
	testutils.WaitResult(t, d, cfg.ID, testTimeout)
	if got := testutils.ReadLog(t, cfg.StdoutPath); got != "/nowhere /bin\n" {
		t.Errorf("stdout = %q", got)
	}
}

func TestLogsAreAppended(t *testing.T) {
	d := newTestDriver(t)
	first := testutils.TaskConfig(t, "echo", "one")
	testutils.StartTask(t, d, first)
	testutils.WaitResult(t, d, first.ID, testTimeout)
	second := testutils.TaskConfig(t, "echo", "two")
	second.StdoutPath = first.StdoutPath
	testutils.StartTask(t, d, second)
	testutils.WaitResult(t, d, second.ID, testTimeout)
	if got := testutils.ReadLog(t, first.StdoutPath); got != "one\ntwo\n" {
		t.Errorf("stdout = %q, want both runs", got)
	}
}

func TestCommandResolution(t *testing.T) {
	d := newTestDriver(t)
	tests := []struct {
		name    string
		command []string
		script  bool // write ./script.sh into the working directory first
		wantErr error
	}{
		{"found in PATH", []string{"echo", "hi"}, false, nil},
		{"absolute path", []string{"/bin/echo", "hi"}, false, nil},
		{"relative to workdir", []string{"./script.sh"}, true, nil},
		{"not in PATH", []string{"corral-no-such-program"}, false, drivers.ErrInvalidConfig},
		{"missing absolute", []string{"/nonexistent/prog"}, false, drivers.ErrInvalidConfig},
		{"directory", []string{"/bin"}, false, drivers.ErrInvalidConfig},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testutils.TaskConfig(t, tc.command...)
			if tc.script {
				if err := os.MkdirAll(cfg.WorkDir, 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(cfg.WorkDir, "script.sh"), []byte("#!/bin/sh\necho hi\n"), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			_, err := d.Start(context.Background(), cfg)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("Start: err = %v, want %v", err, tc.wantErr)
				}
				if _, err := d.Inspect(context.Background(), cfg.ID); !errors.Is(err, drivers.ErrTaskNotFound) {
					t.Errorf("failed Start left the task behind: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Start: %v", err)
			}
			t.Cleanup(func() { _ = d.Destroy(context.Background(), cfg.ID, true) })
			testutils.WaitResult(t, d, cfg.ID, testTimeout)
			if got := testutils.ReadLog(t, cfg.StdoutPath); got != "hi\n" {
				t.Errorf("stdout = %q", got)
			}
		})
	}
}

func TestInvalidWorkDir(t *testing.T) {
	d := newTestDriver(t)
	for _, dir := range []string{"", "relative/dir"} {
		cfg := testutils.TaskConfig(t, "true")
		cfg.WorkDir = dir
		if _, err := d.Start(context.Background(), cfg); !errors.Is(err, drivers.ErrInvalidConfig) {
			t.Errorf("WorkDir %q: err = %v, want ErrInvalidConfig", dir, err)
		}
	}
}

func TestStatsOfExitedTask(t *testing.T) {
	d := newTestDriver(t)
	cfg := testutils.TaskConfig(t, "true")
	testutils.StartTask(t, d, cfg)
	testutils.WaitResult(t, d, cfg.ID, testTimeout)
	if _, err := d.Stats(context.Background(), cfg.ID); !errors.Is(err, drivers.ErrTaskNotRunning) {
		t.Errorf("Stats: err = %v, want ErrTaskNotRunning", err)
	}
}

func TestStopBadSignal(t *testing.T) {
	d := newTestDriver(t)
	cfg := testutils.TaskConfig(t, "sleep", "1000")
	testutils.StartTask(t, d, cfg)
	if err := d.Stop(context.Background(), cfg.ID, time.Second, "SIGBOGUS"); !errors.Is(err, drivers.ErrInvalidConfig) {
		t.Errorf("Stop: err = %v, want ErrInvalidConfig", err)
	}
	if err := d.Stop(context.Background(), cfg.ID, time.Second, "int"); err != nil {
		t.Fatalf("Stop(int): %v", err)
	}
	if res := testutils.WaitResult(t, d, cfg.ID, testTimeout); res.Signal != 2 {
		t.Errorf("result = %+v, want SIGINT", res)
	}
}

// taskOf returns the driver's record of a task.
func taskOf(t *testing.T, d *Driver, id string) *task {
	t.Helper()
	tk, err := d.get(id)
	if err != nil {
		t.Fatal(err)
	}
	return tk
}

// requireCgroups skips the test when this host gives the driver no cgroups.
func requireCgroups(t *testing.T, d *Driver) {
	t.Helper()
	if d.cgroups == nil {
		t.Skip("no usable cgroups here: " + d.noLimits)
	}
}

// cgroupLine returns the line of /proc/<pid>/cgroup for controller ("" for
// the v2 hierarchy).
func cgroupLine(t *testing.T, pid int, controller string) string {
	t.Helper()
	b, err := os.ReadFile("/proc/" + itoa(pid) + "/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.SplitN(line, ":", 3)
		if len(f) != 3 {
			continue
		}
		for _, c := range strings.Split(f[1], ",") {
			if c == controller {
				return line
			}
		}
	}
	t.Fatalf("/proc/%d/cgroup has no %q line:\n%s", pid, controller, b)
	return ""
}

func readTrim(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func TestCgroupLimits(t *testing.T) {
	d := newTestDriver(t)
	requireCgroups(t, d)
	cfg := testutils.TaskConfig(t, "sleep", "1000")
	cfg.Resources = structs.Slots{structs.SlotCPU: 1500, structs.SlotMem: structs.Whole(96 << 20)}
	testutils.StartTask(t, d, cfg)
	tk := taskOf(t, d, cfg.ID)
	g := tk.group
	if g == nil {
		t.Fatal("task has no cgroups")
	}
	suffix := "/" + CgroupParent + "/" + cfg.ID
	switch g.Version {
	case cgroup.V1:
		if d.cgroups.CanLimitCPU() {
			dir := g.Dirs[cgroup.CPU]
			if got := readTrim(t, filepath.Join(dir, "cpu.cfs_period_us")); got != "100000" {
				t.Errorf("cfs_period_us = %s", got)
			}
			if got := readTrim(t, filepath.Join(dir, "cpu.cfs_quota_us")); got != "150000" {
				t.Errorf("cfs_quota_us = %s, want 150000 for 1.5 cores", got)
			}
			if line := cgroupLine(t, tk.pid, "cpu"); !strings.HasSuffix(line, suffix) {
				t.Errorf("process not in its cpu cgroup: %s", line)
			}
		}
		if d.cgroups.CanLimitMemory() {
			dir := g.Dirs[cgroup.Memory]
			if got := readTrim(t, filepath.Join(dir, "memory.limit_in_bytes")); got != itoa(96<<20) {
				t.Errorf("memory.limit_in_bytes = %s", got)
			}
			if line := cgroupLine(t, tk.pid, "memory"); !strings.HasSuffix(line, suffix) {
				t.Errorf("process not in its memory cgroup: %s", line)
			}
		}
	case cgroup.V2:
		dir := g.UnifiedDir()
		if d.cgroups.CanLimitCPU() {
			if got := readTrim(t, filepath.Join(dir, "cpu.max")); got != "150000 100000" {
				t.Errorf("cpu.max = %s", got)
			}
		}
		if d.cgroups.CanLimitMemory() {
			if got := readTrim(t, filepath.Join(dir, "memory.max")); got != itoa(96<<20) {
				t.Errorf("memory.max = %s", got)
			}
		}
		if line := cgroupLine(t, tk.pid, ""); !strings.HasSuffix(line, suffix) {
			t.Errorf("process not in its cgroup: %s", line)
		}
	}
	// Exec runs inside the same cgroups.
	var out testutils.SafeBuffer
	if _, err := d.Exec(context.Background(), cfg.ID, &drivers.ExecOptions{
		Command: []string{"cat", "/proc/self/cgroup"}, Stdout: &out,
	}); err != nil {
		t.Fatalf("Exec: %v", err)
	}
	if n := strings.Count(out.String(), suffix+"\n"); n != len(g.ProcsFiles()) {
		t.Errorf("exec'd process is in %d of %d task cgroups:\n%s", n, len(g.ProcsFiles()), out.String())
	}
	if err := d.Destroy(context.Background(), cfg.ID, true); err != nil {
		t.Fatalf("Destroy: %v", err)
	}
	for _, dir := range g.Dirs {
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("cgroup %s left after Destroy (%v)", dir, err)
		}
	}
}

func TestCgroupNoLimits(t *testing.T) {
	d := newTestDriver(t)
	requireCgroups(t, d)
	cfg := testutils.TaskConfig(t, "sleep", "1000")
	testutils.StartTask(t, d, cfg)
	g := taskOf(t, d, cfg.ID).group
	if g.Version == cgroup.V1 && d.cgroups.CanLimitCPU() {
		if got := readTrim(t, filepath.Join(g.Dirs[cgroup.CPU], "cpu.cfs_quota_us")); got != "-1" {
			t.Errorf("cfs_quota_us = %s, want -1 (unlimited)", got)
		}
	}
}

func TestCgroupOOMKill(t *testing.T) {
	d := newTestDriver(t)
	requireCgroups(t, d)
	if !d.cgroups.CanLimitMemory() {
		t.Skip("no memory controller")
	}
	// tail buffers /dev/zero looking for a newline that never comes.
	cfg := testutils.TaskConfig(t, "tail", "/dev/zero")
	cfg.Resources = structs.Slots{structs.SlotMem: structs.Whole(32 << 20)}
	testutils.StartTask(t, d, cfg)
	res := testutils.WaitResult(t, d, cfg.ID, 30*time.Second)
	if res.Signal != 9 || !res.OOMKilled {
		t.Errorf("result = %+v, want SIGKILL by the OOM killer", res)
	}
}

func TestStatsFromProc(t *testing.T) {
	d := newTestDriver(t)
	d.cgroups = nil // as on a node without cgroups
	cfg := testutils.TaskConfig(t, "/bin/sh", "-c", `sleep 1000 & i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done; echo ready; wait`)
	testutils.StartTask(t, d, cfg)
	testutils.WaitForLog(t, cfg.StdoutPath, "ready", testTimeout)
	st, err := d.Stats(context.Background(), cfg.ID)
	if err != nil {
		t.Fatal(err)
	}
	// The shell, its sleep and the task's init.
	if st.Pids != 3 || st.CPUUsageNanos == 0 || st.MemoryRSSBytes == 0 {
		t.Errorf("Stats = %+v, want 3 pids, CPU time and memory", st)
	}
	if taskOf(t, d, cfg.ID).group != nil {
		t.Error("task has cgroups although the driver has none")
	}
}

func TestRunAsUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	d := newTestDriver(t)
	cfg := testutils.TaskConfig(t, "/bin/sh", "-c", "id -u; touch file && echo wrote; exec sleep 1000")
	cfg.User = "nobody"
	// t.TempDir directories are private to root; let nobody reach WorkDir.
	for _, p := range []string{cfg.TaskDir, filepath.Dir(cfg.TaskDir)} {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	testutils.StartTask(t, d, cfg)
	out := testutils.WaitForLog(t, cfg.StdoutPath, "wrote", testTimeout)
	if !strings.HasPrefix(out, "65534\n") {
		t.Errorf("stdout = %q, want uid 65534 of nobody", out)
	}
	var buf testutils.SafeBuffer
	if _, err := d.Exec(context.Background(), cfg.ID, &drivers.ExecOptions{Command: []string{"id", "-u"}, Stdout: &buf}); err != nil {
		t.Fatal(err)
	}
	if buf.String() != "65534\n" {
		t.Errorf("exec ran as uid %q", buf.String())
	}
	cfg2 := testutils.TaskConfig(t, "true")
	cfg2.User = "corral-no-such-user"
	if _, err := d.Start(context.Background(), cfg2); !errors.Is(err, drivers.ErrInvalidConfig) {
		t.Errorf("unknown user: err = %v, want ErrInvalidConfig", err)
	}
}

func TestRecover(t *testing.T) {
	first := newTestDriver(t)
	cfg := testutils.TaskConfig(t, "/bin/sh", "-c", "sleep 1000 & echo $$ $!; wait")
	cfg.Env = map[string]string{"FOO": "kept"}
	h := testutils.StartTask(t, first, cfg)
	pids := hostPids(t, first, cfg.ID, testutils.WaitForPids(t, cfg.StdoutPath, 2, testTimeout))

	// Persist and reload the handle as the agent would.
	b, err := json.Marshal(h)
	if err != nil {
		t.Fatal(err)
	}
	var loaded drivers.TaskHandle
	if err := json.Unmarshal(b, &loaded); err != nil {
		t.Fatal(err)
	}
	second := newTestDriver(t)
	ctx := context.Background()
	if err := second.Recover(ctx, &loaded); err != nil {
		t.Fatalf("Recover: %v", err)
	}
	if err := second.Recover(ctx, &loaded); err != nil {
		t.Errorf("second Recover: %v", err)
	}
	st, err := second.Inspect(ctx, cfg.ID)
	if err != nil || st.State != drivers.TaskStateRunning || !st.StartedAt.Equal(h.StartedAt) {
		t.Fatalf("Inspect = %+v, %v; want running since %v", st, err, h.StartedAt)
	}
	if _, err := second.Stats(ctx, cfg.ID); err != nil {
		t.Errorf("Stats: %v", err)
	}
	var out testutils.SafeBuffer
	code, err := second.Exec(ctx, cfg.ID, &drivers.ExecOptions{Command: []string{"/bin/sh", "-c", "echo $FOO"}, Stdout: &out})
	if err != nil || code != 0 || out.String() != "kept\n" {
		t.Errorf("Exec = %d, %v, %q", code, err, out.String())
	}
	if err := second.Stop(ctx, cfg.ID, time.Second, "SIGKILL"); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	// Both drivers learn the real exit: the first from its child, the
	// shim, the second from the shim's exit.json.
	for i, d := range []*Driver{first, second} {
		if res := testutils.WaitResult(t, d, cfg.ID, testTimeout); res.Signal != 9 || res.Err != nil {
			t.Errorf("driver %d: result = %+v, want SIGKILL", i+1, res)
		}
	}
	if err := second.Destroy(ctx, cfg.ID, true); err != nil {
		t.Fatalf("Destroy: %v", err)
	}
	for _, pid := range pids {
		if !testutils.ProcessGone(pid) {
			t.Errorf("process %d survived Destroy of the recovered task", pid)
		}
	}
}

func TestRecoverInvalid(t *testing.T) {
	d := newTestDriver(t)
	cfg := testutils.TaskConfig(t, "true")
	tests := []struct {
		name string
		h    *drivers.TaskHandle
	}{
		{"nil handle", nil},
		{"no config", &drivers.TaskHandle{Driver: "exec", DriverState: []byte(`{"pid":1,"pgid":1}`)}},
		{"other driver", &drivers.TaskHandle{Driver: "runc", Config: cfg, DriverState: []byte(`{"pid":1,"pgid":1}`)}},
		{"bad state", &drivers.TaskHandle{Driver: "exec", Config: cfg, DriverState: []byte(`{`)}},
		{"no pid", &drivers.TaskHandle{Driver: "exec", Config: cfg, DriverState: []byte(`{}`)}},
	}
	for _, tc := range tests {
		if err := d.Recover(context.Background(), tc.h); !errors.Is(err, drivers.ErrInvalidConfig) {
			t.Errorf("%s: err = %v, want ErrInvalidConfig", tc.name, err)
		}
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

func TestConformanceWithoutCgroups(t *testing.T) {
	testutils.RunConformance(t, func(t *testing.T) drivers.Driver {
		d := newTestDriver(t)
		d.cgroups, d.noLimits = nil, "disabled by the test"
		return d
	}, testutils.WithHostPids(hostPids))
}

func TestExecStdin(t *testing.T) {
	d := newTestDriver(t)
	cfg := testutils.TaskConfig(t, "sleep", "1000")
	testutils.StartTask(t, d, cfg)
	f, err := os.CreateTemp(t.TempDir(), "stdin")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("from file\n"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Seek(0, 0); err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tests := []struct {
		name  string
		stdin io.Reader
		want  string
	}{
		// No stdin reads end of file, not a closed descriptor.
		{"none", nil, "rc=1 line=\n"},
		{"reader", strings.NewReader("hello\n"), "rc=0 line=hello\n"},
		{"file", f, "rc=0 line=from file\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut testutils.SafeBuffer
			code, err := d.Exec(context.Background(), cfg.ID, &drivers.ExecOptions{
				Command: []string{"/bin/sh", "-c", `read line; echo "rc=$? line=$line"`},
				Stdin:   tc.stdin, Stdout: &out, Stderr: &errOut,
			})
			if err != nil || code != 0 {
				t.Fatalf("Exec = %d, %v (stderr %q)", code, err, errOut.String())
			}
			if out.String() != tc.want || errOut.String() != "" {
				t.Errorf("stdout %q, stderr %q; want %q", out.String(), errOut.String(), tc.want)
			}
		})
	}
}

func TestExecCommandNotFound(t *testing.T) {
	d := newTestDriver(t)
	cfg := testutils.TaskConfig(t, "sleep", "1000")
	testutils.StartTask(t, d, cfg)
	_, err := d.Exec(context.Background(), cfg.ID, &drivers.ExecOptions{Command: []string{"corral-no-such-program"}})
	if !errors.Is(err, drivers.ErrInvalidConfig) {
		t.Errorf("err = %v, want ErrInvalidConfig", err)
	}
}

// TestStartCmdCgroupV2 checks the cgroup v2 start path (CLONE_INTO_CGROUP)
// on whatever cgroup2 mount this host has, with or without controllers.
func TestStartCmdCgroupV2(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	mount := cgroup2Mount(t)
	id := testutils.TaskID(t)
	dir := filepath.Join(mount.Point, CgroupParent+"-test", id)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Skipf("cgroup2 at %s is not writable: %v", mount.Point, err)
	}
	t.Cleanup(func() { _ = os.Remove(filepath.Dir(dir)) })
	g := &cgroup.Group{Version: cgroup.V2, Dirs: map[string]string{cgroup.Unified: dir}}
	t.Cleanup(func() { _ = g.Destroy(context.Background()) })

	cmd := osexec.Command("/bin/sleep", "1000")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := taskrun.StartCmd(context.Background(), cmd, g); err != nil {
		t.Fatalf("StartCmd: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	rel := strings.TrimPrefix(dir, mount.Point)
	if line := cgroupLine(t, cmd.Process.Pid, ""); line != "0::"+rel {
		t.Errorf("/proc/%d/cgroup v2 line = %q, want 0::%s", cmd.Process.Pid, line, rel)
	}
	if pids, err := g.Pids(); err != nil || len(pids) != 1 || pids[0] != cmd.Process.Pid {
		t.Errorf("Pids = %v, %v", pids, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if err := g.Destroy(ctx); err != nil {
		t.Fatalf("Destroy: %v", err)
	}
	<-done
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("cgroup dir left: %v", err)
	}
}

// TestJoinFailure checks that Start fails, and leaves nothing behind, when
// the wrapper cannot join the cgroups.
func TestJoinFailure(t *testing.T) {
	dir := t.TempDir()
	g := &cgroup.Group{Version: cgroup.V1, Dirs: map[string]string{cgroup.Memory: filepath.Join(dir, "missing")}}
	errLog, err := os.Create(filepath.Join(dir, "stderr"))
	if err != nil {
		t.Fatal(err)
	}
	defer errLog.Close()
	cmd := osexec.Command("/bin/sleep", "1000")
	cmd.Stderr = errLog
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	err = taskrun.StartCmd(context.Background(), cmd, g)
	if err == nil {
		t.Fatal("StartCmd succeeded without its cgroup")
	}
	if cmd.ProcessState == nil {
		t.Error("the failed wrapper was not reaped")
	}
	if b, _ := os.ReadFile(errLog.Name()); !strings.Contains(string(b), "missing") {
		t.Errorf("stderr %q does not say why", b)
	}
}

// cgroup2Mount is this host's cgroup2 mount; the test is skipped without one.
func cgroup2Mount(t *testing.T) *cgroup.Mount {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	mounts, err := cgroup.ParseMountinfo(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	for i := range mounts {
		if mounts[i].V2 {
			return &mounts[i]
		}
	}
	t.Skip("no cgroup2 mount")
	return nil
}

func TestExecTTY(t *testing.T) {
	d := newTestDriver(t)
	cfg := testutils.TaskConfig(t, "sleep", "1000")
	testutils.StartTask(t, d, cfg)
	testutils.RunExecTTY(t, d, cfg.ID)
}

// TestHostExecTTY is TestExecTTY for the host driver, whose tasks run in
// the host's namespaces without the exec init.
func TestHostExecTTY(t *testing.T) {
	d := NewHost(slogWarn())
	cfg := testutils.TaskConfig(t, "sleep", "1000")
	testutils.StartTask(t, d, cfg)
	testutils.RunExecTTY(t, d, cfg.ID)
}

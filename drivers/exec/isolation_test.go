package exec

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/corral-dev/corral/drivers/exec/cgroup"
	"github.com/corral-dev/corral/drivers/exec/taskrun"
	"github.com/corral-dev/corral/plugins/drivers"
	"github.com/corral-dev/corral/plugins/drivers/testutils"
	"github.com/corral-dev/corral/structs"
)

// requireRoot skips tests of the isolation, which needs root.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("isolation needs root")
	}
}

// runToEnd starts cfg on d, waits for its result and returns its stdout
// and stderr.
func runToEnd(t *testing.T, d *Driver, cfg *drivers.TaskConfig) (res *drivers.ExitResult, stdout, stderr string) {
	t.Helper()
	testutils.StartTask(t, d, cfg)
	res = testutils.WaitResult(t, d, cfg.ID, 30*time.Second)
	return res, testutils.ReadLog(t, cfg.StdoutPath), testutils.ReadLog(t, cfg.StderrPath)
}

// execOut runs command in task id and returns its exit code and output.
func execOut(t *testing.T, d *Driver, id string, command ...string) (int, string) {
	t.Helper()
	var out testutils.SafeBuffer
	code, err := d.Exec(context.Background(), id, &drivers.ExecOptions{Command: command, Stdout: &out, Stderr: &out})
	if err != nil {
		t.Fatalf("Exec(%v): %v", command, err)
	}
	return code, out.String()
}

// agentLayout makes a directory outside /tmp and /var/tmp (which tasks do
// not share with the host anyway) laid out like an agent's data dir, private to
// root, and a task config whose task dir lies in it.
func agentLayout(t *testing.T, command ...string) (dataDir string, cfg *drivers.TaskConfig) {
	t.Helper()
	dataDir, err := os.MkdirTemp("/var/lib", "corral-exec-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dataDir) })
	cfg = testutils.TaskConfig(t, command...)
	cfg.TaskDir = filepath.Join(dataDir, "agent", "kernels", cfg.ID)
	cfg.WorkDir = filepath.Join(cfg.TaskDir, "work")
	cfg.StdoutPath = filepath.Join(cfg.TaskDir, "stdout.log")
	cfg.StderrPath = filepath.Join(cfg.TaskDir, "stderr.log")
	if err := os.MkdirAll(cfg.WorkDir, 0o700); err != nil {
		t.Fatal(err)
	}
	// A server dir with a token, readable by anyone but for the hiding.
	if err := os.MkdirAll(filepath.Join(dataDir, "server", "raft"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dataDir, "server", "token"), []byte("secret\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return dataDir, cfg
}

func TestIsolatedUser(t *testing.T) {
	requireRoot(t)
	d := newTestDriver(t)
	cfg := testutils.TaskConfig(t, "/bin/sh", "-c", "id -u; id -g; id -G; touch file && echo wrote; exec sleep 1000")
	testutils.StartTask(t, d, cfg)
	out := testutils.WaitForLog(t, cfg.StdoutPath, "wrote", testTimeout)
	if out != "65534\n65534\n65534\nwrote\n" {
		t.Errorf("stdout = %q, want uid, gid and only group 65534 (nobody), and a writable working directory", out)
	}
	if code, out := execOut(t, d, cfg.ID, "/bin/sh", "-c", "id -u; id -G; pwd"); code != 0 || out != "65534\n65534\n"+cfg.WorkDir+"\n" {
		t.Errorf("exec = %d, %q; want nobody in the working directory", code, out)
	}
	if fi, err := os.Stat(filepath.Join(cfg.WorkDir, "file")); err != nil || fi.Sys() == nil {
		t.Errorf("file the task wrote: %v", err)
	}
}

func TestIsolatedUserIsNeverRoot(t *testing.T) {
	requireRoot(t)
	for _, opt := range []Option{WithUser("root"), WithUser("0"), WithUserMapper(func(*drivers.TaskConfig) (string, error) { return "root", nil })} {
		d := New(nil, opt)
		cfg := testutils.TaskConfig(t, "true")
		if _, err := d.Start(context.Background(), cfg); !errors.Is(err, drivers.ErrInvalidConfig) || !strings.Contains(err.Error(), "never runs kernels as root") {
			t.Errorf("Start as root: err = %v, want ErrInvalidConfig", err)
		}
	}
	cfg := testutils.TaskConfig(t, "true")
	cfg.User = "root"
	if _, err := newTestDriver(t).Start(context.Background(), cfg); !errors.Is(err, drivers.ErrInvalidConfig) {
		t.Errorf("Start with User root: err = %v, want ErrInvalidConfig", err)
	}
}

func TestUserMapper(t *testing.T) {
	requireRoot(t)
	d := New(nil, WithUser("corral-no-such-user"), WithUserMapper(func(cfg *drivers.TaskConfig) (string, error) {
		if cfg.SessionID == "" {
			return "", errors.New("no session")
		}
		return "daemon", nil // uid 1 on Debian
	}))
	cfg := testutils.TaskConfig(t, "id", "-u")
	res, out, _ := runToEnd(t, d, cfg)
	if !res.Successful() || out != "1\n" {
		t.Errorf("result %+v, stdout %q; want uid 1 of daemon", res, out)
	}
}

func TestRootFilesUnreadable(t *testing.T) {
	requireRoot(t)
	home, err := os.MkdirTemp("/var/lib", "corral-home-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(home) })
	token := filepath.Join(home, ".corral", "token")
	if err := os.MkdirAll(filepath.Dir(token), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(token, []byte("admin-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d := newTestDriver(t)
	cfg := testutils.TaskConfig(t, "/bin/sh", "-c", `
cat `+token+` && echo READ-TOKEN
cat /root/.corral/token && echo READ-ROOT-TOKEN
ls /root && echo LISTED-ROOT
cat /etc/shadow && echo READ-SHADOW
echo done`)
	res, out, errOut := runToEnd(t, d, cfg)
	if !res.Successful() || out != "done\n" {
		t.Errorf("result %+v, stdout %q; want every read to fail", res, out)
	}
	if !strings.Contains(errOut, token+": Permission denied") {
		t.Errorf("stderr %q does not show the token refused", errOut)
	}
}

func TestAgentFilesHidden(t *testing.T) {
	requireRoot(t)
	dataDir, cfg := agentLayout(t, "/bin/sh", "-c", "")
	d := New(slogWarn(), WithHiddenPaths(dataDir))
	// Another kernel's files, open to anyone but for the hiding.
	otherDir := filepath.Join(filepath.Dir(cfg.TaskDir), "other")
	if err := os.MkdirAll(otherDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(otherDir, "stdout.log"), []byte("other kernel\n"), 0o666); err != nil {
		t.Fatal(err)
	}
	agentDir := filepath.Join(dataDir, "agent")
	cfg.Command[2] = `
ls ` + dataDir + ` && echo LISTED-DATA
ls ` + agentDir + ` && echo LISTED-AGENT
ls ` + filepath.Dir(cfg.TaskDir) + ` && echo LISTED-KERNELS
cat ` + cfg.StdoutPath + ` && echo READ-OWN-LOG
cat ` + filepath.Join(otherDir, "stdout.log") + ` && echo READ-OTHER-LOG
cat ` + filepath.Join(dataDir, "server", "token") + ` && echo READ-SERVER-TOKEN
ls ` + filepath.Join(cfg.TaskDir, shimSubdir) + ` && echo LISTED-SHIM
pwd; touch mine && echo wrote`
	res, out, errOut := runToEnd(t, d, cfg)
	if want := cfg.WorkDir + "\nwrote\n"; !res.Successful() || out != want {
		t.Errorf("result %+v, stdout %q; want only %q (stderr %q)", res, out, want, errOut)
	}
	if _, err := os.Stat(filepath.Join(cfg.WorkDir, "mine")); err != nil {
		t.Errorf("the task's file is not in its working directory: %v", err)
	}
	// On the host, the data dir stays private to root.
	for _, p := range []string{dataDir, agentDir, filepath.Dir(cfg.TaskDir)} {
		if fi, err := os.Stat(p); err != nil || fi.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s: %v, %v; want private to root", p, fi.Mode(), err)
		}
	}
}

func TestOwnProcAndNamespaces(t *testing.T) {
	requireRoot(t)
	d := newTestDriver(t)
	cfg := testutils.TaskConfig(t, "/bin/sh", "-c", "ls /proc | grep -c '^[0-9]'; exec sleep 1000")
	testutils.StartTask(t, d, cfg)
	out := testutils.WaitForLog(t, cfg.StdoutPath, "\n", testTimeout)
	// The init, the shell, ls and grep.
	if n, err := strconv.Atoi(strings.TrimSpace(out)); err != nil || n > 4 {
		t.Errorf("the task sees %q processes in /proc, want at most 4", out)
	}
	// The init, sleep, and the exec'd shell with ls and grep (which may
	// have ended).
	if code, out := execOut(t, d, cfg.ID, "/bin/sh", "-c", "ls /proc | grep -c '^[0-9]'"); code != 0 || !slices.Contains([]string{"3", "4", "5"}, strings.TrimSpace(out)) {
		t.Errorf("exec sees %q processes in /proc, want at most 5 (init, sleep, sh, ls, grep)", out)
	}
	tk := taskOf(t, d, cfg.ID)
	for ns, same := range map[string]bool{"pid": false, "mnt": false, "ipc": false, "net": true} {
		mine, err1 := os.Readlink("/proc/self/ns/" + ns)
		theirs, err2 := os.Readlink("/proc/" + itoa(tk.pid) + "/ns/" + ns)
		if err := errors.Join(err1, err2); err != nil {
			t.Fatal(err)
		}
		if (mine == theirs) != same {
			t.Errorf("%s namespace: host %s, task %s; want same=%v", ns, mine, theirs, same)
		}
	}
}

func TestPrivateTmp(t *testing.T) {
	requireRoot(t)
	d := newTestDriver(t)
	id := testutils.TaskID(t)
	files := []string{"/tmp/corral-" + id, "/var/tmp/corral-" + id, "/dev/shm/corral-" + id}
	for _, f := range files {
		t.Cleanup(func() { _ = os.Remove(f) })
	}
	a := testutils.TaskConfig(t, "/bin/sh", "-c", "for f in "+strings.Join(files, " ")+"; do echo secret > $f || exit 1; done; echo written; exec sleep 1000")
	testutils.StartTask(t, d, a)
	testutils.WaitForLog(t, a.StdoutPath, "written", testTimeout)
	for _, f := range files {
		if _, err := os.Stat(f); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the task's %s is the host's: %v", f, err)
		}
	}
	if code, out := execOut(t, d, a.ID, "cat", files[0]); code != 0 || out != "secret\n" {
		t.Errorf("exec in the same task: %d, %q; want the file", code, out)
	}
	b := testutils.TaskConfig(t, "/bin/sh", "-c", "cat "+strings.Join(files, " ")+" || echo unseen")
	if res, out, _ := runToEnd(t, d, b); !res.Successful() || out != "unseen\n" {
		t.Errorf("another task: %+v, %q; want the files unseen", res, out)
	}
}

func TestPidsLimit(t *testing.T) {
	requireRoot(t)
	d := newTestDriver(t)
	requireCgroups(t, d)
	if !d.cgroups.CanLimitPids() {
		t.Skip("no pids controller")
	}
	// A fork bomb that stays polite: 5000 sleeps against a limit of 64.
	cfg := testutils.TaskConfig(t, "/bin/sh", "-c", `i=0; while [ $i -lt 5000 ]; do sleep 60 & i=$((i+1)); done; echo started $i`)
	cfg.Resources = structs.Slots{pidsSlot: structs.Whole(64)}
	testutils.StartTask(t, d, cfg)
	g := taskOf(t, d, cfg.ID).group
	res := testutils.WaitResult(t, d, cfg.ID, 60*time.Second)
	out, errOut := testutils.ReadLog(t, cfg.StdoutPath), testutils.ReadLog(t, cfg.StderrPath)
	if res.Successful() || strings.Contains(out, "started") || !strings.Contains(strings.ToLower(errOut), "fork") {
		t.Errorf("result %+v, stdout %q, stderr %q; want fork failures", res, out, errOut)
	}
	if g.Version == cgroup.V1 {
		if got := readTrim(t, filepath.Join(g.Dirs[cgroup.Pids], "pids.max")); got != "64" {
			t.Errorf("pids.max = %s", got)
		}
		if got := readTrim(t, filepath.Join(g.Dirs[cgroup.Pids], "pids.events")); got == "max 0" {
			t.Errorf("pids.events = %q, want forks refused", got)
		}
	}
	// The host still forks, and a task without a pids slot gets the default.
	other := testutils.TaskConfig(t, "true")
	if res, _, _ := runToEnd(t, d, other); !res.Successful() {
		t.Errorf("a task after the fork bomb: %+v", res)
	}
	if g := taskOf(t, d, other.ID).group; g.Version == cgroup.V1 {
		if got := readTrim(t, filepath.Join(g.Dirs[cgroup.Pids], "pids.max")); got != strconv.Itoa(DefaultPidsLimit) {
			t.Errorf("default pids.max = %s, want %d", got, DefaultPidsLimit)
		}
	}
}

func TestHostDriver(t *testing.T) {
	requireRoot(t)
	d := NewHost(slogWarn())
	if d.Name() != "host" {
		t.Errorf("Name = %q", d.Name())
	}
	name := "/tmp/corral-host-" + testutils.TaskID(t)
	t.Cleanup(func() { _ = os.Remove(name) })
	cfg := testutils.TaskConfig(t, "/bin/sh", "-c", "id -u; touch "+name)
	h := testutils.StartTask(t, d, cfg)
	if h.Driver != "host" {
		t.Errorf("handle of driver %q", h.Driver)
	}
	if res := testutils.WaitResult(t, d, cfg.ID, testTimeout); !res.Successful() {
		t.Errorf("result %+v", res)
	}
	if out := testutils.ReadLog(t, cfg.StdoutPath); out != "0\n" {
		t.Errorf("stdout %q, want uid 0", out)
	}
	if _, err := os.Stat(name); err != nil {
		t.Errorf("host task has no host /tmp: %v", err)
	}
	// A host handle is not the exec driver's, and the other way round.
	if err := New(nil).Recover(context.Background(), h); !errors.Is(err, drivers.ErrInvalidConfig) {
		t.Errorf("exec driver recovered a host task: %v", err)
	}
}

func TestHostConformance(t *testing.T) {
	testutils.RunConformance(t, func(t *testing.T) drivers.Driver { return NewHost(slogWarn()) })
}

// TestRecoverTaskOfOldAgent recovers a task that an agent from before the
// isolation started (as root, in the host's namespaces): exec into it runs
// as the driver's user, never as root.
func TestRecoverTaskOfOldAgent(t *testing.T) {
	requireRoot(t)
	cfg := testutils.TaskConfig(t, "sleep", "1000")
	h := testutils.StartTask(t, NewHost(slogWarn()), cfg)
	h.Driver = "exec" // an old exec handle: no isolation in its state
	d := newTestDriver(t)
	if err := d.Recover(context.Background(), h); err != nil {
		t.Fatalf("Recover: %v", err)
	}
	t.Cleanup(func() { _ = d.Destroy(context.Background(), cfg.ID, true) })
	if code, out := execOut(t, d, cfg.ID, "id", "-u"); code != 0 || out != "65534\n" {
		t.Errorf("exec = %d, %q; want uid 65534", code, out)
	}
}

// TestIsolatedCgroupV2 checks that the init of an isolated task starts in
// its cgroup on cgroup v2 (CLONE_INTO_CGROUP together with the namespace
// flags), on whatever cgroup2 mount this host has.
func TestIsolatedCgroupV2(t *testing.T) {
	requireRoot(t)
	mount := cgroup2Mount(t)
	cfg := testutils.TaskConfig(t, "cat", "/proc/self/cgroup")
	dir := filepath.Join(mount.Point, CgroupParent+"-test", cfg.ID)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Skipf("cgroup2 at %s is not writable: %v", mount.Point, err)
	}
	t.Cleanup(func() { _ = os.Remove(filepath.Dir(dir)) })
	g := &cgroup.Group{Version: cgroup.V2, Dirs: map[string]string{cgroup.Unified: dir}}
	t.Cleanup(func() { _ = g.Destroy(context.Background()) })
	if err := os.MkdirAll(cfg.WorkDir, 0o755); err != nil {
		t.Fatal(err)
	}
	raw, err := json.Marshal(&taskrun.Config{
		Path: "/bin/cat", Args: cfg.Command, Dir: cfg.WorkDir, Env: []string{"PATH=" + basePath},
		StdoutPath: cfg.StdoutPath, StderrPath: cfg.StderrPath, Cgroup: g,
		Isolation: &Isolation{Uid: 65534, Gid: 65534},
	})
	if err != nil {
		t.Fatal(err)
	}
	var initPid int
	st, err := taskrun.Run(context.Background(), raw, func(pid int) error { initPid = pid; return nil })
	if err != nil || st.ExitCode != 0 || initPid == 0 {
		t.Fatalf("taskrun.Run = %+v, %v (init %d); stderr %q", st, err, initPid, testutils.ReadLog(t, cfg.StderrPath))
	}
	rel := strings.TrimPrefix(dir, mount.Point)
	if out := testutils.ReadLog(t, cfg.StdoutPath); !strings.Contains(out, "0::"+rel+"\n") {
		t.Errorf("the command's cgroups:\n%s\nwant 0::%s", out, rel)
	}
}

// TestStartErrorFromInit checks that Start fails with the init's reason
// when the command cannot start inside the task's namespaces: a program in
// the host's /tmp is not in the task's.
func TestStartErrorFromInit(t *testing.T) {
	requireRoot(t)
	prog := filepath.Join(t.TempDir(), "prog.sh")
	if err := os.WriteFile(prog, []byte("#!/bin/sh\necho hi\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	d := newTestDriver(t)
	cfg := testutils.TaskConfig(t, prog)
	_, err := d.Start(context.Background(), cfg)
	if err == nil || !strings.Contains(err.Error(), "no such file or directory") || !strings.Contains(err.Error(), prog) {
		t.Fatalf("Start: err = %v, want the init's reason", err)
	}
	if _, err := d.Inspect(context.Background(), cfg.ID); !errors.Is(err, drivers.ErrTaskNotFound) {
		t.Errorf("failed Start left the task behind: %v", err)
	}
	if d.cgroups != nil {
		if _, err := os.Stat(filepath.Join("/sys/fs/cgroup/pids", CgroupParent, cfg.ID)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("failed Start left its cgroup: %v", err)
		}
	}
}

package runc

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moby/sys/mountinfo"
	"github.com/opencontainers/cgroups"

	"github.com/corral-dev/corral/plugins/drivers"
	"github.com/corral-dev/corral/plugins/drivers/testutils"
	"github.com/corral-dev/corral/structs"
)

const testTimeout = 10 * time.Second

// runOutput starts cfg, waits for it to exit successfully and returns its
// stdout.
func runOutput(t *testing.T, d *Driver, cfg *drivers.TaskConfig) string {
	t.Helper()
	testutils.StartTask(t, d, cfg)
	res := testutils.WaitResult(t, d, cfg.ID, testTimeout)
	if !res.Successful() {
		t.Fatalf("result = %+v; stderr %q", res, testutils.ReadLog(t, cfg.StderrPath))
	}
	return testutils.ReadLog(t, cfg.StdoutPath)
}

// execOutput runs command in the task and returns its stdout and exit code.
func execOutput(t *testing.T, d *Driver, taskID string, env map[string]string, command ...string) (string, int) {
	t.Helper()
	var out, errOut testutils.SafeBuffer
	code, err := d.Exec(context.Background(), taskID, &drivers.ExecOptions{Command: command, Env: env, Stdout: &out, Stderr: &errOut})
	if err != nil {
		t.Fatalf("Exec(%v): %v (stderr %q)", command, err, errOut.String())
	}
	return out.String(), code
}

func TestFingerprintAndCapabilities(t *testing.T) {
	d := newTestDriver(t)
	fp, err := d.Fingerprint(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if fp.Health != drivers.HealthHealthy {
		t.Fatalf("Fingerprint = %+v, want healthy", fp)
	}
	for _, k := range []string{"driver.runc.cgroup_version", "driver.runc.overlayfs", "driver.runc.kernel_version"} {
		if fp.Attributes[k] == "" {
			t.Errorf("attribute %s missing from %v", k, fp.Attributes)
		}
	}
	if c := d.Capabilities(); !c.Exec || !c.Recover || !c.ResourceLimits || c.HostNetworking {
		t.Errorf("Capabilities = %+v", c)
	}
	if d.Name() != "runc" {
		t.Errorf("Name = %q", d.Name())
	}
}

func TestHostnameAndEtcFiles(t *testing.T) {
	d := newTestDriver(t)
	cfg := taskConfig(t, "/bin/sh", "-c", `hostname; cat /etc/hostname; grep -c "kernel-7$" /etc/hosts; echo "$HOSTNAME"; grep -c localhost /etc/hosts`)
	cfg.Hostname = "kernel-7"
	if got, want := runOutput(t, d, cfg), "kernel-7\nkernel-7\n1\nkernel-7\n2\n"; got != want {
		t.Errorf("stdout = %q, want %q", got, want)
	}
}

func TestCommandIsPID1(t *testing.T) {
	d := newTestDriver(t)
	cfg := taskConfig(t, "cat", "/proc/1/cmdline")
	if got, want := runOutput(t, d, cfg), "cat\x00/proc/1/cmdline\x00"; got != want {
		t.Errorf("pid 1's command line = %q, want %q", got, want)
	}
	cfg = taskConfig(t, "/bin/sh", "-c", `echo $$; ls /proc | grep -c "^[0-9]"`)
	// The shell, ls and grep: no process of the host is visible.
	if got := runOutput(t, d, cfg); !strings.HasPrefix(got, "1\n") || got == "1\n" || len(strings.TrimSpace(strings.Split(got, "\n")[1])) > 1 {
		t.Errorf("stdout = %q, want pid 1 and a handful of processes", got)
	}
}

func TestNetworkNamespace(t *testing.T) {
	d := newTestDriver(t)
	hostNS, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	first := taskConfig(t, "/bin/sh", "-c", `readlink /proc/self/ns/net; cat /sys/class/net/lo/flags; ls /sys/class/net; echo ready; exec sleep 1000`)
	testutils.StartTask(t, d, first)
	out := testutils.WaitForLog(t, first.StdoutPath, "ready", testTimeout)
	lines := strings.Split(out, "\n")
	if lines[0] == hostNS || lines[1] != "0x9" || lines[2] != "lo" {
		t.Fatalf("own netns: stdout %q; want a namespace other than the host's %s with only lo, up (flags 0x9)", out, hostNS)
	}
	tk, _ := d.get(first.ID)
	joiner := taskConfig(t, "readlink", "/proc/self/ns/net")
	joiner.NetNSPath = fmt.Sprintf("/proc/%d/ns/net", tk.state.InitPid)
	if got := strings.TrimSpace(runOutput(t, d, joiner)); got != lines[0] {
		t.Errorf("NetNSPath: container in %s, want %s", got, lines[0])
	}
}

func TestUser(t *testing.T) {
	d := newTestDriver(t)
	tests := []struct {
		name      string
		user      string
		imageUser string
		want      string
	}{
		{"default root", "", "", "0 0 /root"},
		{"name", "alice", "", "1234 1235 /home/alice"},
		{"uid in passwd", "1234", "", "1234 1235 /home/alice"},
		{"uid and gid not in passwd", "4321:4322", "", "4321 4322 /"},
		{"name and group", "alice:staff", "", "1234 50 /home/alice"},
		{"image user", "", "alice", "1234 1235 /home/alice"},
		{"task overrides image", "0", "alice", "0 0 /root"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := taskConfig(t, "/bin/sh", "-c", `echo $(id -u) $(id -g) $HOME; id -G`)
			cfg.User = tc.user
			if tc.imageUser != "" {
				cfg.ImageConfig = &drivers.ImageConfig{User: tc.imageUser}
			}
			got, _, _ := strings.Cut(runOutput(t, d, cfg), "\n")
			if got != tc.want {
				t.Errorf("uid gid home = %q, want %q", got, tc.want)
			}
		})
	}
	t.Run("supplementary groups", func(t *testing.T) {
		cfg := taskConfig(t, "id", "-G")
		cfg.User = "alice"
		got := strings.Fields(runOutput(t, d, cfg))
		if !slices.Contains(got, "1235") || !slices.Contains(got, "50") {
			t.Errorf("id -G = %v, want 1235 and 50 (staff)", got)
		}
	})
	t.Run("unknown name", func(t *testing.T) {
		cfg := taskConfig(t, "true")
		cfg.User = "mallory"
		if _, err := d.Start(context.Background(), cfg); !errors.Is(err, drivers.ErrInvalidConfig) || !strings.Contains(err.Error(), "mallory") {
			t.Errorf("Start: err = %v, want ErrInvalidConfig naming the user", err)
		}
	})
}

func TestImageConfig(t *testing.T) {
	d := newTestDriver(t)
	script := func(s string) []string { return []string{"/bin/sh", "-c", s + `; echo "$A|$B|$C|$PATH"; pwd`} }
	tests := []struct {
		name    string
		image   *drivers.ImageConfig
		command []string
		env     map[string]string
		workDir string
		want    string
	}{
		{
			name:  "entrypoint and cmd",
			image: &drivers.ImageConfig{Entrypoint: script("echo ep"), Cmd: []string{"ignored-$0"}},
			want:  "ep\n|||" + defaultPath + "\n/\n",
		},
		{
			name:    "command replaces cmd, keeps entrypoint",
			image:   &drivers.ImageConfig{Entrypoint: []string{"/bin/sh", "-c", `echo "ep $0 $1"`}, Cmd: []string{"cmd0", "cmd1"}},
			command: []string{"task0", "task1"},
			want:    "ep task0 task1\n",
		},
		{
			name:  "entrypoint with image cmd as arguments",
			image: &drivers.ImageConfig{Entrypoint: []string{"/bin/sh", "-c", `echo "ep $0 $1"`}, Cmd: []string{"cmd0", "cmd1"}},
			want:  "ep cmd0 cmd1\n",
		},
		{
			name:  "cmd only",
			image: &drivers.ImageConfig{Cmd: script("echo cmd")},
			want:  "cmd\n|||" + defaultPath + "\n/\n",
		},
		{
			name:    "command replaces cmd",
			image:   &drivers.ImageConfig{Cmd: script("echo cmd")},
			command: script("echo task"),
			want:    "task\n|||" + defaultPath + "\n/\n",
		},
		{
			name:  "image env, working dir",
			image: &drivers.ImageConfig{Cmd: script("true"), Env: []string{"A=image", "B=image", "PATH=/bin:/usr/bin"}, WorkingDir: "/srv/app"},
			want:  "image|image||/bin:/usr/bin\n/srv/app\n",
		},
		{
			name:    "task env and working dir win",
			image:   &drivers.ImageConfig{Cmd: script("true"), Env: []string{"A=image", "B=image"}, WorkingDir: "/srv/app"},
			env:     map[string]string{"B": "task", "C": "task"},
			workDir: "/tmp/work",
			want:    "image|task|task|" + defaultPath + "\n/tmp/work\n",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := taskConfig(t)
			cfg.Command, cfg.ImageConfig, cfg.Env, cfg.WorkDir = tc.command, tc.image, tc.env, tc.workDir
			if got := runOutput(t, d, cfg); got != tc.want {
				t.Errorf("stdout = %q, want %q", got, tc.want)
			}
		})
	}
	t.Run("no command anywhere", func(t *testing.T) {
		cfg := taskConfig(t)
		cfg.Command, cfg.ImageConfig = nil, &drivers.ImageConfig{Env: []string{"A=1"}}
		if _, err := d.Start(context.Background(), cfg); !errors.Is(err, drivers.ErrInvalidConfig) {
			t.Errorf("Start: err = %v, want ErrInvalidConfig", err)
		}
	})
}

func TestInvalidConfigs(t *testing.T) {
	d := newTestDriver(t)
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		edit func(*drivers.TaskConfig)
		want string
	}{
		{"no rootfs", func(c *drivers.TaskConfig) { c.RootFS = "" }, "RootFS"},
		{"relative rootfs", func(c *drivers.TaskConfig) { c.RootFS = "rootfs" }, "absolute"},
		{"rootfs is a file", func(c *drivers.TaskConfig) { c.RootFS = file }, "not a directory"},
		{"command not in image", func(c *drivers.TaskConfig) { c.Command = []string{"python3"} }, "python3"},
		{"path not executable", func(c *drivers.TaskConfig) { c.Command = []string{"/etc/motd"} }, "/etc/motd"},
		{"ID with a slash", func(c *drivers.TaskConfig) { c.ID = "a/b" }, "a/b"},
		{"relative netns", func(c *drivers.TaskConfig) { c.NetNSPath = "netns" }, "netns"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := taskConfig(t, "true")
			tc.edit(cfg)
			_, err := d.Start(context.Background(), cfg)
			if !errors.Is(err, drivers.ErrInvalidConfig) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Start: err = %v, want ErrInvalidConfig mentioning %q", err, tc.want)
			}
			if _, err := os.Stat(d.containerDir(cfg)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("container dir left behind: %v", err)
			}
		})
	}
}

// cgroupFile reads a file of the task's cgroup for controller (v1) or the
// unified hierarchy (v2).
func cgroupFile(t *testing.T, tk *task, controller, v1Name, v2Name string) string {
	t.Helper()
	var p string
	if cgroups.IsCgroup2UnifiedMode() {
		p = filepath.Join(tk.state.CgroupPaths[""], v2Name)
	} else {
		p = filepath.Join(tk.state.CgroupPaths[controller], v1Name)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func TestCgroupLimits(t *testing.T) {
	d := newTestDriver(t, WithPidsLimit(123))
	cfg := taskConfig(t, "sleep", "1000")
	cfg.Resources = structs.Slots{structs.SlotCPU: 500, structs.SlotMem: structs.Whole(64 << 20)}
	testutils.StartTask(t, d, cfg)
	tk, err := d.get(cfg.ID)
	if err != nil {
		t.Fatal(err)
	}
	v2 := cgroups.IsCgroup2UnifiedMode()
	want := map[string]string{"memory": "67108864", "cpu": "50000", "pids": "123"}
	got := map[string]string{
		"memory": cgroupFile(t, tk, "memory", "memory.limit_in_bytes", "memory.max"),
		"cpu":    cgroupFile(t, tk, "cpu", "cpu.cfs_quota_us", "cpu.max"),
		"pids":   cgroupFile(t, tk, "pids", "pids.max", "pids.max"),
	}
	if v2 {
		want["cpu"] = "50000 100000"
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("host view: %s limit = %q, want %q", k, got[k], w)
		}
	}
	for ctrl, p := range tk.state.CgroupPaths {
		if !strings.Contains(p, "/"+testCgroupParent+"/runc-"+cfg.ID) {
			t.Errorf("cgroup %q = %s, want below %s/runc-%s", ctrl, p, testCgroupParent, cfg.ID)
		}
	}
	// The container sees its own cgroup's limits.
	inside := `cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/pids/pids.max`
	wantInside := "67108864\n50000\n123\n"
	if v2 {
		inside, wantInside = `cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/cpu.max /sys/fs/cgroup/pids.max`, "67108864\n50000 100000\n123\n"
	}
	if out, code := execOutput(t, d, cfg.ID, nil, "/bin/sh", "-c", inside); out != wantInside || code != 0 {
		t.Errorf("container view: %q (exit %d), want %q", out, code, wantInside)
	}
	st, err := d.Stats(context.Background(), cfg.ID)
	if err != nil || st.Pids != 1 || st.MemoryRSSBytes == 0 {
		t.Errorf("Stats = %+v, %v; want one process with some memory", st, err)
	}
}

func TestOOMKilled(t *testing.T) {
	d := newTestDriver(t)
	cfg := taskConfig(t, "/bin/sh", "-c", `x=$(head -c 268435456 /dev/zero | tr "\0" a); echo survived`)
	cfg.Resources = structs.Slots{structs.SlotMem: structs.Whole(32 << 20)}
	testutils.StartTask(t, d, cfg)
	res := testutils.WaitResult(t, d, cfg.ID, 30*time.Second)
	if !res.OOMKilled || res.Successful() {
		t.Errorf("result = %+v, want OOM killed", res)
	}
}

func TestOverlayIsolation(t *testing.T) {
	for _, mode := range []RootFSMode{RootFSOverlay, RootFSCopy} {
		t.Run(mode.String(), func(t *testing.T) {
			image := testImage(t)
			d := newTestDriver(t, WithRootFSMode(mode))
			writer := taskConfig(t, "/bin/sh", "-c", `echo changed > /etc/motd; echo new > /etc/created; rm /bin/true; mkdir -p /data; echo ready; exec sleep 1000`)
			testutils.StartTask(t, d, writer)
			testutils.WaitForLog(t, writer.StdoutPath, "ready", testTimeout)
			// The writer sees its changes, in exec too.
			if out, _ := execOutput(t, d, writer.ID, nil, "cat", "/etc/motd", "/etc/created"); out != "changed\nnew\n" {
				t.Errorf("writer's view: %q", out)
			}
			// A second kernel of the same image, at the same time, sees the image.
			reader := taskConfig(t, "/bin/sh", "-c", `cat /etc/motd; ls /etc/created /data 2>/dev/null; ls /bin/true`)
			if got, want := runOutput(t, d, reader), "image file\n/bin/true\n"; got != want {
				t.Errorf("reader's view: %q, want %q", got, want)
			}
			// The shared image directory is untouched.
			if b, err := os.ReadFile(filepath.Join(image, "etc/motd")); err != nil || string(b) != "image file\n" {
				t.Errorf("image's /etc/motd = %q, %v", b, err)
			}
			for _, p := range []string{"etc/created", "data"} {
				if _, err := os.Lstat(filepath.Join(image, p)); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("image has %s: %v", p, err)
				}
			}
			if _, err := os.Lstat(filepath.Join(image, "bin/true")); err != nil {
				t.Errorf("image lost bin/true: %v", err)
			}
			tk, _ := d.get(writer.ID)
			mounted, err := mountinfo.Mounted(tk.state.RootFS.RootFS)
			if err != nil {
				t.Fatal(err)
			}
			// With a user namespace a copy is bound at a mount point
			// outside the task dir.
			wantMounted := mode == RootFSOverlay || tk.state.RootFS.Mount != ""
			if mounted != wantMounted || tk.state.RootFS.Overlay != (mode == RootFSOverlay) {
				t.Errorf("rootfs %s mounted = %v, overlay = %v in %s mode", tk.state.RootFS.RootFS, mounted, tk.state.RootFS.Overlay, mode)
			}
		})
	}
}

func TestExecInContainer(t *testing.T) {
	d := newTestDriver(t)
	cfg := taskConfig(t, "sleep", "1000")
	cfg.Hostname, cfg.User, cfg.WorkDir = "kernel-x", "alice", "/home/alice"
	cfg.Env = map[string]string{"FOO": "task"}
	testutils.StartTask(t, d, cfg)
	out, code := execOutput(t, d, cfg.ID, map[string]string{"BAR": "exec"},
		"/bin/sh", "-c", `hostname; id -u; echo "$FOO $BAR"; pwd; echo $$; exit 7`)
	lines := strings.Split(out, "\n")
	if code != 7 || len(lines) < 5 || strings.Join(lines[:4], "\n") != "kernel-x\n1234\ntask exec\n/home/alice" || lines[4] == "1" {
		t.Errorf("exec: exit %d, stdout %q; want 7 and the container's hostname, user, env, cwd, a pid other than 1", code, out)
	}
	if _, code := execOutput(t, d, cfg.ID, nil, "/bin/sh", "-c", "kill -KILL $$"); code != 128+int(syscall.SIGKILL) {
		t.Errorf("exec killed by SIGKILL: exit code %d, want 137", code)
	}
	_, err := d.Exec(context.Background(), cfg.ID, &drivers.ExecOptions{Command: []string{"nonesuch"}})
	if !errors.Is(err, drivers.ErrInvalidConfig) {
		t.Errorf("exec of a missing command: err = %v, want ErrInvalidConfig", err)
	}
}

func TestStopSignals(t *testing.T) {
	d := newTestDriver(t)
	t.Run("init handles the signal", func(t *testing.T) {
		t.Parallel()
		cfg := taskConfig(t, "/bin/sh", "-c", `trap "echo caught; exit 3" TERM; echo ready; while :; do sleep 0.05; done`)
		testutils.StartTask(t, d, cfg)
		testutils.WaitForLog(t, cfg.StdoutPath, "ready", testTimeout)
		if err := d.Stop(context.Background(), cfg.ID, 5*time.Second, "TERM"); err != nil {
			t.Fatal(err)
		}
		res := testutils.WaitResult(t, d, cfg.ID, testTimeout)
		if res.ExitCode != 3 || res.Signal != 0 || !strings.Contains(testutils.ReadLog(t, cfg.StdoutPath), "caught") {
			t.Errorf("result = %+v, stdout %q; want the handler's exit code 3", res, testutils.ReadLog(t, cfg.StdoutPath))
		}
	})
	t.Run("SIGKILL", func(t *testing.T) {
		t.Parallel()
		cfg := taskConfig(t, "sleep", "1000")
		testutils.StartTask(t, d, cfg)
		if err := d.Stop(context.Background(), cfg.ID, 5*time.Second, "9"); err != nil {
			t.Fatal(err)
		}
		if res := testutils.WaitResult(t, d, cfg.ID, testTimeout); res.Signal != 9 || res.ExitCode != 137 {
			t.Errorf("result = %+v, want SIGKILL and 137", res)
		}
	})
	t.Run("SIGINT without handler", func(t *testing.T) {
		t.Parallel()
		cfg := taskConfig(t, "sleep", "1000")
		testutils.StartTask(t, d, cfg)
		if err := d.Stop(context.Background(), cfg.ID, 5*time.Second, "SIGINT"); err != nil {
			t.Fatal(err)
		}
		if res := testutils.WaitResult(t, d, cfg.ID, testTimeout); res.Signal != 2 || res.ExitCode != 130 {
			t.Errorf("result = %+v, want SIGINT and 130", res)
		}
	})
	t.Run("bad signal", func(t *testing.T) {
		if err := d.Stop(context.Background(), "whatever", time.Second, "SIGNOPE"); !errors.Is(err, drivers.ErrInvalidConfig) {
			t.Errorf("err = %v, want ErrInvalidConfig", err)
		}
	})
}

// leftovers lists what of a destroyed task is still there.
type leftovers struct {
	pids        []int
	cgroupDirs  []string
	dirs        []string
	mountPrefix []string
}

func snapshot(t *testing.T, d *Driver, id string) leftovers {
	t.Helper()
	tk, err := d.get(id)
	if err != nil {
		t.Fatal(err)
	}
	var l leftovers
	l.pids = cgroupPids(tk.state.CgroupPaths)
	for _, p := range tk.state.CgroupPaths {
		l.cgroupDirs = append(l.cgroupDirs, p)
	}
	l.dirs = []string{tk.state.RootFS.Dir, filepath.Join(tk.state.Root, tk.state.ContainerID)}
	l.mountPrefix = []string{tk.state.RootFS.Dir}
	if m := tk.state.RootFS.Mount; m != "" { // a user namespace's root
		l.dirs = append(l.dirs, m)
		l.mountPrefix = append(l.mountPrefix, m)
	}
	return l
}

func (l leftovers) check(t *testing.T) {
	t.Helper()
	for _, pid := range l.pids {
		if !testutils.ProcessGone(pid) {
			t.Errorf("process %d still runs", pid)
		}
	}
	for _, p := range append(l.cgroupDirs, l.dirs...) {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still exists (%v)", p, err)
		}
	}
	for _, prefix := range l.mountPrefix {
		mounts, err := mountinfo.GetMounts(mountinfo.PrefixFilter(prefix))
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range mounts {
			t.Errorf("mount left: %s (%s)", m.Mountpoint, m.FSType)
		}
	}
}

// cgroupParentDirs returns parent's directory in every cgroup hierarchy
// that has it.
func cgroupParentDirs(t *testing.T, parent string) []string {
	t.Helper()
	mounts, err := mountinfo.GetMounts(func(m *mountinfo.Info) (bool, bool) {
		return m.FSType != "cgroup" && m.FSType != "cgroup2", false
	})
	if err != nil {
		t.Fatal(err)
	}
	var dirs []string
	for _, m := range mounts {
		if _, err := os.Stat(filepath.Join(m.Mountpoint, parent)); err == nil {
			dirs = append(dirs, filepath.Join(m.Mountpoint, parent))
		}
	}
	return dirs
}

func randomName(t *testing.T, prefix string) string {
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return prefix + hex.EncodeToString(b)
}

func TestDestroyLeavesNothing(t *testing.T) {
	parent := randomName(t, "corral-runc-leak-")
	d := newTestDriver(t, WithCgroupParent(parent))
	ctx := context.Background()

	running := taskConfig(t, "/bin/sh", "-c", `sleep 1000 & sleep 1000 & echo ready; wait`)
	testutils.StartTask(t, d, running)
	testutils.WaitForLog(t, running.StdoutPath, "ready", testTimeout)
	// An exec that leaves a process behind in the container.
	if _, err := d.Exec(ctx, running.ID, &drivers.ExecOptions{Command: []string{"/bin/sh", "-c", "sleep 1000 &"}}); err != nil {
		t.Fatal(err)
	}
	exited := taskConfig(t, "true")
	testutils.StartTask(t, d, exited)
	testutils.WaitResult(t, d, exited.ID, testTimeout)

	if dirs := cgroupParentDirs(t, parent); len(dirs) == 0 {
		t.Fatalf("no cgroup parent %s while tasks run", parent)
	}
	before := []leftovers{snapshot(t, d, running.ID), snapshot(t, d, exited.ID)}
	if n := len(before[0].pids); n != 4 {
		t.Errorf("running task has %d processes (%v), want 4: shell, two sleeps and the exec's", n, before[0].pids)
	}
	if err := d.Destroy(ctx, running.ID, true); err != nil {
		t.Fatal(err)
	}
	// The other task still uses the parent.
	if dirs := cgroupParentDirs(t, parent); len(dirs) == 0 {
		t.Errorf("cgroup parent %s removed while a task still has cgroups below it", parent)
	}
	if err := d.Destroy(ctx, exited.ID, false); err != nil {
		t.Fatal(err)
	}
	for _, l := range before {
		l.check(t)
	}
	if dirs := cgroupParentDirs(t, parent); len(dirs) > 0 {
		t.Errorf("cgroup parents left: %v", dirs)
	}
	for _, id := range []string{running.ID, exited.ID} {
		if _, err := d.Inspect(ctx, id); !errors.Is(err, drivers.ErrTaskNotFound) {
			t.Errorf("Inspect after Destroy: %v", err)
		}
	}
}

func TestFailedStartLeavesNothing(t *testing.T) {
	parent := randomName(t, "corral-runc-leak-")
	d := newTestDriver(t, WithCgroupParent(parent))
	// The working dir cannot be created over a file: the container's init
	// fails after the cgroups and the rootfs were made.
	cfg := taskConfig(t, "true")
	cfg.WorkDir = "/etc/motd/sub"
	if _, err := d.Start(context.Background(), cfg); err == nil {
		t.Fatal("Start succeeded")
	}
	if dirs := cgroupParentDirs(t, parent); len(dirs) > 0 {
		t.Errorf("cgroup dirs left: %v", dirs)
	}
	if _, err := os.Stat(d.containerDir(cfg)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("container dir left: %v", err)
	}
	if _, err := os.Stat(filepath.Join(d.stateDir, cfg.ID)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("container state left: %v", err)
	}
	// The ID is free again.
	cfg.WorkDir = ""
	runOutput(t, d, cfg)
}

func TestRecover(t *testing.T) {
	parent := randomName(t, "corral-runc-leak-")
	stateDir := t.TempDir()
	ctx := context.Background()
	first := newTestDriver(t, WithStateDir(stateDir), WithCgroupParent(parent))
	cfg := taskConfig(t, "sleep", "1000")
	h, err := first.Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	left := snapshot(t, first, cfg.ID)
	// The agent restarts: a new driver gets the persisted handle.
	b, err := json.Marshal(h)
	if err != nil {
		t.Fatal(err)
	}
	var persisted drivers.TaskHandle
	if err := json.Unmarshal(b, &persisted); err != nil {
		t.Fatal(err)
	}
	second := newTestDriver(t, WithStateDir(stateDir), WithCgroupParent(parent))
	if err := second.Recover(ctx, &persisted); err != nil {
		t.Fatal(err)
	}
	if err := second.Recover(ctx, &persisted); err != nil {
		t.Errorf("second Recover: %v", err)
	}
	if st, err := second.Inspect(ctx, cfg.ID); err != nil || st.State != drivers.TaskStateRunning {
		t.Fatalf("Inspect after Recover = %+v, %v", st, err)
	}
	if out, code := execOutput(t, second, cfg.ID, nil, "hostname"); out != "kernel\n" || code != 0 {
		t.Errorf("exec after Recover: %q, %d", out, code)
	}
	if st, err := second.Stats(ctx, cfg.ID); err != nil || st.Pids != 1 {
		t.Errorf("Stats after Recover = %+v, %v", st, err)
	}
	if err := second.Stop(ctx, cfg.ID, 5*time.Second, ""); err != nil {
		t.Fatal(err)
	}
	// The shim, the init's parent, recorded the real end: the SIGKILL that
	// stood in for SIGTERM, which both drivers report as SIGTERM.
	res := testutils.WaitResult(t, second, cfg.ID, testTimeout)
	if res.Signal != int(syscall.SIGTERM) || res.ExitCode != 128+int(syscall.SIGTERM) || res.Err != nil {
		t.Errorf("recovered result = %+v, want SIGTERM", res)
	}
	if res := testutils.WaitResult(t, first, cfg.ID, testTimeout); res.Signal != int(syscall.SIGTERM) || res.Err != nil {
		t.Errorf("first driver's result = %+v, want SIGTERM", res)
	}
	if err := second.Destroy(ctx, cfg.ID, false); err != nil {
		t.Fatal(err)
	}
	left.check(t)
	if dirs := cgroupParentDirs(t, parent); len(dirs) > 0 {
		t.Errorf("cgroup parents left: %v", dirs)
	}

	t.Run("exited while the agent was down", func(t *testing.T) {
		cfg := taskConfig(t, "true")
		h, err := first.Start(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		testutils.WaitResult(t, first, cfg.ID, testTimeout)
		left := snapshot(t, first, cfg.ID)
		other := newTestDriver(t, WithStateDir(stateDir), WithCgroupParent(parent))
		if err := other.Recover(ctx, h); err != nil {
			t.Fatal(err)
		}
		if res := testutils.WaitResult(t, other, cfg.ID, time.Second); !res.Successful() {
			t.Errorf("result = %+v, want success", res)
		}
		if _, err := other.Exec(ctx, cfg.ID, &drivers.ExecOptions{Command: []string{"true"}}); !errors.Is(err, drivers.ErrTaskNotRunning) {
			t.Errorf("Exec: %v, want ErrTaskNotRunning", err)
		}
		if err := other.Destroy(ctx, cfg.ID, false); err != nil {
			t.Fatal(err)
		}
		left.check(t)
	})
	t.Run("bad handles", func(t *testing.T) {
		d := newTestDriver(t)
		for _, h := range []*drivers.TaskHandle{
			nil,
			{Driver: "runc"},
			{Driver: "exec", Config: cfg, DriverState: b},
			{Driver: "runc", Config: cfg, DriverState: []byte(`{"root":""}`)},
		} {
			if err := d.Recover(ctx, h); !errors.Is(err, drivers.ErrInvalidConfig) {
				t.Errorf("Recover(%+v) = %v, want ErrInvalidConfig", h, err)
			}
		}
	})
}

func TestSignalNames(t *testing.T) {
	for in, want := range map[string]syscall.Signal{"": syscall.SIGTERM, "SIGINT": syscall.SIGINT, "hup": syscall.SIGHUP, "9": syscall.SIGKILL} {
		if got, err := drivers.ParseSignal(in); err != nil || got != want {
			t.Errorf("drivers.ParseSignal(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"0", "65", "SIGFOO"} {
		if _, err := drivers.ParseSignal(in); !errors.Is(err, drivers.ErrInvalidConfig) {
			t.Errorf("drivers.ParseSignal(%q): err = %v", in, err)
		}
	}
	pid := strconv.Itoa(os.Getpid())
	if _, err := hasDefaultAction(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Errorf("hasDefaultAction(%s): %v", pid, err)
	}
}

func TestEnvList(t *testing.T) {
	got := envList([]string{"A=1", "B=2", "junk", "=x", "C=a=b"}, map[string]string{"B": "3", "Z": "z", "D": "d"})
	want := []string{"A=1", "B=3", "C=a=b", "D=d", "Z=z"}
	if !slices.Equal(got, want) {
		t.Errorf("envList = %v, want %v", got, want)
	}
}

func TestCopyTree(t *testing.T) {
	needRoot(t)
	src, dst := t.TempDir(), t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(src, "d/e"), 0o750))
	must(os.WriteFile(filepath.Join(src, "d/file"), []byte("content"), 0o640))
	must(os.Chmod(filepath.Join(src, "d/file"), 0o4755))
	must(os.Link(filepath.Join(src, "d/file"), filepath.Join(src, "hardlink")))
	must(os.Symlink("../file", filepath.Join(src, "d/e/link")))
	must(syscall.Mkfifo(filepath.Join(src, "fifo"), 0o600))
	must(syscall.Mknod(filepath.Join(src, "null"), syscall.S_IFCHR|0o666, 1<<8|3))
	must(os.Lchown(filepath.Join(src, "d/e"), 1234, 1235))
	must(os.Lchown(filepath.Join(src, "d/e/link"), 1234, 1235))
	old := time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC)
	must(os.Chtimes(filepath.Join(src, "d"), old, old))

	must(copyTree(src, dst, 0))
	for _, p := range []string{"d", "d/e", "d/file", "hardlink", "d/e/link", "fifo", "null"} {
		var a, b syscall.Stat_t
		must(syscall.Lstat(filepath.Join(src, p), &a))
		must(syscall.Lstat(filepath.Join(dst, p), &b))
		if a.Mode != b.Mode || a.Uid != b.Uid || a.Gid != b.Gid || a.Rdev != b.Rdev || a.Size != b.Size || a.Mtim != b.Mtim {
			t.Errorf("%s: copy differs: mode %o/%o owner %d:%d/%d:%d rdev %d/%d size %d/%d mtime %v/%v",
				p, a.Mode, b.Mode, a.Uid, a.Gid, b.Uid, b.Gid, a.Rdev, b.Rdev, a.Size, b.Size, a.Mtim, b.Mtim)
		}
	}
	var f, h syscall.Stat_t
	must(syscall.Stat(filepath.Join(dst, "d/file"), &f))
	must(syscall.Stat(filepath.Join(dst, "hardlink"), &h))
	if f.Ino != h.Ino {
		t.Error("hard link copied as a separate file")
	}
	if b, err := os.ReadFile(filepath.Join(dst, "d/e/link")); err != nil || string(b) != "content" {
		t.Errorf("through the copied symlink: %q, %v", b, err)
	}
}

func TestFingerprintUndetected(t *testing.T) {
	d := New(nil)
	ctx := context.Background()
	if os.Geteuid() != 0 {
		if fp, err := d.Fingerprint(ctx); err != nil || fp.Health != drivers.HealthUndetected || !strings.Contains(fp.Description, "root") {
			t.Errorf("Fingerprint as non-root = %+v, %v; want undetected, needing root", fp, err)
		}
		return
	}
	initHooked.Store(false)
	defer initHooked.Store(true)
	if fp, err := d.Fingerprint(ctx); err != nil || fp.Health != drivers.HealthUndetected || !strings.Contains(fp.Description, "InitIfRequested") {
		t.Errorf("Fingerprint without the init hook = %+v, %v; want undetected, naming InitIfRequested", fp, err)
	}
}

func TestLeftoverRootFSIsKept(t *testing.T) {
	d := newTestDriver(t)
	cfg := taskConfig(t, "true")
	marker := filepath.Join(d.containerDir(cfg), "rootfs", "still-in-use")
	if err := os.MkdirAll(filepath.Dir(marker), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(marker, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Start(context.Background(), cfg); err == nil {
		t.Fatal("Start over an earlier container's rootfs succeeded")
	}
	if _, err := os.Stat(marker); err != nil {
		t.Errorf("Start removed an earlier container's rootfs: %v", err)
	}
}

func TestExecTTY(t *testing.T) {
	d := newTestDriver(t)
	cfg := taskConfig(t, "sleep", "1000")
	cfg.User = "alice"
	testutils.StartTask(t, d, cfg)
	testutils.RunExecTTY(t, d, cfg.ID)
}

package exec

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/corral-dev/corral/drivers/exec/cgroup"
	"github.com/corral-dev/corral/drivers/internal/rlimit"
	"github.com/corral-dev/corral/plugins/drivers"
	"github.com/corral-dev/corral/plugins/drivers/testutils"
	"github.com/corral-dev/corral/structs"
)

// runOut runs cfg on d to its end and returns its stdout, failing the test
// unless it succeeded.
func runOut(t *testing.T, d *Driver, cfg *drivers.TaskConfig) string {
	t.Helper()
	res, out, errOut := runToEnd(t, d, cfg)
	if !res.Successful() {
		t.Fatalf("result %+v; stdout %q stderr %q", res, out, errOut)
	}
	return out
}

func TestCpusetPinsKernel(t *testing.T) {
	requireRoot(t)
	if runtime.NumCPU() < 2 {
		t.Skip("needs 2 CPUs to pin a kernel to CPU 1")
	}
	noCgroups := New(slogWarn())
	noCgroups.cgroups, noCgroups.noLimits = nil, "test: no cgroups"
	for name, d := range map[string]*Driver{"exec": newTestDriver(t), "host": NewHost(slogWarn()), "affinity": noCgroups} {
		t.Run(name, func(t *testing.T) {
			cfg := testutils.TaskConfig(t, "/bin/sh", "-c", `grep Cpus_allowed_list /proc/self/status; echo up; exec sleep 1000`)
			cfg.Cpuset = "1"
			testutils.StartTask(t, d, cfg)
			out := testutils.WaitForLog(t, cfg.StdoutPath, "up", testTimeout)
			if f := strings.Fields(out); len(f) < 2 || f[1] != "1" {
				t.Errorf("the kernel's %q, want Cpus_allowed_list 1", out)
			}
			if name == "exec" && d.cgroups != nil && d.cgroups.CanPin() && d.cgroups.Version() == cgroup.V1 {
				// Pinned by a cpuset cgroup of its own, not by affinity.
				tk, _ := d.get(cfg.ID)
				b, err := os.ReadFile(filepath.Join(tk.group.Dirs[cgroup.Cpuset], "cpuset.cpus"))
				if err != nil || strings.TrimSpace(string(b)) != "1" {
					t.Errorf("the task's cpuset.cpus: %q, %v; want 1", b, err)
				}
			}
			// Exec'd commands are pinned too (cgroup or affinity).
			if _, out := execOut(t, d, cfg.ID, "grep", "Cpus_allowed_list", "/proc/self/status"); !strings.HasSuffix(strings.TrimSpace(out), "\t1") {
				t.Errorf("exec in the kernel: %q, want Cpus_allowed_list 1", out)
			}
		})
	}
}

func TestUlimitsExec(t *testing.T) {
	requireRoot(t)
	memlock := structs.Ulimit{Name: "memlock", Soft: -1, Hard: -1}
	wantMemlock := "unlimited"
	if !rlimit.HasCapability(unix.CAP_SYS_RESOURCE) {
		// Without CAP_SYS_RESOURCE no limit may go above the agent's own.
		var cur unix.Rlimit
		if err := unix.Getrlimit(unix.RLIMIT_MEMLOCK, &cur); err != nil {
			t.Fatal(err)
		}
		memlock = structs.Ulimit{Name: "memlock", Soft: int64(cur.Max / 2), Hard: int64(cur.Max)}
		wantMemlock = strconv.FormatUint(cur.Max/2/1024, 10)
	}
	for _, d := range []*Driver{newTestDriver(t), NewHost(slogWarn())} {
		t.Run(d.Name(), func(t *testing.T) {
			cfg := testutils.TaskConfig(t, "/bin/sh", "-c", `ulimit -l; ulimit -n; ulimit -Hn; echo up; exec sleep 1000`)
			cfg.Options = &structs.KernelOptions{Ulimits: []structs.Ulimit{memlock, {Name: "nofile", Soft: 4321, Hard: 8765}}}
			testutils.StartTask(t, d, cfg)
			out := testutils.WaitForLog(t, cfg.StdoutPath, "up", testTimeout)
			if want := wantMemlock + "\n4321\n8765\nup\n"; out != want {
				t.Errorf("ulimits = %q, want %q", out, want)
			}
			if d.isolated {
				if _, out := execOut(t, d, cfg.ID, "/bin/sh", "-c", "ulimit -n"); out != "4321\n" {
					t.Errorf("exec: ulimit -n = %q, want 4321", out)
				}
			}
		})
	}
	if !rlimit.HasCapability(unix.CAP_SYS_RESOURCE) {
		cfg := testutils.TaskConfig(t, "true")
		cfg.Options = &structs.KernelOptions{Ulimits: []structs.Ulimit{{Name: "memlock", Soft: -1, Hard: -1}}}
		_, err := newTestDriver(t).Start(context.Background(), cfg)
		if !errors.Is(err, drivers.ErrInvalidConfig) || !strings.Contains(err.Error(), "CAP_SYS_RESOURCE") {
			t.Errorf("unlimited memlock without CAP_SYS_RESOURCE: Start err = %v, want ErrInvalidConfig naming it", err)
		}
	}
}

func TestShmSizeExec(t *testing.T) {
	requireRoot(t)
	d := newTestDriver(t)
	cfg := testutils.TaskConfig(t, "/bin/sh", "-c", `df -k /dev/shm | tail -n 1`)
	cfg.Options = &structs.KernelOptions{ShmBytes: 256 << 20}
	if f := strings.Fields(runOut(t, d, cfg)); len(f) < 2 || f[1] != "262144" {
		t.Errorf("df /dev/shm says %v, want 262144 KiB", f)
	}
	cfg = testutils.TaskConfig(t, "true")
	cfg.Options = &structs.KernelOptions{ShmBytes: 256 << 20}
	if _, err := NewHost(slogWarn()).Start(context.Background(), cfg); !errors.Is(err, drivers.ErrInvalidConfig) {
		t.Errorf("host driver with a /dev/shm size: Start err = %v, want ErrInvalidConfig", err)
	}
}

func TestCapAddRefused(t *testing.T) {
	requireRoot(t)
	cfg := testutils.TaskConfig(t, "true")
	cfg.Options = &structs.KernelOptions{CapAdd: []string{"CAP_IPC_LOCK"}}
	_, err := newTestDriver(t).Start(context.Background(), cfg)
	if !errors.Is(err, drivers.ErrInvalidConfig) || !strings.Contains(err.Error(), "runc") {
		t.Errorf("CapAdd on the exec driver: Start err = %v, want ErrInvalidConfig pointing at runc", err)
	}
	// The host driver's root kernels hold every capability already.
	cfg = testutils.TaskConfig(t, "/bin/sh", "-c", "grep CapEff /proc/self/status")
	cfg.Options = &structs.KernelOptions{CapAdd: []string{"CAP_IPC_LOCK"}, Network: structs.NetworkHost}
	res, out, _ := runToEnd(t, NewHost(slogWarn()), cfg)
	mask, perr := strconv.ParseUint(strings.TrimSpace(strings.TrimPrefix(out, "CapEff:")), 16, 64)
	if !res.Successful() || perr != nil || mask&(1<<unix.CAP_IPC_LOCK) == 0 {
		t.Errorf("host driver kernel: %+v %q, want CAP_IPC_LOCK effective", res, out)
	}
}

// TestHostsAndMountsExec checks that an isolated kernel resolves its
// peers through its own /etc/hosts (and the host's names still) and sees
// its bind mounts, read-only when asked, while the host's files stay as
// they were.
func TestHostsAndMountsExec(t *testing.T) {
	requireRoot(t)
	base, err := os.MkdirTemp("/var/lib", "corral-mounts-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(base) })
	src := filepath.Join(base, "src")
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "hostfile"), []byte("sub1 slots=2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	hostsBefore, err := os.ReadFile("/etc/hosts")
	if err != nil {
		t.Fatal(err)
	}
	dataDir, cfg := agentLayout(t, "/bin/sh", "-c",
		`getent hosts sub1; getent hosts localhost >/dev/null && echo localhost-ok; cat `+base+`/mnt/corral/hostfile; { echo x > `+base+`/mnt/corral/new; } 2>/dev/null || echo ro-ok`)
	d := New(slogWarn(), WithHiddenPaths(dataDir))
	cfg.Hosts = map[string]string{"sub1": "10.1.2.3", "main1": "10.1.2.2"}
	cfg.Mounts = []drivers.Mount{{Source: src, Destination: filepath.Join(base, "mnt", "corral"), ReadOnly: true}}
	out := runOut(t, d, cfg)
	for _, want := range []string{"10.1.2.3        sub1", "localhost-ok", "sub1 slots=2", "ro-ok"} {
		if !strings.Contains(out, want) {
			t.Errorf("kernel output lacks %q:\n%s", want, out)
		}
	}
	if after, _ := os.ReadFile("/etc/hosts"); string(after) != string(hostsBefore) {
		t.Errorf("the host's /etc/hosts changed: %q", after)
	}
	if _, err := os.Stat(filepath.Join(src, "new")); err == nil {
		t.Error("the kernel wrote into the read-only mount")
	}
	cfg = testutils.TaskConfig(t, "true")
	cfg.Mounts = []drivers.Mount{{Source: filepath.Join(base, "missing"), Destination: "/x"}}
	if _, err := d.Start(context.Background(), cfg); !errors.Is(err, drivers.ErrInvalidConfig) {
		t.Errorf("missing mount source: Start err = %v, want ErrInvalidConfig", err)
	}
}

package runc

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/corral-dev/corral/drivers/internal/rlimit"
	"github.com/corral-dev/corral/plugins/drivers"
	"github.com/corral-dev/corral/structs"
)

// statusField returns field (e.g. "CapEff") of a /proc/PID/status text.
func statusField(t *testing.T, status, field string) string {
	t.Helper()
	for line := range strings.Lines(status) {
		if k, v, ok := strings.Cut(line, ":"); ok && k == field {
			return strings.TrimSpace(v)
		}
	}
	t.Fatalf("no %s in %q", field, status)
	return ""
}

func TestCpuset(t *testing.T) {
	if runtime.NumCPU() < 2 {
		t.Skip("needs 2 CPUs to pin a kernel to CPU 1")
	}
	d := newTestDriver(t)
	cfg := taskConfig(t, "cat", "/proc/self/status")
	cfg.Cpuset, cfg.CpusetMems = "1", "0"
	if got := statusField(t, runOutput(t, d, cfg), "Cpus_allowed_list"); got != "1" {
		t.Errorf("Cpus_allowed_list = %q, want 1", got)
	}
}

func TestShmSize(t *testing.T) {
	d := newTestDriver(t)
	for _, tc := range []struct {
		bytes  int64
		wantKB string
	}{{0, "65536"}, {256 << 20, "262144"}} {
		cfg := taskConfig(t, "/bin/sh", "-c", `df -k /dev/shm | tail -n 1`)
		cfg.Options = &structs.KernelOptions{ShmBytes: tc.bytes}
		f := strings.Fields(runOutput(t, d, cfg))
		if len(f) < 2 || f[1] != tc.wantKB {
			t.Errorf("ShmBytes %d: df says %v, want %s KiB", tc.bytes, f, tc.wantKB)
		}
	}
}

func TestUlimits(t *testing.T) {
	d := newTestDriver(t)
	cfg := taskConfig(t, "/bin/sh", "-c", `ulimit -l; ulimit -n; ulimit -Hn`)
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
		denied := taskConfig(t, "true")
		denied.Options = &structs.KernelOptions{Ulimits: []structs.Ulimit{{Name: "memlock", Soft: -1, Hard: -1}}}
		_, err := d.Start(context.Background(), denied)
		if !errors.Is(err, drivers.ErrInvalidConfig) || !strings.Contains(err.Error(), "CAP_SYS_RESOURCE") {
			t.Errorf("unlimited memlock without CAP_SYS_RESOURCE: Start err = %v, want ErrInvalidConfig naming it", err)
		}
	}
	cfg.Options = &structs.KernelOptions{Ulimits: []structs.Ulimit{memlock, {Name: "nofile", Soft: 4321, Hard: 8765}}}
	if got, want := runOutput(t, d, cfg), wantMemlock+"\n4321\n8765\n"; got != want {
		t.Errorf("ulimits = %q, want %q", got, want)
	}
	cfg = taskConfig(t, "true")
	cfg.Options = &structs.KernelOptions{Ulimits: []structs.Ulimit{{Name: "memlock", Soft: 10, Hard: 5}}}
	if _, err := d.Start(context.Background(), cfg); !errors.Is(err, drivers.ErrInvalidConfig) {
		t.Errorf("soft above hard: Start err = %v, want ErrInvalidConfig", err)
	}
}

// capBit reports whether capability bit n is set in a hex mask.
func capBit(t *testing.T, mask string, n uint) bool {
	t.Helper()
	v, err := strconv.ParseUint(mask, 16, 64)
	if err != nil {
		t.Fatal(err)
	}
	return v&(1<<n) != 0
}

func TestCapAdd(t *testing.T) {
	const ipcLock, sysPtrace = 14, 19
	d := newTestDriver(t)
	for _, user := range []string{"", "alice"} {
		cfg := taskConfig(t, "cat", "/proc/self/status")
		cfg.User = user
		cfg.Options = &structs.KernelOptions{CapAdd: []string{"CAP_IPC_LOCK", "sys_ptrace"}}
		out := runOutput(t, d, cfg)
		for _, set := range []string{"CapEff", "CapPrm", "CapBnd"} {
			m := statusField(t, out, set)
			if !capBit(t, m, ipcLock) || !capBit(t, m, sysPtrace) {
				t.Errorf("user %q: %s = %s lacks CAP_IPC_LOCK or CAP_SYS_PTRACE", user, set, m)
			}
		}
	}
	cfg := taskConfig(t, "cat", "/proc/self/status")
	if m := statusField(t, runOutput(t, d, cfg), "CapEff"); capBit(t, m, ipcLock) {
		t.Errorf("without CapAdd CapEff = %s has CAP_IPC_LOCK", m)
	}
	cfg = taskConfig(t, "true")
	cfg.Options = &structs.KernelOptions{CapAdd: []string{"CAP_MAKE_COFFEE"}}
	_, err := d.Start(context.Background(), cfg)
	if !errors.Is(err, drivers.ErrInvalidConfig) || !strings.Contains(err.Error(), "CAP_MAKE_COFFEE") {
		t.Errorf("unknown capability: Start err = %v, want ErrInvalidConfig naming it", err)
	}
}

func TestHostNetwork(t *testing.T) {
	d := newTestDriver(t)
	hostNS, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir("/sys/class/net")
	if err != nil {
		t.Fatal(err)
	}
	var ifaces []string
	for _, e := range entries {
		ifaces = append(ifaces, e.Name())
	}
	name, _ := os.Hostname()
	cfg := taskConfig(t, "/bin/sh", "-c", `readlink /proc/self/ns/net; ls /sys/class/net | tr '\n' ' '; echo; grep -c "[[:space:]]peer1$" /etc/hosts; grep -c "[[:space:]]`+name+`$" /etc/hosts`)
	cfg.Options = &structs.KernelOptions{Network: structs.NetworkHost}
	cfg.Hosts = map[string]string{"peer1": "192.0.2.7"}
	lines := strings.Split(runOutput(t, d, cfg), "\n")
	if len(lines) < 4 {
		t.Fatalf("output %q", lines)
	}
	if lines[0] != hostNS {
		t.Errorf("kernel in network namespace %s, want the host's %s", lines[0], hostNS)
	}
	if got := strings.Fields(lines[1]); !slices.Equal(got, ifaces) {
		t.Errorf("kernel sees interfaces %v, want the host's %v", got, ifaces)
	}
	if lines[2] != "1" || lines[3] != "1" {
		t.Errorf("/etc/hosts names peer1 %s times and the host %q %s times, want once each", lines[2], name, lines[3])
	}
	cfg = taskConfig(t, "true")
	cfg.Options = &structs.KernelOptions{Network: structs.NetworkHost}
	cfg.NetNSPath = "/proc/1/ns/net"
	if _, err := d.Start(context.Background(), cfg); !errors.Is(err, drivers.ErrInvalidConfig) {
		t.Errorf("host network with a netns path: Start err = %v, want ErrInvalidConfig", err)
	}
}

func TestBindMounts(t *testing.T) {
	d := newTestDriver(t)
	src, err := os.MkdirTemp("", "corral-mount-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(src) })
	if err := os.Chmod(src, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "hostfile"), []byte("sub1 slots=2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	rw, err := os.MkdirTemp("", "corral-mount-rw-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(rw) })
	if err := os.Chmod(rw, 0o777); err != nil {
		t.Fatal(err)
	}
	cfg := taskConfig(t, "/bin/sh", "-c", `cat /etc/corral/hostfile; { echo x > /etc/corral/new; } 2>&1; echo y > /scratch/out && echo rw-ok`)
	cfg.Mounts = []drivers.Mount{
		{Source: src, Destination: "/etc/corral", ReadOnly: true},
		{Source: rw, Destination: "/scratch"},
	}
	out := runOutput(t, d, cfg)
	for _, want := range []string{"sub1 slots=2", "Read-only file system", "rw-ok"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if b, err := os.ReadFile(filepath.Join(rw, "out")); err != nil || string(b) != "y\n" {
		t.Errorf("the read-write mount's file on the host: %q, %v", b, err)
	}
	if _, err := os.Stat(filepath.Join(src, "new")); err == nil {
		t.Error("the kernel wrote into the read-only mount")
	}
	// A command that only a mount holds (corral's helper in cluster
	// kernels) is found there, not refused as missing from the image.
	if err := os.WriteFile(filepath.Join(src, "hello"), []byte("#!/bin/sh\necho from-the-mount\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg = taskConfig(t, "/opt/tools/hello")
	cfg.Mounts = []drivers.Mount{{Source: src, Destination: "/opt/tools", ReadOnly: true}}
	if out := runOutput(t, d, cfg); !strings.Contains(out, "from-the-mount") {
		t.Errorf("a command in a mount: %q", out)
	}
	cfg = taskConfig(t, "true")
	cfg.Mounts = []drivers.Mount{{Source: filepath.Join(src, "missing"), Destination: "/x"}}
	if _, err := d.Start(context.Background(), cfg); !errors.Is(err, drivers.ErrInvalidConfig) {
		t.Errorf("missing mount source: Start err = %v, want ErrInvalidConfig", err)
	}
}

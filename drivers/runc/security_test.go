package runc

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/corral-dev/corral/plugins/drivers"
	"github.com/corral-dev/corral/plugins/drivers/testutils"
	"github.com/corral-dev/corral/structs"
)

// probeSource is a static program that tries system calls the default
// seccomp profile refuses and prints, per call, the errno it got (0: the
// call succeeded). Its arguments are harmless: where a call would pass
// seccomp it fails on them or does nothing lasting.
const probeSource = `package main

import (
	"fmt"
	"syscall"
	"unsafe"
)

func try(name string, trap uintptr, a ...uintptr) {
	var v [6]uintptr
	copy(v[:], a)
	_, _, e := syscall.Syscall6(trap, v[0], v[1], v[2], v[3], v[4], v[5])
	fmt.Printf("%s %d\n", name, uintptr(e))
}

func str(s string) uintptr { p, _ := syscall.BytePtrFromString(s); return uintptr(unsafe.Pointer(p)) }

func main() {
	// KEYCTL_GET_KEYRING_ID of the session keyring (-3), created if missing.
	try("keyctl", syscall.SYS_KEYCTL, 0, ^uintptr(2), 1)
	// BPF_MAP_CREATE with a NULL attr: EFAULT if the call got through.
	try("bpf", 321, 0, 0, 0)
	try("mount", syscall.SYS_MOUNT, str("x"), str("/mnt"), str("tmpfs"), 0, 0)
	// NULL module image: EFAULT if the call got through.
	try("init_module", syscall.SYS_INIT_MODULE, 0, 0, str(""))
	// NULL timespec: EFAULT if the call got through.
	try("clock_settime", syscall.SYS_CLOCK_SETTIME, 0, 0)
	try("settimeofday", syscall.SYS_SETTIMEOFDAY, 0, 0)
	// SWAP_FLAG-less swapon of a missing file: ENOENT if the call got through.
	try("swapon", syscall.SYS_SWAPON, str("/nonexistent"), 0)
	// BTRFS_IOC_SUBVOL_CREATE and SNAP_CREATE_V2 on / (not btrfs): ENOTTY
	// if the call got through; the same with the high 32 bits set (the
	// kernel reads the low 32); TCGETS on / gets through (ENOTTY).
	root, _ := syscall.Open("/", syscall.O_RDONLY|syscall.O_DIRECTORY, 0)
	args := make([]byte, 4096)
	try("btrfs_subvol_create", syscall.SYS_IOCTL, uintptr(root), 0x5000940e, uintptr(unsafe.Pointer(&args[0])))
	try("btrfs_snap_create_v2", syscall.SYS_IOCTL, uintptr(root), 0x50009417, uintptr(unsafe.Pointer(&args[0])))
	try("btrfs_subvol_create_high", syscall.SYS_IOCTL, uintptr(root), 0xffffffff5000940e, uintptr(unsafe.Pointer(&args[0])))
	try("ioctl_tcgets", syscall.SYS_IOCTL, uintptr(root), 0x5401, uintptr(unsafe.Pointer(&args[0])))
	try("ioctl_near", syscall.SYS_IOCTL, uintptr(root), 0x5000940f, uintptr(unsafe.Pointer(&args[0])))
}
`

var (
	probeOnce sync.Once
	probeBin  []byte
	probeErr  error
)

// seccompProbe builds probeSource with CGO_ENABLED=0 and returns the
// executable; it skips the test without a Go toolchain.
func seccompProbe(t *testing.T) []byte {
	t.Helper()
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(goBin); err != nil {
		if goBin, err = exec.LookPath("go"); err != nil {
			t.Skip("no Go toolchain to build the seccomp probe with")
		}
	}
	probeOnce.Do(func() {
		dir, err := os.MkdirTemp("", "corral-seccomp-probe-")
		if err != nil {
			probeErr = err
			return
		}
		defer os.RemoveAll(dir)
		if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(probeSource), 0o644); err != nil {
			probeErr = err
			return
		}
		cmd := exec.Command(goBin, "build", "-o", "probe", "main.go")
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GO111MODULE=off", "GOFLAGS=")
		if out, err := cmd.CombinedOutput(); err != nil {
			probeErr = errors.New(string(out))
			return
		}
		probeBin, probeErr = os.ReadFile(filepath.Join(dir, "probe"))
	})
	if probeErr != nil {
		t.Fatalf("building the seccomp probe: %v", probeErr)
	}
	return probeBin
}

// probeImage returns a copy of the test image with the seccomp probe at
// /probe.
func probeImage(t *testing.T) string {
	t.Helper()
	bin := seccompProbe(t)
	dir := filepath.Join(t.TempDir(), "image")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := copyTree(testImage(t), dir, 0); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "probe"), bin, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// probeScript runs the probe and the busybox checks in a kernel.
const probeScript = `grep Seccomp: /proc/self/status | tr -d '\t '
if unshare -U true 2>/dev/null; then echo unshare-U ok; else echo unshare-U refused; fi
if mount -t tmpfs x /mnt 2>/dev/null; then echo mount-tmpfs ok; else echo mount-tmpfs refused; fi
/probe`

// probeResults runs probeScript in a kernel of d and returns its lines
// as name → value.
func probeResults(t *testing.T, d *Driver, image string) map[string]string {
	t.Helper()
	cfg := taskConfig(t, "/bin/sh", "-c", probeScript)
	cfg.RootFS = image
	out := runOutput(t, d, cfg)
	got := map[string]string{}
	for line := range strings.Lines(out) {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), " "); ok {
			got[k] = v
		} else if k, v, ok := strings.Cut(strings.TrimSpace(line), ":"); ok {
			got[k] = v
		}
	}
	t.Logf("probe: %v", got)
	return got
}

func TestSeccompDefaultProfile(t *testing.T) {
	if !seccompBuilt {
		t.Skip("built without -tags seccomp: libcontainer cannot load seccomp filters (make test passes the tag)")
	}
	image := probeImage(t)
	const eperm = "1"

	got := probeResults(t, newTestDriver(t), image)
	want := map[string]string{
		"Seccomp": "2", "unshare-U": "refused", "mount-tmpfs": "refused", "mount": eperm,
		"keyctl": eperm, "bpf": eperm, "init_module": eperm,
		"clock_settime": eperm, "settimeofday": eperm, "swapon": eperm,
		// btrfs subvolumes would escape a volume's quota (agent/quota.go);
		// other ioctls get through.
		"btrfs_subvol_create": eperm, "btrfs_snap_create_v2": eperm, "btrfs_subvol_create_high": eperm,
		"ioctl_tcgets": "25", "ioctl_near": "25",
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("with the default profile: %s = %q, want %q", k, got[k], w)
		}
	}

	// Without the profile the same calls get past the filter: the profile
	// is what refuses them, not the capabilities alone.
	off := probeResults(t, newTestDriver(t, WithSeccomp(false)), image)
	if off["Seccomp"] != "0" || off["unshare-U"] != "ok" || off["keyctl"] == eperm || off["bpf"] == eperm || off["clock_settime"] == eperm {
		t.Errorf("with -runc-seccomp=false: %v, want no filter, unshare -U ok and keyctl, bpf, clock_settime past the filter", off)
	}
}

func TestUserNamespace(t *testing.T) {
	d := newTestDriver(t, WithUserNS(UserNSOn))
	if err := d.usernsWanted(); err != nil {
		t.Skipf("no user namespaces here: %v", err)
	}
	script := `cat /proc/self/uid_map /proc/self/gid_map
id -u; stat -c %u /bin/busybox /home/alice; touch /tmp/new && stat -c %u /tmp/new; echo ready; exec sleep 1000`
	var ranges []string
	for i := range 2 {
		cfg := taskConfig(t, "/bin/sh", "-c", script)
		testutils.StartTask(t, d, cfg)
		testutils.WaitForLog(t, cfg.StdoutPath, "ready", testTimeout)
		lines := strings.Fields(testutils.ReadLog(t, cfg.StdoutPath))
		// uid_map: 0 base 65536, gid_map: the same; id -u; owners; ready
		if len(lines) < 11 {
			t.Fatalf("kernel %d printed %q", i, lines)
		}
		base, _ := strconv.ParseUint(lines[1], 10, 32)
		if lines[0] != "0" || base < idRangeBase || lines[2] != "65536" || lines[4] != lines[1] {
			t.Errorf("kernel %d: uid_map, gid_map = %q, want 0 <base ≥ %d> 65536 for both", i, lines[:6], idRangeBase)
		}
		if got := lines[6:10]; strings.Join(got, " ") != "0 0 1234 0" {
			t.Errorf("kernel %d: id -u and owners of /bin/busybox, /home/alice, /tmp/new = %v, want 0 0 1234 0", i, got)
		}
		// On the host, the kernel's new file belongs to its mapped root.
		tk, err := d.get(cfg.ID)
		if err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(filepath.Join(tk.state.RootFS.scratchDir(), "tmp/new"))
		if err != nil {
			t.Fatal(err)
		}
		if owner := fi.Sys().(*syscall.Stat_t).Uid; uint64(owner) != base {
			t.Errorf("kernel %d: host owner of its new file = %d, want %d", i, owner, base)
		}
		ranges = append(ranges, lines[1])
	}
	if ranges[0] == ranges[1] {
		t.Errorf("two running kernels share the host id range at %s", ranges[0])
	}
	// A start that fails gives its range back.
	bad := taskConfig(t, "/no/such/program")
	if _, err := d.Start(context.Background(), bad); err == nil {
		t.Fatal("start of a missing program succeeded")
	}
	d.ids.mu.Lock()
	inUse := len(d.ids.used)
	d.ids.mu.Unlock()
	if inUse != 2 {
		t.Errorf("%d id ranges in use after a failed start, want the 2 of the running kernels", inUse)
	}

	off := newTestDriver(t, WithUserNS(UserNSOff))
	cfg := taskConfig(t, "cat", "/proc/self/uid_map")
	if got := strings.Fields(runOutput(t, off, cfg)); strings.Join(got, " ") != "0 0 4294967295" {
		t.Errorf("with -userns=false: uid_map = %q, want the host's", got)
	}
}

func TestPidsLimitStopsForkBomb(t *testing.T) {
	d := newTestDriver(t)
	cfg := taskConfig(t, "/bin/sh", "-c", `echo ready; b() { b | b & }; b; sleep 1000`)
	cfg.Resources = structs.Slots{SlotPids: structs.Whole(64)}
	testutils.StartTask(t, d, cfg)
	testutils.WaitForLog(t, cfg.StdoutPath, "ready", testTimeout)
	tk, err := d.get(cfg.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got := cgroupFile(t, tk, "pids", "pids.max", "pids.max"); got != "64" {
		t.Fatalf("pids.max = %s, want the pids slot's 64", got)
	}
	// The bomb runs into the limit (the controller counts the forks it
	// refused: pids.events "max N") and never past it. Sampling for
	// exactly 64 processes would race with the bomb's dying branches.
	deadline := time.Now().Add(testTimeout)
	for {
		n, _ := strconv.Atoi(cgroupFile(t, tk, "pids", "pids.current", "pids.current"))
		if n > 64 {
			t.Fatalf("pids.current = %d, over the limit of 64", n)
		}
		refused := 0
		if ev := cgroupFile(t, tk, "pids", "pids.events", "pids.events"); strings.HasPrefix(ev, "max ") {
			refused, _ = strconv.Atoi(strings.TrimPrefix(ev, "max "))
		}
		if n == 64 || refused > 0 {
			t.Logf("fork bomb: %d processes, %d forks refused at the limit", n, refused)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the fork bomb reached only %d processes and no fork was refused", n)
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)
	if n, _ := strconv.Atoi(cgroupFile(t, tk, "pids", "pids.current", "pids.current")); n > 64 {
		t.Fatalf("pids.current = %d, over the limit of 64", n)
	}
	// And the kernel can still be stopped and cleaned up.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := d.Stop(ctx, cfg.ID, time.Second, "SIGKILL"); err != nil {
		t.Fatal(err)
	}
	if err := d.Destroy(ctx, cfg.ID, true); err != nil {
		t.Fatal(err)
	}
}

func TestDiskLimitStopsKernel(t *testing.T) {
	defer func(old time.Duration) { diskCheckInterval = old }(diskCheckInterval)
	diskCheckInterval = 50 * time.Millisecond
	d := newTestDriver(t)
	cfg := taskConfig(t, "/bin/sh", "-c", `echo ready; dd if=/dev/zero of=/tmp/big bs=1M count=32 2>/dev/null; echo written; exec sleep 1000`)
	cfg.Resources = structs.Slots{SlotDisk: structs.Whole(8 << 20)}
	testutils.StartTask(t, d, cfg)
	res := testutils.WaitResult(t, d, cfg.ID, testTimeout)
	if !errors.Is(res.Err, ErrDiskLimit) || !errors.Is(res.Err, drivers.ErrStoppedByDriver) {
		t.Fatalf("result = %+v, want an error wrapping ErrDiskLimit and drivers.ErrStoppedByDriver", res)
	}
	if want := "kernel wrote more than 8 MiB to its scratch space (disk slot)"; !strings.Contains(res.Err.Error(), want) {
		t.Errorf("reason = %q, want it to say %q", res.Err, want)
	}

	// Under the limit nothing happens.
	ok := taskConfig(t, "/bin/sh", "-c", `dd if=/dev/zero of=/tmp/small bs=1M count=2 2>/dev/null; sleep 0.5; echo fine`)
	ok.Resources = structs.Slots{SlotDisk: structs.Whole(8 << 20)}
	if out := runOutput(t, d, ok); out != "fine\n" {
		t.Errorf("kernel under its disk limit printed %q", out)
	}
}

func TestLogCapped(t *testing.T) {
	const limit = 64 << 10
	d := newTestDriver(t, WithMaxLogSize(limit))
	cfg := taskConfig(t, "/bin/sh", "-c", `head -c 1000000 /dev/zero | tr '\0' a; echo; echo END; head -c 300000 /dev/zero | tr '\0' b >&2`)
	runOutput(t, d, cfg)
	for _, p := range []string{cfg.StdoutPath, cfg.StderrPath} {
		var total int64
		for _, f := range []string{p, p + ".1"} {
			fi, err := os.Stat(f)
			if err != nil {
				t.Fatal(err)
			}
			total += fi.Size()
		}
		if total > limit {
			t.Errorf("%s and its .1 hold %d bytes, over the cap of %d", p, total, limit)
		}
		if total < limit/2 {
			t.Errorf("%s and its .1 hold %d bytes, want the last %d at least", p, total, limit/2)
		}
	}
	if out := testutils.ReadLog(t, cfg.StdoutPath); !strings.HasSuffix(out, "aaaa\nEND\n") {
		t.Errorf("stdout log does not end with the output's end: ...%q", out[max(0, len(out)-20):])
	}
}

// TestConfinementSurvivesRecover checks that an agent that recovers a
// kernel keeps its user namespace id range reserved and its disk limit
// watched.
func TestConfinementSurvivesRecover(t *testing.T) {
	defer func(old time.Duration) { diskCheckInterval = old }(diskCheckInterval)
	diskCheckInterval = 50 * time.Millisecond
	stateDir := t.TempDir()
	ctx := context.Background()
	// The first driver (the agent before its restart) watches no disk
	// use; the handle the second one recovers says 8 MiB.
	first := newTestDriver(t, WithStateDir(stateDir), WithDiskLimit(0))
	cfg := taskConfig(t, "/bin/sh", "-c", `echo ready; while [ ! -e /tmp/go ]; do sleep 0.05; done; dd if=/dev/zero of=/tmp/big bs=1M count=32 2>/dev/null; exec sleep 1000`)
	h := testutils.StartTask(t, first, cfg)
	testutils.WaitForLog(t, cfg.StdoutPath, "ready", testTimeout)
	var st driverState
	if err := json.Unmarshal(h.DriverState, &st); err != nil || st.DiskLimit != 0 {
		t.Fatalf("driver state %s: %v, want no disk limit", h.DriverState, err)
	}
	st.DiskLimit = 8 << 20
	b, _ := json.Marshal(h)
	var persisted drivers.TaskHandle
	if err := json.Unmarshal(b, &persisted); err != nil {
		t.Fatal(err)
	}
	var err error
	if persisted.DriverState, err = json.Marshal(st); err != nil {
		t.Fatal(err)
	}
	second := newTestDriver(t, WithStateDir(stateDir))
	if err := second.Recover(ctx, &persisted); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		dctx, cancel := context.WithTimeout(ctx, testTimeout)
		defer cancel()
		_ = second.Destroy(dctx, cfg.ID, true)
	})
	tk, err := second.get(cfg.ID)
	if err != nil {
		t.Fatal(err)
	}
	if ids := tk.state.RootFS.IDs; ids != nil {
		if next, err := second.ids.alloc("other"); err != nil || next.Index == ids.Index {
			t.Errorf("after Recover the kernel's id range %d is handed out again (%+v, %v)", ids.Index, next, err)
		}
	}
	if err := os.WriteFile(filepath.Join(tk.state.RootFS.RootFS, "tmp/go"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	res := testutils.WaitResult(t, second, cfg.ID, testTimeout)
	if !errors.Is(res.Err, ErrDiskLimit) {
		t.Fatalf("recovered result = %+v, want an error wrapping ErrDiskLimit", res)
	}
}

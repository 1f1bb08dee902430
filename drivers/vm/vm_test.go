package vm_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/corral-dev/corral/drivers/vm"
	"github.com/corral-dev/corral/plugins/drivers"
	"github.com/corral-dev/corral/plugins/drivers/testutils"
	"github.com/corral-dev/corral/structs"
)

// vmTimeout bounds each wait for a VM: a software-emulated (TCG) boot on a
// busy 2-core machine takes 10 to 30 seconds.
const vmTimeout = 3 * time.Minute

var (
	prepOnce sync.Once
	prepSkip string
)

// testConfig prepares the guest (make vm-guest's script: the cached
// kernel, a fresh initramfs with this tree's guest agent) once per test
// binary and returns the driver's configuration, TCG: on this kind of
// machine /dev/kvm, where it exists, is a nested host on which stock guest
// kernels hang. It skips the test where qemu or the guest's kernel cannot
// be had.
func testConfig(t testing.TB) vm.Config {
	t.Helper()
	prepOnce.Do(func() {
		if os.Geteuid() != 0 {
			prepSkip = "the vm driver's tests need root (cgroups, /run/corral-vm)"
			return
		}
		if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
			prepSkip = "qemu-system-x86_64 is not installed (make deps installs qemu-system-x86)"
			return
		}
		out, err := exec.Command("../../scripts/vm-guest.sh").CombinedOutput()
		if err != nil {
			prepSkip = fmt.Sprintf("cannot prepare the guest kernel and initramfs: %v: %s", err, strings.TrimSpace(string(out)))
		}
	})
	if prepSkip != "" {
		t.Skip(prepSkip)
	}
	c := vm.DefaultConfig()
	c.Accel = vm.AccelTCG
	return c
}

func newDriver(t *testing.T) drivers.Driver {
	t.Helper()
	return testutils.InMemoryPlugin(t, vm.New(testConfig(t), testutils.TestLogger(t)))
}

// vmTask is a task config with small VM resources.
func vmTask(t *testing.T, command ...string) *drivers.TaskConfig {
	cfg := testutils.TaskConfig(t, command...)
	cfg.Resources = structs.Slots{structs.SlotCPU: structs.Whole(1), structs.SlotMem: structs.Whole(160 << 20)}
	return cfg
}

// TestConformance runs the driver conformance suite on VMs. The pids a
// task prints are the guest's: on the host, all of them are the VM's qemu
// process.
func TestConformance(t *testing.T) {
	cfg := testConfig(t)
	var raws sync.Map // task ID -> *vm.Driver
	testutils.RunConformance(t, func(t *testing.T) drivers.Driver {
		raw := vm.New(cfg, testutils.TestLogger(t))
		return &smallVMs{Driver: testutils.InMemoryPlugin(t, raw), raw: raw, raws: &raws}
	}, testutils.WithTimeout(vmTimeout), testutils.WithHostPids(func(t testing.TB, _ drivers.Driver, id string, _ []int) []int {
		raw, ok := raws.Load(id)
		if !ok {
			t.Fatalf("task %s was not started by this test", id)
		}
		pid, err := raw.(*vm.Driver).QemuPid(id)
		if err != nil {
			t.Fatal(err)
		}
		return []int{pid}
	}))
}

// smallVMs starts the suite's tasks with small VM resources and notes
// which driver runs each.
type smallVMs struct {
	drivers.Driver
	raw  *vm.Driver
	raws *sync.Map
}

func (s *smallVMs) Start(ctx context.Context, cfg *drivers.TaskConfig) (*drivers.TaskHandle, error) {
	if cfg != nil {
		cfg.Resources = structs.Slots{structs.SlotCPU: structs.Whole(1), structs.SlotMem: structs.Whole(128 << 20)}
		s.raws.Store(cfg.ID, s.raw)
	}
	return s.Driver.Start(ctx, cfg)
}

// TestExecStopDestroy execs into a running VM (with stdin and both
// streams), stops it with an ACPI shutdown that the guest turns into
// SIGTERM, and checks that Destroy leaves no qemu process, file, socket or
// cgroup behind.
func TestExecStopDestroy(t *testing.T) {
	raw := vm.New(testConfig(t), testutils.TestLogger(t))
	d := testutils.InMemoryPlugin(t, raw)
	cfg := vmTask(t, "/bin/sh", "-c", "echo booted; exec sleep 1000")
	h := testutils.StartTask(t, d, cfg)
	start := time.Now()
	testutils.WaitForLog(t, cfg.StdoutPath, "booted", vmTimeout)
	t.Logf("FIGURE vm_tcg_boot_to_command_seconds=%.1f", time.Since(start).Seconds())

	st, err := d.Stats(context.Background(), cfg.ID)
	if err != nil {
		t.Fatalf("Stats: %v", err)
	}
	t.Logf("FIGURE vm_qemu_rss_mib=%d (VM memory 160 MiB)", st.MemoryRSSBytes>>20)
	if st.MemoryRSSBytes == 0 || st.Pids != 1 {
		t.Errorf("Stats = %+v, want qemu's memory and one process", st)
	}

	stdinR, stdinW := io.Pipe()
	go func() {
		_, _ = io.WriteString(stdinW, "ping\n")
		stdinW.Close()
	}()
	var stdout, stderr testutils.SafeBuffer
	code, err := d.Exec(context.Background(), cfg.ID, &drivers.ExecOptions{
		Command: []string{"/bin/sh", "-c", `read line; echo "got $line in $(hostname) $FOO"; echo err >&2; exit 5`},
		Env:     map[string]string{"FOO": "bar"},
		Stdin:   stdinR, Stdout: &stdout, Stderr: &stderr,
	})
	if err != nil || code != 5 {
		t.Fatalf("Exec = %d, %v; want 5", code, err)
	}
	if got := stdout.String(); got != "got ping in kernel bar\n" {
		t.Errorf("exec stdout = %q", got)
	}
	if got := stderr.String(); got != "err\n" {
		t.Errorf("exec stderr = %q", got)
	}
	if _, err := d.Exec(context.Background(), cfg.ID, &drivers.ExecOptions{Command: []string{"true"}, TTY: true}); !errors.Is(err, drivers.ErrNotSupported) {
		t.Errorf("Exec with a TTY: err = %v, want ErrNotSupported", err)
	}

	if err := d.Stop(context.Background(), cfg.ID, vmTimeout, "SIGTERM"); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	res := testutils.WaitResult(t, d, cfg.ID, vmTimeout)
	if res.Signal != 15 || res.ExitCode != 143 {
		t.Errorf("result after an ACPI shutdown = %+v, want SIGTERM (143) from the guest", res)
	}
	var hs struct {
		Pid       int    `json:"pid"`
		Dir       string `json:"dir"`
		SocketDir string `json:"socket_dir"`
		Cgroup    *struct {
			Dirs map[string]string `json:"dirs"`
		} `json:"cgroup"`
	}
	if err := json.Unmarshal(h.DriverState, &hs); err != nil {
		t.Fatalf("driver state %s: %v", h.DriverState, err)
	}
	if b, err := os.ReadFile(filepath.Join(hs.Dir, "console.log")); err != nil || !strings.Contains(string(b), "ACPI power button") {
		t.Errorf("the guest's console log does not show the ACPI power button press (err %v):\n%s", err, b)
	}
	if err := d.Destroy(context.Background(), cfg.ID, false); err != nil {
		t.Fatalf("Destroy: %v", err)
	}
	if !testutils.ProcessGone(hs.Pid) {
		t.Errorf("qemu (pid %d) still runs after Destroy", hs.Pid)
	}
	leftovers := []string{hs.Dir, hs.SocketDir}
	if hs.Cgroup != nil {
		for _, dir := range hs.Cgroup.Dirs {
			leftovers = append(leftovers, dir)
		}
	}
	for _, p := range leftovers {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s is left after Destroy (err %v)", p, err)
		}
	}
	if _, err := d.Inspect(context.Background(), cfg.ID); !errors.Is(err, drivers.ErrTaskNotFound) {
		t.Errorf("Inspect after Destroy: %v, want ErrTaskNotFound", err)
	}
}

// TestImageRoot runs a command in an image's root (here a directory with
// a static busybox and a marker file, as the agent's image store unpacks
// one) with the image's entrypoint, environment and working directory.
func TestImageRoot(t *testing.T) {
	d := newDriver(t)
	root := t.TempDir()
	for _, dir := range []string{"bin", "etc", "srv"} {
		if err := os.MkdirAll(filepath.Join(root, dir), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Skipf("a static busybox for the test image: %v", err)
	}
	if err := os.WriteFile(filepath.Join(root, "bin", "busybox"), bb, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, applet := range []string{"sh", "cat", "echo", "pwd"} {
		if err := os.Symlink("busybox", filepath.Join(root, "bin", applet)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "etc", "image-release"), []byte("corral-test-image\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := vmTask(t, `cat /etc/image-release; echo "$IMGVAR $FOO"; pwd`)
	cfg.WorkDir = ""
	cfg.RootFS = root
	cfg.Env = map[string]string{"FOO": "from-task"}
	cfg.ImageConfig = &drivers.ImageConfig{Entrypoint: []string{"/bin/sh", "-c"}, Env: []string{"IMGVAR=from-image"}, WorkingDir: "/srv"}
	testutils.StartTask(t, d, cfg)
	if res := testutils.WaitResult(t, d, cfg.ID, vmTimeout); !res.Successful() {
		t.Fatalf("result = %+v; stderr %q", res, testutils.ReadLog(t, cfg.StderrPath))
	}
	if got, want := testutils.ReadLog(t, cfg.StdoutPath), "corral-test-image\nfrom-image from-task\n/srv\n"; got != want {
		t.Errorf("stdout = %q, want %q", got, want)
	}
}

// TestNetwork puts a VM on a kernel's network as the agent prepares it (a
// namespace whose veth has an address and a default route): the guest
// pings the host's end, and Destroy removes the tap and bridge and gives
// the veth its MAC back.
func TestNetwork(t *testing.T) {
	d := newDriver(t)
	suffix := fmt.Sprintf("%04x", time.Now().UnixNano()&0xffff)
	ns, hostIf := "corral-vmtest-"+suffix, "vmt"+suffix
	subnet := fmt.Sprintf("10.213.%d", time.Now().UnixNano()%200+20)
	run := func(args ...string) string {
		t.Helper()
		out, err := exec.Command("ip", args...).CombinedOutput()
		if err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("the ip command (iproute2) is not installed")
	}
	run("netns", "add", ns)
	t.Cleanup(func() {
		_ = exec.Command("ip", "link", "del", hostIf).Run()
		_ = exec.Command("ip", "netns", "del", ns).Run()
	})
	run("link", "add", hostIf, "type", "veth", "peer", "name", "eth0", "netns", ns)
	run("addr", "add", subnet+".1/24", "dev", hostIf)
	run("link", "set", hostIf, "up")
	run("-n", ns, "addr", "add", subnet+".2/24", "dev", "eth0")
	run("-n", ns, "link", "set", "eth0", "up")
	run("-n", ns, "route", "add", "default", "via", subnet+".1")
	macBefore := run("-n", ns, "-br", "link", "show", "eth0")

	// The guest pings the host (three echoes: on a busy machine the first
	// one, sent while the new tap and bridge settle, may be lost), then
	// serves a line on TCP port 7000 once,
	// which the host fetches from the guest's (the kernel's) address.
	cfg := vmTask(t, "/bin/sh", "-c", "ip -4 -o addr show; ip route; sed 's/^/resolv: /' /etc/resolv.conf; ping -c 3 -W 20 "+subnet+".1 && echo reachable; "+
		"echo line from the guest | nc -l -p 7000 && echo served")
	cfg.NetNSPath = "/run/netns/" + ns
	testutils.StartTask(t, d, cfg)
	var got string
	deadline := time.Now().Add(vmTimeout)
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", subnet+".2:7000", 5*time.Second)
		if err == nil {
			_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
			b, _ := io.ReadAll(c)
			c.Close()
			if got = string(b); strings.Contains(got, "line from the guest") {
				break
			}
		}
		time.Sleep(500 * time.Millisecond)
	}
	if !strings.Contains(got, "line from the guest") {
		t.Errorf("host -> guest TCP: read %q from %s.2:7000, want the guest's line", got, subnet)
	}
	res := testutils.WaitResult(t, d, cfg.ID, vmTimeout)
	out := testutils.ReadLog(t, cfg.StdoutPath)
	if !res.Successful() || !strings.Contains(out, "reachable") || !strings.Contains(out, "served") {
		t.Fatalf("result %+v; stdout:\n%s\nstderr:\n%s", res, out, testutils.ReadLog(t, cfg.StderrPath))
	}
	hostResolv, _ := os.ReadFile("/etc/resolv.conf")
	for _, line := range strings.Split(string(hostResolv), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || f[0] != "nameserver" || net.ParseIP(f[1]) == nil || net.ParseIP(f[1]).IsLoopback() {
			continue
		}
		if !strings.Contains(out, "resolv: "+line) {
			t.Errorf("the guest's /etc/resolv.conf lacks the host's %q:\n%s", line, out)
		}
	}
	if !strings.Contains(out, subnet+".2/24") || !strings.Contains(out, "default via "+subnet+".1") {
		t.Errorf("the guest's addresses and routes:\n%s", out)
	}
	if err := d.Destroy(context.Background(), cfg.ID, false); err != nil {
		t.Fatalf("Destroy: %v", err)
	}
	links := run("-n", ns, "-br", "link")
	if strings.Contains(links, "vmtap") || strings.Contains(links, "vmbr") {
		t.Errorf("tap or bridge left in the kernel's namespace after Destroy:\n%s", links)
	}
	if after := run("-n", ns, "-br", "link", "show", "eth0"); after != macBefore {
		t.Errorf("eth0 after Destroy = %q, want %q as before the VM", after, macBefore)
	}
}

// TestRecoveryConformance runs the recovery scenarios: the restart is a
// new driver behind a new plugin connection, as a relaunched plugin
// process has.
func TestRecoveryConformance(t *testing.T) {
	cfg := testConfig(t)
	newOne := func(t *testing.T) drivers.Driver {
		return testutils.InMemoryPlugin(t, vm.New(cfg, testutils.TestLogger(t)))
	}
	testutils.RunRecoveryConformance(t, newOne, func(t *testing.T, _ drivers.Driver) drivers.Driver { return newOne(t) }, vmTimeout)
}

func TestInvalidConfig(t *testing.T) {
	d := newDriver(t)
	for name, mod := range map[string]func(*drivers.TaskConfig){
		"no command":    func(c *drivers.TaskConfig) { c.Command = nil },
		"empty program": func(c *drivers.TaskConfig) { c.Command = []string{""} },
		"empty ID":      func(c *drivers.TaskConfig) { c.ID = "" },
		"devices": func(c *drivers.TaskConfig) {
			c.Devices = &structs.DeviceReservation{Nodes: []structs.DeviceNode{{Path: "/dev/nvidia0", Type: "c", Major: 195, Minor: 0, Perms: "rwm"}}}
		},
	} {
		t.Run(name, func(t *testing.T) {
			cfg := vmTask(t, "true")
			mod(cfg)
			if _, err := d.Start(context.Background(), cfg); !errors.Is(err, drivers.ErrInvalidConfig) {
				t.Errorf("Start: err = %v, want ErrInvalidConfig", err)
			}
			if _, err := os.Stat(filepath.Join(cfg.TaskDir, "vm")); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("a refused start left %s/vm", cfg.TaskDir)
			}
		})
	}
}

func TestFingerprint(t *testing.T) {
	d := newDriver(t)
	fp, err := d.Fingerprint(context.Background())
	if err != nil || fp.Health != drivers.HealthHealthy {
		t.Fatalf("Fingerprint = %+v, %v; want healthy", fp, err)
	}
	if fp.Attributes["driver.vm.accel"] != vm.AccelTCG {
		t.Errorf("attributes = %v, want driver.vm.accel tcg", fp.Attributes)
	}
	bad := vm.DefaultConfig()
	bad.Kernel = filepath.Join(t.TempDir(), "no-kernel")
	fp, err = vm.New(bad, nil).Fingerprint(context.Background())
	if err != nil || fp.Health != drivers.HealthUndetected || !strings.Contains(fp.Description, "make vm-guest") {
		t.Errorf("Fingerprint without a kernel = %+v, %v; want undetected, saying to run make vm-guest", fp, err)
	}
}

// TestAutoAccel fingerprints with the accelerator "auto": KVM if a probe
// VM boots under it, else TCG, said in one log line. Where /dev/kvm is
// missing the probe ends at once; where it hangs (a nested host), after
// its 20 s timeout.
func TestAutoAccel(t *testing.T) {
	cfg := testConfig(t)
	cfg.Accel = vm.AccelAuto
	var logs testutils.SafeBuffer
	d := vm.New(cfg, slog.New(slog.NewTextHandler(&logs, nil)))
	fp, err := d.Fingerprint(context.Background())
	if err != nil || fp.Health != drivers.HealthHealthy {
		t.Fatalf("Fingerprint = %+v, %v", fp, err)
	}
	accel := fp.Attributes["driver.vm.accel"]
	t.Logf("auto chose %s; log: %s", accel, logs.String())
	switch accel {
	case vm.AccelKVM:
		if !strings.Contains(logs.String(), "VMs use KVM") {
			t.Errorf("no log line says KVM is used: %s", logs.String())
		}
	case vm.AccelTCG:
		if n := strings.Count(logs.String(), "KVM does not work here"); n != 1 {
			t.Errorf("%d log lines about the fallback to TCG, want 1: %s", n, logs.String())
		}
		if _, err := d.Fingerprint(context.Background()); err != nil || strings.Count(logs.String(), "KVM does not work here") != 1 {
			t.Errorf("a second fingerprint probed again: %s", logs.String())
		}
	default:
		t.Errorf("driver.vm.accel = %q", accel)
	}
}

// TestVolumes: a task's volumes are shared live with the guest over
// virtio-9p, not copied: the guest reads what the host put there, what it
// writes lands on the host as the volume's owner, and a read-only volume
// refuses writes.
func TestVolumes(t *testing.T) {
	d := newDriver(t)
	base := t.TempDir()
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	rw, ro := filepath.Join(base, "rw"), filepath.Join(base, "ro")
	for _, dir := range []string{rw, ro} {
		if err := os.Mkdir(dir, 0o750); err != nil {
			t.Fatal(err)
		}
	}
	const owner = 65534
	if err := os.Chown(rw, owner, owner); err != nil {
		t.Fatal(err)
	}
	// The read-only volume is the owner's too: only qemu's readonly=on
	// (not the guest's read-only mount, which guest root could remount,
	// nor host permissions) keeps the guest from writing.
	if err := os.Chown(ro, owner, owner); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(rw, "in.txt"), []byte("from-host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(ro, "hello"), []byte("read-only\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := vmTask(t, "/bin/sh", "-c", `cat /data/in.txt; echo from-vm > /data/out.txt && mkdir /data/sub && echo wrote;
cat /ro/hello; mount -o remount,rw /ro; if echo x > /ro/x; then echo ro-writable; else echo ro-refused; fi`)
	cfg.Mounts = append(cfg.Mounts,
		drivers.Mount{Source: rw, Destination: "/data", Volume: true, Owner: &drivers.MountOwner{UID: owner, GID: owner}},
		drivers.Mount{Source: ro, Destination: "/ro", ReadOnly: true, Volume: true, Owner: &drivers.MountOwner{UID: owner, GID: owner}})
	testutils.StartTask(t, d, cfg)
	res := testutils.WaitResult(t, d, cfg.ID, vmTimeout)
	stdout := testutils.ReadLog(t, cfg.StdoutPath)
	if want := "from-host\nwrote\nread-only\nro-refused\n"; !res.Successful() || stdout != want {
		t.Fatalf("result %+v, stdout %q (stderr %q); want %q", res, stdout, testutils.ReadLog(t, cfg.StderrPath), want)
	}
	b, err := os.ReadFile(filepath.Join(rw, "out.txt"))
	if err != nil || string(b) != "from-vm\n" {
		t.Fatalf("the guest's file on the host: %q, %v", b, err)
	}
	for _, p := range []string{filepath.Join(rw, "out.txt"), filepath.Join(rw, "sub")} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if uid := fi.Sys().(*syscall.Stat_t).Uid; uid != owner {
			t.Errorf("%s belongs to uid %d on the host, want the volume's owner %d", p, uid, owner)
		}
	}
	if _, err := os.Stat(filepath.Join(ro, "x")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the read-only volume got a file (err %v)", err)
	}
}

// TestVolumeThroughputFigure (figures only: CORRAL_FIGURES=1) writes and
// reads 64 MiB in the guest on a 9p volume and on the guest's own tmpfs,
// timed in the guest.
func TestVolumeThroughputFigure(t *testing.T) {
	if os.Getenv("CORRAL_FIGURES") == "" {
		t.Skip("figures only: set CORRAL_FIGURES=1")
	}
	d := newDriver(t)
	vol := t.TempDir()
	if err := os.Chmod(vol, 0o777); err != nil {
		t.Fatal(err)
	}
	cfg := vmTask(t, "/bin/sh", "-c", `now() { cut -d' ' -f1 /proc/uptime; }
for dir in /data /tmp; do
  a=$(now); dd if=/dev/zero of=$dir/blob bs=1M count=64 conv=fsync 2>/dev/null; b=$(now)
  dd if=$dir/blob of=/dev/null bs=1M 2>/dev/null; c=$(now); rm $dir/blob
  awk -v d=$dir -v a=$a -v b=$b -v c=$c 'BEGIN { printf "%s write %.1f MiB/s, read %.1f MiB/s\n", d, 64/(b-a), 64/(c-b) }'
done`)
	cfg.Resources[structs.SlotMem] = structs.Whole(256 << 20)
	cfg.Mounts = append(cfg.Mounts, drivers.Mount{Source: vol, Destination: "/data", Volume: true, Owner: &drivers.MountOwner{UID: 65534, GID: 65534}})
	testutils.StartTask(t, d, cfg)
	if res := testutils.WaitResult(t, d, cfg.ID, vmTimeout); !res.Successful() {
		t.Fatalf("result %+v, stderr %q", res, testutils.ReadLog(t, cfg.StderrPath))
	}
	t.Logf("FIGURE vm 64 MiB in the guest (TCG), 9p volume vs guest tmpfs:\n%s", testutils.ReadLog(t, cfg.StdoutPath))
}

// TestVolumesRefusedAsRoot: volumes that qemu would serve as host root (no
// owner, run_as empty) are refused before anything is made.
func TestVolumesRefusedAsRoot(t *testing.T) {
	c := testConfig(t)
	c.RunAs = ""
	d := testutils.InMemoryPlugin(t, vm.New(c, testutils.TestLogger(t)))
	cfg := vmTask(t, "/bin/true")
	cfg.Mounts = append(cfg.Mounts, drivers.Mount{Source: t.TempDir(), Destination: "/data", Volume: true})
	_, err := d.Start(context.Background(), cfg)
	if !errors.Is(err, drivers.ErrInvalidConfig) || !strings.Contains(err.Error(), "qemu would serve as host root") {
		t.Fatalf("Start: err = %v, want ErrInvalidConfig saying qemu would serve the volumes as host root", err)
	}
	if _, err := os.Stat(filepath.Join(cfg.TaskDir, "vm")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a refused start left %s/vm", cfg.TaskDir)
	}
}

// TestVolumeSurvivesPluginRestart: a VM keeps its live volume across a
// plugin restart (a new driver recovers the task): the guest goes on
// seeing the host's writes and writing the host's files.
func TestVolumeSurvivesPluginRestart(t *testing.T) {
	c := testConfig(t)
	d1 := testutils.InMemoryPlugin(t, vm.New(c, testutils.TestLogger(t)))
	vol := t.TempDir()
	if err := os.Chown(vol, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	cfg := vmTask(t, "/bin/sh", "-c", `while [ ! -e /data/stop ]; do echo tick >> /data/ticks; sleep 0.2; done; echo done > /data/out`)
	cfg.Mounts = append(cfg.Mounts, drivers.Mount{Source: vol, Destination: "/data", Volume: true, Owner: &drivers.MountOwner{UID: 65534, GID: 65534}})
	h, err := d1.Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	ticks := func() int {
		b, _ := os.ReadFile(filepath.Join(vol, "ticks"))
		return strings.Count(string(b), "tick")
	}
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		for deadline := time.Now().Add(vmTimeout); !ok(); time.Sleep(200 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
		}
	}
	waitFor("the guest writing into the volume", func() bool { return ticks() > 0 })

	b, err := json.Marshal(h) // as the agent's state store keeps it
	if err != nil {
		t.Fatal(err)
	}
	var saved drivers.TaskHandle
	if err := json.Unmarshal(b, &saved); err != nil {
		t.Fatal(err)
	}
	d2 := testutils.InMemoryPlugin(t, vm.New(c, testutils.TestLogger(t)))
	t.Cleanup(func() { _ = d2.Destroy(context.Background(), cfg.ID, true) })
	if err := d2.Recover(context.Background(), &saved); err != nil {
		t.Fatalf("Recover: %v", err)
	}
	before := ticks()
	waitFor("more ticks after the restart", func() bool { return ticks() > before+2 })
	if err := os.WriteFile(filepath.Join(vol, "stop"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if res := testutils.WaitResult(t, d2, cfg.ID, vmTimeout); !res.Successful() {
		t.Fatalf("result after the restart: %+v", res)
	}
	if b, err := os.ReadFile(filepath.Join(vol, "out")); err != nil || string(b) != "done\n" {
		t.Fatalf("the guest's last write: %q, %v", b, err)
	}
}

// Package vm is the vm driver: each kernel is a qemu virtual machine that
// boots the guest kernel the plugin is configured with, its initramfs and,
// per task, an archive with the kernel's image root and its command. The
// guest agent (cmd/corral-vm-guest) runs the command as main1; its stdout
// and stderr are virtio-serial ports written by qemu into the task's log
// files, its exit status comes back on a third port, and `session exec`
// and signals travel on a fourth, a unix socket on the host. It is served
// as the external plugin corral-driver-vm (cmd/corral-driver-vm).
//
// qemu runs detached (-daemonize) in the task's cgroup, so that a VM
// outlives its plugin process; the handle keeps its pid, start time and
// sockets for Recover. KVM is used when it works (a short probe boot
// decides for "auto"), software emulation (TCG) otherwise.
package vm

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/corral-dev/corral/drivers/exec/cgroup"
	"github.com/corral-dev/corral/drivers/internal/lifecycle"
	"github.com/corral-dev/corral/drivers/vm/guestproto"
	"github.com/corral-dev/corral/plugins/drivers"
	"github.com/corral-dev/corral/structs"
)

// Name is the driver's name.
const Name = "vm"

// Version is the plugin's version.
const Version = "0.1.0"

// CgroupParent is the parent cgroup of the VMs' cgroups.
const CgroupParent = "corral-vm"

// SocketRoot holds each VM's monitor and control sockets, in a short path
// of its own (unix socket paths are limited to 108 bytes).
const SocketRoot = "/run/corral-vm"

// Defaults for a task without cpu or mem slots.
const (
	defaultMem  = 256 << 20
	minMem      = 64 << 20
	defaultCPUs = 1
)

// ErrExitCodeUnknown is wrapped by the result of a VM that ended without
// an exit record.
var ErrExitCodeUnknown = errors.New("the VM ended without an exit record")

var kind = &lifecycle.Kind{
	Name:               Name,
	ErrExitCodeUnknown: ErrExitCodeUnknown,
	Waiting:            "the VM",
	PollInterval:       50 * time.Millisecond,
}

// Driver runs tasks as qemu VMs.
type Driver struct {
	cfg    Config
	logger *slog.Logger
	tasks  lifecycle.Tasks[*task]

	accelOnce sync.Once
	accel     string
	accelErr  error

	cgroupsOnce sync.Once
	cgroups     *cgroup.Manager
}

var _ drivers.Driver = (*Driver)(nil)

// New returns a driver with cfg.
func New(cfg Config, logger *slog.Logger) *Driver {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if err := cfg.validate(); err != nil {
		logger.Error(err.Error())
	}
	return &Driver{cfg: cfg, logger: logger}
}

// Name returns "vm".
func (d *Driver) Name() string { return Name }

// PluginVersion returns the plugin's version.
func (d *Driver) PluginVersion() string { return Version }

// Capabilities: exec through the guest agent, resource limits (vCPUs,
// memory and the qemu process's cgroup), recover.
func (d *Driver) Capabilities() drivers.Capabilities {
	return drivers.Capabilities{Exec: true, ResourceLimits: true, Recover: true}
}

// Fingerprint reports the accelerator in use, after probing KVM once for
// "auto".
func (d *Driver) Fingerprint(ctx context.Context) (*drivers.Fingerprint, error) {
	qemu, err := d.cfg.check()
	if err != nil {
		return &drivers.Fingerprint{Health: drivers.HealthUndetected, Description: err.Error()}, nil
	}
	accel, err := d.accelerator(ctx)
	if err != nil {
		return &drivers.Fingerprint{Health: drivers.HealthUnhealthy, Description: err.Error()}, nil
	}
	attrs := map[string]string{
		"driver.vm.accel":  accel,
		"driver.vm.kernel": d.cfg.Kernel,
		"driver.vm.qemu":   qemu,
	}
	if out, err := exec.CommandContext(ctx, qemu, "--version").Output(); err == nil {
		first, _, _ := strings.Cut(string(out), "\n")
		attrs["driver.vm.qemu_version"] = strings.TrimPrefix(first, "QEMU emulator version ")
	}
	return &drivers.Fingerprint{
		Health:      drivers.HealthHealthy,
		Description: "qemu VMs (" + accel + ")",
		Attributes:  attrs,
	}, nil
}

// accelerator returns the accelerator VMs use: the configured one, or for
// "auto" KVM when a probe VM boots and exits under it in time, TCG
// otherwise (said in one log line).
func (d *Driver) accelerator(ctx context.Context) (string, error) {
	d.accelOnce.Do(func() {
		switch d.cfg.Accel {
		case AccelKVM, AccelTCG:
			d.accel = d.cfg.Accel
			return
		}
		if err := d.probeKVM(context.WithoutCancel(ctx)); err != nil {
			d.logger.Info("KVM does not work here: VMs use software emulation (TCG)", "reason", err.Error())
			d.accel = AccelTCG
			return
		}
		d.logger.Info("VMs use KVM")
		d.accel = AccelKVM
	})
	return d.accel, d.accelErr
}

// probeTimeout bounds the KVM probe boot: a working KVM boots the guest to
// its exit in a second or two, a nested host on which the guest kernel
// hangs never does.
const probeTimeout = 20 * time.Second

// probeKVM boots a VM under KVM that runs /bin/true and waits for its exit
// record.
func (d *Driver) probeKVM(ctx context.Context) error {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return err
	}
	f.Close()
	dir, err := os.MkdirTemp("", "corral-vm-probe-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	cfg := &drivers.TaskConfig{
		ID: "kvm-probe-" + strconv.Itoa(os.Getpid()), Command: []string{"/bin/true"}, TaskDir: dir,
		StdoutPath: filepath.Join(dir, "stdout"), StderrPath: filepath.Join(dir, "stderr"),
	}
	t, err := d.launch(ctx, cfg, AccelKVM, nil)
	if err != nil {
		return err
	}
	defer d.cleanup(context.Background(), t)
	select {
	case <-t.Done():
	case <-time.After(probeTimeout):
		t.Kill()
		select {
		case <-t.Done():
		case <-time.After(30 * time.Second):
			d.logger.Warn("the KVM probe's qemu survives SIGKILL", "pid", t.st.Pid)
		}
		return fmt.Errorf("a probe VM did not boot to its command within %v", probeTimeout)
	}
	if res := t.ExitResult(); !res.Successful() {
		return fmt.Errorf("the probe VM ended with %+v", res)
	}
	return nil
}

// state is the driver state in a task's handle: what Recover needs to find
// the VM again.
type state struct {
	Pid int `json:"pid"`
	// StartTime is the qemu process's start time in clock ticks since
	// boot (/proc/PID/stat), which tells it from a later process that got
	// its pid.
	StartTime uint64        `json:"start_time"`
	Dir       string        `json:"dir"`
	SocketDir string        `json:"socket_dir"`
	Accel     string        `json:"accel"`
	Cgroup    *cgroup.Group `json:"cgroup,omitempty"`
	// NetNS is the kernel's network namespace and NICs the VM's
	// interfaces in it, which Destroy removes.
	NetNS string     `json:"netns,omitempty"`
	NICs  []nicState `json:"nics,omitempty"`
}

// task is one VM.
type task struct {
	lifecycle.Task
	st     state
	ctl    *control
	killed atomic.Bool
}

func (t *task) qmpSocket() string { return filepath.Join(t.st.SocketDir, "qmp.sock") }

// Signal asks the VM to stop: an ACPI power button press (QMP
// system_powerdown) for SIGTERM, which the guest agent turns into SIGTERM
// for the command, and the signal itself over the control port, which
// reaches the command also when it arrives before the guest booted far
// enough to see the power button.
func (t *task) Signal(sig syscall.Signal) error {
	if !t.alive() {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var errs []error
	if sig == syscall.SIGTERM {
		if err := qmp(ctx, t.qmpSocket(), "system_powerdown"); err != nil {
			errs = append(errs, err)
		}
	}
	if err := t.ctl.signal(ctx, sig); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 && t.alive() {
		t.Logger.Warn("signalling the VM failed; it is killed after the timeout", "error", errors.Join(errs...))
	}
	return nil
}

// Kill ends qemu with SIGKILL.
func (t *task) Kill() {
	if t.alive() {
		t.killed.Store(true)
		_ = syscall.Kill(t.st.Pid, syscall.SIGKILL)
	}
}

// Members is the qemu process while it runs.
func (t *task) Members() []int {
	if t.alive() {
		return []int{t.st.Pid}
	}
	return nil
}

// QemuPid returns the pid of the qemu process of task id, for tests.
func (d *Driver) QemuPid(id string) (int, error) {
	t, err := d.tasks.Get(id)
	if err != nil {
		return 0, err
	}
	return t.st.Pid, nil
}

// Amend leaves the result as the VM's end made it.
func (t *task) Amend(*drivers.ExitResult) {}

// alive says whether the task's qemu process runs (and is not a zombie).
func (t *task) alive() bool {
	start, st, err := procStat(t.st.Pid)
	return err == nil && start == t.st.StartTime && st != 'Z' && st != 'X'
}

// watch polls until qemu is gone and records how the VM ended.
func (t *task) watch() {
	for t.alive() {
		time.Sleep(100 * time.Millisecond)
	}
	t.ctl.close()
	t.Finish(t.result(), time.Time{})
}

// result is how the VM ended: the guest's exit record, else SIGKILL if the
// driver killed qemu, else an unknown exit.
func (t *task) result() *drivers.ExitResult {
	b, err := os.ReadFile(filepath.Join(t.st.Dir, "exit.json"))
	if err == nil && len(bytes.TrimSpace(b)) > 0 {
		line, _, _ := bytes.Cut(b, []byte("\n"))
		var e guestproto.Exit
		if err := json.Unmarshal(line, &e); err == nil {
			res := &drivers.ExitResult{ExitCode: e.ExitCode, Signal: e.Signal}
			if e.Error != "" {
				res.Err = errors.New("in the guest: " + e.Error)
			}
			return res
		}
	}
	if t.killed.Load() {
		return &drivers.ExitResult{ExitCode: 128 + int(syscall.SIGKILL), Signal: int(syscall.SIGKILL)}
	}
	return kind.UnknownExit(fmt.Errorf("see the guest's console log %s", filepath.Join(t.st.Dir, "console.log")))
}

// procStat returns a process's start time and state from /proc/PID/stat.
func procStat(pid int) (uint64, byte, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("bad /proc/%d/stat", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return 0, 0, fmt.Errorf("bad /proc/%d/stat", pid)
	}
	start, err := strconv.ParseUint(f[19], 10, 64)
	return start, f[0][0], err
}

func validate(cfg *drivers.TaskConfig) error {
	switch {
	case cfg == nil:
		return fmt.Errorf("%w: no task config", drivers.ErrInvalidConfig)
	case cfg.ID == "":
		return fmt.Errorf("%w: the task has no ID", drivers.ErrInvalidConfig)
	case strings.ContainsAny(cfg.ID, "/\x00") || cfg.ID == "." || cfg.ID == "..":
		return fmt.Errorf("%w: task ID %q is not a file name", drivers.ErrInvalidConfig, cfg.ID)
	case cfg.TaskDir == "":
		return fmt.Errorf("%w: task %s has no task dir", drivers.ErrInvalidConfig, cfg.ID)
	case cfg.StdoutPath == "" || cfg.StderrPath == "":
		return fmt.Errorf("%w: task %s has no log paths", drivers.ErrInvalidConfig, cfg.ID)
	}
	if len(guestCommand(cfg)) == 0 {
		return fmt.Errorf("%w: task %s has no command (and its image none)", drivers.ErrInvalidConfig, cfg.ID)
	}
	if guestCommand(cfg)[0] == "" {
		return fmt.Errorf("%w: task %s: the command's program is empty", drivers.ErrInvalidConfig, cfg.ID)
	}
	if cfg.Devices != nil && (len(cfg.Devices.Nodes) > 0 || len(cfg.Devices.Mounts) > 0) {
		return fmt.Errorf("%w: the vm driver cannot pass devices into a VM (VFIO passthrough is not supported)", drivers.ErrInvalidConfig)
	}
	if cfg.Options != nil && cfg.Options.Network == structs.NetworkHost {
		return fmt.Errorf("%w: a VM cannot use the host's network", drivers.ErrInvalidConfig)
	}
	return nil
}

// guestCommand is the command the guest runs: the image's entrypoint with
// the task's command, or the image's cmd when the task has none.
func guestCommand(cfg *drivers.TaskConfig) []string {
	if cfg.ImageConfig == nil {
		return cfg.Command
	}
	args := cfg.Command
	if len(args) == 0 {
		args = cfg.ImageConfig.Cmd
	}
	return append(slices.Clone(cfg.ImageConfig.Entrypoint), args...)
}

// guestEnv is the command's environment: the image's, PATH and HOME where
// it sets none, the task's, then its devices'.
func guestEnv(cfg *drivers.TaskConfig) []string {
	env := map[string]string{"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root"}
	if cfg.Hostname != "" {
		env["HOSTNAME"] = cfg.Hostname
	}
	if cfg.ImageConfig != nil {
		for _, kv := range cfg.ImageConfig.Env {
			if k, v, ok := strings.Cut(kv, "="); ok {
				env[k] = v
			}
		}
	}
	maps.Copy(env, cfg.Env)
	if cfg.Devices != nil {
		maps.Copy(env, cfg.Devices.Env)
	}
	out := make([]string, 0, len(env))
	for _, k := range slices.Sorted(maps.Keys(env)) {
		out = append(out, k+"="+env[k])
	}
	return out
}

// Start boots the task's VM.
func (d *Driver) Start(ctx context.Context, cfg *drivers.TaskConfig) (*drivers.TaskHandle, error) {
	if err := validate(cfg); err != nil {
		return nil, err
	}
	if _, err := d.cfg.check(); err != nil {
		return nil, fmt.Errorf("vm driver: %w", err)
	}
	accel, err := d.accelerator(ctx)
	if err != nil {
		return nil, err
	}
	if err := d.tasks.Reserve(cfg.ID); err != nil {
		return nil, err
	}
	var group *cgroup.Group
	if m := d.cgroupManager(); m != nil {
		mem := memBytes(cfg)
		group, err = m.Create(cgroupName(cfg.ID), cgroup.Limits{MemoryBytes: mem + d.cfg.OverheadMem})
		if err != nil {
			d.tasks.Unreserve(cfg.ID)
			return nil, fmt.Errorf("vm driver: cgroup: %w", err)
		}
		if cpu := cfg.Resources[structs.SlotCPU].Float(); cpu > 0 {
			if err := group.LimitCPU(cpu); err != nil {
				d.logger.Warn("cannot limit the VM's CPU", "kernel_id", cfg.ID, "error", err)
			}
		}
	}
	t, err := d.launch(ctx, cfg, accel, group)
	if err != nil {
		if group != nil {
			_ = group.Destroy(context.WithoutCancel(ctx))
		}
		d.tasks.Unreserve(cfg.ID)
		return nil, err
	}
	d.tasks.Set(cfg.ID, t)
	return t.Handle(t.st)
}

func (d *Driver) cgroupManager() *cgroup.Manager {
	d.cgroupsOnce.Do(func() {
		m, err := cgroup.Detect(CgroupParent)
		if err != nil {
			d.logger.Warn("VMs run without cgroups", "error", err)
			return
		}
		d.cgroups = m
	})
	return d.cgroups
}

// cgroupName is a task's cgroup name: its ID where that is a safe name.
func cgroupName(id string) string {
	for _, r := range id {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return "vm-" + shortHash(id)
		}
	}
	return id
}

func shortHash(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:8])
}

// memBytes is the VM's memory: the task's mem slot, or defaultMem.
func memBytes(cfg *drivers.TaskConfig) int64 {
	m := int64(cfg.Resources[structs.SlotMem].Float())
	if m <= 0 {
		return defaultMem
	}
	return max(m, minMem)
}

// vcpus is the VM's vCPU count: the cpu slot rounded up.
func vcpus(cfg *drivers.TaskConfig) int {
	c := cfg.Resources[structs.SlotCPU].Float()
	if c <= 0 {
		return defaultCPUs
	}
	n := int(c)
	if float64(n) < c {
		n++
	}
	return n
}

// launch writes the task's initramfs and starts qemu, detached, in group.
func (d *Driver) launch(ctx context.Context, cfg *drivers.TaskConfig, accel string, group *cgroup.Group) (*task, error) {
	dir := filepath.Join(cfg.TaskDir, "vm")
	sockDir := filepath.Join(SocketRoot, shortHash(cfg.ID+"\x00"+cfg.TaskDir))
	st := state{Dir: dir, SocketDir: sockDir, Accel: accel, Cgroup: group}
	fail := func(err error) (*task, error) {
		_ = os.RemoveAll(dir)
		_ = os.RemoveAll(sockDir)
		return nil, err
	}
	for _, p := range []string{dir, sockDir, filepath.Dir(cfg.StdoutPath), filepath.Dir(cfg.StderrPath)} {
		if err := os.MkdirAll(p, 0o755); err != nil {
			return fail(fmt.Errorf("vm driver: %w", err))
		}
	}
	// The log files exist before the VM writes to them, readable by the
	// agent; qemu (dropped to RunAs) appends through the fds it opened.
	for _, p := range []string{cfg.StdoutPath, cfg.StderrPath, filepath.Join(dir, "exit.json"), filepath.Join(dir, "console.log")} {
		f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return fail(fmt.Errorf("vm driver: %w", err))
		}
		f.Close()
	}
	var guestNICs []guestproto.NIC
	if cfg.NetNSPath != "" {
		nics, g, err := plugNetwork(cfg.NetNSPath)
		if err != nil {
			return fail(fmt.Errorf("vm driver: network: %w", err))
		}
		st.NetNS, st.NICs, guestNICs = cfg.NetNSPath, nics, g
		fail = func(err error) (*task, error) {
			_ = unplugNetwork(st.NetNS, st.NICs)
			_ = os.RemoveAll(dir)
			_ = os.RemoveAll(sockDir)
			return nil, err
		}
	}
	if err := d.checkVolumeUser(cfg); err != nil {
		return fail(err)
	}
	rootDisk, err := prepareDisk(ctx, cfg.Image, dir, d.cfg.MaxDiskDownload)
	if err != nil {
		return fail(fmt.Errorf("vm driver: %w", err))
	}
	initrd := filepath.Join(dir, "initrd")
	if err := d.writeInitrd(cfg, guestNICs, initrd); err != nil {
		return fail(fmt.Errorf("vm driver: building the guest's initramfs: %w", err))
	}
	qemu, err := exec.LookPath(d.cfg.Qemu)
	if err != nil {
		return fail(fmt.Errorf("vm driver: %w", err))
	}
	pidfile := filepath.Join(dir, "qemu.pid")
	args := d.qemuArgs(cfg, accel, dir, sockDir, initrd, pidfile)
	for i, n := range st.NICs {
		id := "net" + strconv.Itoa(i)
		args = append(args, "-netdev", "tap,id="+id+",ifname="+n.Tap+",script=no,downscript=no",
			"-device", "virtio-net-device,netdev="+id+",mac="+n.MAC)
	}
	if rootDisk != nil {
		args = append(args, rootDisk.qemuArgs()...)
	}
	// A shell joins the task's cgroups and becomes qemu, so that qemu's
	// every thread and allocation counts there from the start.
	script := `for f in "$@"; do case "$f" in --) break;; esac; echo $$ > "$f" || exit 1; shift; done; shift; exec "$@"`
	shArgs := []string{"-c", script, "sh"}
	if group != nil {
		shArgs = append(shArgs, group.ProcsFiles()...)
	}
	shArgs = append(shArgs, "--")
	if st.NetNS != "" {
		// qemu opens its taps in the kernel's network namespace.
		shArgs = append(shArgs, "nsenter", "--net="+st.NetNS)
	}
	shArgs = append(shArgs, qemu)
	shArgs = append(shArgs, args...)
	cmd := exec.CommandContext(ctx, "/bin/sh", shArgs...)
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = io.Discard, &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if rootDisk != nil {
		// qemu's snapshot overlay goes to TMPDIR: the VM's directory.
		cmd.Env = append(os.Environ(), "TMPDIR="+dir)
	}
	log := d.logger.With("kernel_id", cfg.ID, "session_id", cfg.SessionID)
	startedAt := time.Now()
	if err := cmd.Run(); err != nil {
		return fail(fmt.Errorf("vm driver: starting qemu: %v: %s", err, strings.TrimSpace(stderr.String())))
	}
	b, err := os.ReadFile(pidfile)
	if err != nil {
		return fail(fmt.Errorf("vm driver: qemu started but wrote no pid file: %w", err))
	}
	st.Pid, err = strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return fail(fmt.Errorf("vm driver: qemu's pid file: %w", err))
	}
	if st.StartTime, _, err = procStat(st.Pid); err != nil {
		// qemu already ended: the VM failed at once or its command
		// finished; its exit record tells.
		st.StartTime = 0
	}
	t := d.newTask(cfg, st, startedAt, log)
	log.Info("VM started", "pid", st.Pid, "accel", accel, "vcpus", vcpus(cfg), "mem", memBytes(cfg))
	go t.watch()
	return t, nil
}

func (d *Driver) newTask(cfg *drivers.TaskConfig, st state, startedAt time.Time, log *slog.Logger) *task {
	t := &task{st: st, ctl: &control{socket: filepath.Join(st.SocketDir, "control.sock")}}
	t.Task = lifecycle.New(kind, t, cfg, startedAt, log)
	return t
}

// qemuArgs is qemu's command line for cfg: a microvm with the guest kernel
// and the task's initramfs, a serial console into console.log, the
// virtio-serial ports of package guestproto, QMP, no display, no reboot (the guest's power off or panic ends qemu), dropped to
// RunAs once its files are open.
func (d *Driver) qemuArgs(cfg *drivers.TaskConfig, accel, dir, sockDir, initrd, pidfile string) []string {
	append_ := "console=ttyS0 quiet panic=-1 reboot=t tsc_early_khz=2000000 tsc=reliable"
	if d.cfg.KernelArgs != "" {
		append_ += " " + d.cfg.KernelArgs
	}
	file := func(id, path string) string {
		return "file,id=" + id + ",path=" + qemuEscape(path) + ",append=on"
	}
	cpu := "max"
	if accel == AccelKVM {
		cpu = "host"
	}
	args := []string{
		"-name", qemuEscape("corral-" + cfg.ID),
		"-machine", "microvm,pit=on,pic=on,rtc=on,acpi=on",
		"-accel", accelArg(accel),
		"-cpu", cpu,
		"-smp", strconv.Itoa(vcpus(cfg)),
		"-m", strconv.FormatInt(memBytes(cfg)>>20, 10) + "M",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-kernel", d.cfg.Kernel,
		"-initrd", initrd,
		"-append", append_,
		"-chardev", file("console", filepath.Join(dir, "console.log")),
		"-serial", "chardev:console",
		"-device", "virtio-serial-device,max_ports=8",
		"-chardev", file("stdout", cfg.StdoutPath),
		"-device", "virtserialport,chardev=stdout,name=" + guestproto.PortStdout,
		"-chardev", file("stderr", cfg.StderrPath),
		"-device", "virtserialport,chardev=stderr,name=" + guestproto.PortStderr,
		"-chardev", file("exit", filepath.Join(dir, "exit.json")),
		"-device", "virtserialport,chardev=exit,name=" + guestproto.PortExit,
		"-chardev", "socket,id=control,path=" + qemuEscape(filepath.Join(sockDir, "control.sock")) + ",server=on,wait=off",
		"-device", "virtserialport,chardev=control,name=" + guestproto.PortControl,
		"-qmp", "unix:" + qemuEscape(filepath.Join(sockDir, "qmp.sock")) + ",server=on,wait=off",
		"-pidfile", pidfile,
		"-daemonize",
	}
	runAs := d.qemuUser(cfg)
	for i, m := range volumeMounts(cfg) {
		// The volume is exported as it is on the host (security_model
		// none: the guest's chown and chmod of its files are ignored);
		// qemu reads and writes it as the volume's owner, so that the
		// files it makes there belong to the owner, as an exec kernel's.
		fsdev := "local,id=" + shareTag(i) + ",path=" + qemuEscape(m.Source) + ",security_model=none"
		if m.ReadOnly {
			fsdev += ",readonly=on"
		}
		args = append(args, "-fsdev", fsdev, "-device", "virtio-9p-device,fsdev="+shareTag(i)+",mount_tag="+shareTag(i))
	}
	if runAs != "" {
		args = append(args, "-runas", runAs)
	}
	return args
}

// qemuUser is the host user qemu drops to: the volumes' owner when the
// task has volumes with one (so that the files the guest makes there are
// the owner's), else the configured RunAs ("": stays root).
func (d *Driver) qemuUser(cfg *drivers.TaskConfig) string {
	for _, m := range volumeMounts(cfg) {
		if m.Owner != nil && m.Owner.UID != 0 {
			return fmt.Sprintf("%d:%d", m.Owner.UID, m.Owner.GID)
		}
	}
	return d.cfg.RunAs
}

// checkVolumeUser refuses volumes that qemu would serve as host root:
// with security_model=none a root qemu creates what the guest asks in the
// volume, device nodes and setuid files included.
func (d *Driver) checkVolumeUser(cfg *drivers.TaskConfig) error {
	if len(volumeMounts(cfg)) == 0 {
		return nil
	}
	switch u := d.qemuUser(cfg); u {
	case "", "root", "0", "0:0":
		return fmt.Errorf("%w: task %s has volumes, which qemu would serve as host root: give volumes an owner (the agent does, running as root) or set run_as", drivers.ErrInvalidConfig, cfg.ID)
	}
	return nil
}

// volumeMounts are the task's volumes, which the guest gets live over
// virtio-9p; its other mounts (launch files, the corral-kernel helper:
// small and read-only) are copied into the initramfs.
func volumeMounts(cfg *drivers.TaskConfig) []drivers.Mount {
	var vs []drivers.Mount
	for _, m := range cfg.Mounts {
		if m.Volume {
			vs = append(vs, m)
		}
	}
	return vs
}

// guestShares are the guest's mounts of the task's volumes, below the
// image root when the command runs chrooted there.
func guestShares(cfg *drivers.TaskConfig, chroot bool) []guestproto.Share {
	var shares []guestproto.Share
	for i, m := range volumeMounts(cfg) {
		shares = append(shares, guestproto.Share{Tag: shareTag(i), Path: guestPath(m.Destination, chroot), ReadOnly: m.ReadOnly})
	}
	return shares
}

// guestPath is where a mount's destination lies in the guest: below the
// image root when the command runs chrooted there.
func guestPath(dest string, chroot bool) string {
	dst := path.Clean("/" + dest)
	if chroot {
		dst = path.Join(guestproto.RootDir, dst)
	}
	return dst
}

// shareTag is the virtio-9p mount tag (and fsdev id) of the i-th volume.
func shareTag(i int) string { return "corralvol" + strconv.Itoa(i) }

// accelArg is qemu's -accel value: TCG with a translation cache of 64 MiB
// (qemu's default, 1 GiB, grows the qemu process far beyond the guest's
// memory).
func accelArg(accel string) string {
	if accel == AccelTCG {
		return "tcg,tb-size=64"
	}
	return accel
}

// qemuEscape doubles commas, qemu's option separator.
func qemuEscape(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// writeInitrd writes the task's initramfs: the task file and the image's
// root in an archive of their own, then the configured base initramfs (the
// kernel unpacks both, one after the other).
func (d *Driver) writeInitrd(cfg *drivers.TaskConfig, nics []guestproto.NIC, path string) error {
	gt := guestproto.Task{
		ID: cfg.ID, Hostname: cfg.Hostname,
		Command: guestCommand(cfg), Env: guestEnv(cfg), WorkDir: cfg.WorkDir,
		Hosts: cfg.Hosts, Chroot: cfg.RootFS != "", NICs: nics,
	}
	if len(nics) > 0 {
		gt.ResolvConf = resolvConf("/etc/resolv.conf")
	}
	if structs.IsDiskImage(cfg.Image) {
		gt.Chroot, gt.RootDisk = true, true
	}
	gt.Shares = guestShares(cfg, gt.Chroot)
	gt.Version = guestproto.TaskVersion(&gt)
	switch {
	case cfg.RootFS == "":
		// The task's WorkDir is a host directory, which means nothing
		// in the guest.
		gt.WorkDir = "/root"
	case cfg.WorkDir == "" && cfg.ImageConfig != nil:
		gt.WorkDir = cfg.ImageConfig.WorkingDir
	}
	taskJSON, err := json.Marshal(gt)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	w := newCpioWriter(f)
	if err := w.Dir("corral", 0o755); err != nil {
		return err
	}
	if err := w.File(strings.TrimPrefix(guestproto.TaskFile, "/"), 0o644, taskJSON); err != nil {
		return err
	}
	if cfg.RootFS != "" {
		if err := w.Tree(cfg.RootFS, strings.TrimPrefix(guestproto.RootDir, "/")); err != nil {
			return fmt.Errorf("archiving the image root %s: %w", cfg.RootFS, err)
		}
	}
	if err := archiveMounts(w, cfg); err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	base, err := os.Open(d.cfg.Initrd)
	if err != nil {
		return err
	}
	defer base.Close()
	if _, err := io.Copy(f, base); err != nil {
		return err
	}
	return f.Close()
}

// Wait returns a channel that receives the task's result.
func (d *Driver) Wait(ctx context.Context, id string) (<-chan *drivers.ExitResult, error) {
	return d.tasks.Wait(ctx, id)
}

// Inspect reports the task's state.
func (d *Driver) Inspect(_ context.Context, id string) (*drivers.TaskStatus, error) {
	return d.tasks.Inspect(id)
}

// Stop shuts the VM down: ACPI power off for SIGTERM (the guest agent
// gives the command SIGTERM), the signal itself over the control port for
// others; qemu is killed after timeout.
func (d *Driver) Stop(ctx context.Context, id string, timeout time.Duration, signal string) error {
	sig, err := drivers.ParseSignal(signal)
	if err != nil {
		return err
	}
	return d.tasks.Stop(ctx, id, sig, timeout)
}

// Destroy kills qemu (a running VM only with force) and removes the VM's
// files, sockets and cgroup.
func (d *Driver) Destroy(ctx context.Context, id string, force bool) error {
	return d.tasks.Destroy(ctx, id, force, 10*time.Second, d.cleanup)
}

func (d *Driver) cleanup(ctx context.Context, t *task) error {
	t.ctl.close()
	var errs []error
	for _, p := range []string{t.st.Dir, t.st.SocketDir} {
		if err := os.RemoveAll(p); err != nil {
			errs = append(errs, err)
		}
	}
	if err := unplugNetwork(t.st.NetNS, t.st.NICs); err != nil {
		errs = append(errs, fmt.Errorf("network: %w", err))
	}
	if t.st.Cgroup != nil {
		if err := t.st.Cgroup.Destroy(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Stats reports qemu's CPU time and resident memory: the cost of the VM on
// the host.
func (d *Driver) Stats(_ context.Context, id string) (*drivers.TaskStats, error) {
	t, err := d.tasks.Get(id)
	if err != nil {
		return nil, err
	}
	st := &drivers.TaskStats{Time: time.Now()}
	if !t.alive() {
		return st, nil
	}
	st.Pids = 1
	if b, err := os.ReadFile("/proc/" + strconv.Itoa(t.st.Pid) + "/stat"); err == nil {
		if i := bytes.LastIndexByte(b, ')'); i >= 0 {
			f := strings.Fields(string(b[i+1:]))
			if len(f) > 12 {
				u, _ := strconv.ParseUint(f[11], 10, 64)
				s, _ := strconv.ParseUint(f[12], 10, 64)
				st.CPUUsageNanos = (u + s) * uint64(time.Second/100) // USER_HZ
			}
		}
	}
	if b, err := os.ReadFile("/proc/" + strconv.Itoa(t.st.Pid) + "/status"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
				st.MemoryRSSBytes = kb << 10
			}
		}
	}
	return st, nil
}

// Exec runs a command in the guest through the guest agent.
func (d *Driver) Exec(ctx context.Context, id string, opts *drivers.ExecOptions) (int, error) {
	t, err := d.tasks.Get(id)
	if err != nil {
		return 0, err
	}
	if opts == nil || len(opts.Command) == 0 || opts.Command[0] == "" {
		return 0, fmt.Errorf("%w: exec needs a command", drivers.ErrInvalidConfig)
	}
	if opts.TTY {
		return 0, fmt.Errorf("%w: the vm driver has no terminals for exec yet; run it without -t", drivers.ErrNotSupported)
	}
	if t.Exited() || !t.alive() {
		return 0, fmt.Errorf("%w: %s", drivers.ErrTaskNotRunning, id)
	}
	env := guestEnv(t.Config)
	if len(opts.Env) > 0 {
		m := map[string]string{}
		for _, kv := range env {
			k, v, _ := strings.Cut(kv, "=")
			m[k] = v
		}
		maps.Copy(m, opts.Env)
		env = env[:0]
		for _, k := range slices.Sorted(maps.Keys(m)) {
			env = append(env, k+"="+m[k])
		}
	}
	return t.ctl.exec(ctx, opts.Command, env, opts.Stdin, opts.Stdout, opts.Stderr)
}

// Recover finds a VM of an earlier plugin process again: running if its
// qemu still runs, exited (with the guest's exit record) if not. A task
// it knows already is left as it is; a nil handle is an invalid config.
func (d *Driver) Recover(_ context.Context, h *drivers.TaskHandle) error {
	if err := kind.CheckHandle(h); err != nil {
		return err
	}
	var st state
	if err := json.Unmarshal(h.DriverState, &st); err != nil || st.Pid <= 0 || st.Dir == "" || st.SocketDir == "" {
		return fmt.Errorf("%w: task %s: unreadable driver state %q", drivers.ErrInvalidConfig, h.Config.ID, h.DriverState)
	}
	cfg := *h.Config
	log := d.logger.With("kernel_id", cfg.ID, "session_id", cfg.SessionID, "pid", st.Pid)
	t := d.newTask(&cfg, st, h.StartedAt, log)
	t.Recovered = true
	if !d.tasks.Add(cfg.ID, t) {
		return nil
	}
	log.Info("VM recovered", "running", t.alive())
	go t.watch()
	return nil
}

// archiveMounts copies the task's mounts but volumes (a cluster kernel's
// launch files and corral-kernel helper) into the initramfs at their destinations, in
// the image root when there is one: the guest has no share of the host's
// files, and these are small and read-only. The parent directories are
// archived first, as the kernel's unpacker creates none.
func archiveMounts(w *cpioWriter, cfg *drivers.TaskConfig) error {
	made := map[string]bool{"": true, "corral": true}
	for _, m := range cfg.Mounts {
		if m.Volume {
			continue // shared live over virtio-9p (volumeMounts)
		}
		dst := strings.TrimPrefix(guestPath(m.Destination, cfg.RootFS != ""), "/")
		var parents []string
		for p := path.Dir(dst); p != "." && p != "/" && !made[p]; p = path.Dir(p) {
			parents = append(parents, p)
		}
		for i := len(parents) - 1; i >= 0; i-- {
			if err := w.Dir(parents[i], 0o755); err != nil {
				return err
			}
			made[parents[i]] = true
		}
		if err := w.Tree(m.Source, dst); err != nil {
			return fmt.Errorf("archiving the mount %s: %w", m.Source, err)
		}
		made[dst] = true
	}
	return nil
}

// resolvConf is the host's resolver configuration at path without
// loopback name servers, which mean nothing in the guest (it reaches the
// others through the agent's NAT, as a runc kernel does).
func resolvConf(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	var out strings.Builder
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "nameserver" {
			if ip := net.ParseIP(f[1]); ip == nil || ip.IsLoopback() {
				continue
			}
		}
		if strings.TrimSpace(line) != "" {
			out.WriteString(line + "\n")
		}
	}
	return out.String()
}

package vm

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// Accelerators.
const (
	AccelAuto = "auto" // KVM if a short probe boot works, TCG otherwise
	AccelKVM  = "kvm"
	AccelTCG  = "tcg" // software emulation: slow, works everywhere
)

// DefaultCacheDir is where `make vm-guest` (scripts/vm-guest.sh) puts the
// guest kernel and initramfs.
const DefaultCacheDir = "/var/cache/corral/vm"

// Config is the vm plugin's configuration. The plugin reads it from the
// JSON file named by CORRAL_VM_CONFIG, else from its own path plus ".json"
// (bin/plugins/corral-driver-vm.json: not executable, so the agent does not
// launch it), then applies CORRAL_VM_KERNEL, CORRAL_VM_INITRD,
// CORRAL_VM_QEMU, CORRAL_VM_ACCEL and CORRAL_VM_RUN_AS over it. Without any
// of them it boots the kernel and initramfs of DefaultCacheDir with
// qemu-system-x86_64 from PATH and the accelerator "auto".
type Config struct {
	// Kernel is the guest kernel (a bzImage).
	Kernel string `json:"kernel"`
	// Initrd is the guest's base initramfs: busybox, the virtio modules
	// and the guest agent as /init. The driver prepends each task's own
	// archive (the image's root, the task file).
	Initrd string `json:"initrd"`
	// Qemu is the qemu-system-x86_64 binary, a name in PATH or a path.
	Qemu string `json:"qemu"`
	// Accel is "auto", "kvm" or "tcg".
	Accel string `json:"accel"`
	// RunAs is the host user qemu drops to once it opened its files; ""
	// keeps root (not advised).
	RunAs string `json:"run_as"`
	// KernelArgs are added to the guest kernel's command line.
	KernelArgs string `json:"kernel_args,omitempty"`
	// OverheadMem is added to a VM's memory for its cgroup's limit: what
	// qemu itself needs (bytes; default 384 MiB: about 200 MiB under TCG).
	OverheadMem int64 `json:"overhead_mem,omitempty"`
	// MaxDiskDownload caps a disk image fetched over http(s), in bytes
	// (default 64 GiB): the download lands in the VM's directory on the
	// agent's disk.
	MaxDiskDownload int64 `json:"max_disk_download,omitempty"`
}

// DefaultConfig is the configuration that works after `make vm-guest` on a
// Debian machine with qemu-system-x86 installed.
func DefaultConfig() Config {
	return Config{
		Kernel: DefaultCacheDir + "/vmlinuz",
		Initrd: DefaultCacheDir + "/initramfs.cpio.gz",
		Qemu:   "qemu-system-x86_64",
		Accel:  AccelAuto,
		RunAs:  "nobody",
	}
}

// LoadConfig reads the configuration as Config says; self is the plugin's
// executable path ("" skips the file next to it).
func LoadConfig(self string) (Config, error) {
	c := DefaultConfig()
	path := os.Getenv("CORRAL_VM_CONFIG")
	explicit := path != ""
	if !explicit && self != "" {
		path = self + ".json"
	}
	if path != "" {
		b, err := os.ReadFile(path)
		switch {
		case err == nil:
			dec := json.NewDecoder(strings.NewReader(string(b)))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&c); err != nil {
				return c, fmt.Errorf("vm plugin config %s: %w", path, err)
			}
		case explicit || !errors.Is(err, os.ErrNotExist):
			return c, fmt.Errorf("vm plugin config: %w", err)
		}
	}
	for env, field := range map[string]*string{
		"CORRAL_VM_KERNEL": &c.Kernel, "CORRAL_VM_INITRD": &c.Initrd,
		"CORRAL_VM_QEMU": &c.Qemu, "CORRAL_VM_ACCEL": &c.Accel,
	} {
		if v := os.Getenv(env); v != "" {
			*field = v
		}
	}
	if v, ok := os.LookupEnv("CORRAL_VM_RUN_AS"); ok {
		c.RunAs = v
	}
	return c, c.validate()
}

func (c *Config) validate() error {
	switch c.Accel {
	case AccelAuto, AccelKVM, AccelTCG:
	default:
		return fmt.Errorf("vm plugin config: accel %q: want auto, kvm or tcg", c.Accel)
	}
	if c.OverheadMem == 0 {
		c.OverheadMem = 384 << 20
	}
	if c.MaxDiskDownload == 0 {
		c.MaxDiskDownload = 64 << 30
	}
	if c.MaxDiskDownload < 0 {
		return fmt.Errorf("vm plugin config: max_disk_download %d: want a size in bytes", c.MaxDiskDownload)
	}
	return nil
}

// check says why the node cannot run VMs with c, nil if it can.
func (c *Config) check() (qemu string, err error) {
	qemu, err = exec.LookPath(c.Qemu)
	if err != nil {
		return "", fmt.Errorf("qemu binary %q not found: install qemu-system-x86 (make deps)", c.Qemu)
	}
	for what, p := range map[string]string{"guest kernel": c.Kernel, "guest initramfs": c.Initrd} {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("%s %s: %v: prepare it with `make vm-guest`", what, p, err)
		}
	}
	if c.Accel == AccelKVM {
		if _, err := os.Stat("/dev/kvm"); err != nil {
			return "", fmt.Errorf("accel kvm: %v", err)
		}
	}
	return qemu, nil
}

package runc

import (
	"fmt"
	"maps"
	"path"
	"slices"
	"strings"
	"sync"

	"github.com/opencontainers/runc/libcontainer/configs"
	"github.com/opencontainers/runc/libcontainer/specconv"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/corral-dev/corral/plugins/drivers"
	"github.com/corral-dev/corral/structs"
)

const (
	// defaultPath is the PATH of a container whose image sets none.
	defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	// cfsPeriod is the CFS period (µs) against which the CPU quota is set.
	cfsPeriod = 100000
	// minCFSQuota is the smallest quota (µs) the kernel accepts.
	minCFSQuota = 1000
)

const (
	// SlotPids is the resource slot that sets a kernel's pids limit (the
	// most processes and threads it may have), overriding the driver's.
	SlotPids = "pids"
	// SlotDisk is the resource slot that sets how many bytes a kernel may
	// write into its scratch space (the writable layer of its rootfs),
	// overriding the driver's disk limit.
	SlotDisk = "disk"
)

// processSpec is a command to run in a container, resolved against its
// image: what libcontainer needs for the init and for every exec.
type processSpec struct {
	Args    []string         `json:"args"`
	Env     []string         `json:"env"`
	Cwd     string           `json:"cwd"`
	User    execUser         `json:"user"`
	Rlimits []configs.Rlimit `json:"rlimits,omitempty"`
}

// specconvMu serializes specconv.CreateLibcontainerConfig, which points
// every config's Devices at specconv's package-level list and sets their
// owners to the config's root uid and gid in place.
var specconvMu sync.Mutex

// createLibcontainerConfig is specconv.CreateLibcontainerConfig with a
// config of its own: its devices are copies, owned by its root (the
// mapped root of a user namespace, host root else), which no later call
// for another container changes.
func createLibcontainerConfig(opts *specconv.CreateOpts) (*configs.Config, error) {
	specconvMu.Lock()
	defer specconvMu.Unlock()
	lc, err := specconv.CreateLibcontainerConfig(opts)
	if err != nil {
		return nil, err
	}
	for i, dev := range lc.Devices {
		c := *dev
		lc.Devices[i] = &c
	}
	return lc, nil
}

// commandLine applies Docker's rules: the image's Entrypoint, followed by
// TaskConfig.Command when it is set and by the image's Cmd otherwise.
func commandLine(cfg *drivers.TaskConfig) []string {
	var entrypoint, cmd []string
	if ic := cfg.ImageConfig; ic != nil {
		entrypoint, cmd = ic.Entrypoint, ic.Cmd
	}
	if len(cfg.Command) > 0 {
		cmd = cfg.Command
	}
	return append(slices.Clone(entrypoint), cmd...)
}

// workingDir is TaskConfig.WorkDir, else the image's WorkingDir, else "/",
// as an absolute path inside the container.
func workingDir(cfg *drivers.TaskConfig) string {
	wd := cfg.WorkDir
	if wd == "" && cfg.ImageConfig != nil {
		wd = cfg.ImageConfig.WorkingDir
	}
	return path.Join("/", wd)
}

// userSpec is TaskConfig.User, else the image's User.
func userSpec(cfg *drivers.TaskConfig) string {
	if cfg.User != "" || cfg.ImageConfig == nil {
		return cfg.User
	}
	return cfg.ImageConfig.User
}

// envList merges environments: base entries ("K=V") in their order, then
// each map in turn, whose values override earlier ones of the same name and
// whose new names are appended in name order. Entries without "=" are
// dropped.
func envList(base []string, overrides ...map[string]string) []string {
	var keys []string
	vals := map[string]string{}
	set := func(k, v string) {
		if _, ok := vals[k]; !ok {
			keys = append(keys, k)
		}
		vals[k] = v
	}
	for _, kv := range base {
		if k, v, ok := strings.Cut(kv, "="); ok && k != "" {
			set(k, v)
		}
	}
	for _, m := range overrides {
		for _, k := range slices.Sorted(maps.Keys(m)) {
			set(k, m[k])
		}
	}
	env := make([]string, len(keys))
	for i, k := range keys {
		env[i] = k + "=" + vals[k]
	}
	return env
}

// envValue returns the value of key in env ("K=V" entries).
func envValue(env []string, key string) (string, bool) {
	for _, kv := range slices.Backward(env) {
		if k, v, ok := strings.Cut(kv, "="); ok && k == key {
			return v, true
		}
	}
	return "", false
}

// processEnv is the environment of a kernel: the image's, plus PATH, HOME
// and HOSTNAME where the image sets none, plus the task's, which wins over
// those, plus its devices' (NVIDIA_VISIBLE_DEVICES...), which win over all.
func processEnv(cfg *drivers.TaskConfig, u *execUser) []string {
	var image []string
	if cfg.ImageConfig != nil {
		image = cfg.ImageConfig.Env
	}
	defaults := map[string]string{}
	if _, ok := envValue(image, "PATH"); !ok {
		defaults["PATH"] = defaultPath
	}
	if _, ok := envValue(image, "HOME"); !ok {
		defaults["HOME"] = u.Home
	}
	if _, ok := envValue(image, "HOSTNAME"); !ok && cfg.Hostname != "" {
		defaults["HOSTNAME"] = cfg.Hostname
	}
	var devEnv map[string]string
	if cfg.Devices != nil {
		devEnv = cfg.Devices.Env
	}
	return envList(image, defaults, cfg.Env, devEnv)
}

// etcMounts are the files the driver writes for a container and binds over
// the image's.
type etcMounts struct {
	Hosts, Hostname, ResolvConf string
}

// containerConfig turns a task into a libcontainer configuration: runc's
// default spec (capabilities, no new privileges, masked and read-only
// paths, proc/dev/devpts/shm/mqueue/sysfs/cgroup mounts, pid, mount, uts,
// ipc and net namespaces) with the kernel's rootfs, hostname, /etc files,
// network namespace and cgroup limits (the pids slot, else the driver's
// pids limit), plus the default seccomp profile unless the driver's is off
// and a user namespace mapping container root to ids when ids is set.
func (d *Driver) containerConfig(cfg *drivers.TaskConfig, rootfs string, etc etcMounts, ids *idRange) (*configs.Config, []configs.Rlimit, error) {
	spec := specconv.Example()
	spec.Root = &specs.Root{Path: rootfs}
	spec.Process.Terminal = false
	spec.Hostname = cfg.Hostname
	if d.capabilities != nil {
		caps := slices.Clone(d.capabilities)
		spec.Process.Capabilities = &specs.LinuxCapabilities{Bounding: caps, Effective: caps, Permitted: caps}
	}
	if err := addCapabilities(spec, cfg.Options); err != nil {
		return nil, nil, err
	}
	setShmSize(spec, shmBytes(cfg))
	for _, m := range [][2]string{{"/etc/hosts", etc.Hosts}, {"/etc/hostname", etc.Hostname}, {"/etc/resolv.conf", etc.ResolvConf}} {
		spec.Mounts = append(spec.Mounts, specs.Mount{
			Destination: m[0], Type: "bind", Source: m[1],
			Options: []string{"rbind", "rprivate", "nosuid", "nodev", "noexec"},
		})
	}
	if hostNetwork(cfg) {
		// The kernel shares the agent's network namespace.
		spec.Linux.Namespaces = slices.DeleteFunc(spec.Linux.Namespaces, func(ns specs.LinuxNamespace) bool {
			return ns.Type == specs.NetworkNamespace
		})
	} else if cfg.NetNSPath != "" {
		for i, ns := range spec.Linux.Namespaces {
			if ns.Type == specs.NetworkNamespace {
				spec.Linux.Namespaces[i].Path = cfg.NetNSPath
			}
		}
	}
	spec.Linux.CgroupsPath = d.cgroupPath(cfg.ID)
	pids := d.pidsLimit
	if n := int64(cfg.Resources[SlotPids].Float()); n > 0 {
		pids = n
	}
	spec.Linux.Resources.Pids = &specs.LinuxPids{Limit: &pids}
	if cpu := cfg.Resources[structs.SlotCPU].Float(); cpu > 0 {
		quota := max(int64(cpu*cfsPeriod), minCFSQuota)
		period := uint64(cfsPeriod)
		spec.Linux.Resources.CPU = &specs.LinuxCPU{Quota: &quota, Period: &period}
	}
	if cfg.Cpuset != "" || cfg.CpusetMems != "" {
		if spec.Linux.Resources.CPU == nil {
			spec.Linux.Resources.CPU = &specs.LinuxCPU{}
		}
		spec.Linux.Resources.CPU.Cpus = cfg.Cpuset
		spec.Linux.Resources.CPU.Mems = cfg.CpusetMems
	}
	if mem := int64(cfg.Resources[structs.SlotMem].Float()); mem > 0 {
		spec.Linux.Resources.Memory = &specs.LinuxMemory{Limit: &mem}
	}
	if ids != nil && (cfg.NetNSPath != "" || hostNetwork(cfg)) {
		// sysfs can be mounted only by the user namespace that owns the
		// network namespace, and the agent's netns belongs to the host's:
		// bind the host's /sys read-only instead, as rootless runc does.
		for i, m := range spec.Mounts {
			if m.Destination == "/sys" {
				spec.Mounts[i] = specs.Mount{Destination: "/sys", Type: "none", Source: "/sys",
					Options: []string{"rbind", "nosuid", "noexec", "nodev", "ro"}}
			}
		}
	}
	addDevices(spec, cfg.Devices)
	if err := bindMounts(spec, cfg.Mounts); err != nil {
		return nil, nil, err
	}
	if ids != nil {
		spec.Linux.Namespaces = append(spec.Linux.Namespaces, specs.LinuxNamespace{Type: specs.UserNamespace})
		spec.Linux.UIDMappings = []specs.LinuxIDMapping{{ContainerID: 0, HostID: ids.HostID, Size: ids.Size}}
		spec.Linux.GIDMappings = []specs.LinuxIDMapping{{ContainerID: 0, HostID: ids.HostID, Size: ids.Size}}
	}
	if d.seccompOn() {
		sc, err := defaultSeccomp(spec)
		if err != nil {
			return nil, nil, err
		}
		spec.Linux.Seccomp = sc
	}
	lc, err := createLibcontainerConfig(&specconv.CreateOpts{CgroupName: cfg.ID, Spec: spec})
	if err != nil {
		return nil, nil, fmt.Errorf("building container config: %w", err)
	}
	// Process rlimits are the process's business in libcontainer: the
	// spec's RLIMIT_NOFILE goes to the init and every exec alike.
	var rlimits []configs.Rlimit
	for _, rl := range spec.Process.Rlimits {
		if rl.Type == "RLIMIT_NOFILE" {
			rlimits = append(rlimits, configs.Rlimit{Type: unix.RLIMIT_NOFILE, Hard: rl.Hard, Soft: rl.Soft})
		}
	}
	if rlimits, err = kernelRlimits(rlimits, cfg.Options); err != nil {
		return nil, nil, err
	}
	return lc, rlimits, nil
}

// shmBytes is the size of the kernel's /dev/shm, 0 for runc's default.
func shmBytes(cfg *drivers.TaskConfig) int64 {
	if cfg.Options == nil {
		return 0
	}
	return cfg.Options.ShmBytes
}

package runc

import (
	"fmt"
	"maps"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/moby/sys/capability"
	"github.com/opencontainers/runc/libcontainer/configs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/corral-dev/corral/drivers/internal/rlimit"
	"github.com/corral-dev/corral/plugins/drivers"
	"github.com/corral-dev/corral/structs"
)

// kernelRlimits returns the kernel's process rlimits: base (the driver's
// defaults), each replaced or joined by the kernel's ulimits.
func kernelRlimits(base []configs.Rlimit, o *structs.KernelOptions) ([]configs.Rlimit, error) {
	out := slices.Clone(base)
	if o == nil {
		return out, nil
	}
	for _, u := range o.Ulimits {
		r, err := rlimit.Resolve(u)
		if err != nil {
			return nil, err
		}
		rl := configs.Rlimit{Type: r.Resource, Soft: r.Soft, Hard: r.Hard}
		if i := slices.IndexFunc(out, func(r configs.Rlimit) bool { return r.Type == rl.Type }); i >= 0 {
			out[i] = rl
		} else {
			out = append(out, rl)
		}
	}
	return out, nil
}

// capabilityName checks a capability name ("CAP_IPC_LOCK", or "IPC_LOCK"
// in any case) against those the kernel headers know and returns it as
// "CAP_IPC_LOCK".
func capabilityName(name string) (string, error) {
	n := strings.ToUpper(strings.TrimSpace(name))
	n = strings.TrimPrefix(n, "CAP_")
	for _, c := range capability.ListKnown() {
		if strings.ToUpper(c.String()) == n {
			return "CAP_" + n, nil
		}
	}
	return "", fmt.Errorf("%w: unknown capability %q: give a name such as CAP_IPC_LOCK or CAP_SYS_PTRACE (see capabilities(7))", drivers.ErrInvalidConfig, name)
}

// addCapabilities adds the kernel's CapAdd to the process's bounding,
// effective and permitted sets and, so that a non-root user of the image
// has them too, to its inheritable and ambient sets.
func addCapabilities(spec *specs.Spec, o *structs.KernelOptions) error {
	if o == nil || len(o.CapAdd) == 0 {
		return nil
	}
	c := spec.Process.Capabilities
	if c == nil {
		c = &specs.LinuxCapabilities{}
		spec.Process.Capabilities = c
	}
	add := func(set []string, name string) []string {
		if slices.Contains(set, name) {
			return set
		}
		return append(slices.Clone(set), name)
	}
	for _, raw := range o.CapAdd {
		name, err := capabilityName(raw)
		if err != nil {
			return err
		}
		c.Bounding = add(c.Bounding, name)
		c.Effective = add(c.Effective, name)
		c.Permitted = add(c.Permitted, name)
		c.Inheritable = add(c.Inheritable, name)
		c.Ambient = add(c.Ambient, name)
	}
	return nil
}

// setShmSize sets the size of the container's /dev/shm tmpfs (runc's
// default mount is 64 MiB).
func setShmSize(spec *specs.Spec, bytes int64) {
	if bytes <= 0 {
		return
	}
	for i, m := range spec.Mounts {
		if m.Destination != "/dev/shm" {
			continue
		}
		opts := slices.DeleteFunc(slices.Clone(m.Options), func(o string) bool { return strings.HasPrefix(o, "size=") })
		spec.Mounts[i].Options = append(opts, "size="+strconv.FormatInt(bytes, 10))
	}
}

// bindMounts adds the task's mounts as bind mounts (read-only when asked;
// libcontainer creates the destination in the writable root). The source
// must exist on the host and the destination be an absolute path.
func bindMounts(spec *specs.Spec, mounts []drivers.Mount) error {
	for _, m := range mounts {
		if !filepath.IsAbs(m.Source) {
			return fmt.Errorf("%w: mount source %q must be an absolute host path", drivers.ErrInvalidConfig, m.Source)
		}
		if !path.IsAbs(m.Destination) || path.Clean(m.Destination) == "/" {
			return fmt.Errorf("%w: mount destination %q must be an absolute path below /", drivers.ErrInvalidConfig, m.Destination)
		}
		if _, err := os.Stat(m.Source); err != nil {
			return fmt.Errorf("%w: mount source: %v", drivers.ErrInvalidConfig, err)
		}
		opts := []string{"rbind", "rprivate", "nosuid", "nodev"}
		if m.ReadOnly {
			opts = append(opts, "ro")
		}
		spec.Mounts = append(spec.Mounts, specs.Mount{Destination: path.Clean(m.Destination), Type: "bind", Source: m.Source, Options: opts})
	}
	return nil
}

// hostNetwork says whether the kernel shares the agent's network
// namespace.
func hostNetwork(cfg *drivers.TaskConfig) bool {
	return cfg.Options != nil && cfg.Options.Network == structs.NetworkHost
}

// etcHosts are the kernel's extra /etc/hosts entries: cfg.Hosts and, for
// a kernel on the host's network, the host's own name (on 127.0.1.1 as
// Debian has it) unless cfg.Hosts names it.
func etcHosts(cfg *drivers.TaskConfig) map[string]string {
	if !hostNetwork(cfg) {
		return cfg.Hosts
	}
	hosts := maps.Clone(cfg.Hosts)
	if hosts == nil {
		hosts = map[string]string{}
	}
	if name, err := os.Hostname(); err == nil && name != "" && name != cfg.Hostname && hosts[name] == "" {
		hosts[name] = "127.0.1.1"
	}
	return hosts
}

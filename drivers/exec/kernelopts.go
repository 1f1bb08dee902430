package exec

import (
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/corral-dev/corral/drivers/exec/taskrun"
	"github.com/corral-dev/corral/drivers/internal/rlimit"
	"github.com/corral-dev/corral/drivers/shim"
	"github.com/corral-dev/corral/plugins/drivers"
	"github.com/corral-dev/corral/structs"
)

// Kernel options in the exec driver:
//   - Network: kernels always use the host's network ("host" is the
//     driver's only mode).
//   - Ulimits: set (setrlimit) by the task's init, as root, before the
//     command starts (the host driver: by the task's shim); a hard limit
//     above the agent's own needs CAP_SYS_RESOURCE.
//   - ShmBytes: the size of an isolated task's private /dev/shm; the host
//     driver's kernels use the host's /dev/shm and cannot have one.
//   - CapAdd: refused by the exec driver, whose kernels run as an
//     unprivileged user with no_new_privs and can hold no capability; the
//     host driver's root kernels have every capability already, a kernel
//     of another user none.
//   - Cpuset: a cpuset cgroup where the node has one, else the CPU
//     affinity of the task's init, which the command inherits and cannot
//     widen without CAP_SYS_NICE (isolated kernels never have it).
//   - Hosts and Mounts: bound in an isolated task's mount namespace (a
//     generated /etc/hosts of the host's entries plus cfg.Hosts, and
//     cfg.Mounts); the host driver has no mount namespace and skips them
//     with a warning.

// taskLimits turns the task's options and cpuset into what its init (or
// shim) applies; pinned says whether its cgroups pin it to its cpuset.
func (d *Driver) taskLimits(cfg *drivers.TaskConfig, pinned bool) (taskrun.Limits, error) {
	var l taskrun.Limits
	if cfg.Cpuset != "" && !pinned {
		l.Affinity = cfg.Cpuset
	}
	o := cfg.Options
	if o == nil {
		return l, nil
	}
	switch {
	case o.Network != structs.NetworkDefault && o.Network != structs.NetworkHost:
		return l, fmt.Errorf("%w: task %s: unknown network mode %q: %s kernels use the host's network", drivers.ErrInvalidConfig, cfg.ID, o.Network, d.Name())
	case len(o.CapAdd) > 0 && d.isolated:
		return l, fmt.Errorf("%w: task %s asks for capabilities %s, but exec kernels run as an unprivileged user with no_new_privs "+
			"and hold none: use the runc driver for added capabilities", drivers.ErrInvalidConfig, cfg.ID, strings.Join(o.CapAdd, ", "))
	case len(o.CapAdd) > 0 && cfg.User != "":
		return l, fmt.Errorf("%w: task %s asks for capabilities %s, but the host driver runs it as user %s, who holds none",
			drivers.ErrInvalidConfig, cfg.ID, strings.Join(o.CapAdd, ", "), cfg.User)
	case o.ShmBytes < 0:
		return l, fmt.Errorf("%w: task %s: negative /dev/shm size %d", drivers.ErrInvalidConfig, cfg.ID, o.ShmBytes)
	case o.ShmBytes > 0 && !d.isolated:
		return l, fmt.Errorf("%w: task %s asks for a /dev/shm of %d bytes, but host driver kernels use the host's /dev/shm",
			drivers.ErrInvalidConfig, cfg.ID, o.ShmBytes)
	case len(o.Ulimits) > 0 && !d.isolated && !shim.Available():
		return l, fmt.Errorf("%w: task %s asks for ulimits, which the host driver sets in the task's shim, and this binary runs no shims",
			drivers.ErrInvalidConfig, cfg.ID)
	}
	l.ShmBytes = o.ShmBytes
	for _, u := range o.Ulimits {
		r, err := rlimit.Resolve(u)
		if err != nil {
			return l, fmt.Errorf("task %s: %w", cfg.ID, err)
		}
		l.Rlimits = append(l.Rlimits, taskrun.Rlimit{Resource: r.Resource, Soft: r.Soft, Hard: r.Hard})
	}
	return l, nil
}

// hostsFileName is the generated /etc/hosts in the task's directory.
const hostsFileName = "hosts"

// taskBinds returns the bind mounts of an isolated task: a hosts file
// written into its task directory (the host's /etc/hosts plus
// cfg.Hosts) over /etc/hosts when cfg.Hosts names any host, and
// cfg.Mounts. The host driver has no mount namespace: it logs that it
// skips them.
func (d *Driver) taskBinds(cfg *drivers.TaskConfig, log *slog.Logger) ([]taskrun.Bind, error) {
	if len(cfg.Hosts) == 0 && len(cfg.Mounts) == 0 {
		return nil, nil
	}
	if !d.isolated {
		log.Warn("the host driver has no mount namespace: the kernel's hosts entries and mounts are not applied",
			"hosts", len(cfg.Hosts), "mounts", len(cfg.Mounts))
		return nil, nil
	}
	var binds []taskrun.Bind
	if len(cfg.Hosts) > 0 {
		path := filepath.Join(cfg.TaskDir, hostsFileName)
		if err := os.MkdirAll(cfg.TaskDir, 0o755); err != nil {
			return nil, fmt.Errorf("task %s: %w", cfg.ID, err)
		}
		if err := writeHostsFile(path, "/etc/hosts", cfg.Hosts); err != nil {
			return nil, fmt.Errorf("task %s: writing its /etc/hosts: %w", cfg.ID, err)
		}
		binds = append(binds, taskrun.Bind{Source: path, Destination: "/etc/hosts", ReadOnly: true})
	}
	for _, m := range cfg.Mounts {
		if !filepath.IsAbs(m.Source) || !filepath.IsAbs(m.Destination) || filepath.Clean(m.Destination) == "/" {
			return nil, fmt.Errorf("%w: task %s: mount %s on %s: both must be absolute paths, the destination below /",
				drivers.ErrInvalidConfig, cfg.ID, m.Source, m.Destination)
		}
		if _, err := os.Stat(m.Source); err != nil {
			return nil, fmt.Errorf("%w: task %s: mount source: %v", drivers.ErrInvalidConfig, cfg.ID, err)
		}
		binds = append(binds, taskrun.Bind{Source: m.Source, Destination: filepath.Clean(m.Destination), ReadOnly: m.ReadOnly})
	}
	return binds, nil
}

// writeHostsFile writes the host's hosts file (hostFile) followed by
// extra's entries, in name order, to path, readable by all.
func writeHostsFile(path, hostFile string, extra map[string]string) error {
	base, err := os.ReadFile(hostFile)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	var b strings.Builder
	b.Write(base)
	if len(base) > 0 && base[len(base)-1] != '\n' {
		b.WriteByte('\n')
	}
	b.WriteString("# corral: the kernel's peers\n")
	for _, name := range slices.Sorted(maps.Keys(extra)) {
		b.WriteString(extra[name] + "\t" + name + "\n")
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		return err
	}
	return os.Chmod(path, 0o644)
}

package cgroup

import (
	"errors"
	"fmt"
	"os"
	"strings"
)

// ErrDevicesUnavailable means a task must be denied devices but this node
// offers no device cgroup to do it with.
var ErrDevicesUnavailable = errors.New("device cgroup unavailable")

// CanDenyDevices reports whether tasks can be denied devices: on cgroup
// v1 through the devices controller, on cgroup v2 through an eBPF device
// program.
func (m *Manager) CanDenyDevices() bool {
	switch m.version {
	case V1:
		return m.devicesParent != ""
	case V2:
		return denyV2 != nil
	}
	return false
}

// denyDevices makes g's device cgroup deny nodes and allow every other
// device.
func (g *Group) denyDevices(nodes []Device) error {
	if len(nodes) == 0 {
		return nil
	}
	switch g.Version {
	case V1:
		d := g.Dirs[Devices]
		if d == "" {
			return fmt.Errorf("%w: the task has no devices cgroup", ErrDevicesUnavailable)
		}
		for _, n := range nodes {
			if err := write(d, "devices.deny", deviceRule(n)); err != nil {
				return fmt.Errorf("denying device %s: %w", n.Path, err)
			}
		}
		return nil
	case V2:
		return DenyDevicesV2(g.Dirs[Unified], nodes)
	}
	return fmt.Errorf("%w: cgroup version %s", ErrDevicesUnavailable, g.Version)
}

// deviceRule is the devices.deny line of node n: "c 195:1 rwm".
func deviceRule(n Device) string {
	return fmt.Sprintf("%s %d:%d rwm", n.Type, n.Major, n.Minor)
}

// Device is a device node a task is denied.
type Device struct {
	// Path is the node's path on the host, for messages.
	Path string
	// Type is 'c' or 'b'.
	Type         string
	Major, Minor int64
}

// denyV2 attaches to a cgroup v2 directory a device program that denies
// nodes and allows every other device. It is set by RegisterV2Denier (the
// ebpfdev package does it in its init), so that the processes that only
// join cgroups (corral-shim) do not link the eBPF code.
var denyV2 func(dir string, nodes []Device) error

// RegisterV2Denier sets how devices are denied on cgroup v2.
func RegisterV2Denier(f func(dir string, nodes []Device) error) { denyV2 = f }

// DenyDevicesV2 attaches to the cgroup v2 directory dir a device program
// that denies every access to nodes and allows every other device. It
// replaces a program attached by an earlier call. It works on the cgroup2
// hierarchy of a hybrid host too, where v1 controllers and v2 programs
// both apply. It needs a registered implementation (import ebpfdev).
func DenyDevicesV2(dir string, nodes []Device) error {
	if denyV2 == nil {
		return fmt.Errorf("%w: no eBPF device program support built in", ErrDevicesUnavailable)
	}
	if _, err := os.Stat(dir); err != nil {
		return fmt.Errorf("denying devices: %w", err)
	}
	if err := denyV2(dir, nodes); err != nil {
		paths := make([]string, len(nodes))
		for i, n := range nodes {
			paths[i] = n.Path
		}
		return fmt.Errorf("denying devices %s with an eBPF device program in %s: %w", strings.Join(paths, ", "), dir, err)
	}
	return nil
}

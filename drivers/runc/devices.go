package runc

import (
	"fmt"
	"os"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/corral-dev/corral/plugins/drivers"
	"github.com/corral-dev/corral/structs"
)

// checkDevices checks that a kernel's device reservation can be applied
// here: every node exists on the host as a device of its type and number
// (a kernel in a user namespace gets the host's node bound, since it may
// not mknod), and every mount's source exists.
func checkDevices(r *structs.DeviceReservation) error {
	if r == nil {
		return nil
	}
	for _, n := range r.Nodes {
		var st unix.Stat_t
		if err := unix.Stat(n.Path, &st); err != nil {
			return fmt.Errorf("device node %s: %w", n.Path, err)
		}
		want := uint32(unix.S_IFCHR)
		if n.Type == "b" {
			want = unix.S_IFBLK
		}
		if st.Mode&unix.S_IFMT != want || int64(unix.Major(st.Rdev)) != n.Major || int64(unix.Minor(st.Rdev)) != n.Minor {
			return fmt.Errorf("device node %s on the host is not the %s %d:%d device the kernel was given",
				n.Path, n.Type, n.Major, n.Minor)
		}
	}
	for _, m := range r.Mounts {
		if _, err := os.Stat(m.HostPath); err != nil {
			return fmt.Errorf("device mount %s: %w", m.HostPath, err)
		}
	}
	return nil
}

// addDevices puts a kernel's devices into its spec: each node in the
// container (libcontainer mknods it, or binds the host's node in a user
// namespace) with a device cgroup rule allowing it, after runc's default
// rules, which deny every other device; each mount bound read-only from
// the host.
// The environment goes into the process (processEnv).
func addDevices(spec *specs.Spec, r *structs.DeviceReservation) {
	if r == nil {
		return
	}
	for _, n := range r.Nodes {
		mode := os.FileMode(0o666)
		var uid, gid uint32
		if fi, err := os.Stat(n.Path); err == nil {
			mode = fi.Mode().Perm()
		}
		spec.Linux.Devices = append(spec.Linux.Devices, specs.LinuxDevice{
			Path: n.Path, Type: n.Type, Major: n.Major, Minor: n.Minor, FileMode: &mode, UID: &uid, GID: &gid,
		})
		major, minor := n.Major, n.Minor
		spec.Linux.Resources.Devices = append(spec.Linux.Resources.Devices, specs.LinuxDeviceCgroup{
			Allow: true, Type: n.Type, Major: &major, Minor: &minor, Access: drivers.DevicePerms(n),
		})
	}
	for _, m := range r.Mounts {
		// Always read-only, whatever m.ReadOnly says: a kernel must not
		// change the host's driver files.
		opts := []string{"rbind", "rprivate", "nosuid", "nodev", "ro"}
		spec.Mounts = append(spec.Mounts, specs.Mount{Destination: m.Path, Type: "bind", Source: m.HostPath, Options: opts})
	}
}

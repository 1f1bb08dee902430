package drivers

import (
	"fmt"
	"maps"
	"path"
	"slices"
	"strings"

	"github.com/corral-dev/corral/structs"
)

// ValidateDevices checks that a device reservation is one a driver can
// apply: absolute, clean node and mount paths, node types "c" or "b",
// non-negative numbers, access rights made of r, w and m, and
// environment names without "=". It wraps ErrInvalidConfig. A nil
// reservation is valid.
func ValidateDevices(r *structs.DeviceReservation) error {
	if r == nil {
		return nil
	}
	check := func(kind string, nodes []structs.DeviceNode) error {
		for _, n := range nodes {
			switch {
			case !cleanAbs(n.Path):
				return fmt.Errorf("%w: %s device node path %q must be absolute and clean", ErrInvalidConfig, kind, n.Path)
			case n.Type != "c" && n.Type != "b":
				return fmt.Errorf("%w: %s device node %s has type %q: want \"c\" or \"b\"", ErrInvalidConfig, kind, n.Path, n.Type)
			case n.Major < 0 || n.Minor < 0:
				return fmt.Errorf("%w: %s device node %s has a negative number %d:%d", ErrInvalidConfig, kind, n.Path, n.Major, n.Minor)
			case strings.Trim(n.Perms, "rwm") != "":
				return fmt.Errorf("%w: %s device node %s has access rights %q: want letters of \"rwm\"", ErrInvalidConfig, kind, n.Path, n.Perms)
			}
		}
		return nil
	}
	if err := check("given", r.Nodes); err != nil {
		return err
	}
	if err := check("denied", r.Deny); err != nil {
		return err
	}
	for _, m := range r.Mounts {
		if !cleanAbs(m.HostPath) || !cleanAbs(m.Path) || m.Path == "/" {
			return fmt.Errorf("%w: device mount %q -> %q: both paths must be absolute and clean (and not /)", ErrInvalidConfig, m.HostPath, m.Path)
		}
	}
	for _, k := range slices.Sorted(maps.Keys(r.Env)) {
		if k == "" || strings.ContainsAny(k, "=\x00") {
			return fmt.Errorf("%w: device environment variable name %q is empty or holds '=' or NUL", ErrInvalidConfig, k)
		}
	}
	return nil
}

// DevicePerms is a node's access rights, "rwm" when it names none.
func DevicePerms(n structs.DeviceNode) string {
	if n.Perms == "" {
		return "rwm"
	}
	return n.Perms
}

// cleanAbs reports whether p is an absolute, clean path.
func cleanAbs(p string) bool { return path.IsAbs(p) && path.Clean(p) == p }

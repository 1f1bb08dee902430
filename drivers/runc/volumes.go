package runc

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/corral-dev/corral/plugins/drivers"
)

// volumesSubdir holds, in a kernel's container dir, the idmapped mounts
// of its owned mounts (volumes); the rootfs release unmounts them.
const volumesSubdir = "volumes"

// mapOwnedMounts gives the owned mounts of a kernel in a user namespace
// (ids) its root as their owner: each is bound, idmapped (host uid and
// gid Owner shown as the kernel's root, ids.HostID), below dir, and the
// bind from there replaces its source in the returned mounts. Without a
// user namespace the mounts are used as they are.
func mapOwnedMounts(dir string, mounts []drivers.Mount, ids *idRange) ([]drivers.Mount, error) {
	if ids == nil {
		return mounts, nil
	}
	out := make([]drivers.Mount, len(mounts))
	copy(out, mounts)
	for i, m := range out {
		if m.Owner == nil {
			continue
		}
		target := filepath.Join(dir, volumesSubdir, strconv.Itoa(i))
		if err := os.MkdirAll(target, 0o700); err != nil {
			return nil, err
		}
		if err := idmapOwned(m.Source, target, m.Owner, ids.HostID, m.ReadOnly); err != nil {
			return nil, fmt.Errorf("mount %s: %w", m.Destination, err)
		}
		out[i].Source = target
	}
	return out, nil
}

// idmapOwned bind-mounts src at target with files of owner shown as
// host id root (the kernel's root).
func idmapOwned(src, target string, owner *drivers.MountOwner, root uint32, readOnly bool) error {
	ns, err := usernsFileMap([]syscall.SysProcIDMap{{ContainerID: int(owner.UID), HostID: int(root), Size: 1}},
		[]syscall.SysProcIDMap{{ContainerID: int(owner.GID), HostID: int(root), Size: 1}})
	if err != nil {
		return err
	}
	defer ns.Close()
	fd, err := unix.OpenTree(unix.AT_FDCWD, src, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
	if err != nil {
		return fmt.Errorf("open_tree %s: %w", src, err)
	}
	defer unix.Close(fd)
	attr := &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_IDMAP | unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV, Userns_fd: uint64(ns.Fd())}
	if readOnly {
		attr.Attr_set |= unix.MOUNT_ATTR_RDONLY
	}
	if err := unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH, attr); err != nil {
		return fmt.Errorf("idmapping %s for the kernel's user namespace (mount_setattr; needs a file system with idmapped mounts): %w", src, err)
	}
	if err := unix.MoveMount(fd, "", unix.AT_FDCWD, target, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("moving the idmapped mount of %s to %s: %w", src, target, err)
	}
	return nil
}

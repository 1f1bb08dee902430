// Package btrfsioc holds the btrfs numbers corral uses: the ioctl
// requests of volume quotas (agent/quota.go) and those that kernels'
// system call filters refuse (drivers/exec/taskrun, drivers/runc). On a
// btrfs volume backend each volume is a subvolume held to its quota by a
// qgroup limit; a subvolume made inside it would get a qgroup of its own,
// without a limit, and escape the quota. Making one needs no capability,
// only write access to the directory. Standard library only: the exec
// driver's shim links it.
package btrfsioc

import "syscall"

// ioctl requests (linux/btrfs.h): _IOC(dir, 0x94, nr, size), dir 1 for
// _IOW, 2 for _IOR, 3 for _IOWR; the args sizes are 4096 (vol_args and
// vol_args_v2), 16 (quota_ctl_args) and 48 (qgroup_limit_args).
const (
	SnapCreate     = 0x50009401 // BTRFS_IOC_SNAP_CREATE: _IOW(0x94, 1, vol_args)
	SubvolCreate   = 0x5000940e // BTRFS_IOC_SUBVOL_CREATE: _IOW(0x94, 14, vol_args)
	SnapCreateV2   = 0x50009417 // BTRFS_IOC_SNAP_CREATE_V2: _IOW(0x94, 23, vol_args_v2)
	SubvolCreateV2 = 0x50009418 // BTRFS_IOC_SUBVOL_CREATE_V2: _IOW(0x94, 24, vol_args_v2)
	QuotaCtl       = 0xc0109428 // BTRFS_IOC_QUOTA_CTL: _IOWR(0x94, 40, quota_ctl_args)
	QgroupLimit    = 0x8030942b // BTRFS_IOC_QGROUP_LIMIT: _IOR(0x94, 43, qgroup_limit_args)
)

// SubvolumeIoctls are the requests that make subvolumes and snapshots.
// The kernel reads an ioctl request as 32 bits.
var SubvolumeIoctls = []uint32{SnapCreate, SubvolCreate, SnapCreateV2, SubvolCreateV2}

// SuperMagic is btrfs's statfs f_type; FirstFreeIno is the inode number
// of every subvolume's root directory.
const (
	SuperMagic   = 0x9123683e
	FirstFreeIno = 256
)

// OnBtrfs says whether path lies on a btrfs filesystem.
func OnBtrfs(path string) bool {
	var st syscall.Statfs_t
	return syscall.Statfs(path, &st) == nil && uint32(st.Type) == SuperMagic
}

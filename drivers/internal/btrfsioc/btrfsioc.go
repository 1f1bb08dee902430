// Package btrfsioc names the btrfs ioctl requests that kernels' system
// call filters refuse: those that make subvolumes and snapshots. On a
// btrfs volume backend each volume is a subvolume held to its quota by a
// qgroup limit (agent/quota.go); a subvolume made inside it would get a
// qgroup of its own, without a limit, and escape the quota. Making one
// needs no capability, only write access to the directory.
package btrfsioc

// SubvolumeIoctls are BTRFS_IOC_SNAP_CREATE, SUBVOL_CREATE,
// SNAP_CREATE_V2 and SUBVOL_CREATE_V2: _IOW(0x94, nr, 4096-byte args).
// The kernel reads an ioctl request as 32 bits.
var SubvolumeIoctls = []uint32{0x50009401, 0x5000940e, 0x50009417, 0x50009418}

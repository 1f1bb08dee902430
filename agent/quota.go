package agent

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Volume quotas (docs/volumes.md "Quotas"). A backend on btrfs gets
// each volume as a subvolume of its own, and a volume with a quota a
// qgroup limit on its referenced bytes: writes past it fail with EDQUOT
// in the kernel. Every other filesystem (ext4 and XFS need project
// quotas, which corral does not set; NFS and CephFS quotas are the
// storage's) gets the quota measured and reported only.

// Quota enforcement as volume list reports it.
const (
	QuotaEnforced = "enforced" // a btrfs qgroup limit holds it
	QuotaMeasured = "measured" // reported by du, not enforced
)

// btrfs ioctls (linux/btrfs.h): _IOC(dir, 0x94, nr, size).
const (
	btrfsIoctlMagic   = 0x94
	btrfsSuperMagic   = 0x9123683e
	btrfsFirstFreeIno = 256 // a subvolume's root directory inode

	btrfsQuotaCtlEnable  = 1
	btrfsQgroupLimitRfer = 1 << 0 // BTRFS_QGROUP_LIMIT_MAX_RFER
)

func iocNum(dir, nr, size uintptr) uintptr {
	return dir<<30 | size<<16 | btrfsIoctlMagic<<8 | nr
}

const (
	iocWrite = 1
	iocRead  = 2
)

// btrfsVolArgs is struct btrfs_ioctl_vol_args.
type btrfsVolArgs struct {
	Fd   int64
	Name [4088]byte
}

// btrfsQuotaCtlArgs is struct btrfs_ioctl_quota_ctl_args.
type btrfsQuotaCtlArgs struct {
	Cmd    uint64
	Status uint64
}

// btrfsQgroupLimitArgs is struct btrfs_ioctl_qgroup_limit_args.
type btrfsQgroupLimitArgs struct {
	Qgroupid uint64
	Flags    uint64
	MaxRfer  uint64
	MaxExcl  uint64
	RsvRfer  uint64
	RsvExcl  uint64
}

var (
	btrfsIocSubvolCreate = iocNum(iocWrite, 14, unsafe.Sizeof(btrfsVolArgs{}))
	btrfsIocQuotaCtl     = iocNum(iocWrite|iocRead, 40, unsafe.Sizeof(btrfsQuotaCtlArgs{}))
	btrfsIocQgroupLimit  = iocNum(iocRead, 43, unsafe.Sizeof(btrfsQgroupLimitArgs{}))
)

func ioctl(fd int, req uintptr, arg unsafe.Pointer) error {
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(arg)); e != 0 {
		return e
	}
	return nil
}

// onBtrfs says whether path lies on a btrfs filesystem.
func onBtrfs(path string) bool {
	var st unix.Statfs_t
	return unix.Statfs(path, &st) == nil && uint32(st.Type) == btrfsSuperMagic
}

// isSubvolume says whether dir is the root of a btrfs subvolume.
func isSubvolume(dir string) bool {
	var st unix.Stat_t
	return onBtrfs(dir) && unix.Stat(dir, &st) == nil && st.Ino == btrfsFirstFreeIno
}

// makeVolumeDir makes the directory dir (its parent exists): a btrfs
// subvolume where the parent is on btrfs, so that a quota can hold it;
// a plain directory elsewhere.
func makeVolumeDir(dir string) error {
	parent, name := filepath.Split(dir)
	if !onBtrfs(parent) {
		return os.Mkdir(dir, 0o750)
	}
	f, err := os.Open(parent)
	if err != nil {
		return err
	}
	defer f.Close()
	var args btrfsVolArgs
	if len(name) >= len(args.Name) {
		return fmt.Errorf("volume directory name %q too long", name)
	}
	copy(args.Name[:], name)
	if err := ioctl(int(f.Fd()), btrfsIocSubvolCreate, unsafe.Pointer(&args)); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return os.ErrExist
		}
		return fmt.Errorf("creating btrfs subvolume %s: %w", dir, err)
	}
	return os.Chmod(dir, 0o750)
}

// quotaEnabled remembers the btrfs filesystems (by device) on which this
// agent turned quotas on, to log it once.
var quotaEnabled sync.Map

// enforceQuota holds the volume directory dir to quota bytes (0: no
// limit) where its filesystem can, and says how the quota holds:
// QuotaEnforced or QuotaMeasured. On btrfs it sets the qgroup limit of
// dir's subvolume, turning quotas on for the filesystem first when they
// are off (logged once). A directory that is not a subvolume (made
// before corral used subvolumes, or on another filesystem) is measured.
func (a *Agent) enforceQuota(dir string, quota int64) (string, error) {
	return a.setQuota(dir, quota, true)
}

// setQuota is enforceQuota; enable says whether it may turn quotas on
// (a kernel's start may; measuring for volume list only reports).
func (a *Agent) setQuota(dir string, quota int64, enable bool) (string, error) {
	if !isSubvolume(dir) {
		return QuotaMeasured, nil
	}
	f, err := os.Open(dir)
	if err != nil {
		return QuotaMeasured, err
	}
	defer f.Close()
	limit := btrfsQgroupLimitArgs{} // Qgroupid 0: dir's own subvolume
	if quota > 0 {
		limit.Flags, limit.MaxRfer = btrfsQgroupLimitRfer, uint64(quota)
	} else {
		limit.Flags, limit.MaxRfer = btrfsQgroupLimitRfer, ^uint64(0) // none
	}
	err = ioctl(int(f.Fd()), btrfsIocQgroupLimit, unsafe.Pointer(&limit))
	if errors.Is(err, unix.ENOTCONN) || errors.Is(err, unix.ENOENT) {
		// Quotas are off on this filesystem: turn them on (cheap on a
		// new filesystem; a rescan of existing data runs in the
		// background), then set the limit again.
		if quota == 0 || !enable {
			return QuotaMeasured, nil
		}
		ctl := btrfsQuotaCtlArgs{Cmd: btrfsQuotaCtlEnable}
		if err := ioctl(int(f.Fd()), btrfsIocQuotaCtl, unsafe.Pointer(&ctl)); err != nil {
			return QuotaMeasured, fmt.Errorf("turning btrfs quotas on for %s: %w", dir, err)
		}
		var st unix.Stat_t
		if unix.Stat(dir, &st) == nil {
			if _, seen := quotaEnabled.LoadOrStore(st.Dev, true); !seen && a != nil && a.logger != nil {
				a.logger.Info("turned btrfs quotas on to enforce volume quotas", "filesystem", dir)
			}
		}
		err = ioctl(int(f.Fd()), btrfsIocQgroupLimit, unsafe.Pointer(&limit))
	}
	if err != nil {
		return QuotaMeasured, fmt.Errorf("setting the btrfs quota of %s: %w", dir, err)
	}
	if quota == 0 {
		return QuotaMeasured, nil
	}
	return QuotaEnforced, nil
}

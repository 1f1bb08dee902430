package agent

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/corral-dev/corral/internal/btrfsioc"
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

const (
	btrfsQuotaCtlEnable  = 1
	btrfsQgroupLimitRfer = 1 << 0 // BTRFS_QGROUP_LIMIT_MAX_RFER
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

func ioctl(fd int, req uintptr, arg unsafe.Pointer) error {
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(arg)); e != 0 {
		return e
	}
	return nil
}

// isSubvolume says whether dir is the root of a btrfs subvolume.
func isSubvolume(dir string) bool {
	var st unix.Stat_t
	return btrfsioc.OnBtrfs(dir) && unix.Stat(dir, &st) == nil && st.Ino == btrfsioc.FirstFreeIno
}

// makeVolumeDir makes the directory dir (its parent exists): a btrfs
// subvolume where the parent is on btrfs, so that a quota can hold it;
// a plain directory elsewhere.
func makeVolumeDir(dir string) error {
	parent, name := filepath.Split(dir)
	if !btrfsioc.OnBtrfs(parent) {
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
	if err := ioctl(int(f.Fd()), btrfsioc.SubvolCreate, unsafe.Pointer(&args)); err != nil {
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
// dir's subvolume; when quotas are off on the filesystem it turns them
// on first if enable (a kernel's start; logged once), else reports
// measured (volume list). A directory that is not a subvolume (made
// before corral used subvolumes, or on another filesystem) is measured.
func (a *Agent) enforceQuota(dir string, quota int64, enable bool) (string, error) {
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
	err = ioctl(int(f.Fd()), btrfsioc.QgroupLimit, unsafe.Pointer(&limit))
	if errors.Is(err, unix.ENOTCONN) || errors.Is(err, unix.ENOENT) {
		// Quotas are off on this filesystem: turn them on (cheap on a
		// new filesystem; a rescan of existing data runs in the
		// background), then set the limit again.
		if quota == 0 || !enable {
			return QuotaMeasured, nil
		}
		ctl := btrfsQuotaCtlArgs{Cmd: btrfsQuotaCtlEnable}
		if err := ioctl(int(f.Fd()), btrfsioc.QuotaCtl, unsafe.Pointer(&ctl)); err != nil {
			return QuotaMeasured, fmt.Errorf("turning btrfs quotas on for %s: %w", dir, err)
		}
		var st unix.Stat_t
		if unix.Stat(dir, &st) == nil {
			if _, seen := quotaEnabled.LoadOrStore(st.Dev, true); !seen {
				a.logger.Info("turned btrfs quotas on to enforce volume quotas", "filesystem", dir)
			}
		}
		err = ioctl(int(f.Fd()), btrfsioc.QgroupLimit, unsafe.Pointer(&limit))
	}
	if err != nil {
		return QuotaMeasured, fmt.Errorf("setting the btrfs quota of %s: %w", dir, err)
	}
	if quota == 0 {
		return QuotaMeasured, nil
	}
	return QuotaEnforced, nil
}

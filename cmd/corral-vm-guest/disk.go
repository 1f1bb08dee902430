package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/corral-dev/corral/drivers/vm/guestproto"
)

// rootDisk is the first virtio disk: the session's disk image.
const rootDisk = "vda"

// diskWait bounds the wait for the disk to appear after virtio_blk loaded
// (seconds under a busy software emulation).
const diskWait = 60 * time.Second

// mountRootDisk mounts the disk image's root filesystem on RootDir: the
// whole disk if it holds a filesystem, else its first partition that
// mounts.
func mountRootDisk() error {
	if err := waitFor("/sys/block/"+rootDisk, diskWait); err != nil {
		return errors.New("the disk image: no virtio disk appeared in the guest (the guest initramfs lacks virtio_blk: rerun make vm-guest)")
	}
	if err := os.MkdirAll(guestproto.RootDir, 0o755); err != nil {
		return err
	}
	fstypes := diskFilesystems()
	var err error
	// The kernel may list the disk's partitions a moment after the disk:
	// without a filesystem on the whole disk and no partition seen, try
	// again for a few seconds.
	for range 10 {
		var parts bool
		if parts, err = mountFirst(fstypes); err == nil || parts {
			return err
		}
		time.Sleep(300 * time.Millisecond)
	}
	return err
}

// mountFirst mounts the first candidate that mounts; it says whether the
// disk had partitions.
func mountFirst(fstypes []string) (bool, error) {
	cands := diskCandidates()
	var tried []string
	for _, dev := range cands {
		path := "/dev/" + dev
		if err := waitFor(path, diskWait); err != nil {
			tried = append(tried, path+": no device node")
			continue
		}
		var errs []string
		for _, fs := range fstypes {
			err := unix.Mount(path, guestproto.RootDir, fs, 0, "")
			if err == nil {
				logf("root disk: %s (%s) on %s", path, fs, guestproto.RootDir)
				return len(cands) > 1, nil
			}
			errs = append(errs, fs+": "+err.Error())
		}
		tried = append(tried, path+" ("+strings.Join(errs, ", ")+")")
	}
	return len(cands) > 1, fmt.Errorf("the disk image has no mountable filesystem (tried %s)", strings.Join(tried, "; "))
}

// diskCandidates are the whole disk, then its partitions in order.
func diskCandidates() []string {
	out := []string{rootDisk}
	dirs, _ := filepath.Glob("/sys/block/" + rootDisk + "/" + rootDisk + "*")
	type part struct {
		name string
		n    int
	}
	var parts []part
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, "partition"))
		if err != nil {
			continue
		}
		n, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil {
			continue
		}
		parts = append(parts, part{filepath.Base(d), n})
	}
	slices.SortFunc(parts, func(a, b part) int { return a.n - b.n })
	for _, p := range parts {
		out = append(out, p.name)
	}
	return out
}

// diskFilesystems are the block filesystems the guest kernel knows, ext4
// first (the guest's initramfs loads it; it mounts ext2 and ext3 too).
func diskFilesystems() []string {
	out := []string{"ext4"}
	b, err := os.ReadFile("/proc/filesystems")
	if err != nil {
		return out
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 1 && !slices.Contains(out, f[0]) && f[0] != "ext3" && f[0] != "ext2" {
			out = append(out, f[0])
		}
	}
	return out
}

// waitFor polls until path exists.
func waitFor(path string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		_, err := os.Stat(path)
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

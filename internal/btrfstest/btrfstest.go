// Package btrfstest gives tests a btrfs filesystem of their own: an image
// file in the test's temporary directory, loop-mounted, unmounted and
// removed at the end.
package btrfstest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Mount makes and mounts a btrfs filesystem of size bytes (at least
// 256 MiB for mkfs.btrfs) and returns its mount point. It skips the test,
// saying why in one line, where there is no root, no btrfs in the kernel
// or no mkfs.btrfs (`make deps` installs btrfs-progs).
func Mount(t testing.TB, size int64) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: mounting a btrfs image needs root")
	}
	fss, _ := os.ReadFile("/proc/filesystems")
	if !strings.Contains(string(fss), "\tbtrfs\n") {
		t.Skip("skipping: this kernel has no btrfs")
	}
	mkfs, err := exec.LookPath("mkfs.btrfs")
	if err != nil {
		t.Skip("skipping: no mkfs.btrfs (apt-get install btrfs-progs)")
	}
	dir := t.TempDir()
	img, mnt := filepath.Join(dir, "btrfs.img"), filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	err = f.Truncate(size)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(mkfs, "-q", img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.btrfs: %v: %s", err, out)
	}
	if out, err := exec.Command("mount", "-o", "loop", img, mnt).CombinedOutput(); err != nil {
		t.Fatalf("mounting the btrfs image: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", "-l", mnt).CombinedOutput(); err != nil {
			t.Errorf("unmounting %s: %v: %s", mnt, err, out)
		}
	})
	return mnt
}

package agent

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/corral-dev/corral/internal/btrfsioc"
	"github.com/corral-dev/corral/internal/btrfstest"
	"github.com/corral-dev/corral/rpc"
)

// TestVolumeQuotaBtrfs: on a btrfs backend a volume is a subvolume whose
// qgroup limit refuses writes past its quota (EDQUOT), quotas being
// turned on by the agent; VolumeUsage says "enforced". A volume without a
// quota there, and one on another filesystem, are "measured" or nothing.
func TestVolumeQuotaBtrfs(t *testing.T) {
	mnt := btrfstest.Mount(t, 256<<20)
	root := filepath.Join(mnt, "vols")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	a := &Agent{logger: slog.New(slog.NewTextHandler(io.Discard, nil)), cfg: Config{VolumeRoots: map[string]string{"bt": root}}}
	const quota = 8 << 20
	dir := filepath.Join(root, "alice", "data")
	if err := ensureVolumeDir(dir, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	if !isSubvolume(dir) {
		t.Fatalf("%s is not a btrfs subvolume", dir)
	}
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil || st.Uid != 65534 || st.Mode&0o777 != 0o750 {
		t.Fatalf("volume dir: uid %d mode %o (%v), want 65534 0750", st.Uid, st.Mode&0o777, err)
	}
	how, err := a.enforceQuota(dir, quota, true)
	if err != nil || how != QuotaEnforced {
		t.Fatalf("enforceQuota = %q, %v; want %q", how, err, QuotaEnforced)
	}
	// Setting it again (every mount does) is fine.
	if how, err := a.enforceQuota(dir, quota, true); err != nil || how != QuotaEnforced {
		t.Fatalf("second enforceQuota = %q, %v", how, err)
	}

	// Writing twice the quota fails with EDQUOT near the quota.
	f, err := os.Create(filepath.Join(dir, "big"))
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	var written int64
	for written < 2*quota {
		n, err := f.Write(buf)
		written += int64(n)
		if err == nil {
			err = f.Sync()
		}
		if err != nil {
			if !errors.Is(err, unix.EDQUOT) {
				t.Fatalf("write after %d bytes: %v, want EDQUOT", written, err)
			}
			break
		}
	}
	f.Close()
	if written >= 2*quota || written < quota/2 {
		t.Fatalf("wrote %d bytes into a volume with an %d-byte quota", written, quota)
	}

	// Another volume on the same filesystem, without a quota, takes more.
	free := filepath.Join(root, "alice", "free")
	if err := ensureVolumeDir(free, -1, -1); err != nil {
		t.Fatal(err)
	}
	if how, err := a.enforceQuota(free, 0, true); err != nil || how != QuotaMeasured {
		t.Fatalf("enforceQuota without a quota = %q, %v", how, err)
	}
	if err := os.WriteFile(filepath.Join(free, "big"), make([]byte, 2*quota), 0o644); err != nil {
		t.Fatalf("writing into the volume without a quota: %v", err)
	}

	// A plain directory (not a subvolume) and another filesystem: measured.
	plain := filepath.Join(root, "plain")
	if err := os.Mkdir(plain, 0o755); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(t.TempDir(), "data")
	if err := ensureVolumeDir(other, -1, -1); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{plain, other} {
		if d == other && btrfsioc.OnBtrfs(other) {
			continue // the temporary directory is on btrfs itself
		}
		if how, err := a.enforceQuota(d, quota, true); err != nil || how != QuotaMeasured {
			t.Fatalf("enforceQuota(%s) = %q, %v; want %q", d, how, err, QuotaMeasured)
		}
	}

	// VolumeUsage reports it, and says a volume not made yet will be held.
	s := &agentService{a: a}
	resp, err := s.VolumeUsage(context.Background(), &rpc.VolumeUsageRequest{Volumes: []rpc.VolumeDir{
		{Backend: "bt", Dir: "alice/data", QuotaBytes: quota},
		{Backend: "bt", Dir: "alice/free"},
		{Backend: "bt", Dir: "bob/new", QuotaBytes: quota},
	}})
	if err != nil {
		t.Fatal(err)
	}
	u := resp.Volumes
	if len(u) != 3 || u[0].Quota != QuotaEnforced || u[0].Bytes != written || u[0].Error != "" {
		t.Fatalf("usage of the volume with a quota = %+v, want enforced with %d bytes", u[0], written)
	}
	if u[1].Quota != "" || u[1].Bytes != 2*quota {
		t.Fatalf("usage of the volume without a quota = %+v", u[1])
	}
	if u[2].Quota != QuotaEnforced || u[2].Bytes != 0 || u[2].Error != "" {
		t.Fatalf("usage of a volume never mounted = %+v", u[2])
	}

	// A subvolume inside the volume escapes its qgroup limit: the quota
	// is then reported measured, not enforced.
	if err := makeVolumeDir(filepath.Join(free, "nested")); err != nil {
		t.Fatal(err)
	}
	resp, err = s.VolumeUsage(context.Background(), &rpc.VolumeUsageRequest{Volumes: []rpc.VolumeDir{{Backend: "bt", Dir: "alice/free", QuotaBytes: 64 << 20}}})
	if err != nil {
		t.Fatal(err)
	}
	if q := resp.Volumes[0].Quota; q != QuotaMeasured {
		t.Fatalf("a volume with a subvolume inside: quota %q, want %q", q, QuotaMeasured)
	}
}

// TestBtrfsIoctlSizes: the argument structs match the sizes the ioctl
// requests encode (bits 16-29).
func TestBtrfsIoctlSizes(t *testing.T) {
	for _, c := range []struct {
		req  uint32
		size uintptr
	}{
		{btrfsioc.SubvolCreate, unsafe.Sizeof(btrfsVolArgs{})},
		{btrfsioc.QuotaCtl, unsafe.Sizeof(btrfsQuotaCtlArgs{})},
		{btrfsioc.QgroupLimit, unsafe.Sizeof(btrfsQgroupLimitArgs{})},
	} {
		if got := uintptr(c.req>>16) & 0x3fff; got != c.size {
			t.Errorf("request %#x encodes %d bytes, the struct has %d", c.req, got, c.size)
		}
	}
}

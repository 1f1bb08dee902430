package vm_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/corral-dev/corral/drivers/vm"
	"github.com/corral-dev/corral/plugins/drivers"
	"github.com/corral-dev/corral/plugins/drivers/testutils"
)

var (
	diskPrepOnce sync.Once
	diskPrepSkip string
)

// diskConfig is testConfig, or with CORRAL_VM_TEST_CACHE set, a guest
// prepared in that directory instead of the shared cache.
func diskConfig(t *testing.T) vm.Config {
	t.Helper()
	dir := os.Getenv("CORRAL_VM_TEST_CACHE")
	if dir == "" {
		return testConfig(t)
	}
	diskPrepOnce.Do(func() {
		if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
			diskPrepSkip = "qemu-system-x86_64 is not installed (make deps installs qemu-system-x86)"
			return
		}
		if out, err := exec.Command("../../scripts/vm-guest.sh", dir).CombinedOutput(); err != nil {
			diskPrepSkip = fmt.Sprintf("cannot prepare the guest in %s: %v: %s", dir, err, out)
		}
	})
	if diskPrepSkip != "" {
		t.Skip(diskPrepSkip)
	}
	c := vm.DefaultConfig()
	c.Kernel, c.Initrd, c.Accel = filepath.Join(dir, "vmlinuz"), filepath.Join(dir, "initramfs.cpio.gz"), vm.AccelTCG
	return c
}

// publicDir is a temporary directory every host user may search (the
// driver attaches only world-readable disk images).
func publicDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, d := range []string{dir, filepath.Dir(dir)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// ext4Image makes a 16 MiB ext4 image without root tools or loop mounts
// (mkfs.ext4 -d fills it from a directory): a static busybox as /bin/sh
// and cat, and /marker.txt holding marker.
func ext4Image(t *testing.T, dir, marker string) string {
	t.Helper()
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		t.Skip("mkfs.ext4 is not installed (e2fsprogs)")
	}
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Skipf("a static busybox for the test disk: %v", err)
	}
	root := filepath.Join(dir, "root")
	if err := os.MkdirAll(filepath.Join(root, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "bin", "busybox"), bb, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, applet := range []string{"sh", "cat", "echo"} {
		if err := os.Symlink("busybox", filepath.Join(root, "bin", applet)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "marker.txt"), []byte(marker+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "root.ext4")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-d", root, img, "16M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v: %s", err, out)
	}
	if err := os.Chmod(img, 0o644); err != nil {
		t.Fatal(err)
	}
	return img
}

// partitionedImage writes a raw disk with an MBR whose first partition
// (type 0x83, from 1 MiB) holds fs (nil: an empty partition table).
func partitionedImage(t *testing.T, path, fs string) string {
	t.Helper()
	var body []byte
	if fs != "" {
		var err error
		if body, err = os.ReadFile(fs); err != nil {
			t.Fatal(err)
		}
	}
	mbr := make([]byte, 1<<20)
	if len(body) > 0 {
		e := mbr[446:462]
		e[4] = 0x83
		binary.LittleEndian.PutUint32(e[8:12], 2048)
		binary.LittleEndian.PutUint32(e[12:16], uint32(len(body)/512))
	}
	mbr[510], mbr[511] = 0x55, 0xAA
	disk := append(mbr, body...)
	if len(body) == 0 {
		disk = append(disk, make([]byte, 4<<20)...)
	}
	if err := os.WriteFile(path, disk, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func fileHash(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}

// runDisk boots image as the task's root disk with command, waits for its
// end, destroys it and checks that nothing of the VM is left and the image
// file (the image's file on this host) is unchanged. It returns the result and stdout.
func runDisk(t *testing.T, image, file string, command ...string) (*drivers.ExitResult, string) {
	t.Helper()
	d := testutils.InMemoryPlugin(t, vm.New(diskConfig(t), testutils.TestLogger(t)))
	before := fileHash(t, file)
	cfg := vmTask(t, command...)
	cfg.Image = image
	h := testutils.StartTask(t, d, cfg)
	res := testutils.WaitResult(t, d, cfg.ID, vmTimeout)
	stdout := testutils.ReadLog(t, cfg.StdoutPath)
	var hs struct {
		Pid       int    `json:"pid"`
		Dir       string `json:"dir"`
		SocketDir string `json:"socket_dir"`
	}
	if err := json.Unmarshal(h.DriverState, &hs); err != nil {
		t.Fatalf("driver state %s: %v", h.DriverState, err)
	}
	if res.ExitCode != 3 {
		console, _ := os.ReadFile(filepath.Join(hs.Dir, "console.log"))
		t.Logf("guest console:\n%s", console)
	}
	if err := d.Destroy(context.Background(), cfg.ID, false); err != nil {
		t.Fatalf("Destroy: %v", err)
	}
	if !testutils.ProcessGone(hs.Pid) {
		t.Errorf("qemu (pid %d) still runs after Destroy", hs.Pid)
	}
	for _, p := range []string{hs.Dir, hs.SocketDir} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s is left after Destroy (err %v)", p, err)
		}
	}
	if after := fileHash(t, file); after != before {
		t.Errorf("the base image %s changed (sha256 %s, was %s): the VM wrote to it", file, after, before)
	}
	return res, stdout
}

// TestDiskImage boots raw ext4 disk images as the guest's root (the whole
// disk; a partitioned one, as qcow2 where qemu-img is installed): the
// command runs chrooted into the disk's filesystem, may write to it (the
// writes go to qemu's snapshot overlay, never to the image), and its exit
// code comes back.
func TestDiskImage(t *testing.T) {
	diskConfig(t)
	dir := publicDir(t)
	marker := fmt.Sprintf("disk-root-%d", os.Getpid())
	whole := ext4Image(t, dir, marker)
	// Writing to the disk must not reach the image: the hash check in
	// runDisk.
	cmd := []string{"/bin/sh", "-c", "echo scribble > /marker.txt.new; cat /marker.txt; test -e /proc/self/stat && test -d /sys/block && test -c /dev/null && echo mounts-ok; exit 3"}

	t.Run("raw", func(t *testing.T) {
		res, stdout := runDisk(t, whole, whole, cmd...)
		if res.ExitCode != 3 || stdout != marker+"\nmounts-ok\n" {
			t.Errorf("result %+v, stdout %q; want exit 3 and %q", res, stdout, marker+"\nmounts-ok\n")
		}
	})

	t.Run("http", func(t *testing.T) {
		srv := httptest.NewServer(http.FileServer(http.Dir(dir)))
		defer srv.Close()
		b, err := os.ReadFile(whole)
		if err != nil {
			t.Fatal(err)
		}
		// With its digest: checked on download.
		res, stdout := runDisk(t, fmt.Sprintf("%s/%s#sha256=%x", srv.URL, filepath.Base(whole), sha256.Sum256(b)), whole, cmd...)
		if res.ExitCode != 3 || stdout != marker+"\nmounts-ok\n" {
			t.Errorf("result %+v, stdout %q; want exit 3 and %q", res, stdout, marker+"\nmounts-ok\n")
		}
	})

	t.Run("partitioned", func(t *testing.T) {
		img := partitionedImage(t, filepath.Join(dir, "part.raw"), whole)
		format := "raw"
		if qimg, err := exec.LookPath("qemu-img"); err == nil {
			q := filepath.Join(dir, "part.qcow2")
			if out, err := exec.Command(qimg, "convert", "-f", "raw", "-O", "qcow2", img, q).CombinedOutput(); err != nil {
				t.Fatalf("qemu-img convert: %v: %s", err, out)
			}
			if err := os.Chmod(q, 0o644); err != nil {
				t.Fatal(err)
			}
			img, format = q, "qcow2"
		} else {
			t.Log("qemu-img is not installed: the partitioned disk boots as raw, not qcow2")
		}
		res, stdout := runDisk(t, "file://"+img, img, cmd...)
		if res.ExitCode != 3 || stdout != marker+"\nmounts-ok\n" {
			t.Errorf("%s: result %+v, stdout %q; want exit 3 and %q", format, res, stdout, marker+"\nmounts-ok\n")
		}
	})

	t.Run("no filesystem", func(t *testing.T) {
		img := partitionedImage(t, filepath.Join(dir, "empty.raw"), "")
		res, _ := runDisk(t, img, img, "/bin/true")
		if res.Successful() || res.Err == nil || !strings.Contains(res.Err.Error(), "the disk image has no mountable filesystem") {
			t.Errorf("result %+v (err %v); want a failure saying the disk has no mountable filesystem", res, res.Err)
		}
	})
}

// TestDiskImageRefused: files that are not disk images, or that the driver
// must not attach, fail Start with one message and leave nothing behind.
func TestDiskImageRefused(t *testing.T) {
	d := testutils.InMemoryPlugin(t, vm.New(diskConfig(t), testutils.TestLogger(t)))
	dir := publicDir(t)
	text := filepath.Join(dir, "notes.txt")
	if err := os.WriteFile(text, bytes.Repeat([]byte("not a disk\n"), 1000), 0o644); err != nil {
		t.Fatal(err)
	}
	private := filepath.Join(dir, "private.raw")
	partitionedImage(t, private, "")
	if err := os.Chmod(private, 0o600); err != nil {
		t.Fatal(err)
	}
	backed := filepath.Join(dir, "backed.qcow2")
	hdr := make([]byte, 512)
	copy(hdr, "QFI\xfb")
	binary.BigEndian.PutUint32(hdr[4:8], 3)
	binary.BigEndian.PutUint64(hdr[8:16], 104)
	if err := os.WriteFile(backed, hdr, 0o644); err != nil {
		t.Fatal(err)
	}
	partitionedImage(t, filepath.Join(dir, "good.raw"), "")
	srv := httptest.NewServer(http.FileServer(http.Dir(dir)))
	defer srv.Close()
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()
	for _, c := range []struct{ image, want string }{
		{srv.URL + "/notes.txt", "not a disk image"},
		{srv.URL + "/missing.raw", "404 Not Found"},
		{closed.URL + "/root.raw", "downloading it"},
		{text, "not a disk image"},
		{filepath.Join(dir, "missing.raw"), "no such file on this agent"},
		{"/dev/null", "not a regular file"},
		{dir, "not a regular file"},
		{private, "not readable by all host users"},
		{backed, "backing file"},
		{"file://otherhost" + text, "file:///path"},
		{srv.URL + "/good.raw#sha256=" + strings.Repeat("0", 64), "sha256 mismatch"},
		{srv.URL + "/good.raw#md5=00", "#sha256="},
		{"file://" + filepath.Join(dir, "good.raw") + "#sha256=" + strings.Repeat("0", 64), "sha256 mismatch"},
	} {
		cfg := vmTask(t, "/bin/true")
		cfg.Image = c.image
		_, err := d.Start(context.Background(), cfg)
		if err == nil || !errors.Is(err, drivers.ErrInvalidConfig) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Start with image %s: err = %v; want ErrInvalidConfig saying %q", c.image, err, c.want)
			continue
		}
		if _, err := os.Stat(filepath.Join(cfg.TaskDir, "vm")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("image %s: the VM's directory is left after the refused start (err %v)", c.image, err)
		}
	}
}

// TestDiskDownloadLimit: a download past max_disk_download is refused,
// whether the server announces its length or streams it, and nothing is
// left behind.
func TestDiskDownloadLimit(t *testing.T) {
	cfg := diskConfig(t)
	cfg.MaxDiskDownload = 64 << 10
	d := testutils.InMemoryPlugin(t, vm.New(cfg, testutils.TestLogger(t)))
	dir := publicDir(t)
	partitionedImage(t, filepath.Join(dir, "big.raw"), "")
	files := httptest.NewServer(http.FileServer(http.Dir(dir)))
	defer files.Close()
	stream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mbr := make([]byte, 512)
		mbr[510], mbr[511] = 0x55, 0xAA
		w.Write(mbr)
		for i := 0; i < 256; i++ { // 1 MiB more, chunked: no length announced
			w.(http.Flusher).Flush()
			if _, err := w.Write(make([]byte, 4096)); err != nil {
				return
			}
		}
	}))
	defer stream.Close()
	for _, image := range []string{files.URL + "/big.raw", stream.URL + "/disk.raw"} {
		tc := vmTask(t, "/bin/true")
		tc.Image = image
		_, err := d.Start(context.Background(), tc)
		if err == nil || !errors.Is(err, drivers.ErrInvalidConfig) || !strings.Contains(err.Error(), "max_disk_download: 65536") {
			t.Errorf("Start with %s: err = %v; want ErrInvalidConfig naming max_disk_download", image, err)
		}
		if _, err := os.Stat(filepath.Join(tc.TaskDir, "vm")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: the VM's directory is left after the refused start (err %v)", image, err)
		}
	}
}

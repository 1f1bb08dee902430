package vm

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/corral-dev/corral/plugins/drivers"
	"github.com/corral-dev/corral/structs"
)

// Disk image formats qemu is told explicitly (it never probes one).
const (
	diskRaw   = "raw"
	diskQcow2 = "qcow2"
)

// disk is a task's root disk image on the host: the file qemu attaches
// (read-only for it: snapshot=on) and its format.
type disk struct {
	Path   string
	Format string
}

// diskArgs are qemu's arguments for d: virtio-blk (virtio-mmio, as the
// microvm machine has no PCI), snapshot mode, so that the guest's writes
// go to a temporary overlay (in TMPDIR: the VM's directory) and the image
// itself is never written.
func (d *disk) qemuArgs() []string {
	return []string{
		"-drive", "file=" + qemuEscape(d.Path) + ",if=none,id=rootdisk,format=" + d.Format + ",snapshot=on",
		"-device", "virtio-blk-device,drive=rootdisk",
	}
}

// prepareDisk resolves the task's disk image, if its image is one (see
// structs.IsDiskImage): a path on this host, a file:// URL, or an
// http(s):// URL downloaded into dir once (at most maxDownload bytes,
// checked against the URL's #sha256=HEX when it has one). It checks that
// the file is a disk image the guest can use and returns nil for an OCI
// image.
func prepareDisk(ctx context.Context, ref, dir string, maxDownload int64) (*disk, error) {
	if !structs.IsDiskImage(ref) {
		return nil, nil
	}
	path, downloaded := ref, false
	var digest []byte // the URL's #sha256=, checked once the file is here and may be read
	switch {
	case strings.HasPrefix(ref, "file://"):
		u, err := url.Parse(ref)
		if err != nil || (u.Host != "" && u.Host != "localhost") || u.Path == "" {
			return nil, fmt.Errorf("%w: disk image %s: a file URL names a path on the agent (file:///path)", drivers.ErrInvalidConfig, ref)
		}
		path = u.Path
		if digest, err = urlDigest(u); err != nil {
			return nil, fmt.Errorf("%w: disk image %s: %v", drivers.ErrInvalidConfig, ref, err)
		}
	case strings.HasPrefix(ref, "http://") || strings.HasPrefix(ref, "https://"):
		u, err := url.Parse(ref)
		if err == nil {
			digest, err = urlDigest(u)
		}
		if err != nil {
			return nil, fmt.Errorf("%w: disk image %s: %v", drivers.ErrInvalidConfig, ref, err)
		}
		u.Fragment, u.RawFragment = "", "" // not sent
		if path, err = downloadDisk(ctx, u.String(), dir, maxDownload); err != nil {
			return nil, fmt.Errorf("%w: disk image %s: %v", drivers.ErrInvalidConfig, ref, err)
		}
		downloaded = true
	}
	if !filepath.IsAbs(path) || filepath.Clean(path) != path {
		return nil, fmt.Errorf("%w: disk image %s: the path must be absolute and clean", drivers.ErrInvalidConfig, ref)
	}
	if err := checkDiskAccess(path); err != nil && !downloaded {
		return nil, fmt.Errorf("%w: disk image %s: %v", drivers.ErrInvalidConfig, ref, err)
	}
	if digest != nil {
		if err := checkFileDigest(path, digest); err != nil {
			return nil, fmt.Errorf("%w: disk image %s: %v", drivers.ErrInvalidConfig, ref, err)
		}
	}
	format, err := diskFormat(path)
	if err != nil {
		return nil, fmt.Errorf("%w: disk image %s: %v", drivers.ErrInvalidConfig, ref, err)
	}
	return &disk{Path: path, Format: format}, nil
}

// checkDiskAccess refuses what is not a regular file every host user may
// read (with its directories searchable by all): qemu opens the image as
// root, and a session must not reach host files (a device, a private
// file) through it.
func checkDiskAccess(path string) error {
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return errors.New("no such file on this agent")
	case err != nil:
		return err
	case !fi.Mode().IsRegular():
		return errors.New("not a regular file (devices and directories are refused)")
	case fi.Mode().Perm()&0o004 == 0:
		return errors.New("not readable by all host users (the vm driver attaches only world-readable disk images)")
	}
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return err
	}
	for d := filepath.Dir(real); ; d = filepath.Dir(d) {
		di, err := os.Stat(d)
		if err != nil {
			return err
		}
		if di.Mode().Perm()&0o001 == 0 {
			return fmt.Errorf("directory %s is not searchable by all host users (the vm driver attaches only world-readable disk images)", d)
		}
		if d == "/" {
			return nil
		}
	}
}

// errNotDiskImage says what the driver accepts.
var errNotDiskImage = errors.New("not a disk image: the vm driver takes qcow2, or raw disks with an MBR/GPT partition table or an ext2/3/4 filesystem")

// diskFormat detects an image's format by its magic bytes: qcow2 (without
// a backing or external data file, which qemu would open on the host),
// else raw when it has a partition table (MBR, or GPT's protective MBR)
// or an ext2/3/4 superblock.
func diskFormat(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	b := make([]byte, 4096)
	n, err := io.ReadFull(f, b)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return "", err
	}
	b = b[:n]
	if len(b) >= 104 && string(b[:4]) == "QFI\xfb" {
		version := binary.BigEndian.Uint32(b[4:8])
		if version != 2 && version != 3 {
			return "", fmt.Errorf("qcow2 version %d is not supported", version)
		}
		if binary.BigEndian.Uint64(b[8:16]) != 0 {
			return "", errors.New("a qcow2 image with a backing file is refused (qemu would open that host file): flatten it with qemu-img convert")
		}
		// Version 3's incompatible feature bit 2: an external data file.
		if version == 3 && binary.BigEndian.Uint64(b[72:80])&(1<<2) != 0 {
			return "", errors.New("a qcow2 image with an external data file is refused (qemu would open that host file)")
		}
		return diskQcow2, nil
	}
	if len(b) >= 1082 && binary.LittleEndian.Uint16(b[1080:1082]) == 0xEF53 {
		return diskRaw, nil // ext2/3/4 on the whole disk
	}
	if len(b) >= 512 && b[510] == 0x55 && b[511] == 0xAA {
		return diskRaw, nil // an MBR (or GPT's protective MBR)
	}
	return "", errNotDiskImage
}

// downloadDisk fetches url into dir (the VM's directory, removed by
// Destroy) and returns the file's path. It stops past max bytes.
func downloadDisk(ctx context.Context, url, dir string, max int64) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", fmt.Errorf("downloading it: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("downloading it: %s", resp.Status)
	}
	tooBig := fmt.Errorf("the image is larger than the vm driver downloads (max_disk_download: %d bytes)", max)
	if resp.ContentLength > max {
		return "", tooBig
	}
	path := filepath.Join(dir, "disk.img")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return "", err
	}
	n, err := io.Copy(f, io.LimitReader(resp.Body, max+1))
	if err == nil && n > max {
		err = tooBig
	} else if err != nil {
		err = fmt.Errorf("downloading it: %v", err)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return "", err
	}
	return path, nil
}

// urlDigest is the SHA-256 a disk image URL names in its fragment
// (#sha256= and 64 hex digits), nil without one.
func urlDigest(u *url.URL) ([]byte, error) {
	if u.Fragment == "" {
		return nil, nil
	}
	h, ok := strings.CutPrefix(u.Fragment, "sha256=")
	want, err := hex.DecodeString(h)
	if !ok || err != nil || len(want) != sha256.Size {
		return nil, fmt.Errorf("the URL's fragment %q: the only one understood is #sha256= and 64 hex digits, the file's digest", u.Fragment)
	}
	return want, nil
}

// checkFileDigest checks the SHA-256 of the file at path.
func checkFileDigest(path string, want []byte) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	sum := sha256.New()
	if _, err := io.Copy(sum, f); err != nil {
		return err
	}
	if got := sum.Sum(nil); !bytes.Equal(got, want) {
		return fmt.Errorf("sha256 mismatch: the URL names %x, the file is %x", want, got)
	}
	return nil
}

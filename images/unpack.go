package images

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Whiteout markers of the OCI image layer format.
const (
	whiteoutPrefix     = ".wh."
	whiteoutMetaPrefix = ".wh..wh."
	whiteoutOpaque     = ".wh..wh..opq"
)

// unpacker applies layer tar streams, in order, to one root filesystem
// directory. Every file operation goes through an os.Root, so nothing can
// land outside the directory, and parents are checked with Lstat so that no
// symlink inside the tree is ever followed while writing: a layer that tries
// to write through one is rejected.
type unpacker struct {
	root  *os.Root
	log   *slog.Logger
	chown bool
	buf   []byte
	// dirs holds the paths (relative, cleaned) checked to be real
	// directories; entries are dropped when something is removed.
	dirs map[string]bool

	lim   unpackLimits
	bytes int64 // regular file content written, over all layers
	files int   // entries applied, over all layers
}

// unpackLimits bounds one image's unpacked root filesystem; ref names the
// image in errors.
type unpackLimits struct {
	ref      string
	maxBytes int64
	maxFiles int
}

// ErrImageTooLarge means an image unpacks to more bytes or files than the
// store allows (see WithUnpackLimits): a decompression bomb, or an image
// too large for this agent.
var ErrImageTooLarge = errors.New("image too large")

// formatSize writes n bytes in the largest binary unit that divides it.
func formatSize(n int64) string {
	for _, u := range []struct {
		name string
		size int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n >= u.size && n%u.size == 0 {
			return fmt.Sprintf("%d %s", n/u.size, u.name)
		}
	}
	return fmt.Sprintf("%d bytes", n)
}

func (u *unpacker) tooLarge() error {
	return fmt.Errorf("%w: image %s unpacks to more than %s (agent -max-image-size); use a smaller image or raise the agent's limit",
		ErrImageTooLarge, u.lim.ref, formatSize(u.lim.maxBytes))
}

// newUnpacker opens dir (an empty staging directory) for unpacking.
func newUnpacker(dir string, log *slog.Logger, lim unpackLimits) (*unpacker, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, err
	}
	return &unpacker{
		root:  root,
		log:   log,
		chown: os.Geteuid() == 0,
		buf:   make([]byte, 1<<20),
		dirs:  map[string]bool{".": true},
		lim:   lim,
	}, nil
}

func (u *unpacker) Close() error { return u.root.Close() }

// layerState tracks what one layer wrote, for opaque directories: an opaque
// marker hides everything the lower layers put in its directory but keeps
// what this layer adds, wherever the marker appears in the stream.
type layerState struct {
	written   map[string]bool // entries of this layer
	ancestors map[string]bool // directories above entries of this layer
	opaques   []string
	dirTimes  []dirTime
}

type dirTime struct {
	path  string
	mtime time.Time
}

func (ls *layerState) add(p string) {
	ls.written[p] = true
	for d := path.Dir(p); d != "."; d = path.Dir(d) {
		if ls.ancestors[d] {
			break
		}
		ls.ancestors[d] = true
	}
}

// unsafeEntry returns an error wrapping ErrInvalidLayer for entry name.
func unsafeEntry(name, format string, args ...any) error {
	return fmt.Errorf("%w: entry %q: %s", ErrInvalidLayer, name, fmt.Sprintf(format, args...))
}

// cleanEntryPath maps a tar entry name to a path relative to the root.
// Absolute names are taken relative to the root (as tar does); names that
// climb out of the root with ".." are rejected.
func cleanEntryPath(name string) (string, error) {
	p := path.Clean(strings.TrimLeft(name, "/"))
	if p == ".." || strings.HasPrefix(p, "../") {
		return "", unsafeEntry(name, "path escapes the root filesystem")
	}
	return p, nil
}

// apply unpacks one uncompressed layer tar stream.
func (u *unpacker) apply(ctx context.Context, r io.Reader) error {
	tr := tar.NewReader(r)
	ls := &layerState{written: map[string]bool{}, ancestors: map[string]bool{}}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("%w: reading tar stream: %v", ErrInvalidLayer, err)
		}
		if u.files++; u.lim.maxFiles > 0 && u.files > u.lim.maxFiles {
			return fmt.Errorf("%w: image %s unpacks to more than %d files; use an image with fewer files",
				ErrImageTooLarge, u.lim.ref, u.lim.maxFiles)
		}
		if err := u.entry(tr, hdr, ls); err != nil {
			return err
		}
	}
	for _, d := range ls.opaques {
		if err := u.makeOpaque(d, ls); err != nil {
			return err
		}
	}
	// Directory times last: creating entries changes them.
	for i := len(ls.dirTimes) - 1; i >= 0; i-- {
		dt := ls.dirTimes[i]
		if fi, err := u.root.Lstat(dt.path); err == nil && fi.IsDir() {
			_ = u.root.Chtimes(dt.path, dt.mtime, dt.mtime)
		}
	}
	return nil
}

// entry applies one tar header (and its content).
func (u *unpacker) entry(tr *tar.Reader, hdr *tar.Header, ls *layerState) error {
	p, err := cleanEntryPath(hdr.Name)
	if err != nil {
		return err
	}
	base := path.Base(p)
	if strings.HasPrefix(base, whiteoutPrefix) {
		return u.whiteout(hdr.Name, p, base, ls)
	}
	if p == "." {
		// The root itself: keep the staging directory as it is.
		return nil
	}
	switch hdr.Typeflag {
	case tar.TypeDir:
		err = u.dir(hdr, p, ls)
	case tar.TypeReg, tar.TypeRegA, tar.TypeGNUSparse:
		err = u.file(tr, hdr, p)
	case tar.TypeSymlink:
		err = u.symlink(hdr, p)
	case tar.TypeLink:
		err = u.hardlink(hdr, p)
	case tar.TypeFifo:
		err = u.fifo(hdr, p)
	case tar.TypeChar, tar.TypeBlock:
		u.log.Debug("skipping device node in image layer; the runtime provides devices", "path", p)
		return nil
	default:
		u.log.Debug("skipping unsupported tar entry", "path", p, "type", string(hdr.Typeflag))
		return nil
	}
	if err != nil {
		return err
	}
	ls.add(p)
	return nil
}

// parent makes sure every directory above p is a real directory (not a
// symlink), creating missing ones when create is set. It reports false
// when a parent is missing and create is not set.
func (u *unpacker) parent(name, p string, create bool) (bool, error) {
	dir := path.Dir(p)
	if u.dirs[dir] {
		return true, nil
	}
	cur := ""
	for _, c := range strings.Split(dir, "/") {
		if cur == "" {
			cur = c
		} else {
			cur += "/" + c
		}
		if u.dirs[cur] {
			continue
		}
		fi, err := u.root.Lstat(cur)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			if !create {
				return false, nil
			}
			if err := u.root.Mkdir(cur, 0o755); err != nil {
				return false, fmt.Errorf("unpack %q: %w", name, err)
			}
			if err := u.root.Chmod(cur, 0o755); err != nil {
				return false, fmt.Errorf("unpack %q: %w", name, err)
			}
		case err != nil:
			return false, fmt.Errorf("unpack %q: %w", name, err)
		case fi.Mode()&fs.ModeSymlink != 0:
			return false, unsafeEntry(name, "parent %q is a symlink; refusing to write through it", cur)
		case !fi.IsDir():
			return false, unsafeEntry(name, "parent %q is not a directory", cur)
		}
		u.dirs[cur] = true
	}
	return true, nil
}

// forget drops p and everything below it from the directory cache.
func (u *unpacker) forget(p string) {
	for d := range u.dirs {
		if d == p || strings.HasPrefix(d, p+"/") {
			delete(u.dirs, d)
		}
	}
}

// clear removes whatever is at p (never following a symlink), unless it is
// a directory and keepDir is set. It reports whether a directory was kept.
func (u *unpacker) clear(p string, keepDir bool) (bool, error) {
	fi, err := u.root.Lstat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if fi.IsDir() {
		if keepDir {
			return true, nil
		}
		u.forget(p)
		return false, u.root.RemoveAll(p)
	}
	return false, u.root.Remove(p)
}

func permBits(hdr *tar.Header) fs.FileMode {
	return hdr.FileInfo().Mode() & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)
}

func (u *unpacker) dir(hdr *tar.Header, p string, ls *layerState) error {
	if _, err := u.parent(hdr.Name, p, true); err != nil {
		return err
	}
	kept, err := u.clear(p, true)
	if err != nil {
		return fmt.Errorf("unpack %q: %w", hdr.Name, err)
	}
	if !kept {
		if err := u.root.Mkdir(p, 0o755); err != nil {
			return fmt.Errorf("unpack %q: %w", hdr.Name, err)
		}
	}
	u.dirs[p] = true
	if u.chown {
		if err := u.root.Lchown(p, hdr.Uid, hdr.Gid); err != nil {
			return fmt.Errorf("unpack %q: %w", hdr.Name, err)
		}
	}
	if err := u.root.Chmod(p, permBits(hdr)); err != nil {
		return fmt.Errorf("unpack %q: %w", hdr.Name, err)
	}
	if !hdr.ModTime.IsZero() {
		ls.dirTimes = append(ls.dirTimes, dirTime{p, hdr.ModTime})
	}
	return nil
}

// writerOnly hides os.File's ReadFrom so io.CopyBuffer uses our buffer.
type writerOnly struct{ io.Writer }

func (u *unpacker) file(tr *tar.Reader, hdr *tar.Header, p string) error {
	// Refuse a file that cannot fit before writing any of it.
	if u.lim.maxBytes > 0 && hdr.Size > u.lim.maxBytes-u.bytes {
		return u.tooLarge()
	}
	if _, err := u.parent(hdr.Name, p, true); err != nil {
		return err
	}
	if _, err := u.clear(p, false); err != nil {
		return fmt.Errorf("unpack %q: %w", hdr.Name, err)
	}
	// O_EXCL: never open through a symlink left at p.
	f, err := u.root.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("unpack %q: %w", hdr.Name, err)
	}
	err = u.fill(f, tr, hdr)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if errors.Is(err, ErrImageTooLarge) {
		return err
	}
	if err != nil {
		return fmt.Errorf("unpack %q: %w", hdr.Name, err)
	}
	if !hdr.ModTime.IsZero() {
		// p is the regular file just created: no symlink to follow.
		_ = u.root.Chtimes(p, hdr.ModTime, hdr.ModTime)
	}
	return nil
}

func (u *unpacker) fill(f *os.File, tr *tar.Reader, hdr *tar.Header) error {
	// Count what is written, whatever the header said.
	var r io.Reader = tr
	if u.lim.maxBytes > 0 {
		r = io.LimitReader(tr, u.lim.maxBytes-u.bytes+1)
	}
	n, err := io.CopyBuffer(writerOnly{f}, r, u.buf)
	u.bytes += n
	if err != nil {
		return err
	}
	if u.lim.maxBytes > 0 && u.bytes > u.lim.maxBytes {
		return u.tooLarge()
	}
	if u.chown {
		if err := f.Chown(hdr.Uid, hdr.Gid); err != nil {
			return err
		}
	}
	// After chown, which clears set-id bits.
	if err := f.Chmod(permBits(hdr)); err != nil {
		return err
	}
	fd := int(f.Fd())
	for k, v := range hdr.PAXRecords {
		if attr, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok {
			if err := unix.Fsetxattr(fd, attr, []byte(v), 0); err != nil {
				u.log.Debug("cannot set extended attribute from image layer", "path", hdr.Name, "xattr", attr, "error", err)
			}
		}
	}
	return nil
}

func (u *unpacker) symlink(hdr *tar.Header, p string) error {
	if _, err := u.parent(hdr.Name, p, true); err != nil {
		return err
	}
	if _, err := u.clear(p, false); err != nil {
		return fmt.Errorf("unpack %q: %w", hdr.Name, err)
	}
	// The target is stored as is: it is only ever resolved inside the
	// container, never by the unpacker.
	if err := u.root.Symlink(hdr.Linkname, p); err != nil {
		return fmt.Errorf("unpack %q: %w", hdr.Name, err)
	}
	if u.chown {
		if err := u.root.Lchown(p, hdr.Uid, hdr.Gid); err != nil {
			return fmt.Errorf("unpack %q: %w", hdr.Name, err)
		}
	}
	return nil
}

func (u *unpacker) hardlink(hdr *tar.Header, p string) error {
	if hdr.Linkname == "" || path.IsAbs(hdr.Linkname) {
		return unsafeEntry(hdr.Name, "hardlink target %q must be a path inside the image", hdr.Linkname)
	}
	target := path.Clean(hdr.Linkname)
	if target == "." || target == ".." || strings.HasPrefix(target, "../") {
		return unsafeEntry(hdr.Name, "hardlink target %q escapes the root filesystem", hdr.Linkname)
	}
	ok, err := u.parent(hdr.Name, target, false)
	if err != nil {
		return err
	}
	var fi fs.FileInfo
	if ok {
		fi, err = u.root.Lstat(target)
	}
	if !ok || errors.Is(err, fs.ErrNotExist) {
		return unsafeEntry(hdr.Name, "hardlink target %q does not exist in the image", hdr.Linkname)
	}
	if err != nil {
		return fmt.Errorf("unpack %q: %w", hdr.Name, err)
	}
	if fi.IsDir() {
		return unsafeEntry(hdr.Name, "hardlink target %q is a directory", hdr.Linkname)
	}
	if target == p {
		return nil
	}
	if _, err := u.parent(hdr.Name, p, true); err != nil {
		return err
	}
	if _, err := u.clear(p, false); err != nil {
		return fmt.Errorf("unpack %q: %w", hdr.Name, err)
	}
	// link(2) does not follow a symlink at target: the link is to the
	// symlink itself.
	if err := u.root.Link(target, p); err != nil {
		return fmt.Errorf("unpack %q: %w", hdr.Name, err)
	}
	return nil
}

func (u *unpacker) fifo(hdr *tar.Header, p string) error {
	if _, err := u.parent(hdr.Name, p, true); err != nil {
		return err
	}
	if _, err := u.clear(p, false); err != nil {
		return fmt.Errorf("unpack %q: %w", hdr.Name, err)
	}
	d, err := u.root.Open(path.Dir(p))
	if err != nil {
		return fmt.Errorf("unpack %q: %w", hdr.Name, err)
	}
	defer d.Close()
	if err := unix.Mkfifoat(int(d.Fd()), path.Base(p), uint32(hdr.Mode&0o7777)); err != nil {
		return fmt.Errorf("unpack %q: %w", hdr.Name, err)
	}
	if u.chown {
		if err := u.root.Lchown(p, hdr.Uid, hdr.Gid); err != nil {
			return fmt.Errorf("unpack %q: %w", hdr.Name, err)
		}
	}
	return u.root.Chmod(p, permBits(hdr))
}

// whiteout handles ".wh.<name>" (delete name from the lower layers) and
// ".wh..wh..opq" (the directory is opaque). Other ".wh..wh." entries are
// aufs metadata and are skipped.
func (u *unpacker) whiteout(name, p, base string, ls *layerState) error {
	if base == whiteoutOpaque {
		ok, err := u.parent(name, p, true)
		if err != nil || !ok {
			return err
		}
		ls.opaques = append(ls.opaques, path.Dir(p))
		return nil
	}
	if strings.HasPrefix(base, whiteoutMetaPrefix) {
		return nil
	}
	victim := path.Join(path.Dir(p), strings.TrimPrefix(base, whiteoutPrefix))
	if victim == "." || path.Base(victim) == ".." {
		return unsafeEntry(name, "whiteout of %q is not allowed", victim)
	}
	ok, err := u.parent(name, victim, false)
	if err != nil || !ok {
		return err // nothing to delete when the parent is missing
	}
	// A whiteout applies to the lower layers only.
	if ls.written[victim] || ls.ancestors[victim] {
		return nil
	}
	if _, err := u.clear(victim, false); err != nil {
		return fmt.Errorf("unpack %q: %w", name, err)
	}
	return nil
}

// makeOpaque removes from dir everything this layer did not write.
func (u *unpacker) makeOpaque(dir string, ls *layerState) error {
	// The directory may have been replaced (by a symlink, say) after its
	// marker: only ever list a real directory reached through real ones.
	if ok, err := u.parent(dir, path.Join(dir, whiteoutOpaque), false); err != nil || !ok {
		return err
	}
	if fi, err := u.root.Lstat(dir); err != nil || !fi.IsDir() {
		return nil
	}
	d, err := u.root.Open(dir)
	if err != nil {
		return fmt.Errorf("opaque directory %q: %w", dir, err)
	}
	entries, err := d.ReadDir(-1)
	d.Close()
	if err != nil {
		return fmt.Errorf("opaque directory %q: %w", dir, err)
	}
	for _, e := range entries {
		p := path.Join(dir, e.Name())
		switch {
		case e.IsDir() && (ls.ancestors[p] || ls.written[p]):
			if err := u.makeOpaque(p, ls); err != nil {
				return err
			}
		case ls.written[p]:
		default:
			if _, err := u.clear(p, false); err != nil {
				return fmt.Errorf("opaque directory %q: %w", dir, err)
			}
		}
	}
	return nil
}

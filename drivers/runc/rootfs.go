package runc

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"

	"github.com/corral-dev/corral/plugins/drivers"
)

// RootFSMode says how the driver gives each kernel a writable root over the
// shared, read-only image directory.
type RootFSMode int

const (
	// RootFSAuto mounts an overlay and falls back to a copy when overlayfs
	// refuses (e.g. a task dir on a file system it cannot use as upper).
	RootFSAuto RootFSMode = iota
	// RootFSOverlay mounts an overlay (lower: the image, upper and work
	// dirs in the task dir) and fails when it cannot.
	RootFSOverlay
	// RootFSCopy copies the image into the task dir (like cp -a).
	RootFSCopy
)

// String returns "auto", "overlay" or "copy".
func (m RootFSMode) String() string {
	switch m {
	case RootFSOverlay:
		return "overlay"
	case RootFSCopy:
		return "copy"
	default:
		return "auto"
	}
}

// rootfsState is a kernel's writable root and the directory that holds it
// and the driver's other files for the kernel.
type rootfsState struct {
	// Dir is the driver's directory for the kernel, removed on destroy.
	Dir string `json:"dir"`
	// RootFS is the container's root: an overlay mount point or a copy.
	RootFS string `json:"rootfs"`
	// Overlay says that RootFS is an overlay the driver mounted.
	Overlay bool `json:"overlay"`
	// Upper is the overlay's upper dir or the copy: where the kernel's
	// writes land, its scratch space.
	Upper string `json:"upper,omitempty"`
	// IDs is the kernel's user namespace id range, whose root owns the
	// rootfs; nil without a user namespace.
	IDs *idRange `json:"ids,omitempty"`
	// Mount is the rootfs's mount point outside Dir (below
	// usernsRootBase) for a kernel with a user namespace; empty else.
	Mount string `json:"mount,omitempty"`
}

// usernsRootBase is where the roots of kernels with user namespaces are
// mounted: a path that their unprivileged roots can traverse.
const usernsRootBase = "/run/corral/rootfs"

// imageDir checks that the task's RootFS is a directory and returns its
// absolute path with symlinks resolved.
func imageDir(cfg *drivers.TaskConfig) (string, error) {
	if cfg.RootFS == "" {
		return "", fmt.Errorf("%w: task %s has no RootFS: the runc driver needs the unpacked image directory", drivers.ErrInvalidConfig, cfg.ID)
	}
	if !filepath.IsAbs(cfg.RootFS) {
		return "", fmt.Errorf("%w: task %s: RootFS %q must be an absolute path", drivers.ErrInvalidConfig, cfg.ID, cfg.RootFS)
	}
	dir, err := filepath.EvalSymlinks(cfg.RootFS)
	if err != nil {
		return "", fmt.Errorf("%w: task %s: RootFS: %v", drivers.ErrInvalidConfig, cfg.ID, err)
	}
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return "", fmt.Errorf("%w: task %s: RootFS %q is not a directory", drivers.ErrInvalidConfig, cfg.ID, cfg.RootFS)
	}
	return dir, nil
}

// overlaySafe reports whether p can appear in overlayfs mount options
// without escaping.
func overlaySafe(p string) bool { return !strings.ContainsAny(p, ",:\\=\n") }

// prepareRootFS creates dir and, in it, a writable root over image: an
// overlay or a copy as mode says. With ids, the root's files are owned by
// ids' host ids (image uid n shows as HostID+n): the overlay's lower layer
// is an idmapped bind mount of image, and a copy is chowned.
func prepareRootFS(dir, image string, mode RootFSMode, ids *idRange, log *slog.Logger) (_ *rootfsState, err error) {
	if err := os.MkdirAll(dir, 0o711); err != nil {
		return nil, fmt.Errorf("creating the task's container dir: %w", err)
	}
	// The rootfs path must be absolute and free of symlinks.
	if dir, err = filepath.EvalSymlinks(dir); err != nil {
		return nil, err
	}
	st := &rootfsState{Dir: dir, RootFS: filepath.Join(dir, "rootfs"), IDs: ids}
	if err := os.Mkdir(st.RootFS, 0o755); err != nil {
		// Left by an earlier container of this task, maybe still in use
		// by it: never clean that up here.
		return nil, fmt.Errorf("creating the rootfs dir: %w", err)
	}
	defer func() {
		if err != nil {
			_ = st.release()
		}
	}()
	// A kernel with a user namespace must reach its root as its own
	// (unprivileged) root: the root is mounted at a path every user can
	// traverse, as the task dir's parents need not be.
	target := st.RootFS
	if ids != nil {
		if err := os.MkdirAll(usernsRootBase, 0o711); err != nil {
			return nil, fmt.Errorf("creating %s: %w", usernsRootBase, err)
		}
		// corral's dirs in /run: traversable by all, listable by root.
		for _, d := range []string{filepath.Dir(usernsRootBase), usernsRootBase} {
			if fi, err := os.Stat(d); err == nil && fi.Mode().Perm()&0o011 != 0o011 {
				_ = os.Chmod(d, fi.Mode().Perm()|0o011)
			}
		}
		if target, err = os.MkdirTemp(usernsRootBase, filepath.Base(filepath.Dir(dir))+"-"); err != nil {
			return nil, fmt.Errorf("creating the kernel's rootfs mount point: %w", err)
		}
		st.Mount = target
	}
	if mode != RootFSCopy {
		err := mountOverlay(image, dir, target, ids)
		if err == nil {
			st.Overlay, st.Upper, st.RootFS = true, filepath.Join(dir, "upper"), target
			return st, nil
		}
		if mode == RootFSOverlay {
			return nil, err
		}
		log.Warn("overlayfs unavailable: copying the image for this kernel instead", "error", err)
		if err := unmountBelow(filepath.Join(dir, "lower")); err != nil {
			return nil, err
		}
		for _, d := range []string{"upper", "work", "lower"} {
			_ = os.RemoveAll(filepath.Join(dir, d))
		}
	}
	start := time.Now()
	st.Upper = st.RootFS
	var shift uint32
	if ids != nil {
		shift = ids.HostID
	}
	if err := copyTree(image, st.RootFS, shift); err != nil {
		return nil, fmt.Errorf("copying the image into the task dir: %w", err)
	}
	log.Debug("image copied", "took", time.Since(start))
	if target != st.RootFS {
		if err := unix.Mount(st.RootFS, target, "", unix.MS_BIND, ""); err != nil {
			return nil, fmt.Errorf("binding the kernel's rootfs to %s: %w", target, err)
		}
		st.RootFS = target
	}
	return st, nil
}

// mountOverlay mounts an overlay at target with image as the lower dir and
// upper and work dirs created in dir. With ids the lower dir is an
// idmapped bind mount of image at dir/lower.
func mountOverlay(image, dir, target string, ids *idRange) error {
	upper, work := filepath.Join(dir, "upper"), filepath.Join(dir, "work")
	lower := image
	if ids != nil {
		lower = filepath.Join(dir, "lower")
	}
	for _, p := range []string{lower, upper, work} {
		if !overlaySafe(p) {
			return fmt.Errorf("path %q has characters overlayfs options cannot hold", p)
		}
	}
	for _, d := range []string{upper, work} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return fmt.Errorf("creating overlay dir: %w", err)
		}
	}
	if ids != nil {
		if err := os.Mkdir(lower, 0o755); err != nil {
			return fmt.Errorf("creating overlay dir: %w", err)
		}
		if err := idmapMount(image, lower, ids); err != nil {
			return err
		}
	}
	// The upper dir's root takes the image root's owner (shifted into the
	// kernel's ids) and mode, as the merged root shows the upper's.
	if fi, err := os.Stat(image); err == nil {
		if s, ok := fi.Sys().(*syscall.Stat_t); ok { // os.Stat gives syscall's, not unix's
			_ = os.Chown(upper, shiftID(s.Uid, ids), shiftID(s.Gid, ids))
		}
		_ = os.Chmod(upper, fi.Mode().Perm())
	}
	opts := "lowerdir=" + lower + ",upperdir=" + upper + ",workdir=" + work
	if err := unix.Mount("overlay", target, "overlay", 0, opts); err != nil {
		return fmt.Errorf("mounting overlay at %s: %w", target, err)
	}
	return nil
}

// shiftID returns id as the host sees it once shifted into ids.
func shiftID(id uint32, ids *idRange) int {
	if ids == nil {
		return int(id)
	}
	return int(ids.HostID + id)
}

// unmountBelow unmounts whatever is mounted at or below dir, deepest first.
func unmountBelow(dir string) error {
	mounts, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
	if err != nil {
		return fmt.Errorf("reading mounts: %w", err)
	}
	for i := len(mounts) - 1; i >= 0; i-- {
		if err := unmount(mounts[i].Mountpoint); err != nil {
			return err
		}
	}
	return nil
}

// release unmounts the overlay (and anything else mounted below the
// kernel's dir) and removes the dir. It never removes a dir that is still
// a mount point.
func (r *rootfsState) release() error {
	if r == nil || r.Dir == "" {
		return nil
	}
	if r.Mount != "" && strings.HasPrefix(r.Mount, usernsRootBase+"/") {
		if err := unmountBelow(r.Mount); err != nil {
			return err
		}
		if err := os.Remove(r.Mount); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("removing %s: %w", r.Mount, err)
		}
	}
	if err := unmountBelow(r.Dir); err != nil {
		return err
	}
	if err := os.RemoveAll(r.Dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing %s: %w", r.Dir, err)
	}
	return nil
}

// unmount unmounts target, retrying while it is busy (a container's last
// processes may still be exiting) and detaching it lazily as a last resort.
func unmount(target string) error {
	deadline := time.Now().Add(2 * time.Second)
	for {
		err := unix.Unmount(target, 0)
		switch {
		case err == nil || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT):
			return nil
		case errors.Is(err, unix.EBUSY) && time.Now().Before(deadline):
			time.Sleep(20 * time.Millisecond)
		case errors.Is(err, unix.EBUSY):
			if err := unix.Unmount(target, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
				return fmt.Errorf("unmounting %s: %w", target, err)
			}
			return nil
		default:
			return fmt.Errorf("unmounting %s: %w", target, err)
		}
	}
}

// writeEtcFiles writes the container's /etc/hosts, /etc/hostname and
// /etc/resolv.conf into dir/etc; extra adds hostname to IP entries (the
// other kernels of a cluster session), in name order. With ids the files
// belong to the kernel's root.
func writeEtcFiles(dir, hostname string, extra map[string]string, ids *idRange) (etcMounts, error) {
	etc := filepath.Join(dir, "etc")
	m := etcMounts{
		Hosts:      filepath.Join(etc, "hosts"),
		Hostname:   filepath.Join(etc, "hostname"),
		ResolvConf: filepath.Join(etc, "resolv.conf"),
	}
	if err := os.MkdirAll(etc, 0o755); err != nil {
		return m, err
	}
	hosts := "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n" +
		"fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n"
	if hostname != "" && extra[hostname] == "" {
		hosts += "127.0.1.1\t" + hostname + "\n"
	}
	for _, name := range slices.Sorted(maps.Keys(extra)) {
		hosts += extra[name] + "\t" + name + "\n"
	}
	for path, content := range map[string]string{m.Hosts: hosts, m.Hostname: hostname + "\n", m.ResolvConf: resolvConf("/etc/resolv.conf")} {
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			return m, err
		}
		if ids != nil {
			if err := os.Chown(path, int(ids.HostID), int(ids.HostID)); err != nil {
				return m, err
			}
		}
	}
	return m, nil
}

// resolvedUpstreams is where systemd-resolved lists the upstream servers
// behind its loopback stub (127.0.0.53).
var resolvedUpstreams = "/run/systemd/resolve/resolv.conf"

// resolvConf returns the host's resolver configuration without loopback
// name servers, which mean nothing inside another network namespace (the
// kernel reaches the others through its agent's NAT). When only loopback
// ones were listed (systemd-resolved's stub), the upstreams behind the
// stub take their place.
func resolvConf(hostFile string) string {
	conf, dropped := resolvConfNoLoopback(hostFile)
	if dropped && !strings.Contains(conf, "nameserver") && hostFile != resolvedUpstreams {
		if up, _ := resolvConfNoLoopback(resolvedUpstreams); strings.Contains(up, "nameserver") {
			return up
		}
	}
	return conf
}

// resolvConfNoLoopback reads a resolv.conf without its loopback name
// servers, and reports whether it dropped any.
func resolvConfNoLoopback(hostFile string) (conf string, dropped bool) {
	f, err := os.Open(hostFile)
	if err != nil {
		return "", false
	}
	defer f.Close()
	var b strings.Builder
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "nameserver" {
			if a, err := netip.ParseAddr(strings.Split(f[1], "%")[0]); err == nil && a.IsLoopback() {
				dropped = true
				continue
			}
		}
		b.WriteString(line + "\n")
	}
	return b.String(), dropped
}

// copyTree copies the tree at src into the existing directory dst as cp -a
// does: modes, owners, times, symlinks, hard links, device nodes and fifos.
// Owners are shifted by shift (a user namespace's host base, 0 for none).
func copyTree(src, dst string, shift uint32) error {
	type inode struct{ dev, ino uint64 }
	links := map[inode]string{}
	var dirs []string // to set times on after their content is in place
	err := filepath.WalkDir(src, func(p string, de fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return &fs.PathError{Op: "lstat", Path: p, Err: err}
		}
		mode := st.Mode & unix.S_IFMT
		if mode != unix.S_IFDIR && st.Nlink > 1 {
			key := inode{uint64(st.Dev), st.Ino}
			if first, ok := links[key]; ok {
				return os.Link(first, target)
			}
			links[key] = target
		}
		switch mode {
		case unix.S_IFDIR:
			if rel != "." {
				if err := os.Mkdir(target, 0o700); err != nil {
					return err
				}
			}
			dirs = append(dirs, p)
		case unix.S_IFREG:
			if err := copyFile(p, target); err != nil {
				return err
			}
		case unix.S_IFLNK:
			link, err := os.Readlink(p)
			if err != nil {
				return err
			}
			if err := os.Symlink(link, target); err != nil {
				return err
			}
		case unix.S_IFCHR, unix.S_IFBLK, unix.S_IFIFO:
			if err := unix.Mknod(target, st.Mode, int(st.Rdev)); err != nil {
				return &fs.PathError{Op: "mknod", Path: target, Err: err}
			}
		default: // sockets are not worth copying
			return nil
		}
		return copyMeta(target, &st, shift)
	})
	if err != nil {
		return err
	}
	for _, p := range dirs {
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if err := setTimes(filepath.Join(dst, rel), &st); err != nil {
			return err
		}
	}
	return nil
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	// Share the blocks where the file system can (btrfs, xfs); copy else.
	if unix.IoctlFileClone(int(out.Fd()), int(in.Fd())) != nil {
		if _, err := io.Copy(out, in); err != nil {
			out.Close()
			return err
		}
	}
	return out.Close()
}

// copyMeta gives target the owner, mode and times of st (owner first: a
// chown clears setuid bits).
func copyMeta(target string, st *unix.Stat_t, shift uint32) error {
	if err := unix.Lchown(target, int(st.Uid+shift), int(st.Gid+shift)); err != nil {
		return &fs.PathError{Op: "lchown", Path: target, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFLNK {
		if err := unix.Chmod(target, st.Mode&0o7777); err != nil {
			return &fs.PathError{Op: "chmod", Path: target, Err: err}
		}
	}
	return setTimes(target, st)
}

func setTimes(target string, st *unix.Stat_t) error {
	ts := []unix.Timespec{st.Atim, st.Mtim}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, target, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return &fs.PathError{Op: "utimes", Path: target, Err: err}
	}
	return nil
}

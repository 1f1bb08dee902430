// Package netns is the agent-side network plumbing of cluster sessions: named
// network namespaces for kernels, and per-session VXLAN overlays (a bridge, a
// VXLAN device with static FDB entries towards the other agents, and a veth
// into each kernel's namespace).
//
// Everything here needs CAP_NET_ADMIN and CAP_SYS_ADMIN (root).
package netns

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// DefaultNetnsDir is where kernel network namespaces are bind-mounted unless
// Config.NetnsDir says otherwise.
const DefaultNetnsDir = "/run/corral/netns"

// ErrNoOverlay is returned when an operation needs an overlay (a bridge for a
// VNI) that EnsureOverlay has not created on this host.
var ErrNoOverlay = errors.New("netns: no overlay for this VNI on this host")

// ErrNoUnderlay is returned by EnsureOverlay when no link in the host network
// namespace holds the overlay's local underlay address.
var ErrNoUnderlay = errors.New("netns: no link holds the local underlay address")

// Config configures a Manager.
type Config struct {
	// NetnsDir is the directory where named kernel namespaces are
	// bind-mounted; DefaultNetnsDir when empty. The directory belongs to
	// corral: Reconcile deletes every namespace in it that it is not told to
	// keep, so never point it at /run/netns on a real host.
	NetnsDir string
	// HostNetns is the path of the network namespace that holds the underlay
	// and where bridges, VXLAN devices and host veth ends are created. Empty
	// means the process's own namespace (/proc/self/ns/net).
	HostNetns string
	// Logger receives debug messages about what was changed; nil discards.
	Logger *slog.Logger
}

// Manager creates and removes kernel namespaces and session overlays on one
// host. Its methods are safe for concurrent use.
type Manager struct {
	dir    string
	log    *slog.Logger
	mu     sync.Mutex
	hostNS vnetns.NsHandle
	h      *netlink.Handle
	shared bool // dir is known to be a shared mount point
}

// New opens the host network namespace and returns a Manager for it. Close it
// when done.
func New(cfg Config) (*Manager, error) {
	dir := cfg.NetnsDir
	if dir == "" {
		dir = DefaultNetnsDir
	}
	if !filepath.IsAbs(dir) {
		return nil, fmt.Errorf("netns: NetnsDir %q must be an absolute path", dir)
	}
	hostPath := cfg.HostNetns
	if hostPath == "" {
		hostPath = "/proc/self/ns/net"
	}
	ns, err := vnetns.GetFromPath(hostPath)
	if err != nil {
		return nil, fmt.Errorf("netns: open host network namespace %s: %w", hostPath, err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		ns.Close()
		return nil, fmt.Errorf("netns: netlink handle in %s: %w", hostPath, err)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Manager{dir: filepath.Clean(dir), log: log, hostNS: ns, h: h}, nil
}

// Tidy unmounts the namespace dir when no namespace is left in it, so that
// nothing outlives the kernels; the next Create mounts it again.
func (m *Manager) Tidy() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.tidy()
}

func (m *Manager) tidy() {
	if !m.shared {
		return
	}
	if entries, err := os.ReadDir(m.dir); err == nil && len(entries) == 0 {
		if err := unix.Unmount(m.dir, unix.MNT_DETACH); err == nil {
			m.shared = false
		}
	}
}

// Close releases the Manager's handles; it does not remove anything.
func (m *Manager) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.tidy()
	if m.h != nil {
		m.h.Close()
		m.h = nil
	}
	return m.hostNS.Close()
}

// NetnsDir returns the directory where kernel namespaces are bind-mounted.
func (m *Manager) NetnsDir() string { return m.dir }

// Path returns where the named kernel namespace is (or would be) mounted.
func (m *Manager) Path(name string) string { return filepath.Join(m.dir, name) }

func validName(name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") || len(name) > 200 {
		return fmt.Errorf("netns: invalid namespace name %q: use a non-empty file name without '/'", name)
	}
	return nil
}

// Create makes a new network namespace bind-mounted at Path(name), with lo up,
// and returns that path. If the namespace already exists it is left as it is.
func (m *Manager) Create(name string) (string, error) {
	if err := validName(name); err != nil {
		return "", err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	p := m.Path(name)
	if isNsfs(p) {
		return p, nil
	}
	if err := m.ensureSharedDir(); err != nil {
		return "", err
	}
	// A plain file left by a crash between create and mount.
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("netns: remove stale %s: %w", p, err)
	}
	if err := bindNewNetns(p); err != nil {
		return "", err
	}
	if err := Do(p, func() error { return linkUp("lo") }); err != nil {
		_ = unmountRemove(p)
		return "", fmt.Errorf("netns: set lo up in %s: %w", p, err)
	}
	m.log.Debug("created network namespace", "path", p)
	return p, nil
}

// Delete unmounts and removes the named namespace. Deleting one that does not
// exist is not an error. The kernel frees the namespace (and the veth ends in
// it) once no process or open descriptor refers to it any more.
func (m *Manager) Delete(name string) error {
	if err := validName(name); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return unmountRemove(m.Path(name))
}

// ensureSharedDir makes the namespace directory a shared mount point, as
// `ip netns` does for /run/netns, so that an unmount in Delete also reaches
// copies of the mount in mount namespaces created later.
func (m *Manager) ensureSharedDir() error {
	if m.shared {
		return nil
	}
	if err := os.MkdirAll(m.dir, 0o755); err != nil {
		return fmt.Errorf("netns: create %s: %w", m.dir, err)
	}
	err := unix.Mount("", m.dir, "none", unix.MS_SHARED|unix.MS_REC, "")
	if errors.Is(err, unix.EINVAL) { // not a mount point yet
		if err = unix.Mount(m.dir, m.dir, "none", unix.MS_BIND|unix.MS_REC, ""); err == nil {
			err = unix.Mount("", m.dir, "none", unix.MS_SHARED|unix.MS_REC, "")
		}
	}
	if err != nil {
		return fmt.Errorf("netns: make %s a shared mount point: %w", m.dir, err)
	}
	m.shared = true
	return nil
}

// bindNewNetns creates a network namespace on a throw-away OS thread and
// bind-mounts it at p. The thread is never unlocked, so the Go runtime ends
// it instead of reusing it in the new namespace.
func bindNewNetns(p string) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("netns: unshare network namespace: %w", err)
			return
		}
		f, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_RDONLY, 0o444)
		if err != nil {
			errc <- fmt.Errorf("netns: create mount point: %w", err)
			return
		}
		f.Close()
		src := fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid())
		if err := unix.Mount(src, p, "none", unix.MS_BIND, ""); err != nil {
			os.Remove(p)
			errc <- fmt.Errorf("netns: bind-mount namespace at %s: %w", p, err)
			return
		}
		errc <- nil
	}()
	return <-errc
}

func unmountRemove(p string) error {
	if err := unix.Unmount(p, unix.MNT_DETACH); err != nil &&
		!errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("netns: unmount %s: %w", p, err)
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("netns: remove %s: %w", p, err)
	}
	return nil
}

// isNsfs reports whether p is a mounted namespace file.
func isNsfs(p string) bool {
	var st unix.Statfs_t
	return unix.Statfs(p, &st) == nil && st.Type == unix.NSFS_MAGIC
}

// Do runs fn on an OS thread that is switched into the network namespace at
// nsPath, and switches the thread back afterwards. Sockets that fn creates
// stay in that namespace and may be used from any goroutine once Do returns;
// goroutines that fn starts do not run in the namespace. Name lookups inside
// fn may run on other threads: dial IP addresses.
func Do(nsPath string, fn func() error) error {
	target, err := vnetns.GetFromPath(nsPath)
	if err != nil {
		return fmt.Errorf("netns: open %s: %w", nsPath, err)
	}
	defer target.Close()
	type result struct {
		err      error
		panic    any
		panicked bool
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := vnetns.Get()
		if err != nil {
			done <- result{err: fmt.Errorf("netns: current namespace: %w", err)}
			return // the thread stays locked and is discarded
		}
		defer orig.Close()
		if err := vnetns.Set(target); err != nil {
			done <- result{err: fmt.Errorf("netns: enter %s: %w", nsPath, err)}
			return
		}
		var r result
		func() {
			defer func() {
				if p := recover(); p != nil {
					r = result{panic: p, panicked: true}
				}
			}()
			r.err = fn()
		}()
		if err := vnetns.Set(orig); err == nil {
			runtime.UnlockOSThread()
		} // else: leave the thread locked so the runtime discards it
		done <- r
	}()
	r := <-done
	if r.panicked {
		panic(r.panic) // in the caller's goroutine, where it can be recovered
	}
	return r.err
}

// linkUp sets a link up in the calling thread's namespace.
func linkUp(name string) error {
	h, err := netlink.NewHandle()
	if err != nil {
		return err
	}
	defer h.Close()
	l, err := h.LinkByName(name)
	if err != nil {
		return err
	}
	return h.LinkSetUp(l)
}

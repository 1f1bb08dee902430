// Package testbed builds a datacenter in one machine for end-to-end tests: a
// "switch" network namespace with a bridge, and one network namespace per
// host wired to it by a veth, each host with its own underlay address in a
// private /24. Processes and Go code of the test run inside the hosts; the
// root network namespace is left as it was.
//
// Everything is removed by t.Cleanup, also after a failed test. What a
// crashed run left behind (its names carry the fixed Prefix and a per-bed
// random run id) is removed by the next New.
package testbed

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/corral-dev/corral/netns"
	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Prefix starts the name of every network namespace a Bed creates.
const Prefix = "corraltb-"

// UnderlayLink is the name of each host's link to the switch.
const UnderlayLink = "eth0"

const (
	netnsDir = "/run/netns"          // where `ip netns` finds namespaces
	stateDir = "/run/corral-testbed" // lock files and per-bed directories
)

// Bed is a set of hosts on one switch.
type Bed struct {
	// Hosts are the bed's hosts, Hosts[0] being "host1".
	Hosts []*Host
	// Subnet is the underlay subnet; host i (from 1) has its address .i.
	Subnet netip.Prefix
	// Switch is the name of the switch's network namespace.
	Switch string

	t      testing.TB
	runID  string
	ipPath string
	mgr    *netns.Manager
	lock   *os.File

	mu         sync.Mutex
	transports []*http.Transport
}

// Host is one machine of the bed: a network namespace with lo up and an
// UnderlayLink holding IP.
type Host struct {
	// Name is "host1", "host2", ...
	Name string
	// NS is the network namespace's name, for `ip netns exec` and `ip -n`.
	NS string
	// IP is the host's underlay address.
	IP netip.Addr

	bed  *Bed
	port string // the switch's end of the host's link
}

type config struct {
	mtu    int
	subnet netip.Prefix
}

// Option changes how New builds a bed.
type Option func(*config)

// WithMTU sets the underlay MTU (default 1500).
func WithMTU(mtu int) Option { return func(c *config) { c.mtu = mtu } }

// WithSubnet sets the underlay subnet (a /24 or larger) instead of a random
// one from 10.200.0.0/16–10.254.0.0/16 that no address or route of the root
// namespace overlaps.
func WithSubnet(p netip.Prefix) Option { return func(c *config) { c.subnet = p.Masked() } }

// New builds a bed of n hosts and registers its removal with t.Cleanup. It
// skips the test when not run as root or when iproute2 is missing.
func New(t testing.TB, n int, opts ...Option) *Bed {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("testbed: needs root to create network namespaces")
	}
	ipPath, err := exec.LookPath("ip")
	if err != nil {
		t.Skip("testbed: iproute2's ip command not found")
	}
	if n < 1 || n > 250 {
		t.Fatalf("testbed: %d hosts: need 1 to 250", n)
	}
	cfg := config{mtu: 1500}
	for _, o := range opts {
		o(&cfg)
	}
	if err := CleanLeftovers(); err != nil {
		t.Logf("testbed: removing leftovers of earlier runs: %v", err)
	}
	if !cfg.subnet.IsValid() {
		if cfg.subnet, err = pickSubnet(); err != nil {
			t.Fatal(err)
		}
	}
	if !cfg.subnet.Addr().Is4() || cfg.subnet.Bits() > 24 {
		t.Fatalf("testbed: subnet %v: need an IPv4 /24 or larger", cfg.subnet)
	}

	b := &Bed{t: t, ipPath: ipPath, Subnet: cfg.subnet}
	if b.runID, b.lock, err = lockRun(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.close)
	if err := os.MkdirAll(b.Dir(), 0o755); err != nil {
		t.Fatal(err)
	}
	if b.mgr, err = netns.New(netns.Config{NetnsDir: netnsDir}); err != nil {
		t.Fatal(err)
	}
	if err := b.build(n, cfg); err != nil {
		t.Fatalf("testbed: %v", err)
	}
	return b
}

// RunID returns the bed's random id, the last part of its namespaces' names.
func (b *Bed) RunID() string { return b.runID }

// Dir returns a directory private to the bed, removed with it (mounts under
// it included): a place for kernel namespaces and agent state.
func (b *Bed) Dir() string { return filepath.Join(stateDir, b.runID) }

// Namespaces returns the names of the bed's network namespaces.
func (b *Bed) Namespaces() []string {
	out := []string{b.Switch}
	for _, h := range b.Hosts {
		out = append(out, h.NS)
	}
	return out
}

func (b *Bed) nsName(role string) string { return Prefix + role + "-" + b.runID }

func (b *Bed) build(n int, cfg config) error {
	b.Switch = b.nsName("switch")
	swPath, err := b.mgr.Create(b.Switch)
	if err != nil {
		return err
	}
	sw, err := openHandle(swPath)
	if err != nil {
		return err
	}
	defer sw.close()
	attrs := netlink.NewLinkAttrs()
	attrs.Name = "br0"
	attrs.MTU = cfg.mtu
	if err := sw.h.LinkAdd(&netlink.Bridge{LinkAttrs: attrs}); err != nil {
		return fmt.Errorf("create switch bridge: %w", err)
	}
	br, err := sw.h.LinkByName("br0")
	if err != nil {
		return err
	}
	if err := sw.h.LinkSetUp(br); err != nil {
		return err
	}
	base := cfg.subnet.Addr()
	for i := 1; i <= n; i++ {
		name := fmt.Sprintf("host%d", i)
		h := &Host{Name: name, NS: b.nsName(name), bed: b, port: fmt.Sprintf("p%d", i)}
		ip := base.As4()
		ip[3] += byte(i)
		h.IP = netip.AddrFrom4(ip)
		b.Hosts = append(b.Hosts, h)
		hostPath, err := b.mgr.Create(h.NS)
		if err != nil {
			return err
		}
		if err := b.wire(sw, br, h, hostPath, cfg); err != nil {
			return fmt.Errorf("wire %s: %w", name, err)
		}
	}
	for _, h := range b.Hosts {
		if err := h.waitUp(); err != nil {
			return err
		}
	}
	return nil
}

// waitUp waits until both ends of the host's link are operationally up: the
// kernel activates a link asynchronously after its carrier comes, and drops
// what is sent before.
func (h *Host) waitUp() error {
	for _, l := range []struct{ ns, name string }{
		{filepath.Join(netnsDir, h.bed.Switch), h.port},
		{h.Path(), UnderlayLink},
	} {
		n, err := openHandle(l.ns)
		if err != nil {
			return err
		}
		deadline := time.Now().Add(5 * time.Second)
		for {
			link, err := n.h.LinkByName(l.name)
			if err == nil && link.Attrs().OperState == netlink.OperUp {
				break
			}
			if err != nil || time.Now().After(deadline) {
				n.close()
				return fmt.Errorf("testbed: %s of %s not up: %v", l.name, h.Name, err)
			}
			time.Sleep(5 * time.Millisecond)
		}
		n.close()
	}
	return nil
}

// wire connects host h to the switch bridge br with a veth.
func (b *Bed) wire(sw *nsHandle, br netlink.Link, h *Host, hostPath string, cfg config) error {
	hn, err := openHandle(hostPath)
	if err != nil {
		return err
	}
	defer hn.close()
	attrs := netlink.NewLinkAttrs()
	attrs.Name = h.port
	attrs.MTU = cfg.mtu
	err = sw.h.LinkAdd(&netlink.Veth{
		LinkAttrs:     attrs,
		PeerName:      UnderlayLink,
		PeerNamespace: netlink.NsFd(hn.ns),
		PeerMTU:       uint32(cfg.mtu),
	})
	if err != nil {
		return fmt.Errorf("create veth: %w", err)
	}
	port, err := sw.h.LinkByName(h.port)
	if err != nil {
		return err
	}
	if err := sw.h.LinkSetMaster(port, br); err != nil {
		return err
	}
	if err := sw.h.LinkSetUp(port); err != nil {
		return err
	}
	eth, err := hn.h.LinkByName(UnderlayLink)
	if err != nil {
		return err
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{
		IP:   net.IP(h.IP.AsSlice()),
		Mask: net.CIDRMask(cfg.subnet.Bits(), 32),
	}}
	if err := hn.h.AddrAdd(eth, addr); err != nil {
		return fmt.Errorf("address %s: %w", h.IP, err)
	}
	return hn.h.LinkSetUp(eth)
}

// Path returns the host's network namespace file.
func (h *Host) Path() string { return filepath.Join(netnsDir, h.NS) }

// AddrPort returns the host's underlay address with port.
func (h *Host) AddrPort(port uint16) netip.AddrPort { return netip.AddrPortFrom(h.IP, port) }

// Command returns a command that runs name inside the host's network
// namespace (through `ip netns exec`, which also gives it a mount namespace
// with the host's /sys). Processes still running when the bed is removed are
// killed.
func (h *Host) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, h.bed.ipPath, append([]string{"netns", "exec", h.NS, name}, args...)...)
}

// Do runs fn on an OS thread inside the host's network namespace; see
// netns.Do.
func (h *Host) Do(fn func() error) error { return netns.Do(h.Path(), fn) }

// Listen opens a listener inside the host's network namespace; it can be
// served from any goroutine.
func (h *Host) Listen(network, addr string) (net.Listener, error) {
	var ln net.Listener
	err := h.Do(func() (err error) {
		ln, err = net.Listen(network, addr)
		return err
	})
	return ln, err
}

// ListenPacket opens a packet connection inside the host's network namespace.
func (h *Host) ListenPacket(network, addr string) (net.PacketConn, error) {
	var pc net.PacketConn
	err := h.Do(func() (err error) {
		pc, err = net.ListenPacket(network, addr)
		return err
	})
	return pc, err
}

// DialContext connects to addr from inside the host's network namespace, so
// that Go code of the test can talk to servers in the bed. A host name in
// addr is resolved outside the bed, as the test process would.
func (h *Host) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	var ips []netip.Addr
	if ip, err := netip.ParseAddr(host); err == nil {
		ips = []netip.Addr{ip}
	} else if ips, err = net.DefaultResolver.LookupNetIP(ctx, "ip", host); err != nil {
		return nil, err
	}
	var errs []error
	for _, ip := range ips {
		var c net.Conn
		err := h.Do(func() (err error) {
			var d net.Dialer
			c, err = d.DialContext(ctx, network, net.JoinHostPort(ip.String(), port))
			return err
		})
		if err == nil {
			return c, nil
		}
		errs = append(errs, err)
	}
	return nil, errors.Join(errs...)
}

// HTTPClient returns a client whose connections are made inside the host's
// network namespace. It ignores proxy settings of the environment.
func (h *Host) HTTPClient() *http.Client {
	tr := &http.Transport{
		DialContext:         h.DialContext,
		Proxy:               nil,
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     30 * time.Second,
	}
	h.bed.mu.Lock()
	h.bed.transports = append(h.bed.transports, tr)
	h.bed.mu.Unlock()
	return &http.Client{Transport: tr}
}

// Links returns the names of the links in the host's namespace, sorted.
func (h *Host) Links() ([]string, error) { return links(h.Path()) }

// DropPorts makes the host drop every TCP and UDP packet that arrives
// from or for one of ports (iptables in the host's namespace): one
// protocol of the host goes deaf (say, gossip) while the others (say, RPC)
// keep working. AllowPorts undoes it.
func (h *Host) DropPorts(ports ...uint16) error {
	for _, p := range ports {
		for _, proto := range []string{"tcp", "udp"} {
			for _, dir := range []string{"--dport", "--sport"} {
				if err := h.iptables("-A", "INPUT", "-p", proto, dir, strconv.Itoa(int(p)), "-j", "DROP"); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// AllowPorts removes what DropPorts added.
func (h *Host) AllowPorts() error { return h.iptables("-F", "INPUT") }

func (h *Host) iptables(args ...string) error {
	out, err := h.Command(context.Background(), "iptables", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("testbed: iptables %s on %s: %v: %s", strings.Join(args, " "), h.Name, err, out)
	}
	return nil
}

// Cut takes the switch's end of the host's link down: the host keeps its
// address and routes, but nothing reaches it or leaves it over the underlay,
// as when its cable is pulled.
func (h *Host) Cut() error { return h.setPort(false) }

// Heal undoes Cut and returns when the link is up again.
func (h *Host) Heal() error { return h.setPort(true) }

func (h *Host) setPort(up bool) error {
	sw, err := openHandle(filepath.Join(netnsDir, h.bed.Switch))
	if err != nil {
		return err
	}
	defer sw.close()
	l, err := sw.h.LinkByName(h.port)
	if err != nil {
		return fmt.Errorf("testbed: %s's switch port: %w", h.Name, err)
	}
	if !up {
		return sw.h.LinkSetDown(l)
	}
	if err := sw.h.LinkSetUp(l); err != nil {
		return err
	}
	return h.waitUp()
}

// close removes everything the bed made; errors are reported on t.
func (b *Bed) close() {
	b.mu.Lock()
	for _, tr := range b.transports {
		tr.CloseIdleConnections()
	}
	b.mu.Unlock()
	if b.mgr != nil {
		b.mgr.Close()
	}
	if err := cleanRun(b.runID); err != nil {
		b.t.Errorf("testbed: cleanup: %v", err)
	}
	os.Remove(filepath.Join(stateDir, b.runID+".lock"))
	b.lock.Close()
}

// lockRun creates and locks the lock file of a new run. The lock is taken
// before the file gets its name, so a *.lock file whose lock can be taken
// belongs to a run that is over.
func lockRun() (string, *os.File, error) {
	if err := os.MkdirAll(stateDir, 0o755); err != nil {
		return "", nil, err
	}
	f, err := os.CreateTemp(stateDir, ".new-*")
	if err != nil {
		return "", nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		os.Remove(f.Name())
		return "", nil, err
	}
	var id [4]byte
	rand.Read(id[:])
	runID := hex.EncodeToString(id[:])
	if err := os.Rename(f.Name(), filepath.Join(stateDir, runID+".lock")); err != nil {
		f.Close()
		os.Remove(f.Name())
		return "", nil, err
	}
	return runID, f, nil
}

// CleanLeftovers removes the namespaces, processes, mounts and directories of
// beds whose test process is gone. New calls it.
func CleanLeftovers() error {
	runs := map[string]bool{}
	ents, _ := os.ReadDir(netnsDir)
	for _, e := range ents {
		if rest, ok := strings.CutPrefix(e.Name(), Prefix); ok {
			if i := strings.LastIndexByte(rest, '-'); i >= 0 {
				runs[rest[i+1:]] = true
			}
		}
	}
	ents, _ = os.ReadDir(stateDir)
	for _, e := range ents {
		name := e.Name()
		if strings.HasPrefix(name, ".new-") { // a run that died before naming its lock
			if f, err := os.Open(filepath.Join(stateDir, name)); err == nil {
				if unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) == nil {
					os.Remove(f.Name())
				}
				f.Close()
			}
			continue
		}
		runs[strings.TrimSuffix(name, ".lock")] = true
	}
	var errs []error
	for id := range runs {
		lockPath := filepath.Join(stateDir, id+".lock")
		f, err := os.Open(lockPath)
		if err == nil {
			if unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) != nil {
				f.Close()
				continue // its process is alive
			}
		} else if !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
			continue
		}
		if err := cleanRun(id); err != nil {
			errs = append(errs, err)
		} else {
			os.Remove(lockPath)
		}
		if f != nil {
			f.Close()
		}
	}
	return errors.Join(errs...)
}

// cleanRun removes what run id made: it kills the processes in its
// namespaces, unmounts what is mounted under its directory, removes the
// directory and deletes its namespaces.
func cleanRun(id string) error {
	dir := filepath.Join(stateDir, id)
	var nsPaths []string
	ents, _ := os.ReadDir(netnsDir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), Prefix) && strings.HasSuffix(e.Name(), "-"+id) {
			nsPaths = append(nsPaths, filepath.Join(netnsDir, e.Name()))
		}
	}
	mounts, err := mountsUnder(dir)
	if err != nil {
		return err
	}
	var errs []error
	keys := nsKeys(append(slices.Clone(nsPaths), mounts...))
	killIn(keys)
	// Deepest first, so that a mount point is unmounted before its parent.
	slices.SortFunc(mounts, func(a, b string) int { return len(b) - len(a) })
	for _, m := range mounts {
		if err := unix.Unmount(m, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", m, err))
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		errs = append(errs, err)
	}
	for _, p := range nsPaths {
		if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", p, err))
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	// A process that opened a namespace file before the unmount may have
	// entered the namespace after the first sweep.
	killIn(keys)
	return errors.Join(errs...)
}

// mountsUnder lists the mount points at or below dir.
func mountsUnder(dir string) ([]string, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		mp := unescapeMount(f[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	return out, nil
}

// unescapeMount undoes the octal escapes of /proc/self/mountinfo.
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var c byte
			if _, err := fmt.Sscanf(s[i+1:i+4], "%03o", &c); err == nil {
				b.WriteByte(c)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// nsKey identifies a namespace.
type nsKey struct{ dev, ino uint64 }

// nsKeys returns the namespaces of those paths that are namespace files.
func nsKeys(paths []string) map[nsKey]bool {
	keys := map[nsKey]bool{}
	for _, p := range paths {
		var st unix.Stat_t
		var fs unix.Statfs_t
		if unix.Stat(p, &st) == nil && unix.Statfs(p, &fs) == nil && fs.Type == unix.NSFS_MAGIC {
			keys[nsKey{st.Dev, st.Ino}] = true
		}
	}
	return keys
}

// killIn kills every process (but this one) whose network namespace is in
// want, and waits a little for them to go.
func killIn(want map[nsKey]bool) {
	if len(want) == 0 {
		return
	}
	find := func() []int {
		var pids []int
		ents, _ := os.ReadDir("/proc")
		for _, e := range ents {
			var pid int
			if _, err := fmt.Sscanf(e.Name(), "%d", &pid); err != nil || pid == os.Getpid() {
				continue
			}
			var st unix.Stat_t
			if unix.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &st) == nil && want[nsKey{st.Dev, st.Ino}] {
				pids = append(pids, pid)
			}
		}
		return pids
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		pids := find()
		if len(pids) == 0 || time.Now().After(deadline) {
			return
		}
		for _, pid := range pids {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// pickSubnet chooses a /24 that no address or route of the root namespace
// overlaps.
func pickSubnet() (netip.Prefix, error) {
	root, err := openHandle("/proc/self/ns/net")
	if err != nil {
		return netip.Prefix{}, err
	}
	defer root.close()
	var used []netip.Prefix
	addrs, err := root.h.AddrList(nil, netlink.FAMILY_V4)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return netip.Prefix{}, fmt.Errorf("testbed: list root addresses: %w", err)
	}
	for _, a := range addrs {
		if p, ok := ipNetPrefix(a.IPNet); ok {
			used = append(used, p)
		}
	}
	routes, err := root.h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return netip.Prefix{}, fmt.Errorf("testbed: list root routes: %w", err)
	}
	for _, r := range routes {
		if p, ok := ipNetPrefix(r.Dst); ok && p.Bits() > 0 {
			used = append(used, p)
		}
	}
	for range 200 {
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(200 + mrand.IntN(55)), byte(mrand.IntN(256)), 0}), 24)
		if !slices.ContainsFunc(used, p.Overlaps) {
			return p, nil
		}
	}
	return netip.Prefix{}, errors.New("testbed: no free /24 in 10.200.0.0-10.254.255.255: pass WithSubnet")
}

func ipNetPrefix(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	ip, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(ip.Unmap(), ones).Masked(), true
}

// nsHandle is a netlink handle inside a namespace given by path.
type nsHandle struct {
	ns vnetns.NsHandle
	h  *netlink.Handle
}

func openHandle(path string) (*nsHandle, error) {
	ns, err := vnetns.GetFromPath(path)
	if err != nil {
		return nil, fmt.Errorf("testbed: open %s: %w", path, err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		ns.Close()
		return nil, fmt.Errorf("testbed: netlink in %s: %w", path, err)
	}
	return &nsHandle{ns: ns, h: h}, nil
}

func (n *nsHandle) close() {
	n.h.Close()
	n.ns.Close()
}

// links lists the link names in the namespace at path, sorted.
func links(path string) ([]string, error) {
	n, err := openHandle(path)
	if err != nil {
		return nil, err
	}
	defer n.close()
	var ls []netlink.Link
	for range 5 {
		if ls, err = n.h.LinkList(); !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(ls))
	for _, l := range ls {
		names = append(names, l.Attrs().Name)
	}
	slices.Sort(names)
	return names, nil
}

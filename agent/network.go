package agent

import (
	"encoding/binary"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/corral-dev/corral/netns"
	"github.com/corral-dev/corral/plugins/drivers"
	"github.com/corral-dev/corral/structs"
)

// kernelIf is the name of a cluster kernel's overlay interface in its netns.
const kernelIf = "eth0"

// open opens the netns manager while the agent starts, before any thread
// has entered a kernel's namespace: the manager takes the host network
// namespace from the process, and a Go thread that once entered another
// namespace may be the one asking later.
func (o *overlays) open() {
	if os.Geteuid() != 0 {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if _, err := o.manager(); err != nil {
		o.a.logger.Warn("cluster session networking unavailable", "error", err)
	}
}

// overlays wires the kernels of cluster sessions into their session's
// VXLAN overlay: one bridge and VXLAN device per session on this agent, a
// network namespace per kernel with a veth on that bridge. The netns
// manager is opened on first use, so agents that never host a cluster
// session need none of it.
type overlays struct {
	a   *Agent
	mu  sync.Mutex
	mgr *netns.Manager
	// users counts this agent's kernels on each VNI: the overlay goes when
	// the last one does.
	users map[uint32]map[string]bool
	// egress holds the egress address of each of this agent's kernels on
	// the kernel bridge: the bridge and rules go when the last one does.
	egress   map[string]netip.Addr
	egressUp bool // the bridge and rules are in place
	egOnce   sync.Once
	eg       netns.Egress
	egErr    error
	egLock   net.Listener // the claim on eg's bridge
}

func (o *overlays) dir() string { return filepath.Join(o.a.cfg.DataDir, "netns") }

func (o *overlays) manager() (*netns.Manager, error) {
	if o.mgr != nil {
		return o.mgr, nil
	}
	m, err := netns.New(netns.Config{NetnsDir: o.dir(), Logger: o.a.logger.With("component", "netns")})
	if err != nil {
		return nil, err
	}
	o.mgr = m
	return m, nil
}

// wired reports whether a kernel gets an overlay: a kernel of a cluster
// session run by a driver that isolates networks (exec kernels share the
// host's network), unless it asked for its agent's network.
func wired(k *structs.Kernel, d drivers.Driver) bool {
	return k.Network != nil && d.Name() != "exec" && !hostNetworked(k)
}

// netnsName names a kernel's network namespace.
func netnsName(k *structs.Kernel) string { return "k-" + k.ID }

// networked reports whether the agent builds a network namespace for the
// kernel: an overlay (wired), an egress interface (egressed) or both.
func (o *overlays) networked(k *structs.Kernel, d drivers.Driver) bool {
	return wired(k, d) || o.egressed(k, d)
}

// egressed reports whether a kernel gets an interface on the agent's kernel
// bridge: every kernel of a driver that isolates networks, unless it uses
// its agent's network, asked for none, or the agent has no kernel subnet.
func (o *overlays) egressed(k *structs.Kernel, d drivers.Driver) bool {
	if d.Name() == "exec" || hostNetworked(k) || noNetwork(k) || os.Geteuid() != 0 {
		return false
	}
	return o.a.cfg.KernelSubnet != "off"
}

// noNetwork reports whether a kernel asked for no network (-network none).
func noNetwork(k *structs.Kernel) bool {
	return k.Options != nil && k.Options.Network == structs.NetworkNone
}

// egressIf is the kernel's egress interface: eth0, or eth1 beside a
// cluster kernel's overlay.
func egressIf(k *structs.Kernel) string {
	if k.Network != nil {
		return "eth1"
	}
	return kernelIf
}

// egressConfig is the agent's kernel bridge and rules (see claimEgress),
// with as denied ports the cluster's control ports wherever they are (the
// default server and agent ports, this agent's own and its join
// addresses', TCP and UDP for gossip) and the VXLAN port.
func (o *overlays) egressConfig() (netns.Egress, error) {
	o.egOnce.Do(func() { o.eg, o.egErr = o.claimEgress() })
	return o.eg, o.egErr
}

// hostNameservers are the IPv4 name servers kernels are given (the host's,
// or systemd-resolved's upstreams; see the runc driver's resolv.conf), as
// /32 networks for the egress allow list.
func hostNameservers() []netip.Prefix {
	var out []netip.Prefix
	for _, f := range []string{"/etc/resolv.conf", "/run/systemd/resolve/resolv.conf"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			fs := strings.Fields(line)
			if len(fs) < 2 || fs[0] != "nameserver" {
				continue
			}
			if a, err := netip.ParseAddr(fs[1]); err == nil && a.Is4() && !a.IsLoopback() {
				out = append(out, netip.PrefixFrom(a, 32))
			}
		}
	}
	return out
}

// maxEgressSlots bounds how many agents share a network namespace, each
// with a kernel bridge of its own.
const maxEgressSlots = 16

// claimEgress picks the agent's kernel bridge: corral0 with the configured
// subnet, unless another agent in the same network namespace (tests, dev
// set-ups) holds it; then corral1 with the next subnet of the same size,
// and so on. The claim is an abstract unix socket of the network namespace
// that the agent holds while it runs, so it ends with the agent however it
// ends.
func (o *overlays) claimEgress() (netns.Egress, error) {
	base := netns.DefaultEgressSubnet
	// "off" (no kernel gets the bridge) still names the default one, for
	// reconcile to remove what an earlier run with it left.
	if s := o.a.cfg.KernelSubnet; s != "" && s != "off" {
		p, err := netip.ParsePrefix(s)
		if err != nil || !p.Addr().Is4() {
			return netns.Egress{}, fmt.Errorf("kernel subnet %q is not an IPv4 prefix", s)
		}
		base = p.Masked()
	}
	e := netns.Egress{}
	ports := map[uint16]bool{8640: true, 8641: true, 8642: true, 8643: true, 8644: true}
	for _, hp := range append([]string{o.a.cfg.RPCAddr, o.a.cfg.SerfAddr, o.a.cfg.EnrollAddr}, o.a.cfg.Join...) {
		if _, p, err := net.SplitHostPort(hp); err == nil {
			if n, err := strconv.ParseUint(p, 10, 16); err == nil && n > 0 {
				ports[uint16(n)] = true
			}
		}
	}
	for _, p := range slices.Sorted(maps.Keys(ports)) {
		e.DenyPorts = append(e.DenyPorts, netns.Port{Proto: "tcp", Port: p}, netns.Port{Proto: "udp", Port: p})
	}
	e.DenyPorts = append(e.DenyPorts, netns.Port{Proto: "udp", Port: netns.DefaultVXLANPort})
	for _, c := range o.a.cfg.KernelEgressAllow {
		p, err := netip.ParsePrefix(c)
		if err != nil || !p.Addr().Is4() {
			return e, fmt.Errorf("kernel egress allow %q is not an IPv4 network", c)
		}
		e.Allow = append(e.Allow, p)
	}
	if len(e.Allow) > 0 {
		e.Allow = append(e.Allow, hostNameservers()...)
	}

	size := uint32(1) << (32 - base.Bits())
	b4 := base.Addr().As4()
	start := binary.BigEndian.Uint32(b4[:])
	for n := range uint32(maxEgressSlots) {
		// An abstract unix socket belongs to the network namespace and
		// goes with the process: no file is left behind.
		l, err := net.Listen("unix", fmt.Sprintf("@corral-egress-%d", n))
		if err != nil {
			continue // another agent's
		}
		var a [4]byte
		binary.BigEndian.PutUint32(a[:], start+n*size)
		e.Subnet = netip.PrefixFrom(netip.AddrFrom4(a), base.Bits())
		e.Bridge = fmt.Sprintf("corral%d", n)
		e.Table = netns.EgressTable
		if n > 0 {
			e.Table += strconv.Itoa(int(n))
			o.a.logger.Info("another agent in this network namespace has the kernel bridge: using the next", "bridge", e.Bridge, "subnet", e.Subnet)
		}
		o.egLock = l
		return e, nil
	}
	return e, fmt.Errorf("kernel bridge: %d agents in this network namespace already hold one each", maxEgressSlots)
}

// prepare gives a kernel its network: -network none becomes the driver's
// default (a namespace with loopback only), and a networked kernel gets its
// namespace with its overlay and egress interfaces.
func (o *overlays) prepare(k *structs.Kernel, d drivers.Driver, cfg *drivers.TaskConfig) error {
	if cfg.Options != nil && cfg.Options.Network == structs.NetworkNone && d.Name() != "exec" {
		// exec kernels share the host's network: its driver refuses none.
		cfg.Options.Network = structs.NetworkDefault
	}
	if !o.networked(k, d) {
		return nil
	}
	if wired(k, d) {
		if err := o.setup(k, cfg); err != nil {
			return err
		}
	}
	if o.egressed(k, d) {
		if err := o.setupEgress(k, cfg); err != nil {
			return fmt.Errorf("egress: %w", err)
		}
		if wired(k, d) {
			overlayOnly(cfg)
		}
	}
	return nil
}

// overlayIfEnv keeps the job traffic of common launchers on the overlay
// (eth0) of a cluster kernel that also has an egress interface: each
// agent's kernel subnet is the same, so a launcher trying every interface
// would take another agent's kernel bridge addresses for peers. A session
// that sets a variable itself keeps its value.
var overlayIfEnv = map[string]string{
	"OMPI_MCA_btl_tcp_if_include": kernelIf, // Open MPI byte transfer
	"OMPI_MCA_oob_tcp_if_include": kernelIf, // Open MPI 4 daemons
	"PRTE_MCA_oob_tcp_if_include": kernelIf, // Open MPI 5 daemons
	"HYDRA_IFACE":                 kernelIf, // MPICH
	"NCCL_SOCKET_IFNAME":          kernelIf,
	"GLOO_SOCKET_IFNAME":          kernelIf, // PyTorch's gloo
}

func overlayOnly(cfg *drivers.TaskConfig) {
	if cfg.Env == nil {
		cfg.Env = map[string]string{}
	}
	for key, v := range overlayIfEnv {
		if _, set := cfg.Env[key]; !set {
			cfg.Env[key] = v
		}
	}
}

// setupEgress puts the kernel on the kernel bridge with the lowest free
// address of the subnet.
func (o *overlays) setupEgress(k *structs.Kernel, cfg *drivers.TaskConfig) error {
	e, err := o.egressConfig()
	if err != nil {
		return err
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	m, err := o.manager()
	if err != nil {
		return err
	}
	if o.egress == nil {
		o.egress = map[string]netip.Addr{}
	}
	addr, ok := o.egress[k.ID]
	if !ok {
		used := map[netip.Addr]bool{}
		for _, a := range o.egress {
			used[a] = true
		}
		sub := e.Subnet
		for a := e.Gateway().Next(); sub.Contains(a); a = a.Next() {
			if !used[a] && sub.Contains(a.Next()) { // not the broadcast address
				addr, ok = a, true
				break
			}
		}
		if !ok {
			return fmt.Errorf("no free address in kernel subnet %v", sub)
		}
		o.egress[k.ID] = addr
	}
	if !o.egressUp {
		if err := m.EnsureEgress(e); err != nil {
			return err
		}
		o.egressUp = true
	}
	path, err := m.Create(netnsName(k))
	if err != nil {
		return err
	}
	if err := m.AttachEgress(e, path, egressIf(k), addr); err != nil {
		return err
	}
	cfg.NetNSPath = path
	return nil
}

// setup builds the kernel's overlay plumbing and points its task config
// at the namespace and the session's hosts.
func (o *overlays) setup(k *structs.Kernel, cfg *drivers.TaskConfig) error {
	n := k.Network
	local, err := netip.ParseAddr(n.Underlay)
	if err != nil {
		return fmt.Errorf("overlay: agent underlay address %q: %w", n.Underlay, err)
	}
	addr, err := netip.ParsePrefix(n.Address)
	if err != nil {
		return fmt.Errorf("overlay: kernel address %q: %w", n.Address, err)
	}
	var peers []netip.Addr
	for _, p := range n.Peers {
		ip, err := netip.ParseAddr(p)
		if err != nil {
			return fmt.Errorf("overlay: peer address %q: %w", p, err)
		}
		peers = append(peers, ip)
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	m, err := o.manager()
	if err != nil {
		return err
	}
	if err := m.EnsureOverlay(netns.Overlay{VNI: n.VNI, Local: local, Peers: peers}); err != nil {
		return fmt.Errorf("overlay VNI %d: %w", n.VNI, err)
	}
	o.use(k)
	path, err := m.Create(netnsName(k))
	if err != nil {
		return err
	}
	if err := m.AttachKernel(n.VNI, path, kernelIf, addr); err != nil {
		return fmt.Errorf("overlay VNI %d: attach %s: %w", n.VNI, k.Hostname, err)
	}
	cfg.NetNSPath = path
	cfg.Hosts = n.Hosts
	return nil
}

func (o *overlays) use(k *structs.Kernel) {
	if o.users == nil {
		o.users = map[uint32]map[string]bool{}
	}
	if o.users[k.Network.VNI] == nil {
		o.users[k.Network.VNI] = map[string]bool{}
	}
	o.users[k.Network.VNI][k.ID] = true
}

// release removes what prepare built for a kernel.
func (o *overlays) release(k *structs.Kernel, d drivers.Driver) {
	if o.networked(k, d) {
		o.teardown(k)
	}
}

// teardown removes the kernel's namespace and veths, the session's overlay
// when no other kernel of this agent uses it, and the kernel bridge and
// its rules when no kernel is left on it.
func (o *overlays) teardown(k *structs.Kernel) {
	o.mu.Lock()
	defer o.mu.Unlock()
	m, err := o.manager()
	if err != nil {
		o.a.logger.Warn("network teardown", "kernel_id", k.ID, "error", err)
		return
	}
	path := m.Path(netnsName(k))
	if _, ok := o.egress[k.ID]; ok {
		if err := m.DetachEgress(path, egressIf(k)); err != nil {
			o.a.logger.Warn("egress: detaching kernel failed", "kernel_id", k.ID, "error", err)
		}
		delete(o.egress, k.ID)
	}
	if k.Network != nil {
		vni := k.Network.VNI
		if err := m.DetachKernel(vni, path, kernelIf); err != nil {
			o.a.logger.Warn("overlay: detaching kernel failed", "kernel_id", k.ID, "vni", vni, "error", err)
		}
		delete(o.users[vni], k.ID)
		if len(o.users[vni]) == 0 {
			delete(o.users, vni)
			if err := m.DeleteOverlay(vni); err != nil {
				o.a.logger.Warn("overlay: deleting overlay failed", "vni", vni, "error", err)
			}
		}
	}
	if err := m.Delete(netnsName(k)); err != nil {
		o.a.logger.Warn("network: deleting kernel namespace failed", "kernel_id", k.ID, "error", err)
	}
	if len(o.egress) == 0 && o.egressUp {
		e, _ := o.egressConfig()
		if err := m.DeleteEgress(e); err != nil {
			o.a.logger.Warn("egress: deleting the kernel bridge failed", "error", err)
		}
		o.egressUp = false
	}
	if len(o.users) == 0 && len(o.egress) == 0 {
		// The last networked kernel is gone: leave nothing mounted behind.
		m.Tidy()
	}
}

// reconcile, after recovery, removes the overlays, egress veths and
// namespaces of an earlier run that no recovered kernel uses any more, and
// takes back the egress addresses of those that do.
func (o *overlays) reconcile(live []*kernelRunner) {
	if _, err := os.Stat(o.dir()); err != nil {
		return // never hosted a networked kernel
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	m, err := o.manager()
	if err != nil {
		o.a.logger.Warn("network reconcile", "error", err)
		return
	}
	vnis, names, veths := map[uint32]bool{}, map[string]bool{}, map[string]bool{}
	for _, r := range live {
		k := r.kernel
		if !o.networked(k, r.driver) {
			continue
		}
		names[netnsName(k)] = true
		if wired(k, r.driver) {
			vnis[k.Network.VNI] = true
			o.use(k)
		}
		if o.egressed(k, r.driver) {
			path := m.Path(netnsName(k))
			addr, err := netns.EgressAddr(path, egressIf(k))
			if err != nil {
				o.a.logger.Warn("egress: recovered kernel has no egress address", "kernel_id", k.ID, "error", err)
				continue
			}
			if o.egress == nil {
				o.egress = map[string]netip.Addr{}
			}
			o.egress[k.ID] = addr
			veths[netns.EgressVethName(path, egressIf(k))] = true
		}
	}
	if err := m.Reconcile(vnis, names); err != nil {
		o.a.logger.Warn("overlay reconcile", "error", err)
	}
	e, err := o.egressConfig()
	if err != nil {
		o.a.logger.Warn("egress reconcile", "error", err)
		return
	}
	if err := m.ReconcileEgress(e, veths); err != nil {
		o.a.logger.Warn("egress reconcile", "error", err)
	}
	if len(names) == 0 {
		m.Tidy() // no kernel left: nor the namespace dir's mount
	}
	if len(veths) > 0 {
		// The rules of this run (its ports, its subnet) replace the last.
		if err := m.EnsureEgress(e); err != nil {
			o.a.logger.Warn("egress reconcile", "error", err)
		} else {
			o.egressUp = true
		}
	}
}

func (o *overlays) close() {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.mgr != nil {
		_ = o.mgr.Close()
		o.mgr = nil
	}
	if o.egLock != nil {
		_ = o.egLock.Close()
		o.egLock = nil
	}
}

// KernelAddr returns the kernel's address on the agent's kernel bridge,
// which the agent's host reaches (app tunnels, service ports), or false
// when the kernel has none (exec, -network host or none, not running).
func (a *Agent) KernelAddr(kernelID string) (netip.Addr, bool) {
	o := a.overlays
	o.mu.Lock()
	defer o.mu.Unlock()
	addr, ok := o.egress[kernelID]
	return addr, ok
}

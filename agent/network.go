package agent

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
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

// teardown removes the kernel's namespace and veth, and the session's
// overlay when no other kernel of this agent uses it.
func (o *overlays) teardown(k *structs.Kernel) {
	o.mu.Lock()
	defer o.mu.Unlock()
	m, err := o.manager()
	if err != nil {
		o.a.logger.Warn("overlay teardown", "kernel_id", k.ID, "error", err)
		return
	}
	vni := k.Network.VNI
	path := m.Path(netnsName(k))
	if err := m.DetachKernel(vni, path, kernelIf); err != nil {
		o.a.logger.Warn("overlay: detaching kernel failed", "kernel_id", k.ID, "vni", vni, "error", err)
	}
	if err := m.Delete(netnsName(k)); err != nil {
		o.a.logger.Warn("overlay: deleting kernel namespace failed", "kernel_id", k.ID, "error", err)
	}
	delete(o.users[vni], k.ID)
	if len(o.users[vni]) == 0 {
		delete(o.users, vni)
		if err := m.DeleteOverlay(vni); err != nil {
			o.a.logger.Warn("overlay: deleting overlay failed", "vni", vni, "error", err)
		}
	}
	if len(o.users) == 0 {
		// The last cluster kernel is gone: leave nothing mounted behind.
		m.Tidy()
	}
}

// reconcile, after recovery, removes the overlays and namespaces of an
// earlier run that no recovered kernel uses any more.
func (o *overlays) reconcile(live []*structs.Kernel) {
	if _, err := os.Stat(o.dir()); err != nil {
		return // never hosted a cluster kernel
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	m, err := o.manager()
	if err != nil {
		o.a.logger.Warn("overlay reconcile", "error", err)
		return
	}
	vnis, names := map[uint32]bool{}, map[string]bool{}
	for _, k := range live {
		if k.Network != nil {
			vnis[k.Network.VNI] = true
			names[netnsName(k)] = true
			o.use(k)
		}
	}
	if err := m.Reconcile(vnis, names); err != nil {
		o.a.logger.Warn("overlay reconcile", "error", err)
	}
}

func (o *overlays) close() {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.mgr != nil {
		_ = o.mgr.Close()
		o.mgr = nil
	}
}

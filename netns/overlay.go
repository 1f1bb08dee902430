package netns

import (
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/moby/sys/mountinfo"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Device name prefixes. Every device the package creates in the host
// namespace starts with one of them; Reconcile only ever touches those.
const (
	BridgePrefix = "crb" // crb<VNI>: the session's bridge
	VXLANPrefix  = "crx" // crx<VNI>: the session's VXLAN device
	VethPrefix   = "crv" // crv<12 hex>: host end of a kernel's veth
)

// DefaultVXLANPort is the IANA VXLAN UDP port, used when Overlay.Port is 0.
const DefaultVXLANPort = 4789

// MaxVNI is the largest VXLAN network identifier (24 bits).
const MaxVNI = 1<<24 - 1

// Overlay describes one session's overlay on this host.
type Overlay struct {
	// VNI is the session's VXLAN network identifier, 1..MaxVNI.
	VNI uint32
	// Local is this host's underlay address: the VXLAN source address. The
	// link that holds it becomes the VXLAN's underlying device.
	Local netip.Addr
	// Peers are the underlay addresses of the other hosts of the session.
	// Broadcast, unknown-unicast and multicast frames go to exactly these.
	// Local, if listed, is ignored.
	Peers []netip.Addr
	// Port is the VXLAN UDP port; DefaultVXLANPort when 0. All hosts of a
	// session must use the same port.
	Port uint16
	// MTU of the overlay (bridge, VXLAN, veths). 0 means the underlay link's
	// MTU minus the encapsulation overhead (50 bytes over IPv4, 70 over IPv6).
	MTU int
}

// BridgeName is the name of the bridge for vni.
func BridgeName(vni uint32) string { return BridgePrefix + strconv.FormatUint(uint64(vni), 10) }

// VXLANName is the name of the VXLAN device for vni.
func VXLANName(vni uint32) string { return VXLANPrefix + strconv.FormatUint(uint64(vni), 10) }

// VethName is the name of the host end of the veth that AttachKernel creates
// for the kernel namespace nsPath and its interface ifName on vni.
func VethName(vni uint32, nsPath, ifName string) string {
	h := fnv.New64a()
	fmt.Fprintf(h, "%d\x00%s\x00%s", vni, nsPath, ifName)
	return fmt.Sprintf("%s%012x", VethPrefix, h.Sum64()&(1<<48-1))
}

// vniFromName returns the VNI in a name made by BridgeName or VXLANName.
func vniFromName(name, prefix string) (uint32, bool) {
	s, ok := strings.CutPrefix(name, prefix)
	if !ok || s == "" {
		return 0, false
	}
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || n == 0 || n > MaxVNI || prefix+strconv.FormatUint(n, 10) != name {
		return 0, false
	}
	return uint32(n), true
}

func checkVNI(vni uint32) error {
	if vni == 0 || vni > MaxVNI {
		return fmt.Errorf("netns: VNI %d out of range 1..%d", vni, MaxVNI)
	}
	return nil
}

func notFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf)
}

// linkByName returns the named link in the host namespace, or nil.
func (m *Manager) linkByName(name string) (netlink.Link, error) {
	l, err := m.h.LinkByName(name)
	if notFound(err) {
		return nil, nil
	}
	return l, err
}

// linkList lists the host namespace's links, retrying a dump that a
// concurrent change interrupted.
func linkList(h *netlink.Handle) ([]netlink.Link, error) {
	var err error
	for range 5 {
		var ls []netlink.Link
		if ls, err = h.LinkList(); err == nil {
			return ls, nil
		}
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	return nil, err
}

// underlay finds the link that holds addr in the host namespace.
func (m *Manager) underlay(addr netip.Addr) (netlink.Link, error) {
	family := netlink.FAMILY_V4
	if addr.Is6() {
		family = netlink.FAMILY_V6
	}
	var addrs []netlink.Addr
	var err error
	for range 5 {
		if addrs, err = m.h.AddrList(nil, family); !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("netns: list addresses: %w", err)
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap() == addr {
			return m.h.LinkByIndex(a.LinkIndex)
		}
	}
	return nil, fmt.Errorf("%w: %s (is it assigned to an interface?)", ErrNoUnderlay, addr)
}

// noIPv6 stops the kernel from giving a host-side overlay device an IPv6
// link-local address, through which kernels could reach the host.
func (m *Manager) noIPv6(l netlink.Link) {
	if err := m.h.LinkSetIP6AddrGenMode(l, 1 /* IN6_ADDR_GEN_MODE_NONE */); err != nil {
		m.log.Debug("cannot disable IPv6 address generation", "link", l.Attrs().Name, "err", err)
	}
}

// EnsureOverlay makes this host's part of an overlay match o: the bridge
// BridgeName(o.VNI), the VXLAN device VXLANName(o.VNI) (learning off,
// enslaved to the bridge), both up, and one static all-zeros FDB entry per
// peer and no other. It may be called again with a changed peer list.
func (m *Manager) EnsureOverlay(o Overlay) error {
	if err := checkVNI(o.VNI); err != nil {
		return err
	}
	if !o.Local.IsValid() {
		return errors.New("netns: overlay needs the local underlay address")
	}
	local := o.Local.Unmap()
	port := int(o.Port)
	if port == 0 {
		port = DefaultVXLANPort
	}
	var peers []netip.Addr
	for _, p := range o.Peers {
		p = p.Unmap()
		if !p.IsValid() || p.Is4() != local.Is4() {
			return fmt.Errorf("netns: peer %v is not an address of the same family as %v", p, local)
		}
		if p != local && !slices.Contains(peers, p) {
			peers = append(peers, p)
		}
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	under, err := m.underlay(local)
	if err != nil {
		return err
	}
	mtu := o.MTU
	if mtu == 0 {
		mtu = under.Attrs().MTU - 50
		if local.Is6() {
			mtu = under.Attrs().MTU - 70
		}
	}
	if mtu < 68 {
		return fmt.Errorf("netns: overlay MTU %d too small", mtu)
	}

	br, err := m.ensureBridge(BridgeName(o.VNI), mtu)
	if err != nil {
		return err
	}
	vx, err := m.ensureVXLAN(o.VNI, local, under, port, mtu, br)
	if err != nil {
		return err
	}
	return m.reconcileFDB(vx, peers)
}

func (m *Manager) ensureBridge(name string, mtu int) (netlink.Link, error) {
	br, err := m.linkByName(name)
	if err != nil {
		return nil, fmt.Errorf("netns: look up %s: %w", name, err)
	}
	if br != nil && br.Type() != "bridge" {
		return nil, fmt.Errorf("netns: %s exists and is a %s, not a bridge", name, br.Type())
	}
	if br == nil {
		attrs := netlink.NewLinkAttrs()
		attrs.Name = name
		attrs.MTU = mtu
		if err := m.h.LinkAdd(&netlink.Bridge{LinkAttrs: attrs}); err != nil {
			return nil, fmt.Errorf("netns: create bridge %s: %w", name, err)
		}
		if br, err = m.h.LinkByName(name); err != nil {
			return nil, fmt.Errorf("netns: look up %s: %w", name, err)
		}
		m.noIPv6(br)
		m.log.Debug("created bridge", "link", name)
	}
	if br.Attrs().MTU != mtu {
		if err := m.h.LinkSetMTU(br, mtu); err != nil {
			return nil, fmt.Errorf("netns: set MTU of %s: %w", name, err)
		}
	}
	if err := m.h.LinkSetUp(br); err != nil {
		return nil, fmt.Errorf("netns: set %s up: %w", name, err)
	}
	return br, nil
}

func (m *Manager) ensureVXLAN(vni uint32, local netip.Addr, under netlink.Link, port, mtu int, br netlink.Link) (netlink.Link, error) {
	name := VXLANName(vni)
	l, err := m.linkByName(name)
	if err != nil {
		return nil, fmt.Errorf("netns: look up %s: %w", name, err)
	}
	if l != nil {
		vx, ok := l.(*netlink.Vxlan)
		same := ok && vx.VxlanId == int(vni) && vx.Port == port && !vx.Learning &&
			vx.VtepDevIndex == under.Attrs().Index && vx.SrcAddr.Equal(net.IP(local.AsSlice()))
		if !same {
			m.log.Debug("replacing VXLAN device with other settings", "link", name)
			if err := m.h.LinkDel(l); err != nil {
				return nil, fmt.Errorf("netns: delete outdated %s: %w", name, err)
			}
			l = nil
		}
	}
	if l == nil {
		attrs := netlink.NewLinkAttrs()
		attrs.Name = name
		attrs.MTU = mtu
		vx := &netlink.Vxlan{
			LinkAttrs:    attrs,
			VxlanId:      int(vni),
			VtepDevIndex: under.Attrs().Index,
			SrcAddr:      net.IP(local.AsSlice()),
			Learning:     false,
			Port:         port,
		}
		if err := m.h.LinkAdd(vx); err != nil {
			return nil, fmt.Errorf("netns: create VXLAN %s (VNI %d, local %s, port %d): %w", name, vni, local, port, err)
		}
		if l, err = m.h.LinkByName(name); err != nil {
			return nil, fmt.Errorf("netns: look up %s: %w", name, err)
		}
		m.noIPv6(l)
		m.log.Debug("created VXLAN device", "link", name, "vni", vni, "local", local)
	}
	if l.Attrs().MTU != mtu {
		if err := m.h.LinkSetMTU(l, mtu); err != nil {
			return nil, fmt.Errorf("netns: set MTU of %s: %w", name, err)
		}
	}
	if l.Attrs().MasterIndex != br.Attrs().Index {
		if err := m.h.LinkSetMaster(l, br); err != nil {
			return nil, fmt.Errorf("netns: enslave %s to %s: %w", name, br.Attrs().Name, err)
		}
	}
	if err := m.h.LinkSetUp(l); err != nil {
		return nil, fmt.Errorf("netns: set %s up: %w", name, err)
	}
	return l, nil
}

var zeroMAC = net.HardwareAddr{0, 0, 0, 0, 0, 0}

// fdbPeers lists the remote VTEPs of vx's all-zeros FDB entries.
func (m *Manager) fdbPeers(vx netlink.Link) ([]netip.Addr, error) {
	var ns []netlink.Neigh
	var err error
	for range 5 {
		if ns, err = m.h.NeighList(vx.Attrs().Index, unix.AF_BRIDGE); !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return nil, err
	}
	var out []netip.Addr
	for _, n := range ns {
		if n.LinkIndex != vx.Attrs().Index || n.Flags&netlink.NTF_SELF == 0 || n.IP == nil ||
			n.HardwareAddr.String() != zeroMAC.String() {
			continue
		}
		if ip, ok := netip.AddrFromSlice(n.IP); ok {
			out = append(out, ip.Unmap())
		}
	}
	return out, nil
}

func (m *Manager) fdbEntry(vx netlink.Link, peer netip.Addr) *netlink.Neigh {
	return &netlink.Neigh{
		LinkIndex:    vx.Attrs().Index,
		Family:       unix.AF_BRIDGE,
		State:        netlink.NUD_PERMANENT | netlink.NUD_NOARP,
		Flags:        netlink.NTF_SELF,
		IP:           net.IP(peer.AsSlice()),
		HardwareAddr: zeroMAC,
	}
}

// reconcileFDB makes the all-zeros FDB entries of vx point at exactly peers.
func (m *Manager) reconcileFDB(vx netlink.Link, peers []netip.Addr) error {
	have, err := m.fdbPeers(vx)
	if err != nil {
		return fmt.Errorf("netns: list FDB of %s: %w", vx.Attrs().Name, err)
	}
	for _, p := range peers {
		if slices.Contains(have, p) {
			continue
		}
		// `bridge fdb append`: several all-zeros entries, one per peer.
		if err := m.h.NeighAppend(m.fdbEntry(vx, p)); err != nil {
			return fmt.Errorf("netns: add FDB entry %s -> %s: %w", vx.Attrs().Name, p, err)
		}
		m.log.Debug("added overlay peer", "link", vx.Attrs().Name, "peer", p)
	}
	for _, p := range have {
		if slices.Contains(peers, p) {
			continue
		}
		if err := m.h.NeighDel(m.fdbEntry(vx, p)); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("netns: delete FDB entry %s -> %s: %w", vx.Attrs().Name, p, err)
		}
		m.log.Debug("removed overlay peer", "link", vx.Attrs().Name, "peer", p)
	}
	return nil
}

// Peers returns the underlay addresses the VNI's VXLAN device floods to.
func (m *Manager) Peers(vni uint32) ([]netip.Addr, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	vx, err := m.linkByName(VXLANName(vni))
	if err != nil {
		return nil, err
	}
	if vx == nil {
		return nil, fmt.Errorf("%w: %d", ErrNoOverlay, vni)
	}
	ps, err := m.fdbPeers(vx)
	slices.SortFunc(ps, netip.Addr.Compare)
	return ps, err
}

// DeleteOverlay removes the VNI's bridge, VXLAN device and the host ends of
// all veths attached to it (which removes their kernel ends too). Deleting
// an overlay that does not exist is not an error.
func (m *Manager) DeleteOverlay(vni uint32) error {
	if err := checkVNI(vni); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.deleteOverlay(vni)
}

func (m *Manager) deleteOverlay(vni uint32) error {
	ls, err := linkList(m.h)
	if err != nil {
		return fmt.Errorf("netns: list links: %w", err)
	}
	bridge, vxlan := BridgeName(vni), VXLANName(vni)
	brIndex := -1
	for _, l := range ls {
		if l.Attrs().Name == bridge {
			brIndex = l.Attrs().Index
		}
	}
	var errs []error
	del := func(l netlink.Link) {
		if err := m.h.LinkDel(l); err != nil && !notFound(err) && !errors.Is(err, unix.ENODEV) {
			errs = append(errs, fmt.Errorf("netns: delete %s: %w", l.Attrs().Name, err))
			return
		}
		m.log.Debug("deleted link", "link", l.Attrs().Name, "vni", vni)
	}
	for _, l := range ls {
		if v, ok := vethVNI(l); ok && (v == vni || (brIndex > 0 && l.Attrs().MasterIndex == brIndex)) {
			del(l)
		}
	}
	for _, l := range ls {
		if n := l.Attrs().Name; n == vxlan || n == bridge {
			del(l)
		}
	}
	return errors.Join(errs...)
}

// vethVNI returns the VNI recorded in the alias of a host veth end made by
// AttachKernel; ok is false for any other link.
func vethVNI(l netlink.Link) (vni uint32, ok bool) {
	if l.Type() != "veth" || !strings.HasPrefix(l.Attrs().Name, VethPrefix) || len(l.Attrs().Name) != 15 {
		return 0, false
	}
	s, found := strings.CutPrefix(l.Attrs().Alias, aliasPrefix)
	if !found {
		return 0, true // ours by name, VNI unknown
	}
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return 0, true
	}
	return uint32(n), true
}

const aliasPrefix = "corral-vni="

// AttachKernel connects the kernel namespace at nsPath to the VNI's overlay:
// a veth pair whose host end, VethName(vni, nsPath, ifName), is a port of the
// VNI's bridge and whose other end is ifName inside the kernel namespace,
// with addr and up. The kernel gets no default route. EnsureOverlay must have
// run for the VNI. Attaching again is harmless.
func (m *Manager) AttachKernel(vni uint32, nsPath string, ifName string, addr netip.Prefix) error {
	if err := checkVNI(vni); err != nil {
		return err
	}
	if len(ifName) == 0 || len(ifName) > 15 || strings.ContainsAny(ifName, "/ \x00") {
		return fmt.Errorf("netns: invalid interface name %q", ifName)
	}
	if !addr.IsValid() {
		return fmt.Errorf("netns: invalid kernel address %v", addr)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	br, err := m.linkByName(BridgeName(vni))
	if err != nil {
		return fmt.Errorf("netns: look up bridge: %w", err)
	}
	if br == nil {
		return fmt.Errorf("%w: %d (call EnsureOverlay first)", ErrNoOverlay, vni)
	}
	return m.attachVeth(vethSpec{br: br, nsPath: nsPath, ifName: ifName, hostName: VethName(vni, nsPath, ifName),
		alias: aliasPrefix + strconv.FormatUint(uint64(vni), 10), addr: addr})
}

// operUpTimeout bounds how long an attach waits for a veth to come up.
const operUpTimeout = 3 * time.Second

// waitOperUp waits until the named link is operationally up.
func waitOperUp(h *netlink.Handle, name string) bool {
	deadline := time.Now().Add(operUpTimeout)
	for {
		l, err := h.LinkByName(name)
		if err == nil && l.Attrs().OperState == netlink.OperUp {
			return true
		}
		if err != nil || time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// DetachKernel removes the veth that AttachKernel made for the same
// arguments; the kernel's interface goes with it. Detaching what is not
// attached is not an error.
func (m *Manager) DetachKernel(vni uint32, nsPath string, ifName string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	name := VethName(vni, nsPath, ifName)
	l, err := m.linkByName(name)
	if err != nil {
		return fmt.Errorf("netns: look up %s: %w", name, err)
	}
	if l == nil {
		return nil
	}
	if err := m.h.LinkDel(l); err != nil && !notFound(err) {
		return fmt.Errorf("netns: delete %s: %w", name, err)
	}
	m.log.Debug("deleted veth", "link", name, "netns", nsPath, "vni", vni)
	return nil
}

// Reconcile removes what an earlier run left behind: the overlay devices
// (bridges, VXLAN devices, host veth ends) of every VNI not in keepVNIs, veth
// ends whose VNI is unknown, and every namespace in the Manager's NetnsDir
// whose name is not in keepNetns. Agents call it on start with the sessions
// they still host.
func (m *Manager) Reconcile(keepVNIs map[uint32]bool, keepNetns map[string]bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if ok, err := mountinfo.Mounted(m.dir); err == nil && ok {
		// An earlier run made it a shared mount point: Tidy may undo it.
		m.shared = true
	}
	ls, err := linkList(m.h)
	if err != nil {
		return fmt.Errorf("netns: list links: %w", err)
	}
	var errs []error
	stale := map[uint32]bool{}
	for _, l := range ls {
		name := l.Attrs().Name
		if vni, ok := vniFromName(name, BridgePrefix); ok && l.Type() == "bridge" && !keepVNIs[vni] {
			stale[vni] = true
		}
		if vni, ok := vniFromName(name, VXLANPrefix); ok && l.Type() == "vxlan" && !keepVNIs[vni] {
			stale[vni] = true
		}
	}
	for vni := range stale {
		if err := m.deleteOverlay(vni); err != nil {
			errs = append(errs, err)
		}
	}
	if ls, err = linkList(m.h); err != nil {
		return fmt.Errorf("netns: list links: %w", err)
	}
	for _, l := range ls {
		if vni, ok := vethVNI(l); ok && !keepVNIs[vni] {
			if err := m.h.LinkDel(l); err != nil && !notFound(err) {
				errs = append(errs, fmt.Errorf("netns: delete %s: %w", l.Attrs().Name, err))
			} else {
				m.log.Debug("deleted stale veth", "link", l.Attrs().Name)
			}
		}
	}
	ents, err := os.ReadDir(m.dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("netns: read %s: %w", m.dir, err))
	}
	for _, e := range ents {
		if e.IsDir() || keepNetns[e.Name()] {
			continue
		}
		if err := unmountRemove(m.Path(e.Name())); err != nil {
			errs = append(errs, err)
		} else {
			m.log.Debug("deleted stale network namespace", "path", m.Path(e.Name()))
		}
	}
	return errors.Join(errs...)
}

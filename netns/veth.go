package netns

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
)

// vethSpec is one kernel's veth pair on a bridge: hostName on the host's
// side, enslaved to br and labelled alias; ifName with addr inside the
// kernel's namespace at nsPath.
type vethSpec struct {
	br                              netlink.Link
	nsPath, ifName, hostName, alias string
	addr                            netip.Prefix
	// isolated makes the bridge port forward only to the bridge itself,
	// never to other isolated ports (kernels never meet at layer 2).
	isolated bool
	// gateway, when valid, becomes the kernel's default route.
	gateway netip.Addr
}

// attachVeth creates (or completes) the veth pair of s and brings both
// ends up with the kernel's address, loopback and route. m.mu is held.
// Attaching again is harmless; a failure leaves a veth that a retry or a
// detach removes.
func (m *Manager) attachVeth(s vethSpec) error {
	kns, err := vnetns.GetFromPath(s.nsPath)
	if err != nil {
		return fmt.Errorf("netns: open kernel namespace %s: %w", s.nsPath, err)
	}
	defer kns.Close()
	kh, err := netlink.NewHandleAt(kns)
	if err != nil {
		return fmt.Errorf("netns: netlink handle in %s: %w", s.nsPath, err)
	}
	defer kh.Close()

	mtu := s.br.Attrs().MTU
	host, err := m.linkByName(s.hostName)
	if err != nil {
		return fmt.Errorf("netns: look up %s: %w", s.hostName, err)
	}
	peer, err := kh.LinkByName(s.ifName)
	if err != nil && !notFound(err) {
		return fmt.Errorf("netns: look up %s in %s: %w", s.ifName, s.nsPath, err)
	}
	if host != nil && (peer == nil || peer.Type() != "veth") {
		// Half of an earlier attempt: start over.
		if err := m.h.LinkDel(host); err != nil {
			return fmt.Errorf("netns: delete stale %s: %w", s.hostName, err)
		}
		host = nil
	}
	if host == nil {
		if peer != nil {
			return fmt.Errorf("netns: %s already has an interface %s", s.nsPath, s.ifName)
		}
		attrs := netlink.NewLinkAttrs()
		attrs.Name = s.hostName
		attrs.MTU = mtu
		veth := &netlink.Veth{LinkAttrs: attrs, PeerName: s.ifName, PeerNamespace: netlink.NsFd(kns), PeerMTU: uint32(mtu)}
		if err := m.h.LinkAdd(veth); err != nil {
			return fmt.Errorf("netns: create veth %s/%s in %s: %w", s.hostName, s.ifName, s.nsPath, err)
		}
		if host, err = m.h.LinkByName(s.hostName); err != nil {
			return fmt.Errorf("netns: look up %s: %w", s.hostName, err)
		}
		m.log.Debug("created veth", "link", s.hostName, "netns", s.nsPath, "ifname", s.ifName, "bridge", s.br.Attrs().Name)
	}
	m.noIPv6(host)
	if err := m.h.LinkSetAlias(host, s.alias); err != nil {
		return fmt.Errorf("netns: set alias of %s: %w", s.hostName, err)
	}
	if host.Attrs().MasterIndex != s.br.Attrs().Index {
		if err := m.h.LinkSetMaster(host, s.br); err != nil {
			return fmt.Errorf("netns: enslave %s to %s: %w", s.hostName, s.br.Attrs().Name, err)
		}
	}
	if s.isolated {
		if err := m.h.LinkSetIsolated(host, true); err != nil {
			return fmt.Errorf("netns: isolate bridge port %s: %w", s.hostName, err)
		}
	}
	if err := m.h.LinkSetUp(host); err != nil {
		return fmt.Errorf("netns: set %s up: %w", s.hostName, err)
	}
	if peer, err = kh.LinkByName(s.ifName); err != nil {
		return fmt.Errorf("netns: look up %s in %s: %w", s.ifName, s.nsPath, err)
	}
	ip := s.addr.Addr().Unmap()
	a := &netlink.Addr{IPNet: &net.IPNet{IP: net.IP(ip.AsSlice()), Mask: net.CIDRMask(s.addr.Bits(), ip.BitLen())}}
	if err := kh.AddrReplace(peer, a); err != nil {
		return fmt.Errorf("netns: set address %s on %s in %s: %w", s.addr, s.ifName, s.nsPath, err)
	}
	if err := kh.LinkSetUp(peer); err != nil {
		return fmt.Errorf("netns: set %s up in %s: %w", s.ifName, s.nsPath, err)
	}
	if lo, err := kh.LinkByName("lo"); err == nil {
		_ = kh.LinkSetUp(lo)
	}
	if s.gateway.IsValid() {
		route := &netlink.Route{LinkIndex: peer.Attrs().Index, Gw: net.IP(s.gateway.AsSlice()),
			Dst: &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}}
		if err := kh.RouteReplace(route); err != nil {
			return fmt.Errorf("netns: default route via %v in %s: %w", s.gateway, s.nsPath, err)
		}
	}
	// The kernel turns carrier changes into an operational state, an active
	// queue and a forwarding bridge port asynchronously, often a second
	// later; frames sent before are dropped. Wait, so that the kernel's
	// network works when the attach returns.
	if !waitOperUp(m.h, s.hostName) || !waitOperUp(kh, s.ifName) {
		m.log.Debug("veth not operationally up yet", "link", s.hostName, "netns", s.nsPath)
	}
	return nil
}

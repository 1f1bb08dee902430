package netns

import (
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
)

// Egress is the kernels' way out: one bridge per host (Bridge, holding the
// subnet's first address as the kernels' gateway), a veth per kernel on it
// with an isolated bridge port, and nftables rules in the table EgressTable
// that masquerade the subnet's traffic leaving through any other link and
// keep kernels away from the host, from each other and from the cluster's
// control and VXLAN ports (see egressRules).
type Egress struct {
	// Bridge names the bridge; DefaultEgressBridge when empty.
	Bridge string
	// Table names the nftables table (family inet); EgressTable when empty.
	Table string
	// Subnet is the kernels' subnet (IPv4); DefaultEgressSubnet when not
	// valid. Its first address is the bridge's, the kernels' gateway.
	Subnet netip.Prefix
	// DenyPorts are destination ports that kernels may not reach on other
	// hosts: the cluster's control ports (server HTTP, RPC and gossip,
	// agent RPC and gossip) and the VXLAN port. Everything on this host is
	// out of reach anyway.
	DenyPorts []Port
	// Allow, when not empty, are the only IPv4 networks kernels may reach
	// (after DenyPorts); empty allows every address.
	Allow []netip.Prefix
}

// Port is a transport protocol ("tcp" or "udp") and port.
type Port struct {
	Proto string
	Port  uint16
}

func (p Port) String() string { return fmt.Sprintf("%s/%d", p.Proto, p.Port) }

// Defaults of Egress.
const (
	DefaultEgressBridge = "corral0"
	// EgressTable is the default nftables table (family inet) of the
	// egress rules.
	EgressTable = "corral"
	// EgressVethPrefix starts the host end of a kernel's egress veth.
	EgressVethPrefix = "cre"
)

// DefaultEgressSubnet is the kernels' subnet unless configured.
var DefaultEgressSubnet = netip.MustParsePrefix("10.88.0.0/16")

// withDefaults fills in the defaults and checks e.
func (e Egress) withDefaults() (Egress, error) {
	if e.Bridge == "" {
		e.Bridge = DefaultEgressBridge
	}
	if e.Table == "" {
		e.Table = EgressTable
	}
	if len(e.Bridge) > 15 || strings.ContainsAny(e.Bridge, "/ \x00") {
		return e, fmt.Errorf("netns: invalid egress bridge name %q", e.Bridge)
	}
	if !e.Subnet.IsValid() {
		e.Subnet = DefaultEgressSubnet
	}
	e.Subnet = e.Subnet.Masked()
	if !e.Subnet.Addr().Is4() || e.Subnet.Bits() > 30 {
		return e, fmt.Errorf("netns: egress subnet %v must be IPv4 and /30 or larger", e.Subnet)
	}
	for i, p := range e.Allow {
		if !p.IsValid() || !p.Addr().Is4() {
			return e, fmt.Errorf("netns: allowed egress network %v is not an IPv4 prefix", p)
		}
		e.Allow[i] = p.Masked()
	}
	for _, p := range e.DenyPorts {
		if (p.Proto != "tcp" && p.Proto != "udp") || p.Port == 0 {
			return e, fmt.Errorf("netns: invalid deny port %v (want tcp/N or udp/N)", p)
		}
	}
	return e, nil
}

// Gateway is the bridge's address: the subnet's first.
func (e Egress) Gateway() netip.Addr {
	e, _ = e.withDefaults()
	return e.Subnet.Addr().Next()
}

// EgressVethName is the host end of the egress veth that AttachEgress
// creates for the kernel namespace nsPath and its interface ifName.
func EgressVethName(nsPath, ifName string) string {
	h := fnv.New64a()
	fmt.Fprintf(h, "egress\x00%s\x00%s", nsPath, ifName)
	return fmt.Sprintf("%s%012x", EgressVethPrefix, h.Sum64()&(1<<48-1))
}

// EnsureEgress creates (or repairs) the egress bridge with the gateway
// address, turns on IPv4 forwarding and (re)writes the nftables table.
func (m *Manager) EnsureEgress(e Egress) error {
	e, err := e.withDefaults()
	if err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	br, err := m.ensureBridge(e.Bridge, 1500)
	if err != nil {
		return err
	}
	// A bridge takes the lowest MAC address of its ports unless one was
	// set: pin it, so that kernels' ARP entries for the gateway stay
	// right when a port comes or goes.
	if err := m.h.LinkSetHardwareAddr(br, br.Attrs().HardwareAddr); err != nil {
		return fmt.Errorf("netns: pin the MAC address of %s: %w", e.Bridge, err)
	}
	gw := &netlink.Addr{IPNet: &net.IPNet{IP: net.IP(e.Gateway().AsSlice()), Mask: net.CIDRMask(e.Subnet.Bits(), 32)}}
	if err := m.h.AddrReplace(br, gw); err != nil {
		return fmt.Errorf("netns: set address %v on %s: %w", gw, e.Bridge, err)
	}
	if err := m.inHost(func() error {
		return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1\n"), 0o644)
	}); err != nil {
		return fmt.Errorf("netns: enable IPv4 forwarding: %w", err)
	}
	return m.writeEgressRules(e)
}

// inHost runs fn on a thread in the host namespace (for /proc/sys/net).
func (m *Manager) inHost(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := vnetns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		if err := vnetns.Set(m.hostNS); err != nil {
			errc <- err
			return
		}
		ferr := fn()
		if err := vnetns.Set(orig); err == nil {
			runtime.UnlockOSThread()
		} // else: the thread dies with the goroutine
		errc <- ferr
	}()
	return <-errc
}

// DeleteEgress removes the egress bridge and the nftables table. Deleting
// what is not there is not an error.
func (m *Manager) DeleteEgress(e Egress) error {
	e, err := e.withDefaults()
	if err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var errs []error
	if br, err := m.linkByName(e.Bridge); err != nil {
		errs = append(errs, err)
	} else if br != nil && br.Type() == "bridge" {
		if err := m.h.LinkDel(br); err != nil && !notFound(err) {
			errs = append(errs, fmt.Errorf("netns: delete %s: %w", e.Bridge, err))
		}
	}
	if err := m.deleteEgressRules(e.Table); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// AttachEgress connects the kernel namespace at nsPath to the egress
// bridge: a veth whose host end, EgressVethName(nsPath, ifName), is an
// isolated port of the bridge, and whose other end is ifName in the kernel
// namespace with addr (in the egress subnet) and a default route via the
// gateway. EnsureEgress must have run. Attaching again is harmless.
func (m *Manager) AttachEgress(e Egress, nsPath, ifName string, addr netip.Addr) error {
	e, err := e.withDefaults()
	if err != nil {
		return err
	}
	if len(ifName) == 0 || len(ifName) > 15 || strings.ContainsAny(ifName, "/ \x00") {
		return fmt.Errorf("netns: invalid interface name %q", ifName)
	}
	if !e.Subnet.Contains(addr) || addr == e.Gateway() || addr == e.Subnet.Addr() {
		return fmt.Errorf("netns: kernel address %v is not a host address of %v other than the gateway", addr, e.Subnet)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	br, err := m.linkByName(e.Bridge)
	if err != nil {
		return fmt.Errorf("netns: look up %s: %w", e.Bridge, err)
	}
	if br == nil {
		return fmt.Errorf("netns: no egress bridge %s (call EnsureEgress first)", e.Bridge)
	}
	return m.attachVeth(vethSpec{br: br, nsPath: nsPath, ifName: ifName, hostName: EgressVethName(nsPath, ifName),
		alias: egressAlias + e.Bridge, addr: netip.PrefixFrom(addr, e.Subnet.Bits()), isolated: true, gateway: e.Gateway()})
}

// DetachEgress removes the veth that AttachEgress made for the same
// arguments. Detaching what is not attached is not an error.
func (m *Manager) DetachEgress(nsPath, ifName string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	name := EgressVethName(nsPath, ifName)
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
	return nil
}

// EgressAddr returns the IPv4 address of ifName in the namespace at nsPath
// (an attached kernel's egress address, read back after an agent restart).
func EgressAddr(nsPath, ifName string) (netip.Addr, error) {
	kns, err := vnetns.GetFromPath(nsPath)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("netns: open %s: %w", nsPath, err)
	}
	defer kns.Close()
	kh, err := netlink.NewHandleAt(kns)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("netns: netlink handle in %s: %w", nsPath, err)
	}
	defer kh.Close()
	l, err := kh.LinkByName(ifName)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("netns: %s in %s: %w", ifName, nsPath, err)
	}
	as, err := kh.AddrList(l, netlink.FAMILY_V4)
	if err != nil || len(as) == 0 {
		return netip.Addr{}, fmt.Errorf("netns: no IPv4 address on %s in %s (%v)", ifName, nsPath, err)
	}
	a, _ := netip.AddrFromSlice(as[0].IP.To4())
	return a, nil
}

// egressAlias, followed by the bridge's name, marks a host veth end as
// AttachEgress's (agents sharing a network namespace have bridges of their
// own).
const egressAlias = "corral-egress="

// ReconcileEgress removes the egress veths of e's bridge whose names are
// not in keep (EgressVethName of the kernels still running), and, when
// keep is empty, the bridge and the rules too.
func (m *Manager) ReconcileEgress(e Egress, keep map[string]bool) error {
	e, err := e.withDefaults()
	if err != nil {
		return err
	}
	m.mu.Lock()
	ls, err := linkList(m.h)
	if err != nil {
		m.mu.Unlock()
		return fmt.Errorf("netns: list links: %w", err)
	}
	var errs []error
	for _, l := range ls {
		n := l.Attrs().Name
		if l.Type() == "veth" && strings.HasPrefix(n, EgressVethPrefix) && len(n) == 15 && !keep[n] && l.Attrs().Alias == egressAlias+e.Bridge {
			if err := m.h.LinkDel(l); err != nil && !notFound(err) {
				errs = append(errs, fmt.Errorf("netns: delete %s: %w", n, err))
			}
		}
	}
	m.mu.Unlock()
	if len(keep) == 0 {
		if err := m.DeleteEgress(e); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

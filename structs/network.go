package structs

import (
	"fmt"
	"net/netip"
)

// Overlay address pool defaults: every cluster session gets its own VXLAN
// VNI and /24 out of these, allocated in the raft apply that places it.
const (
	// DefaultOverlayPool is the address space the session subnets come from.
	DefaultOverlayPool = "10.224.0.0/12"
	// DefaultOverlayVNIBase is the first VNI; slot i of the pool uses VNI
	// base+i and the pool's i-th /24.
	DefaultOverlayVNIBase = 100000
)

// Network is the overlay of one cluster session: its VXLAN VNI and subnet.
// It is held from placement until the session ends.
type Network struct {
	// Slot is the allocation's position in the pool (the key of the
	// networks table); VNI and Subnet follow from it.
	Slot      int    `json:"slot"`
	VNI       uint32 `json:"vni"`
	Subnet    string `json:"subnet"`
	SessionID string `json:"session_id"`
}

// KernelNetwork is what an agent needs to wire one kernel into its
// session's overlay.
type KernelNetwork struct {
	VNI uint32 `json:"vni"`
	// Address is the kernel's address with the subnet's prefix length.
	Address string `json:"address"`
	// Hosts maps every kernel's hostname of the session to its address.
	Hosts map[string]string `json:"hosts"`
	// Underlay is the underlay IP of the kernel's own agent; Peers are those
	// of the session's other agents (the VXLAN flood list).
	Underlay string   `json:"underlay"`
	Peers    []string `json:"peers,omitempty"`
}

// Copy returns a deep copy of n (nil for nil).
func (n *KernelNetwork) Copy() *KernelNetwork {
	if n == nil {
		return nil
	}
	c := *n
	c.Hosts = make(map[string]string, len(n.Hosts))
	for k, v := range n.Hosts {
		c.Hosts[k] = v
	}
	c.Peers = append([]string(nil), n.Peers...)
	return &c
}

// OverlaySlot returns the VNI and /24 of pool slot i, or an error when the
// pool has no such slot.
func OverlaySlot(pool string, vniBase uint32, i int) (uint32, netip.Prefix, error) {
	p, err := netip.ParsePrefix(pool)
	if err != nil || !p.Addr().Is4() || p.Bits() > 24 {
		return 0, netip.Prefix{}, fmt.Errorf("overlay pool %q: want an IPv4 prefix of /24 or larger", pool)
	}
	if i < 0 || i >= OverlaySlots(p) {
		return 0, netip.Prefix{}, fmt.Errorf("overlay pool %s has no slot %d", pool, i)
	}
	a := p.Masked().Addr().As4()
	base := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8
	n := base + uint32(i)<<8
	sub := netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), 0}), 24)
	return vniBase + uint32(i), sub, nil
}

// OverlaySlots is the number of /24 subnets in the pool.
func OverlaySlots(p netip.Prefix) int { return 1 << (24 - p.Bits()) }

// KernelAddress is the i-th kernel's address in a session subnet (main1
// is .2, sub1 .3, ...; .1 is left for a gateway).
func KernelAddress(subnet netip.Prefix, i int) netip.Prefix {
	a := subnet.Masked().Addr().As4()
	a[3] = byte(2 + i)
	return netip.PrefixFrom(netip.AddrFrom4(a), subnet.Bits())
}

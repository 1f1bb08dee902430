package state

import (
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/corral-dev/corral/structs"
)

// networkCursor is the index-table key of the next overlay slot to try:
// slots are handed out next-fit, so a freed one is reused as late as
// possible.
const networkCursor = "network-cursor"

// Networks lists the overlay networks in use.
func (sn *Snapshot) Networks() ([]*structs.Network, error) {
	return listAll[*structs.Network](sn.txn, tableNetworks)
}

// allocNetwork takes the next free overlay slot (VNI and subnet) for a
// session. It never hands out a slot in use.
func (w *writer) allocNetwork(sessionID string) (*structs.Network, error) {
	pool := netip.MustParsePrefix(structs.DefaultOverlayPool)
	n := structs.OverlaySlots(pool)
	start := 0
	if raw, err := w.txn.First(tableIndex, "id", networkCursor); err == nil && raw != nil {
		start = int(raw.(*indexEntry).Value) % n
	}
	for i := range n {
		slot := (start + i) % n
		if raw, err := w.txn.First(tableNetworks, "id", slot); err != nil {
			return nil, err
		} else if raw != nil {
			continue
		}
		vni, sub, err := structs.OverlaySlot(structs.DefaultOverlayPool, structs.DefaultOverlayVNIBase, slot)
		if err != nil {
			return nil, err
		}
		nw := &structs.Network{Slot: slot, VNI: vni, Subnet: sub.String(), SessionID: sessionID}
		if err := w.put(tableNetworks, nw); err != nil {
			return nil, err
		}
		if err := w.txn.Insert(tableIndex, &indexEntry{Key: networkCursor, Value: uint64(slot + 1)}); err != nil {
			return nil, err
		}
		return nw, nil
	}
	return nil, fmt.Errorf("overlay pool %s is exhausted: all %d session networks are in use", pool, n)
}

// freeNetwork returns a session's overlay slot to the pool.
func (w *writer) freeNetwork(nw *structs.Network) error {
	if nw == nil {
		return nil
	}
	raw, err := w.txn.First(tableNetworks, "id", nw.Slot)
	if err != nil || raw == nil || raw.(*structs.Network).SessionID != nw.SessionID {
		return err
	}
	w.dirty[tableNetworks] = true
	return w.txn.Delete(tableNetworks, raw)
}

// kernelNetworks gives each kernel of a placed cluster session its address,
// the session's hosts, and the underlay addresses of its agent and of the
// session's other agents.
func kernelNetworks(nw *structs.Network, kernels []*structs.Kernel, agentOf map[string]*structs.Agent) (map[string]*structs.KernelNetwork, error) {
	sub, err := netip.ParsePrefix(nw.Subnet)
	if err != nil {
		return nil, err
	}
	hosts := map[string]string{}
	addrs := map[string]netip.Prefix{}
	for i, k := range kernels {
		a := structs.KernelAddress(sub, i)
		addrs[k.ID] = a
		hosts[k.Hostname] = a.Addr().String()
	}
	underlay := func(a *structs.Agent) string {
		host, _, err := net.SplitHostPort(a.SerfAddr)
		if err != nil {
			return a.SerfAddr
		}
		return host
	}
	out := map[string]*structs.KernelNetwork{}
	for _, k := range kernels {
		own := underlay(agentOf[k.ID])
		var peers []string
		for _, other := range kernels {
			if ip := underlay(agentOf[other.ID]); ip != own && !slices.Contains(peers, ip) {
				peers = append(peers, ip)
			}
		}
		slices.Sort(peers)
		kn := &structs.KernelNetwork{VNI: nw.VNI, Address: addrs[k.ID].String(), Hosts: map[string]string{}, Underlay: own, Peers: peers}
		for h, ip := range hosts {
			kn.Hosts[h] = ip
		}
		out[k.ID] = kn
	}
	return out, nil
}

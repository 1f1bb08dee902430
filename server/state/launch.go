package state

import (
	"fmt"
	"net"
	"slices"

	"github.com/corral-dev/corral/structs"
)

// Ports of a cluster session's job (ClusterLaunch.SSHPort, MasterPort,
// ClusterPeer.SSHPort).
//
// Kernels on the session's overlay have addresses of their own, so every
// session uses the same ports: ssh on OverlaySSHPort (2222), the
// launcher's rendezvous (MASTER_PORT) on OverlayMasterPort (29500).
//
// Host-networked kernels (driver exec, which is never wired to the
// overlay, or options.network "host") share their agent's ports with the
// other sessions there:
//
//	master: HostMasterPortBase + slot = 24576-28671, where slot is the
//	        session's overlay pool slot, which every cluster session holds,
//	        host-networked or not, from placement until it ends (the pool
//	        has 4096 slots): two live sessions never share it.
//	ssh:    20000-24575, one port per kernel and agent: HostSSHPortBase +
//	        slot when free on the kernel's agent, else the next port free
//	        there (kernels of one session sharing an agent, and so an
//	        address, each need their own). Chosen in the raft apply from
//	        the live kernels on the agent, so no two live kernels on one
//	        agent share one.
//
// Both ranges are below Linux's default ephemeral port range
// (32768-60999): an outgoing connection on the node never holds them.
// Keep them free of other services on agents that run host-networked
// cluster sessions.
const (
	OverlaySSHPort     = 2222
	OverlayMasterPort  = 29500
	HostSSHPortBase    = 20000
	HostMasterPortBase = 24576
)

// hostNetworked reports whether a kernel uses its agent's network rather
// than the session's overlay.
func hostNetworked(k *structs.Kernel) bool {
	return k.Driver == "exec" || (k.Options != nil && k.Options.Network == structs.NetworkHost)
}

// nodeRanks gives each kernel of a session its rank in the job: its
// position in structs.CompareKernels order (main1 0, subN N, then the
// kernels of extra roles, ps1 N+1...).
func nodeRanks(kernels []*structs.Kernel) map[string]int {
	sorted := slices.Clone(kernels)
	slices.SortFunc(sorted, structs.CompareKernels)
	out := make(map[string]int, len(sorted))
	for i, k := range sorted {
		out[k.ID] = i
	}
	return out
}

// launchSlots is how many ranks a launcher may start on a kernel: its
// GPUs, else its whole cores, at least 1.
func launchSlots(k *structs.Kernel) int {
	if g := k.Resources[structs.SlotCUDADevice]; g >= structs.Whole(1) {
		return int(g / structs.QuantityScale)
	}
	return max(int(k.Resources[structs.SlotCPU]/structs.QuantityScale), 1)
}

// underlayIP is an agent's underlay address (the host of its serf address).
func underlayIP(a *structs.Agent) string {
	host, _, err := net.SplitHostPort(a.SerfAddr)
	if err != nil {
		return a.SerfAddr
	}
	return host
}

// clusterLaunches computes every kernel's ClusterLaunch for a cluster
// session being placed (kernels main1 first, nets their overlay wiring,
// agentOf each kernel's agent). What the HTTP handler put into a kernel's
// Launch at create time (the session's ssh keys) is kept; everything else
// is computed here, so that a re-queued session is launched afresh where
// it lands. It also points each kernel's hosts at its peers' launch
// addresses (underlay addresses for host-networked kernels).
//
// usedPorts returns the ssh ports that live host-networked kernels hold on
// an agent; the ports chosen here are added to its answer.
func clusterLaunches(sess *structs.Session, nw *structs.Network, kernels []*structs.Kernel, nets map[string]*structs.KernelNetwork,
	agentOf map[string]*structs.Agent, usedPorts func(agentID string) (map[int]bool, error)) (map[string]*structs.ClusterLaunch, error) {
	anyHost := false
	for _, k := range kernels {
		anyHost = anyHost || hostNetworked(k)
	}
	masterPort := OverlayMasterPort
	if anyHost {
		if nw.Slot < 0 || HostMasterPortBase+nw.Slot >= 32768 {
			return nil, fmt.Errorf("overlay slot %d has no host master port", nw.Slot)
		}
		masterPort = HostMasterPortBase + nw.Slot
	}
	ranks := nodeRanks(kernels)
	used := map[string]map[int]bool{} // agent ID → ssh ports taken
	peers := make([]structs.ClusterPeer, 0, len(kernels))
	hosts := map[string]string{}
	for _, k := range kernels {
		addr, sshPort := "", OverlaySSHPort
		if hostNetworked(k) {
			a := agentOf[k.ID]
			if a == nil {
				return nil, fmt.Errorf("kernel %s has no agent", k.Hostname)
			}
			addr = underlayIP(a)
			if used[a.ID] == nil {
				u, err := usedPorts(a.ID)
				if err != nil {
					return nil, err
				}
				used[a.ID] = u
			}
			p, err := freeSSHPort(used[a.ID], nw.Slot)
			if err != nil {
				return nil, fmt.Errorf("kernel %s on agent %s: %v", k.Hostname, a.Name, err)
			}
			used[a.ID][p] = true
			sshPort = p
		} else {
			n := nets[k.ID]
			if n == nil {
				return nil, fmt.Errorf("kernel %s has no overlay address", k.Hostname)
			}
			ip, _, err := net.ParseCIDR(n.Address)
			if err != nil {
				return nil, fmt.Errorf("kernel %s: overlay address %q: %v", k.Hostname, n.Address, err)
			}
			addr = ip.String()
		}
		peers = append(peers, structs.ClusterPeer{Hostname: k.Hostname, Addr: addr, Rank: ranks[k.ID], Slots: launchSlots(k), SSHPort: sshPort})
		hosts[k.Hostname] = addr
	}
	// Rank order, main1 first (the kernels come sorted, but the contract
	// is the ranks').
	for i := 1; i < len(peers); i++ {
		for j := i; j > 0 && peers[j].Rank < peers[j-1].Rank; j-- {
			peers[j], peers[j-1] = peers[j-1], peers[j]
		}
	}
	masterAddr := ""
	for _, p := range peers {
		if p.Rank == 0 {
			masterAddr = p.Addr
		}
	}
	out := map[string]*structs.ClusterLaunch{}
	for _, k := range kernels {
		l := &structs.ClusterLaunch{}
		if k.Launch != nil {
			l.SSHPrivateKey = k.Launch.SSHPrivateKey
			l.AuthorizedKeys = append([]string(nil), k.Launch.AuthorizedKeys...)
		}
		l.NodeRank, l.NumNodes = ranks[k.ID], len(kernels)
		l.MasterAddr, l.MasterPort = masterAddr, masterPort
		for _, p := range peers {
			if p.Hostname == k.Hostname {
				l.SSHPort = p.SSHPort
			}
		}
		l.Peers = append([]structs.ClusterPeer(nil), peers...)
		l.Barrier = sess.StartOrder == structs.StartBarrier
		// Whether the kernel only serves was decided at create (a role
		// with a command of its own runs it under run_on main too).
		l.Serve = sess.RunOn == structs.RunOnMain && !(k.Role == "main" && k.Idx == 1)
		if k.Launch != nil {
			l.Serve = k.Launch.Serve
		}
		l.HostNetwork = hostNetworked(k)
		out[k.ID] = l
		if n := nets[k.ID]; n != nil {
			for h, a := range hosts {
				n.Hosts[h] = a
			}
		}
	}
	return out, nil
}

// freeSSHPort picks a host ssh port not in used: HostSSHPortBase+slot
// when free, else the next free one in [HostSSHPortBase,
// HostMasterPortBase), wrapping around.
func freeSSHPort(used map[int]bool, slot int) (int, error) {
	n := HostMasterPortBase - HostSSHPortBase
	for i := range n {
		p := HostSSHPortBase + (max(slot, 0)+i)%n
		if !used[p] {
			return p, nil
		}
	}
	return 0, fmt.Errorf("all %d host ssh ports (%d-%d) are taken on the agent", n, HostSSHPortBase, HostMasterPortBase-1)
}

// hostSSHPorts returns the ssh ports held on an agent by its live
// host-networked cluster kernels.
func (sn *Snapshot) hostSSHPorts(agentID string) (map[int]bool, error) {
	ks, err := sn.KernelsByAgent(nil, agentID)
	if err != nil {
		return nil, err
	}
	out := map[int]bool{}
	for _, k := range ks {
		if k.HoldsSlots() && k.Launch != nil && k.Launch.HostNetwork {
			out[k.Launch.SSHPort] = true
		}
	}
	return out, nil
}

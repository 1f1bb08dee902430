package scheduler

import "github.com/corral-dev/corral/structs"

// Agent selectors. A resource group's AgentSelector picks the agent of each
// kernel among the ALIVE agents of the group that have the kernel's driver
// and room for every slot it asks for (counting what the pass placed). A
// single-node session of several kernels is picked for as one kernel asking
// for the sum of their requests, among the agents with all of their drivers,
// and goes whole on the agent chosen:
//
//   - concentrated (bin-pack): the agent with the fewest unutilized slots
//     (slots the agent has room in that the kernel does not ask for, as in
//     Backend.AI: a CPU-only kernel avoids agents with free GPUs), then the
//     least free room, compared slot by slot in the group's resource
//     priority order (ResourcePriority, default
//     structs.DefaultResourcePriority: cuda.device, cpu, mem; the slots it
//     does not name come after, by name), then the lowest agent ID.
//   - dispersed (spread, the default): the fewest unutilized slots, then the
//     most free room in the same order, then the lowest agent ID.
//   - roundrobin: the first agent with room whose ID sorts after the group's
//     cursor (Input.RoundRobin), wrapping around to the lowest ID; the
//     cursor moves to the chosen agent, kernel by kernel (once for a
//     single-node session; a gang that fails leaves it where it was).
//     Result.RoundRobin carries it to the next pass.
//
// Comparing free room before or after the kernel is placed gives the same
// order, since every candidate loses the same amounts. The built-in
// selectors find their agent in ordered indices (index.go) without testing
// every agent; an AgentSelector given in Options sees every candidate instead.

// Candidate is an agent that can take the kernel being placed: ALIVE, in the
// session's resource group, with the kernel's driver and room for all of its
// slots in this pass, and the GPU devices it asks for (for a single-node
// session: with every driver of its kernels, room for their sum and
// disjoint devices for each).
type Candidate struct {
	// Agent is the agent as the snapshot holds it; never modify it.
	Agent *structs.Agent
	view  *agentView
}

// Free returns the agent's free amount of a slot in this pass (capacity
// minus occupied, counting what the pass placed so far), before the kernel
// being placed is counted.
func (c Candidate) Free(slot string) structs.Quantity {
	i, ok := c.view.slots.index[slot]
	if !ok {
		return 0
	}
	return c.view.free(i)
}

// FreeSlots returns all of the agent's free slots in this pass, as Free does.
func (c Candidate) FreeSlots() structs.Slots {
	out := make(structs.Slots, len(c.view.slots.names))
	for i, name := range c.view.slots.names {
		if f := c.view.free(i); f != 0 {
			out[name] = f
		}
	}
	return out
}

// AgentSelector chooses the agent for one kernel among candidates, which
// are never empty and are sorted by agent ID. It returns an index into
// candidates, or -1 to place the kernel nowhere in this pass. A selector must
// be deterministic, must not modify its arguments and must not keep the
// candidates after it returns (their free amounts change as the pass goes on).
//
// It is the hook for selectors the built-in ones do not cover (see Options).
type AgentSelector func(k *structs.Kernel, candidates []Candidate) int

// MostFreeCPU is the v1 agent selector (v2 groups default to dispersed): the candidate with the most free cpu
// once the kernel is placed, ties broken by the lowest agent ID. It spreads
// kernels over agents.
func MostFreeCPU(k *structs.Kernel, candidates []Candidate) int {
	best := -1
	var bestFree structs.Quantity
	need := k.Resources[structs.SlotCPU]
	for i, c := range candidates {
		f := c.view.free(c.view.slots.cpu) - need
		if best < 0 || f > bestFree || (f == bestFree && c.Agent.ID < candidates[best].Agent.ID) {
			best, bestFree = i, f
		}
	}
	return best
}

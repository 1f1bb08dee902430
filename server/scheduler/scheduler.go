// Package scheduler computes placement plans: which agent runs each kernel
// of the pending sessions. It is pure: it reads a snapshot of the state and
// returns a plan, with no I/O, goroutines or clock, so the leader can run it
// on any consistent view and the FSM re-checks the plan when it applies it.
package scheduler

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	"github.com/corral-dev/corral/structs"
)

// PendingSession is a PENDING session with its kernels, as the snapshot holds them.
type PendingSession struct {
	Session *structs.Session
	Kernels []*structs.Kernel
}

// Input is one scheduling pass's view of the state. The scheduler never
// modifies it or anything it points to.
type Input struct {
	// Pending are the sessions to place, in any order: the scheduler sorts
	// a copy by Session.CreateIndex, then Session.ID (FIFO).
	Pending []*PendingSession
	// Agents are all known agents, in any status.
	Agents []*structs.Agent
	// Index is the state index of the snapshot.
	Index uint64
}

// Schedule computes a plan for one pass with the default agent selector
// (MostFreeCPU); see ScheduleWith.
func Schedule(in *Input) *structs.Plan { return ScheduleWith(in, MostFreeCPU) }

// ScheduleWith computes a plan for one pass. Sessions are taken in FIFO order
// within their resource group ("" is the default group); each session's
// kernels are placed all or none (gang), on ALIVE agents of the session's
// group that have the kernel's driver and enough free slots, counting what
// the pass already placed. sel picks among the agents that fit (nil means
// MostFreeCPU).
//
// A session that cannot be placed goes into Plan.Unplaced with the reason,
// and does not block the sessions behind it in this v1: it is skipped for
// this pass, and later, smaller sessions may take the room it waits for.
// (Backend.AI's num_retries_to_skip head-of-line blocking is a later step.)
//
// A session's kernels are placed one by one in role and index order (main1,
// sub1, sub2...), each on the agent sel picks; the pass does not search
// other assignments, so a gang that would fit only if a later, larger kernel
// went first stays unplaced in this v1.
//
// Placements come in FIFO order, kernels in role and index order. The same
// input always gives the same plan, whatever the order of its slices.
func ScheduleWith(in *Input, sel AgentSelector) *structs.Plan {
	plan := &structs.Plan{Placements: []structs.SessionPlacement{}, Unplaced: map[string]string{}}
	if in == nil {
		return plan
	}
	plan.SnapshotIndex = in.Index
	if sel == nil {
		sel = MostFreeCPU
	}
	pending := fifo(in.Pending)
	slots := newSlotTable(in.Agents, pending)
	p := &pass{slots: slots, groups: buildGroups(in.Agents, slots), sel: sel}
	for _, ps := range pending {
		sp, reason := p.placeSession(ps)
		if reason != "" {
			plan.Unplaced[ps.Session.ID] = reason
			continue
		}
		plan.Placements = append(plan.Placements, sp)
	}
	return plan
}

// fifo returns the usable pending sessions sorted by create index then ID,
// each session once.
func fifo(in []*PendingSession) []*PendingSession {
	out := make([]*PendingSession, 0, len(in))
	for _, ps := range in {
		if ps != nil && ps.Session != nil {
			out = append(out, ps)
		}
	}
	slices.SortStableFunc(out, func(a, b *PendingSession) int {
		return cmp.Or(cmp.Compare(a.Session.CreateIndex, b.Session.CreateIndex), strings.Compare(a.Session.ID, b.Session.ID))
	})
	seen := make(map[string]bool, len(out))
	return slices.DeleteFunc(out, func(ps *PendingSession) bool {
		dup := seen[ps.Session.ID]
		seen[ps.Session.ID] = true
		return dup
	})
}

// slotTable numbers the slot names of one pass, so that per-agent amounts
// live in dense vectors rather than maps on the hot path.
type slotTable struct {
	index map[string]int
	names []string // sorted
	cpu   int      // index of structs.SlotCPU, always present
}

func newSlotTable(agents []*structs.Agent, pending []*PendingSession) *slotTable {
	set := map[string]bool{structs.SlotCPU: true}
	for _, a := range agents {
		if a == nil {
			continue
		}
		for name := range a.Capacity {
			set[name] = true
		}
		for name := range a.Occupied {
			set[name] = true
		}
	}
	for _, ps := range pending {
		for _, k := range ps.Kernels {
			if k != nil {
				for name := range k.Resources {
					set[name] = true
				}
			}
		}
	}
	t := &slotTable{index: make(map[string]int, len(set))}
	for name := range set {
		t.names = append(t.names, name)
	}
	slices.Sort(t.names)
	for i, name := range t.names {
		t.index[name] = i
	}
	t.cpu = t.index[structs.SlotCPU]
	return t
}

// request is what a kernel asks for: its positive slots, in name order.
type request struct {
	idx []int
	amt []structs.Quantity
}

func (t *slotTable) request(k *structs.Kernel) request {
	var r request
	for _, name := range k.Resources.Names() {
		if q := k.Resources[name]; q > 0 {
			r.idx = append(r.idx, t.index[name])
			r.amt = append(r.amt, q)
		}
	}
	return r
}

// agentView is an ALIVE agent during one pass.
type agentView struct {
	agent *structs.Agent
	slots *slotTable
	// freeVec is capacity minus occupied per slot, counting what the pass
	// placed so far: the pass's working copy, never the agent's own maps.
	freeVec []structs.Quantity
}

func (v *agentView) free(i int) structs.Quantity { return v.freeVec[i] }

// fits is structs.Fits over the dense vector.
func (v *agentView) fits(r request) bool {
	for j, i := range r.idx {
		if v.freeVec[i] < r.amt[j] {
			return false
		}
	}
	return true
}

// take counts r as placed on the agent (sign 1) or gives it back (sign -1).
func (v *agentView) take(r request, sign structs.Quantity) {
	for j, i := range r.idx {
		v.freeVec[i] -= sign * r.amt[j]
	}
}

// groupView is one resource group's agents.
type groupView struct {
	name     string
	agents   []*agentView            // ALIVE, sorted by ID
	byDriver map[string][]*agentView // driver -> ALIVE agents with it, sorted by ID
	notAlive int
}

func buildGroups(agents []*structs.Agent, slots *slotTable) map[string]*groupView {
	sorted := make([]*structs.Agent, 0, len(agents))
	for _, a := range agents {
		if a != nil {
			sorted = append(sorted, a)
		}
	}
	slices.SortStableFunc(sorted, func(a, b *structs.Agent) int { return strings.Compare(a.ID, b.ID) })
	sorted = slices.CompactFunc(sorted, func(a, b *structs.Agent) bool { return a.ID == b.ID })
	// All views and free vectors live in two arrays, so that scanning a
	// group's agents walks contiguous memory.
	n := len(slots.names)
	views := make([]agentView, 0, len(sorted))
	backing := make([]structs.Quantity, len(sorted)*n)
	groups := map[string]*groupView{}
	for _, a := range sorted {
		name := groupOf(a.ResourceGroup)
		g := groups[name]
		if g == nil {
			g = &groupView{name: name, byDriver: map[string][]*agentView{}}
			groups[name] = g
		}
		if a.Status != structs.AgentAlive {
			g.notAlive++
			continue
		}
		free := backing[len(views)*n : (len(views)+1)*n : (len(views)+1)*n]
		for name, q := range a.Capacity {
			free[slots.index[name]] += q
		}
		for name, q := range a.Occupied {
			free[slots.index[name]] -= q
		}
		views = append(views, agentView{agent: a, slots: slots, freeVec: free})
		v := &views[len(views)-1]
		g.agents = append(g.agents, v)
		seen := map[string]bool{}
		for _, d := range a.Drivers {
			if !seen[d] {
				seen[d] = true
				g.byDriver[d] = append(g.byDriver[d], v)
			}
		}
	}
	return groups
}

// pass is the state of one scheduling pass.
type pass struct {
	slots  *slotTable
	groups map[string]*groupView
	sel    AgentSelector
	cands  []Candidate // reused between kernels
}

type placed struct {
	k *structs.Kernel
	v *agentView
	r request
}

// placeSession places all kernels of ps or none; it returns the placement,
// or the reason why the session stays PENDING.
func (p *pass) placeSession(ps *PendingSession) (structs.SessionPlacement, string) {
	sp := structs.SessionPlacement{SessionID: ps.Session.ID}
	kernels := make([]*structs.Kernel, 0, len(ps.Kernels))
	for _, k := range ps.Kernels {
		if k != nil {
			kernels = append(kernels, k)
		}
	}
	if len(kernels) == 0 {
		return sp, "session has no kernels"
	}
	slices.SortStableFunc(kernels, func(a, b *structs.Kernel) int {
		return cmp.Or(strings.Compare(a.Role, b.Role), cmp.Compare(a.Idx, b.Idx), strings.Compare(a.ID, b.ID))
	})
	for _, k := range kernels {
		if k.Status != structs.KernelPending {
			return sp, fmt.Sprintf("kernel %s is %s, not %s", kernelName(k), k.Status, structs.KernelPending)
		}
		if err := checkRequest(k); err != nil {
			return sp, err.Error()
		}
	}
	name := groupOf(ps.Session.ResourceGroup)
	g := p.groups[name]
	if g == nil || len(g.agents) == 0 {
		return sp, p.noAliveReason(name, g)
	}

	var done []placed
	rollback := func() {
		for _, d := range done {
			d.v.take(d.r, -1)
		}
	}
	for _, k := range kernels {
		withDriver := g.byDriver[k.Driver]
		if len(withDriver) == 0 {
			rollback()
			return sp, noDriverReason(g, k)
		}
		r := p.slots.request(k)
		p.cands = p.cands[:0]
		for _, v := range withDriver {
			if v.fits(r) {
				p.cands = append(p.cands, Candidate{Agent: v.agent, view: v})
			}
		}
		if len(p.cands) == 0 {
			reason := shortReason(g, withDriver, k, r)
			rollback()
			if len(done) > 0 && anyFits(withDriver, r) {
				reason = fmt.Sprintf("the session's %d kernels do not fit together: after placing %s, %s",
					len(kernels), placedList(done), reason)
			}
			return sp, reason
		}
		i := p.sel(k, p.cands)
		if i < 0 || i >= len(p.cands) {
			rollback()
			return sp, fmt.Sprintf("the agent selector chose none of the %d agents in resource group %q with room for kernel %s",
				len(p.cands), g.name, kernelName(k))
		}
		v := p.cands[i].view
		v.take(r, 1)
		done = append(done, placed{k: k, v: v, r: r})
	}
	sp.Placements = make([]structs.Placement, len(done))
	for i, d := range done {
		sp.Placements[i] = structs.Placement{KernelID: d.k.ID, AgentID: d.v.agent.ID}
	}
	return sp, ""
}

func anyFits(agents []*agentView, r request) bool {
	for _, v := range agents {
		if v.fits(r) {
			return true
		}
	}
	return false
}

func placedList(done []placed) string {
	parts := make([]string, len(done))
	for i, d := range done {
		parts[i] = kernelName(d.k) + " on " + d.v.agent.ID
	}
	return strings.Join(parts, ", ")
}

// noAliveReason explains a group with no ALIVE agent.
func (p *pass) noAliveReason(name string, g *groupView) string {
	msg := fmt.Sprintf("no alive agent in resource group %q", name)
	switch {
	case g != nil && g.notAlive == 1:
		msg += " (its 1 agent is not ALIVE)"
	case g != nil && g.notAlive > 1:
		msg += fmt.Sprintf(" (its %d agents are not ALIVE)", g.notAlive)
	default:
		var others []string
		for n, og := range p.groups {
			if len(og.agents) > 0 {
				others = append(others, n)
			}
		}
		if len(others) > 0 {
			slices.Sort(others)
			msg += fmt.Sprintf(" (alive agents are in: %s)", strings.Join(others, ", "))
		}
	}
	return msg
}

func noDriverReason(g *groupView, k *structs.Kernel) string {
	have := make([]string, 0, len(g.byDriver))
	for d := range g.byDriver {
		have = append(have, d)
	}
	slices.Sort(have)
	return fmt.Sprintf("no alive agent in resource group %q has driver %q (kernel %s; drivers there: %s)",
		g.name, k.Driver, kernelName(k), driverList(have))
}

// maxAgentsInReason bounds how many agents a reason lists.
const maxAgentsInReason = 3

// shortReason explains why no agent of withDriver (non-empty) has room for
// kernel k: the slots that no agent has enough of, with the best free amount
// of each, or else that no agent has all of them at once.
func shortReason(g *groupView, withDriver []*agentView, k *structs.Kernel, r request) string {
	where := fmt.Sprintf("in resource group %q", g.name)
	if len(withDriver) < len(g.agents) {
		where = fmt.Sprintf("with driver %q in resource group %q", k.Driver, g.name)
	}
	names := g.agents[0].slots.names
	var shortNames, needs, bests []string
	for j, i := range r.idx {
		best := withDriver[0]
		for _, v := range withDriver[1:] {
			if v.free(i) > best.free(i) {
				best = v
			}
		}
		if best.free(i) < r.amt[j] {
			shortNames = append(shortNames, names[i])
			needs = append(needs, slotString(names[i], r.amt[j]))
			bests = append(bests, slotString(names[i], best.free(i))+" on agent "+best.agent.ID)
		}
	}
	if len(shortNames) > 0 {
		return fmt.Sprintf("no agent %s has enough free %s (kernel %s needs %s, best free %s)",
			where, strings.Join(shortNames, " or "), kernelName(k), strings.Join(needs, " and "), strings.Join(bests, " and "))
	}
	// Each slot is free somewhere, but never all on the same agent.
	all := make([]string, len(r.idx))
	for j, i := range r.idx {
		all[j] = slotString(names[i], r.amt[j])
	}
	var frees []string
	for _, v := range withDriver[:min(len(withDriver), maxAgentsInReason)] {
		parts := make([]string, len(r.idx))
		for j, i := range r.idx {
			parts[j] = slotString(names[i], v.free(i))
		}
		frees = append(frees, v.agent.ID+" has "+strings.Join(parts, " "))
	}
	if more := len(withDriver) - maxAgentsInReason; more > 0 {
		frees = append(frees, fmt.Sprintf("and %d more", more))
	}
	return fmt.Sprintf("no agent %s has all of the kernel's slots free at once (kernel %s needs %s; free: %s)",
		where, kernelName(k), strings.Join(all, " "), strings.Join(frees, ", "))
}

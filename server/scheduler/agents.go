package scheduler

import (
	"fmt"
	"slices"
	"strings"

	"github.com/corral-dev/corral/structs"
)

// slotTable numbers the slot names of one pass, so that per-agent amounts
// live in dense vectors rather than maps on the hot path.
type slotTable struct {
	index map[string]int
	names []string // sorted
	cpu   int      // index of structs.SlotCPU, always present
}

// newSlotTable numbers the slots of the agents and of set (the slots the
// pending kernels ask for), adding them to set.
func newSlotTable(agents []*structs.Agent, set map[string]bool) *slotTable {
	set[structs.SlotCPU] = true
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

// order returns the slot indices in the order agents are compared: the
// names of priority that the table knows, then the others by name.
func (t *slotTable) order(priority []string) []int {
	out := make([]int, 0, len(t.names))
	seen := make([]bool, len(t.names))
	for _, name := range priority {
		if i, ok := t.index[name]; ok && !seen[i] {
			seen[i] = true
			out = append(out, i)
		}
	}
	for i := range t.names {
		if !seen[i] {
			out = append(out, i)
		}
	}
	return out
}

// request is what a kernel asks for: its positive slots, in name order, and
// the same as a bit mask of slot indices (slots past the 64th never count
// in masks; they still count in fits).
type request struct {
	idx  []int
	amt  []structs.Quantity
	mask uint64
}

func (t *slotTable) request(res structs.Slots) request {
	return t.requestInto(res, nil, nil)
}

// requestInto is request appending to idx and amt, which should have room
// for the positive slots of res.
func (t *slotTable) requestInto(res structs.Slots, idx []int, amt []structs.Quantity) request {
	r := request{idx: idx, amt: amt}
	for name, q := range res {
		if q <= 0 {
			continue
		}
		i := t.index[name]
		// Insertion sort: requests name a handful of slots.
		j := len(r.idx)
		r.idx = append(r.idx, i)
		r.amt = append(r.amt, q)
		for ; j > 0 && r.idx[j-1] > i; j-- {
			r.idx[j], r.amt[j] = r.idx[j-1], r.amt[j-1]
		}
		r.idx[j], r.amt[j] = i, q
		if i < 64 {
			r.mask |= 1 << i
		}
	}
	return r
}

// covers reports whether r asks for at least f of every slot, f being a
// request that found no agent: then r finds none either.
func (r request) covers(f request) bool {
	j := 0
	for fi, i := range f.idx {
		for j < len(r.idx) && r.idx[j] < i {
			j++
		}
		if j == len(r.idx) || r.idx[j] != i || r.amt[j] < f.amt[fi] {
			return false
		}
	}
	return true
}

// agentView is an ALIVE agent during one pass.
type agentView struct {
	agent *structs.Agent
	slots *slotTable
	rank  int32 // position among all agents sorted by ID: the tie-breaker
	// freeVec is capacity minus occupied per slot, counting what the pass
	// placed so far: the pass's working copy, never the agent's own maps.
	freeVec []structs.Quantity
	// posMask has bit i set when slot i has some room left.
	posMask uint64
	// members are the indices that hold this agent, told when its free
	// amounts change.
	members []membership
	// taken holds the GPU devices (UUIDs) the pass chose on this agent
	// for the kernels it placed so far; the agent's GPUHolders hold
	// those of the kernels placed before the pass.
	taken map[string]bool
}

type membership struct {
	idx  *agentIndex
	node int32
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

func (v *agentView) setMask(i int) {
	if i >= 64 {
		return
	}
	if v.freeVec[i] > 0 {
		v.posMask |= 1 << i
	} else {
		v.posMask &^= 1 << i
	}
}

// take counts r as placed on the agent (sign 1) or gives it back (sign -1),
// telling every index that holds the agent.
func (v *agentView) take(r request, sign structs.Quantity) {
	for j, i := range r.idx {
		v.freeVec[i] -= sign * r.amt[j]
		v.setMask(i)
	}
	for _, m := range v.members {
		m.idx.markDirty(m.node)
	}
}

// groupView is one resource group's agents and scheduler configuration.
type groupView struct {
	name     string
	cfg      groupConfig
	order    []int                   // slot indices in resource priority order
	agents   []*agentView            // ALIVE, sorted by ID
	byDriver map[string][]*agentView // driver -> ALIVE agents with it, sorted by ID
	// withAll holds, by driverKey of several drivers, the ALIVE agents that
	// have all of them; built on first use.
	withAll  map[string]driverSet
	notAlive int
	drained  int // alive agents drained of new placements
	// drainedAgents are those agents, sorted by ID: a reason names the
	// ones that would have had room.
	drainedAgents []*structs.Agent
	capacity      structs.Slots // summed capacity of the ALIVE agents, for DRF
	// held is what the group's sessions hold (Input.GroupUsage) plus what
	// the pass placed, for the group's TotalResourceSlots.
	held structs.Slots
	// indices are built on first use, one per driverKey.
	indices map[string]*agentIndex
	// failed holds, per driverKey, requests that found no agent while the
	// pass held nothing tentatively: free room only shrinks during a
	// pass, so any request that covers one of them fails too.
	failed map[string][]request
	// reasons caches the shortage reasons of the pass, and formatted the
	// amounts they show.
	reasons   map[reasonKey]string
	formatted map[slotAmount]string
	// cursor is the round-robin cursor: the last agent ID used.
	cursor  string
	moved   bool             // the cursor moved in this pass
	blocked *structs.Session // fifo head of line that blocks the rest of the pass
}

// reasonKey identifies a shortage reason: the same kernel name (or number
// of kernels placed together), drivers and request, with the same best free
// amounts on the same agents, give the same text (once a group is full, many
// sessions fail alike).
type reasonKey struct {
	driver, kernel string
	together       int
	n              int
	idx            [6]int
	amt            [6]structs.Quantity
	best           [6]structs.Quantity
	bestRank       [6]int32
	// first holds what the first agents by ID have free, which the text
	// lists when no slot is short on its own.
	first [maxAgentsInReason][6]structs.Quantity
}

// shortReason is the package's shortReason, cached by reasonKey, with
// the drained agents that would have had room (drainedHint).
func (g *groupView) shortReason(withDriver []*agentView, d demand, r request, best func(i int) (*agentView, structs.Quantity)) string {
	text := g.openShortReason(withDriver, d, r, best)
	if len(g.drainedAgents) > 0 {
		text += drainedHint(g.drainedAgents, d, r, withDriver[0].slots.names)
	}
	return text
}

// drainedHint names the drained agents with the demand's drivers and free
// room for it: "; drained agent node-3 has room (corral node eligible
// node-3 opens it to new sessions)". Empty when none has.
func drainedHint(drained []*structs.Agent, d demand, r request, names []string) string {
	var fit []string
	for _, a := range drained {
		if !hasDrivers(a, d.drivers) {
			continue
		}
		ok := true
		for j, i := range r.idx {
			name := names[i]
			if a.Capacity[name]-a.Occupied[name] < r.amt[j] {
				ok = false
				break
			}
		}
		if ok {
			fit = append(fit, agentName(a))
		}
	}
	switch {
	case len(fit) == 0:
		return ""
	case len(fit) == 1:
		return fmt.Sprintf("; drained agent %s has room (corral node eligible %s opens it to new sessions)", fit[0], fit[0])
	case len(fit) > maxAgentsInReason:
		fit = append(fit[:maxAgentsInReason], fmt.Sprintf("%d more", len(fit)-maxAgentsInReason))
	}
	return fmt.Sprintf("; drained agents %s have room (corral node eligible opens one to new sessions)", strings.Join(fit, ", "))
}

// hasDrivers says whether a has every driver of a driverKey.
func hasDrivers(a *structs.Agent, key string) bool {
	for _, d := range strings.Split(key, driverSep) {
		if !slices.Contains(a.Drivers, d) {
			return false
		}
	}
	return true
}

func agentName(a *structs.Agent) string {
	if a.Name != "" {
		return a.Name
	}
	return a.ID
}

// openShortReason is shortReason over the agents open to new sessions.
func (g *groupView) openShortReason(withDriver []*agentView, d demand, r request, best func(i int) (*agentView, structs.Quantity)) string {
	if len(r.idx) > len(reasonKey{}.idx) {
		return shortReason(g, withDriver, d, r, best)
	}
	key := reasonKey{driver: d.drivers, n: len(r.idx)}
	if d.n > 1 {
		key.together = d.n
	} else {
		key.kernel = kernelName(d.k)
	}
	copy(key.idx[:], r.idx)
	copy(key.amt[:], r.amt)
	short := false
	for j, i := range r.idx {
		v, q := best(i)
		key.best[j], key.bestRank[j] = q, v.rank
		short = short || q < r.amt[j]
	}
	if !short {
		for a, v := range withDriver[:min(len(withDriver), maxAgentsInReason)] {
			for j, i := range r.idx {
				key.first[a][j] = v.free(i)
			}
		}
	}
	if text, ok := g.reasons[key]; ok {
		return text
	}
	text := shortReason(g, withDriver, d, r, best)
	if g.reasons == nil {
		g.reasons = map[reasonKey]string{}
	}
	g.reasons[key] = text
	return text
}

type slotAmount struct {
	name string
	q    structs.Quantity
}

// slotString is the package's slotString, remembered.
func (g *groupView) slotString(name string, q structs.Quantity) string {
	k := slotAmount{name, q}
	if s, ok := g.formatted[k]; ok {
		return s
	}
	s := slotString(name, q)
	if g.formatted == nil {
		g.formatted = map[slotAmount]string{}
	}
	g.formatted[k] = s
	return s
}

// maxFailed bounds the failed requests remembered per driver.
const maxFailed = 32

func (g *groupView) knownToFail(driver string, r request) bool {
	for _, f := range g.failed[driver] {
		if r.covers(f) {
			return true
		}
	}
	return false
}

func (g *groupView) rememberFailed(driver string, r request) {
	list := g.failed[driver]
	if len(list) >= maxFailed {
		return
	}
	// Keep only the smallest requests: one that r covers makes r useless,
	// and r makes useless those that cover it.
	for _, f := range list {
		if r.covers(f) {
			return
		}
	}
	list = slices.DeleteFunc(list, func(f request) bool { return f.covers(r) })
	g.failed[driver] = append(list, r)
}

// driverSet is the ALIVE agents of a group that have every driver of a
// driverKey, sorted by ID, and the key their index and failure memo go by:
// the key itself, or one of its drivers that only those agents have (as
// when every agent with runc also has exec), so that the same agents share
// one index.
type driverSet struct {
	agents []*agentView
	key    string
}

// agentsWith returns the group's agents with every driver of drivers (a
// driverKey), as agentsFor does, without the key.
func (g *groupView) agentsWith(drivers string) []*agentView {
	return g.agentsFor(drivers).agents
}

// agentsFor returns the group's ALIVE agents that have every driver of
// drivers (a driverKey), and the key of their index.
func (g *groupView) agentsFor(drivers string) driverSet {
	if !strings.Contains(drivers, driverSep) {
		return driverSet{g.byDriver[drivers], drivers}
	}
	if set, ok := g.withAll[drivers]; ok {
		return set
	}
	// Filter the agents of the rarest driver; when all of them have the
	// other drivers too, they are the set, and their index serves.
	names := strings.Split(drivers, driverSep)
	base := names[0]
	for _, d := range names[1:] {
		if len(g.byDriver[d]) < len(g.byDriver[base]) {
			base = d
		}
	}
	all := g.byDriver[base]
	var vs []*agentView // set once an agent lacks a driver: those that have all
	for i, v := range all {
		ok := !slices.ContainsFunc(names, func(d string) bool { return d != base && !v.agent.HasDriver(d) })
		switch {
		case !ok && vs == nil:
			vs = append(make([]*agentView, 0, len(all)), all[:i]...)
		case ok && vs != nil:
			vs = append(vs, v)
		}
	}
	set := driverSet{all, base}
	if vs != nil {
		set = driverSet{vs, drivers}
	}
	if g.withAll == nil {
		g.withAll = map[string]driverSet{}
	}
	g.withAll[drivers] = set
	return set
}

// index returns the group's ordered index of the agents with every driver
// of driver (a driverKey), for the group's agent selector, building it on
// first use.
func (g *groupView) index(driver string) *agentIndex {
	if idx := g.indices[driver]; idx != nil {
		return idx
	}
	order := orderMostFree
	switch g.cfg.agentSelector {
	case structs.AgentSelectorRoundRobin:
		order = orderByID
	case structs.AgentSelectorConcentrated:
		order = orderLeastFree
	}
	idx := newAgentIndex(g.agentsWith(driver), order, g.order)
	if g.indices == nil {
		g.indices = map[string]*agentIndex{}
	}
	g.indices[driver] = idx
	return idx
}

// buildGroups makes the views of the ALIVE agents, grouped by resource group.
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
	for rank, a := range sorted {
		name := groupOf(a.ResourceGroup)
		g := groups[name]
		if g == nil {
			g = newGroupView(name)
			groups[name] = g
		}
		if a.Status != structs.AgentAlive {
			g.notAlive++
			continue
		}
		if a.Drain {
			g.drained++
			g.drainedAgents = append(g.drainedAgents, a)
			continue
		}
		free := backing[len(views)*n : (len(views)+1)*n : (len(views)+1)*n]
		for name, q := range a.Capacity {
			free[slots.index[name]] += q
			if q > 0 {
				g.capacity[name] += q
			}
		}
		for name, q := range a.Occupied {
			free[slots.index[name]] -= q
		}
		views = append(views, agentView{agent: a, slots: slots, rank: int32(rank), freeVec: free})
		v := &views[len(views)-1]
		for i := range free {
			v.setMask(i)
		}
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

func newGroupView(name string) *groupView {
	return &groupView{name: name, byDriver: map[string][]*agentView{}, capacity: structs.Slots{}, failed: map[string][]request{}}
}

// Package scheduler computes placement plans: which agent runs each kernel
// of the pending sessions. It is pure: it reads a snapshot of the state and
// returns a plan, with no I/O, goroutines or clock, so the leader can run it
// on any consistent view and the FSM re-checks the plan when it applies it.
//
// One pass, for each resource group and each priority level (highest
// first), asks the group's session selector (queue.go: fifo, lifo, drf) for
// the next session, runs the predicates (predicate.go: dependencies,
// starts_at, policy limits) and then places all of the session's kernels or
// none (gang), on the agents the group's agent selector prefers among those
// with room (selector.go: concentrated, dispersed, roundrobin). A
// single-node session of several kernels (structs.Session.SingleNode, the
// default cluster mode) goes whole on one agent, chosen as if it were one
// kernel asking for the sum of its kernels' requests; a multi-node one may
// spread its kernels over agents, each on the agent the selector prefers.
//
// A kernel asking for GPU devices (cuda.device, cuda.mig-<profile>) fits an
// agent only when the agent's free devices (devices.go: healthy, held by no
// kernel nor taken earlier in the pass, matching the kernel's
// GPUConstraint) are enough, besides its counted slots; the kernels of a
// single-node session must find disjoint devices on their agent. The FSM
// chooses the concrete devices with ChooseDevices in the apply that places
// the kernel.
package scheduler

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/corral-dev/corral/structs"
)

// PendingSession is a PENDING session with its kernels, as the snapshot holds them.
type PendingSession struct {
	Session *structs.Session
	Kernels []*structs.Kernel
}

// Input is one scheduling pass's view of the state. The scheduler never
// modifies it or anything it points to. Only Pending and Agents are
// required; every other field has a documented meaning when left empty.
type Input struct {
	// Pending are the sessions to place, in any order.
	Pending []*PendingSession
	// Agents are all known agents, in any status.
	Agents []*structs.Agent
	// Index is the state index of the snapshot.
	Index uint64
	// Groups holds the resource groups' scheduler configuration by name
	// ("default", or "", for the default group). A group absent here, or the empty
	// fields of one, take the defaults: fifo, NumRetriesToSkip 0,
	// dispersed, structs.DefaultResourcePriority (see DefaultSessionSelector).
	Groups map[string]*structs.ResourceGroup
	// Policies holds the resource policy of each access key, by access key
	// (not by policy name). Absent or nil: the key is unlimited.
	Policies map[string]*structs.ResourcePolicy
	// Usage holds what each access key holds now (its concurrency set and
	// occupied slots), by access key. Absent: nothing.
	Usage map[string]*structs.KeyUsage
	// Sessions finds, by ID and in any status, the sessions that pending
	// ones depend on; the sessions of Pending are found without it.
	Sessions map[string]*structs.Session
	// LookupSession, when set, is asked for the IDs that Sessions lacks; it
	// returns nil for an unknown ID. It must be pure, as the rest of Input.
	LookupSession func(id string) *structs.Session `json:"-"`
	// Now is the pass's clock, for StartsAt. A zero Now starts no reserved
	// session: callers must set it.
	Now time.Time
	// GroupUsage holds what each resource group's sessions hold now, by
	// group name, for the groups' TotalResourceSlots. Absent: nothing.
	GroupUsage map[string]structs.Slots
	// RoundRobin holds each group's round-robin cursor: the ID of the last
	// agent the roundrobin selector used (the previous Result.RoundRobin).
	RoundRobin map[string]string
}

// Result is what one pass decided.
type Result struct {
	// Plan holds the placements, in the order they were made, and in
	// Plan.Unplaced why every other pending session stays PENDING (except
	// those in Cancel). Submit it through raft as before.
	Plan *structs.Plan
	// Cancel holds the sessions that can never run and why: a dependency
	// ended without success, or does not exist. The server cancels them.
	Cancel map[string]string
	// RoundRobin is every group's round-robin cursor after the pass:
	// Input.RoundRobin with the cursors the pass moved. Pass it as the next
	// pass's Input.RoundRobin.
	RoundRobin map[string]string
	// Order lists each resource group's pending sessions in the order the
	// pass took them: by priority, then by the group's session selector.
	// For drf the order depends on what got placed. `corral queue` shows it.
	Order map[string][]string
	// Attempts holds the new Session.ScheduleAttempts of every session the
	// pass tried and could not place (a predicate on its key's limits or its
	// kernels failed, or no agents had room). Sessions that were placed,
	// cancelled, not ready yet (starts_at, dependencies), blocked behind a
	// fifo head of line, or in a misconfigured group are absent. The server
	// records these counts: fifo's NumRetriesToSkip counts on them.
	Attempts map[string]int
}

// Options swaps the pieces a pass uses; the zero value uses the built-in ones.
type Options struct {
	// AgentSelector, when set, picks the agent of every kernel in every
	// group instead of the group's configured agent selector. It sees all
	// candidates, so it is slower than the built-in ones. For a single-node
	// session of several kernels it is asked once, with a copy of main1
	// (the first kernel) whose Resources are the sum of all the kernels'
	// requests, among the agents with every driver they use and room for
	// that sum.
	AgentSelector AgentSelector
	// Predicates replaces DefaultPredicates when not nil.
	Predicates []Predicate
}

// Plan runs one scheduling pass with the groups' configured selectors and
// DefaultPredicates.
func Plan(in *Input) *Result { return PlanWith(in, Options{}) }

// Schedule runs one pass and returns only its plan; see Plan for the rest.
func Schedule(in *Input) *structs.Plan { return Plan(in).Plan }

// ScheduleWith runs one pass with sel choosing agents in every group (nil:
// the groups' configured selectors, as Schedule) and returns its plan.
func ScheduleWith(in *Input, sel AgentSelector) *structs.Plan {
	return PlanWith(in, Options{AgentSelector: sel}).Plan
}

// Queue returns the IDs of a resource group's pending sessions in the order
// the pass takes them ("" is the default group): Plan(in).Order[group].
func Queue(in *Input, group string) []string {
	return Plan(in).Order[groupOf(group)]
}

// PlanWith runs one scheduling pass with the given pieces.
//
// Each session's kernels are placed all or none (gang) on ALIVE agents of
// the session's group, counting what the pass already placed:
//
//   - A single-node session of several kernels (Session.SingleNode: cluster
//     mode single-node, or empty) goes whole on one agent that has every
//     driver its kernels use and room for the sum of their requests, slot by
//     slot: the agent the selector prefers for one kernel asking for that
//     sum. When none has, the session stays PENDING with the sum it needs
//     and the best free amounts, even if its kernels would fit apart.
//   - The kernels of a multi-node session go one by one in role and index
//     order (main1, sub1, sub2...), each on the agent the selector prefers
//     among those with the kernel's driver and room for all of its slots;
//     the pass does not search other assignments, so a gang that would fit
//     only if a later, larger kernel went first stays unplaced.
//   - A session of one kernel is placed as that kernel, whatever its mode.
//
// The same input always gives the same result, whatever the order of its
// slices and maps.
func PlanWith(in *Input, opt Options) *Result {
	res := &Result{
		Plan:       &structs.Plan{Placements: []structs.SessionPlacement{}, Unplaced: map[string]string{}},
		Cancel:     map[string]string{},
		RoundRobin: map[string]string{},
		Order:      map[string][]string{},
		Attempts:   map[string]int{},
	}
	if in == nil {
		return res
	}
	res.Plan.SnapshotIndex = in.Index
	maps.Copy(res.RoundRobin, in.RoundRobin)
	p := newPass(in, opt, res)
	p.run()
	for _, g := range p.groups {
		if g.moved {
			res.RoundRobin[g.name] = g.cursor
		}
	}
	return res
}

// item is one pending session during a pass.
type item struct {
	ps      *PendingSession
	sess    *structs.Session
	group   string
	grank   int               // rank of group among the pass's groups, by name
	kernels []*structs.Kernel // non-nil, in role and index order
	reqs    []request         // per kernel
	// gpu holds each kernel's device demand (devices.go); nil when no
	// kernel of the session asks for a GPU device.
	gpu     []GPUDemand
	req     structs.Slots // sum of the kernels' positive requests
	invalid string        // why the session cannot be tried at all
	// together is set for a single-node session of several kernels, which
	// goes whole on one agent: one with every driver of drivers (their
	// driverKey) and room for sum, which is req as a request.
	together bool
	drivers  string
	sum      request
	// copies of the session's fields that sorting compares
	priority    int
	createIndex uint64
}

// keyState is one access key during a pass.
type keyState struct {
	policy       *structs.ResourcePolicy
	usage        *structs.KeyUsage
	passSessions int
	passOccupied structs.Slots
}

// pass is the state of one scheduling pass.
type pass struct {
	in     *Input
	opt    Options
	res    *Result
	preds  []Predicate
	slots  *slotTable
	groups map[string]*groupView
	items  []*item
	byID   map[string]*item
	keys   map[string]*keyState
	check  SessionCheck
	cands  []Candidate // reused between kernels
	done   []placed    // reused between sessions
	// devMiss is the best device shortage the current pick met.
	devMiss deviceMiss
}

type placed struct {
	k *structs.Kernel
	v *agentView
	r request
	// gpus are the devices the pass chose for the kernel on v (held in
	// v.taken until the pass ends or gives them back).
	gpus []string
}

func newPass(in *Input, opt Options, res *Result) *pass {
	p := &pass{in: in, opt: opt, res: res, preds: opt.Predicates, keys: map[string]*keyState{}}
	if p.preds == nil {
		p.preds = DefaultPredicates
	}
	names := map[string]bool{}
	items, byID, nkernels, nentries := prepare(in.Pending, names)
	p.items, p.byID = items, byID
	p.slots = newSlotTable(in.Agents, names)
	p.groups = buildGroups(in.Agents, p.slots)
	// All requests of the pass share three arrays (nentries counts the
	// summed requests of the sessions placed together too).
	reqs := make([]request, nkernels)
	idx := make([]int, nentries)
	amt := make([]structs.Quantity, nentries)
	for _, it := range p.items {
		if p.groups[it.group] == nil {
			p.groups[it.group] = newGroupView(it.group)
		}
		it.reqs, reqs = reqs[:len(it.kernels):len(it.kernels)], reqs[len(it.kernels):]
		for j, k := range it.kernels {
			r := p.slots.requestInto(k.Resources, idx[:0:len(idx)], amt[:0:len(amt)])
			it.reqs[j] = r
			idx, amt = idx[len(r.idx):], amt[len(r.amt):]
		}
		if it.together {
			it.sum = p.slots.requestInto(it.req, idx[:0:len(idx)], amt[:0:len(amt)])
			idx, amt = idx[len(it.sum.idx):], amt[len(it.sum.amt):]
		}
	}
	for name, g := range p.groups {
		rg := in.Groups[name]
		if rg == nil && name == structs.DefaultResourceGroup {
			rg = in.Groups[""]
		}
		g.cfg = resolveGroup(name, rg)
		g.order = p.slots.order(g.cfg.priority)
		g.cursor = in.RoundRobin[name]
	}
	p.check.Lookup = p.lookup
	p.check.Now = in.Now
	return p
}

// prepare returns the usable pending sessions, each once, sorted by
// queueOrder, with their kernels sorted and their requests summed; it adds
// the slot names the kernels ask for to names.
func prepare(pending []*PendingSession, names map[string]bool) (items []*item, byID map[string]*item, nkernels, nentries int) {
	items = make([]*item, 0, len(pending))
	byID = make(map[string]*item, len(pending))
	slab := make([]item, len(pending))
	for _, ps := range pending {
		if ps == nil || ps.Session == nil || byID[ps.Session.ID] != nil {
			continue
		}
		it := &slab[len(items)]
		*it = item{ps: ps, sess: ps.Session, group: groupOf(ps.Session.ResourceGroup), req: structs.Slots{},
			priority: ps.Session.Priority, createIndex: ps.Session.CreateIndex}
		it.kernels = sortedKernels(ps.Kernels)
		for _, k := range it.kernels {
			if it.invalid == "" && k.Status != structs.KernelPending {
				it.invalid = fmt.Sprintf("kernel %s is %s, not %s", kernelName(k), k.Status, structs.KernelPending)
			}
			if d, err := DemandOf(k.Resources); err != nil {
				if it.invalid == "" {
					it.invalid = fmt.Sprintf("kernel %s: %v", kernelName(k), err)
				}
			} else if !d.Empty() {
				if it.gpu == nil {
					it.gpu = make([]GPUDemand, len(it.kernels))
				}
				it.gpu[slices.Index(it.kernels, k)] = d
			}
			for name, q := range k.Resources {
				names[name] = true
				if q > 0 {
					it.req[name] += q
					nentries++
				} else if q < 0 && it.invalid == "" {
					it.invalid = checkRequest(k).Error()
				}
			}
		}
		nkernels += len(it.kernels)
		if len(it.kernels) == 0 {
			it.invalid = "session has no kernels"
		}
		if len(it.kernels) > 1 && it.sess.SingleNode() {
			it.together = true
			it.drivers = driverKey(it.kernels)
			nentries += len(it.req)
		}
		items = append(items, it)
		byID[it.sess.ID] = it
	}
	// Number the groups so that sorting compares integers.
	groups := map[string]int{}
	for _, it := range items {
		groups[it.group] = 0
	}
	sorted := slices.Sorted(maps.Keys(groups))
	for i, g := range sorted {
		groups[g] = i
	}
	for _, it := range items {
		it.grank = groups[it.group]
	}
	slices.SortFunc(items, queueOrder)
	return items, byID, nkernels, nentries
}

// driverSep joins the driver names of a driverKey.
const driverSep = "\x00"

// driverKey names the set of drivers that ks (non-empty) use: the one
// driver when they share it, else the distinct names sorted and joined by
// driverSep. Group views find agents and keep indices by driver key.
func driverKey(ks []*structs.Kernel) string {
	d := ks[0].Driver
	same := true
	for _, k := range ks[1:] {
		if k.Driver != d {
			same = false
			break
		}
	}
	if same {
		return d
	}
	names := make([]string, len(ks))
	for i, k := range ks {
		names[i] = k.Driver
	}
	slices.Sort(names)
	return strings.Join(slices.Compact(names), driverSep)
}

// kernelOrder sorts a session's kernels: main1, sub1, sub2..., then the
// extra roles' kernels (structs.CompareKernels).
func kernelOrder(a, b *structs.Kernel) int { return structs.CompareKernels(a, b) }

// sortedKernels returns ks without nils in kernelOrder: ks itself when it
// already is (never modified), else a sorted copy.
func sortedKernels(ks []*structs.Kernel) []*structs.Kernel {
	ok := true
	for i, k := range ks {
		if k == nil || (i > 0 && kernelOrder(ks[i-1], k) > 0) {
			ok = false
			break
		}
	}
	if ok {
		return ks
	}
	out := make([]*structs.Kernel, 0, len(ks))
	for _, k := range ks {
		if k != nil {
			out = append(out, k)
		}
	}
	slices.SortStableFunc(out, kernelOrder)
	return out
}

func (p *pass) lookup(id string) *structs.Session {
	if s := p.in.Sessions[id]; s != nil {
		return s
	}
	if p.in.LookupSession != nil {
		if s := p.in.LookupSession(id); s != nil {
			return s
		}
	}
	if it := p.byID[id]; it != nil {
		return it.sess
	}
	return nil
}

func (p *pass) key(k string) *keyState {
	ks := p.keys[k]
	if ks == nil {
		ks = &keyState{policy: p.in.Policies[k], usage: p.in.Usage[k]}
		p.keys[k] = ks
	}
	return ks
}

// run takes priority levels from highest to lowest; within a level, the
// groups in name order (groups share only the keys' limits).
func (p *pass) run() {
	type groupLevels struct {
		g      *groupView
		levels [][]*item
	}
	var all []*groupLevels
	var prios []int
	for i := 0; i < len(p.items); {
		j := i
		for j < len(p.items) && p.items[j].group == p.items[i].group {
			j++
		}
		gl := &groupLevels{g: p.groups[p.items[i].group], levels: priorityLevels(p.items[i:j])}
		for _, l := range gl.levels {
			prios = append(prios, l[0].sess.Priority)
		}
		all = append(all, gl)
		i = j
	}
	slices.Sort(prios)
	prios = slices.Compact(prios)
	for pi := len(prios) - 1; pi >= 0; pi-- {
		for _, gl := range all {
			if len(gl.levels) == 0 || gl.levels[0][0].sess.Priority != prios[pi] {
				continue
			}
			q := p.newQueue(gl.g, gl.levels[0])
			gl.levels = gl.levels[1:]
			for it := q.next(); it != nil; it = q.next() {
				if p.consider(gl.g, it) {
					q.placed(it)
				}
			}
		}
	}
}

// consider decides one session: cancel, leave PENDING with a reason, or
// place it. It reports whether the session was placed.
func (p *pass) consider(g *groupView, it *item) bool {
	id := it.sess.ID
	p.res.Order[g.name] = append(p.res.Order[g.name], id)
	plan := p.res.Plan
	if it.invalid != "" {
		plan.Unplaced[id] = it.invalid
		p.res.Attempts[id] = it.sess.ScheduleAttempts + 1
		return false
	}
	ks := p.key(it.sess.AccessKey)
	c := &p.check
	c.Session, c.Kernels, c.Request = it.sess, it.kernels, it.req
	c.Policy, c.Usage, c.PassSessions, c.PassOccupied = ks.policy, ks.usage, ks.passSessions, ks.passOccupied
	var v Verdict
	for _, pred := range p.preds {
		if v = pred(c); v.Failed() {
			break
		}
	}
	switch {
	case v.Cancel:
		p.res.Cancel[id] = v.Reason
		return false
	case v.Wait:
		plan.Unplaced[id] = v.Reason
		return false
	case g.cfg.invalid != "":
		plan.Unplaced[id] = g.cfg.invalid
		return false
	case g.blocked != nil:
		h := g.blocked
		plan.Unplaced[id] = fmt.Sprintf("waiting behind session %s, the head of the queue of resource group %q "+
			"(fifo: a head blocks the sessions behind it until it has failed %d passes; it has failed %d)",
			h.ID, g.name, g.cfg.numRetriesToSkip, h.ScheduleAttempts+1)
		return false
	case v.Failed():
		plan.Unplaced[id] = v.Reason
		p.res.Attempts[id] = it.sess.ScheduleAttempts + 1
		return false
	}
	if len(g.cfg.limit) > 0 {
		if g.held == nil {
			g.held = p.in.GroupUsage[g.name].Copy()
		}
		if r := GroupLimitReason(g.name, g.cfg.limit, g.held, it.req); r != "" {
			plan.Unplaced[id] = r
			p.res.Attempts[id] = it.sess.ScheduleAttempts + 1
			return false
		}
	}
	sp, reason := p.place(g, it)
	if reason != "" {
		plan.Unplaced[id] = reason
		p.res.Attempts[id] = it.sess.ScheduleAttempts + 1
		if g.cfg.sessionSelector == structs.SelectorFIFO && it.sess.ScheduleAttempts < g.cfg.numRetriesToSkip {
			g.blocked = it.sess
		}
		return false
	}
	plan.Placements = append(plan.Placements, sp)
	if len(g.cfg.limit) > 0 {
		g.held = g.held.Add(it.req)
	}
	if ks.usage == nil || !ks.usage.Sessions[id] {
		ks.passSessions++
	}
	if ks.passOccupied == nil {
		ks.passOccupied = structs.Slots{}
	}
	for name, q := range it.req {
		ks.passOccupied[name] += q
	}
	return true
}

// place puts all kernels of the session on agents of g, or none; it
// returns the placement, or the reason why the session stays PENDING.
func (p *pass) place(g *groupView, it *item) (structs.SessionPlacement, string) {
	sp := structs.SessionPlacement{SessionID: it.sess.ID}
	if len(g.agents) == 0 {
		return sp, p.noAliveReason(g.name, g)
	}
	if it.together {
		return p.placeTogether(g, it)
	}
	done := p.done[:0]
	cursor, moved := g.cursor, g.moved
	rollback := func() {
		for _, d := range done {
			d.v.take(d.r, -1)
			d.v.untakeGPUs(d.gpus)
		}
		g.cursor, g.moved = cursor, moved
	}
	if reason := p.precheck(g, it); reason != "" {
		return sp, reason
	}
	for j, k := range it.kernels {
		withDriver := g.byDriver[k.Driver]
		if len(withDriver) == 0 {
			rollback()
			return sp, noDriverReason(g, k)
		}
		r := it.reqs[j]
		d := demand{k: k, drivers: k.Driver, key: k.Driver, n: 1}
		if it.gpu != nil && !it.gpu[j].Empty() {
			d.accept = p.deviceAccept(it.kernels[j:j+1], it.gpu[j:j+1])
		}
		var volReason string
		if volReason, d.accept = g.volumeCheck(it.kernels[j:j+1], d.accept); volReason != "" {
			rollback()
			p.done = done
			return sp, volReason
		}
		v, reason, short := p.pick(g, d, r, withDriver, len(done) == 0 && len(k.Volumes) == 0)
		if v == nil {
			rollback()
			if short && len(done) > 0 && p.anyFits(g, k.Driver, r, withDriver) {
				reason = fmt.Sprintf("the session's %d kernels do not fit together: after placing %s, %s",
					len(it.kernels), placedList(done), reason)
			}
			p.done = done
			return sp, reason
		}
		v.take(r, 1)
		if g.cfg.agentSelector == structs.AgentSelectorRoundRobin && p.opt.AgentSelector == nil {
			g.cursor, g.moved = v.agent.ID, true
		}
		var gpus []string
		if it.gpu != nil && !it.gpu[j].Empty() {
			gpus = v.takeGPUs(it.kernels[j:j+1], it.gpu[j:j+1])
		}
		done = append(done, placed{k: k, v: v, r: r, gpus: gpus})
	}
	sp.Placements = make([]structs.Placement, len(done))
	for i, d := range done {
		sp.Placements[i] = structs.Placement{KernelID: d.k.ID, AgentID: d.v.agent.ID}
	}
	p.done = done
	return sp, ""
}

// placeTogether puts all kernels of a single-node session on one agent of
// g: the one the selector prefers for their summed request among the agents
// with every driver they use, as if they were one kernel.
func (p *pass) placeTogether(g *groupView, it *item) (structs.SessionPlacement, string) {
	sp := structs.SessionPlacement{SessionID: it.sess.ID}
	for _, k := range it.kernels {
		if len(g.byDriver[k.Driver]) == 0 {
			return sp, noDriverReason(g, k)
		}
	}
	set := g.agentsFor(it.drivers)
	if len(set.agents) == 0 {
		return sp, noAgentWithAllDriversReason(g, it.drivers)
	}
	d := demand{k: it.kernels[0], drivers: it.drivers, key: set.key, n: len(it.kernels)}
	if p.opt.AgentSelector != nil {
		// The selector sees main1 asking for the whole session.
		k := *it.kernels[0]
		k.Resources = it.req.Copy()
		d.k = &k
	}
	if it.gpu != nil {
		d.accept = p.deviceAccept(it.kernels, it.gpu)
	}
	volReason, acc := g.volumeCheck(it.kernels, d.accept)
	if volReason != "" {
		return sp, volReason
	}
	d.accept = acc
	v, reason, _ := p.pick(g, d, it.sum, set.agents, kernelsBackends(it.kernels) == nil)
	if v == nil {
		return sp, reason
	}
	v.take(it.sum, 1)
	if it.gpu != nil {
		v.takeGPUs(it.kernels, it.gpu)
	}
	if g.cfg.agentSelector == structs.AgentSelectorRoundRobin && p.opt.AgentSelector == nil {
		g.cursor, g.moved = v.agent.ID, true
	}
	sp.Placements = make([]structs.Placement, len(it.kernels))
	for i, k := range it.kernels {
		sp.Placements[i] = structs.Placement{KernelID: k.ID, AgentID: v.agent.ID}
	}
	return sp, ""
}

// precheck fails a multi-node session of several kernels, before anything
// is held for it, when one of its kernels has no driver or finds no room
// even on its own: that spares holding and giving back the kernels before it.
func (p *pass) precheck(g *groupView, it *item) string {
	if len(it.kernels) < 2 || p.opt.AgentSelector != nil {
		return ""
	}
	for j, k := range it.kernels {
		withDriver := g.byDriver[k.Driver]
		if len(withDriver) == 0 {
			return noDriverReason(g, k)
		}
		r := it.reqs[j]
		idx := g.index(k.Driver)
		fails := g.knownToFail(k.Driver, r) || !idx.mayFitAny(r)
		if !fails && j > 0 && idx.first(r) == nil {
			g.rememberFailed(k.Driver, r)
			fails = true
		}
		if fails {
			return g.shortReason(withDriver, demand{k: k, drivers: k.Driver, key: k.Driver, n: 1}, r, idx.best)
		}
	}
	return ""
}

// demand is what one pick places: a kernel, or all n kernels of a
// single-node session together.
type demand struct {
	// k is the kernel; for a session, its first kernel (main1), or for a
	// custom AgentSelector a copy of it asking for the session's sum.
	k *structs.Kernel
	// drivers is the driverKey of the drivers the agent needs, and key
	// the one its agents' index and failure memo go by (see driverSet).
	drivers, key string
	// n is how many kernels go together: 1 for a kernel alone.
	n int
	// accept, when set, is the test of the kernels' GPU devices that an
	// agent with room for their slots must pass too.
	accept accept
}

// what names the demand in reasons: "kernel main1", or "all 3 kernels of
// the single-node session together".
func (d demand) what() string {
	if d.n > 1 {
		return fmt.Sprintf("all %d kernels of the single-node session together", d.n)
	}
	return "kernel " + kernelName(d.k)
}

// pick chooses the agent for a demand asking for r among withDriver (the
// ALIVE agents of g with its drivers, non-empty), or says why there is none;
// short is true when no agent had room. clean says the pass holds nothing
// tentatively for the session, so that a failure may be remembered.
func (p *pass) pick(g *groupView, d demand, r request, withDriver []*agentView, clean bool) (v *agentView, reason string, short bool) {
	if sel := p.opt.AgentSelector; sel != nil {
		p.cands = p.cands[:0]
		p.devMiss = deviceMiss{}
		slotsFit := false
		for _, v := range withDriver {
			if v.fits(r) {
				slotsFit = true
				if d.accept == nil || d.accept(v) {
					p.cands = append(p.cands, Candidate{Agent: v.agent, view: v})
				}
			}
		}
		if len(p.cands) == 0 {
			if slotsFit {
				return nil, p.deviceReason(g, d), true
			}
			return nil, g.shortReason(withDriver, d, r, scanBest(withDriver)), true
		}
		i := sel(d.k, p.cands)
		if i < 0 || i >= len(p.cands) {
			return nil, fmt.Sprintf("the agent selector chose none of the %d agents in resource group %q with room for %s",
				len(p.cands), g.name, d.what()), false
		}
		return p.cands[i].view, "", false
	}
	idx := g.index(d.key)
	if !g.knownToFail(d.key, r) {
		p.devMiss = deviceMiss{}
		if g.cfg.agentSelector == structs.AgentSelectorRoundRobin {
			v = idx.firstAfter(g.cursor, r, d.accept)
		}
		if v == nil {
			v = idx.firstWith(r, d.accept)
		}
		if v != nil {
			return v, "", false
		}
		if p.devMiss.reason != "" {
			// Some agents had room for the slots but not the devices: a
			// request that covers this one may still find devices
			// elsewhere, so the failure is not remembered.
			return nil, p.deviceReason(g, d), true
		}
		if clean {
			g.rememberFailed(d.key, r)
		}
	}
	return nil, g.shortReason(withDriver, d, r, idx.best), true
}

func (p *pass) anyFits(g *groupView, driver string, r request, withDriver []*agentView) bool {
	if p.opt.AgentSelector != nil {
		for _, v := range withDriver {
			if v.fits(r) {
				return true
			}
		}
		return false
	}
	return g.index(driver).first(r) != nil
}

// scanBest finds the agent with the most free room of a slot (the lowest
// ID on ties) by scanning agents, for passes with a custom selector.
func scanBest(agents []*agentView) func(i int) (*agentView, structs.Quantity) {
	return func(i int) (*agentView, structs.Quantity) {
		best := agents[0]
		for _, v := range agents[1:] {
			if v.free(i) > best.free(i) {
				best = v
			}
		}
		return best, best.free(i)
	}
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
	if g != nil && g.drained > 0 {
		msg = fmt.Sprintf("no alive agent open to new sessions in resource group %q (%d drained, %d not ALIVE)", name, g.drained, g.notAlive)
		var names []string
		for _, a := range g.drainedAgents[:min(len(g.drainedAgents), maxAgentsInReason)] {
			names = append(names, agentName(a))
		}
		if len(g.drainedAgents) > maxAgentsInReason {
			names = append(names, fmt.Sprintf("%d more", len(g.drainedAgents)-maxAgentsInReason))
		}
		msg += fmt.Sprintf(": drained %s (corral node eligible ID opens one to new sessions)", strings.Join(names, ", "))
		return msg
	}
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

// noAgentWithAllDriversReason explains a single-node session whose drivers
// (a driverKey of several) are each on some agent of g, but never all on one.
func noAgentWithAllDriversReason(g *groupView, drivers string) string {
	return fmt.Sprintf("no alive agent in resource group %q has all of the %s that the kernels of the single-node session use "+
		"(each is on some agent, never all on one; give the kernels one driver, or make the session multi-node)",
		g.name, driversPhrase(drivers))
}

// driversPhrase writes a driverKey as `driver "exec"` or
// `drivers "exec" and "runc"`.
func driversPhrase(drivers string) string {
	names := strings.Split(drivers, driverSep)
	if len(names) == 1 {
		return fmt.Sprintf("driver %q", names[0])
	}
	quoted := make([]string, len(names))
	for i, n := range names {
		quoted[i] = fmt.Sprintf("%q", n)
	}
	return "drivers " + strings.Join(quoted[:len(quoted)-1], ", ") + " and " + quoted[len(quoted)-1]
}

// maxAgentsInReason bounds how many agents a reason lists.
const maxAgentsInReason = 3

// shortReason explains why no agent of withDriver (non-empty, sorted by ID)
// has room for demand d asking for r: the slots that no agent has enough
// of, with the best free amount of each (best finds it), or else that no
// agent has all of them at once. Many sessions fail in a full group, so it
// writes the text into one builder rather than through fmt.
func shortReason(g *groupView, withDriver []*agentView, d demand, r request,
	best func(i int) (*agentView, structs.Quantity)) string {
	type bestFree struct {
		v *agentView
		q structs.Quantity
	}
	names := withDriver[0].slots.names
	var buf [8]bestFree
	bests := buf[:0]
	short := false
	for j, i := range r.idx {
		v, q := best(i)
		bests = append(bests, bestFree{v, q})
		short = short || q < r.amt[j]
	}
	var b strings.Builder
	b.Grow(200)
	b.WriteString("no agent ")
	if len(withDriver) < len(g.agents) {
		b.WriteString("with ")
		b.WriteString(driversPhrase(d.drivers))
		b.WriteByte(' ')
	}
	b.WriteString("in resource group ")
	b.WriteString(strconv.Quote(g.name))
	together := func() {
		b.WriteString(" has room for all ")
		b.WriteString(strconv.Itoa(d.n))
		b.WriteString(" kernels of the single-node session together: ")
	}
	// list writes the slots j of r that keep accepts, each by slot(j), joined by sep.
	list := func(sep string, keep func(j int) bool, slot func(j int)) {
		first := true
		for j := range r.idx {
			if keep(j) {
				if !first {
					b.WriteString(sep)
				}
				first = false
				slot(j)
			}
		}
	}
	isShort := func(j int) bool { return bests[j].q < r.amt[j] }
	name := func(j int) { b.WriteString(names[r.idx[j]]) }
	need := func(j int) { b.WriteString(g.slotString(names[r.idx[j]], r.amt[j])) }
	if short {
		if d.n > 1 {
			together()
			b.WriteString("not enough free ")
			list(" or ", isShort, name)
			b.WriteString(" (they need ")
			list(" and ", isShort, need)
			b.WriteString(" in all, best free ")
		} else {
			b.WriteString(" has enough free ")
			list(" or ", isShort, name)
			b.WriteString(" (kernel ")
			b.WriteString(kernelName(d.k))
			b.WriteString(" needs ")
			list(" and ", isShort, need)
			b.WriteString(", best free ")
		}
		list(" and ", isShort, func(j int) {
			b.WriteString(g.slotString(names[r.idx[j]], bests[j].q))
			b.WriteString(" on agent ")
			b.WriteString(bests[j].v.agent.ID)
		})
		b.WriteByte(')')
		return b.String()
	}
	// Each slot is free somewhere, but never all on the same agent.
	all := func(int) bool { return true }
	if d.n > 1 {
		together()
		b.WriteString("none has all of their slots free at once (they need ")
		list(" ", all, need)
		b.WriteString(" in all; free: ")
	} else {
		b.WriteString(" has all of the kernel's slots free at once (kernel ")
		b.WriteString(kernelName(d.k))
		b.WriteString(" needs ")
		list(" ", all, need)
		b.WriteString("; free: ")
	}
	for a, v := range withDriver[:min(len(withDriver), maxAgentsInReason)] {
		if a > 0 {
			b.WriteString(", ")
		}
		b.WriteString(v.agent.ID)
		b.WriteString(" has ")
		list(" ", all, func(j int) { b.WriteString(g.slotString(names[r.idx[j]], v.free(r.idx[j]))) })
	}
	if more := len(withDriver) - maxAgentsInReason; more > 0 {
		b.WriteString(", and ")
		b.WriteString(strconv.Itoa(more))
		b.WriteString(" more")
	}
	b.WriteByte(')')
	return b.String()
}

// SplitPlan cuts a plan into plans of at most n session placements each, so
// that one raft apply stays small (a write transaction's cost grows faster
// than its size). Unplaced reasons, attempts and cancels ride with the
// first part. The parts keep the plan's order and snapshot index.
func SplitPlan(p *structs.Plan, n int) []*structs.Plan {
	if n <= 0 || len(p.Placements) <= n {
		return []*structs.Plan{p}
	}
	var parts []*structs.Plan
	for i := 0; i < len(p.Placements); i += n {
		part := &structs.Plan{Placements: p.Placements[i:min(i+n, len(p.Placements))], SnapshotIndex: p.SnapshotIndex}
		if i == 0 {
			part.Unplaced, part.Attempts, part.Cancel = p.Unplaced, p.Attempts, p.Cancel
		}
		parts = append(parts, part)
	}
	return parts
}

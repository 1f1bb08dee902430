package scheduler

import (
	"math/bits"
	"slices"

	"github.com/corral-dev/corral/structs"
)

// agentIndex keeps a set of agents ordered by an agent selector's
// preference (a treap), each subtree knowing the most free room of every
// slot in it. Finding the preferred agent with room for a kernel walks down
// from the root and skips every subtree that lacks room for one of the
// kernel's slots, so a pass does not test every kernel against every agent.
//
// For concentrated and dispersed, the agents are split by the set of slots
// they have room in (their posMask: one treap per set), since an agent's
// rank depends first on how many of those slots a kernel leaves unused; a
// question asks the treap of every set that holds the kernel's slots.
//
// Each node keeps its own copy of its agent's free room, which the order
// and the maxima are computed from. agentView.take only marks the node
// dirty; the index re-sorts its dirty nodes when it is next asked, so an
// agent that changes several times between two questions moves once, and
// an index nobody asks costs nothing.
type agentIndex struct {
	order indexOrder
	prio  []int // slot indices in resource priority order
	nodes []treapNode
	// roots holds one treap per slot set (all in set 0 for orderByID);
	// classes lists the sets that ever had an agent, sorted.
	roots   map[uint64]int32
	classes []uint64
	nslot   int
	// free[n*nslot+i] is node n's copy of its agent's free room of slot i.
	free []structs.Quantity
	// maxFree[n*nslot+i] is the most free room of slot i in the subtree of
	// node n, and maxRank the ID rank of the agent holding it (the lowest
	// on ties); byRank finds that agent.
	maxFree []structs.Quantity
	maxRank []int32
	byRank  map[int32]*agentView
	dirty   []int32
}

// indexOrder is how an index sorts its agents.
type indexOrder uint8

const (
	// orderByID: by agent ID (round robin).
	orderByID indexOrder = iota
	// orderLeastFree: fewest unutilized slots, then least free room in
	// resource priority order, then ID (concentrated). Within one treap
	// the unutilized count is the same for all.
	orderLeastFree
	// orderMostFree: fewest unutilized slots, then most free room in
	// resource priority order, then ID (dispersed).
	orderMostFree
)

type treapNode struct {
	v           *agentView
	left, right int32
	prio        uint32
	rank        int32
	class       uint64 // the treap holding it: its copy of the agent's posMask (0 for orderByID)
	dirty       bool
}

const none int32 = -1

func newAgentIndex(members []*agentView, order indexOrder, prio []int) *agentIndex {
	nslot := 0
	if len(members) > 0 {
		nslot = len(members[0].freeVec)
	}
	t := &agentIndex{
		order: order, prio: prio, nslot: nslot, roots: map[uint64]int32{},
		nodes:   make([]treapNode, len(members)),
		free:    make([]structs.Quantity, len(members)*nslot),
		maxFree: make([]structs.Quantity, len(members)*nslot),
		maxRank: make([]int32, len(members)*nslot),
		byRank:  make(map[int32]*agentView, len(members)),
	}
	// Fixed pseudo-random priorities: the tree's shape never changes what
	// it finds, only how fast.
	seed := uint32(2463534242)
	for i, v := range members {
		seed ^= seed << 13
		seed ^= seed >> 17
		seed ^= seed << 5
		t.nodes[i] = treapNode{v: v, left: none, right: none, prio: seed, rank: v.rank, class: t.classOf(v)}
		copy(t.free[i*nslot:(i+1)*nslot], v.freeVec)
		t.byRank[v.rank] = v
		v.members = append(v.members, membership{idx: t, node: int32(i)})
		t.add(int32(i))
	}
	return t
}

func (t *agentIndex) classOf(v *agentView) uint64 {
	if t.order == orderByID {
		return 0
	}
	return v.posMask
}

// add inserts node n into the treap of its class.
func (t *agentIndex) add(n int32) {
	c := t.nodes[n].class
	root, ok := t.roots[c]
	if !ok {
		root = none
		i, _ := slices.BinarySearch(t.classes, c)
		t.classes = slices.Insert(t.classes, i, c)
	}
	t.roots[c] = t.insert(root, n)
}

// less orders nodes a and b by their copies of the agents' free room.
func (t *agentIndex) less(a, b int32) bool {
	na, nb := &t.nodes[a], &t.nodes[b]
	if t.order != orderByID {
		ns := t.nslot
		fa := t.free[int(a)*ns : int(a)*ns+ns]
		fb := t.free[int(b)*ns : int(b)*ns+ns]
		for _, i := range t.prio {
			if fa[i] != fb[i] {
				if t.order == orderLeastFree {
					return fa[i] < fb[i]
				}
				return fa[i] > fb[i]
			}
		}
	}
	return na.rank < nb.rank
}

// markDirty notes that node n's agent changed its free room.
func (t *agentIndex) markDirty(n int32) {
	if !t.nodes[n].dirty {
		t.nodes[n].dirty = true
		t.dirty = append(t.dirty, n)
	}
}

// sync moves the dirty nodes to their new places.
func (t *agentIndex) sync() {
	ns := t.nslot
	for _, n := range t.dirty {
		nd := &t.nodes[n]
		nd.dirty = false
		copyTo := t.free[int(n)*ns : int(n)*ns+ns]
		if equalQuantities(copyTo, nd.v.freeVec) {
			continue // taken and given back
		}
		t.roots[nd.class] = t.remove(t.roots[nd.class], n)
		copy(copyTo, nd.v.freeVec)
		nd.class = t.classOf(nd.v)
		t.add(n)
	}
	t.dirty = t.dirty[:0]
}

func equalQuantities(a, b []structs.Quantity) bool {
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// pull recomputes node n's subtree maxima from itself and its children.
func (t *agentIndex) pull(n int32) {
	nd := &t.nodes[n]
	ns := t.nslot
	base := int(n) * ns
	maxFree := t.maxFree[base : base+ns : base+ns]
	maxRank := t.maxRank[base : base+ns : base+ns]
	copy(maxFree, t.free[base:base+ns])
	for i := range maxRank {
		maxRank[i] = nd.rank
	}
	for _, c := range [2]int32{nd.left, nd.right} {
		if c == none {
			continue
		}
		cb := int(c) * ns
		cf := t.maxFree[cb : cb+ns : cb+ns]
		cr := t.maxRank[cb : cb+ns : cb+ns]
		for i, q := range cf {
			if q > maxFree[i] || (q == maxFree[i] && cr[i] < maxRank[i]) {
				maxFree[i], maxRank[i] = q, cr[i]
			}
		}
	}
}

func (t *agentIndex) insert(root, x int32) int32 {
	if root == none {
		t.nodes[x].left, t.nodes[x].right = none, none
		t.pull(x)
		return x
	}
	r := &t.nodes[root]
	if t.less(x, root) {
		r.left = t.insert(r.left, x)
		if t.nodes[r.left].prio > r.prio {
			root = t.rotateRight(root)
		}
	} else {
		r.right = t.insert(r.right, x)
		if t.nodes[r.right].prio > r.prio {
			root = t.rotateLeft(root)
		}
	}
	t.pull(root)
	return root
}

func (t *agentIndex) rotateRight(n int32) int32 {
	l := t.nodes[n].left
	t.nodes[n].left = t.nodes[l].right
	t.nodes[l].right = n
	t.pull(n)
	return l
}

func (t *agentIndex) rotateLeft(n int32) int32 {
	r := t.nodes[n].right
	t.nodes[n].right = t.nodes[r].left
	t.nodes[r].left = n
	t.pull(n)
	return r
}

// remove unlinks node x, found by its copy of the free room.
func (t *agentIndex) remove(root, x int32) int32 {
	if root == none {
		return none
	}
	if root == x {
		return t.merge(t.nodes[x].left, t.nodes[x].right)
	}
	r := &t.nodes[root]
	if t.less(x, root) {
		r.left = t.remove(r.left, x)
	} else {
		r.right = t.remove(r.right, x)
	}
	t.pull(root)
	return root
}

func (t *agentIndex) merge(a, b int32) int32 {
	if a == none {
		return b
	}
	if b == none {
		return a
	}
	if t.nodes[a].prio > t.nodes[b].prio {
		t.nodes[a].right = t.merge(t.nodes[a].right, b)
		t.pull(a)
		return a
	}
	t.nodes[b].left = t.merge(a, t.nodes[b].left)
	t.pull(b)
	return b
}

// mayFit reports whether some agent of n's subtree has room for each slot
// of r on its own (not necessarily all on the same agent).
func (t *agentIndex) mayFit(n int32, r request) bool {
	base := int(n) * t.nslot
	for j, i := range r.idx {
		if t.maxFree[base+i] < r.amt[j] {
			return false
		}
	}
	return true
}

// fits reports whether node n's agent has room for r.
func (t *agentIndex) fits(n int32, r request) bool {
	base := int(n) * t.nslot
	for j, i := range r.idx {
		if t.free[base+i] < r.amt[j] {
			return false
		}
	}
	return true
}

// mayFitAny reports whether each slot of r is free enough on some agent
// of one treap: when not, no agent has room for r.
func (t *agentIndex) mayFitAny(r request) bool {
	t.sync()
	for _, c := range t.classes {
		if root := t.roots[c]; root != none && t.mayFit(root, r) {
			return true
		}
	}
	return false
}

// accept, when not nil, is a further test an agent with room for a request
// must pass (the kernel's GPU devices, devices.go); it must be pure during
// one question.
type accept func(v *agentView) bool

// first returns the first agent in the index's order with room for r, or nil.
func (t *agentIndex) first(r request) *agentView { return t.firstWith(r, nil) }

// firstWith is first among the agents that ok accepts (nil: all).
func (t *agentIndex) firstWith(r request, ok accept) *agentView {
	t.sync()
	if t.order == orderByID {
		if n := t.firstIn(t.roots[0], r, ok); n != none {
			return t.nodes[n].v
		}
		return nil
	}
	best, bestU := none, 0
	for _, c := range t.classes {
		if c&r.mask != r.mask {
			continue // some slot r asks for is used up on all of them
		}
		u := bits.OnesCount64(c &^ r.mask)
		if best != none && u > bestU {
			continue
		}
		n := t.firstIn(t.roots[c], r, ok)
		if n != none && (best == none || u < bestU || t.less(n, best)) {
			best, bestU = n, u
		}
	}
	if best == none {
		return nil
	}
	return t.nodes[best].v
}

func (t *agentIndex) firstIn(n int32, r request, ok accept) int32 {
	for n != none {
		if !t.mayFit(n, r) {
			return none
		}
		nd := &t.nodes[n]
		if found := t.firstIn(nd.left, r, ok); found != none {
			return found
		}
		if t.fits(n, r) && (ok == nil || ok(nd.v)) {
			return n
		}
		n = nd.right
	}
	return none
}

// firstAfter returns the first agent with room for r whose ID sorts after
// id, and that ok accepts (nil: all), or nil; the index must be ordered by
// agent ID (round robin).
func (t *agentIndex) firstAfter(id string, r request, ok accept) *agentView {
	t.sync()
	if n := t.firstAfterIn(t.roots[0], id, r, ok); n != none {
		return t.nodes[n].v
	}
	return nil
}

func (t *agentIndex) firstAfterIn(n int32, id string, r request, ok accept) int32 {
	for n != none {
		if !t.mayFit(n, r) {
			return none
		}
		nd := &t.nodes[n]
		if nd.v.agent.ID <= id {
			n = nd.right
			continue
		}
		if found := t.firstAfterIn(nd.left, id, r, ok); found != none {
			return found
		}
		if t.fits(n, r) && (ok == nil || ok(nd.v)) {
			return n
		}
		// Everything to the right sorts after id.
		return t.firstIn(nd.right, r, ok)
	}
	return none
}

// best returns the agent with the most free room of slot i (the lowest ID
// on ties) and that amount; the index must not be empty.
func (t *agentIndex) best(i int) (*agentView, structs.Quantity) {
	t.sync()
	var q structs.Quantity
	rank := int32(-1)
	for _, c := range t.classes {
		root := t.roots[c]
		if root == none {
			continue
		}
		b := int(root)*t.nslot + i
		if rank < 0 || t.maxFree[b] > q || (t.maxFree[b] == q && t.maxRank[b] < rank) {
			q, rank = t.maxFree[b], t.maxRank[b]
		}
	}
	return t.byRank[rank], q
}

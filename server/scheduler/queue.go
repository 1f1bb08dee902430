package scheduler

import (
	"cmp"
	"container/heap"
	"strings"

	"github.com/corral-dev/corral/structs"
)

// Session selectors. A pass splits each resource group's pending sessions
// by Session.Priority, highest first, and hands each priority level to the
// group's session selector, which decides the order within the level:
//
//   - fifo: creation order (Session.CreateIndex, then ID). With
//     NumRetriesToSkip = N > 0, the first session of the group that finds
//     no agents while its ScheduleAttempts (failed passes before this one)
//     is below N becomes the head of line: every session after it in the
//     group (the rest of its priority level and all lower levels) stays
//     PENDING for the rest of the pass with the reason "waiting behind
//     session <head>...", without being tried or counting an attempt. So a
//     session blocks the queue during its first N failed passes, and from
//     the pass after its N-th failure on it is skipped like any other (until
//     it is placed). Only finding no agents makes a head: a session held
//     back by its own key's policy limits, its start time or its
//     dependencies never blocks others, since the room it leaves is not
//     what it waits for. N = 0 never blocks (Backend.AI's default).
//   - lifo: the reverse of fifo: the newest session first; no blocking.
//   - drf: dominant resource fairness: the next session is the oldest one
//     of the access key whose dominant share is the lowest; a key's dominant
//     share is the largest, over the slots the group's ALIVE agents have,
//     of (what the key occupies + what this pass placed for it) / (the
//     group's total capacity). Ties go to the older session (FIFO). The key's
//     occupancy is its KeyUsage.Occupied over all groups, so a key heavy in
//     one group also waits longer in another. No blocking.

// sessionQueue hands out one priority level of one group's sessions in the
// order a session selector takes them.
type sessionQueue interface {
	// next returns the next session to try, or nil when none is left.
	next() *item
	// placed tells the queue that the session next returned last was placed.
	placed(it *item)
}

// fifoOrder sorts items oldest first: create index, then ID.
func fifoOrder(a, b *item) int {
	if a.createIndex != b.createIndex {
		return cmp.Compare(a.createIndex, b.createIndex)
	}
	return strings.Compare(a.sess.ID, b.sess.ID)
}

// queueOrder sorts items by group, by priority (highest first), then FIFO.
func queueOrder(a, b *item) int {
	if a.grank != b.grank {
		return cmp.Compare(a.grank, b.grank)
	}
	if a.priority != b.priority {
		return cmp.Compare(b.priority, a.priority)
	}
	return fifoOrder(a, b)
}

// fifoQueue takes items in the order given (already FIFO).
type fifoQueue struct {
	items []*item
	i     int
}

func (q *fifoQueue) next() *item {
	if q.i >= len(q.items) {
		return nil
	}
	q.i++
	return q.items[q.i-1]
}

func (q *fifoQueue) placed(*item) {}

// lifoQueue takes items newest first.
type lifoQueue struct {
	items []*item // FIFO order
	i     int     // how many were handed out
}

func (q *lifoQueue) next() *item {
	if q.i >= len(q.items) {
		return nil
	}
	q.i++
	return q.items[len(q.items)-q.i]
}

func (q *lifoQueue) placed(*item) {}

// drfQueue takes, each time, the oldest session of the key with the
// lowest dominant share.
type drfQueue struct {
	h     drfHeap
	share func(key string) float64
	last  *drfKey
}

type drfKey struct {
	key   string
	items []*item // FIFO order, not yet handed out
	share float64
	pos   int
}

type drfHeap []*drfKey

func (h drfHeap) Len() int { return len(h) }
func (h drfHeap) Less(i, j int) bool {
	if h[i].share != h[j].share {
		return h[i].share < h[j].share
	}
	return fifoOrder(h[i].items[0], h[j].items[0]) < 0
}
func (h drfHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].pos, h[j].pos = i, j
}
func (h *drfHeap) Push(x any) { k := x.(*drfKey); k.pos = len(*h); *h = append(*h, k) }
func (h *drfHeap) Pop() any {
	old := *h
	k := old[len(old)-1]
	*h = old[:len(old)-1]
	return k
}

func newDRFQueue(items []*item, share func(key string) float64) *drfQueue {
	q := &drfQueue{share: share}
	byKey := map[string]*drfKey{}
	for _, it := range items {
		k := byKey[it.sess.AccessKey]
		if k == nil {
			k = &drfKey{key: it.sess.AccessKey, share: share(it.sess.AccessKey)}
			byKey[it.sess.AccessKey] = k
			q.h = append(q.h, k)
		}
		k.items = append(k.items, it)
	}
	for i, k := range q.h {
		k.pos = i
	}
	heap.Init(&q.h)
	return q
}

func (q *drfQueue) next() *item {
	if q.last != nil {
		// The last key's head was handed out: drop it and re-sort the key.
		q.last.items = q.last.items[1:]
		if len(q.last.items) == 0 {
			heap.Remove(&q.h, q.last.pos)
		} else {
			heap.Fix(&q.h, q.last.pos)
		}
		q.last = nil
	}
	if len(q.h) == 0 {
		return nil
	}
	q.last = q.h[0]
	return q.last.items[0]
}

func (q *drfQueue) placed(it *item) {
	if q.last != nil && q.last.key == it.sess.AccessKey {
		q.last.share = q.share(it.sess.AccessKey)
	}
}

// dominantShare is a key's DRF share in a group: the largest, over the
// slots the group has, of occupied / capacity.
func dominantShare(capacity structs.Slots, occupied, pass structs.Slots) float64 {
	share := 0.0
	for name, c := range capacity {
		if c <= 0 {
			continue
		}
		if s := float64(occupied[name]+pass[name]) / float64(c); s > share {
			share = s
		}
	}
	return share
}

// priorityLevels splits items (sorted by queueOrder, one group) into runs
// of equal priority, highest first.
func priorityLevels(items []*item) [][]*item {
	var out [][]*item
	for len(items) > 0 {
		n := 1
		for n < len(items) && items[n].sess.Priority == items[0].sess.Priority {
			n++
		}
		out = append(out, items[:n])
		items = items[n:]
	}
	return out
}

// newQueue returns the session selector's queue for one priority level.
func (p *pass) newQueue(g *groupView, level []*item) sessionQueue {
	switch g.cfg.sessionSelector {
	case structs.SelectorLIFO:
		return &lifoQueue{items: level}
	case structs.SelectorDRF:
		return newDRFQueue(level, func(key string) float64 {
			ks := p.key(key)
			var occ structs.Slots
			if ks.usage != nil {
				occ = ks.usage.Occupied
			}
			return dominantShare(g.capacity, occ, ks.passOccupied)
		})
	default:
		return &fifoQueue{items: level}
	}
}

package state

import (
	"cmp"
	"slices"

	"github.com/corral-dev/corral/structs"
)

// Tables whose rows a Change can name.
const (
	TableSessions = tableSessions
	TableKernels  = tableKernels
	TableAgents   = tableAgents
	// TableEndpoints: inference endpoints (*structs.Endpoint).
	TableEndpoints = tableEndpoints
)

// Change is one session, kernel or agent row that a committed transaction
// wrote or deleted: what the event stream (server/events.go) and the
// metrics derived from transitions are made of.
type Change struct {
	// Table is TableSessions, TableKernels, TableAgents or TableEndpoints.
	Table string
	// Key is the row's ID.
	Key string
	// Owner is the user the session (or the kernel's session, or the
	// endpoint) belongs to; empty for agents.
	Owner string
	// Deleted is set when the row was removed (session GC).
	Deleted bool
	// Obj is the row as committed (*structs.Session, *structs.Kernel,
	// *structs.Agent or *structs.Endpoint); for a deletion, the row as it was. Stored rows are
	// never changed in place, so it may be read after the commit.
	Obj any
	// Prev is the row before this transaction (nil for a new row).
	Prev any
}

// CommitHook receives, after each committed transaction, the raft index
// it applied at and the session, kernel and agent rows it changed. It runs
// on the FSM's goroutine: it must not block.
type CommitHook func(index uint64, changes []Change)

// SetCommitHook installs the hook (nil removes it). Set it before the FSM
// applies anything.
func (s *StateStore) SetCommitHook(h CommitHook) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hook = h
}

func (s *StateStore) commitHook() CommitHook {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hook
}

// changes lists what the writer wrote, for the commit hook; prev rows are
// read from the state the transaction started from.
func (w *writer) changes() []Change {
	n := len(w.sessions) + len(w.kernels) + len(w.agents) + len(w.deleted)
	if n == 0 {
		return nil
	}
	out := make([]Change, 0, n)
	prev := func(table, id string) any {
		raw, err := w.base.First(table, "id", id)
		if err != nil {
			return nil
		}
		return raw
	}
	owners := map[string]string{}
	for id, s := range w.sessions {
		owners[id] = s.Owner
		out = append(out, Change{Table: tableSessions, Key: id, Owner: s.Owner, Obj: s, Prev: prev(tableSessions, id)})
	}
	for id, k := range w.kernels {
		owner, ok := owners[k.SessionID]
		if !ok {
			if s, err := w.snap().Session(nil, k.SessionID); err == nil {
				owner = s.Owner
			}
			owners[k.SessionID] = owner
		}
		out = append(out, Change{Table: tableKernels, Key: id, Owner: owner, Obj: k, Prev: prev(tableKernels, id)})
	}
	for id, a := range w.agents {
		out = append(out, Change{Table: tableAgents, Key: id, Obj: a, Prev: prev(tableAgents, id)})
	}
	out = append(out, w.deleted...)
	// One order on every server: table, then key.
	slices.SortFunc(out, func(a, b Change) int {
		return cmp.Or(cmp.Compare(a.Table, b.Table), cmp.Compare(a.Key, b.Key))
	})
	return out
}

// EachSession calls fn with every session, in no particular order,
// without building a list (the metrics' scrape-time counts).
func (sn *Snapshot) EachSession(fn func(*structs.Session)) error {
	it, err := sn.txn.Get(tableSessions, "id")
	if err != nil {
		return err
	}
	for raw := it.Next(); raw != nil; raw = it.Next() {
		fn(raw.(*structs.Session))
	}
	return nil
}

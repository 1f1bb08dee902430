package state

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/go-memdb"

	"github.com/corral-dev/corral/structs"
)

// ErrNotFound is returned when a session, kernel or agent does not exist.
var ErrNotFound = errors.New("not found")

// ErrAmbiguous is returned when a session reference matches several sessions.
var ErrAmbiguous = errors.New("ambiguous reference")

// ErrForbidden is wrapped by a change the caller's key may not make (a
// driver its policy does not allow).
var ErrForbidden = errors.New("forbidden")

// ErrInUse is wrapped by a delete of something that is still in use (a
// user with sessions that have not ended, a policy keys name); the error
// says what uses it.
var ErrInUse = errors.New("in use")

// StateStore holds the FSM's tables. Writes happen only from the FSM.
type StateStore struct {
	mu      sync.Mutex // guards abandon across restores
	db      atomic.Pointer[memdb.MemDB]
	abandon chan struct{}
	hook    CommitHook // guarded by mu; see SetCommitHook
}

// New returns an empty state store.
func New() (*StateStore, error) {
	db, err := memdb.NewMemDB(schema())
	if err != nil {
		return nil, fmt.Errorf("state schema: %w", err)
	}
	s := &StateStore{abandon: make(chan struct{})}
	s.db.Store(db)
	return s, nil
}

// Snapshot is a consistent, read-only view of the state at one point in time.
type Snapshot struct {
	txn *memdb.Txn
	// w, in a writer's snapshot, answers look-ups by ID (see writer).
	w *writer
}

// Snapshot returns a point-in-time read view.
func (s *StateStore) Snapshot() *Snapshot {
	return &Snapshot{txn: s.db.Load().Txn(false)}
}

// AbandonCh is closed when the whole store is replaced by a raft restore;
// watchers then start over on a fresh snapshot.
func (s *StateStore) AbandonCh() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.abandon
}

// Index returns the raft index at which the named table ("sessions",
// "kernels", "agents", "users", "keys", "policies", "groups", "usage") last
// changed, or the latest of all with "".
func (sn *Snapshot) Index(table string) uint64 {
	if table == "" {
		var max uint64
		for _, t := range []string{tableSessions, tableKernels, tableAgents, tableUsers, tableKeys, tablePolicies, tableGroups, tableUsage} {
			if v := sn.Index(t); v > max {
				max = v
			}
		}
		return max
	}
	raw, err := sn.txn.First(tableIndex, "id", table)
	if err != nil || raw == nil {
		return 0
	}
	return raw.(*indexEntry).Value
}

// WatchTables adds to ws a watch that fires when any of the named tables
// changes.
func (sn *Snapshot) WatchTables(ws memdb.WatchSet, tables ...string) {
	if ws == nil {
		return
	}
	for _, t := range tables {
		if ch, _, err := sn.txn.FirstWatch(tableIndex, "id", t); err == nil {
			ws.Add(ch)
		}
	}
}

// Session returns one session by exact ID, registering a watch in ws.
func (sn *Snapshot) Session(ws memdb.WatchSet, id string) (*structs.Session, error) {
	var written map[string]*structs.Session
	if sn.w != nil {
		written = sn.w.sessions
	}
	s, err := byID(sn, ws, tableSessions, id, written)
	if err == nil && s == nil {
		err = fmt.Errorf("session %q: %w", id, ErrNotFound)
	}
	return s, err
}

// byID looks a row up by ID, registering a watch in ws; nil when there is
// none. In a writer's snapshot, without a watch, it answers from the rows
// the writer wrote, else from the state the writer started from: a read
// through memdb's write transaction would clone the index's transaction
// and drop its cache of copied nodes, so that the next write copies the
// index path from the root again.
func byID[T any](sn *Snapshot, ws memdb.WatchSet, table, id string, written map[string]T) (T, error) {
	var zero T
	txn := sn.txn
	if sn.w != nil && ws == nil {
		if v, ok := written[id]; ok {
			return v, nil
		}
		txn = sn.w.base
	}
	ch, raw, err := txn.FirstWatch(table, "id", id)
	if err != nil {
		return zero, err
	}
	ws.Add(ch)
	if raw == nil {
		return zero, nil
	}
	return raw.(T), nil
}

// ResolveSession finds a session by ID, unique ID prefix or name among
// all sessions (see ResolveSessionOf).
func (sn *Snapshot) ResolveSession(ws memdb.WatchSet, ref string) (*structs.Session, error) {
	return sn.ResolveSessionOf(ws, ref, "")
}

// ResolveSessionOf finds a session by ID, name or unique ID prefix among
// the sessions of owner (every session when owner is empty): a name or a
// prefix never resolves to another user's session, and an ambiguous
// prefix names only the owner's matches. Among sessions of one name, the
// newest live one wins, else the newest.
func (sn *Snapshot) ResolveSessionOf(ws memdb.WatchSet, ref, owner string) (*structs.Session, error) {
	if ref == "" {
		return nil, fmt.Errorf("empty session reference: %w", ErrNotFound)
	}
	mine := func(s *structs.Session) bool { return owner == "" || s.Owner == owner }
	if s, err := sn.Session(ws, ref); err == nil && mine(s) {
		return s, nil
	}
	// By name.
	it, err := sn.txn.Get(tableSessions, "name", ref)
	if err != nil {
		return nil, err
	}
	var byName []*structs.Session
	for raw := it.Next(); raw != nil; raw = it.Next() {
		if s := raw.(*structs.Session); mine(s) {
			byName = append(byName, s)
		}
	}
	if len(byName) > 0 {
		sort.Slice(byName, func(i, j int) bool { return byName[i].CreateIndex > byName[j].CreateIndex })
		for _, s := range byName {
			if !s.Status.Terminal() {
				return sn.Session(ws, s.ID)
			}
		}
		return sn.Session(ws, byName[0].ID)
	}
	// By unique ID prefix.
	it, err = sn.txn.Get(tableSessions, "id_prefix", ref)
	if err != nil {
		return nil, err
	}
	var matches []string
	for raw := it.Next(); raw != nil; raw = it.Next() {
		if s := raw.(*structs.Session); mine(s) {
			matches = append(matches, s.ID)
			if len(matches) > 5 {
				break
			}
		}
	}
	switch len(matches) {
	case 0:
		return nil, fmt.Errorf("no session with ID, ID prefix or name %q: %w", ref, ErrNotFound)
	case 1:
		return sn.Session(ws, matches[0])
	default:
		return nil, fmt.Errorf("%q matches several sessions (%s...): give more of the ID: %w", ref, strings.Join(matches[:2], ", "), ErrAmbiguous)
	}
}

// Sessions lists sessions, optionally only those in one status, in
// creation order. The PENDING ones come from their index; another status
// is a scan of the table.
func (sn *Snapshot) Sessions(ws memdb.WatchSet, status string) ([]*structs.Session, error) {
	var it memdb.ResultIterator
	var err error
	if status == string(structs.SessionPending) {
		it, err = sn.txn.Get(tableSessions, "pending", status)
	} else {
		it, err = sn.txn.Get(tableSessions, "id")
	}
	if err != nil {
		return nil, err
	}
	if ws != nil {
		ws.Add(it.WatchCh())
	}
	var out []*structs.Session
	for raw := it.Next(); raw != nil; raw = it.Next() {
		if s := raw.(*structs.Session); status == "" || string(s.Status) == status {
			out = append(out, s)
		}
	}
	slices.SortFunc(out, func(a, b *structs.Session) int {
		if c := cmp.Compare(a.CreateIndex, b.CreateIndex); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out, nil
}

// Kernel returns one kernel by ID.
func (sn *Snapshot) Kernel(id string) (*structs.Kernel, error) {
	k, err := sn.kernel(nil, id)
	if err != nil {
		return nil, err
	}
	if k == nil {
		return nil, fmt.Errorf("kernel %q: %w", id, ErrNotFound)
	}
	return k, nil
}

// kernel returns one kernel by ID, nil when there is none.
func (sn *Snapshot) kernel(ws memdb.WatchSet, id string) (*structs.Kernel, error) {
	var written map[string]*structs.Kernel
	if sn.w != nil {
		written = sn.w.kernels
	}
	return byID(sn, ws, tableKernels, id, written)
}

// KernelsBySession returns a session's kernels in role order (main1,
// sub1, ...): those of its kernel IDs (the kernels of an earlier attempt
// of a re-queued session carry a session ID of their own and are not
// among them). None when the session does not exist.
func (sn *Snapshot) KernelsBySession(ws memdb.WatchSet, sessionID string) ([]*structs.Kernel, error) {
	ch, raw, err := sn.txn.FirstWatch(tableSessions, "id", sessionID)
	if err != nil {
		return nil, err
	}
	if ws != nil {
		ws.Add(ch)
	}
	if raw == nil {
		return nil, nil
	}
	return sn.kernelsOf(ws, raw.(*structs.Session))
}

// kernelsOf is KernelsBySession for a session already read. There is no
// kernels-by-session index: the session lists its kernels, so a kernel's
// change writes one index less.
func (sn *Snapshot) kernelsOf(ws memdb.WatchSet, sess *structs.Session) ([]*structs.Kernel, error) {
	out := make([]*structs.Kernel, 0, len(sess.KernelIDs))
	for _, id := range sess.KernelIDs {
		k, err := sn.kernel(ws, id)
		if err != nil {
			return nil, err
		}
		if k != nil && k.SessionID == sess.ID {
			out = append(out, k)
		}
	}
	sortKernels(out)
	return out, nil
}

// KernelsByAgent returns the kernels placed on an agent.
func (sn *Snapshot) KernelsByAgent(ws memdb.WatchSet, agentID string) ([]*structs.Kernel, error) {
	out, err := watchedList[*structs.Kernel](sn.txn, ws, tableKernels, "agent", agentID)
	if err != nil {
		return nil, err
	}
	sortKernels(out)
	return out, nil
}

// Kernels returns every kernel.
func (sn *Snapshot) Kernels() ([]*structs.Kernel, error) {
	it, err := sn.txn.Get(tableKernels, "id")
	if err != nil {
		return nil, err
	}
	var out []*structs.Kernel
	for raw := it.Next(); raw != nil; raw = it.Next() {
		out = append(out, raw.(*structs.Kernel))
	}
	return out, nil
}

// Agent returns one agent by ID.
func (sn *Snapshot) Agent(ws memdb.WatchSet, id string) (*structs.Agent, error) {
	var written map[string]*structs.Agent
	if sn.w != nil {
		written = sn.w.agents
	}
	a, err := byID(sn, ws, tableAgents, id, written)
	if err == nil && a == nil {
		err = fmt.Errorf("agent %q: %w", id, ErrNotFound)
	}
	return a, err
}

// ResolveAgent finds an agent by ID, unique ID prefix or name.
func (sn *Snapshot) ResolveAgent(ref string) (*structs.Agent, error) {
	if a, err := sn.Agent(nil, ref); err == nil {
		return a, nil
	}
	agents, err := sn.Agents(nil)
	if err != nil {
		return nil, err
	}
	var found []*structs.Agent
	for _, a := range agents {
		if a.Name == ref || strings.HasPrefix(a.ID, ref) {
			found = append(found, a)
		}
	}
	switch len(found) {
	case 0:
		return nil, fmt.Errorf("no agent with ID, ID prefix or name %q: %w", ref, ErrNotFound)
	case 1:
		return found[0], nil
	}
	return nil, fmt.Errorf("%q matches %d agents: give more of the ID: %w", ref, len(found), ErrAmbiguous)
}

// Agents lists all agents by ID.
func (sn *Snapshot) Agents(ws memdb.WatchSet) ([]*structs.Agent, error) {
	return watchedList[*structs.Agent](sn.txn, ws, tableAgents, "id")
}

// sortKernels orders kernels main first, then sub, then extra roles by
// name, each by index and ID (structs.CompareKernels).
func sortKernels(ks []*structs.Kernel) {
	if len(ks) < 2 {
		return
	}
	slices.SortFunc(ks, structs.CompareKernels)
}

package state

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/go-memdb"

	"github.com/corral-dev/corral/server/scheduler"
	"github.com/corral-dev/corral/structs"
)

// writer wraps one write transaction and the raft index it applies at.
//
// Its snapshot (snap) reads one session, kernel, agent or key usage by ID
// from what this transaction wrote (sessions, kernels, agents, usage) or
// else from base, the state the transaction started from: the same answer
// as reading the transaction itself, which memdb answers from a clone of
// the index's write transaction, dropping that transaction's cache of
// nodes it already copied. A read between two writes of one table then
// made the next write copy the index's whole path again, from the root:
// most of a plan's apply. Listings still read the transaction. This holds
// because every write of those tables goes through putSession, putKernel,
// putAgent and ownUsage, and none deletes their rows (GCSessions, which
// does, reads through the transaction itself).
type writer struct {
	txn   *memdb.Txn
	base  *memdb.Txn
	index uint64
	dirty map[string]bool
	// usage holds the key usages this transaction already copied and
	// inserted: later changes in the same transaction edit them in place
	// instead of copying a concurrency set per kernel.
	usage map[string]*structs.KeyUsage
	// agents holds the agents this transaction inserted, private to it
	// until it commits: later changes in it edit them in place.
	agents map[string]*structs.Agent
	// sessions and kernels hold those this transaction inserted.
	sessions map[string]*structs.Session
	kernels  map[string]*structs.Kernel
	// policies and groups cache the configuration a plan's re-check
	// reads once per session; only ApplyPlan fills them, and it never
	// changes keys, policies or groups.
	policies map[string]*structs.ResourcePolicy
	groups   map[string]*structs.ResourceGroup
	// store and deleted feed the commit hook (changes.go): deleted lists
	// the rows this transaction removed, and the endpoint rows it wrote
	// (endpoints are written whole, once per transaction).
	store   *StateStore
	deleted []Change
}

func (s *StateStore) write(index uint64) *writer {
	db := s.db.Load()
	txn := db.Txn(true)
	// Taken under the write lock the transaction holds: no commit between.
	base := db.Txn(false)
	return &writer{store: s, txn: txn, base: base, index: index, dirty: map[string]bool{},
		usage: map[string]*structs.KeyUsage{}, agents: map[string]*structs.Agent{},
		sessions: map[string]*structs.Session{}, kernels: map[string]*structs.Kernel{}}
}

func (w *writer) commit() error {
	for table := range w.dirty {
		if err := w.txn.Insert(tableIndex, &indexEntry{Key: table, Value: w.index}); err != nil {
			w.txn.Abort()
			return err
		}
	}
	w.txn.Commit()
	if w.store != nil {
		if h := w.store.commitHook(); h != nil {
			if ch := w.changes(); len(ch) > 0 {
				h(w.index, ch)
			}
		}
	}
	return nil
}

func (w *writer) putSession(s *structs.Session) error {
	s.ModifyIndex = w.index
	if len(s.History) > structs.MaxHistory {
		s.History = append(s.History[:1:1], s.History[len(s.History)-structs.MaxHistory+1:]...)
	}
	w.dirty[tableSessions] = true
	if err := w.txn.Insert(tableSessions, s); err != nil {
		return err
	}
	w.sessions[s.ID] = s
	return nil
}

func (w *writer) putKernel(k *structs.Kernel) error {
	k.ModifyIndex = w.index
	if len(k.History) > structs.MaxHistory {
		k.History = append(k.History[:1:1], k.History[len(k.History)-structs.MaxHistory+1:]...)
	}
	w.dirty[tableKernels] = true
	if err := w.txn.Insert(tableKernels, k); err != nil {
		return err
	}
	w.kernels[k.ID] = k
	return nil
}

func (w *writer) putAgent(a *structs.Agent) error {
	a.ModifyIndex = w.index
	w.dirty[tableAgents] = true
	if err := w.txn.Insert(tableAgents, a); err != nil {
		return err
	}
	w.agents[a.ID] = a
	return nil
}

func (w *writer) snap() *Snapshot { return &Snapshot{txn: w.txn, w: w} }

// keyPolicy is sn.KeyPolicy, read once per key and transaction.
func (w *writer) keyPolicy(sn *Snapshot, key string) *structs.ResourcePolicy {
	if p, ok := w.policies[key]; ok {
		return p
	}
	p := sn.KeyPolicy(key)
	if w.policies == nil {
		w.policies = map[string]*structs.ResourcePolicy{}
	}
	w.policies[key] = p
	return p
}

// group is sn.Group (nil when not configured), read once per group and
// transaction.
func (w *writer) group(sn *Snapshot, name string) *structs.ResourceGroup {
	if g, ok := w.groups[name]; ok {
		return g
	}
	g, err := sn.Group(name)
	if err != nil {
		g = nil
	}
	if w.groups == nil {
		w.groups = map[string]*structs.ResourceGroup{}
	}
	w.groups[name] = g
	return g
}

// ownAgent returns the agent as a copy private to this transaction,
// already inserted into the table (like ownUsage), so that placing many
// sessions on one agent in one plan copies and indexes it once.
func (w *writer) ownAgent(id string) (*structs.Agent, error) {
	if a, ok := w.agents[id]; ok {
		return a, nil
	}
	cur, err := w.snap().Agent(nil, id)
	if err != nil {
		return nil, err
	}
	return w.ownAgentOf(cur)
}

// ownAgentOf is ownAgent for an agent just read in this transaction.
func (w *writer) ownAgentOf(cur *structs.Agent) (*structs.Agent, error) {
	if a, ok := w.agents[cur.ID]; ok {
		return a, nil
	}
	// Only the occupancy and the GPU holders are the copy's own: the
	// driver list, capacity and GPU inventory are shared with the stored
	// version, which nothing changes in place.
	a := *cur
	a.Occupied = cur.Occupied.Copy()
	a.GPUHolders = maps.Clone(cur.GPUHolders)
	if err := w.putAgent(&a); err != nil {
		return nil, err
	}
	return &a, nil
}

// EnqueueSession inserts a new PENDING session and its kernels.
func (s *StateStore) EnqueueSession(index uint64, req *structs.SessionEnqueueRequest) error {
	w := s.write(index)
	defer w.txn.Abort()
	if dup, err := w.claimIdempotency(req); err != nil || dup {
		return err // a replayed create enqueues nothing
	}
	if existing, _ := w.snap().Session(nil, req.Session.ID); existing != nil {
		return fmt.Errorf("session %s already exists", req.Session.ID)
	}
	// The drivers a key may use, checked where the policy in force is the
	// one of this point of the log (the API checked it too).
	if req.Session.AccessKey != "" {
		key, _ := w.snap().Key(req.Session.AccessKey)
		pol := w.snap().KeyPolicy(req.Session.AccessKey)
		for _, k := range req.Kernels {
			if err := structs.DriverAllowed(key, pol, k.Driver); err != nil {
				return fmt.Errorf("%w: %v", ErrForbidden, err)
			}
		}
	}
	// max_pending_sessions, checked where concurrent creates are serialized.
	if pol := w.snap().KeyPolicy(req.Session.AccessKey); pol != nil && pol.MaxPendingSessions > 0 {
		pending, err := w.snap().Sessions(nil, string(structs.SessionPending))
		if err != nil {
			return err
		}
		n := 0
		for _, p := range pending {
			if p.AccessKey == req.Session.AccessKey {
				n++
			}
		}
		if err := scheduler.CheckPendingLimit(pol, n); err != nil {
			return err
		}
	}
	sess := req.Session.Copy()
	sess.CreateIndex = index
	sess.Status = structs.SessionPending
	sess.Result = structs.ResultUndefined
	sess.KernelIDs = nil
	sess.History = []structs.StatusChange{{Status: string(structs.SessionPending), Info: "enqueued", Time: req.Time}}
	sess.StatusInfo = "enqueued"
	for _, k := range req.Kernels {
		kc := k.Copy()
		kc.SessionID = sess.ID
		kc.CreateIndex = index
		kc.Status = structs.KernelPending
		kc.AgentID = ""
		kc.GPUs = nil // chosen when placed, never by the request
		kc.History = []structs.StatusChange{{Status: string(structs.KernelPending), Info: "enqueued", Time: req.Time}}
		sess.KernelIDs = append(sess.KernelIDs, kc.ID)
		if err := w.putKernel(kc); err != nil {
			return err
		}
	}
	if err := w.putSession(sess); err != nil {
		return err
	}
	return w.commit()
}

// ApplyPlan re-checks each session placement of a plan against the latest
// state and applies those that still fit, all kernels of a session or none.
// Agents' occupied slots and the keys' usage change in the same
// transaction. It then cancels the plan's Cancel sessions that are still
// PENDING and records the reasons and attempts of the unplaced ones.
func (s *StateStore) ApplyPlan(index uint64, req *structs.PlanApplyRequest) (*structs.PlanResult, error) {
	w := s.write(index)
	defer w.txn.Abort()
	res := &structs.PlanResult{Rejected: map[string]string{}}
	// Room for every session and kernel the plan may write.
	n := len(req.Plan.Placements) + len(req.Plan.Unplaced) + len(req.Plan.Attempts) + len(req.Plan.Cancel)
	w.sessions = make(map[string]*structs.Session, n)
	w.kernels = make(map[string]*structs.Kernel, len(req.Plan.Placements)+len(req.Plan.Cancel))
	sn := w.snap()
	for _, sp := range req.Plan.Placements {
		if err := w.placeSession(sn, sp, req.Time); err != nil {
			res.Rejected[sp.SessionID] = err.Error()
			continue
		}
		res.Applied = append(res.Applied, sp.SessionID)
	}
	for _, id := range sortedKeys(req.Plan.Cancel) {
		sess, err := sn.Session(nil, id)
		if err != nil || sess.Status != structs.SessionPending {
			continue // placed, cancelled or gone meanwhile
		}
		if err := w.endSession(sn, sess, "cancelled: "+req.Plan.Cancel[id], req.Time); err != nil {
			return nil, err
		}
		res.Cancelled = append(res.Cancelled, id)
	}
	for id, reason := range req.Plan.Unplaced {
		attempts, counted := req.Plan.Attempts[id]
		if req.Plan.Attempts == nil {
			attempts, counted = -1, true // older plans: count on a new reason
		}
		if err := w.recordPending(sn, id, reason, attempts, counted, req.Time); err != nil {
			return nil, err
		}
	}
	for id, attempts := range req.Plan.Attempts {
		if _, ok := req.Plan.Unplaced[id]; !ok {
			if err := w.recordPending(sn, id, "", attempts, true, req.Time); err != nil {
				return nil, err
			}
		}
	}
	if err := w.commit(); err != nil {
		return nil, err
	}
	return res, nil
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func (w *writer) placeSession(sn *Snapshot, sp structs.SessionPlacement, now time.Time) error {
	sess, err := sn.Session(nil, sp.SessionID)
	if err != nil {
		return err
	}
	if sess.Status != structs.SessionPending {
		return fmt.Errorf("session is %s, no longer PENDING", sess.Status)
	}
	kernels, err := sn.kernelsOf(nil, sess)
	if err != nil {
		return err
	}
	if len(sp.Placements) != len(kernels) {
		return fmt.Errorf("plan places %d of the session's %d kernels", len(sp.Placements), len(kernels))
	}
	// What the session asks for in all (read only: a single kernel's own
	// slots need no copy).
	var req structs.Slots
	if len(kernels) == 1 {
		req = kernels[0].Resources
	} else {
		req = structs.Slots{}
		for _, k := range kernels {
			addSlots(req, k.Resources)
		}
	}
	// The key's limits against its latest usage: a plan computed on an
	// older snapshot, or by another worker, never pushes a key over them.
	if err := scheduler.CheckKeyLimits(w.keyPolicy(sn, sess.AccessKey), sn.Usage(sess.AccessKey), sess.ID, req); err != nil {
		return err
	}
	// The group's cap against what its sessions hold now.
	if g := w.group(sn, groupOf(sess.ResourceGroup)); g != nil && len(g.TotalResourceSlots) > 0 {
		if r := scheduler.GroupLimitReason(g.Name, g.TotalResourceSlots, sn.GroupUsage(g.Name), req); r != "" {
			return errors.New(r)
		}
	}
	if sess.SingleNode() && len(sp.Placements) > 1 {
		for _, p := range sp.Placements[1:] {
			if p.AgentID != sp.Placements[0].AgentID {
				return fmt.Errorf("single-node session placed on several agents (%s and %s)", sp.Placements[0].AgentID, p.AgentID)
			}
		}
	}
	// Check every kernel against the latest agents before changing
	// anything. targets[i] is where placement i goes; several kernels on
	// one agent share a target, whose add sums them.
	type target struct {
		a   *structs.Agent
		add structs.Slots
		// taken holds the devices chosen for the kernels of this plan
		// placed on the agent so far: the next kernel gets others.
		taken map[string]bool
	}
	targets := make([]*target, len(sp.Placements))
	placed := make([]*structs.Kernel, len(sp.Placements))
	// The devices chosen for each placement, and what its kernel occupies:
	// its request plus the memory of its whole GPUs as cuda.mem.
	gpus := make([][]string, len(sp.Placements))
	holds := make([]structs.Slots, len(sp.Placements))
	for i, p := range sp.Placements {
		k := kernelByID(kernels, p.KernelID)
		if k == nil {
			return fmt.Errorf("kernel %s is not part of the session", p.KernelID)
		}
		for _, q := range placed[:i] {
			if q == k {
				return fmt.Errorf("plan places kernel %s twice", k.Hostname)
			}
		}
		placed[i] = k
		if k.Status != structs.KernelPending {
			return fmt.Errorf("kernel %s is %s, no longer PENDING", k.Hostname, k.Status)
		}
		var t *target
		for j, q := range sp.Placements[:i] {
			if q.AgentID == p.AgentID {
				t = targets[j]
				break
			}
		}
		if t == nil {
			cur, err := sn.Agent(nil, p.AgentID)
			if err != nil {
				return err
			}
			t = &target{a: cur}
		}
		targets[i] = t
		occupied := t.a.Occupied
		if t.add != nil {
			occupied = t.a.Occupied.Add(t.add)
		}
		if err := scheduler.CheckPlacementInGroup(t.a, sess.ResourceGroup, occupied, k); err != nil {
			return err
		}
		// The kernel's devices, against the agent's latest holders and
		// those chosen for the plan's earlier kernels there: two kernels
		// never get one device.
		uuids, mem, err := scheduler.ChooseDevices(t.a, k.Resources, k.GPUConstraint, t.taken)
		if err != nil {
			return fmt.Errorf("kernel %s on agent %s: %v", k.Hostname, t.a.ID, err)
		}
		gpus[i], holds[i] = uuids, k.Resources
		if _, stale := k.Resources[structs.SlotCUDAMem]; mem > 0 || stale {
			// cuda.mem is never asked for: it is what the devices have.
			holds[i] = k.Resources.Copy()
			delete(holds[i], structs.SlotCUDAMem)
			if mem > 0 {
				holds[i][structs.SlotCUDAMem] = mem
			}
		}
		if len(uuids) > 0 && t.taken == nil {
			t.taken = map[string]bool{}
		}
		for _, u := range uuids {
			t.taken[u] = true
		}
		if t.add == nil {
			t.add = structs.Slots{}
		}
		addSlots(t.add, holds[i])
	}
	for _, t := range targets {
		if t.add == nil {
			continue // applied with an earlier placement on the same agent
		}
		a, err := w.ownAgentOf(t.a)
		if err != nil {
			return err
		}
		a.Occupied = addSlots(a.Occupied, t.add)
		a.UpdatedAt = now
		t.a, t.add = a, nil
	}
	for i, p := range sp.Placements {
		if len(gpus[i]) == 0 {
			continue
		}
		a := targets[i].a // this transaction's copy
		if a.GPUHolders == nil {
			a.GPUHolders = map[string]string{}
		}
		for _, u := range gpus[i] {
			a.GPUHolders[u] = p.KernelID
		}
	}
	c := editSession(sess)
	// A session of several kernels gets its overlay in the same apply.
	var nets map[string]*structs.KernelNetwork
	var launches map[string]*structs.ClusterLaunch
	if len(kernels) > 1 {
		nw, err := w.allocNetwork(sess.ID)
		if err != nil {
			return err
		}
		agentOf := map[string]*structs.Agent{}
		for i, p := range sp.Placements {
			agentOf[p.KernelID] = targets[i].a
		}
		if nets, err = kernelNetworks(nw, kernels, agentOf); err != nil {
			return err
		}
		if launches, err = clusterLaunches(sess, nw, kernels, nets, agentOf, w.snap().hostSSHPorts); err != nil {
			return err
		}
		c.Network = nw
	}
	for i, p := range sp.Placements {
		k := editKernel(placed[i])
		k.GPUs = gpus[i]
		k.Resources = holds[i]
		if err := w.occupy(sess.AccessKey, sess.ID, k.Resources); err != nil {
			return err
		}
		if err := w.occupy(groupUsageKey(sess.ResourceGroup), sess.ID, k.Resources); err != nil {
			return err
		}
		k.AgentID = p.AgentID
		k.Network = nets[k.ID]
		k.Launch = launches[k.ID]
		k.Cpuset = ""
		if err := k.SetStatus(structs.KernelScheduled, "placed on agent "+targets[i].a.Name, now); err != nil {
			return err
		}
		if err := w.putKernel(k); err != nil {
			return err
		}
	}
	// Every kernel went from PENDING to SCHEDULED: so does the session.
	if err := c.SetStatus(structs.SessionScheduled, "scheduled", now); err != nil {
		return err
	}
	return w.putSession(c)
}

// kernelByID finds a kernel of a session's list.
func kernelByID(kernels []*structs.Kernel, id string) *structs.Kernel {
	for _, k := range kernels {
		if k.ID == id {
			return k
		}
	}
	return nil
}

// addSlots adds o into s in place and returns s (a new map when s is
// nil); s must be private to the caller.
func addSlots(s, o structs.Slots) structs.Slots {
	if s == nil {
		s = make(structs.Slots, len(o))
	}
	for k, v := range o {
		s[k] += v
	}
	return s
}

// editSession returns a copy of a stored session for a status change:
// only its history is copied (with room for one more entry); the parts
// a status change never edits (kernel IDs, dependencies, network) are
// shared with the stored version, which nothing changes in place.
func editSession(s *structs.Session) *structs.Session {
	c := *s
	c.History = append(make([]structs.StatusChange, 0, len(s.History)+1), s.History...)
	return &c
}

// editKernel is editSession for a kernel: its command, environment and
// resources are shared with the stored version.
func editKernel(k *structs.Kernel) *structs.Kernel {
	c := *k
	c.History = append(make([]structs.StatusChange, 0, len(k.History)+1), k.History...)
	return &c
}

// recordPending records why a PENDING session stays so (reason "": keep
// it) and, when counted, its schedule attempts (-1: one more when the
// reason changes, as plans before Plan.Attempts did).
func (w *writer) recordPending(sn *Snapshot, id, reason string, attempts int, counted bool, now time.Time) error {
	sess, err := sn.Session(nil, id)
	if err != nil || sess.Status != structs.SessionPending {
		return nil // placed or gone meanwhile
	}
	newReason := reason != "" && sess.StatusInfo != reason
	if attempts < 0 {
		attempts = sess.ScheduleAttempts
		if newReason {
			attempts++
		}
	}
	if !counted {
		attempts = sess.ScheduleAttempts
	}
	if !newReason && attempts == sess.ScheduleAttempts {
		return nil
	}
	c := editSession(sess)
	c.ScheduleAttempts = attempts
	if newReason {
		if err := c.SetStatus(structs.SessionPending, reason, now); err != nil {
			return err
		}
	}
	return w.putSession(c)
}

// refreshSession recomputes a session's status from its kernels, sets its
// result when main1 has ended, and stores it with a new modify index.
func (w *writer) refreshSession(id, info string, now time.Time) error {
	sn := w.snap()
	if strings.Contains(id, supersededMark) {
		return nil // a kernel of an earlier attempt: the session moved on
	}
	sess, err := sn.Session(nil, id)
	if err != nil {
		return err
	}
	kernels, err := sn.kernelsOf(nil, sess)
	if err != nil {
		return err
	}
	c := sess.Copy()
	cluster := len(kernels) > 1
	if cluster && c.EndReason != "" {
		// The event that decided the session names it, whatever the
		// other kernels report as they stop.
		info = c.EndReason
	}
	statuses := make([]structs.KernelStatus, 0, len(kernels))
	for _, k := range kernels {
		st := k.Status
		if cluster && c.FailOn == structs.FailOnMain && !isMain1(k) && st == structs.KernelError && everRan(k) {
			// Under fail_on main a sub kernel that failed after it ran
			// decides nothing: the session follows main1.
			st = structs.KernelTerminated
		}
		statuses = append(statuses, st)
		if k.Role == "main" && k.Idx == 1 && c.Type == structs.SessionTypeBatch &&
			c.Result == structs.ResultUndefined && k.Status.Terminal() && k.Status != structs.KernelCancelled {
			if k.Status == structs.KernelTerminated && k.ExitCode != nil && *k.ExitCode == 0 {
				c.Result = structs.ResultSuccess
			} else {
				c.Result = structs.ResultFailure
			}
		}
	}
	derived := structs.DeriveSessionStatus(statuses)
	if degraded(c, kernels) {
		derived = structs.SessionRunningDegraded
	}
	if derived != c.Status {
		// A move the session table refuses (ERROR back to RUNNING when one
		// of several kernels is cleaned up) keeps the session where it is:
		// the kernels' own changes still apply.
		_ = c.SetStatus(derived, info, now)
	}
	if c.Status.Terminal() && !sess.Status.Terminal() {
		// The session leaves its key's concurrency set in the same apply.
		if err := w.release(c.AccessKey, c.ID, nil, true); err != nil {
			return err
		}
		if err := w.release(groupUsageKey(c.ResourceGroup), c.ID, nil, true); err != nil {
			return err
		}
		// Its overlay slot too; the record keeps the VNI and subnet it had.
		if err := w.freeNetwork(c.Network); err != nil {
			return err
		}
	}
	return w.putSession(c)
}

// degraded reports whether an interactive cluster session runs on with a
// sub kernel gone: main1 still RUNNING, the session RUNNING (or already
// degraded), and a sub kernel ended.
func degraded(sess *structs.Session, kernels []*structs.Kernel) bool {
	if !sess.Type.LongRunning() || len(kernels) < 2 ||
		(sess.Status != structs.SessionRunning && sess.Status != structs.SessionRunningDegraded) {
		return false
	}
	mainUp, subGone := false, false
	for _, k := range kernels {
		if k.Role == "main" && k.Idx == 1 {
			mainUp = k.Status == structs.KernelRunning
		} else if k.Status.Terminal() {
			subGone = true
		}
	}
	return mainUp && subGone
}

// setSessionInfo updates a live session's status info in place.
func (w *writer) setSessionInfo(id, info string) error {
	sess, err := w.snap().Session(nil, id)
	if err != nil || sess.Status.Terminal() {
		return err
	}
	if sess.EndReason != "" {
		return nil // ending: the status line names why
	}
	c := sess.Copy()
	c.StatusInfo = info
	return w.putSession(c)
}

// UpdateKernels applies status changes reported by an agent. Changes that
// the transition table refuses, or that come from an agent the kernel is not
// placed on, are skipped and reported in the returned map (kernel ID → why).
func (s *StateStore) UpdateKernels(index uint64, req *structs.KernelUpdateRequest) (map[string]string, error) {
	w := s.write(index)
	defer w.txn.Abort()
	skipped := map[string]string{}
	touched := map[string]string{}
	// ends holds, per session, the kernels that ended on their own in
	// this batch (not stopped by the server), by kernel ID.
	ends := map[string]map[string]*kernelEnd{}
	var last time.Time
	for _, u := range req.Updates {
		sn := w.snap()
		cur, err := sn.Kernel(u.KernelID)
		if err != nil {
			skipped[u.KernelID] = err.Error()
			continue
		}
		if cur.AgentID != req.AgentID {
			skipped[u.KernelID] = fmt.Sprintf("kernel is placed on agent %q, not %q", cur.AgentID, req.AgentID)
			continue
		}
		k := cur.Copy()
		if k.Status == u.Status {
			// Progress within a status (bytes pulled): a new reason, no new
			// history entry.
			newCpuset := u.Cpuset != "" && u.Cpuset != k.Cpuset && !k.Status.Terminal()
			if (u.Info == "" || u.Info == k.StatusInfo || k.Status.Terminal()) && !newCpuset {
				continue
			}
			if newCpuset {
				k.Cpuset = u.Cpuset
			}
			if u.Info == "" || u.Info == k.StatusInfo || k.Status.Terminal() {
				if err := w.putKernel(k); err != nil {
					return nil, err
				}
				continue
			}
			k.StatusInfo = u.Info
			if err := w.putKernel(k); err != nil {
				return nil, err
			}
			if err := w.setSessionInfo(k.SessionID, u.Info); err != nil {
				return nil, err
			}
			continue
		}
		if err := k.SetStatus(u.Status, u.Info, u.Time); err != nil {
			skipped[u.KernelID] = err.Error()
			continue
		}
		if u.ExitCode != nil {
			v := *u.ExitCode
			k.ExitCode = &v
		}
		if u.Cpuset != "" {
			k.Cpuset = u.Cpuset
		}
		if len(u.ImagePorts) > 0 {
			k.ImagePorts = u.ImagePorts
		}
		if err := w.releaseIfEnded(cur, k, u.Time); err != nil {
			return nil, err
		}
		if err := w.putKernel(k); err != nil {
			return nil, err
		}
		info := u.Info
		if info == "" {
			info = fmt.Sprintf("kernel %s %s", k.Hostname, k.Status)
		}
		touched[k.SessionID] = info
		if e := ownEnd(cur, k); e != nil {
			if ends[k.SessionID] == nil {
				ends[k.SessionID] = map[string]*kernelEnd{}
			}
			ends[k.SessionID][k.ID] = e
		}
		last = u.Time
	}
	for _, id := range sortedKeys(touched) {
		info := touched[id]
		if err := w.judgeEnds(id, ends[id], last); err != nil {
			return nil, err
		}
		if err := w.stopAfterMain(id, last); err != nil {
			return nil, err
		}
		if err := w.refreshSession(id, info, last); err != nil {
			return nil, err
		}
	}
	return skipped, w.commit()
}

// releaseIfEnded frees a kernel's slots on its agent when the kernel moves
// from holding them to not holding them.
func (w *writer) releaseIfEnded(before, after *structs.Kernel, now time.Time) error {
	if !before.HoldsSlots() || after.HoldsSlots() {
		return nil
	}
	a, err := w.ownAgent(before.AgentID)
	if err != nil {
		return fmt.Errorf("kernel %s holds slots on unknown agent %s", before.ID, before.AgentID)
	}
	occ := a.Occupied.Sub(before.Resources)
	if occ.AnyNegative() {
		return fmt.Errorf("agent %s occupancy would go negative releasing kernel %s", a.ID, before.ID)
	}
	a.Occupied = occ
	a.UpdatedAt = now
	// Its devices are free again (a.GPUHolders is this transaction's copy).
	for _, u := range before.GPUs {
		if a.GPUHolders[u] == before.ID {
			delete(a.GPUHolders, u)
		}
	}
	if sess, err := w.snap().Session(nil, before.SessionID); err == nil {
		if err := w.release(sess.AccessKey, sess.ID, before.Resources, false); err != nil {
			return err
		}
		if err := w.release(groupUsageKey(sess.ResourceGroup), sess.ID, before.Resources, false); err != nil {
			return err
		}
	}
	return nil
}

// UpsertAgent registers an agent or refreshes its inventory. The agent's
// occupied slots are the store's own and never taken from the request.
func (s *StateStore) UpsertAgent(index uint64, req *structs.AgentUpsertRequest) error {
	w := s.write(index)
	defer w.txn.Abort()
	a := req.Agent.Copy()
	if a.ResourceGroup == "" {
		a.ResourceGroup = structs.DefaultResourceGroup
	}
	// Which kernel holds which device is the store's own, as the
	// occupancy: never taken from the agent.
	a.GPUHolders = nil
	if cur, err := w.snap().Agent(nil, a.ID); err == nil {
		a.Occupied = cur.Occupied.Copy()
		a.GPUHolders = maps.Clone(cur.GPUHolders)
		a.CreateIndex = cur.CreateIndex
		a.RegisteredAt = cur.RegisteredAt
		// Draining is the operator's, not the agent's: a re-registration
		// (reconnect, restart) keeps it.
		a.Drain = cur.Drain
		if a.RPCAddr == "" {
			a.RPCAddr = cur.RPCAddr
		}
		if a.SerfAddr == "" {
			a.SerfAddr = cur.SerfAddr
		}
		// No drivers keeps those recorded, unless the agent says that
		// all of its drivers are unhealthy: then it offers none.
		if len(a.Drivers) == 0 && len(a.UnhealthyDrivers) == 0 {
			a.Drivers = cur.Drivers
		}
		if len(a.Capacity) == 0 {
			a.Capacity = cur.Capacity.Copy()
			// Nor its GPU inventory, which its capacity counts.
			if a.GPUs == nil {
				a.GPUs = cur.GPUs.Copy()
			}
		}
		if a.Status == "" {
			a.Status = cur.Status
		}
	} else {
		a.Occupied = structs.Slots{}
		a.CreateIndex = index
		a.RegisteredAt = req.Time
	}
	if a.Status == "" {
		a.Status = structs.AgentAlive
	}
	a.UpdatedAt = req.Time
	if err := w.putAgent(a); err != nil {
		return err
	}
	return w.commit()
}

// SetAgentStatus changes an agent's liveness.
func (s *StateStore) SetAgentStatus(index uint64, req *structs.AgentStatusRequest) error {
	w := s.write(index)
	defer w.txn.Abort()
	cur, err := w.snap().Agent(nil, req.AgentID)
	if err != nil {
		return err
	}
	if cur.Status == req.Status && cur.StatusInfo == req.Info {
		return nil
	}
	a, err := w.ownAgent(req.AgentID)
	if err != nil {
		return err
	}
	a.Status = req.Status
	a.StatusInfo = req.Info
	a.UpdatedAt = req.Time
	switch req.Status {
	case structs.AgentDisconnected:
		// The grace period counts from the first disconnection, not from
		// a later change of the reason.
		if cur.Status != structs.AgentDisconnected {
			a.DisconnectedAt = req.Time
		}
	case structs.AgentLost, structs.AgentTerminated:
		if err := w.agentGone(a, req.Info, req.Time, nil); err != nil {
			return err
		}
	}
	if req.Status == structs.AgentAlive {
		a.DisconnectedAt = time.Time{}
	}
	return w.commit()
}

// KernelsLost gives up the listed sessions' kernels on a DISCONNECTED
// agent (their own grace period ran out before the agent's); the agent
// keeps its status. On an agent that is ALIVE again it does nothing: the
// agent came back in time.
func (s *StateStore) KernelsLost(index uint64, req *structs.KernelsLostRequest) error {
	w := s.write(index)
	defer w.txn.Abort()
	a, err := w.snap().Agent(nil, req.AgentID)
	if err != nil {
		return err
	}
	if a.Status != structs.AgentDisconnected {
		return nil
	}
	only := map[string]bool{}
	for _, id := range req.SessionIDs {
		only[id] = true
	}
	if err := w.agentGone(a, req.Info, req.Time, only); err != nil {
		return err
	}
	return w.commit()
}

// DestroySession cancels a session's PENDING kernels and asks the agents to
// terminate the placed ones (TERMINATING); kernels on agents that are not
// alive end at once.
func (s *StateStore) DestroySession(index uint64, req *structs.SessionDestroyRequest) error {
	w := s.write(index)
	defer w.txn.Abort()
	sn := w.snap()
	sess, err := sn.Session(nil, req.SessionID)
	if err != nil {
		return err
	}
	if sess.Status.Terminal() {
		return nil
	}
	if err := w.endSession(sn, sess, req.Reason, req.Time); err != nil {
		return err
	}
	return w.commit()
}

// endSession cancels the session's PENDING kernels, moves its placed ones
// to TERMINATING (or TERMINATED on agents that are not alive) and derives
// the session's status.
func (w *writer) endSession(sn *Snapshot, sess *structs.Session, reason string, now time.Time) error {
	kernels, err := sn.kernelsOf(nil, sess)
	if err != nil {
		return err
	}
	if len(kernels) > 1 && sess.EndReason == "" {
		c := sess.Copy()
		c.EndReason = reason
		if err := w.putSession(c); err != nil {
			return err
		}
	}
	if err := w.stopKernels(sn, kernels, nil, reason, now); err != nil {
		return err
	}
	return w.refreshSession(sess.ID, reason, now)
}

// stopKernels ends every live kernel of the list except skip.
func (w *writer) stopKernels(sn *Snapshot, kernels []*structs.Kernel, skip *structs.Kernel, reason string, now time.Time) error {
	for _, cur := range kernels {
		if skip != nil && cur.ID == skip.ID {
			continue
		}
		k := cur.Copy()
		var to structs.KernelStatus
		switch {
		case k.Status.Terminal() || k.Status == structs.KernelTerminating:
			continue
		case k.Status == structs.KernelPending:
			to = structs.KernelCancelled
		default:
			to = structs.KernelTerminating
			// On a DISCONNECTED agent the kernel may still run: it stays
			// TERMINATING, holding its slots, until the agent comes back
			// and stops it or is declared LOST.
			if a, err := sn.Agent(nil, k.AgentID); err != nil || !a.Status.Reachable() {
				to = structs.KernelTerminated
			}
		}
		if err := k.SetStatus(to, reason, now); err != nil {
			return err
		}
		if err := w.releaseIfEnded(cur, k, now); err != nil {
			return err
		}
		if err := w.putKernel(k); err != nil {
			return err
		}
	}
	return nil
}

// stopAfterMain ends the other kernels of a session whose main1 has ended:
// a batch session's result is main1's, and in any session the sub kernels
// have nothing left to serve.
func (w *writer) stopAfterMain(id string, now time.Time) error {
	sn := w.snap()
	if strings.Contains(id, supersededMark) {
		return nil
	}
	sess, err := sn.Session(nil, id)
	if err != nil || sess.Status.Terminal() {
		return err
	}
	kernels, err := sn.kernelsOf(nil, sess)
	if err != nil || len(kernels) < 2 {
		return err
	}
	for _, k := range kernels {
		if isMain1(k) {
			if !k.Status.Terminal() {
				return nil
			}
			reason := fmt.Sprintf("main1 ended (%s)", k.Status)
			if sess.EndReason != "" {
				reason = "stopped: " + sess.EndReason
			}
			return w.stopKernels(sn, kernels, k, reason, now)
		}
	}
	return nil
}

// groupOf names a session's resource group ("" is the default group).
func groupOf(g string) string {
	if g == "" {
		return structs.DefaultResourceGroup
	}
	return g
}

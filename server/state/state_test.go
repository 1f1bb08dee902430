package state

import (
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/corral-dev/corral/server/scheduler"
	"github.com/corral-dev/corral/structs"
)

var t0 = time.Date(2026, 11, 22, 8, 0, 0, 0, time.UTC)

func slots(cpu, memMiB int64) structs.Slots {
	return structs.Slots{structs.SlotCPU: structs.Whole(cpu), structs.SlotMem: structs.Whole(memMiB << 20)}
}

type fixture struct {
	t     *testing.T
	s     *StateStore
	index uint64
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	s, err := New()
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{t: t, s: s}
}

func (f *fixture) next() uint64 { f.index++; return f.index }

func (f *fixture) agent(id string, capacity structs.Slots) {
	f.t.Helper()
	a := &structs.Agent{ID: id, Name: id, Status: structs.AgentAlive, Drivers: []string{"exec"}, Capacity: capacity}
	if err := f.s.UpsertAgent(f.next(), &structs.AgentUpsertRequest{Agent: a, Time: t0}); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) session(id string, typ structs.SessionType, res structs.Slots) {
	f.t.Helper()
	sess := &structs.Session{ID: id, Name: "n-" + id, Type: typ, ResourceGroup: structs.DefaultResourceGroup}
	k := &structs.Kernel{ID: id + "-k", SessionID: id, Role: "main", Idx: 1, Hostname: "main1", Driver: "exec", Command: []string{"true"}, Resources: res}
	if err := f.s.EnqueueSession(f.next(), &structs.SessionEnqueueRequest{Session: sess, Kernels: []*structs.Kernel{k}, Time: t0}); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) place(sessionID, agentID string) *structs.PlanResult {
	f.t.Helper()
	plan := &structs.Plan{Placements: []structs.SessionPlacement{{SessionID: sessionID, Placements: []structs.Placement{{KernelID: sessionID + "-k", AgentID: agentID}}}}}
	res, err := f.s.ApplyPlan(f.next(), &structs.PlanApplyRequest{Plan: plan, Time: t0})
	if err != nil {
		f.t.Fatal(err)
	}
	return res
}

func (f *fixture) update(agentID, kernelID string, st structs.KernelStatus, code *int) map[string]string {
	f.t.Helper()
	skipped, err := f.s.UpdateKernels(f.next(), &structs.KernelUpdateRequest{AgentID: agentID, Updates: []*structs.KernelUpdate{{KernelID: kernelID, Status: st, ExitCode: code, Time: t0}}})
	if err != nil {
		f.t.Fatal(err)
	}
	return skipped
}

func (f *fixture) sess(id string) *structs.Session {
	f.t.Helper()
	s, err := f.s.Snapshot().Session(nil, id)
	if err != nil {
		f.t.Fatal(err)
	}
	return s
}

func (f *fixture) occupied(agentID string) structs.Slots {
	f.t.Helper()
	a, err := f.s.Snapshot().Agent(nil, agentID)
	if err != nil {
		f.t.Fatal(err)
	}
	return a.Occupied
}

func intp(v int) *int { return &v }

func TestBatchLifecycleOccupancyAndResult(t *testing.T) {
	for _, tc := range []struct {
		name   string
		code   int
		result structs.SessionResult
	}{{"success", 0, structs.ResultSuccess}, {"failure", 3, structs.ResultFailure}} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			f.agent("a1", slots(2, 1024))
			f.session("s1", structs.SessionTypeBatch, slots(1, 256))
			if res := f.place("s1", "a1"); len(res.Applied) != 1 {
				t.Fatalf("plan not applied: %+v", res)
			}
			if got := f.sess("s1").Status; got != structs.SessionScheduled {
				t.Fatalf("status %s, want SCHEDULED", got)
			}
			if !f.occupied("a1").Equal(slots(1, 256)) {
				t.Fatalf("occupied %v after placement", f.occupied("a1"))
			}
			f.update("a1", "s1-k", structs.KernelPreparing, nil)
			f.update("a1", "s1-k", structs.KernelRunning, nil)
			if got := f.sess("s1").Status; got != structs.SessionRunning {
				t.Fatalf("status %s, want RUNNING", got)
			}
			f.update("a1", "s1-k", structs.KernelTerminated, intp(tc.code))
			s := f.sess("s1")
			if s.Status != structs.SessionTerminated || s.Result != tc.result {
				t.Fatalf("got %s/%s, want TERMINATED/%s", s.Status, s.Result, tc.result)
			}
			if len(f.occupied("a1")) != 0 {
				t.Fatalf("slots not freed: %v", f.occupied("a1"))
			}
			var seen []string
			for _, h := range s.History {
				seen = append(seen, h.Status)
			}
			want := []string{"PENDING", "SCHEDULED", "PREPARING", "RUNNING", "TERMINATED"}
			if len(seen) != len(want) {
				t.Fatalf("history %v, want %v", seen, want)
			}
			for i := range want {
				if seen[i] != want[i] {
					t.Fatalf("history %v, want %v", seen, want)
				}
			}
		})
	}
}

func TestPlanRecheckRejectsOverfullAgent(t *testing.T) {
	f := newFixture(t)
	f.agent("a1", slots(2, 1024))
	f.session("s1", structs.SessionTypeBatch, slots(2, 256))
	f.session("s2", structs.SessionTypeBatch, slots(1, 256))
	if res := f.place("s1", "a1"); len(res.Applied) != 1 {
		t.Fatalf("first plan: %+v", res)
	}
	// A stale plan computed before s1 was placed must not oversubscribe.
	res := f.place("s2", "a1")
	if len(res.Applied) != 0 || res.Rejected["s2"] == "" {
		t.Fatalf("stale plan applied: %+v", res)
	}
	if got := f.sess("s2").Status; got != structs.SessionPending {
		t.Fatalf("s2 is %s, want PENDING", got)
	}
	if !f.occupied("a1").Equal(slots(2, 256)) {
		t.Fatalf("occupied %v", f.occupied("a1"))
	}
	// Placing the same session twice is refused too.
	if res := f.place("s1", "a1"); len(res.Applied) != 0 {
		t.Fatalf("double placement applied: %+v", res)
	}
}

func TestIllegalAndForeignUpdatesAreSkipped(t *testing.T) {
	f := newFixture(t)
	f.agent("a1", slots(2, 1024))
	f.agent("a2", slots(2, 1024))
	f.session("s1", structs.SessionTypeBatch, slots(1, 256))
	f.place("s1", "a1")
	if skipped := f.update("a2", "s1-k", structs.KernelRunning, nil); skipped["s1-k"] == "" {
		t.Fatal("update from the wrong agent was not skipped")
	}
	f.update("a1", "s1-k", structs.KernelTerminated, intp(0))
	skipped := f.update("a1", "s1-k", structs.KernelRunning, nil)
	if skipped["s1-k"] == "" {
		t.Fatal("TERMINATED -> RUNNING was not refused")
	}
	k, _ := f.s.Snapshot().Kernel("s1-k")
	if k.Status != structs.KernelTerminated {
		t.Fatalf("kernel is %s after a refused update", k.Status)
	}
	if len(f.occupied("a1")) != 0 {
		t.Fatalf("occupancy changed by a refused update: %v", f.occupied("a1"))
	}
}

func TestDestroy(t *testing.T) {
	f := newFixture(t)
	f.agent("a1", slots(2, 1024))
	f.session("pending", structs.SessionTypeInteractive, slots(1, 256))
	f.session("running", structs.SessionTypeInteractive, slots(1, 256))
	f.place("running", "a1")
	f.update("a1", "running-k", structs.KernelRunning, nil)

	if err := f.s.DestroySession(f.next(), &structs.SessionDestroyRequest{SessionID: "pending", Reason: "destroyed by user", Time: t0}); err != nil {
		t.Fatal(err)
	}
	if s := f.sess("pending"); s.Status != structs.SessionCancelled || s.StatusInfo != "destroyed by user" {
		t.Fatalf("pending session: %s %q", s.Status, s.StatusInfo)
	}
	if err := f.s.DestroySession(f.next(), &structs.SessionDestroyRequest{SessionID: "running", Reason: "destroyed by user", Time: t0}); err != nil {
		t.Fatal(err)
	}
	if s := f.sess("running"); s.Status != structs.SessionTerminating {
		t.Fatalf("running session: %s", s.Status)
	}
	if len(f.occupied("a1")) == 0 {
		t.Fatal("slots freed before the agent confirmed termination")
	}
	f.update("a1", "running-k", structs.KernelTerminated, intp(143))
	if s := f.sess("running"); s.Status != structs.SessionTerminated || s.Result != structs.ResultUndefined {
		t.Fatalf("running session after stop: %s/%s", s.Status, s.Result)
	}
	if len(f.occupied("a1")) != 0 {
		t.Fatalf("slots not freed: %v", f.occupied("a1"))
	}
}

func TestResolveSession(t *testing.T) {
	f := newFixture(t)
	f.session("abc123", structs.SessionTypeBatch, slots(1, 256))
	f.session("abd456", structs.SessionTypeBatch, slots(1, 256))
	snap := f.s.Snapshot()
	for ref, want := range map[string]string{"abc123": "abc123", "abc": "abc123", "n-abd456": "abd456"} {
		s, err := snap.ResolveSession(nil, ref)
		if err != nil || s.ID != want {
			t.Errorf("resolve %q = %v, %v; want %s", ref, s, err, want)
		}
	}
	if _, err := snap.ResolveSession(nil, "ab"); !errors.Is(err, ErrAmbiguous) {
		t.Errorf("ambiguous prefix: %v", err)
	}
	if _, err := snap.ResolveSession(nil, "zzz"); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown: %v", err)
	}
}

func TestDumpRestoreRoundTrip(t *testing.T) {
	f := newFixture(t)
	f.agent("a1", slots(2, 1024))
	f.session("s1", structs.SessionTypeBatch, slots(1, 256))
	f.place("s1", "a1")
	d, err := f.s.Snapshot().Dump()
	if err != nil {
		t.Fatal(err)
	}
	abandon := f.s.AbandonCh()
	s2, _ := New()
	if err := s2.Restore(d); err != nil {
		t.Fatal(err)
	}
	if err := f.s.Restore(d); err != nil {
		t.Fatal(err)
	}
	select {
	case <-abandon:
	default:
		t.Fatal("restore did not close the abandon channel")
	}
	for _, s := range []*StateStore{s2, f.s} {
		snap := s.Snapshot()
		sess, err := snap.Session(nil, "s1")
		if err != nil || sess.Status != structs.SessionScheduled {
			t.Fatalf("restored session: %v %v", sess, err)
		}
		a, _ := snap.Agent(nil, "a1")
		if !a.Occupied.Equal(slots(1, 256)) {
			t.Fatalf("restored occupancy %v", a.Occupied)
		}
		if snap.Index("sessions") != d.Index["sessions"] {
			t.Fatalf("restored index %d", snap.Index("sessions"))
		}
	}
}

func TestKeyUsageFollowsTransitions(t *testing.T) {
	f := newFixture(t)
	f.agent("a1", slots(4, 4096))
	for _, id := range []string{"s1", "s2"} {
		sess := &structs.Session{ID: id, Type: structs.SessionTypeBatch, ResourceGroup: structs.DefaultResourceGroup, AccessKey: "AK"}
		k := &structs.Kernel{ID: id + "-k", SessionID: id, Role: "main", Idx: 1, Hostname: "main1", Driver: "exec", Command: []string{"true"}, Resources: slots(1, 256)}
		if err := f.s.EnqueueSession(f.next(), &structs.SessionEnqueueRequest{Session: sess, Kernels: []*structs.Kernel{k}, Time: t0}); err != nil {
			t.Fatal(err)
		}
	}
	if u := f.s.Snapshot().Usage("AK"); len(u.Sessions) != 0 {
		t.Fatalf("pending sessions counted: %+v", u)
	}
	f.place("s1", "a1")
	f.place("s2", "a1")
	// A plan retried for an already placed session never counts twice.
	f.place("s1", "a1")
	u := f.s.Snapshot().Usage("AK")
	if len(u.Sessions) != 2 || !u.Occupied.Equal(slots(2, 512)) {
		t.Fatalf("usage after placement: %+v", u)
	}
	f.update("a1", "s1-k", structs.KernelTerminated, intp(0))
	u = f.s.Snapshot().Usage("AK")
	if len(u.Sessions) != 1 || !u.Sessions["s2"] || !u.Occupied.Equal(slots(1, 256)) {
		t.Fatalf("usage after s1 ended: %+v", u)
	}
	if err := f.s.DestroySession(f.next(), &structs.SessionDestroyRequest{SessionID: "s2", Reason: "bye", Time: t0}); err != nil {
		t.Fatal(err)
	}
	f.update("a1", "s2-k", structs.KernelTerminated, intp(143))
	u = f.s.Snapshot().Usage("AK")
	if len(u.Sessions) != 0 || len(u.Occupied) != 0 {
		t.Fatalf("usage after all ended: %+v", u)
	}
}

// TestApplyPlanRechecksKeyLimitsCancelsAndCountsAttempts: the FSM refuses a
// placement that would take a key over its policy even when the plan (from
// an older snapshot) proposes it, cancels the plan's Cancel sessions that
// are still PENDING, and records attempts as the plan says.
func TestApplyPlanRechecksKeyLimitsCancelsAndCountsAttempts(t *testing.T) {
	f := newFixture(t)
	f.agent("a1", slots(8, 8192))
	cfg := &structs.ConfigUpsertRequest{
		Policies: []*structs.ResourcePolicy{{Name: "one", MaxConcurrentSessions: 1, MaxPendingSessions: 3}},
		Keys:     []*structs.AccessKey{{AccessKey: "AK", SecretHash: "h", User: "u", Policy: "one"}},
		Time:     t0,
	}
	if err := f.s.UpsertConfig(f.next(), cfg); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"s1", "s2", "s3"} {
		sess := &structs.Session{ID: id, Type: structs.SessionTypeBatch, ResourceGroup: structs.DefaultResourceGroup, AccessKey: "AK"}
		k := &structs.Kernel{ID: id + "-k", SessionID: id, Role: "main", Idx: 1, Hostname: "main1", Driver: "exec", Command: []string{"true"}, Resources: slots(1, 256)}
		if err := f.s.EnqueueSession(f.next(), &structs.SessionEnqueueRequest{Session: sess, Kernels: []*structs.Kernel{k}, Time: t0}); err != nil {
			t.Fatal(err)
		}
	}
	// A fourth pending session is over max_pending_sessions, whoever races.
	sess := &structs.Session{ID: "s4", Type: structs.SessionTypeBatch, ResourceGroup: structs.DefaultResourceGroup, AccessKey: "AK"}
	err := f.s.EnqueueSession(f.next(), &structs.SessionEnqueueRequest{Session: sess, Time: t0})
	if !errors.Is(err, scheduler.ErrPendingLimit) {
		t.Fatalf("fourth pending session: %v", err)
	}
	if res := f.place("s1", "a1"); len(res.Applied) != 1 {
		t.Fatalf("s1: %+v", res)
	}
	if res := f.place("s2", "a1"); len(res.Applied) != 0 || !strings.Contains(res.Rejected["s2"], "max_concurrent_sessions") {
		t.Fatalf("s2 over the key's concurrency: %+v", res)
	}
	if u := f.s.Snapshot().Usage("AK"); len(u.Sessions) != 1 || !u.Occupied.Equal(slots(1, 256)) || !f.occupied("a1").Equal(slots(1, 256)) {
		t.Fatalf("usage after the rejected placement: %+v, agent %v", u, f.occupied("a1"))
	}
	plan := &structs.Plan{
		Unplaced: map[string]string{"s2": "max_concurrent_sessions: ..."},
		Attempts: map[string]int{"s2": 4},
		Cancel:   map[string]string{"s3": "dependency x ended TERMINATED/FAILURE", "s1": "not pending: ignored"},
	}
	res, err := f.s.ApplyPlan(f.next(), &structs.PlanApplyRequest{Plan: plan, Time: t0})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(res.Cancelled, []string{"s3"}) {
		t.Fatalf("cancelled %v", res.Cancelled)
	}
	if s := f.sess("s3"); s.Status != structs.SessionCancelled || !strings.Contains(s.StatusInfo, "dependency x") {
		t.Fatalf("s3: %s %q", s.Status, s.StatusInfo)
	}
	if s := f.sess("s1"); s.Status != structs.SessionScheduled {
		t.Fatalf("s1 touched by a cancel of a placed session: %s", s.Status)
	}
	if s := f.sess("s2"); s.ScheduleAttempts != 4 || s.StatusInfo != "max_concurrent_sessions: ..." {
		t.Fatalf("s2: attempts %d %q", s.ScheduleAttempts, s.StatusInfo)
	}
}

// TestClusterNetworkAllocation: placing a session of several kernels gives
// it a VNI and subnet in the same apply, one address per kernel, the hosts
// table and the peers' underlay addresses; its end frees them, and the
// next session gets another slot (next-fit).
func TestClusterNetworkAllocation(t *testing.T) {
	f := newFixture(t)
	for _, id := range []string{"a1", "a2"} {
		a := &structs.Agent{ID: id, Name: id, Status: structs.AgentAlive, Drivers: []string{"exec", "runc"}, Capacity: slots(4, 4096), SerfAddr: map[string]string{"a1": "10.9.0.11:8643", "a2": "10.9.0.12:8643"}[id]}
		if err := f.s.UpsertAgent(f.next(), &structs.AgentUpsertRequest{Agent: a, Time: t0}); err != nil {
			t.Fatal(err)
		}
	}
	enqueue := func(id string) {
		sess := &structs.Session{ID: id, Type: structs.SessionTypeBatch, ResourceGroup: structs.DefaultResourceGroup, ClusterMode: structs.ClusterModeMultiNode, ClusterSize: 3}
		var ks []*structs.Kernel
		for i, h := range []string{"main1", "sub1", "sub2"} {
			role, idx := "sub", i
			if i == 0 {
				role, idx = "main", 1
			}
			// runc kernels are wired to the overlay (exec ones use their
			// agents' network: TestClusterLaunch).
			ks = append(ks, &structs.Kernel{ID: id + "-" + h, SessionID: id, Role: role, Idx: idx, Hostname: h, Driver: "runc", Image: "busybox", Command: []string{"true"}, Resources: slots(1, 64)})
		}
		if err := f.s.EnqueueSession(f.next(), &structs.SessionEnqueueRequest{Session: sess, Kernels: ks, Time: t0}); err != nil {
			t.Fatal(err)
		}
	}
	place := func(id string) {
		plan := &structs.Plan{Placements: []structs.SessionPlacement{{SessionID: id, Placements: []structs.Placement{
			{KernelID: id + "-main1", AgentID: "a1"}, {KernelID: id + "-sub1", AgentID: "a2"}, {KernelID: id + "-sub2", AgentID: "a2"}}}}}
		res, err := f.s.ApplyPlan(f.next(), &structs.PlanApplyRequest{Plan: plan, Time: t0})
		if err != nil || len(res.Applied) != 1 {
			t.Fatalf("place %s: %+v %v", id, res, err)
		}
	}
	enqueue("c1")
	place("c1")
	s1 := f.sess("c1")
	if s1.Network == nil || s1.Network.VNI != structs.DefaultOverlayVNIBase || s1.Network.Subnet != "10.224.0.0/24" {
		t.Fatalf("c1's network %+v", s1.Network)
	}
	k, _ := f.s.Snapshot().Kernel("c1-sub2")
	want := &structs.KernelNetwork{VNI: s1.Network.VNI, Address: "10.224.0.4/24", Underlay: "10.9.0.12", Peers: []string{"10.9.0.11"},
		Hosts: map[string]string{"main1": "10.224.0.2", "sub1": "10.224.0.3", "sub2": "10.224.0.4"}}
	if !reflect.DeepEqual(k.Network, want) {
		t.Fatalf("sub2's network %+v, want %+v", k.Network, want)
	}
	enqueue("c2")
	place("c2")
	if s2 := f.sess("c2"); s2.Network == nil || s2.Network.VNI == s1.Network.VNI || s2.Network.Subnet == s1.Network.Subnet {
		t.Fatalf("c2's network %+v beside c1's %+v", s2.Network, s1.Network)
	}
	if err := f.s.DestroySession(f.next(), &structs.SessionDestroyRequest{SessionID: "c1", Reason: "bye", Time: t0}); err != nil {
		t.Fatal(err)
	}
	for _, h := range []string{"main1", "sub1", "sub2"} {
		agent := "a2"
		if h == "main1" {
			agent = "a1"
		}
		f.update(agent, "c1-"+h, structs.KernelTerminated, intp(0))
	}
	nets, _ := f.s.Snapshot().Networks()
	if len(nets) != 1 || nets[0].SessionID != "c2" {
		t.Fatalf("networks after c1 ended: %+v", nets)
	}
	enqueue("c3")
	place("c3")
	if s3 := f.sess("c3"); s3.Network.Slot != 2 {
		t.Fatalf("c3 got slot %d, want the next one (2), not c1's freed 0", s3.Network.Slot)
	}
}

// TestInteractiveClusterDegradesWhenASubKernelEnds: an interactive cluster
// session whose sub kernel dies runs on RUNNING_DEGRADED with the reason;
// main1's end stops the rest.
func TestInteractiveClusterDegradesWhenASubKernelEnds(t *testing.T) {
	f := newFixture(t)
	f.agent("a1", slots(8, 8192))
	sess := &structs.Session{ID: "i1", Type: structs.SessionTypeInteractive, ResourceGroup: structs.DefaultResourceGroup, ClusterSize: 2}
	ks := []*structs.Kernel{
		{ID: "i1-main1", SessionID: "i1", Role: "main", Idx: 1, Hostname: "main1", Driver: "exec", Command: []string{"sleep"}, Resources: slots(1, 64)},
		{ID: "i1-sub1", SessionID: "i1", Role: "sub", Idx: 1, Hostname: "sub1", Driver: "exec", Command: []string{"sleep"}, Resources: slots(1, 64)},
	}
	if err := f.s.EnqueueSession(f.next(), &structs.SessionEnqueueRequest{Session: sess, Kernels: ks, Time: t0}); err != nil {
		t.Fatal(err)
	}
	plan := &structs.Plan{Placements: []structs.SessionPlacement{{SessionID: "i1", Placements: []structs.Placement{{KernelID: "i1-main1", AgentID: "a1"}, {KernelID: "i1-sub1", AgentID: "a1"}}}}}
	if _, err := f.s.ApplyPlan(f.next(), &structs.PlanApplyRequest{Plan: plan, Time: t0}); err != nil {
		t.Fatal(err)
	}
	f.update("a1", "i1-main1", structs.KernelRunning, nil)
	f.update("a1", "i1-sub1", structs.KernelRunning, nil)
	if s := f.sess("i1"); s.Status != structs.SessionRunning {
		t.Fatalf("both running: %s", s.Status)
	}
	f.update("a1", "i1-sub1", structs.KernelTerminated, intp(1))
	if s := f.sess("i1"); s.Status != structs.SessionRunningDegraded || !strings.Contains(s.StatusInfo, "sub1") {
		t.Fatalf("sub1 ended: %s %q", s.Status, s.StatusInfo)
	}
	f.update("a1", "i1-main1", structs.KernelTerminated, intp(0))
	if s := f.sess("i1"); s.Status != structs.SessionTerminated {
		t.Fatalf("main1 ended too: %s %q", s.Status, s.StatusInfo)
	}
}

// TestUpsertAgentDrivers: a registration without drivers keeps the
// recorded ones, unless it lists them all as unhealthy.
func TestUpsertAgentDrivers(t *testing.T) {
	f := newFixture(t)
	f.agent("a1", slots(1, 64))
	upsert := func(a *structs.Agent) []string {
		t.Helper()
		if err := f.s.UpsertAgent(f.next(), &structs.AgentUpsertRequest{Agent: a, Time: t0}); err != nil {
			t.Fatal(err)
		}
		got, err := f.s.Snapshot().Agent(nil, "a1")
		if err != nil {
			t.Fatal(err)
		}
		return got.Drivers
	}
	if d := upsert(&structs.Agent{ID: "a1"}); !slices.Equal(d, []string{"exec"}) {
		t.Errorf("drivers after an upsert without any: %v, want [exec]", d)
	}
	if d := upsert(&structs.Agent{ID: "a1", UnhealthyDrivers: map[string]string{"exec": "unhealthy: crashing"}}); len(d) != 0 {
		t.Errorf("drivers after all became unhealthy: %v, want none", d)
	}
}

// TestEnqueueChecksDrivers: the FSM refuses a session whose driver the
// key's policy does not list, or an admin-only driver for a user key, as
// of its point in the log (a policy changed after the API checked wins).
func TestEnqueueChecksDrivers(t *testing.T) {
	f := newFixture(t)
	cfg := &structs.ConfigUpsertRequest{
		Policies: []*structs.ResourcePolicy{{Name: "containers", Drivers: []string{"runc"}}},
		Keys: []*structs.AccessKey{{AccessKey: "AKP", SecretHash: "h", User: "u", Policy: "containers"},
			{AccessKey: "AKU", SecretHash: "h", User: "v"}, {AccessKey: "AKA", SecretHash: "h", User: "root", Admin: true}},
		Time: t0,
	}
	if err := f.s.UpsertConfig(f.next(), cfg); err != nil {
		t.Fatal(err)
	}
	enqueue := func(id, ak, driver string) error {
		sess := &structs.Session{ID: id, Type: structs.SessionTypeBatch, ResourceGroup: structs.DefaultResourceGroup, AccessKey: ak}
		k := &structs.Kernel{ID: id + "-k", SessionID: id, Role: "main", Idx: 1, Hostname: "main1", Driver: driver, Command: []string{"true"}, Resources: slots(1, 256)}
		return f.s.EnqueueSession(f.next(), &structs.SessionEnqueueRequest{Session: sess, Kernels: []*structs.Kernel{k}, Time: t0})
	}
	for _, tc := range []struct {
		id, ak, driver string
		ok             bool
	}{
		{"s1", "AKP", "exec", false}, {"s2", "AKP", "runc", true},
		{"s3", "AKU", "host", false}, {"s4", "AKU", "exec", true}, {"s5", "AKA", "host", true},
	} {
		err := enqueue(tc.id, tc.ak, tc.driver)
		if tc.ok != (err == nil) || (err != nil && !errors.Is(err, ErrForbidden)) {
			t.Errorf("%s with key %s and driver %s: %v (want allowed=%v)", tc.id, tc.ak, tc.driver, err, tc.ok)
		}
	}
	if n := f.sessionCount(); n != 3 {
		t.Fatalf("%d sessions enqueued, want 3", n)
	}
}

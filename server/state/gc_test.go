package state

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/corral-dev/corral/structs"
)

// gcWorld builds, on a fresh store, the same sessions every time:
//
//	old     batch, ended TERMINATED at t0
//	late    batch, ended TERMINATED at t0+2h
//	run     batch, RUNNING
//	pend    batch, PENDING
//	dep     batch, ended TERMINATED at t0, a dependency of waiter
//	waiter  batch, PENDING, depends on dep
//	gone    batch, CANCELLED at t0 (never placed)
//	retry   batch with one retry: lost on a1, re-queued, placed on a2, ended at t0
//	half    batch of two kernels: sub1 ERROR at t0 (session ERROR) while main1 still RUNNING
func gcWorld(t *testing.T) *fixture {
	t.Helper()
	f := newFixture(t)
	f.agent("a1", slots(16, 16384))
	f.agent("a2", slots(16, 16384))
	end := func(id string, at time.Time) {
		f.t.Helper()
		f.updateAt("a1", id+"-k", structs.KernelRunning, nil, t0)
		f.updateAt("a1", id+"-k", structs.KernelTerminated, intp(0), at)
	}
	for _, id := range []string{"old", "late", "run", "dep"} {
		f.session(id, structs.SessionTypeBatch, slots(1, 64))
		f.place(id, "a1")
	}
	end("old", t0)
	end("late", t0.Add(2*time.Hour))
	f.updateAt("a1", "run-k", structs.KernelRunning, nil, t0)
	end("dep", t0)
	f.session("pend", structs.SessionTypeBatch, slots(1, 64))
	f.enqueue(&structs.Session{ID: "waiter", Type: structs.SessionTypeBatch, DependsOn: []string{"dep"}},
		&structs.Kernel{ID: "waiter-k", Role: "main", Idx: 1, Hostname: "main1", Driver: "exec", Command: []string{"true"}, Resources: slots(1, 64)})
	f.session("gone", structs.SessionTypeBatch, slots(1, 64))
	if err := f.s.DestroySession(f.next(), &structs.SessionDestroyRequest{SessionID: "gone", Reason: "test", Time: t0}); err != nil {
		t.Fatal(err)
	}
	// retry: placed on a3, a3 lost, re-queued with fresh kernels.
	f.agent("a3", slots(4, 4096))
	f.enqueue(&structs.Session{ID: "retry", Type: structs.SessionTypeBatch, MaxRetries: 1},
		&structs.Kernel{ID: "retry-k", Role: "main", Idx: 1, Hostname: "main1", Driver: "exec", Command: []string{"true"}, Resources: slots(1, 64)})
	f.place("retry", "a3")
	if err := f.s.SetAgentStatus(f.next(), &structs.AgentStatusRequest{AgentID: "a3", Status: structs.AgentLost, Info: "test", Time: t0}); err != nil {
		t.Fatal(err)
	}
	if s := f.sess("retry"); s.Status != structs.SessionPending || s.KernelIDs[0] != "retry-k.r1" {
		t.Fatalf("retry not re-queued: %s %v", s.Status, s.KernelIDs)
	}
	f.placeKernels("retry", structs.Placement{KernelID: "retry-k.r1", AgentID: "a2"})
	f.updateAt("a2", "retry-k.r1", structs.KernelRunning, nil, t0)
	f.updateAt("a2", "retry-k.r1", structs.KernelTerminated, intp(0), t0)
	// half: sub1 errors, main1 runs on holding its slots.
	f.enqueue(&structs.Session{ID: "half", Type: structs.SessionTypeBatch, ClusterSize: 2},
		&structs.Kernel{ID: "half-main1", Role: "main", Idx: 1, Hostname: "main1", Driver: "exec", Command: []string{"true"}, Resources: slots(1, 64)},
		&structs.Kernel{ID: "half-sub1", Role: "sub", Idx: 1, Hostname: "sub1", Driver: "exec", Command: []string{"true"}, Resources: slots(1, 64)})
	f.placeKernels("half", structs.Placement{KernelID: "half-main1", AgentID: "a1"}, structs.Placement{KernelID: "half-sub1", AgentID: "a1"})
	f.updateAt("a1", "half-main1", structs.KernelRunning, nil, t0)
	f.updateAt("a1", "half-sub1", structs.KernelError, nil, t0)
	if s := f.sess("half"); s.Status != structs.SessionError {
		t.Fatalf("half is %s, want ERROR", s.Status)
	}
	return f
}

func (f *fixture) updateAt(agentID, kernelID string, st structs.KernelStatus, code *int, at time.Time) {
	f.t.Helper()
	skipped, err := f.s.UpdateKernels(f.next(), &structs.KernelUpdateRequest{AgentID: agentID, Updates: []*structs.KernelUpdate{{KernelID: kernelID, Status: st, ExitCode: code, Time: at}}})
	if err != nil || len(skipped) > 0 {
		f.t.Fatalf("update %s to %s: %v %v", kernelID, st, skipped, err)
	}
}

func (f *fixture) enqueue(sess *structs.Session, ks ...*structs.Kernel) {
	f.t.Helper()
	sess.ResourceGroup = structs.DefaultResourceGroup
	for _, k := range ks {
		k.SessionID = sess.ID
	}
	if err := f.s.EnqueueSession(f.next(), &structs.SessionEnqueueRequest{Session: sess, Kernels: ks, Time: t0}); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) placeKernels(id string, ps ...structs.Placement) {
	f.t.Helper()
	plan := &structs.Plan{Placements: []structs.SessionPlacement{{SessionID: id, Placements: ps}}}
	res, err := f.s.ApplyPlan(f.next(), &structs.PlanApplyRequest{Plan: plan, Time: t0})
	if err != nil || len(res.Applied) != 1 {
		f.t.Fatalf("place %s: %+v %v", id, res, err)
	}
}

func (f *fixture) gc(req *structs.SessionsGCRequest) *structs.SessionsGCResult {
	f.t.Helper()
	res, err := f.s.GCSessions(f.next(), req)
	if err != nil {
		f.t.Fatal(err)
	}
	return res
}

// ids lists the session and kernel IDs in the store.
func ids(t *testing.T, s *StateStore) (sessions, kernels []string) {
	t.Helper()
	snap := s.Snapshot()
	all, _ := snap.Sessions(nil, "")
	for _, x := range all {
		sessions = append(sessions, x.ID)
	}
	ks, _ := snap.Kernels()
	for _, k := range ks {
		kernels = append(kernels, k.ID)
	}
	return sessions, kernels
}

func TestGCSessionsCollectsEndedOnly(t *testing.T) {
	f := gcWorld(t)
	beforeIdx := f.s.Snapshot().Index("sessions")
	occ := f.occupied("a1")
	res := f.gc(&structs.SessionsGCRequest{Cutoff: t0.Add(time.Hour), Time: t0.Add(25 * time.Hour)})
	// old, gone and retry go (retry with its superseded attempt kernel);
	// late ended after the cutoff, dep is needed by waiter, half still
	// holds slots, run and pend are live.
	if res.Sessions != 3 || res.Kernels != 4 || res.More {
		t.Fatalf("gc result %+v, want 3 sessions and 4 kernels", res)
	}
	sessions, kernels := ids(t, f.s)
	wantS := []string{"late", "run", "dep", "pend", "waiter", "half"}
	if !reflect.DeepEqual(sessions, wantS) {
		t.Fatalf("sessions after gc %v, want %v", sessions, wantS)
	}
	for _, k := range kernels {
		switch k {
		case "old-k", "gone-k", "retry-k", "retry-k.r1":
			t.Fatalf("kernel %s survived gc (kernels %v)", k, kernels)
		}
	}
	if len(kernels) != 7 {
		t.Fatalf("kernels after gc %v, want 7", kernels)
	}
	snap := f.s.Snapshot()
	if got := snap.Index("sessions"); got <= beforeIdx || got != f.index {
		t.Fatalf("sessions index %d after gc at %d (was %d)", got, f.index, beforeIdx)
	}
	if snap.Index("kernels") != f.index {
		t.Fatalf("kernels index %d, want %d", snap.Index("kernels"), f.index)
	}
	if _, err := snap.ResolveSession(nil, "n-old"); err == nil {
		t.Fatal("the name index still finds the collected session")
	}
	if !f.occupied("a1").Equal(occ) {
		t.Fatalf("gc changed a1's occupancy: %v, was %v", f.occupied("a1"), occ)
	}
	// Nothing qualifies twice.
	if res := f.gc(&structs.SessionsGCRequest{Cutoff: t0.Add(time.Hour)}); res.Sessions != 0 {
		t.Fatalf("second gc collected %+v", res)
	}
	// Once waiter ends, dep may go; with a later cutoff, late goes too.
	if err := f.s.DestroySession(f.next(), &structs.SessionDestroyRequest{SessionID: "waiter", Reason: "test", Time: t0}); err != nil {
		t.Fatal(err)
	}
	res = f.gc(&structs.SessionsGCRequest{Cutoff: t0.Add(3 * time.Hour)})
	if res.Sessions != 3 {
		t.Fatalf("third gc %+v, want dep, waiter and late", res)
	}
	sessions, _ = ids(t, f.s)
	if !reflect.DeepEqual(sessions, []string{"run", "pend", "half"}) {
		t.Fatalf("sessions %v", sessions)
	}
	// A zero cutoff (nothing ended before it) collects nothing.
	if res := f.gc(&structs.SessionsGCRequest{}); res.Sessions != 0 {
		t.Fatalf("gc with a zero cutoff collected %+v", res)
	}
}

func TestGCSessionsDeterministicLimitAndIDs(t *testing.T) {
	a, b := gcWorld(t), gcWorld(t)
	for _, f := range []*fixture{a, b} {
		res := f.gc(&structs.SessionsGCRequest{Cutoff: t0.Add(time.Hour), Limit: 2})
		if res.Sessions != 2 || !res.More {
			t.Fatalf("limited gc %+v, want 2 and more", res)
		}
	}
	sa, ka := ids(t, a.s)
	sb, kb := ids(t, b.s)
	if !reflect.DeepEqual(sa, sb) || !reflect.DeepEqual(ka, kb) {
		t.Fatalf("two stores collected different sets: %v / %v", sa, sb)
	}
	// The oldest two by create index went: old, then gone.
	for _, id := range sa {
		if id == "old" || id == "gone" {
			t.Fatalf("limited gc kept %s: %v", id, sa)
		}
	}
	// IDs restrict the set; a session that does not qualify stays.
	res := a.gc(&structs.SessionsGCRequest{Cutoff: t0.Add(time.Hour), IDs: []string{"run", "retry", "nope", "retry"}})
	if res.Sessions != 1 || res.Kernels != 2 {
		t.Fatalf("gc by IDs %+v, want retry and its 2 kernels", res)
	}
}

func TestGCSnapshotRestore(t *testing.T) {
	f := gcWorld(t)
	f.gc(&structs.SessionsGCRequest{Cutoff: t0.Add(time.Hour)})
	d, err := f.s.Snapshot().Dump()
	if err != nil {
		t.Fatal(err)
	}
	s2, _ := New()
	if err := s2.Restore(d); err != nil {
		t.Fatal(err)
	}
	d2, err := s2.Snapshot().Dump()
	if err != nil {
		t.Fatal(err)
	}
	j1, _ := json.Marshal(d)
	j2, _ := json.Marshal(d2)
	if string(j1) != string(j2) {
		t.Fatalf("restored state differs:\n%s\n%s", j1, j2)
	}
	s1, k1 := ids(t, f.s)
	s2IDs, k2 := ids(t, s2)
	if !reflect.DeepEqual(s1, s2IDs) || !reflect.DeepEqual(k1, k2) {
		t.Fatalf("restored ids differ")
	}
	// The restored store goes on: a new session gets placed and ends.
	f2 := &fixture{t: t, s: s2, index: f.index}
	f2.session("new", structs.SessionTypeBatch, slots(1, 64))
	f2.place("new", "a2")
	f2.updateAt("a2", "new-k", structs.KernelRunning, nil, t0)
	if s := f2.sess("new"); s.Status != structs.SessionRunning {
		t.Fatalf("new session on the restored store is %s", s.Status)
	}
}

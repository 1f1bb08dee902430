package state_test

import (
	"encoding/json"
	"fmt"
	"io"
	"runtime"
	"testing"
	"time"

	"github.com/corral-dev/corral/server/state"
	"github.com/corral-dev/corral/structs"
)

// gcFigures are the sizes one run of gcWaves measured.
type gcFigures struct {
	// Baseline: agents registered, no session yet.
	baseSnap, baseHeap uint64
	// Peak: every wave's sessions ended and none collected (no GC).
	peakSnap, peakHeap uint64
	// After: the same waves, each collected once it ended.
	gcSnap, gcHeap uint64
	// maxGCSnap is the largest snapshot seen right after a collection.
	maxGCSnap uint64
	collected int
}

// snapSize is the size of the store's raft snapshot (fsm.Persist writes
// the dump with a json.Encoder).
func snapSize(tb testing.TB, s *state.StateStore) uint64 {
	tb.Helper()
	d, err := s.Snapshot().Dump()
	if err != nil {
		tb.Fatal(err)
	}
	cw := &countWriter{}
	if err := json.NewEncoder(cw).Encode(d); err != nil {
		tb.Fatal(err)
	}
	return cw.n
}

type countWriter struct{ n uint64 }

func (w *countWriter) Write(p []byte) (int, error) { w.n += uint64(len(p)); return len(p), nil }

var _ io.Writer = (*countWriter)(nil)

// heap is the live heap after a full collection.
func heap() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// runWaves runs waves of perWave batch sessions through a store (enqueue,
// placement, RUNNING, TERMINATED); with gc, each wave is collected once it
// ended. It returns the store and the sessions collected.
func runWaves(tb testing.TB, waves, perWave int, gc bool, onGC func(*state.StateStore)) (*state.StateStore, int) {
	tb.Helper()
	s, err := state.New()
	if err != nil {
		tb.Fatal(err)
	}
	t0 := time.Date(2026, 11, 22, 8, 0, 0, 0, time.UTC)
	idx := uint64(0)
	next := func() uint64 { idx++; return idx }
	const nAgents = 10
	registerAgents(tb, s, nAgents, next, t0)
	collected := 0
	for w := range waves {
		at := t0.Add(time.Duration(w) * time.Minute)
		plan := &structs.Plan{}
		for i := range perWave {
			id := fmt.Sprintf("w%02d-s%05d", w, i)
			sess := &structs.Session{ID: id, Name: id, Type: structs.SessionTypeBatch, ResourceGroup: "default", AccessKey: fmt.Sprintf("AK%d", i%4), Owner: "u"}
			k := &structs.Kernel{ID: id + "-k", SessionID: id, Role: "main", Idx: 1, Hostname: "main1", Driver: "exec",
				Command: []string{"sh", "-c", "echo hello from a batch session"}, Env: map[string]string{"A": "1"}, Resources: cpuMem(1, 1)}
			if err := s.EnqueueSession(next(), &structs.SessionEnqueueRequest{Session: sess, Kernels: []*structs.Kernel{k}, Time: at}); err != nil {
				tb.Fatal(err)
			}
			plan.Placements = append(plan.Placements, structs.SessionPlacement{SessionID: id,
				Placements: []structs.Placement{{KernelID: k.ID, AgentID: fmt.Sprintf("ag%d", i%nAgents)}}})
		}
		res, err := s.ApplyPlan(next(), &structs.PlanApplyRequest{Plan: plan, Time: at})
		if err != nil || len(res.Applied) != perWave {
			tb.Fatalf("wave %d: placed %d of %d: %v %v", w, len(res.Applied), perWave, res.Rejected, err)
		}
		for _, st := range []structs.KernelStatus{structs.KernelRunning, structs.KernelTerminated} {
			byAgent := map[string][]*structs.KernelUpdate{}
			for i := range perWave {
				code := 0
				u := &structs.KernelUpdate{KernelID: fmt.Sprintf("w%02d-s%05d-k", w, i), Status: st, Info: "step", Time: at}
				if st == structs.KernelTerminated {
					u.ExitCode = &code
				}
				ag := fmt.Sprintf("ag%d", i%nAgents)
				byAgent[ag] = append(byAgent[ag], u)
			}
			for ag, us := range byAgent {
				skipped, err := s.UpdateKernels(next(), &structs.KernelUpdateRequest{AgentID: ag, Updates: us})
				if err != nil || len(skipped) > 0 {
					tb.Fatalf("updates: %v %v", skipped, err)
				}
			}
		}
		if !gc {
			continue
		}
		// The leader's loop: entries of at most DefaultGCBatch sessions
		// until none is left.
		for {
			res, err := s.GCSessions(next(), &structs.SessionsGCRequest{Cutoff: at.Add(time.Second), Limit: structs.DefaultGCBatch})
			if err != nil {
				tb.Fatal(err)
			}
			collected += res.Sessions
			if !res.More {
				break
			}
		}
		if onGC != nil {
			onGC(s)
		}
	}
	return s, collected
}

func registerAgents(tb testing.TB, s *state.StateStore, n int, next func() uint64, t0 time.Time) {
	tb.Helper()
	for i := range n {
		a := &structs.Agent{ID: fmt.Sprintf("ag%d", i), Name: fmt.Sprintf("ag%d", i), Status: structs.AgentAlive, ResourceGroup: "default",
			Drivers: []string{"exec"}, Capacity: cpuMem(4096, 4096)}
		if err := s.UpsertAgent(next(), &structs.AgentUpsertRequest{Agent: a, Time: t0}); err != nil {
			tb.Fatal(err)
		}
	}
}

// measureGC measures the baseline, the peak without GC and the state
// after GC of waves×perWave sessions.
func measureGC(tb testing.TB, waves, perWave int) gcFigures {
	tb.Helper()
	var f gcFigures
	h0 := heap()
	base, _ := state.New()
	n := uint64(0)
	registerAgents(tb, base, 10, func() uint64 { n++; return n }, time.Now())
	f.baseHeap = sub(heap(), h0)
	f.baseSnap = snapSize(tb, base)
	runtime.KeepAlive(base)

	h0 = heap()
	peak, _ := runWaves(tb, waves, perWave, false, nil)
	f.peakHeap = sub(heap(), h0)
	f.peakSnap = snapSize(tb, peak)
	runtime.KeepAlive(peak)

	h0 = heap()
	after, collected := runWaves(tb, waves, perWave, true, func(s *state.StateStore) {
		f.maxGCSnap = max(f.maxGCSnap, snapSize(tb, s))
	})
	f.gcHeap = sub(heap(), h0)
	f.gcSnap = snapSize(tb, after)
	runtime.KeepAlive(after)
	f.collected = collected
	return f
}

// sub is a - b, 0 when b is larger (the heap shrank meanwhile).
func sub(a, b uint64) uint64 {
	if b > a {
		return 0
	}
	return a - b
}

// TestGCReturnsSnapshotToBaseline checks that collecting every wave of
// ended sessions brings the snapshot back to about the size of an empty
// cluster's, while keeping them all makes it grow with every session.
func TestGCReturnsSnapshotToBaseline(t *testing.T) {
	f := measureGC(t, 5, 200)
	t.Logf("snapshot: baseline %d B, 1000 ended sessions kept %d B, after GC %d B (max after a wave %d B); heap: baseline %d B, kept %d B, after GC %d B",
		f.baseSnap, f.peakSnap, f.gcSnap, f.maxGCSnap, f.baseHeap, f.peakHeap, f.gcHeap)
	if f.collected != 1000 {
		t.Fatalf("collected %d sessions, want 1000", f.collected)
	}
	if f.peakSnap < 100*f.baseSnap/10 {
		t.Fatalf("kept sessions should dominate the snapshot: %d vs baseline %d", f.peakSnap, f.baseSnap)
	}
	// Usage rows of the four keys and the group, and the agents' zeroed
	// occupancy, are all that stays.
	if f.maxGCSnap > f.baseSnap+2048 {
		t.Fatalf("snapshot after GC %d B, baseline %d B: more than 2 KiB apart", f.maxGCSnap, f.baseSnap)
	}
}

// BenchmarkGCWaves runs 5,000 sessions in 5 waves of 1,000 and reports
// the raft snapshot size and live heap of the store at the baseline, with
// every ended session kept, and with each wave collected.
func BenchmarkGCWaves(b *testing.B) {
	var f gcFigures
	for b.Loop() {
		f = measureGC(b, 5, 1000)
	}
	b.ReportMetric(float64(f.baseSnap), "base-snap-B")
	b.ReportMetric(float64(f.peakSnap), "nogc-snap-B")
	b.ReportMetric(float64(f.gcSnap), "gc-snap-B")
	b.ReportMetric(float64(f.baseHeap), "base-heap-B")
	b.ReportMetric(float64(f.peakHeap), "nogc-heap-B")
	b.ReportMetric(float64(f.gcHeap), "gc-heap-B")
	b.ReportMetric(float64(f.collected), "collected")
}

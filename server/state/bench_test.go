package state_test

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/corral-dev/corral/server/scheduler"
	"github.com/corral-dev/corral/server/state"
	"github.com/corral-dev/corral/structs"
)

// BenchmarkPassWithApply measures one whole scheduling pass as the leader
// runs it: the input from a snapshot, the scheduler's plan, and the plan's
// application through the FSM (re-check, occupancy and key usage) over
// 10,000 pending single-kernel sessions. Reported: placements/s.
func BenchmarkPassWithApply(b *testing.B) {
	for _, agents := range []int{1000, 10000} {
		for _, sel := range []string{structs.AgentSelectorDispersed, structs.AgentSelectorConcentrated} {
			b.Run(fmt.Sprintf("sessions=10000/agents=%d/%s", agents, sel), func(b *testing.B) {
				benchPass(b, 10000, agents, sel, false)
			})
		}
	}
	// With a commit hook, as every server has (the event stream, metrics).
	b.Run("sessions=10000/agents=1000/dispersed/commit-hook", func(b *testing.B) {
		benchPass(b, 10000, 1000, structs.AgentSelectorDispersed, true)
	})
}

// chunk is how many session placements go into one raft apply.
const chunk = 1000

func benchPass(b *testing.B, nSessions, nAgents int, sel string, hook bool) {
	t0 := time.Date(2026, 11, 22, 8, 0, 0, 0, time.UTC)
	var placed, total time.Duration
	var n int
	for b.Loop() {
		b.StopTimer()
		s, err := state.New()
		if err != nil {
			b.Fatal(err)
		}
		if hook {
			var n int
			s.SetCommitHook(func(_ uint64, ch []state.Change) { n += len(ch) })
		}
		idx := uint64(1)
		keys := []*structs.AccessKey{}
		for i := range 20 {
			keys = append(keys, &structs.AccessKey{AccessKey: fmt.Sprintf("AK%d", i), SecretHash: "h", User: "u", Policy: "p"})
		}
		if err := s.UpsertConfig(idx, &structs.ConfigUpsertRequest{
			Groups:   []*structs.ResourceGroup{{Name: "default", SessionSelector: "fifo", AgentSelector: sel}},
			Policies: []*structs.ResourcePolicy{{Name: "p", MaxConcurrentSessions: 100000, TotalResourceSlots: structs.Slots{structs.SlotCPU: structs.Whole(1 << 20)}}},
			Keys:     keys, Time: t0,
		}); err != nil {
			b.Fatal(err)
		}
		for i := range nAgents {
			idx++
			a := &structs.Agent{ID: fmt.Sprintf("ag%05d", i), Name: fmt.Sprintf("ag%05d", i), Status: structs.AgentAlive, ResourceGroup: "default",
				Drivers: []string{"exec"}, Capacity: cpuMem(int64(8+i%24), int64(32+i%64))}
			if err := s.UpsertAgent(idx, &structs.AgentUpsertRequest{Agent: a, Time: t0}); err != nil {
				b.Fatal(err)
			}
		}
		for i := range nSessions {
			idx++
			id := fmt.Sprintf("s%05d", i)
			sess := &structs.Session{ID: id, Type: structs.SessionTypeBatch, ResourceGroup: "default", AccessKey: fmt.Sprintf("AK%d", i%20)}
			k := &structs.Kernel{ID: id + "-k", SessionID: id, Role: "main", Idx: 1, Hostname: "main1", Driver: "exec",
				Command: []string{"true"}, Resources: cpuMem(int64(1+i%4), int64(1+i%8))}
			if err := s.EnqueueSession(idx, &structs.SessionEnqueueRequest{Session: sess, Kernels: []*structs.Kernel{k}, Time: t0}); err != nil {
				b.Fatal(err)
			}
		}
		runtime.GC() // the setup's garbage is not the pass's
		b.StartTimer()
		start := time.Now()
		in, _, _, err := s.Snapshot().SchedulerInput(nil, t0)
		if err != nil {
			b.Fatal(err)
		}
		res := scheduler.Plan(in)
		planned := time.Since(start)
		for _, part := range scheduler.SplitPlan(res.Plan, chunk) {
			idx++
			out, err := s.ApplyPlan(idx, &structs.PlanApplyRequest{Plan: part, Time: t0})
			if err != nil {
				b.Fatal(err)
			}
			n += len(out.Applied)
			if len(out.Rejected) > 0 {
				b.Fatalf("%d placements rejected by the FSM", len(out.Rejected))
			}
		}
		total += time.Since(start)
		placed += planned
	}
	b.ReportMetric(float64(n)/total.Seconds(), "placements/s")
	b.ReportMetric(float64(n)/float64(b.N), "placed/pass")
	b.ReportMetric(placed.Seconds()*1000/float64(b.N), "ms-plan/pass")
	b.ReportMetric(total.Seconds()*1000/float64(b.N), "ms-total/pass")
}

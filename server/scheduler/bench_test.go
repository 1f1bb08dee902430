package scheduler

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/corral-dev/corral/structs"
)

// benchInput is randomInput with access keys, policies and usage on top:
// 40 keys, half of them limited to 150 concurrent sessions and 600 cores.
func benchInput(seed uint64, nAgents, nSessions int, agentSel, sessSel string) *Input {
	in := randomInput(seed, nAgents, nSessions)
	r := rand.New(rand.NewPCG(seed, 2))
	in.Now = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	in.Policies = map[string]*structs.ResourcePolicy{}
	in.Usage = map[string]*structs.KeyUsage{}
	for i := range 40 {
		key := fmt.Sprintf("key-%02d", i)
		if i%2 == 0 {
			in.Policies[key] = &structs.ResourcePolicy{Name: "p" + key, MaxConcurrentSessions: 150,
				TotalResourceSlots: structs.Slots{structs.SlotCPU: structs.Whole(600)}}
		}
		in.Usage[key] = &structs.KeyUsage{AccessKey: key, Sessions: map[string]bool{}, Occupied: structs.Slots{}}
	}
	for _, ps := range in.Pending {
		ps.Session.AccessKey = fmt.Sprintf("key-%02d", r.IntN(40))
		ps.Session.Priority = r.IntN(3)
	}
	in.Groups = map[string]*structs.ResourceGroup{}
	for _, g := range []string{"default", "gpu"} {
		in.Groups[g] = &structs.ResourceGroup{Name: g, AgentSelector: agentSel, SessionSelector: sessSel}
	}
	return in
}

func benchPass(b *testing.B, nAgents, nSessions int) {
	for _, sel := range []string{structs.AgentSelectorDispersed, structs.AgentSelectorConcentrated, structs.AgentSelectorRoundRobin} {
		b.Run(sel, func(b *testing.B) {
			in := benchInput(1, nAgents, nSessions, sel, structs.SelectorFIFO)
			b.ReportAllocs()
			var res *Result
			for b.Loop() {
				res = Plan(in)
			}
			kernels := 0
			for _, sp := range res.Plan.Placements {
				kernels += len(sp.Placements)
			}
			perOp := b.Elapsed().Seconds() / float64(b.N)
			b.ReportMetric(float64(len(res.Plan.Placements)), "placed")
			b.ReportMetric(float64(len(res.Plan.Placements))/perOp, "placements/s")
			b.ReportMetric(float64(kernels)/perOp, "kernels/s")
		})
	}
}

// BenchmarkPass10kSessions1kAgents: one pass over 10,000 pending sessions
// (1-3 kernels each, 40 access keys, half with policy limits) and 1,000
// agents, per agent selector; placements/s counts placed sessions.
func BenchmarkPass10kSessions1kAgents(b *testing.B) { benchPass(b, 1000, 10000) }

// BenchmarkPass10kSessions10kAgents is the same with 10,000 agents, where
// nearly every session finds room.
func BenchmarkPass10kSessions10kAgents(b *testing.B) { benchPass(b, 10000, 10000) }

// BenchmarkDRFMixed: one drf pass over the mixed workload.
func BenchmarkDRFMixed(b *testing.B) {
	in := benchInput(1, 1000, 10000, structs.AgentSelectorDispersed, structs.SelectorDRF)
	b.ReportAllocs()
	var res *Result
	for b.Loop() {
		res = Plan(in)
	}
	perOp := b.Elapsed().Seconds() / float64(b.N)
	b.ReportMetric(float64(len(res.Plan.Placements))/perOp, "placements/s")
}

// BenchmarkSchedule10kSessions1kAgents is v1's benchmark: Schedule on the
// plain random input (no keys, default groups).
func BenchmarkSchedule10kSessions1kAgents(b *testing.B) {
	in := randomInput(1, 1000, 10000)
	b.ReportAllocs()
	var plan *structs.Plan
	for b.Loop() {
		plan = Schedule(in)
	}
	perOp := b.Elapsed().Seconds() / float64(b.N)
	b.ReportMetric(float64(len(plan.Placements)), "placed")
	b.ReportMetric(float64(len(plan.Unplaced)), "unplaced")
	b.ReportMetric(float64(len(plan.Placements))/perOp, "placements/s")
}

package scheduler

import (
	"fmt"
	"math/bits"
	"math/rand/v2"
	"testing"

	"github.com/corral-dev/corral/structs"
)

// bruteFirst is the agent selectors' definition, tested on every agent.
func bruteFirst(agents []*agentView, order indexOrder, prio []int, cursor string, r request) *agentView {
	var best *agentView
	better := func(a, b *agentView) bool {
		if order != orderByID {
			ua, ub := bits.OnesCount64(a.posMask&^r.mask), bits.OnesCount64(b.posMask&^r.mask)
			if ua != ub {
				return ua < ub
			}
			for _, i := range prio {
				if a.freeVec[i] != b.freeVec[i] {
					if order == orderLeastFree {
						return a.freeVec[i] < b.freeVec[i]
					}
					return a.freeVec[i] > b.freeVec[i]
				}
			}
		}
		return a.rank < b.rank
	}
	if order == orderByID {
		for _, v := range agents {
			if v.agent.ID > cursor && v.fits(r) {
				return v
			}
		}
		cursor = ""
	}
	for _, v := range agents {
		if v.fits(r) && (best == nil || better(v, best)) {
			best = v
		}
	}
	return best
}

func bruteBest(agents []*agentView, i int) (*agentView, structs.Quantity) {
	best := agents[0]
	for _, v := range agents[1:] {
		if v.free(i) > best.free(i) {
			best = v
		}
	}
	return best, best.free(i)
}

// TestAgentIndexMatchesBruteForce takes and gives back random requests on
// random agents and checks, after each change, that every index finds what
// testing every agent finds, and the same best free amounts.
func TestAgentIndexMatchesBruteForce(t *testing.T) {
	for seed := range uint64(6) {
		r := rand.New(rand.NewPCG(seed, 9))
		var agents []*structs.Agent
		n := 5 + r.IntN(120)
		for i := range n {
			c := structs.Slots{"cpu": structs.Whole(int64(r.IntN(9))), "mem": structs.Whole(int64(r.IntN(5)))}
			if r.IntN(3) == 0 {
				c["cuda.device"] = structs.Whole(int64(r.IntN(4)))
			}
			agents = append(agents, agent(fmt.Sprintf("a%03d", i), c))
		}
		names := map[string]bool{"cuda.device": true}
		slots := newSlotTable(agents, names)
		g := buildGroups(agents, slots)["default"]
		prio := slots.order(structs.DefaultResourcePriority)
		orders := []indexOrder{orderByID, orderLeastFree, orderMostFree}
		var idx []*agentIndex
		for _, o := range orders {
			idx = append(idx, newAgentIndex(g.agents, o, prio))
		}
		randReq := func() request {
			res := structs.Slots{}
			for _, name := range []string{"cpu", "mem", "cuda.device"} {
				if r.IntN(3) > 0 {
					res[name] = structs.Whole(int64(r.IntN(4)))
				}
			}
			return slots.request(res)
		}
		type held struct {
			v *agentView
			r request
		}
		var holds []held
		for step := range 400 {
			req := randReq()
			cursor := fmt.Sprintf("a%03d", r.IntN(n+2)-1)
			for oi, o := range orders {
				want := bruteFirst(g.agents, o, prio, cursor, req)
				var got *agentView
				if o == orderByID {
					if got = idx[oi].firstAfter(cursor, req, nil); got == nil {
						got = idx[oi].first(req)
					}
				} else {
					got = idx[oi].first(req)
				}
				if got != want {
					t.Fatalf("seed %d step %d order %d: index found %v, brute force %v", seed, step, o, idOf(got), idOf(want))
				}
				if (want != nil) != idx[oi].mayFitAny(req) && want != nil {
					t.Fatalf("seed %d step %d: mayFitAny false but %s fits", seed, step, want.agent.ID)
				}
				for i := range slots.names {
					gv, gq := idx[oi].best(i)
					wv, wq := bruteBest(g.agents, i)
					if gv != wv || gq != wq {
						t.Fatalf("seed %d step %d: best %s = %s on %s, want %s on %s", seed, step, slots.names[i], gq, gv.agent.ID, wq, wv.agent.ID)
					}
				}
			}
			// Take on a fitting agent, or give back an earlier hold.
			if len(holds) > 0 && r.IntN(3) == 0 {
				i := r.IntN(len(holds))
				holds[i].v.take(holds[i].r, -1)
				holds = append(holds[:i], holds[i+1:]...)
			} else if v := bruteFirst(g.agents, orders[r.IntN(3)], prio, "", req); v != nil {
				v.take(req, 1)
				holds = append(holds, held{v, req})
			}
		}
	}
}

func idOf(v *agentView) string {
	if v == nil {
		return "none"
	}
	return v.agent.ID
}

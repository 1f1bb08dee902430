package scheduler

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/corral-dev/corral/structs"
)

// mixedWorkload is 16 agents (32 cpu, 128GiB, 4 GPUs each: 512 cpu, 64
// GPUs in all) and three keys that queue in this order: gpu-team (40
// sessions of 2 GPUs), cpu-team (40 sessions of 16 cpu) and small (100
// sessions of 1 cpu). gpu-team's first session asks for 64 cpu, more than
// any agent has: a head of line that never fits.
func mixedWorkload() (*Input, map[string]string) {
	in := &Input{Now: t0, Usage: map[string]*structs.KeyUsage{}}
	for i := range 16 {
		in.Agents = append(in.Agents, agent(fmt.Sprintf("a%02d", i),
			slots("cpu", structs.Whole(32), "mem", gib(128), "cuda.device", structs.Whole(4))))
	}
	keyOf := map[string]string{}
	n := 0
	add := func(k string, count int, res structs.Slots) {
		for range count {
			n++
			id := fmt.Sprintf("%s-%03d", k, n)
			in.Pending = append(in.Pending, sess(id, uint64(n), res, key(k)))
			keyOf[id] = k
		}
	}
	add("gpu-team", 1, slots("cpu", structs.Whole(64), "mem", gib(16)))
	add("gpu-team", 40, slots("cpu", structs.Whole(4), "mem", gib(16), "cuda.device", structs.Whole(2)))
	add("cpu-team", 40, slots("cpu", structs.Whole(16), "mem", gib(32)))
	add("small", 100, slots("cpu", structs.Whole(1), "mem", gib(4)))
	return in, keyOf
}

// keyShares sums what each key's placed sessions hold and returns the
// dominant share of each over the cluster.
func keyShares(in *Input, placed []string, keyOf map[string]string) (map[string]float64, map[string]int) {
	capacity := structs.Slots{}
	for _, a := range in.Agents {
		capacity = capacity.Add(a.Capacity)
	}
	req := map[string]structs.Slots{}
	for _, ps := range in.Pending {
		req[ps.Session.ID] = ps.Kernels[0].Resources
	}
	held := map[string]structs.Slots{}
	count := map[string]int{}
	for _, id := range placed {
		k := keyOf[id]
		held[k] = held[k].Add(req[id])
		count[k]++
	}
	shares := map[string]float64{}
	for k, h := range held {
		shares[k] = dominantShare(capacity, h, nil)
	}
	return shares, count
}

func TestDRFvsFIFOShares(t *testing.T) {
	keys := []string{"gpu-team", "cpu-team", "small"}
	scenarios := []struct {
		name    string
		sel     string
		retries int
	}{
		{"fifo, head skipped at once (num_retries_to_skip=0)", structs.SelectorFIFO, 0},
		{"fifo, head blocks 3 passes (num_retries_to_skip=3)", structs.SelectorFIFO, 3},
		{"lifo", structs.SelectorLIFO, 0},
		{"drf", structs.SelectorDRF, 0},
	}
	spread := map[string]float64{}
	for _, sc := range scenarios {
		in, keyOf := mixedWorkload()
		in.Groups = group(sc.sel, sc.retries, structs.AgentSelectorConcentrated)
		res := Plan(in)
		shares, count := keyShares(in, placedIDs(res.Plan), keyOf)
		var parts []string
		lo, hi := 1.0, 0.0
		for _, k := range keys {
			parts = append(parts, fmt.Sprintf("%s %3d sessions, dominant share %5.1f%%", k, count[k], 100*shares[k]))
			lo, hi = min(lo, shares[k]), max(hi, shares[k])
		}
		spread[sc.name] = hi - lo
		t.Logf("%-52s one pass: %s", sc.name, strings.Join(parts, "; "))
		if sc.retries > 0 {
			if len(res.Plan.Placements) != 0 {
				t.Errorf("%s: the blocking head let %d sessions through", sc.name, len(res.Plan.Placements))
			}
			// Once the head has failed 3 passes the others go.
			for _, ps := range in.Pending {
				if ps.Session.ID == "gpu-team-001" {
					ps.Session.ScheduleAttempts = 3
				}
			}
			res = Plan(in)
			shares, count = keyShares(in, placedIDs(res.Plan), keyOf)
			parts = parts[:0]
			for _, k := range keys {
				parts = append(parts, fmt.Sprintf("%s %3d sessions, dominant share %5.1f%%", k, count[k], 100*shares[k]))
			}
			t.Logf("%-52s 4th pass: %s", "", strings.Join(parts, "; "))
		}
	}
	if spread["drf"] >= spread["fifo, head skipped at once (num_retries_to_skip=0)"] {
		t.Errorf("drf did not even out the dominant shares: spread %.3f vs fifo %.3f", spread["drf"],
			spread["fifo, head skipped at once (num_retries_to_skip=0)"])
	}

	// Over several passes where a quarter of the running sessions end and
	// each key resubmits what ended, each key's average dominant share.
	for _, sel := range []string{structs.SelectorFIFO, structs.SelectorDRF} {
		in, keyOf := mixedWorkload()
		in.Groups = group(sel, 0, structs.AgentSelectorConcentrated)
		running := map[string]bool{}
		sum := map[string]float64{}
		const passes = 8
		for pass := range passes {
			cur := &Input{Now: in.Now, Groups: in.Groups, Usage: map[string]*structs.KeyUsage{}}
			held := map[string]structs.Slots{}
			req := map[string]structs.Slots{}
			for _, ps := range in.Pending {
				req[ps.Session.ID] = ps.Kernels[0].Resources
			}
			// Running sessions: spread over agents in ID order, as placed.
			for _, id := range slices.Sorted(maps.Keys(running)) {
				held[keyOf[id]] = held[keyOf[id]].Add(req[id])
			}
			for k, h := range held {
				cur.Usage[k] = usage(k, h)
			}
			cur.Agents = agentsHolding(in.Agents, running, req)
			for _, ps := range in.Pending {
				if !running[ps.Session.ID] {
					cur.Pending = append(cur.Pending, ps)
				}
			}
			res := Plan(cur)
			for _, id := range placedIDs(res.Plan) {
				running[id] = true
			}
			shares, _ := keyShares(in, slices.Collect(maps.Keys(running)), keyOf)
			for k, s := range shares {
				sum[k] += s
			}
			// A quarter of the running sessions end and come back as new ones.
			i := 0
			for _, id := range slices.Sorted(maps.Keys(running)) {
				if (i+pass)%4 == 0 {
					delete(running, id)
					for _, ps := range in.Pending {
						if ps.Session.ID == id {
							ps.Session = &structs.Session{ID: id, AccessKey: ps.Session.AccessKey, ResourceGroup: ps.Session.ResourceGroup,
								Status: structs.SessionPending, CreateIndex: ps.Session.CreateIndex + 1000}
						}
					}
				}
				i++
			}
		}
		var parts []string
		for _, k := range keys {
			parts = append(parts, fmt.Sprintf("%s %5.1f%%", k, 100*sum[k]/passes))
		}
		t.Logf("%-4s average dominant share over %d passes with churn: %s", sel, passes, strings.Join(parts, ", "))
	}
}

// agentsHolding returns copies of agents whose occupancy counts the running
// sessions, placed first-fit in ID order (the shares test only needs the
// free room to be right in total, not per agent).
func agentsHolding(agents []*structs.Agent, running map[string]bool, req map[string]structs.Slots) []*structs.Agent {
	out := make([]*structs.Agent, len(agents))
	for i, a := range agents {
		out[i] = a.Copy()
	}
	for _, id := range slices.Sorted(maps.Keys(running)) {
		for _, a := range out {
			if ok, _ := structs.Fits(a.Capacity, a.Occupied, req[id]); ok {
				a.Occupied = a.Occupied.Add(req[id])
				break
			}
		}
	}
	return out
}

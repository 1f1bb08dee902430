package scheduler

import (
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/corral-dev/corral/structs"
)

// inMode sets the cluster mode of a session ("" is single-node).
func inMode(mode string, ps *PendingSession) *PendingSession {
	ps.Session.ClusterMode = mode
	return ps
}

// three returns kernels main1, sub1 and sub2, each asking for res.
func three(res structs.Slots) []*structs.Kernel {
	return []*structs.Kernel{kernel("main1", res.Copy()), kernel("sub1", res.Copy()), kernel("sub2", res.Copy())}
}

func TestSingleNodeSessions(t *testing.T) {
	cpuMem := func(c, m int64) structs.Slots { return slots("cpu", structs.Whole(c), "mem", gib(m)) }
	mixed := func(id string, main, sub structs.Slots, subDriver string) *PendingSession {
		return session(id, 1, "", kernel("main1", main), withDriver(kernel("sub1", sub), subDriver))
	}
	tests := []struct {
		name     string
		agentSel string
		cursor   string // round-robin cursor before the pass
		agents   []*structs.Agent
		pending  []*PendingSession
		placed   map[string]string
		unplaced map[string]string // exact reasons
		attempts map[string]int
		next     string // round-robin cursor after the pass, if checked
	}{
		{
			// Dispersed would put each kernel on the agent with the most
			// room: a1, a2, a3.
			name:     "dispersed keeps a single-node session on one agent",
			agentSel: structs.AgentSelectorDispersed,
			agents:   []*structs.Agent{agent("a1", cpu(8)), agent("a2", cpu(8)), agent("a3", cpu(8))},
			pending: []*PendingSession{
				session("s1", 1, "", three(cpu(2))...),
				inMode(structs.ClusterModeSingleNode, session("s2", 2, "", three(cpu(2))...)),
				sess("s3", 3, cpu(3)),
			},
			// s1 takes 6 of a1 (ties: lowest ID), s2 6 of a2, s3 the most free: a3.
			placed: map[string]string{"s1": "main1@a1 sub1@a1 sub2@a1", "s2": "main1@a2 sub1@a2 sub2@a2", "s3": "main1@a3"},
		},
		{
			name:     "multi-node spreads over agents",
			agentSel: structs.AgentSelectorDispersed,
			agents:   []*structs.Agent{agent("a1", cpu(8)), agent("a2", cpu(8)), agent("a3", cpu(8))},
			pending:  []*PendingSession{multiNode(session("s1", 1, "", three(cpu(2))...))},
			placed:   map[string]string{"s1": "main1@a1 sub1@a2 sub2@a3"},
		},
		{
			// Concentrated would pick the least free agent for each kernel
			// of s1 (a1, a2, then big); together they fit only on big.
			// Multi-node m1 then spreads: big (3 left), a1, a2.
			name:     "fits only summed on the biggest agent",
			agentSel: structs.AgentSelectorConcentrated,
			agents:   []*structs.Agent{agent("a1", cpu(4)), agent("a2", cpu(4)), agent("big", cpu(16), occupied(cpu(4)))},
			pending: []*PendingSession{
				session("s1", 1, "", three(cpu(3))...),
				multiNode(session("m1", 2, "", three(cpu(3))...)),
			},
			placed: map[string]string{"s1": "main1@big sub1@big sub2@big", "m1": "main1@big sub1@a1 sub2@a2"},
		},
		{
			name:     "no single agent has room although the cluster has",
			agentSel: structs.AgentSelectorDispersed,
			agents:   []*structs.Agent{agent("a1", cpuMem(4, 4)), agent("a2", cpuMem(4, 4)), agent("a3", cpuMem(4, 4))},
			pending: []*PendingSession{
				func() *PendingSession {
					ps := session("s1", 1, "", three(cpuMem(2, 1))...)
					ps.Session.ScheduleAttempts = 2
					return ps
				}(),
			},
			unplaced: map[string]string{
				"s1": `no agent in resource group "default" has room for all 3 kernels of the single-node session together: ` +
					`not enough free cpu (they need cpu=6 in all, best free cpu=4 on agent a1)`,
			},
			attempts: map[string]int{"s1": 3},
		},
		{
			name:     "every slot free somewhere but never together",
			agentSel: structs.AgentSelectorDispersed,
			agents:   []*structs.Agent{agent("a1", cpuMem(8, 2)), agent("a2", cpuMem(2, 8))},
			pending:  []*PendingSession{session("s1", 1, "", kernel("main1", cpuMem(2, 2)), kernel("sub1", cpuMem(2, 2)))},
			unplaced: map[string]string{
				"s1": `no agent in resource group "default" has room for all 2 kernels of the single-node session together: ` +
					`none has all of their slots free at once (they need cpu=4 mem=4GiB in all; free: a1 has cpu=8 mem=2GiB, a2 has cpu=2 mem=8GiB)`,
			},
			attempts: map[string]int{"s1": 1},
		},
		{
			// A failed sum is remembered: s2 asks as much and fails alike,
			// smaller requests still find room.
			name:     "failures are remembered without hiding what fits",
			agentSel: structs.AgentSelectorDispersed,
			agents:   []*structs.Agent{agent("a1", cpu(4)), agent("a2", cpu(4))},
			pending: []*PendingSession{
				session("s1", 1, "", kernel("main1", cpu(3)), kernel("sub1", cpu(3))),
				session("s2", 2, "", three(cpu(2))...),
				sess("s3", 3, cpu(4)),
				session("s4", 4, "", kernel("main1", cpu(1)), kernel("sub1", cpu(1))),
			},
			placed: map[string]string{"s3": "main1@a1", "s4": "main1@a2 sub1@a2"},
			unplaced: map[string]string{
				"s1": `no agent in resource group "default" has room for all 2 kernels of the single-node session together: ` +
					`not enough free cpu (they need cpu=6 in all, best free cpu=4 on agent a1)`,
				"s2": `no agent in resource group "default" has room for all 3 kernels of the single-node session together: ` +
					`not enough free cpu (they need cpu=6 in all, best free cpu=4 on agent a1)`,
			},
			attempts: map[string]int{"s1": 1, "s2": 1},
		},
		{
			name:     "mixed drivers need an agent with all of them",
			agentSel: structs.AgentSelectorDispersed,
			agents: []*structs.Agent{
				agent("a1", cpu(16)), agent("a2", cpu(16), drivers("runc")), agent("a3", cpu(8), drivers("runc", "exec")),
			},
			pending: []*PendingSession{
				mixed("s1", cpu(2), cpu(2), "runc"),
				multiNode(mixed("m1", cpu(2), cpu(2), "runc")),
			},
			placed: map[string]string{"s1": "main1@a3 sub1@a3", "m1": "main1@a1 sub1@a2"},
		},
		{
			// Every agent with runc has exec too: the session's agents are
			// those with runc, and share their index.
			name:     "mixed drivers where one driver implies the other",
			agentSel: structs.AgentSelectorDispersed,
			agents: []*structs.Agent{
				agent("a1", cpu(16)), agent("a2", cpu(8), drivers("exec", "runc")), agent("a3", cpu(4), drivers("exec", "runc")),
			},
			pending: []*PendingSession{
				mixed("s1", cpu(10), cpu(10), "runc"),
				session("s2", 2, "", withDriver(kernel("main1", cpu(10)), "runc")),
				session("s3", 3, "", kernel("main1", cpu(2)), withDriver(kernel("sub1", cpu(2)), "runc")),
				sess("s4", 4, cpu(10)),
			},
			placed: map[string]string{"s3": "main1@a2 sub1@a2", "s4": "main1@a1"},
			unplaced: map[string]string{
				"s1": `no agent with drivers "exec" and "runc" in resource group "default" has room for all 2 kernels of the ` +
					`single-node session together: not enough free cpu (they need cpu=20 in all, best free cpu=8 on agent a2)`,
				"s2": `no agent with driver "runc" in resource group "default" has enough free cpu (kernel main1 needs cpu=10, best free cpu=8 on agent a2)`,
			},
			attempts: map[string]int{"s1": 1, "s2": 1},
		},
		{
			name:     "mixed drivers never on one agent",
			agentSel: structs.AgentSelectorDispersed,
			agents:   []*structs.Agent{agent("a1", cpu(16)), agent("a2", cpu(16), drivers("runc"))},
			pending:  []*PendingSession{mixed("s1", cpu(2), cpu(2), "runc")},
			unplaced: map[string]string{
				"s1": `no alive agent in resource group "default" has all of the drivers "exec" and "runc" that the kernels of ` +
					`the single-node session use (each is on some agent, never all on one; give the kernels one driver, or make the session multi-node)`,
			},
			attempts: map[string]int{"s1": 1},
		},
		{
			name:     "mixed drivers: the agents with all of them lack room",
			agentSel: structs.AgentSelectorDispersed,
			agents:   []*structs.Agent{agent("a1", cpu(16)), agent("a3", cpu(2), drivers("exec", "runc"))},
			pending: []*PendingSession{
				mixed("s1", cpu(2), cpu(2), "runc"),
				mixed("s2", cpu(1), cpu(1), "vm"),
			},
			unplaced: map[string]string{
				"s1": `no agent with drivers "exec" and "runc" in resource group "default" has room for all 2 kernels of the ` +
					`single-node session together: not enough free cpu (they need cpu=4 in all, best free cpu=2 on agent a3)`,
				"s2": `no alive agent in resource group "default" has driver "vm" (kernel sub1; drivers there: exec, runc)`,
			},
			attempts: map[string]int{"s1": 1, "s2": 1},
		},
		{
			name:     "roundrobin moves the cursor once, to the session's agent",
			agentSel: structs.AgentSelectorRoundRobin, cursor: "a1",
			agents: []*structs.Agent{agent("a1", cpu(8)), agent("a2", cpu(2)), agent("a3", cpu(8))},
			pending: []*PendingSession{
				session("s1", 1, "", three(cpu(1))...), // a2 is too small for 3
			},
			placed: map[string]string{"s1": "main1@a3 sub1@a3 sub2@a3"},
			next:   "a3",
		},
		{
			name:     "one kernel: the same whatever the mode",
			agentSel: structs.AgentSelectorDispersed,
			agents:   []*structs.Agent{agent("a1", cpu(4)), agent("a2", cpu(8))},
			pending: []*PendingSession{
				multiNode(sess("s1", 1, cpu(3))),
				inMode(structs.ClusterModeSingleNode, sess("s2", 2, cpu(3))),
				sess("s3", 3, cpu(3)),
			},
			placed: map[string]string{"s1": "main1@a2", "s2": "main1@a2", "s3": "main1@a1"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := &Input{Pending: tt.pending, Agents: tt.agents, Groups: group("", 0, tt.agentSel),
				RoundRobin: map[string]string{"default": tt.cursor}}
			res := Plan(in)
			if tt.placed == nil {
				tt.placed = map[string]string{}
			}
			if got := placedMap(res.Plan); !reflect.DeepEqual(got, tt.placed) {
				t.Errorf("placements = %v, want %v", got, tt.placed)
			}
			if tt.unplaced == nil {
				tt.unplaced = map[string]string{}
			}
			for id, want := range tt.unplaced {
				if got := res.Plan.Unplaced[id]; got != want {
					t.Errorf("unplaced[%s] =\n  %s\nwant\n  %s", id, got, want)
				}
			}
			if len(res.Plan.Unplaced) != len(tt.unplaced) {
				t.Errorf("unplaced = %v", res.Plan.Unplaced)
			}
			if tt.attempts == nil {
				tt.attempts = map[string]int{}
			}
			if !reflect.DeepEqual(res.Attempts, tt.attempts) {
				t.Errorf("attempts = %v, want %v", res.Attempts, tt.attempts)
			}
			if tt.next != "" && res.RoundRobin["default"] != tt.next {
				t.Errorf("cursor = %q, want %q", res.RoundRobin["default"], tt.next)
			}
			checkPlan(t, in, res.Plan)
		})
	}
}

// TestSingleNodeWithSelector: a custom AgentSelector is asked once for a
// single-node session, with main1 asking for the sum, among the agents with
// room for all of it.
func TestSingleNodeWithSelector(t *testing.T) {
	agents := []*structs.Agent{agent("a1", cpu(4)), agent("a2", cpu(8)), agent("a3", cpu(6))}
	in := &Input{Agents: agents, Pending: []*PendingSession{session("s1", 1, "", kernel("main1", cpu(2)), kernel("sub1", cpu(3)))}}
	var seen []string
	spy := func(k *structs.Kernel, cands []Candidate) int {
		var ids []string
		for _, c := range cands {
			ids = append(ids, c.Agent.ID)
		}
		seen = append(seen, k.Hostname+" "+k.Resources.String()+": "+strings.Join(ids, ","))
		return MostFreeCPU(k, cands)
	}
	plan := ScheduleWith(in, spy)
	if want := []string{"main1 cpu=5: a2,a3"}; !reflect.DeepEqual(seen, want) {
		t.Errorf("selector saw %q, want %q", seen, want)
	}
	if got, want := placedMap(plan), map[string]string{"s1": "main1@a2 sub1@a2"}; !reflect.DeepEqual(got, want) {
		t.Errorf("placements = %v, want %v", got, want)
	}
	if got := in.Pending[0].Kernels[0].Resources; !got.Equal(cpu(2)) {
		t.Errorf("main1's request changed to %v", got)
	}
	checkPlan(t, in, plan)

	plan = ScheduleWith(in, func(*structs.Kernel, []Candidate) int { return -1 })
	want := `the agent selector chose none of the 2 agents in resource group "default" with room for all 2 kernels of the single-node session together`
	if got := plan.Unplaced["s1"]; got != want {
		t.Errorf("declining selector: reason %q, want %q", got, want)
	}
	in.Agents = agents[:1]
	plan = ScheduleWith(in, spy)
	want = `no agent in resource group "default" has room for all 2 kernels of the single-node session together: ` +
		`not enough free cpu (they need cpu=5 in all, best free cpu=4 on agent a1)`
	if got := plan.Unplaced["s1"]; got != want || len(seen) != 1 {
		t.Errorf("no room: reason %q, want %q (selector asked %d times)", got, want, len(seen))
	}
}

// TestSingleNodeIsOneKernelAskingForTheSum: on random inputs, every
// single-node session of several kernels goes where, and fails when, a
// one-kernel session asking for the sum of its kernels would.
func TestSingleNodeIsOneKernelAskingForTheSum(t *testing.T) {
	for _, sel := range []string{structs.AgentSelectorConcentrated, structs.AgentSelectorDispersed, structs.AgentSelectorRoundRobin} {
		for seed := range uint64(4) {
			in := randomInput(seed, 60, 600)
			in.Groups = map[string]*structs.ResourceGroup{"default": {AgentSelector: sel}, "gpu": {AgentSelector: sel}}
			in.RoundRobin = map[string]string{"default": "agent-00030"}
			alone := *in
			alone.Pending = nil
			for _, ps := range in.Pending {
				ps.Session.ClusterMode = ""
				for _, k := range ps.Kernels {
					k.Driver = ps.Kernels[0].Driver // one driver, as a lone kernel has
				}
				sum := structs.Slots{}
				for _, k := range ps.Kernels {
					sum = sum.Add(k.Resources)
				}
				k := *ps.Kernels[0]
				k.Resources = sum
				alone.Pending = append(alone.Pending, &PendingSession{Session: ps.Session, Kernels: []*structs.Kernel{&k}})
			}
			got, want := Plan(in), Plan(&alone)
			checkPlan(t, in, got.Plan)
			agentOf := func(p *structs.Plan) map[string]string {
				out := map[string]string{}
				for _, sp := range p.Placements {
					out[sp.SessionID] = sp.Placements[0].AgentID
				}
				return out
			}
			if g, w := agentOf(got.Plan), agentOf(want.Plan); !reflect.DeepEqual(g, w) {
				t.Fatalf("%s seed %d: sessions went to %v, one kernel each to %v", sel, seed, g, w)
			}
			if g, w := slices.Sorted(maps.Keys(got.Plan.Unplaced)), slices.Sorted(maps.Keys(want.Plan.Unplaced)); !reflect.DeepEqual(g, w) {
				t.Fatalf("%s seed %d: unplaced %v, one kernel each %v", sel, seed, g, w)
			}
			if !reflect.DeepEqual(got.RoundRobin, want.RoundRobin) || !reflect.DeepEqual(got.Order, want.Order) {
				t.Fatalf("%s seed %d: cursor %v order %v, one kernel each %v %v", sel, seed, got.RoundRobin, got.Order, want.RoundRobin, want.Order)
			}
			together := 0
			for _, sp := range got.Plan.Placements {
				if len(sp.Placements) > 1 {
					together++
				}
			}
			if together == 0 || len(got.Plan.Unplaced) == 0 {
				t.Fatalf("%s seed %d: %d sessions of several kernels placed, %d unplaced: the input tests too little",
					sel, seed, together, len(got.Plan.Unplaced))
			}
		}
	}
}

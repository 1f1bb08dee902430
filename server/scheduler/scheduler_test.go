package scheduler

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"

	"github.com/corral-dev/corral/structs"
)

// Helpers to build snapshots tersely.

func cpu(n float64) structs.Slots {
	return structs.Slots{structs.SlotCPU: structs.Quantity(n * structs.QuantityScale)}
}

func gib(n int64) structs.Quantity { return structs.Whole(n << 30) }

func slots(kv ...any) structs.Slots {
	s := structs.Slots{}
	for i := 0; i < len(kv); i += 2 {
		s[kv[i].(string)] = kv[i+1].(structs.Quantity)
	}
	return s
}

type agentOpt func(*structs.Agent)

func inGroup(g string) agentOpt { return func(a *structs.Agent) { a.ResourceGroup = g } }
func status(s structs.AgentStatus) agentOpt {
	return func(a *structs.Agent) { a.Status = s }
}
func drivers(d ...string) agentOpt      { return func(a *structs.Agent) { a.Drivers = d } }
func occupied(s structs.Slots) agentOpt { return func(a *structs.Agent) { a.Occupied = s } }

func agent(id string, capacity structs.Slots, opts ...agentOpt) *structs.Agent {
	a := &structs.Agent{
		ID: id, Name: id, ResourceGroup: structs.DefaultResourceGroup, Status: structs.AgentAlive,
		Drivers: []string{"exec"}, Capacity: capacity, Occupied: structs.Slots{},
	}
	for _, o := range opts {
		o(a)
	}
	return a
}

// kernel builds a PENDING exec kernel; host is "main1", "sub1", ...
func kernel(host string, res structs.Slots) *structs.Kernel {
	role, idx := strings.TrimRight(host, "0123456789"), 0
	fmt.Sscanf(strings.TrimPrefix(host, role), "%d", &idx)
	return &structs.Kernel{ID: "k-" + host, Role: role, Idx: idx, Hostname: host, Driver: "exec", Resources: res, Status: structs.KernelPending}
}

func withDriver(k *structs.Kernel, d string) *structs.Kernel { k.Driver = d; return k }

// session builds a PENDING session; kernel IDs are prefixed with its ID.
func session(id string, createIndex uint64, group string, kernels ...*structs.Kernel) *PendingSession {
	s := &structs.Session{ID: id, ResourceGroup: group, Status: structs.SessionPending, CreateIndex: createIndex, Type: structs.SessionTypeBatch}
	for _, k := range kernels {
		k.ID = id + "-" + k.Hostname
		k.SessionID = id
		s.KernelIDs = append(s.KernelIDs, k.ID)
	}
	return &PendingSession{Session: s, Kernels: kernels}
}

// multiNode makes ps a multi-node session: its kernels may go on
// different agents. (Sessions of several kernels are single-node by default.)
func multiNode(ps *PendingSession) *PendingSession {
	ps.Session.ClusterMode = structs.ClusterModeMultiNode
	return ps
}

// placed renders a plan's placements as session -> "main1@a1 sub1@a2".
func placedMap(p *structs.Plan) map[string]string {
	out := map[string]string{}
	for _, sp := range p.Placements {
		var parts []string
		for _, pl := range sp.Placements {
			parts = append(parts, strings.TrimPrefix(pl.KernelID, sp.SessionID+"-")+"@"+pl.AgentID)
		}
		out[sp.SessionID] = strings.Join(parts, " ")
	}
	return out
}

func TestSchedule(t *testing.T) {
	tests := []struct {
		name     string
		agents   []*structs.Agent
		pending  []*PendingSession
		placed   map[string]string
		unplaced map[string]string // exact reasons
		order    []string          // expected order of placed sessions, if checked
	}{
		{
			name:    "fit",
			agents:  []*structs.Agent{agent("a1", cpu(4))},
			pending: []*PendingSession{session("s1", 1, "", kernel("main1", cpu(2)))},
			placed:  map[string]string{"s1": "main1@a1"},
		},
		{
			name:    "no fit with reason",
			agents:  []*structs.Agent{agent("a1", cpu(2))},
			pending: []*PendingSession{session("s1", 1, "", kernel("main1", cpu(4)))},
			unplaced: map[string]string{
				"s1": `no agent in resource group "default" has enough free cpu (kernel main1 needs cpu=4, best free cpu=2 on agent a1)`,
			},
		},
		{
			name:    "best free is the largest over agents, occupied counted",
			agents:  []*structs.Agent{agent("a1", cpu(8), occupied(cpu(7))), agent("a2", cpu(4), occupied(cpu(1))), agent("a3", cpu(2))},
			pending: []*PendingSession{session("s1", 1, "", kernel("main1", cpu(3.5)))},
			unplaced: map[string]string{
				"s1": `no agent in resource group "default" has enough free cpu (kernel main1 needs cpu=3.5, best free cpu=3 on agent a2)`,
			},
		},
		{
			name:    "most free cpu wins",
			agents:  []*structs.Agent{agent("a1", cpu(4)), agent("a2", cpu(8)), agent("a3", cpu(8), occupied(cpu(6)))},
			pending: []*PendingSession{session("s1", 1, "", kernel("main1", cpu(1)))},
			placed:  map[string]string{"s1": "main1@a2"},
		},
		{
			name:    "ties go to the lowest agent ID",
			agents:  []*structs.Agent{agent("b", cpu(4)), agent("a", cpu(4)), agent("c", cpu(4))},
			pending: []*PendingSession{session("s1", 1, "", kernel("main1", cpu(1)))},
			placed:  map[string]string{"s1": "main1@a"},
		},
		{
			name:   "multiple sessions fill agents in FIFO order",
			agents: []*structs.Agent{agent("a2", cpu(4)), agent("a1", cpu(4))},
			pending: []*PendingSession{
				session("s5", 50, "", kernel("main1", cpu(2))),
				session("s3", 30, "", kernel("main1", cpu(2))),
				session("s1", 10, "", kernel("main1", cpu(2))),
				session("s4", 40, "", kernel("main1", cpu(2))),
				session("s2", 20, "", kernel("main1", cpu(2))),
			},
			placed: map[string]string{"s1": "main1@a1", "s2": "main1@a2", "s3": "main1@a1", "s4": "main1@a2"},
			unplaced: map[string]string{
				"s5": `no agent in resource group "default" has enough free cpu (kernel main1 needs cpu=2, best free cpu=0 on agent a1)`,
			},
			order: []string{"s1", "s2", "s3", "s4"},
		},
		{
			name:   "equal create index: FIFO by session ID",
			agents: []*structs.Agent{agent("a1", cpu(2))},
			pending: []*PendingSession{
				session("sb", 7, "", kernel("main1", cpu(2))),
				session("sa", 7, "", kernel("main1", cpu(2))),
			},
			placed:   map[string]string{"sa": "main1@a1"},
			unplaced: map[string]string{"sb": `no agent in resource group "default" has enough free cpu (kernel main1 needs cpu=2, best free cpu=0 on agent a1)`},
		},
		{
			name:   "a session that does not fit does not block later ones",
			agents: []*structs.Agent{agent("a1", cpu(4))},
			pending: []*PendingSession{
				session("big", 1, "", kernel("main1", cpu(8))),
				session("small", 2, "", kernel("main1", cpu(4))),
			},
			placed:   map[string]string{"small": "main1@a1"},
			unplaced: map[string]string{"big": `no agent in resource group "default" has enough free cpu (kernel main1 needs cpu=8, best free cpu=4 on agent a1)`},
		},
		{
			name:    "fractional cpu fits exactly",
			agents:  []*structs.Agent{agent("a1", cpu(1), occupied(cpu(0.3)))},
			pending: []*PendingSession{session("s1", 1, "", kernel("main1", cpu(0.1)), kernel("sub1", cpu(0.6)))},
			placed:  map[string]string{"s1": "main1@a1 sub1@a1"},
		},
		{
			name:    "gang: one kernel on each agent",
			agents:  []*structs.Agent{agent("a1", cpu(4)), agent("a2", cpu(4))},
			pending: []*PendingSession{multiNode(session("s1", 1, "", kernel("sub1", cpu(4)), kernel("main1", cpu(4))))},
			placed:  map[string]string{"s1": "main1@a1 sub1@a2"},
		},
		{
			name:    "gang: both kernels together on one agent",
			agents:  []*structs.Agent{agent("a1", cpu(8)), agent("a2", cpu(1))},
			pending: []*PendingSession{session("s1", 1, "", kernel("main1", cpu(4)), kernel("sub1", cpu(4)))},
			placed:  map[string]string{"s1": "main1@a1 sub1@a1"},
		},
		{
			name:   "gang: none placed when only one kernel fits, and the room stays free",
			agents: []*structs.Agent{agent("a1", cpu(4)), agent("a2", cpu(2))},
			pending: []*PendingSession{
				multiNode(session("s1", 1, "", kernel("main1", cpu(3)), kernel("sub1", cpu(3)))),
				session("s2", 2, "", kernel("main1", cpu(4))),
			},
			placed: map[string]string{"s2": "main1@a1"},
			unplaced: map[string]string{
				"s1": `the session's 2 kernels do not fit together: after placing main1 on a1, ` +
					`no agent in resource group "default" has enough free cpu (kernel sub1 needs cpu=3, best free cpu=2 on agent a2)`,
			},
		},
		{
			// Extra roles (ps, aux) come after main1 and the subs, whatever
			// their names, and each kernel asks for its own slots on an
			// agent with its own driver.
			name: "heterogeneous roles: each kernel with its own driver and slots",
			agents: []*structs.Agent{
				agent("a1", cpu(16)),
				agent("a2", cpu(6), drivers("runc")),
			},
			pending: []*PendingSession{multiNode(session("s1", 1, "",
				withDriver(kernel("ps2", cpu(3)), "runc"), kernel("aux1", cpu(1)), withDriver(kernel("ps1", cpu(3)), "runc"),
				kernel("main1", cpu(2)), kernel("sub1", cpu(1))))},
			placed: map[string]string{"s1": "main1@a1 sub1@a1 aux1@a1 ps1@a2 ps2@a2"},
		},
		{
			name:   "heterogeneous roles: a role's driver found nowhere holds the gang",
			agents: []*structs.Agent{agent("a1", cpu(4)), agent("a2", cpu(4), drivers("exec", "runc"))},
			pending: []*PendingSession{multiNode(session("s1", 1, "",
				kernel("main1", cpu(1)), withDriver(kernel("ps1", cpu(3)), "runc"), withDriver(kernel("ps2", cpu(3)), "runc")))},
			unplaced: map[string]string{
				"s1": `the session's 3 kernels do not fit together: after placing main1 on a1, ps1 on a2, ` +
					`no agent with driver "runc" in resource group "default" has enough free cpu (kernel ps2 needs cpu=3, best free cpu=1 on agent a2)`,
			},
		},
		{
			name:   "heterogeneous roles: single-node sums every role on one agent with all their drivers",
			agents: []*structs.Agent{agent("a1", cpu(16)), agent("a2", cpu(6), drivers("exec", "runc"))},
			pending: []*PendingSession{session("s1", 1, "",
				kernel("main1", cpu(2)), withDriver(kernel("ps1", cpu(2)), "runc"), withDriver(kernel("ps2", cpu(2)), "runc"))},
			placed: map[string]string{"s1": "main1@a2 ps1@a2 ps2@a2"},
		},
		{
			name: "group isolation",
			agents: []*structs.Agent{
				agent("a1", cpu(64)),
				agent("g1", cpu(8), inGroup("gpu")),
				agent("x1", cpu(64), inGroup("")), // "" is the default group
			},
			pending: []*PendingSession{
				session("s1", 1, "gpu", kernel("main1", cpu(8))),
				session("s2", 2, "gpu", kernel("main1", cpu(1))),
				session("s3", 3, "", kernel("main1", cpu(1))),
				session("s4", 4, "default", kernel("main1", cpu(1))),
				session("s5", 5, "tpu", kernel("main1", cpu(1))),
			},
			placed: map[string]string{"s1": "main1@g1", "s3": "main1@a1", "s4": "main1@x1"},
			unplaced: map[string]string{
				"s2": `no agent in resource group "gpu" has enough free cpu (kernel main1 needs cpu=1, best free cpu=0 on agent g1)`,
				"s5": `no alive agent in resource group "tpu" (alive agents are in: default, gpu)`,
			},
		},
		{
			name: "driver filter",
			agents: []*structs.Agent{
				agent("a1", cpu(64), drivers("exec")),
				agent("a2", cpu(4), drivers("runc", "exec")),
			},
			pending: []*PendingSession{
				session("s1", 1, "", withDriver(kernel("main1", cpu(1)), "runc")),
				session("s2", 2, "", withDriver(kernel("main1", cpu(1)), "vm")),
				session("s3", 3, "", withDriver(kernel("main1", cpu(8)), "runc")),
				session("s4", 4, "", kernel("main1", cpu(1)), withDriver(kernel("sub1", cpu(1)), "vm")),
			},
			placed: map[string]string{"s1": "main1@a2"},
			unplaced: map[string]string{
				"s2": `no alive agent in resource group "default" has driver "vm" (kernel main1; drivers there: exec, runc)`,
				"s3": `no agent with driver "runc" in resource group "default" has enough free cpu (kernel main1 needs cpu=8, best free cpu=3 on agent a2)`,
				"s4": `no alive agent in resource group "default" has driver "vm" (kernel sub1; drivers there: exec, runc)`,
			},
		},
		{
			name: "dead agents ignored",
			agents: []*structs.Agent{
				agent("a1", cpu(64), status(structs.AgentLost)),
				agent("a2", cpu(2)),
				agent("a3", cpu(64), status(structs.AgentTerminated)),
				agent("g1", cpu(64), inGroup("gpu"), status(structs.AgentLost)),
				agent("h1", cpu(64), inGroup("hpc"), status(structs.AgentLost)),
				agent("h2", cpu(64), inGroup("hpc"), status(structs.AgentTerminated)),
			},
			pending: []*PendingSession{
				session("s1", 1, "", kernel("main1", cpu(1))),
				session("s2", 2, "", kernel("main1", cpu(2))),
				session("s3", 3, "gpu", kernel("main1", cpu(1))),
				session("s4", 4, "hpc", kernel("main1", cpu(1))),
			},
			placed: map[string]string{"s1": "main1@a2"},
			unplaced: map[string]string{
				"s2": `no agent in resource group "default" has enough free cpu (kernel main1 needs cpu=2, best free cpu=1 on agent a2)`,
				"s3": `no alive agent in resource group "gpu" (its 1 agent is not ALIVE)`,
				"s4": `no alive agent in resource group "hpc" (its 2 agents are not ALIVE)`,
			},
		},
		{
			name:    "no agents at all",
			pending: []*PendingSession{session("s1", 1, "", kernel("main1", cpu(1)))},
			unplaced: map[string]string{
				"s1": `no alive agent in resource group "default"`,
			},
		},
		{
			name: "several slots short",
			agents: []*structs.Agent{
				agent("a1", slots("cpu", structs.Whole(8), "mem", gib(4))),
				agent("a2", slots("cpu", structs.Whole(2), "mem", gib(6))),
			},
			pending: []*PendingSession{session("s1", 1, "", kernel("main1", slots("cpu", structs.Whole(16), "mem", gib(8), "cuda.device", structs.Whole(1))))},
			unplaced: map[string]string{
				"s1": `no agent in resource group "default" has enough free cpu or cuda.device or mem ` +
					`(kernel main1 needs cpu=16 and cuda.device=1 and mem=8GiB, ` +
					`best free cpu=8 on agent a1 and cuda.device=0 on agent a1 and mem=6GiB on agent a2)`,
			},
		},
		{
			name: "every slot free somewhere but not together",
			agents: []*structs.Agent{
				agent("a1", slots("cpu", structs.Whole(8), "mem", gib(4))),
				agent("a2", slots("cpu", structs.Whole(2), "mem", gib(16))),
				agent("a3", slots("cpu", structs.Whole(1), "mem", gib(1))),
				agent("a4", slots("cpu", structs.Whole(1), "mem", gib(1))),
			},
			pending: []*PendingSession{session("s1", 1, "", kernel("main1", slots("cpu", structs.Whole(4), "mem", gib(8))))},
			unplaced: map[string]string{
				"s1": `no agent in resource group "default" has all of the kernel's slots free at once ` +
					`(kernel main1 needs cpu=4 mem=8GiB; free: a1 has cpu=8 mem=4GiB, a2 has cpu=2 mem=16GiB, a3 has cpu=1 mem=1GiB, and 1 more)`,
			},
		},
		{
			name:   "zero requests and slots the agent lacks",
			agents: []*structs.Agent{agent("a1", cpu(1))},
			pending: []*PendingSession{
				session("s1", 1, "", kernel("main1", slots("cpu", structs.Quantity(0), "cuda.device", structs.Quantity(0)))),
				session("s2", 2, "", kernel("main1", slots("cuda.device", structs.Whole(1)))),
			},
			placed: map[string]string{"s1": "main1@a1"},
			unplaced: map[string]string{
				"s2": `no agent in resource group "default" has enough free cuda.device (kernel main1 needs cuda.device=1, best free cuda.device=0 on agent a1)`,
			},
		},
		{
			name:   "invalid sessions",
			agents: []*structs.Agent{agent("a1", cpu(8))},
			pending: []*PendingSession{
				session("empty", 1, ""),
				func() *PendingSession {
					ps := session("cancelled", 2, "", kernel("main1", cpu(1)), kernel("sub1", cpu(1)))
					ps.Kernels[1].Status = structs.KernelCancelled
					return ps
				}(),
				session("negative", 3, "", kernel("main1", cpu(-1))),
				session("ok", 4, "", kernel("main1", cpu(8))),
			},
			placed: map[string]string{"ok": "main1@a1"},
			unplaced: map[string]string{
				"empty":     "session has no kernels",
				"cancelled": "kernel sub1 is CANCELLED, not PENDING",
				"negative":  "kernel main1 requests a negative amount of cpu (-1); requests must be zero or more",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			plan := Schedule(&Input{Pending: tt.pending, Agents: tt.agents, Index: 42})
			if plan.SnapshotIndex != 42 {
				t.Errorf("SnapshotIndex = %d, want 42", plan.SnapshotIndex)
			}
			want := tt.placed
			if want == nil {
				want = map[string]string{}
			}
			if got := placedMap(plan); !reflect.DeepEqual(got, want) {
				t.Errorf("placements = %v, want %v", got, want)
			}
			wantUnplaced := tt.unplaced
			if wantUnplaced == nil {
				wantUnplaced = map[string]string{}
			}
			if !reflect.DeepEqual(plan.Unplaced, wantUnplaced) {
				for id, got := range plan.Unplaced {
					if got != wantUnplaced[id] {
						t.Errorf("unplaced[%s] =\n  %s\nwant\n  %s", id, got, wantUnplaced[id])
					}
				}
				t.Errorf("unplaced = %v, want %v", plan.Unplaced, wantUnplaced)
			}
			if tt.order != nil {
				var got []string
				for _, sp := range plan.Placements {
					got = append(got, sp.SessionID)
				}
				if !reflect.DeepEqual(got, tt.order) {
					t.Errorf("placement order = %v, want %v", got, tt.order)
				}
			}
			checkPlan(t, &Input{Pending: tt.pending, Agents: tt.agents}, plan)
		})
	}
}

// checkPlan replays a plan the way the FSM does: every placement must pass
// CheckPlacementInGroup against occupancy that counts the earlier ones, every
// session is placed whole or unplaced, never both, and the kernels of a
// single-node session share one agent.
func checkPlan(t *testing.T, in *Input, plan *structs.Plan) {
	t.Helper()
	agents := map[string]*structs.Agent{}
	for _, a := range in.Agents {
		agents[a.ID] = a.Copy()
	}
	sessions := map[string]*PendingSession{}
	for _, ps := range in.Pending {
		sessions[ps.Session.ID] = ps
	}
	seen := map[string]bool{}
	for _, sp := range plan.Placements {
		ps := sessions[sp.SessionID]
		if ps == nil {
			t.Fatalf("plan places unknown session %s", sp.SessionID)
		}
		if seen[sp.SessionID] {
			t.Fatalf("session %s placed twice", sp.SessionID)
		}
		seen[sp.SessionID] = true
		if _, ok := plan.Unplaced[sp.SessionID]; ok {
			t.Errorf("session %s is both placed and unplaced", sp.SessionID)
		}
		if len(sp.Placements) != len(ps.Kernels) {
			t.Fatalf("session %s: %d placements for %d kernels", sp.SessionID, len(sp.Placements), len(ps.Kernels))
		}
		if ps.Session.SingleNode() {
			for _, p := range sp.Placements {
				if p.AgentID != sp.Placements[0].AgentID {
					t.Fatalf("single-node session %s placed on several agents: %v", sp.SessionID, placedMap(plan)[sp.SessionID])
				}
			}
		}
		kernels := map[string]*structs.Kernel{}
		for _, k := range ps.Kernels {
			kernels[k.ID] = k
		}
		for _, p := range sp.Placements {
			k := kernels[p.KernelID]
			if k == nil {
				t.Fatalf("session %s: placement of unknown kernel %s", sp.SessionID, p.KernelID)
			}
			delete(kernels, p.KernelID)
			a := agents[p.AgentID]
			if err := CheckPlacementInGroup(a, ps.Session.ResourceGroup, a.Occupied, k); err != nil {
				t.Fatalf("session %s: the FSM would refuse the placement: %v", sp.SessionID, err)
			}
			a.Occupied = a.Occupied.Add(k.Resources)
		}
	}
	for id := range sessions {
		if !seen[id] && plan.Unplaced[id] == "" {
			t.Errorf("session %s is neither placed nor unplaced", id)
		}
	}
}

// randomInput builds a cluster of nAgents agents in two groups, some dead,
// and nSessions pending sessions of 1-3 kernels, from a fixed seed; every
// other session is multi-node, the others single-node (the default).
func randomInput(seed uint64, nAgents, nSessions int) *Input {
	r := rand.New(rand.NewPCG(seed, 1))
	in := &Input{Index: 99}
	for i := range nAgents {
		a := agent(fmt.Sprintf("agent-%05d", i), slots(
			"cpu", structs.Whole(int64(8+8*r.IntN(4))),
			"mem", gib(int64(32+32*r.IntN(4))),
		))
		if r.IntN(4) == 0 {
			a.Capacity["cuda.device"] = structs.Whole(int64(1 + r.IntN(8)))
		}
		if r.IntN(3) == 0 {
			a.Occupied = slots("cpu", structs.Whole(int64(r.IntN(8))), "mem", gib(int64(r.IntN(32))))
		}
		if r.IntN(10) == 0 {
			a.ResourceGroup = "gpu"
		}
		if r.IntN(20) == 0 {
			a.Status = structs.AgentLost
		}
		if r.IntN(2) == 0 {
			a.Drivers = []string{"exec", "runc"}
		}
		in.Agents = append(in.Agents, a)
	}
	for i := range nSessions {
		var ks []*structs.Kernel
		for j := range 1 + r.IntN(3) {
			host := "main1"
			if j > 0 {
				host = fmt.Sprintf("sub%d", j)
			}
			res := slots("cpu", structs.Quantity(500*(1+r.IntN(8))), "mem", gib(int64(1+r.IntN(8))))
			if r.IntN(8) == 0 {
				res["cuda.device"] = structs.Whole(int64(1 + r.IntN(2)))
			}
			k := kernel(host, res)
			if r.IntN(3) == 0 {
				k.Driver = "runc"
			}
			ks = append(ks, k)
		}
		group := ""
		if r.IntN(10) == 0 {
			group = "gpu"
		}
		ps := session(fmt.Sprintf("sess-%06d", i), uint64(1000+r.IntN(nSessions)), group, ks...)
		if i%2 == 1 {
			multiNode(ps)
		}
		in.Pending = append(in.Pending, ps)
	}
	return in
}

func TestScheduleRandomPlansAreValid(t *testing.T) {
	for seed := range uint64(20) {
		in := randomInput(seed, 50, 400)
		plan := Schedule(in)
		checkPlan(t, in, plan)
		if len(plan.Placements) == 0 || len(plan.Unplaced) == 0 {
			t.Logf("seed %d: %d placed, %d unplaced", seed, len(plan.Placements), len(plan.Unplaced))
		}
	}
}

func TestScheduleDoesNotMutateInput(t *testing.T) {
	in := randomInput(7, 40, 300)
	before, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	var agentsBefore []structs.Agent
	for _, a := range in.Agents {
		agentsBefore = append(agentsBefore, *a.Copy())
	}
	pendingOrder := make([]string, len(in.Pending))
	for i, ps := range in.Pending {
		pendingOrder[i] = ps.Session.ID
	}
	plan := Schedule(in)
	if len(plan.Placements) == 0 {
		t.Fatal("the scenario should place something")
	}
	after, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	if string(before) != string(after) {
		t.Fatal("Schedule modified its input")
	}
	for i, a := range in.Agents {
		if !a.Occupied.Equal(agentsBefore[i].Occupied) || len(a.Occupied) != len(agentsBefore[i].Occupied) {
			t.Fatalf("agent %s occupied changed: %v, was %v", a.ID, a.Occupied, agentsBefore[i].Occupied)
		}
	}
	for i, ps := range in.Pending {
		if ps.Session.ID != pendingOrder[i] {
			t.Fatal("Schedule reordered the caller's Pending slice")
		}
	}
}

func TestScheduleDeterministic(t *testing.T) {
	in := randomInput(3, 60, 500)
	want := Schedule(in)
	wantJSON, _ := json.Marshal(want)
	r := rand.New(rand.NewPCG(11, 12))
	for i := range 10 {
		// The same state in another order: pending sessions, agents, kernels
		// of each session and drivers of each agent shuffled.
		shuffled := &Input{Index: in.Index}
		for _, a := range in.Agents {
			c := a.Copy()
			r.Shuffle(len(c.Drivers), func(i, j int) { c.Drivers[i], c.Drivers[j] = c.Drivers[j], c.Drivers[i] })
			shuffled.Agents = append(shuffled.Agents, c)
		}
		for _, ps := range in.Pending {
			ks := append([]*structs.Kernel(nil), ps.Kernels...)
			r.Shuffle(len(ks), func(i, j int) { ks[i], ks[j] = ks[j], ks[i] })
			shuffled.Pending = append(shuffled.Pending, &PendingSession{Session: ps.Session, Kernels: ks})
		}
		r.Shuffle(len(shuffled.Agents), func(i, j int) {
			shuffled.Agents[i], shuffled.Agents[j] = shuffled.Agents[j], shuffled.Agents[i]
		})
		r.Shuffle(len(shuffled.Pending), func(i, j int) {
			shuffled.Pending[i], shuffled.Pending[j] = shuffled.Pending[j], shuffled.Pending[i]
		})
		got := Schedule(shuffled)
		if !reflect.DeepEqual(got, want) {
			gotJSON, _ := json.Marshal(got)
			t.Fatalf("shuffle %d: plan differs\n got %s\nwant %s", i, gotJSON, wantJSON)
		}
	}
}

func TestScheduleEdgeInputs(t *testing.T) {
	plan := Schedule(nil)
	if plan == nil || len(plan.Placements) != 0 || len(plan.Unplaced) != 0 {
		t.Fatalf("Schedule(nil) = %+v", plan)
	}
	plan = Schedule(&Input{Index: 5})
	if plan.SnapshotIndex != 5 || len(plan.Placements) != 0 || len(plan.Unplaced) != 0 {
		t.Fatalf("empty input: %+v", plan)
	}
	// nil entries are ignored; a session listed twice is placed once; an
	// agent listed twice counts once.
	s1 := session("s1", 1, "", kernel("main1", cpu(2)))
	a1 := agent("a1", cpu(3))
	plan = Schedule(&Input{
		Pending: []*PendingSession{nil, {}, s1, s1},
		Agents:  []*structs.Agent{nil, a1, a1},
	})
	if got := placedMap(plan); !reflect.DeepEqual(got, map[string]string{"s1": "main1@a1"}) || len(plan.Placements) != 1 {
		t.Fatalf("placements = %v (%d)", got, len(plan.Placements))
	}
}

func TestScheduleWithSelector(t *testing.T) {
	agents := []*structs.Agent{agent("a1", cpu(4)), agent("a2", cpu(8)), agent("a3", cpu(6))}
	pending := []*PendingSession{
		multiNode(session("s1", 1, "", kernel("main1", cpu(2)), kernel("sub1", cpu(2)))),
		session("s2", 2, "", kernel("main1", cpu(2))),
	}
	in := &Input{Pending: pending, Agents: agents}

	// A concentrating selector: the least free cpu that fits.
	leastFree := func(k *structs.Kernel, cands []Candidate) int {
		best := 0
		for i, c := range cands {
			if c.Free(structs.SlotCPU) < cands[best].Free(structs.SlotCPU) {
				best = i
			}
		}
		return best
	}
	plan := ScheduleWith(in, leastFree)
	if got, want := placedMap(plan), map[string]string{"s1": "main1@a1 sub1@a1", "s2": "main1@a3"}; !reflect.DeepEqual(got, want) {
		t.Errorf("concentrated: placements = %v, want %v", got, want)
	}
	checkPlan(t, in, plan)

	// A nil selector uses the groups' configured selectors, as Schedule.
	if got, want := placedMap(ScheduleWith(in, nil)), placedMap(Schedule(in)); !reflect.DeepEqual(got, want) {
		t.Errorf("nil selector: %v, want %v", got, want)
	}

	// A selector sees the pass's working occupancy and sorted candidates.
	var seen []string
	spy := func(k *structs.Kernel, cands []Candidate) int {
		var parts []string
		for _, c := range cands {
			parts = append(parts, c.Agent.ID+":"+c.Free(structs.SlotCPU).String()+":"+c.FreeSlots().String())
		}
		seen = append(seen, k.Hostname+" "+strings.Join(parts, ","))
		return MostFreeCPU(k, cands)
	}
	ScheduleWith(in, spy)
	want := []string{
		"main1 a1:4:cpu=4,a2:8:cpu=8,a3:6:cpu=6",
		"sub1 a1:4:cpu=4,a2:6:cpu=6,a3:6:cpu=6",
		"main1 a1:4:cpu=4,a2:4:cpu=4,a3:6:cpu=6", // sub1 took a2 (tie with a3, lower ID)
	}
	if !reflect.DeepEqual(seen, want) {
		t.Errorf("selector saw\n%v\nwant\n%v", strings.Join(seen, "\n"), strings.Join(want, "\n"))
	}

	// A selector that declines leaves the session unplaced, whole.
	none := func(k *structs.Kernel, cands []Candidate) int {
		if k.Hostname == "sub1" {
			return -1
		}
		return 0
	}
	plan = ScheduleWith(in, none)
	if got, want := placedMap(plan), map[string]string{"s2": "main1@a1"}; !reflect.DeepEqual(got, want) {
		t.Errorf("declining selector: placements = %v, want %v", got, want)
	}
	if got, want := plan.Unplaced["s1"], `the agent selector chose none of the 3 agents in resource group "default" with room for kernel sub1`; got != want {
		t.Errorf("declining selector: reason %q, want %q", got, want)
	}
	out := func(*structs.Kernel, []Candidate) int { return 99 }
	if plan := ScheduleWith(in, out); len(plan.Placements) != 0 || len(plan.Unplaced) != 2 {
		t.Errorf("out-of-range selector placed something: %+v", plan)
	}
}

func TestMostFreeCPU(t *testing.T) {
	sched := func(k *structs.Kernel, agents ...*structs.Agent) string {
		plan := Schedule(&Input{Pending: []*PendingSession{session("s", 1, "", k)}, Agents: agents})
		return placedMap(plan)["s"]
	}
	if got := sched(kernel("main1", cpu(1)), agent("a", cpu(4)), agent("b", cpu(4.5))); got != "main1@b" {
		t.Errorf("got %s, want b (more free cpu)", got)
	}
	if got := sched(kernel("main1", cpu(1)), agent("b", cpu(4)), agent("a", cpu(8), occupied(cpu(4)))); got != "main1@a" {
		t.Errorf("got %s, want a (tie, lower ID)", got)
	}
	// A kernel that asks no cpu still goes to the agent with the most free cpu.
	if got := sched(kernel("main1", slots("mem", gib(1))), agent("a", slots("cpu", structs.Whole(1), "mem", gib(8))), agent("b", slots("cpu", structs.Whole(2), "mem", gib(2)))); got != "main1@b" {
		t.Errorf("got %s, want b", got)
	}
}

func TestCheckPlacement(t *testing.T) {
	base := agent("a1", slots("cpu", structs.Whole(4), "mem", gib(8)), drivers("exec", "runc"), occupied(cpu(1)))
	tests := []struct {
		name     string
		agent    *structs.Agent
		group    string
		occupied structs.Slots
		kernel   *structs.Kernel
		kind     error
		msg      string
	}{
		{name: "fits", agent: base, occupied: base.Occupied, kernel: kernel("main1", cpu(3))},
		{name: "fits exactly with mem", agent: base, occupied: nil, kernel: kernel("main1", slots("cpu", structs.Whole(4), "mem", gib(8)))},
		{name: "group matches default", agent: base, group: "default", kernel: kernel("main1", cpu(1))},
		{
			name: "not enough cpu", agent: base, occupied: base.Occupied, kernel: kernel("main1", cpu(3.5)),
			kind: ErrNotEnoughSlots, msg: "agent a1 has not enough free cpu for kernel main1 (needs cpu=3.5, free cpu=3)",
		},
		{
			name: "not enough mem", agent: base, occupied: slots("mem", gib(6)), kernel: kernel("main1", slots("mem", gib(4))),
			kind: ErrNotEnoughSlots, msg: "agent a1 has not enough free mem for kernel main1 (needs mem=4GiB, free mem=2GiB)",
		},
		{
			name: "lost", agent: agent("a2", cpu(4), status(structs.AgentLost)), kernel: kernel("main1", cpu(1)),
			kind: ErrAgentNotAlive, msg: "agent a2 is LOST, not ALIVE",
		},
		{
			name: "missing driver", agent: base, kernel: withDriver(kernel("main1", cpu(1)), "vm"),
			kind: ErrMissingDriver, msg: `agent a1 has no driver "vm" (it has exec, runc)`,
		},
		{
			name: "wrong group", agent: base, group: "gpu", kernel: kernel("main1", cpu(1)),
			kind: ErrWrongGroup, msg: `agent a1 is in resource group "default", not "gpu"`,
		},
		{
			name: "negative request", agent: base, kernel: kernel("main1", cpu(-2)),
			kind: ErrInvalidRequest, msg: "kernel main1 requests a negative amount of cpu (-2); requests must be zero or more",
		},
		{
			name: "no agent", agent: nil, kernel: kernel("main1", cpu(1)),
			kind: ErrAgentNotFound, msg: "kernel main1: agent not found",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckPlacementInGroup(tt.agent, tt.group, tt.occupied, tt.kernel)
			if tt.group == "" {
				if err2 := CheckPlacement(tt.agent, tt.occupied, tt.kernel); fmt.Sprint(err2) != fmt.Sprint(err) {
					t.Errorf("CheckPlacement = %v, CheckPlacementInGroup with the default group = %v", err2, err)
				}
			}
			if tt.kind == nil {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if !errors.Is(err, tt.kind) {
				t.Fatalf("got %v, want kind %v", err, tt.kind)
			}
			var pe *PlacementError
			if !errors.As(err, &pe) {
				t.Fatalf("%T is not a *PlacementError", err)
			}
			if err.Error() != tt.msg {
				t.Errorf("message\n  %s\nwant\n  %s", err, tt.msg)
			}
		})
	}
}

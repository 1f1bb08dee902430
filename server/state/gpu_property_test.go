package state_test

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/corral-dev/corral/server/scheduler"
	"github.com/corral-dev/corral/server/state"
	"github.com/corral-dev/corral/structs"
)

// gpuInventory is a node of n GPUs in NVLink islands of 2 (models
// alternating by island), the last one in MIG mode with 3 1g.10gb
// instances when mig is set.
func gpuInventory(agent string, n int, mig bool) *structs.GPUInventory {
	inv := &structs.GPUInventory{DriverVersion: "550.54", CUDAVersion: "12.4"}
	for i := 0; i < n; i++ {
		name, mem := "NVIDIA H100 80GB HBM3", int64(80)
		if (i/2)%2 == 1 {
			name, mem = "NVIDIA A100-SXM4-40GB", 40
		}
		inv.Devices = append(inv.Devices, &structs.GPU{Index: i, Minor: i, UUID: fmt.Sprintf("GPU-%s-%d", agent, i),
			Name: name, MemoryBytes: mem << 30, NUMANode: i / 4, Links: map[string]structs.GPULink{}})
	}
	for _, a := range inv.Devices {
		for _, b := range inv.Devices {
			if a != b && a.Index/2 == b.Index/2 {
				a.Links[b.UUID] = structs.GPULink{NVLinks: 4, Level: structs.GPULinkSingle}
			} else if a != b {
				a.Links[b.UUID] = structs.GPULink{Level: structs.GPULinkNode}
			}
		}
	}
	if mig {
		g := inv.Devices[n-1]
		g.MIGMode = true
		for j := 0; j < 3; j++ {
			g.MIG = append(g.MIG, &structs.MIGInstance{UUID: fmt.Sprintf("MIG-%s-%d", agent, j), Profile: "1g.10gb", MemoryBytes: 10 << 30, GIID: 7 + j})
		}
	}
	return inv
}

// checkGPUs asserts: no device held by two live kernels; every agent's
// holders are exactly the devices of its live kernels; every live kernel
// on an agent with an inventory holds as many devices as its slots ask,
// healthy and matching its constraint when chosen; no occupancy negative.
func checkGPUs(t *testing.T, s *state.StateStore, what string) {
	t.Helper()
	snap := s.Snapshot()
	agents, _ := snap.Agents(nil)
	kernels, _ := snap.Kernels()
	want := map[string]map[string]string{} // agent -> uuid -> kernel
	for _, k := range kernels {
		if !k.HoldsSlots() {
			continue
		}
		if want[k.AgentID] == nil {
			want[k.AgentID] = map[string]string{}
		}
		for _, u := range k.GPUs {
			if other, ok := want[k.AgentID][u]; ok {
				t.Fatalf("after %s: device %s held by live kernels %s and %s", what, u, other, k.ID)
			}
			want[k.AgentID][u] = k.ID
		}
		d, err := scheduler.DemandOf(k.Resources)
		if err != nil {
			t.Fatalf("after %s: kernel %s: %v", what, k.ID, err)
		}
		n := d.Whole
		for _, m := range d.MIG {
			n += m.N
		}
		if len(k.GPUs) != n {
			t.Fatalf("after %s: kernel %s asks for %d devices (%v), holds %v", what, k.ID, n, k.Resources, k.GPUs)
		}
	}
	for _, a := range agents {
		if a.Occupied.AnyNegative() {
			t.Fatalf("after %s: agent %s occupancy negative: %v", what, a.ID, a.Occupied)
		}
		got := a.GPUHolders
		if len(got) == 0 {
			got = nil
		}
		w := want[a.ID]
		if len(w) == 0 {
			w = nil
		}
		if fmt.Sprint(got) != fmt.Sprint(w) {
			t.Fatalf("after %s: agent %s holders %v, its live kernels hold %v", what, a.ID, got, w)
		}
	}
	for _, k := range kernels {
		if len(k.GPUs) > 0 && k.AgentID == "" {
			t.Fatalf("after %s: unplaced kernel %s has devices %v", what, k.ID, k.GPUs)
		}
	}
}

// TestPropertyGPUHolders runs stale plans, kernel ends, destroys, agent
// losses, agent re-registrations (with devices turning unhealthy and a
// forged holder map) and snapshot/restore round trips like a leader
// change, checking after every apply that no device is ever held twice
// and that the holders are exactly the live kernels' devices.
func TestPropertyGPUHolders(t *testing.T) {
	for seed := range uint64(6) {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) { runGPUHolders(t, seed) })
	}
}

func runGPUHolders(t *testing.T, seed uint64) {
	s, err := state.New()
	if err != nil {
		t.Fatal(err)
	}
	st := &store{t: t, s: s, placedOn: map[string]string{}}
	r := rand.New(rand.NewPCG(seed, 7))
	t0 := time.Date(2026, 12, 4, 8, 0, 0, 0, time.UTC)
	apply := func(what string, fn func(uint64) error) {
		st.apply(what, fn)
		if !t.Failed() {
			checkGPUs(t, s, what)
		}
	}
	apply("config", func(i uint64) error {
		return s.UpsertConfig(i, &structs.ConfigUpsertRequest{
			Groups: []*structs.ResourceGroup{{Name: "default", AgentSelector: []string{"concentrated", "dispersed", "roundrobin"}[seed%3],
				TotalResourceSlots: structs.Slots{structs.SlotCPU: structs.Whole(12)}}},
			Keys: []*structs.AccessKey{{AccessKey: "AK0", SecretHash: "h", User: "u0"}},
			Time: t0,
		})
	})
	nAgents := 2 + r.IntN(3)
	invs := map[string]*structs.GPUInventory{}
	register := func(id string, forged map[string]string) {
		inv := invs[id].Copy()
		capacity := inv.Slots()
		capacity[structs.SlotCPU] = structs.Whole(8)
		capacity[structs.SlotMem] = structs.Whole(64 << 30)
		a := &structs.Agent{ID: id, Name: id, Status: structs.AgentAlive, ResourceGroup: "default", Drivers: []string{"exec"},
			Capacity: capacity, GPUs: inv, GPUHolders: forged}
		apply("agent upsert", func(i uint64) error { return s.UpsertAgent(i, &structs.AgentUpsertRequest{Agent: a, Time: t0}) })
	}
	for i := range nAgents {
		id := fmt.Sprintf("ag%d", i)
		invs[id] = gpuInventory(id, 4+2*r.IntN(3), i%2 == 0)
		register(id, nil)
	}
	var stale []*structs.Plan
	n, placedGPUs := 0, 0
	for step := 0; step < 500 && !t.Failed(); step++ {
		switch op := r.IntN(20); {
		case op < 6:
			n++
			id := fmt.Sprintf("s%d", n)
			size := 1 + r.IntN(2)
			mode := structs.ClusterModeSingleNode
			if r.IntN(2) == 0 {
				mode = structs.ClusterModeMultiNode
			}
			sess := &structs.Session{ID: id, Type: structs.SessionTypeBatch, ResourceGroup: "default", AccessKey: "AK0",
				ClusterMode: mode, ClusterSize: size, MaxRetries: r.IntN(2)}
			var ks []*structs.Kernel
			for j := range size {
				role, idx, host := "main", 1, "main1"
				if j > 0 {
					role, idx, host = "sub", j, fmt.Sprintf("sub%d", j)
				}
				res := cpuMem(1, 1)
				var c *structs.GPUConstraint
				switch r.IntN(5) {
				case 0, 1:
					res[structs.SlotCUDADevice] = structs.Whole(int64(1 + r.IntN(3)))
				case 2:
					res[structs.SlotCUDADevice] = structs.Whole(int64(1 + r.IntN(2)))
					c = &structs.GPUConstraint{Model: []string{"H100*", "A100*|H200*"}[r.IntN(2)]}
				case 3:
					res["cuda.mig-1g.10gb"] = structs.Whole(int64(1 + r.IntN(2)))
				}
				ks = append(ks, &structs.Kernel{ID: fmt.Sprintf("%s-%s", id, host), SessionID: id, Role: role, Idx: idx, Hostname: host,
					Driver: "exec", Command: []string{"true"}, Resources: res, GPUConstraint: c})
			}
			apply("enqueue", func(i uint64) error {
				return s.EnqueueSession(i, &structs.SessionEnqueueRequest{Session: sess, Kernels: ks, Time: t0})
			})
		case op < 10:
			// Plan now; apply now or a few steps later (a stale plan, as
			// from a worker on an old snapshot or a former leader).
			in, _, _, err := s.Snapshot().SchedulerInput(nil, t0.Add(time.Hour))
			if err != nil {
				t.Fatal(err)
			}
			res := scheduler.Plan(in)
			res.Plan.Attempts, res.Plan.Cancel = res.Attempts, res.Cancel
			if len(stale) == 0 && r.IntN(2) == 0 {
				// A fresh plan: the FSM chooses the devices the pass
				// counted on, so it rejects none of it.
				apply("fresh plan", func(i uint64) error {
					pr, err := s.ApplyPlan(i, &structs.PlanApplyRequest{Plan: res.Plan, Time: t0})
					if err == nil && len(pr.Rejected) > 0 {
						return fmt.Errorf("fresh plan rejected: %v", pr.Rejected)
					}
					return err
				})
				continue
			}
			stale = append(stale, res.Plan)
			for len(stale) > 0 && (r.IntN(3) > 0 || len(stale) > 3) {
				p := stale[0]
				stale = stale[1:]
				apply("plan", func(i uint64) error {
					_, err := s.ApplyPlan(i, &structs.PlanApplyRequest{Plan: p, Time: t0})
					return err
				})
			}
		case op < 15:
			kernels, _ := s.Snapshot().Kernels()
			var live []*structs.Kernel
			for _, k := range kernels {
				if k.HoldsSlots() {
					live = append(live, k)
				}
			}
			if len(live) == 0 {
				continue
			}
			k := live[r.IntN(len(live))]
			if len(k.GPUs) > 0 {
				placedGPUs++
			}
			next := map[structs.KernelStatus]structs.KernelStatus{
				structs.KernelScheduled: structs.KernelRunning, structs.KernelRunning: structs.KernelTerminated,
				structs.KernelTerminating: structs.KernelTerminated,
			}[k.Status]
			if next == "" {
				continue
			}
			code := 0
			apply("kernel update", func(i uint64) error {
				_, err := s.UpdateKernels(i, &structs.KernelUpdateRequest{AgentID: k.AgentID,
					Updates: []*structs.KernelUpdate{{KernelID: k.ID, Status: next, ExitCode: &code, Time: t0}}})
				return err
			})
		case op < 16:
			if n == 0 {
				continue
			}
			id := fmt.Sprintf("s%d", 1+r.IntN(n))
			apply("destroy", func(i uint64) error {
				return s.DestroySession(i, &structs.SessionDestroyRequest{SessionID: id, Reason: "destroyed", Time: t0})
			})
		case op < 17:
			id := fmt.Sprintf("ag%d", r.IntN(nAgents))
			to := structs.AgentAlive
			if r.IntN(2) == 0 {
				to = structs.AgentLost
			}
			apply("agent status", func(i uint64) error {
				return s.SetAgentStatus(i, &structs.AgentStatusRequest{AgentID: id, Status: to, Info: "test", Time: t0})
			})
		case op < 19:
			// The agent restarts and registers again: a device nobody
			// holds may turn (un)healthy, and the request carries a
			// forged holder map that must be ignored.
			id := fmt.Sprintf("ag%d", r.IntN(nAgents))
			a, _ := s.Snapshot().Agent(nil, id)
			inv := invs[id]
			d := inv.Devices[r.IntN(len(inv.Devices))]
			held := a.GPUHolders[d.UUID] != ""
			for _, m := range d.MIG {
				held = held || a.GPUHolders[m.UUID] != ""
			}
			if !held {
				if d.Unhealthy == "" {
					d.Unhealthy = "XID 79"
				} else {
					d.Unhealthy = ""
				}
			}
			register(id, map[string]string{d.UUID: "forged", "GPU-none": "forged"})
		default:
			// A leader change: the state goes through a snapshot (JSON)
			// and is restored.
			apply("snapshot restore", func(uint64) error {
				d, err := s.Snapshot().Dump()
				if err != nil {
					return err
				}
				b, err := json.Marshal(d)
				if err != nil {
					return err
				}
				var back state.Dump
				if err := json.Unmarshal(b, &back); err != nil {
					return err
				}
				return s.Restore(&back)
			})
		}
	}
	if placedGPUs == 0 {
		t.Fatalf("no kernel ever held a GPU")
	}
	kernels, _ := s.Snapshot().Kernels()
	if !slices.ContainsFunc(kernels, func(k *structs.Kernel) bool { return len(k.GPUs) > 1 }) {
		t.Fatalf("no kernel ever held several GPUs")
	}
}

package state

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/corral-dev/corral/structs"
)

// gpuNode is 4 H100s (80 GiB) in two NVLink pairs (0-1, 2-3).
func gpuNode() *structs.GPUInventory {
	inv := &structs.GPUInventory{DriverVersion: "550.54", CUDAVersion: "12.4"}
	for i := 0; i < 4; i++ {
		inv.Devices = append(inv.Devices, &structs.GPU{Index: i, UUID: fmt.Sprintf("GPU-%d", i), Name: "NVIDIA H100 80GB HBM3",
			MemoryBytes: 80 << 30, NUMANode: 0, Links: map[string]structs.GPULink{}})
	}
	for _, a := range inv.Devices {
		for _, b := range inv.Devices {
			if a != b && a.Index/2 == b.Index/2 {
				a.Links[b.UUID] = structs.GPULink{NVLinks: 8, Level: structs.GPULinkSingle}
			} else if a != b {
				a.Links[b.UUID] = structs.GPULink{Level: structs.GPULinkNode}
			}
		}
	}
	return inv
}

func (f *fixture) gpuAgent(id string, inv *structs.GPUInventory) {
	f.t.Helper()
	capacity := inv.Slots()
	capacity[structs.SlotCPU] = structs.Whole(16)
	capacity[structs.SlotMem] = structs.Whole(64 << 30)
	a := &structs.Agent{ID: id, Name: id, Status: structs.AgentAlive, Drivers: []string{"exec"}, Capacity: capacity, GPUs: inv}
	if err := f.s.UpsertAgent(f.next(), &structs.AgentUpsertRequest{Agent: a, Time: t0}); err != nil {
		f.t.Fatal(err)
	}
}

func gpuSlots(n int) structs.Slots {
	s := slots(1, 256)
	s[structs.SlotCUDADevice] = structs.Whole(int64(n))
	return s
}

func (f *fixture) agentNow(id string) *structs.Agent {
	f.t.Helper()
	a, err := f.s.Snapshot().Agent(nil, id)
	if err != nil {
		f.t.Fatal(err)
	}
	return a
}

func (f *fixture) kernelNow(id string) *structs.Kernel {
	f.t.Helper()
	k, err := f.s.Snapshot().Kernel(id)
	if err != nil {
		f.t.Fatal(err)
	}
	return k
}

func TestPlaceChoosesDevices(t *testing.T) {
	f := newFixture(t)
	f.gpuAgent("a1", gpuNode())
	f.session("s1", structs.SessionTypeBatch, gpuSlots(2))
	f.session("s2", structs.SessionTypeBatch, gpuSlots(2))
	f.session("s3", structs.SessionTypeBatch, gpuSlots(1))
	// One plan places s1 and s2 on a1 (as two workers' plans could):
	// their devices are disjoint NVLinked pairs.
	plan := &structs.Plan{Placements: []structs.SessionPlacement{
		{SessionID: "s1", Placements: []structs.Placement{{KernelID: "s1-k", AgentID: "a1"}}},
		{SessionID: "s2", Placements: []structs.Placement{{KernelID: "s2-k", AgentID: "a1"}}},
	}}
	res, err := f.s.ApplyPlan(f.next(), &structs.PlanApplyRequest{Plan: plan, Time: t0})
	if err != nil || len(res.Applied) != 2 {
		t.Fatalf("applied %v, rejected %v, err %v", res.Applied, res.Rejected, err)
	}
	k1, k2 := f.kernelNow("s1-k"), f.kernelNow("s2-k")
	if !slices.Equal(k1.GPUs, []string{"GPU-0", "GPU-1"}) || !slices.Equal(k2.GPUs, []string{"GPU-2", "GPU-3"}) {
		t.Fatalf("devices %v and %v", k1.GPUs, k2.GPUs)
	}
	if k1.Resources[structs.SlotCUDAMem] != structs.Whole(160<<30) {
		t.Fatalf("kernel cuda.mem %v", k1.Resources[structs.SlotCUDAMem])
	}
	a := f.agentNow("a1")
	if a.Occupied[structs.SlotCUDADevice] != structs.Whole(4) || a.Occupied[structs.SlotCUDAMem] != structs.Whole(320<<30) {
		t.Fatalf("occupied %v", a.Occupied)
	}
	if len(a.GPUHolders) != 4 || a.GPUHolders["GPU-0"] != "s1-k" || a.GPUHolders["GPU-3"] != "s2-k" {
		t.Fatalf("holders %v", a.GPUHolders)
	}
	// A stale plan for s3 on the full agent is rejected: slots first.
	if res := f.place("s3", "a1"); len(res.Rejected) != 1 || !strings.Contains(res.Rejected["s3"], "cuda.device") {
		t.Fatalf("s3: %+v", res)
	}
	// s1 ends: its devices are free and s3 gets the lowest one.
	code := 0
	f.update("a1", "s1-k", structs.KernelRunning, nil)
	f.update("a1", "s1-k", structs.KernelTerminated, &code)
	a = f.agentNow("a1")
	if a.GPUHolders["GPU-0"] != "" || a.GPUHolders["GPU-1"] != "" || len(a.GPUHolders) != 2 {
		t.Fatalf("holders after s1 ended: %v", a.GPUHolders)
	}
	if a.Occupied[structs.SlotCUDAMem] != structs.Whole(160<<30) {
		t.Fatalf("occupied after s1 ended: %v", a.Occupied)
	}
	if res := f.place("s3", "a1"); len(res.Applied) != 1 {
		t.Fatalf("s3: %+v", res)
	}
	if k := f.kernelNow("s3-k"); !slices.Equal(k.GPUs, []string{"GPU-0"}) {
		t.Fatalf("s3 devices %v", k.GPUs)
	}
	// Destroying s2 on a lost agent frees its devices too.
	if err := f.s.SetAgentStatus(f.next(), &structs.AgentStatusRequest{AgentID: "a1", Status: structs.AgentLost, Info: "gone", Time: t0}); err != nil {
		t.Fatal(err)
	}
	if a := f.agentNow("a1"); len(a.GPUHolders) != 0 || a.Occupied[structs.SlotCUDADevice] != 0 {
		t.Fatalf("after agent lost: holders %v occupied %v", a.GPUHolders, a.Occupied)
	}
}

func TestPlaceClusterKernelsDisjoint(t *testing.T) {
	f := newFixture(t)
	f.gpuAgent("a1", gpuNode())
	sess := &structs.Session{ID: "c1", Type: structs.SessionTypeBatch, ResourceGroup: structs.DefaultResourceGroup, ClusterSize: 2}
	var ks []*structs.Kernel
	for i, host := range []string{"main1", "sub1"} {
		role := strings.TrimRight(host, "1")
		ks = append(ks, &structs.Kernel{ID: "c1-" + host, SessionID: "c1", Role: role, Idx: 1, Hostname: host, Driver: "exec",
			Command: []string{"true"}, Resources: gpuSlots(2 - i)})
	}
	if err := f.s.EnqueueSession(f.next(), &structs.SessionEnqueueRequest{Session: sess, Kernels: ks, Time: t0}); err != nil {
		t.Fatal(err)
	}
	plan := &structs.Plan{Placements: []structs.SessionPlacement{{SessionID: "c1", Placements: []structs.Placement{
		{KernelID: "c1-main1", AgentID: "a1"}, {KernelID: "c1-sub1", AgentID: "a1"}}}}}
	res, err := f.s.ApplyPlan(f.next(), &structs.PlanApplyRequest{Plan: plan, Time: t0})
	if err != nil || len(res.Applied) != 1 {
		t.Fatalf("applied %v rejected %v err %v", res.Applied, res.Rejected, err)
	}
	m, s := f.kernelNow("c1-main1"), f.kernelNow("c1-sub1")
	if !slices.Equal(m.GPUs, []string{"GPU-0", "GPU-1"}) || !slices.Equal(s.GPUs, []string{"GPU-2"}) {
		t.Fatalf("main1 %v sub1 %v", m.GPUs, s.GPUs)
	}
	if a := f.agentNow("a1"); a.GPUHolders["GPU-2"] != "c1-sub1" || a.Occupied[structs.SlotCUDAMem] != structs.Whole(240<<30) {
		t.Fatalf("holders %v occupied %v", a.GPUHolders, a.Occupied)
	}
	// Destroy: TERMINATING keeps the devices until the agent reports
	// the kernels ended.
	if err := f.s.DestroySession(f.next(), &structs.SessionDestroyRequest{SessionID: "c1", Reason: "bye", Time: t0}); err != nil {
		t.Fatal(err)
	}
	if a := f.agentNow("a1"); len(a.GPUHolders) != 3 {
		t.Fatalf("holders while terminating %v", a.GPUHolders)
	}
	f.update("a1", "c1-main1", structs.KernelTerminated, nil)
	f.update("a1", "c1-sub1", structs.KernelTerminated, nil)
	if a := f.agentNow("a1"); len(a.GPUHolders) != 0 || len(a.Occupied) != 0 {
		t.Fatalf("after end: holders %v occupied %v", a.GPUHolders, a.Occupied)
	}
}

func TestPlanRejectedWithoutMatchingDevices(t *testing.T) {
	f := newFixture(t)
	inv := gpuNode()
	inv.Devices[1].Unhealthy = "XID 79"
	f.gpuAgent("a1", inv)
	sess := &structs.Session{ID: "s1", Type: structs.SessionTypeBatch, ResourceGroup: structs.DefaultResourceGroup}
	k := &structs.Kernel{ID: "s1-k", SessionID: "s1", Role: "main", Idx: 1, Hostname: "main1", Driver: "exec", Command: []string{"true"},
		Resources: gpuSlots(1), GPUConstraint: &structs.GPUConstraint{Model: "A100*"}}
	if err := f.s.EnqueueSession(f.next(), &structs.SessionEnqueueRequest{Session: sess, Kernels: []*structs.Kernel{k}, Time: t0}); err != nil {
		t.Fatal(err)
	}
	res := f.place("s1", "a1")
	if want := `kernel main1 on agent a1: needs 1 GPU (model "A100*"): 0 free match on agent a1`; res.Rejected["s1"] != want {
		t.Fatalf("rejected %q, want %q", res.Rejected["s1"], want)
	}
	if a := f.agentNow("a1"); len(a.GPUHolders) != 0 || len(a.Occupied) != 0 {
		t.Fatalf("a rejected plan changed the agent: %v %v", a.GPUHolders, a.Occupied)
	}
}

func TestUpsertAgentKeepsHolders(t *testing.T) {
	f := newFixture(t)
	f.gpuAgent("a1", gpuNode())
	f.session("s1", structs.SessionTypeBatch, gpuSlots(1))
	if res := f.place("s1", "a1"); len(res.Applied) != 1 {
		t.Fatalf("%+v", res)
	}
	// The agent restarts: its registration carries a forged holder map
	// and GPU-3 now unhealthy; the store keeps its own holders.
	inv := gpuNode()
	inv.Devices[3].Unhealthy = "XID 48"
	capacity := inv.Slots()
	capacity[structs.SlotCPU] = structs.Whole(16)
	a := &structs.Agent{ID: "a1", Name: "a1", Status: structs.AgentAlive, Drivers: []string{"exec"}, Capacity: capacity, GPUs: inv,
		GPUHolders: map[string]string{"GPU-1": "forged"}}
	if err := f.s.UpsertAgent(f.next(), &structs.AgentUpsertRequest{Agent: a, Time: t0}); err != nil {
		t.Fatal(err)
	}
	got := f.agentNow("a1")
	if len(got.GPUHolders) != 1 || got.GPUHolders["GPU-0"] != "s1-k" {
		t.Fatalf("holders %v", got.GPUHolders)
	}
	if got.GPUs.Devices[3].Unhealthy == "" || got.Capacity[structs.SlotCUDADevice] != structs.Whole(3) {
		t.Fatalf("inventory not refreshed: %+v %v", got.GPUs.Devices[3], got.Capacity)
	}
	// A registration without capacity (a partial refresh) keeps the
	// inventory.
	if err := f.s.UpsertAgent(f.next(), &structs.AgentUpsertRequest{Agent: &structs.Agent{ID: "a1", Name: "a1"}, Time: t0}); err != nil {
		t.Fatal(err)
	}
	if got := f.agentNow("a1"); got.GPUs == nil || len(got.GPUs.Devices) != 4 || got.GPUHolders["GPU-0"] != "s1-k" {
		t.Fatalf("partial refresh lost the inventory or holders: %+v %v", got.GPUs, got.GPUHolders)
	}
	// A new agent never starts with holders.
	b := &structs.Agent{ID: "b1", Name: "b1", Drivers: []string{"exec"}, Capacity: capacity, GPUs: gpuNode(), GPUHolders: map[string]string{"GPU-0": "forged"}}
	if err := f.s.UpsertAgent(f.next(), &structs.AgentUpsertRequest{Agent: b, Time: t0}); err != nil {
		t.Fatal(err)
	}
	if got := f.agentNow("b1"); len(got.GPUHolders) != 0 {
		t.Fatalf("new agent holders %v", got.GPUHolders)
	}
}

// A kernel that carries a cuda.mem of its own (from an older server, or
// written by hand) occupies what its devices have, never both.
func TestPlaceReplacesStaleCUDAMem(t *testing.T) {
	f := newFixture(t)
	f.gpuAgent("a1", gpuNode())
	res := gpuSlots(1)
	res[structs.SlotCUDAMem] = structs.Whole(1 << 30)
	f.session("s1", structs.SessionTypeBatch, res)
	if r := f.place("s1", "a1"); len(r.Applied) != 1 {
		t.Fatalf("%+v", r)
	}
	k := f.kernelNow("s1-k")
	a := f.agentNow("a1")
	if k.Resources[structs.SlotCUDAMem] != structs.Whole(80<<30) || a.Occupied[structs.SlotCUDAMem] != structs.Whole(80<<30) {
		t.Fatalf("kernel %v, agent %v", k.Resources, a.Occupied)
	}
	f.update("a1", "s1-k", structs.KernelTerminated, nil)
	if a := f.agentNow("a1"); len(a.Occupied) != 0 || len(a.GPUHolders) != 0 {
		t.Fatalf("after end: %v %v", a.Occupied, a.GPUHolders)
	}
}

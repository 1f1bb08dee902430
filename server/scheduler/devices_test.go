package scheduler

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/corral-dev/corral/structs"
)

const gibBytes = int64(1) << 30

// islandsInventory is an 8-GPU node in two NVLink islands of 4 (0-3 on
// NUMA node 0, 4-7 on NUMA node 1): 12 NVLinks within an island, none
// across; PCIe single switch within an island, system across.
func islandsInventory(n, island int, name string, memGiB int64) *structs.GPUInventory {
	inv := &structs.GPUInventory{DriverVersion: "550.54", CUDAVersion: "12.4"}
	for i := 0; i < n; i++ {
		inv.Devices = append(inv.Devices, &structs.GPU{Index: i, Minor: i, UUID: fmt.Sprintf("GPU-%d", i), Name: name,
			MemoryBytes: memGiB * gibBytes, NUMANode: i / island, Links: map[string]structs.GPULink{}})
	}
	for _, a := range inv.Devices {
		for _, b := range inv.Devices {
			if a == b {
				continue
			}
			if a.Index/island == b.Index/island {
				a.Links[b.UUID] = structs.GPULink{NVLinks: 12, Level: structs.GPULinkSingle}
			} else {
				a.Links[b.UUID] = structs.GPULink{Level: structs.GPULinkSystem}
			}
		}
	}
	return inv
}

func gpuAgent(id string, inv *structs.GPUInventory, held ...int) *structs.Agent {
	a := &structs.Agent{ID: id, Name: id, Status: structs.AgentAlive, Drivers: []string{"exec"},
		Capacity: inv.Slots(), Occupied: structs.Slots{}, GPUs: inv, GPUHolders: map[string]string{}}
	a.Capacity[structs.SlotCPU] = structs.Whole(64)
	a.Capacity[structs.SlotMem] = structs.Whole(512 * gibBytes)
	for _, i := range held {
		a.GPUHolders[fmt.Sprintf("GPU-%d", i)] = fmt.Sprintf("k-held-%d", i)
		a.Occupied[structs.SlotCUDADevice] += structs.Whole(1)
	}
	return a
}

func gpus(n int) structs.Slots { return structs.Slots{structs.SlotCUDADevice: structs.Whole(int64(n))} }

func uuids(idx ...int) []string {
	out := make([]string, len(idx))
	for i, x := range idx {
		out[i] = fmt.Sprintf("GPU-%d", x)
	}
	return out
}

func TestChooseDevicesTopology(t *testing.T) {
	cases := []struct {
		name  string
		n     int
		held  []int
		taken []int
		want  []string
	}{
		{"4 on a free node take one island", 4, nil, nil, uuids(0, 1, 2, 3)},
		{"4 with one held in island 0 take island 1", 4, []int{1}, nil, uuids(4, 5, 6, 7)},
		{"4 with one taken in this apply in island 0 take island 1", 4, nil, []int{2}, uuids(4, 5, 6, 7)},
		{"4 with both islands broken span them", 4, []int{0, 4}, nil, uuids(1, 2, 3, 5)},
		{"2 on a free node take an NVLinked pair", 2, nil, nil, uuids(0, 1)},
		{"2 prefer a linked pair over the lowest indices", 2, []int{0, 1, 2}, nil, uuids(4, 5)},
		{"2 when only unlinked devices remain", 2, []int{0, 1, 2, 4, 5, 6}, nil, uuids(3, 7)},
		{"8 take all", 8, nil, nil, uuids(0, 1, 2, 3, 4, 5, 6, 7)},
		{"1 takes the lowest free index", 1, []int{0}, nil, uuids(1)},
		{"3 stay in one island", 3, []int{0}, nil, uuids(1, 2, 3)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a := gpuAgent("a1", islandsInventory(8, 4, "NVIDIA H100 80GB HBM3", 80), c.held...)
			taken := map[string]bool{}
			for _, u := range uuids(c.taken...) {
				taken[u] = true
			}
			got, mem, err := ChooseDevices(a, gpus(c.n), nil, taken)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, c.want) {
				t.Fatalf("got %v, want %v", got, c.want)
			}
			if want := structs.Whole(int64(c.n) * 80 * gibBytes); mem != want {
				t.Fatalf("memory %s, want %s", structs.FormatBytes(mem), structs.FormatBytes(want))
			}
		})
	}
}

func TestChooseDevicesLevelAndNUMA(t *testing.T) {
	// Four GPUs without NVLink: 0-1 on one switch, 2-3 on one host
	// bridge, 0-1 and 2-3 across NUMA nodes; 1 and 2 are on NUMA node 0
	// with node-level links.
	inv := &structs.GPUInventory{}
	numa := []int{0, 0, 0, 1}
	for i := 0; i < 4; i++ {
		inv.Devices = append(inv.Devices, &structs.GPU{Index: i, UUID: fmt.Sprintf("GPU-%d", i), Name: "NVIDIA L4",
			MemoryBytes: 24 * gibBytes, NUMANode: numa[i], Links: map[string]structs.GPULink{}})
	}
	set := func(a, b int, level string) {
		inv.Devices[a].Links[inv.Devices[b].UUID] = structs.GPULink{Level: level}
		inv.Devices[b].Links[inv.Devices[a].UUID] = structs.GPULink{Level: level}
	}
	set(0, 1, structs.GPULinkNode)
	set(0, 2, structs.GPULinkNode)
	set(1, 2, structs.GPULinkNode)
	set(0, 3, structs.GPULinkSystem)
	set(1, 3, structs.GPULinkSystem)
	set(2, 3, structs.GPULinkSingle)
	a := gpuAgent("a1", inv)
	got, _, err := ChooseDevices(a, gpus(2), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := uuids(2, 3); !slices.Equal(got, want) {
		t.Fatalf("best PCIe level: got %v, want %v", got, want)
	}
	// With 2 held, the pairs left are node-level (0-1) or system: 0-1.
	a.GPUHolders["GPU-2"] = "k"
	if got, _, _ = ChooseDevices(a, gpus(2), nil, nil); !slices.Equal(got, uuids(0, 1)) {
		t.Fatalf("got %v, want %v", got, uuids(0, 1))
	}
	// Same level everywhere: the NUMA node decides.
	inv2 := islandsInventory(4, 4, "NVIDIA L4", 24)
	for _, d := range inv2.Devices {
		for k := range d.Links {
			d.Links[k] = structs.GPULink{Level: structs.GPULinkSystem}
		}
	}
	inv2.Devices[0].NUMANode, inv2.Devices[1].NUMANode, inv2.Devices[2].NUMANode, inv2.Devices[3].NUMANode = 0, 1, 0, 1
	if got, _, _ = ChooseDevices(gpuAgent("a2", inv2), gpus(2), nil, nil); !slices.Equal(got, uuids(0, 2)) {
		t.Fatalf("same NUMA node: got %v, want %v", got, uuids(0, 2))
	}
}

func TestChooseDevicesConstraints(t *testing.T) {
	inv := islandsInventory(8, 4, "NVIDIA H100 80GB HBM3", 80)
	for _, d := range inv.Devices[4:] {
		d.Name, d.MemoryBytes = "NVIDIA A100-SXM4-40GB", 40*gibBytes
	}
	inv.Devices[2].Unhealthy = "XID 79: fallen off the bus"
	a := gpuAgent("a1", inv)
	cases := []struct {
		name   string
		n      int
		c      *structs.GPUConstraint
		want   []string
		reason string
	}{
		{"model glob", 2, &structs.GPUConstraint{Model: "A100*"}, uuids(4, 5), ""},
		{"model with NVIDIA prefix", 1, &structs.GPUConstraint{Model: "NVIDIA A100*"}, uuids(4), ""},
		{"alternatives", 3, &structs.GPUConstraint{Model: "H200*|H100*"}, uuids(0, 1, 3), ""},
		{"case does not matter", 1, &structs.GPUConstraint{Model: "h100*"}, uuids(0), ""},
		{"min memory", 3, &structs.GPUConstraint{MinMemory: structs.Whole(64 * gibBytes)}, uuids(0, 1, 3), ""},
		{"unhealthy skipped", 4, &structs.GPUConstraint{Model: "H100*"}, nil,
			`needs 4 GPUs (model "H100*"): 3 free match on agent a1`},
		{"memory too small", 1, &structs.GPUConstraint{Model: "A100*", MinMemory: structs.Whole(41 * gibBytes)}, nil,
			`needs 1 GPU (model "A100*", >= 41GiB): 0 free match on agent a1`},
		{"no such model", 1, &structs.GPUConstraint{Model: "H200*"}, nil, `needs 1 GPU (model "H200*"): 0 free match on agent a1`},
		{"unconstrained skips the unhealthy one", 7, nil, uuids(0, 1, 3, 4, 5, 6, 7), ""},
		{"more than healthy", 8, nil, nil, "needs 8 GPUs: 7 free match on agent a1"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, _, err := ChooseDevices(a, gpus(c.n), c.c, nil)
			if c.reason != "" {
				if err == nil || err.Error() != c.reason {
					t.Fatalf("got %v, %v; want error %q", got, err, c.reason)
				}
				if r := DeviceFit(a, gpus(c.n), c.c, nil); r != c.reason {
					t.Fatalf("DeviceFit: %q, want %q", r, c.reason)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, c.want) {
				t.Fatalf("got %v, want %v", got, c.want)
			}
			if r := DeviceFit(a, gpus(c.n), c.c, nil); r != "" {
				t.Fatalf("DeviceFit: %q", r)
			}
		})
	}
}

// migInventory is 2 whole H100s and one in MIG mode with 7 1g.10gb
// instances.
func migInventory() *structs.GPUInventory {
	inv := islandsInventory(3, 4, "NVIDIA H100 80GB HBM3", 80)
	g := inv.Devices[2]
	g.MIGMode = true
	for i := 6; i >= 0; i-- { // out of order: the choice sorts them
		g.MIG = append(g.MIG, &structs.MIGInstance{UUID: fmt.Sprintf("MIG-%d", i), Profile: "1g.10gb",
			MemoryBytes: 10 * gibBytes, GIID: 7 + i, CIID: 0})
	}
	return inv
}

func TestChooseDevicesMIG(t *testing.T) {
	inv := migInventory()
	inv.Devices[2].MIG[6].Unhealthy = "XID 43" // MIG-0
	a := gpuAgent("a1", inv)
	a.GPUHolders["MIG-1"] = "k-other"
	res := structs.Slots{"cuda.mig-1g.10gb": structs.Whole(2)}
	got, mem, err := ChooseDevices(a, res, nil, map[string]bool{"MIG-2": true})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"MIG-3", "MIG-4"}; !slices.Equal(got, want) || mem != 0 {
		t.Fatalf("got %v (mem %s), want %v and no cuda.mem", got, mem, want)
	}
	// Whole GPUs never include the MIG-mode GPU.
	got, _, err = ChooseDevices(a, structs.Slots{structs.SlotCUDADevice: structs.Whole(2), "cuda.mig-1g.10gb": structs.Whole(1)}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"GPU-0", "GPU-1", "MIG-2"}; !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	if r := DeviceFit(a, structs.Slots{"cuda.mig-1g.10gb": structs.Whole(6)}, nil, nil); r != "needs 6 MIG instances 1g.10gb: 5 free match on agent a1" {
		t.Fatalf("reason %q", r)
	}
	if r := DeviceFit(a, structs.Slots{"cuda.mig-3g.40gb": structs.Whole(1)}, nil, nil); r != "needs 1 MIG instance 3g.40gb: 0 free match on agent a1" {
		t.Fatalf("reason %q", r)
	}
	if r := DeviceFit(a, structs.Slots{"cuda.mig-1g.10gb": structs.Whole(1)}, &structs.GPUConstraint{MinMemory: structs.Whole(20 * gibBytes)}, nil); !strings.Contains(r, ">= 20GiB") {
		t.Fatalf("reason %q", r)
	}
}

func TestDemandOf(t *testing.T) {
	d, err := DemandOf(structs.Slots{structs.SlotCPU: 1500, structs.SlotCUDADevice: structs.Whole(2), "cuda.mig-1g.10gb": structs.Whole(1), "cuda.mig-2g.20gb": structs.Whole(3)})
	if err != nil {
		t.Fatal(err)
	}
	if d.Whole != 2 || !slices.Equal(d.MIG, []MIGDemand{{"1g.10gb", 1}, {"2g.20gb", 3}}) {
		t.Fatalf("demand %+v", d)
	}
	for _, res := range []structs.Slots{{structs.SlotCUDADevice: 1500}, {"cuda.mig-1g.10gb": 500}, {structs.SlotCUDADevice: -structs.Whole(1)}} {
		if _, err := DemandOf(res); err == nil {
			t.Fatalf("%v: no error", res)
		}
	}
	a := gpuAgent("a1", islandsInventory(8, 4, "NVIDIA H100", 80))
	if _, _, err := ChooseDevices(a, structs.Slots{structs.SlotCUDADevice: 500}, nil, nil); err == nil || !strings.Contains(err.Error(), "whole") {
		t.Fatalf("fractional GPU: %v", err)
	}
}

func TestAgentWithoutInventory(t *testing.T) {
	a := &structs.Agent{ID: "old", Capacity: structs.Slots{structs.SlotCUDADevice: structs.Whole(4)}}
	if r := DeviceFit(a, gpus(2), nil, nil); r != "" {
		t.Fatalf("counted slots only: %q", r)
	}
	got, _, err := ChooseDevices(a, gpus(2), nil, nil)
	if err != nil || got != nil {
		t.Fatalf("got %v, %v", got, err)
	}
	if r := DeviceFit(a, gpus(2), &structs.GPUConstraint{Model: "H100*"}, nil); r != `needs 2 GPUs (model "H100*"): agent old reports no GPU inventory` {
		t.Fatalf("reason %q", r)
	}
}

func TestValidateGPUModel(t *testing.T) {
	for _, ok := range []string{"H100*", "H100*|H200*", "NVIDIA A100-SXM4-40GB", "A[14]0*"} {
		if err := ValidateGPUModel(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"H100[", "H100*||H200*", "|"} {
		if err := ValidateGPUModel(bad); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

// The greedy path (more candidate sets than maxExhaustive) still finds
// whole islands.
func TestChooseDevicesGreedy(t *testing.T) {
	inv := islandsInventory(32, 8, "NVIDIA H100", 80)
	a := gpuAgent("a1", inv, 0)
	got, _, err := ChooseDevices(a, gpus(8), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := uuids(8, 9, 10, 11, 12, 13, 14, 15); !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}

func BenchmarkChooseDevices(b *testing.B) {
	for _, c := range []struct{ gpus, island, n int }{{8, 4, 4}, {16, 8, 8}, {16, 4, 8}, {16, 8, 4}, {32, 8, 8}} {
		b.Run(fmt.Sprintf("%dgpus-islands%d-choose%d", c.gpus, c.island, c.n), func(b *testing.B) {
			a := gpuAgent("a1", islandsInventory(c.gpus, c.island, "NVIDIA H100", 80))
			for b.Loop() {
				if _, _, err := ChooseDevices(a, gpus(c.n), nil, nil); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func gpuKernel(host string, n int, c *structs.GPUConstraint) *structs.Kernel {
	k := kernel(host, structs.Slots{structs.SlotCPU: structs.Whole(1), structs.SlotCUDADevice: structs.Whole(int64(n))})
	k.GPUConstraint = c
	return k
}

// mixedInventory is GPUs 0-1 H100 80GB and 2-3 A100 40GB.
func mixedInventory() *structs.GPUInventory {
	inv := islandsInventory(4, 2, "NVIDIA H100 80GB HBM3", 80)
	for _, d := range inv.Devices[2:] {
		d.Name, d.MemoryBytes = "NVIDIA A100-SXM4-40GB", 40*gibBytes
	}
	return inv
}

func TestScheduleGPUConstraints(t *testing.T) {
	a100 := islandsInventory(8, 4, "NVIDIA A100-SXM4-40GB", 40)
	h100 := islandsInventory(8, 4, "NVIDIA H100 80GB HBM3", 80)
	cases := []struct {
		name     string
		agents   []*structs.Agent
		pending  []*PendingSession
		placed   map[string]string
		unplaced map[string]string
	}{
		{
			// a1 sorts first and has as much room: only the model sends
			// the kernel to a2.
			name:    "model picks the agent",
			agents:  []*structs.Agent{gpuAgent("a1", a100), gpuAgent("a2", h100)},
			pending: []*PendingSession{session("s1", 1, "", gpuKernel("main1", 4, &structs.GPUConstraint{Model: "H100*|H200*"}))},
			placed:  map[string]string{"s1": "main1@a2"},
		},
		{
			name:    "memory picks the agent",
			agents:  []*structs.Agent{gpuAgent("a1", a100), gpuAgent("a2", h100)},
			pending: []*PendingSession{session("s1", 1, "", gpuKernel("main1", 1, &structs.GPUConstraint{MinMemory: structs.Whole(64 * gibBytes)}))},
			placed:  map[string]string{"s1": "main1@a2"},
		},
		{
			name:    "no agent has the model",
			agents:  []*structs.Agent{gpuAgent("a1", a100), gpuAgent("a2", a100)},
			pending: []*PendingSession{session("s1", 1, "", gpuKernel("main1", 4, &structs.GPUConstraint{Model: "H100*"}))},
			unplaced: map[string]string{"s1": `no agent in resource group "default" has the GPU devices for kernel main1: ` +
				`needs 4 GPUs (model "H100*"): 0 free match on agent a1`},
		},
		{
			// The reason names the agent that came closest.
			name:    "closest agent named",
			agents:  []*structs.Agent{gpuAgent("a1", mixedInventory()), gpuAgent("a2", islandsInventory(4, 2, "NVIDIA A100", 40))},
			pending: []*PendingSession{session("s1", 1, "", gpuKernel("main1", 3, &structs.GPUConstraint{Model: "H100*"}))},
			unplaced: map[string]string{"s1": `no agent in resource group "default" has the GPU devices for kernel main1: ` +
				`needs 3 GPUs (model "H100*"): 2 free match on agent a1`},
		},
		{
			// s1 takes the two H100s (lowest indices) in the pass: s2,
			// behind it, finds two free slots but no free H100.
			name:    "devices taken earlier in the pass",
			agents:  []*structs.Agent{gpuAgent("a1", mixedInventory())},
			pending: []*PendingSession{session("s1", 1, "", gpuKernel("main1", 2, nil)), session("s2", 2, "", gpuKernel("main1", 2, &structs.GPUConstraint{Model: "H100*"}))},
			placed:  map[string]string{"s1": "main1@a1"},
			unplaced: map[string]string{"s2": `no agent in resource group "default" has the GPU devices for kernel main1: ` +
				`needs 2 GPUs (model "H100*"): 0 free match on agent a1`},
		},
		{
			name:    "held devices count",
			agents:  []*structs.Agent{gpuAgent("a1", mixedInventory(), 0), gpuAgent("a2", a100)},
			pending: []*PendingSession{session("s1", 1, "", gpuKernel("main1", 1, &structs.GPUConstraint{Model: "H100*"}))},
			placed:  map[string]string{"s1": "main1@a1"},
		},
		{
			// Two kernels of one single-node session need 2 H100s each:
			// disjoint, they need 4, and a1 has 2.
			name:   "single-node session's kernels fit together",
			agents: []*structs.Agent{gpuAgent("a1", mixedInventory()), gpuAgent("a2", h100)},
			pending: []*PendingSession{session("s1", 1, "", gpuKernel("main1", 2, &structs.GPUConstraint{Model: "H100*"}),
				gpuKernel("sub1", 2, &structs.GPUConstraint{Model: "H100*"}))},
			placed: map[string]string{"s1": "main1@a2 sub1@a2"},
		},
		{
			name:   "single-node session's kernels do not fit together",
			agents: []*structs.Agent{gpuAgent("a1", mixedInventory())},
			pending: []*PendingSession{session("s1", 1, "", gpuKernel("main1", 2, &structs.GPUConstraint{Model: "H100*"}),
				gpuKernel("sub1", 2, &structs.GPUConstraint{Model: "H100*"}))},
			unplaced: map[string]string{"s1": `no agent in resource group "default" has the GPU devices for all 2 kernels of the single-node session together: ` +
				`kernel sub1 needs 2 GPUs (model "H100*"): 0 free match on agent a1`},
		},
		{
			// Multi-node: main1 takes a1's H100s, sub1 goes to a2.
			name:   "multi-node kernels spread by device",
			agents: []*structs.Agent{gpuAgent("a1", mixedInventory()), gpuAgent("a2", mixedInventory())},
			pending: []*PendingSession{multiNode(session("s1", 1, "", gpuKernel("main1", 2, &structs.GPUConstraint{Model: "H100*"}),
				gpuKernel("sub1", 2, &structs.GPUConstraint{Model: "H100*"})))},
			placed: map[string]string{"s1": "main1@a1 sub1@a2"},
		},
		{
			name:   "MIG slices",
			agents: []*structs.Agent{gpuAgent("a1", migInventory())},
			pending: []*PendingSession{
				session("s1", 1, "", kernel("main1", structs.Slots{"cuda.mig-1g.10gb": structs.Whole(4)})),
				session("s2", 2, "", kernel("main1", structs.Slots{"cuda.mig-1g.10gb": structs.Whole(3)})),
			},
			placed: map[string]string{"s1": "main1@a1", "s2": "main1@a1"},
		},
		{
			name:     "fractional GPU refused",
			agents:   []*structs.Agent{gpuAgent("a1", h100)},
			pending:  []*PendingSession{session("s1", 1, "", kernel("main1", structs.Slots{structs.SlotCUDADevice: 1500}))},
			unplaced: map[string]string{"s1": "kernel main1: device slots count whole devices: cuda.device=1.5 is not a whole number of zero or more"},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for _, sel := range []AgentSelector{nil, MostFreeCPU} {
				res := PlanWith(&Input{Pending: c.pending, Agents: c.agents}, Options{AgentSelector: sel})
				got := placedMap(res.Plan)
				if c.placed == nil {
					c.placed = map[string]string{}
				}
				if fmt.Sprint(got) != fmt.Sprint(c.placed) {
					t.Fatalf("selector %v: placed %v, want %v (unplaced %v)", sel != nil, got, c.placed, res.Plan.Unplaced)
				}
				for id, want := range c.unplaced {
					if res.Plan.Unplaced[id] != want {
						t.Fatalf("selector %v: %s: reason\n %q\nwant\n %q", sel != nil, id, res.Plan.Unplaced[id], want)
					}
				}
			}
		})
	}
}

// Policies and resource groups limit cuda.device like any slot, on GPU
// agents too.
func TestGPULimits(t *testing.T) {
	a := gpuAgent("a1", islandsInventory(8, 4, "NVIDIA H100", 80))
	s1 := session("s1", 1, "", gpuKernel("main1", 2, nil))
	s2 := session("s2", 2, "", gpuKernel("main1", 1, nil))
	s1.Session.AccessKey, s2.Session.AccessKey = "ak", "ak"
	in := &Input{Pending: []*PendingSession{s1, s2}, Agents: []*structs.Agent{a},
		Policies: map[string]*structs.ResourcePolicy{"ak": {Name: "gpu2", TotalResourceSlots: structs.Slots{structs.SlotCUDADevice: structs.Whole(2)}}}}
	res := Plan(in)
	if got := placedMap(res.Plan); fmt.Sprint(got) != "map[s1:main1@a1]" {
		t.Fatalf("placed %v", got)
	}
	if r := res.Plan.Unplaced["s2"]; !strings.HasPrefix(r, "total_resource_slots: access key ak would hold more cuda.device than policy gpu2 allows (holds cuda.device=2, the session needs cuda.device=1, limit cuda.device=2") {
		t.Fatalf("s2: %q", r)
	}
	in.Policies = nil
	in.Groups = map[string]*structs.ResourceGroup{"default": {Name: "default", TotalResourceSlots: structs.Slots{structs.SlotCUDADevice: structs.Whole(2)}}}
	res = Plan(in)
	if r := res.Plan.Unplaced["s2"]; !strings.Contains(r, `total_resource_slots of resource group "default": the group would hold more cuda.device`) {
		t.Fatalf("s2: %q", r)
	}
}

// bestGPUSet agrees with a brute force over every subset on random
// topologies: the most NVLinks, then the best worst level, then one NUMA
// node, then the lowest indices.
func TestBestGPUSetMatchesBruteForce(t *testing.T) {
	levels := []string{structs.GPULinkInternal, structs.GPULinkSingle, structs.GPULinkMultiple, structs.GPULinkHostBridge, structs.GPULinkNode, structs.GPULinkSystem, ""}
	r := rand.New(rand.NewPCG(1, 2))
	for round := 0; round < 300; round++ {
		m := 2 + r.IntN(9)
		n := 1 + r.IntN(m)
		var cands []*structs.GPU
		for i := 0; i < m; i++ {
			cands = append(cands, &structs.GPU{Index: i, UUID: fmt.Sprint("G", i), NUMANode: r.IntN(3) - 1, Links: map[string]structs.GPULink{}})
		}
		for i := 0; i < m; i++ {
			for j := i + 1; j < m; j++ {
				l := structs.GPULink{NVLinks: []int{0, 0, 2, 4}[r.IntN(4)], Level: levels[r.IntN(len(levels))]}
				cands[i].Links[cands[j].UUID] = l // one side only: link() looks both ways
			}
		}
		var want []int
		var wantScore setScore
		for mask := 0; mask < 1<<m; mask++ {
			var set []int
			for i := 0; i < m; i++ {
				if mask&(1<<i) != 0 {
					set = append(set, i)
				}
			}
			if len(set) != n {
				continue
			}
			sc := setScore{sameNUMA: true}
			for x, i := range set {
				if x > 0 && (cands[i].NUMANode < 0 || cands[i].NUMANode != cands[set[0]].NUMANode) {
					sc.sameNUMA = false
				}
				for _, j := range set[x+1:] {
					l := link(cands[i], cands[j])
					sc.nvlinks += l.NVLinks
					lv, ok := linkLevels[l.Level]
					if !ok {
						lv = unknownLevel
					}
					sc.level = max(sc.level, lv)
				}
			}
			if want == nil || sc.better(wantScore) || (!wantScore.better(sc) && slices.Compare(set, want) < 0) {
				want, wantScore = set, sc
			}
		}
		var got []int
		for _, g := range bestGPUSet(cands, n) {
			got = append(got, g.Index)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("round %d (%d of %d): got %v, want %v (%+v)", round, n, m, got, want, wantScore)
		}
	}
}

// A device reported twice, or without a UUID, is never handed out twice
// or at all.
func TestChooseDevicesOddInventory(t *testing.T) {
	inv := islandsInventory(4, 4, "NVIDIA H100", 80)
	dup := *inv.Devices[1]
	dup.Index = 9
	noID := *inv.Devices[2]
	noID.UUID, noID.Index = "", 10
	inv.Devices = append(inv.Devices, &dup, &noID)
	a := gpuAgent("a1", inv)
	if r := DeviceFit(a, gpus(5), nil, nil); r != "needs 5 GPUs: 4 free match on agent a1" {
		t.Fatalf("reason %q", r)
	}
	got, _, err := ChooseDevices(a, gpus(4), nil, nil)
	if err != nil || !slices.Equal(got, uuids(0, 1, 2, 3)) {
		t.Fatalf("got %v, %v", got, err)
	}
}

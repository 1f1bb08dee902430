package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/structs"
)

func gpuTestAgent(now time.Time) *structs.Agent {
	inv := &structs.GPUInventory{DriverVersion: "550.54.15", CUDAVersion: "12.4", Devices: []*structs.GPU{
		{Index: 1, UUID: "GPU-bbbb", Name: "NVIDIA H100 80GB HBM3", MemoryBytes: 80 << 30, Unhealthy: "XID 79: GPU has fallen off the bus"},
		{Index: 0, UUID: "GPU-aaaa", Name: "NVIDIA H100 80GB HBM3", MemoryBytes: 80 << 30, UtilPercent: 97, MemoryUsedBytes: 30 << 30},
		{Index: 2, UUID: "GPU-cccc", Name: "NVIDIA H100 80GB HBM3", MemoryBytes: 80 << 30, MIGMode: true, MIG: []*structs.MIGInstance{
			{UUID: "MIG-1111", Profile: "1g.10gb", MemoryBytes: 10 << 30, GIID: 7},
			{UUID: "MIG-2222", Profile: "1g.10gb", MemoryBytes: 10 << 30, GIID: 8},
		}},
	}}
	capacity := inv.Slots()
	capacity[structs.SlotCPU] = structs.Whole(32)
	return &structs.Agent{ID: "44444444-dddd", Name: "gpu1", Status: structs.AgentAlive, Drivers: []string{"exec"},
		Capacity: capacity, GPUs: inv, RegisteredAt: now.Add(-time.Hour),
		Occupied:   structs.Slots{structs.SlotCUDADevice: structs.Whole(1), structs.SlotCUDAMem: structs.Whole(80 << 30), "cuda.mig-1g.10gb": structs.Whole(1)},
		GPUHolders: map[string]string{"GPU-aaaa": "kernel-1111-aaaa", "MIG-2222": "kernel-2222-bbbb"}}
}

func TestRenderAgentGPUs(t *testing.T) {
	now := time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)
	a := gpuTestAgent(now)
	var b bytes.Buffer
	if err := renderAgents(&b, []*structs.Agent{a, {ID: "55555555", Name: "cpu1", Status: structs.AgentAlive}}, now); err != nil {
		t.Fatal(err)
	}
	rows := fields(b.String())
	if len(rows) != 3 || rows[0][9] != "GPUS" || rows[1][9] != "1/1" || rows[1][10] != "1g.10gb:1/2" || rows[2][9] != "-" {
		t.Errorf("node list:\n%s", b.String())
	}
	b.Reset()
	names := func(id string) string {
		if id == "kernel-1111-aaaa" {
			return "train (1a2b3c4d) main1"
		}
		return ""
	}
	if err := renderAgentWith(&b, a, now, names); err != nil {
		t.Fatal(err)
	}
	out := squeeze(b.String())
	for _, want := range []string{
		"GPUs (driver 550.54.15, CUDA 12.4)",
		"IDX UUID MODEL MEMORY HEALTH UTIL MEM USED HELD BY",
		"0 GPU-aaaa NVIDIA H100 80GB HBM3 80GiB healthy 97% 30GiB train (1a2b3c4d) main1",
		"1 GPU-bbbb NVIDIA H100 80GB HBM3 80GiB unhealthy: XID 79: GPU has fallen off the bus",
		"2 GPU-cccc NVIDIA H100 80GB HBM3 80GiB healthy 0% 0B MIG mode (2 instances)",
		"7/0 MIG-1111 MIG 1g.10gb 10GiB healthy - - -",
		"8/0 MIG-2222 MIG 1g.10gb 10GiB healthy - - kernel kernel-2", // no name found: the kernel's short ID
		"cuda.mem 80GiB 80GiB 0B",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("node status lacks %q:\n%s", want, out)
		}
	}
	// GPU 0 comes before GPU 1 (sorted by index), MIG instances under GPU 2.
	if i, j, k := strings.Index(out, "GPU-aaaa"), strings.Index(out, "GPU-bbbb"), strings.Index(out, "MIG-1111"); !(i < j && j < k) {
		t.Errorf("device order:\n%s", out)
	}
}

func TestRenderSessionGPUs(t *testing.T) {
	now := time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)
	d := &api.SessionDetail{Session: &structs.Session{ID: "s1", Type: "batch", Status: structs.SessionRunning, CreatedAt: now},
		Kernels: []*structs.Kernel{
			{ID: "k1", Hostname: "main1", Status: structs.KernelRunning, GPUs: []string{"GPU-aaaa", "GPU-bbbb"},
				GPUConstraint: &structs.GPUConstraint{Model: "H100*", MinMemory: structs.Whole(40 << 30)}},
			{ID: "k2", Hostname: "sub1", Status: structs.KernelRunning},
		}}
	var b bytes.Buffer
	if err := renderSessionDetail(&b, d, nil, now); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"\nGPUs\n", "main1 model H100*, >= 40GiB GPU-aaaa, GPU-bbbb", "sub1 - -"} {
		if !strings.Contains(squeeze(b.String()), want) {
			t.Errorf("session status lacks %q:\n%s", want, b.String())
		}
	}
	// Sessions without GPUs show no GPU section.
	d.Kernels = d.Kernels[1:]
	b.Reset()
	if err := renderSessionDetail(&b, d, nil, now); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(b.String(), "GPUs") {
		t.Errorf("GPU section without GPUs:\n%s", b.String())
	}
}

// squeeze collapses the runs of blanks of each line (table padding).
func squeeze(s string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		lines[i] = strings.Join(strings.Fields(l), " ")
	}
	return strings.Join(lines, "\n")
}

// TestNodeStatusNamesGPUHolders: node status names the session and
// kernel holding each device, found through the API.
func TestNodeStatusNamesGPUHolders(t *testing.T) {
	f := newFakeCorral(t)
	mustRun(t, f.url, 0, "session", "create", "-type", "interactive", "-name", "train", "-gpu", "1", "--", "sleep", "1d")
	f.mu.Lock()
	a := gpuTestAgent(time.Now())
	a.ID, a.Name = f.agent.ID, f.agent.Name
	a.GPUHolders = map[string]string{"GPU-aaaa": "k0000001-aaaa", "MIG-2222": "gone-kernel-id"}
	f.agent = a
	f.mu.Unlock()
	r := mustRun(t, f.url, 0, "node", "status", "node-1")
	out := squeeze(r.stdout)
	for _, want := range []string{"0 GPU-aaaa NVIDIA H100 80GB HBM3 80GiB healthy 97% 30GiB train (00000001) main1", "kernel gone-ker"} {
		if !strings.Contains(out, want) {
			t.Errorf("node status lacks %q:\n%s", want, r.stdout)
		}
	}
	r = mustRun(t, f.url, 0, "node", "list")
	if rows := fields(r.stdout); len(rows) != 2 || rows[1][9] != "1/1" || rows[1][10] != "1g.10gb:1/2" {
		t.Errorf("node list:\n%s", r.stdout)
	}
	if got := f.creates[0].Resources[structs.SlotCUDADevice]; got != structs.Whole(1) {
		t.Errorf("create sent cuda.device=%v", got)
	}
}

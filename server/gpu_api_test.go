package server_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/structs"
)

// TestGPURequestValidation: device slots are whole numbers, cuda.mem is
// never asked for, a constraint needs a GPU slot and a good glob; every
// refusal is a 400 with a JSON error and creates nothing.
func TestGPURequestValidation(t *testing.T) {
	c := startCluster(t, nil)
	for _, tc := range []struct {
		name, body string
		want       string
	}{
		{"fractional gpu", `{"command": ["true"], "resources": {"cuda.device": 1.5}}`, "cuda.device=1.5 must be a whole number of devices"},
		{"negative gpu", `{"command": ["true"], "resources": {"cuda.device": -1}}`, "cuda.device=-1 must be a whole number"},
		{"fractional mig", `{"command": ["true"], "resources": {"cuda.mig-1g.10gb": 0.5}}`, "cuda.mig-1g.10gb=0.5 must be a whole number"},
		{"bad mig profile", `{"command": ["true"], "resources": {"cuda.mig-": 1}}`, "unknown resource slot \"cuda.mig-\""},
		{"bad mig profile chars", `{"command": ["true"], "resources": {"cuda.mig-1g 10gb": 1}}`, "invalid MIG slot"},
		{"too many gpus", `{"command": ["true"], "resources": {"cuda.device": 65}}`, "out of range [0, 64]"},
		{"cuda.mem asked", `{"command": ["true"], "resources": {"cuda.device": 1, "cuda.mem": 1000}}`,
			"cuda.mem is counted from the GPUs a kernel gets: ask for -gpu N and -gpu-mem SIZE"},
		{"constraint without gpu", `{"command": ["true"], "gpu_constraint": {"model": "H100*"}}`,
			"kernel main1: a GPU model or memory constraint needs GPUs"},
		{"memory constraint without gpu", `{"command": ["true"], "gpu_constraint": {"min_memory": 1073741824}}`,
			"needs GPUs"},
		{"bad glob", `{"command": ["true"], "resources": {"cuda.device": 1}, "gpu_constraint": {"model": "H100["}}`,
			`gpu_constraint: gpu model "H100[": bad pattern`},
		{"empty alternative", `{"command": ["true"], "resources": {"cuda.device": 1}, "gpu_constraint": {"model": "H100*||A100"}}`,
			"empty alternative"},
		{"negative memory", `{"command": ["true"], "resources": {"cuda.device": 1}, "gpu_constraint": {"min_memory": -1}}`,
			"min_memory must be zero or more"},
		{"role fractional gpu", `{"command": ["true"], "cluster_size": 2, "roles": [{"role": "sub", "resources": {"cuda.device": 0.5}}]}`,
			"role sub: resource cuda.device=0.5 must be a whole number"},
		{"role cuda.mem", `{"command": ["true"], "cluster_size": 2, "roles": [{"role": "sub", "resources": {"cuda.mem": 5}}]}`,
			"role sub: cuda.mem is counted"},
		{"role bad glob", `{"command": ["true"], "cluster_size": 2, "roles": [{"role": "sub", "resources": {"cuda.device": 1}, "gpu_constraint": {"model": "["}}]}`,
			"role sub: gpu_constraint"},
		// The session's constraint reaches sub1, which asks for no GPU.
		{"role without gpu under a session constraint", `{"command": ["true"], "cluster_size": 2, "resources": {"cuda.device": 1}, "gpu_constraint": {"model": "H100*"}, "roles": [{"role": "sub", "resources": {"cuda.device": 0}}]}`,
			"kernel sub1: a GPU model or memory constraint needs GPUs"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest("POST", c.addr+"/v1/sessions", strings.NewReader(tc.body))
			req.Header.Set("Authorization", "Bearer "+c.token)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var e api.ErrorResponse
			if err := json.NewDecoder(resp.Body).Decode(&e); err != nil {
				t.Fatalf("body is not JSON: %v", err)
			}
			if resp.StatusCode != 400 || !strings.Contains(e.Error, tc.want) {
				t.Fatalf("got %d %q, want 400 containing %q", resp.StatusCode, e.Error, tc.want)
			}
		})
	}
	list, err := c.client.ListSessions(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 0 {
		t.Fatalf("bad input created %d sessions", len(list))
	}
}

// TestGPURequestCopiedToKernels: the constraint and device slots reach the
// kernels, a role's constraint replacing the session's; a session whose
// constraint no agent's devices can meet stays PENDING saying so.
func TestGPURequestCopiedToKernels(t *testing.T) {
	// The agent counts 2 GPUs but reports no inventory (no NVML here):
	// unconstrained GPU kernels fit on its counted slots, constrained
	// ones cannot.
	c := startCluster(t, structs.Slots{structs.SlotCPU: structs.Whole(4), structs.SlotMem: structs.Whole(4 << 30), structs.SlotCUDADevice: structs.Whole(2)})
	d := create(t, c, &api.CreateSessionRequest{Type: "batch", Command: []string{"true"}, ClusterSize: 2,
		Resources:     structs.Slots{structs.SlotCPU: 100, structs.SlotMem: structs.Whole(32 << 20), structs.SlotCUDADevice: structs.Whole(1)},
		GPUConstraint: &structs.GPUConstraint{Model: "H100*|H200*", MinMemory: structs.Whole(40 << 30)},
		Roles: []api.RoleSpec{{Role: "sub", Resources: structs.Slots{"cuda.mig-1g.10gb": structs.Whole(1), structs.SlotCUDADevice: 0},
			GPUConstraint: &structs.GPUConstraint{Model: "A100*"}}}})
	for _, k := range d.Kernels {
		switch k.Hostname {
		case "main1":
			if k.GPUConstraint == nil || k.GPUConstraint.Model != "H100*|H200*" || k.GPUConstraint.MinMemory != structs.Whole(40<<30) ||
				k.Resources[structs.SlotCUDADevice] != structs.Whole(1) {
				t.Fatalf("main1: %+v %v", k.GPUConstraint, k.Resources)
			}
		case "sub1":
			if k.GPUConstraint == nil || k.GPUConstraint.Model != "A100*" || k.GPUConstraint.MinMemory != 0 ||
				k.Resources["cuda.mig-1g.10gb"] != structs.Whole(1) || k.Resources[structs.SlotCUDADevice] != 0 {
				t.Fatalf("sub1: %+v %v", k.GPUConstraint, k.Resources)
			}
		}
	}
	one := create(t, c, &api.CreateSessionRequest{Type: "batch", Command: []string{"true"},
		Resources:     structs.Slots{structs.SlotCPU: 100, structs.SlotMem: structs.Whole(32 << 20), structs.SlotCUDADevice: structs.Whole(1)},
		GPUConstraint: &structs.GPUConstraint{Model: "H100*"}})
	one = c.waitFor(t, one.Session.ID, func(d *api.SessionDetail) bool { return strings.Contains(d.Session.StatusInfo, "GPU") })
	if want := `needs 1 GPU (model "H100*")`; one.Session.Status != structs.SessionPending || !strings.Contains(one.Session.StatusInfo, want) {
		t.Fatalf("%s %q, want PENDING with %q", one.Session.Status, one.Session.StatusInfo, want)
	}
}

// Policies and groups may limit cuda.device and MIG slots, never cuda.mem.
func TestGPUSlotLimits(t *testing.T) {
	c := startCluster(t, nil)
	for _, tc := range []struct {
		name, path, body string
		code             int
		want             string
	}{
		{"policy gpu", "/v1/policies", `{"name": "g", "total_resource_slots": {"cuda.device": 2, "cuda.mig-1g.10gb": 3}}`, 200, ""},
		{"policy cuda.mem", "/v1/policies", `{"name": "m", "total_resource_slots": {"cuda.mem": 5}}`, 400, "cuda.mem cannot be limited"},
		{"policy unknown", "/v1/policies", `{"name": "u", "total_resource_slots": {"tpu": 5}}`, 400, "known slots are cpu, mem, cuda.device, cuda.mig-<profile>"},
		{"group gpu", "/v1/groups", `{"name": "gpus", "total_resource_slots": {"cuda.device": 8}}`, 200, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest("POST", c.addr+tc.path, strings.NewReader(tc.body))
			req.Header.Set("Authorization", "Bearer "+c.token)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var e api.ErrorResponse
			_ = json.NewDecoder(resp.Body).Decode(&e)
			if resp.StatusCode/100 != tc.code/100 || !strings.Contains(e.Error, tc.want) {
				t.Fatalf("got %d %q, want %d containing %q", resp.StatusCode, e.Error, tc.code, tc.want)
			}
		})
	}
}

package main

import (
	"reflect"
	"strings"
	"testing"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/structs"
)

func TestParseCreateGPU(t *testing.T) {
	c := &cli{getenv: func(string) string { return "" }}
	for _, tc := range []struct {
		name string
		args []string
		want api.CreateSessionRequest
	}{
		{
			name: "gpu alias", args: []string{"-gpu", "2", "--", "nvidia-smi", "-L"},
			want: api.CreateSessionRequest{Type: "batch", Command: []string{"nvidia-smi", "-L"},
				Resources: structs.Slots{structs.SlotCUDADevice: structs.Whole(2)}},
		},
		{
			name: "slots and constraint",
			args: []string{"-slot", "cuda.mig-1g.10gb=1", "-slot", "mem=2G", "-slot", "cpu=0.5", "-gpu-model", "H100*|H200*", "-gpu-mem", "40G", "true"},
			want: api.CreateSessionRequest{Type: "batch", Command: []string{"true"},
				Resources:     structs.Slots{"cuda.mig-1g.10gb": structs.Whole(1), structs.SlotMem: structs.Whole(2 << 30), structs.SlotCPU: 500},
				GPUConstraint: &structs.GPUConstraint{Model: "H100*|H200*", MinMemory: structs.Whole(40 << 30)}},
		},
		{
			name: "slot cuda.device", args: []string{"-slot", "cuda.device=4", "-cpu", "8", "true"},
			want: api.CreateSessionRequest{Type: "batch", Command: []string{"true"},
				Resources: structs.Slots{structs.SlotCUDADevice: structs.Whole(4), structs.SlotCPU: structs.Whole(8)}},
		},
		{
			name: "per role",
			args: []string{"-cluster-size", "3", "-gpu", "4", "-gpu-model", "H100*",
				"-role", "sub:gpu=1,gpu-model=A100*|L4,gpu-mem=20G,slot.cuda.mig-1g.10gb=2,cpu=2", "true"},
			want: api.CreateSessionRequest{Type: "batch", Command: []string{"true"}, ClusterSize: 3,
				Resources:     structs.Slots{structs.SlotCUDADevice: structs.Whole(4)},
				GPUConstraint: &structs.GPUConstraint{Model: "H100*"},
				Roles: []api.RoleSpec{{Role: "sub", Resources: structs.Slots{structs.SlotCUDADevice: structs.Whole(1),
					"cuda.mig-1g.10gb": structs.Whole(2), structs.SlotCPU: structs.Whole(2)},
					GPUConstraint: &structs.GPUConstraint{Model: "A100*|L4", MinMemory: structs.Whole(20 << 30)}}}},
		},
		{
			name: "no gpu for a role", args: []string{"-cluster-size", "2", "-gpu", "1", "-role", "sub:gpu=0", "true"},
			want: api.CreateSessionRequest{Type: "batch", Command: []string{"true"}, ClusterSize: 2,
				Resources: structs.Slots{structs.SlotCUDADevice: structs.Whole(1)},
				Roles:     []api.RoleSpec{{Role: "sub", Resources: structs.Slots{structs.SlotCUDADevice: 0}}}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd, err := c.parseCreate(tc.args)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(cmd.req, tc.want) {
				t.Errorf("request\n got %+v\nwant %+v", cmd.req, tc.want)
			}
		})
	}
}

func TestParseCreateGPUErrors(t *testing.T) {
	c := &cli{getenv: func(string) string { return "" }}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-gpu", "1.5", "true"}, `invalid -gpu "1.5": want a whole number of devices`},
		{[]string{"-gpu", "-1", "true"}, `invalid -gpu "-1"`},
		{[]string{"-gpu", "two", "true"}, `invalid -gpu "two"`},
		{[]string{"-slot", "cuda.mig-1g.10gb=0.5", "true"}, `invalid cuda.mig-1g.10gb "0.5": want a whole number`},
		{[]string{"-slot", "cuda.device", "true"}, "want NAME=QTY"},
		{[]string{"-slot", "cpu=1", "-slot", "cpu=2", "true"}, "slot cpu given twice"},
		{[]string{"-slot", "cuda.device=1", "-gpu", "2", "true"}, "both -gpu and -slot cuda.device given"},
		{[]string{"-gpu", "1", "-gpu-model", "H100[", "true"}, `invalid -gpu-model: gpu model "H100[": bad pattern`},
		{[]string{"-gpu", "1", "-gpu-mem", "lots", "true"}, `invalid -gpu-mem "lots"`},
		{[]string{"-role", "sub:gpu=x", "true"}, `invalid gpu "x"`},
		{[]string{"-role", "sub:gpu-model=[", "true"}, `invalid gpu-model: gpu model "[": bad pattern`},
		{[]string{"-role", "sub:slot.cuda.device=1,gpu=2", "true"}, "slot cuda.device given twice for role sub"},
		{[]string{"-role", "sub:tpu=1", "true"}, `unknown key "tpu": keys are image, driver, cpu, mem, gpu, gpu-model, gpu-mem, slot.NAME, pids, disk and command`},
	} {
		_, err := c.parseCreate(tc.args)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: error %v, want %q", tc.args, err, tc.want)
		}
		if err != nil && strings.Count(strings.TrimSpace(err.Error()), "\n") > 0 {
			t.Errorf("%v: error is not one line: %q", tc.args, err)
		}
	}
}

func TestGPULimitFlags(t *testing.T) {
	c := &cli{getenv: func(string) string { return "" }}
	f := c.newFlags("group create", "", "", false)
	g, _ := groupFlags(f)
	if err := f.Parse([]string{"-total-gpu", "4", "-total-cpu", "64"}); err != nil {
		t.Fatal(err)
	}
	if g.TotalResourceSlots[structs.SlotCUDADevice] != structs.Whole(4) || g.TotalResourceSlots[structs.SlotCPU] != structs.Whole(64) {
		t.Fatalf("group limits %v", g.TotalResourceSlots)
	}
	f = c.newFlags("group create", "", "", false)
	groupFlags(f)
	f.SetOutput(new(strings.Builder))
	if err := f.Parse([]string{"-total-gpu", "1.5"}); err == nil || !strings.Contains(err.Error(), "whole number of GPUs") {
		t.Fatalf("fractional group GPU limit: %v", err)
	}
	if _, err := parseSlotFlags(f, "", "", "1.5"); err == nil || !strings.Contains(err.Error(), "whole number of GPUs") {
		t.Fatalf("fractional policy GPU limit: %v", err)
	}
	if s, err := parseSlotFlags(f, "", "", "2"); err != nil || s[structs.SlotCUDADevice] != structs.Whole(2) {
		t.Fatalf("policy GPU limit: %v %v", s, err)
	}
}

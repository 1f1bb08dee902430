package main

import (
	"flag"
	"reflect"
	"strings"
	"testing"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/structs"
)

func TestParseCreateCluster(t *testing.T) {
	c := &cli{getenv: func(string) string { return "" }}
	for _, tc := range []struct {
		name string
		args []string
		want api.CreateSessionRequest
	}{
		{
			name: "job settings and options",
			args: []string{"-cluster-size", "3", "-run-on", "all", "-fail-on", "main", "-start", "unordered", "-shm", "8G",
				"-ulimit", "memlock=unlimited,nofile=1024:65536", "-ulimit", "stack=8388608", "-cap-add", "ipc_lock", "-cap-add", "SYS_PTRACE,CAP_SYS_NICE",
				"-network", "host", "-infiniband", "--", "mpirun", "./a.out"},
			want: api.CreateSessionRequest{Type: "batch", Command: []string{"mpirun", "./a.out"}, ClusterSize: 3, RunOn: "all", FailOn: "main", StartOrder: "unordered",
				Shm: "8G", Ulimits: []string{"memlock=unlimited", "nofile=1024:65536", "stack=8388608"}, CapAdd: []string{"CAP_IPC_LOCK", "CAP_SYS_PTRACE", "CAP_SYS_NICE"},
				Network: "host", InfiniBand: true},
		},
		{
			name: "role command takes the rest, commas included",
			args: []string{"-cluster-size", "2", "-role", "sub:cpu=2,pids=100,disk=1G,command=sleep 1; echo a,b", "-role", "main:command=mpirun -np 2 hostname", "true"},
			want: api.CreateSessionRequest{Type: "batch", Command: []string{"true"}, ClusterSize: 2, Roles: []api.RoleSpec{
				{Role: "sub", Command: []string{"/bin/sh", "-c", "sleep 1; echo a,b"},
					Resources: structs.Slots{structs.SlotCPU: structs.Whole(2), structs.LimitPids: structs.Whole(100), structs.LimitDisk: structs.Whole(1 << 30)}},
				{Role: "main", Command: []string{"/bin/sh", "-c", "mpirun -np 2 hostname"}},
			}},
		},
		{
			name: "every role key",
			args: []string{"-cluster-size", "2", "-role", "sub:image=busybox,driver=runc,mem=1G,gpu=1,gpu-model=A100*,gpu-mem=20G,slot.cuda.mig-1g.10gb=1", "true"},
			want: api.CreateSessionRequest{Type: "batch", Command: []string{"true"}, ClusterSize: 2, Roles: []api.RoleSpec{
				{Role: "sub", Image: "busybox", Driver: "runc",
					Resources:     structs.Slots{structs.SlotMem: structs.Whole(1 << 30), structs.SlotCUDADevice: structs.Whole(1), "cuda.mig-1g.10gb": structs.Whole(1)},
					GPUConstraint: &structs.GPUConstraint{Model: "A100*", MinMemory: structs.Whole(20 << 30)}},
			}},
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

func TestParseCreateClusterErrors(t *testing.T) {
	c := &cli{getenv: func(string) string { return "" }}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-run-on", "sub", "true"}, `invalid -run-on "sub": want main or all`},
		{[]string{"-fail-on", "all", "true"}, `invalid -fail-on "all": want any or main`},
		{[]string{"-start", "now", "true"}, `invalid -start "now": want barrier or unordered`},
		{[]string{"-network", "bridge", "true"}, `invalid -network "bridge": want host or none`},
		{[]string{"-shm", "big", "true"}, `invalid -shm "big"`},
		{[]string{"-ulimit", "memlock", "true"}, "want name=soft[:hard]"},
		{[]string{"-ulimit", "files=1", "true"}, `unknown ulimit "files"`},
		{[]string{"-cap-add", "FLY", "true"}, `unknown capability "FLY"`},
		{[]string{"-role", "sub:command=", "true"}, "command= is empty"},
		{[]string{"-role", "sub:cpu=1", "-role", "sub:mem=1G", "true"}, "role sub given twice"},
		{[]string{"-role", "sub:cpu=1,cpu=2", "true"}, "slot cpu given twice for role sub"},
		{[]string{"-role", "sub:pids=x", "true"}, `invalid pids "x"`},
		{[]string{"-role", "sub:cmd=ls", "true"}, `unknown key "cmd": keys are image, driver, cpu, mem, gpu, gpu-model, gpu-mem, slot.NAME, pids, disk and command`},
	} {
		_, err := c.parseCreate(tc.args)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: error %v, want %q", tc.args, err, tc.want)
		}
	}
}

func TestPolicyFlags(t *testing.T) {
	c := &cli{getenv: func(string) string { return "" }}
	f := c.newFlags("policy create", "", "", false)
	p := newPolicyFlags(f)
	if err := f.Parse([]string{"-max-shm", "16G", "-max-memlock", "unlimited", "-allow-cap", "IPC_LOCK,SYS_PTRACE", "-allow-ulimit", "memlock,rtprio",
		"-allow-host-network", "-allow-infiniband", "-cpu", "8"}); err != nil {
		t.Fatal(err)
	}
	if err := p.finish(f, "hpc"); err != nil {
		t.Fatal(err)
	}
	want := &api.PolicyRequest{Name: "hpc", MaxShm: "16G", MaxMemlock: "unlimited", AllowedCapabilities: []string{"IPC_LOCK", "SYS_PTRACE"},
		AllowedUlimits: []string{"memlock", "rtprio"}, AllowHostNetwork: true, AllowInfiniBand: true, TotalResourceSlots: structs.Slots{structs.SlotCPU: structs.Whole(8)}}
	if !reflect.DeepEqual(p.req, want) {
		t.Fatalf("request\n got %+v\nwant %+v", p.req, want)
	}
}

// TestPolicyUpdateMerge: `policy update` changes only the flags given and
// keeps every other limit of the policy as it is.
func TestPolicyUpdateMerge(t *testing.T) {
	cur := &structs.ResourcePolicy{Name: "team", MaxConcurrentSessions: 4, TotalResourceSlots: structs.Slots{structs.SlotCPU: structs.Whole(16), structs.SlotMem: structs.Whole(64 << 30)},
		MaxShmBytes: 8 << 30, MaxMemlockBytes: -1, AllowedCapabilities: []string{"CAP_IPC_LOCK"}, AllowHostNetwork: true}
	c := &cli{getenv: func(string) string { return "" }}
	f := c.newFlags("policy update", "", "", false)
	p := newPolicyFlags(f)
	if err := f.Parse([]string{"-allow-host-network=false", "-allow-infiniband", "-cpu", "32"}); err != nil {
		t.Fatal(err)
	}
	if err := p.finish(f, "team"); err != nil {
		t.Fatal(err)
	}
	set := map[string]bool{}
	f.Visit(func(fl *flag.Flag) { set[fl.Name] = true })
	got := mergePolicy(policyRequestOf(cur), p.req, set)
	want := &api.PolicyRequest{Name: "team", MaxConcurrentSessions: 4, TotalResourceSlots: structs.Slots{structs.SlotCPU: structs.Whole(32), structs.SlotMem: structs.Whole(64 << 30)},
		MaxShm: "8589934592", MaxMemlock: "unlimited", AllowedCapabilities: []string{"CAP_IPC_LOCK"}, AllowInfiniBand: true}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("merged\n got %+v\nwant %+v", got, want)
	}
	if q, err := structs.ParseBytes(got.MaxShm); err != nil || q != structs.Whole(8<<30) {
		t.Fatalf("max_shm %q does not read back: %v %v", got.MaxShm, q, err)
	}
}

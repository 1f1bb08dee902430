package scheduler

import (
	"strings"
	"testing"

	"github.com/corral-dev/corral/structs"
)

func TestVolumeBackendsReason(t *testing.T) {
	nfs := &structs.Agent{ID: "a1", VolumeRoots: map[string]string{"nfs": "/srv/nfs"}}
	both := &structs.Agent{ID: "a2", VolumeRoots: map[string]string{"nfs": "/srv/nfs", "ceph": "/mnt/ceph"}}
	none := &structs.Agent{ID: "a3"}
	for name, tc := range map[string]struct {
		agents   []*structs.Agent
		backends []string
		want     string // substring; "" means placeable
	}{
		"no volumes":           {[]*structs.Agent{none}, nil, ""},
		"one agent reaches it": {[]*structs.Agent{none, nfs}, []string{"nfs"}, ""},
		"nobody reaches it":    {[]*structs.Agent{none, nfs}, []string{"ceph"}, `reaches volume backend "ceph"`},
		"no agent has both":    {[]*structs.Agent{nfs}, []string{"ceph", "nfs"}, "all of the volume backends"},
		"one agent has both":   {[]*structs.Agent{nfs, both}, []string{"ceph", "nfs"}, ""},
		"no agents":            {nil, []string{"nfs"}, "agents there reach: none"},
	} {
		t.Run(name, func(t *testing.T) {
			got := VolumeBackendsReason("default", tc.agents, tc.backends)
			if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
				t.Fatalf("reason = %q, want one containing %q", got, tc.want)
			}
		})
	}
}

func reaches(b ...string) agentOpt {
	return func(a *structs.Agent) {
		a.VolumeRoots = map[string]string{}
		for _, n := range b {
			a.VolumeRoots[n] = "/srv/" + n
		}
	}
}

func withVolume(k *structs.Kernel, backend string) *structs.Kernel {
	k.Volumes = append(k.Volumes, structs.VolumeMount{Volume: "alice/" + backend, Backend: backend, Dir: "alice/" + backend, Target: "/data"})
	return k
}

// TestSchedulePlacesVolumesOnReachingAgents: kernels with volumes go
// only to agents that reach their backends, whatever the selector
// prefers, and wait with a reason when none does.
func TestSchedulePlacesVolumesOnReachingAgents(t *testing.T) {
	agents := []*structs.Agent{
		agent("a1", cpu(8)),                 // most free, reaches nothing
		agent("a2", cpu(2), reaches("nfs")), // reaches nfs
	}
	p := Schedule(&Input{Agents: agents, Pending: []*PendingSession{
		session("s1", 1, "", withVolume(kernel("main1", cpu(1)), "nfs")),
		session("s2", 2, "", withVolume(kernel("main1", cpu(1)), "ceph")),
		multiNode(session("s3", 3, "", withVolume(kernel("main1", cpu(1)), "nfs"), withVolume(kernel("sub1", cpu(1)), "nfs"))),
		session("s4", 4, "", kernel("main1", cpu(1))),
	}})
	got := placedMap(p)
	if got["s1"] != "main1@a2" {
		t.Errorf("s1 (nfs volume) placed %q, want main1@a2", got["s1"])
	}
	if _, ok := got["s2"]; ok || !strings.Contains(p.Unplaced["s2"], `volume backend "ceph"`) {
		t.Errorf("s2 (ceph volume): placed %q, reason %q; want it PENDING for backend ceph", got["s2"], p.Unplaced["s2"])
	}
	if got["s3"] != "" && got["s3"] != "main1@a2 sub1@a2" {
		t.Errorf("s3 placed %q, want both kernels on a2 (or none: a2 full)", got["s3"])
	}
	if got["s4"] != "main1@a1" {
		t.Errorf("s4 (no volume) placed %q, want main1@a1, the most free", got["s4"])
	}
}

// TestVolumeReasonNamesDrainedAgents: when the only agents that reach a
// session's backend are drained, the PENDING reason says so and how to
// open one, while a free agent that does not reach it stays unused.
func TestVolumeReasonNamesDrainedAgents(t *testing.T) {
	agents := []*structs.Agent{
		agent("a1", cpu(8)),
		agent("a2", cpu(2), reaches("nfs"), drained()),
	}
	p := Schedule(&Input{Agents: agents, Pending: []*PendingSession{
		session("s1", 1, "", withVolume(kernel("main1", cpu(1)), "nfs")),
	}})
	if got := placedMap(p)["s1"]; got != "" {
		t.Fatalf("s1 placed %q, want PENDING: a2 is drained and a1 does not reach nfs", got)
	}
	if r := p.Unplaced["s1"]; !strings.Contains(r, `volume backend "nfs"`) || !strings.Contains(r, "drained agent a2 reaches it (corral node eligible a2") {
		t.Fatalf("reason %q", r)
	}
}

package scheduler

import (
	"testing"

	"github.com/corral-dev/corral/structs"
)

func drained() agentOpt { return func(a *structs.Agent) { a.Drain = true } }

// TestPendingReasonNamesDrainedAgents: when the only agents with room are
// drained, the PENDING reason says so and how to open them; drained
// agents without room, or without the driver, are not named.
func TestPendingReasonNamesDrainedAgents(t *testing.T) {
	tests := []struct {
		name   string
		agents []*structs.Agent
		kernel *structs.Kernel
		want   string
	}{
		{
			name:   "the only fitting agent is drained",
			agents: []*structs.Agent{agent("a1", cpu(2)), agent("big", cpu(16), drained())},
			kernel: kernel("main1", cpu(8)),
			want:   `no agent in resource group "default" has enough free cpu (kernel main1 needs cpu=8, best free cpu=2 on agent a1); drained agent big has room (corral node eligible big opens it to new sessions)`,
		},
		{
			name:   "several drained agents fit",
			agents: []*structs.Agent{agent("a1", cpu(2)), agent("d1", cpu(16), drained()), agent("d2", cpu(16), drained())},
			kernel: kernel("main1", cpu(8)),
			want:   `no agent in resource group "default" has enough free cpu (kernel main1 needs cpu=8, best free cpu=2 on agent a1); drained agents d1, d2 have room (corral node eligible opens one to new sessions)`,
		},
		{
			name:   "drained agent full or without the driver: not named",
			agents: []*structs.Agent{agent("a1", cpu(2)), agent("full", cpu(16), drained(), occupied(cpu(12))), agent("vm", cpu(16), drained(), drivers("vm"))},
			kernel: kernel("main1", cpu(8)),
			want:   `no agent in resource group "default" has enough free cpu (kernel main1 needs cpu=8, best free cpu=2 on agent a1)`,
		},
		{
			name:   "every alive agent drained",
			agents: []*structs.Agent{agent("d1", cpu(16), drained()), agent("gone", cpu(16), status(structs.AgentLost))},
			kernel: kernel("main1", cpu(8)),
			want:   `no alive agent open to new sessions in resource group "default" (1 drained, 1 not ALIVE): drained d1 (corral node eligible ID opens one to new sessions)`,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ps := session("s1", 1, "", tc.kernel)
			plan := Schedule(&Input{Agents: tc.agents, Pending: []*PendingSession{ps}})
			if len(plan.Placements) != 0 {
				t.Fatalf("placed %+v", plan.Placements)
			}
			if got := plan.Unplaced["s1"]; got != tc.want {
				t.Fatalf("reason\n got %s\nwant %s", got, tc.want)
			}
		})
	}
}

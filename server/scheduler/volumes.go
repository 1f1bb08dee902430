package scheduler

import (
	"fmt"
	"strings"

	"github.com/corral-dev/corral/structs"
)

// Volumes: a kernel that mounts volumes (Kernel.Volumes) may only run on
// an agent that reaches every backend they lie on (Agent.VolumeRoots).

// kernelsBackends lists the backends that kernels' volumes lie on.
func kernelsBackends(ks []*structs.Kernel) []string {
	var all []structs.VolumeMount
	for _, k := range ks {
		all = append(all, k.Volumes...)
	}
	return structs.VolumeBackends(all)
}

// VolumeBackendsReason says why no agent of agents (the ALIVE, undrained
// agents of resource group) can run a kernel whose volumes lie on
// backends: none of them reaches them all. "" when one does, or when
// there are no backends. Pure: the session's PENDING reason.
func VolumeBackendsReason(group string, agents []*structs.Agent, backends []string) string {
	if len(backends) == 0 {
		return ""
	}
	var have []string
	for _, a := range agents {
		if a.ReachesBackends(backends) {
			return ""
		}
		for b := range a.VolumeRoots {
			if !strings.Contains(","+strings.Join(have, ",")+",", ","+b+",") {
				have = append(have, b)
			}
		}
	}
	what := fmt.Sprintf("volume backend %q", backends[0])
	if len(backends) > 1 {
		what = fmt.Sprintf("all of the volume backends %q", backends)
	}
	return fmt.Sprintf("no alive agent in resource group %q reaches %s that the session's volumes lie on (agents there reach: %s; agents declare backends with -volume-root NAME=PATH)",
		group, what, phrase(have))
}

func phrase(names []string) string {
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ", ")
}

// volumeCheck returns the PENDING reason of kernels in group g when no
// agent there reaches their backends, and the agent test for the rest.
func (g *groupView) volumeCheck(ks []*structs.Kernel, prev accept) (string, accept) {
	backends := kernelsBackends(ks)
	if len(backends) == 0 {
		return "", prev
	}
	agents := make([]*structs.Agent, len(g.agents))
	for i, v := range g.agents {
		agents[i] = v.agent
	}
	if r := VolumeBackendsReason(g.name, agents, backends); r != "" {
		var reach []string
		for _, a := range g.drainedAgents {
			if a.ReachesBackends(backends) {
				reach = append(reach, a.Name)
			}
		}
		switch {
		case len(reach) == 1:
			r += fmt.Sprintf("; drained agent %s reaches it (corral node eligible %s opens it to new sessions)", reach[0], reach[0])
		case len(reach) > 1:
			r += fmt.Sprintf("; drained agents %s reach it (corral node eligible opens one to new sessions)", strings.Join(reach, ", "))
		}
		return r, nil
	}
	return "", func(v *agentView) bool {
		return v.agent.ReachesBackends(backends) && (prev == nil || prev(v))
	}
}

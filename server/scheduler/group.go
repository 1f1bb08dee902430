package scheduler

import (
	"fmt"

	"github.com/corral-dev/corral/structs"
)

// Defaults for a resource group without configuration, or for the fields
// its configuration leaves empty. They match what `corral group set`
// stores when the flags are left out.
const (
	// DefaultSessionSelector takes sessions in creation order.
	DefaultSessionSelector = structs.SelectorFIFO
	// DefaultNumRetriesToSkip: a head-of-line session never blocks the
	// sessions behind it (Backend.AI's skipping at once).
	DefaultNumRetriesToSkip = 0
	// DefaultAgentSelector spreads kernels over the agents with the most room.
	DefaultAgentSelector = structs.AgentSelectorDispersed
)

// groupConfig is a resource group's scheduler configuration with the
// defaults filled in.
type groupConfig struct {
	sessionSelector  string
	numRetriesToSkip int
	agentSelector    string
	priority         []string
	// limit caps what the group's sessions hold (TotalResourceSlots).
	limit structs.Slots
	// invalid says why the configuration cannot be used; every session of
	// the group stays PENDING with it.
	invalid string
}

// resolveGroup fills in the defaults of a group's configuration: an absent
// group or an empty field takes DefaultSessionSelector,
// DefaultNumRetriesToSkip, DefaultAgentSelector and
// structs.DefaultResourcePriority; a negative NumRetriesToSkip counts as 0.
func resolveGroup(name string, rg *structs.ResourceGroup) groupConfig {
	c := groupConfig{
		sessionSelector:  DefaultSessionSelector,
		numRetriesToSkip: DefaultNumRetriesToSkip,
		agentSelector:    DefaultAgentSelector,
		priority:         structs.DefaultResourcePriority,
	}
	if rg == nil {
		return c
	}
	if rg.SessionSelector != "" {
		c.sessionSelector = rg.SessionSelector
	}
	c.numRetriesToSkip = max(rg.NumRetriesToSkip, 0)
	if rg.AgentSelector != "" {
		c.agentSelector = rg.AgentSelector
	}
	if len(rg.ResourcePriority) > 0 {
		c.priority = rg.ResourcePriority
	}
	c.limit = rg.TotalResourceSlots
	switch c.sessionSelector {
	case structs.SelectorFIFO, structs.SelectorLIFO, structs.SelectorDRF:
	default:
		c.invalid = fmt.Sprintf("resource group %q has an unknown session selector %q (an admin must set fifo, lifo or drf)", name, c.sessionSelector)
	}
	switch c.agentSelector {
	case structs.AgentSelectorConcentrated, structs.AgentSelectorDispersed, structs.AgentSelectorRoundRobin:
	default:
		if c.invalid == "" {
			c.invalid = fmt.Sprintf("resource group %q has an unknown agent selector %q (an admin must set concentrated, dispersed or roundrobin)", name, c.agentSelector)
		}
	}
	return c
}

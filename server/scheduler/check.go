package scheduler

import (
	"errors"
	"fmt"
	"strings"

	"github.com/corral-dev/corral/structs"
)

// Kinds of placement failure, for errors.Is on the errors CheckPlacement,
// CheckKeyLimits and CheckPendingLimit return.
var (
	ErrAgentNotFound  = errors.New("agent not found")
	ErrAgentNotAlive  = errors.New("agent is not alive")
	ErrWrongGroup     = errors.New("agent is in another resource group")
	ErrMissingDriver  = errors.New("agent lacks the kernel's driver")
	ErrNotEnoughSlots = errors.New("agent has not enough free slots")
	ErrInvalidRequest = errors.New("invalid kernel resource request")
	// ErrConcurrencyLimit: the access key holds as many sessions as its policy allows.
	ErrConcurrencyLimit = errors.New("concurrent session limit reached")
	// ErrSlotLimit: the session would take the access key past its policy's total resource slots.
	ErrSlotLimit = errors.New("resource slot limit reached")
	// ErrPendingLimit: the access key has as many pending sessions as its policy allows.
	ErrPendingLimit = errors.New("pending session limit reached")
)

// PlacementError says why a kernel cannot go on an agent; Kind is one of the
// Err* values of this package.
type PlacementError struct {
	Kind error
	Msg  string
}

func (e *PlacementError) Error() string { return e.Msg }

// Unwrap returns the kind of failure.
func (e *PlacementError) Unwrap() error { return e.Kind }

func placementErr(kind error, format string, args ...any) error {
	return &PlacementError{Kind: kind, Msg: fmt.Sprintf(format, args...)}
}

// CheckPlacement reports whether kernel k may be placed on agent now, given
// the agent's occupied slots (the latest ones, or a working copy that already
// counts other placements of the same plan): the agent must be ALIVE, have
// the kernel's driver and enough free room for every slot the kernel asks
// for. It does not check the resource group; see CheckPlacementInGroup.
func CheckPlacement(agent *structs.Agent, occupied structs.Slots, k *structs.Kernel) error {
	if k == nil {
		return placementErr(ErrInvalidRequest, "no kernel to place")
	}
	if agent == nil {
		return placementErr(ErrAgentNotFound, "kernel %s: agent not found", kernelName(k))
	}
	if agent.Status != structs.AgentAlive {
		return placementErr(ErrAgentNotAlive, "agent %s is %s, not %s", agent.ID, agent.Status, structs.AgentAlive)
	}
	if agent.Drain {
		return placementErr(ErrAgentNotAlive, "agent %s is drained: it takes no new kernels", agent.ID)
	}
	if !agent.HasDriver(k.Driver) {
		return placementErr(ErrMissingDriver, "agent %s has no driver %q (it has %s)", agent.ID, k.Driver, driverList(agent.Drivers))
	}
	if err := checkRequest(k); err != nil {
		return err
	}
	if ok, short := structs.Fits(agent.Capacity, occupied, k.Resources); !ok {
		return placementErr(ErrNotEnoughSlots, "agent %s has not enough free %s for kernel %s (needs %s, free %s)",
			agent.ID, short, kernelName(k), slotString(short, k.Resources[short]),
			slotString(short, agent.Capacity[short]-occupied[short]))
	}
	return nil
}

// CheckPlacementInGroup is CheckPlacement plus the check that the agent
// belongs to the session's resource group ("" means the default group).
func CheckPlacementInGroup(agent *structs.Agent, group string, occupied structs.Slots, k *structs.Kernel) error {
	if agent != nil {
		if want, got := groupOf(group), groupOf(agent.ResourceGroup); want != got {
			return placementErr(ErrWrongGroup, "agent %s is in resource group %q, not %q", agent.ID, got, want)
		}
	}
	return CheckPlacement(agent, occupied, k)
}

// checkRequest refuses negative amounts, which would lower an agent's
// occupancy instead of raising it.
func checkRequest(k *structs.Kernel) error {
	for _, name := range k.Resources.Names() {
		if q := k.Resources[name]; q < 0 {
			return placementErr(ErrInvalidRequest, "kernel %s requests a negative amount of %s (%s); requests must be zero or more",
				kernelName(k), name, q)
		}
	}
	return nil
}

// groupOf normalizes a resource group name.
func groupOf(g string) string {
	if g == "" {
		return structs.DefaultResourceGroup
	}
	return g
}

// kernelName is how reasons name a kernel: its hostname (main1, sub2) or ID.
func kernelName(k *structs.Kernel) string {
	if k.Hostname != "" {
		return k.Hostname
	}
	if k.Role != "" && k.Idx > 0 {
		return fmt.Sprintf("%s%d", k.Role, k.Idx)
	}
	return k.ID
}

// slotString formats one slot as "cpu=4" or "mem=8GiB".
func slotString(name string, q structs.Quantity) string {
	if name == structs.SlotMem || name == structs.SlotCUDAMem {
		return name + "=" + structs.FormatBytes(q)
	}
	return name + "=" + q.String()
}

func driverList(drivers []string) string {
	if len(drivers) == 0 {
		return "none"
	}
	return strings.Join(drivers, ", ")
}

package structs

import (
	"fmt"
	"strings"
	"time"
)

// Session selectors: which pending session of a resource group goes next.
const (
	SelectorFIFO = "fifo"
	SelectorLIFO = "lifo"
	SelectorDRF  = "drf"
)

// Agent selectors: which agents a session's kernels go to.
const (
	AgentSelectorConcentrated = "concentrated" // bin-pack
	AgentSelectorDispersed    = "dispersed"    // spread
	AgentSelectorRoundRobin   = "roundrobin"
)

// ResourceGroup is a set of agents with its own scheduler configuration.
type ResourceGroup struct {
	Name string `json:"name"`
	// SessionSelector is fifo (default), lifo or drf.
	SessionSelector string `json:"session_selector"`
	// NumRetriesToSkip, for fifo: a head-of-line session that failed this
	// many passes no longer blocks the ones behind it (0: never blocks, as
	// Backend.AI's default of skipping immediately).
	NumRetriesToSkip int `json:"num_retries_to_skip"`
	// AgentSelector is concentrated, dispersed (default) or roundrobin.
	AgentSelector string `json:"agent_selector"`
	// ResourcePriority orders slots when comparing agents (GPU first by default).
	ResourcePriority []string `json:"resource_priority,omitempty"`
	// TotalResourceSlots caps what all sessions of the group hold at once
	// (per slot; absent or zero: no cap), e.g. to keep headroom on shared
	// nodes or to share a group between teams by policy.
	TotalResourceSlots Slots `json:"total_resource_slots,omitempty"`
	// AllowedRegistries lists the registries sessions of the group may
	// pull images from: host, host:port or *.domain. Empty: any registry
	// at public addresses (never loopback, private, link-local,
	// unspecified or multicast ones); a registry named exactly here is
	// allowed whatever its address.
	AllowedRegistries []string `json:"allowed_registries,omitempty"`
	CreateIndex       uint64   `json:"create_index"`
	ModifyIndex       uint64   `json:"modify_index"`
}

// DefaultResourcePriority compares agents by GPUs first, then CPU, then memory.
var DefaultResourcePriority = []string{SlotCUDADevice, SlotCPU, SlotMem}

// ResourcePolicy caps what the sessions of one access key may use.
// Zero values mean unlimited.
type ResourcePolicy struct {
	Name                  string        `json:"name"`
	MaxConcurrentSessions int           `json:"max_concurrent_sessions,omitempty"`
	MaxPendingSessions    int           `json:"max_pending_sessions,omitempty"`
	TotalResourceSlots    Slots         `json:"total_resource_slots,omitempty"`
	MaxKernelsPerSession  int           `json:"max_kernels_per_session,omitempty"`
	MaxSessionLifetime    time.Duration `json:"max_session_lifetime,omitempty"`
	IdleTimeout           time.Duration `json:"idle_timeout,omitempty"`
	// IdleCPUThreshold is the CPU (and GPU) use, in percent of a kernel's
	// CPU allocation (of its GPUs' utilisation), above which a kernel
	// counts as busy for the idle timeout (0: DefaultIdleCPUThreshold).
	IdleCPUThreshold float64 `json:"idle_cpu_threshold,omitempty"`
	// Drivers lists the drivers the key's sessions may use (empty: every
	// driver but the admin-only ones).
	Drivers []string `json:"drivers,omitempty"`
	// PidsPerKernel caps the pids limit of each kernel (LimitPids) and is
	// the limit of the kernels that ask for none (0: the agent's default).
	PidsPerKernel int64 `json:"pids_per_kernel,omitempty"`
	// Kernel options (KernelOptions) the key's sessions may ask for. The
	// zero values are the defaults of a fresh policy (and of a key with
	// no policy): /dev/shm and memlock up to the kernel's own memory, no
	// extra capabilities, no host network, no InfiniBand, and every
	// ulimit but DefaultDeniedUlimits.
	//
	// MaxShmBytes caps /dev/shm (0: the kernel's mem slot).
	MaxShmBytes int64 `json:"max_shm_bytes,omitempty"`
	// MaxMemlockBytes caps the memlock ulimit (0: the kernel's mem slot;
	// -1: any value, unlimited included).
	MaxMemlockBytes int64 `json:"max_memlock_bytes,omitempty"`
	// AllowedCapabilities are the capabilities the key may add
	// ("CAP_IPC_LOCK"); empty: none.
	AllowedCapabilities []string `json:"allowed_capabilities,omitempty"`
	// AllowedUlimits names the ulimits the key may set (empty: every
	// UlimitNames entry but DefaultDeniedUlimits).
	AllowedUlimits []string `json:"allowed_ulimits,omitempty"`
	// AllowHostNetwork lets kernels use their agent's network (Network
	// "host"); AllowInfiniBand lets them have the agent's InfiniBand
	// devices.
	AllowHostNetwork bool `json:"allow_host_network,omitempty"`
	AllowInfiniBand  bool `json:"allow_infiniband,omitempty"`
}

// DefaultIdleCPUThreshold is the idle CPU threshold of a policy that sets
// none: 5% of the kernel's CPU allocation.
const DefaultIdleCPUThreshold = 5.0

// IdleThreshold is the policy's idle CPU threshold in percent.
func (p *ResourcePolicy) IdleThreshold() float64 {
	if p.IdleCPUThreshold > 0 {
		return p.IdleCPUThreshold
	}
	return DefaultIdleCPUThreshold
}

// DefaultDeniedUlimits are the ulimits a key may not set unless its policy
// lists them in AllowedUlimits: scheduling priorities, which let a kernel
// starve its neighbours on the node.
var DefaultDeniedUlimits = []string{"nice", "rtprio", "rttime"}

// UlimitAllowed says why pol (nil: none) does not let a key set the ulimit
// name, or returns nil when it does.
func UlimitAllowed(pol *ResourcePolicy, name string) error {
	polName := "(none)"
	if pol != nil {
		polName = pol.Name
	}
	if pol != nil && len(pol.AllowedUlimits) > 0 {
		for _, n := range pol.AllowedUlimits {
			if n == name {
				return nil
			}
		}
		return fmt.Errorf("ulimit %s is not allowed by policy %s (allowed: %s)", name, polName, strings.Join(pol.AllowedUlimits, ", "))
	}
	for _, n := range DefaultDeniedUlimits {
		if n == name {
			return fmt.Errorf("ulimit %s is not allowed by policy %s: %s are denied unless the policy's allowed_ulimits lists them", name, polName, strings.Join(DefaultDeniedUlimits, ", "))
		}
	}
	return nil
}

// AdminOnlyDrivers run kernels with host privileges (as root in the
// host's namespaces): only admin keys may use them, whatever a policy
// lists.
var AdminOnlyDrivers = []string{"host"}

// DriverAllowed says why a key under policy pol (nil: none) may not run
// kernels with driver, or returns nil when it may.
func DriverAllowed(key *AccessKey, pol *ResourcePolicy, driver string) error {
	if key != nil && key.Admin {
		return nil
	}
	for _, d := range AdminOnlyDrivers {
		if d == driver {
			return fmt.Errorf("driver %q runs kernels as host root: admin keys only", driver)
		}
	}
	if pol == nil || len(pol.Drivers) == 0 {
		return nil
	}
	for _, d := range pol.Drivers {
		if d == driver {
			return nil
		}
	}
	return fmt.Errorf("driver %q is not allowed by policy %s (allowed: %s)", driver, pol.Name, strings.Join(pol.Drivers, ", "))
}

// KeyUsage is what one access key holds right now: the sessions counted
// against its concurrency limit (a set of IDs, so retries never count
// twice) and the slots its placed kernels occupy. It changes in the same
// raft apply as the transitions that occupy or free it.
type KeyUsage struct {
	AccessKey string          `json:"access_key"`
	Sessions  map[string]bool `json:"sessions"` // concurrency set: session IDs
	Occupied  Slots           `json:"occupied"`
}

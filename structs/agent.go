package structs

import (
	"maps"
	"time"
)

// AgentStatus is the liveness of an agent as the servers see it.
type AgentStatus string

// Agent statuses.
const (
	AgentAlive AgentStatus = "ALIVE"
	// AgentDisconnected: neither gossip nor the agent's RPC heartbeats
	// reach the servers. Its kernels keep their slots and nothing is
	// killed; it becomes AgentLost only after the grace period
	// (-agent-lost-after), and ALIVE again, with its kernels as they are,
	// when either signal returns.
	AgentDisconnected AgentStatus = "DISCONNECTED"
	AgentLost         AgentStatus = "LOST"
	AgentTerminated   AgentStatus = "TERMINATED"
)

// Reachable reports whether kernels on an agent of this status may still
// run: ALIVE, or DISCONNECTED within its grace period.
func (s AgentStatus) Reachable() bool { return s == AgentAlive || s == AgentDisconnected }

// Agent is a node that runs kernels, as recorded in the state store.
type Agent struct {
	ID            string      `json:"id"`
	Name          string      `json:"name"`
	ResourceGroup string      `json:"resource_group"`
	Status        AgentStatus `json:"status"`
	StatusInfo    string      `json:"status_info,omitempty"`
	// RPCAddr is where the agent serves its own gRPC API (exec, logs).
	RPCAddr string `json:"rpc_addr"`
	// SerfAddr is the agent's gossip address.
	SerfAddr string `json:"serf_addr"`
	// Drivers are the drivers the agent offers for placements.
	Drivers []string `json:"drivers"`
	// UnhealthyDrivers are drivers the agent has but does not offer now,
	// each with why (e.g. a driver plugin that keeps crashing).
	UnhealthyDrivers map[string]string `json:"unhealthy_drivers,omitempty"`
	// Drain stops new placements on the agent (corral node drain); its
	// running kernels go on unless the drain was forced.
	Drain bool `json:"drain,omitempty"`
	// VolumeRoots maps the storage backends the agent reaches to their
	// root directories there (-volume-root NAME=PATH; volume.go).
	VolumeRoots map[string]string `json:"volume_roots,omitempty"`
	Capacity    Slots             `json:"capacity"`
	// Occupied is the sum of the resources of the kernels placed on this
	// agent that have not ended; it changes in the same apply as they do.
	Occupied Slots `json:"occupied"`
	// GPUs is the agent's NVML fingerprint (nil: no NVIDIA driver). Its
	// healthy devices are part of Capacity (GPUInventory.Slots).
	GPUs *GPUInventory `json:"gpus,omitempty"`
	// GPUHolders maps each GPU or MIG instance UUID held by a kernel that
	// has not ended to that kernel's ID; it changes in the same apply as
	// Occupied, so two kernels never get one device.
	GPUHolders map[string]string `json:"gpu_holders,omitempty"`
	// DisconnectedAt is when the agent became DISCONNECTED (kept when it
	// then became LOST; zero once ALIVE): its grace period counts from
	// there, on any leader.
	DisconnectedAt time.Time `json:"disconnected_at,omitzero"`
	Version        string    `json:"version,omitempty"`
	RegisteredAt   time.Time `json:"registered_at"`
	UpdatedAt      time.Time `json:"updated_at"`
	CreateIndex    uint64    `json:"create_index"`
	ModifyIndex    uint64    `json:"modify_index"`
}

// Copy returns a deep copy of a.
func (a *Agent) Copy() *Agent {
	c := *a
	c.Drivers = append([]string(nil), a.Drivers...)
	c.UnhealthyDrivers = maps.Clone(a.UnhealthyDrivers)
	c.Capacity = a.Capacity.Copy()
	c.Occupied = a.Occupied.Copy()
	c.GPUs = a.GPUs.Copy()
	c.GPUHolders = maps.Clone(a.GPUHolders)
	copyAgentVolumeRoots(&c, a)
	return &c
}

// HasDriver reports whether the agent advertises the named driver.
func (a *Agent) HasDriver(name string) bool {
	for _, d := range a.Drivers {
		if d == name {
			return true
		}
	}
	return false
}

// Free returns capacity minus occupied.
func (a *Agent) Free() Slots { return a.Capacity.Sub(a.Occupied) }

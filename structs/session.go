package structs

import (
	"cmp"
	"fmt"
	"strings"
	"time"
)

// SessionType says how a session runs and ends.
type SessionType string

// Session types.
const (
	SessionTypeBatch       SessionType = "batch"
	SessionTypeInteractive SessionType = "interactive"
	SessionTypeInference   SessionType = "inference"
	SessionTypeSystem      SessionType = "system"
)

// Valid reports whether t is a known session type.
// LongRunning reports whether sessions of type t run until they are
// destroyed, go idle or reach their lifetime (interactive and system
// sessions) rather than ending with their command.
func (t SessionType) LongRunning() bool {
	return t == SessionTypeInteractive || t == SessionTypeSystem
}

func (t SessionType) Valid() bool {
	switch t {
	case SessionTypeBatch, SessionTypeInteractive, SessionTypeInference, SessionTypeSystem:
		return true
	}
	return false
}

// DefaultResourceGroup is the resource group of agents and sessions that name none.
const DefaultResourceGroup = "default"

// StatusChange is one entry of a status history: what, why and when.
type StatusChange struct {
	Status string    `json:"status"`
	Info   string    `json:"info,omitempty"`
	Time   time.Time `json:"time"`
}

// Session is a unit of work the user asked for: one or more kernels that run together.
type Session struct {
	ID            string      `json:"id"`
	Name          string      `json:"name,omitempty"`
	Type          SessionType `json:"type"`
	ResourceGroup string      `json:"resource_group"`
	// AccessKey is the key the session was created with; its policy applies.
	AccessKey string `json:"access_key,omitempty"`
	// Owner is the user the access key belongs to.
	Owner string `json:"owner,omitempty"`
	// Priority orders sessions before the selector does (higher first).
	Priority int `json:"priority,omitempty"`
	// StartsAt keeps a reserved batch session PENDING until then.
	StartsAt time.Time `json:"starts_at,omitzero"`
	// DependsOn lists sessions that must end TERMINATED with SUCCESS first.
	DependsOn []string `json:"depends_on,omitempty"`
	// ServicePorts are the apps the create request declared on main1's
	// ports (an image's labels add theirs as the kernel's ImagePorts).
	ServicePorts []ServicePort `json:"service_ports,omitempty"`
	// ClusterMode says where the kernels of a session of several kernels
	// run: ClusterModeSingleNode (all on one agent) or ClusterModeMultiNode
	// (spread over agents, joined by an overlay). Empty: single-node.
	ClusterMode string `json:"cluster_mode,omitempty"`
	// ClusterSize is the number of kernels (main1 plus the sub kernels).
	ClusterSize int `json:"cluster_size,omitempty"`
	// RunOn, FailOn and StartOrder say how a cluster session's kernels
	// run their commands (RunOnMain/RunOnAll, FailOnAny/FailOnMain,
	// StartBarrier/StartUnordered); empty for a single kernel.
	RunOn      string `json:"run_on,omitempty"`
	FailOn     string `json:"fail_on,omitempty"`
	StartOrder string `json:"start_order,omitempty"`
	// EndReason is why a cluster session ends, set once by the event that
	// decided it: main1's own end ("main1 exited with code 3"), the
	// kernel whose failure failed the session ("sub2 exited with code
	// 3", "sub1 failed to start: ..."), or a stop (destroy, lifetime).
	// While the session terminates and after, it is the session's status
	// info, whatever the other kernels report as they stop.
	EndReason string `json:"end_reason,omitempty"`
	// MaxRetries is how many times a batch session is re-queued when an
	// agent running its kernels is lost; Retries counts those so far.
	MaxRetries int `json:"max_retries,omitempty"`
	Retries    int `json:"retries,omitempty"`
	// LostAfter, when set, overrides the cluster's -agent-lost-after for
	// this session: its kernels on an agent DISCONNECTED for longer are
	// given up (ERROR, or re-queued when retries are left) while the agent
	// itself may still come back.
	LostAfter time.Duration `json:"lost_after,omitempty"`
	// Network is the session's overlay (VNI and subnet) while it is placed
	// and has several kernels; nil otherwise.
	Network *Network `json:"network,omitempty"`
	// Endpoint names the endpoint an inference session is a replica of,
	// and EndpointGeneration the endpoint's spec generation it runs.
	Endpoint           string `json:"endpoint,omitempty"`
	EndpointGeneration int    `json:"endpoint_generation,omitempty"`
	// Volumes are the IDs of the volumes its kernels mount (volume.go).
	Volumes    []string      `json:"volumes,omitempty"`
	Status     SessionStatus `json:"status"`
	StatusInfo string        `json:"status_info,omitempty"`
	Result     SessionResult `json:"result"`
	// ScheduleAttempts counts scheduler passes that could not place the session.
	ScheduleAttempts int            `json:"schedule_attempts,omitempty"`
	KernelIDs        []string       `json:"kernel_ids"`
	History          []StatusChange `json:"status_history"`
	CreatedAt        time.Time      `json:"created_at"`
	TerminatedAt     time.Time      `json:"terminated_at,omitzero"`
	CreateIndex      uint64         `json:"create_index"`
	ModifyIndex      uint64         `json:"modify_index"`
}

// Cluster modes of a session of several kernels.
const (
	ClusterModeSingleNode = "single-node"
	ClusterModeMultiNode  = "multi-node"
)

// SingleNode reports whether all kernels of the session must share one agent.
func (s *Session) SingleNode() bool { return s.ClusterMode != ClusterModeMultiNode }

// Kernel is one container, VM or process of a session, placed on one agent.
type Kernel struct {
	ID        string `json:"id"`
	SessionID string `json:"session_id"`
	// Role is "main", "sub" or an extra role of the session's template
	// ("ps"); Idx counts from 1 within the role, and the hostname is the
	// role and the index (main1, sub2, ps1).
	Role      string            `json:"role"`
	Idx       int               `json:"idx"`
	Hostname  string            `json:"hostname"`
	Driver    string            `json:"driver"`
	Image     string            `json:"image,omitempty"`
	Command   []string          `json:"command"`
	Env       map[string]string `json:"env,omitempty"`
	WorkDir   string            `json:"workdir,omitempty"`
	Resources Slots             `json:"resources"`
	// Limits are per-kernel caps the driver enforces (LimitPids,
	// LimitDisk) and the scheduler does not count.
	Limits Slots `json:"limits,omitempty"`
	// GPUConstraint narrows which devices its GPU slots may be (model,
	// memory); nil: any.
	GPUConstraint *GPUConstraint `json:"gpu_constraint,omitempty"`
	AgentID       string         `json:"agent_id,omitempty"`
	// GPUs are the UUIDs of the GPUs or MIG instances the kernel holds,
	// chosen in the apply that placed it (server/scheduler devices.go).
	GPUs []string `json:"gpus,omitempty"`
	// ImagePorts are the apps the kernel's image declares in its labels
	// (LabelServicePorts), as the agent reported them with RUNNING.
	ImagePorts []ServicePort `json:"image_ports,omitempty"`
	// Network wires the kernel into its session's overlay (cluster
	// sessions); set when the kernel is placed.
	Network *KernelNetwork `json:"network,omitempty"`
	// Launch is the kernel's part in its cluster session's job (ranks,
	// peers, ssh), set when the session is placed; nil for a single kernel.
	Launch *ClusterLaunch `json:"launch,omitempty"`
	// Options are runtime settings beyond the slots (shm, ulimits, caps,
	// host network).
	Options *KernelOptions `json:"options,omitempty"`
	// Cpuset is the cores the agent pinned the kernel to ("2-3"), as it
	// reported them; empty for a kernel in the shared pool.
	Cpuset string `json:"cpuset,omitempty"`
	// Volumes are bound into the kernel, SFTP makes it an SFTP server
	// (volume.go).
	Volumes     []VolumeMount  `json:"volumes,omitempty"`
	SFTP        *SFTPServer    `json:"sftp,omitempty"`
	Status      KernelStatus   `json:"status"`
	StatusInfo  string         `json:"status_info,omitempty"`
	ExitCode    *int           `json:"exit_code,omitempty"`
	History     []StatusChange `json:"status_history"`
	CreatedAt   time.Time      `json:"created_at"`
	CreateIndex uint64         `json:"create_index"`
	ModifyIndex uint64         `json:"modify_index"`
}

// roleRank orders roles: main, sub, then the extra roles by name.
func roleRank(role string) int {
	switch role {
	case "main":
		return 0
	case "sub":
		return 1
	}
	return 2
}

// CompareKernels orders the kernels of a session: main1, the sub kernels,
// then the kernels of extra roles by role name, each role by index. A
// kernel's rank in a cluster job (CORRAL_NODE_RANK) is its position in
// this order.
func CompareKernels(a, b *Kernel) int {
	return cmp.Or(cmp.Compare(roleRank(a.Role), roleRank(b.Role)), strings.Compare(a.Role, b.Role),
		cmp.Compare(a.Idx, b.Idx), strings.Compare(a.ID, b.ID))
}

// HoldsSlots reports whether the kernel occupies resources on its agent:
// it is placed and has not reached a terminal status.
func (k *Kernel) HoldsSlots() bool {
	return k.AgentID != "" && !k.Status.Terminal()
}

// Copy returns a deep copy of k, safe to modify.
func (k *Kernel) Copy() *Kernel {
	c := *k
	c.Command = append([]string(nil), k.Command...)
	if k.Env != nil {
		c.Env = make(map[string]string, len(k.Env))
		for a, b := range k.Env {
			c.Env[a] = b
		}
	}
	c.Resources = k.Resources.Copy()
	if k.Limits != nil {
		c.Limits = k.Limits.Copy()
	}
	c.Network = k.Network.Copy()
	c.Launch = k.Launch.Copy()
	c.Options = k.Options.Copy()
	c.GPUConstraint = k.GPUConstraint.Copy()
	c.GPUs = append([]string(nil), k.GPUs...)
	c.ImagePorts = append([]ServicePort(nil), k.ImagePorts...)
	c.History = append([]StatusChange(nil), k.History...)
	copyVolumeFields(&c, k)
	if k.ExitCode != nil {
		v := *k.ExitCode
		c.ExitCode = &v
	}
	return &c
}

// Copy returns a deep copy of s, safe to modify.
func (s *Session) Copy() *Session {
	c := *s
	c.KernelIDs = append([]string(nil), s.KernelIDs...)
	c.DependsOn = append([]string(nil), s.DependsOn...)
	c.ServicePorts = append([]ServicePort(nil), s.ServicePorts...)
	c.Volumes = append([]string(nil), s.Volumes...)
	c.History = append([]StatusChange(nil), s.History...)
	if s.Network != nil {
		n := *s.Network
		c.Network = &n
	}
	return &c
}

// SetStatus moves the kernel to a new status if the transition table allows
// it, recording why and when in its history.
func (k *Kernel) SetStatus(to KernelStatus, info string, now time.Time) error {
	if err := CheckKernelTransition(k.Status, to); err != nil {
		return fmt.Errorf("kernel %s: %w", k.ID, err)
	}
	k.Status = to
	k.StatusInfo = info
	k.History = append(k.History, StatusChange{Status: string(to), Info: info, Time: now})
	return nil
}

// SetStatus moves the session to a new status if the transition table allows
// it, recording why and when in its history. Setting the same status with a
// new reason only records the new reason.
func (s *Session) SetStatus(to SessionStatus, info string, now time.Time) error {
	if err := CheckSessionTransition(s.Status, to); err != nil {
		return fmt.Errorf("session %s: %w", s.ID, err)
	}
	if s.Status == to && s.StatusInfo == info {
		return nil
	}
	s.Status = to
	s.StatusInfo = info
	s.History = append(s.History, StatusChange{Status: string(to), Info: info, Time: now})
	if to.Terminal() && s.TerminatedAt.IsZero() {
		s.TerminatedAt = now
	}
	return nil
}

// MaxHistory bounds a status history so a session retried for days stays small.
const MaxHistory = 64

package structs

import "time"

// MessageType tags each raft log entry with the request it carries.
type MessageType uint8

// Raft log entry types. Never renumber: they are stored in the log.
const (
	SessionEnqueueRequestType MessageType = iota + 1
	PlanApplyRequestType
	KernelUpdateRequestType
	AgentUpsertRequestType
	AgentStatusRequestType
	SessionDestroyRequestType
	ConfigUpsertRequestType
	AgentDrainRequestType
	KernelsLostRequestType
	SessionsGCRequestType
	ClusterSecretsRequestType
	CertIssueRequestType
	CertRevokeRequestType
	// Endpoints (structs/endpoint.go).
	EndpointUpsertRequestType
	EndpointDeleteRequestType
	// ConfigDeleteRequestType deletes users, policies and groups.
	ConfigDeleteRequestType
	// Volumes and users' SSH keys (structs/volume.go).
	VolumeUpsertRequestType
	VolumeDeleteRequestType
	SSHKeysSetRequestType
	// Session templates (structs/template.go).
	TemplateUpsertRequestType
	TemplateDeleteRequestType
)

// KernelsLostRequest gives up the kernels of the listed sessions on a
// DISCONNECTED agent whose sessions asked for a shorter grace period
// (Session.LostAfter) than the agent's: they end as if the agent were
// LOST (ERROR, or re-queued), the agent keeps its status.
type KernelsLostRequest struct {
	AgentID    string    `json:"agent_id"`
	SessionIDs []string  `json:"session_ids"`
	Info       string    `json:"info"`
	Time       time.Time `json:"time"`
}

// AgentDrainRequest stops (Drain) or resumes new placements on an agent;
// Force also terminates the kernels running there.
type AgentDrainRequest struct {
	AgentID string    `json:"agent_id"`
	Drain   bool      `json:"drain"`
	Force   bool      `json:"force,omitempty"`
	Time    time.Time `json:"time"`
}

// ConfigUpsertRequest creates or replaces users, access keys, resource
// policies and resource groups in one apply.
type ConfigUpsertRequest struct {
	Users    []*User           `json:"users,omitempty"`
	Keys     []*AccessKey      `json:"keys,omitempty"`
	Policies []*ResourcePolicy `json:"policies,omitempty"`
	Groups   []*ResourceGroup  `json:"groups,omitempty"`
	Time     time.Time         `json:"time"`
}

// ConfigDeleteRequest deletes users (with their access keys), resource
// policies and resource groups. The FSM refuses the whole request, changing
// nothing, when any of them is still in use.
type ConfigDeleteRequest struct {
	Users    []string  `json:"users,omitempty"`
	Policies []string  `json:"policies,omitempty"`
	Groups   []string  `json:"groups,omitempty"`
	Time     time.Time `json:"time"`
}

// SessionEnqueueRequest adds a new PENDING session and its kernels.
type SessionEnqueueRequest struct {
	Session *Session  `json:"session"`
	Kernels []*Kernel `json:"kernels"`
	Time    time.Time `json:"time"`
	// IdempotencyKey, when set, makes the create idempotent per access
	// key: a second create with the key enqueues nothing (server/state,
	// idempotency.go).
	IdempotencyKey string `json:"idempotency_key,omitempty"`
	// RequestHash identifies the create's request body, so that a key
	// reused for another request is refused.
	RequestHash string `json:"request_hash,omitempty"`
}

// Placement puts one kernel on one agent.
type Placement struct {
	KernelID string `json:"kernel_id"`
	AgentID  string `json:"agent_id"`
}

// SessionPlacement places all kernels of one session (gang: all or none).
type SessionPlacement struct {
	SessionID  string      `json:"session_id"`
	Placements []Placement `json:"placements"`
}

// Plan is the scheduler's proposal for one pass; the FSM re-checks every
// placement against the latest state and applies what still fits.
type Plan struct {
	Placements []SessionPlacement `json:"placements"`
	// Unplaced says why each session that could not be placed stays PENDING.
	Unplaced map[string]string `json:"unplaced,omitempty"`
	// Attempts sets the ScheduleAttempts of sessions the pass tried and
	// could not place. Plans without it (older log entries) count one
	// attempt whenever a session's reason changes.
	Attempts map[string]int `json:"attempts,omitempty"`
	// Cancel lists sessions that can never run (a dependency failed) and
	// why; the FSM cancels those still PENDING.
	Cancel map[string]string `json:"cancel,omitempty"`
	// SnapshotIndex is the state index the plan was computed at.
	SnapshotIndex uint64 `json:"snapshot_index"`
}

// PlanApplyRequest carries a plan through raft.
type PlanApplyRequest struct {
	Plan *Plan     `json:"plan"`
	Time time.Time `json:"time"`
}

// PlanResult says what the FSM did with a plan.
type PlanResult struct {
	Applied  []string          `json:"applied"`
	Rejected map[string]string `json:"rejected,omitempty"`
	// Cancelled lists the sessions the plan cancelled.
	Cancelled []string `json:"cancelled,omitempty"`
}

// KernelUpdate is a status change an agent observed for one kernel.
type KernelUpdate struct {
	KernelID string       `json:"kernel_id"`
	Status   KernelStatus `json:"status"`
	Info     string       `json:"info,omitempty"`
	ExitCode *int         `json:"exit_code,omitempty"`
	Time     time.Time    `json:"time"`
	// Cpuset is the CPUs the agent pinned the kernel to, sent with its
	// RUNNING update ("" for the shared pool).
	Cpuset string `json:"cpuset,omitempty"`
	// ImagePorts are the apps the kernel's image labels declare, sent
	// with its RUNNING update.
	ImagePorts []ServicePort `json:"image_ports,omitempty"`
}

// KernelUpdateRequest is a batch of kernel status changes from one agent.
type KernelUpdateRequest struct {
	AgentID string          `json:"agent_id"`
	Updates []*KernelUpdate `json:"updates"`
}

// AgentUpsertRequest registers an agent or refreshes its inventory.
type AgentUpsertRequest struct {
	Agent *Agent    `json:"agent"`
	Time  time.Time `json:"time"`
}

// AgentStatusRequest changes an agent's liveness (from serf events).
type AgentStatusRequest struct {
	AgentID string      `json:"agent_id"`
	Status  AgentStatus `json:"status"`
	Info    string      `json:"info"`
	Time    time.Time   `json:"time"`
}

// SessionDestroyRequest asks for a session to be cancelled or terminated.
type SessionDestroyRequest struct {
	SessionID string    `json:"session_id"`
	Reason    string    `json:"reason"`
	Time      time.Time `json:"time"`
}

// ClusterSecretsRequest records the cluster's CA, join secret and gossip
// key, created by the first leader of a new cluster. The first one
// applied wins: a later one with other secrets changes nothing.
type ClusterSecretsRequest struct {
	Secrets *ClusterSecrets `json:"secrets"`
	Time    time.Time       `json:"time"`
}

// CertIssueRequest records a node certificate the cluster CA signed, so
// that it can be revoked by node name.
type CertIssueRequest struct {
	Cert *IssuedCert `json:"cert"`
	Time time.Time   `json:"time"`
}

// CertRevokeRequest revokes certificates by serial: every server then
// refuses them in handshakes and calls.
type CertRevokeRequest struct {
	Serials []string  `json:"serials"`
	Reason  string    `json:"reason,omitempty"`
	Time    time.Time `json:"time"`
}

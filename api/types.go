// Package api holds the wire types of corral's HTTP API and the Go client
// that the CLI, the web UI and the tests use to talk to it.
package api

import (
	"time"

	"github.com/corral-dev/corral/structs"
)

// DefaultAddress is where `corral dev` serves the HTTP API.
const DefaultAddress = "http://127.0.0.1:8640"

// IndexHeader carries the state index of a response; pass it back as
// ?index=N (with &wait=DURATION) to block until something newer exists.
const IndexHeader = "X-Corral-Index"

// IdempotencyKeyHeader, on POST /v1/sessions, makes the create idempotent:
// at most one session is created per access key and key, however often
// the request is sent (1 to 128 printable ASCII characters; a UUID per
// intended session is a good key). A repeat is answered like the first
// create, with IdempotentReplayedHeader set; the same key with another
// body is refused with 422.
const IdempotencyKeyHeader = "Idempotency-Key"

// IdempotentReplayedHeader is "true" on the answer to a create that
// repeated an earlier one's idempotency key: no new session was made.
const IdempotentReplayedHeader = "Idempotent-Replayed"

// CreateSessionRequest is the body of POST /v1/sessions.
type CreateSessionRequest struct {
	Name          string              `json:"name,omitempty"`
	Type          structs.SessionType `json:"type"`
	Driver        string              `json:"driver,omitempty"` // default "exec"
	Image         string              `json:"image,omitempty"`
	Command       []string            `json:"command"`
	Env           map[string]string   `json:"env,omitempty"`
	ResourceGroup string              `json:"resource_group,omitempty"`
	// Resources per kernel; cpu and mem default when absent.
	Resources structs.Slots `json:"resources,omitempty"`
	// Priority: higher goes first within the resource group.
	Priority int `json:"priority,omitempty"`
	// StartsAt keeps a batch session PENDING until then (a reservation).
	StartsAt time.Time `json:"starts_at,omitzero"`
	// DependsOn lists sessions (ID, prefix or name) that must end with
	// SUCCESS before this one starts; a failed one cancels this one.
	DependsOn []string `json:"depends_on,omitempty"`
	// MaxRetries re-queues a batch session up to this many times when an
	// agent running its kernels is lost.
	MaxRetries int `json:"max_retries,omitempty"`
	// LostAfter ("30s", "2m") gives the session's kernels up when their
	// agent has been DISCONNECTED this long, sooner than the cluster's
	// -agent-lost-after (for sessions that prefer a fast re-queue).
	LostAfter string `json:"lost_after,omitempty"`
	// ClusterSize is the number of kernels: main1 plus sub1..subN-1 (default 1).
	ClusterSize int `json:"cluster_size,omitempty"`
	// Roles override, per role ("main" or "sub"), the image, driver,
	// command or resources of that role's kernels (heterogeneous kernels).
	Roles []RoleSpec `json:"roles,omitempty"`
	// ClusterMode is single-node (default: all kernels on one agent) or
	// multi-node (kernels spread over agents).
	ClusterMode string `json:"cluster_mode,omitempty"`
	// GPUConstraint narrows which devices the kernels' GPU slots
	// (cuda.device, cuda.mig-<profile>) may be: a model glob such as
	// "H100*|H200*" and the least memory of each device. It needs a GPU
	// slot among the resources.
	GPUConstraint *structs.GPUConstraint `json:"gpu_constraint,omitempty"`
	// RunOn is "main" (the default for batch cluster sessions: main1 runs
	// the command, the subs serve ssh and exec) or "all" (every kernel
	// runs it; the default for the other types).
	RunOn string `json:"run_on,omitempty"`
	// FailOn is "any" (the default for batch: the first kernel to fail
	// fails the session and stops the others) or "main".
	FailOn string `json:"fail_on,omitempty"`
	// StartOrder is "barrier" (the default for cluster sessions: no
	// command starts before every kernel is ready) or "unordered".
	StartOrder string `json:"start_order,omitempty"`
	// Shm is the size of /dev/shm ("8G").
	Shm string `json:"shm,omitempty"`
	// Ulimits are "name=soft[:hard]" limits, values a number or
	// "unlimited" (e.g. "memlock=unlimited", "nofile=65536").
	Ulimits []string `json:"ulimits,omitempty"`
	// CapAdd are capabilities added to the kernel's default set.
	CapAdd []string `json:"cap_add,omitempty"`
	// Network is "" (the agent's kernel bridge with NAT, plus the session's
	// overlay for cluster kernels), "host" or "none" (loopback only).
	Network string `json:"network,omitempty"`
	// InfiniBand passes the agent's /dev/infiniband devices in.
	InfiniBand bool `json:"infiniband,omitempty"`
	// ServicePorts are apps on main1's ports, reached through
	// /v1/sessions/{id}/apps/{name} (docs/apps.md).
	ServicePorts []structs.ServicePort `json:"service_ports,omitempty"`
	// Volumes are mounted into every kernel: "NAME:/path[:ro]" (NAME may
	// be OWNER/NAME for a volume shared with the caller); SFTP makes a
	// system session serve the first one over SFTP (docs/volumes.md).
	Volumes []string `json:"volumes,omitempty"`
	SFTP    bool     `json:"sftp,omitempty"`
	// Template names a session template (docs/templates.md): the caller's
	// own, else a global one. The fields given here override the
	// template's (resources, env and roles key by key).
	Template string `json:"template,omitempty"`
}

// SessionDetail is a session with its kernels: the answer of create, get and destroy.
type SessionDetail struct {
	Session *structs.Session  `json:"session"`
	Kernels []*structs.Kernel `json:"kernels"`
	// Unknown maps the ID of each kernel whose agent is DISCONNECTED to
	// why its status is unknown: the kernel may be running or not, and
	// nobody can tell until the agent is back or LOST. Its status field
	// keeps the last one the agent reported.
	Unknown map[string]string `json:"unknown_kernels,omitempty"`
	// IdleRemaining is how long the session may stay idle before its
	// policy's idle timeout terminates it, LifetimeRemaining how long it
	// has left under the policy's max lifetime (Go durations, "59m30s";
	// absent without such a limit). Only GET /v1/sessions/{id} fills them.
	IdleRemaining     string `json:"idle_remaining,omitempty"`
	LifetimeRemaining string `json:"lifetime_remaining,omitempty"`
}

// LogsResponse is the answer of GET /v1/sessions/{id}/logs.
type LogsResponse struct {
	SessionID string `json:"session_id"`
	KernelID  string `json:"kernel_id"`
	Hostname  string `json:"hostname"`
	// Stdout and Stderr are the output as text, for readers that want
	// text: bytes that are not UTF-8 read as U+FFFD. StdoutData and
	// StderrData return the exact bytes.
	Stdout string `json:"stdout"`
	Stderr string `json:"stderr"`
	// StdoutBytes and StderrBytes are the exact output, base64 in JSON
	// (absent from servers older than protocol 2 and when empty).
	StdoutBytes []byte `json:"stdout_b64,omitempty"`
	StderrBytes []byte `json:"stderr_b64,omitempty"`
	// StdoutEnd and StderrEnd are the offsets in the kernel's log files
	// just past the bytes returned: ?stdout_offset=&stderr_offset= of the
	// next request reads what came after (`session logs -f`).
	StdoutEnd int64 `json:"stdout_end,omitempty"`
	StderrEnd int64 `json:"stderr_end,omitempty"`
}

// StdoutData returns the kernel's stdout byte for byte (as text from a
// server that sends no bytes).
func (l *LogsResponse) StdoutData() []byte { return orText(l.StdoutBytes, l.Stdout) }

// StderrData returns the kernel's stderr byte for byte (as text from a
// server that sends no bytes).
func (l *LogsResponse) StderrData() []byte { return orText(l.StderrBytes, l.Stderr) }

func orText(b []byte, s string) []byte {
	if b == nil {
		return []byte(s)
	}
	return b
}

// ExecRequest is the body of POST /v1/sessions/{id}/exec.
type ExecRequest struct {
	// Kernel is the hostname ("main1") or ID of the kernel; default main1.
	Kernel  string            `json:"kernel,omitempty"`
	Command []string          `json:"command"`
	Env     map[string]string `json:"env,omitempty"`
	// Stdin streams the caller's input to the command; TTY runs it on a
	// pseudo-terminal of Rows x Cols (0: the default). Both only over the
	// WebSocket of GET /v1/sessions/{id}/exec/ws (docs/api-exec.md).
	Stdin bool   `json:"stdin,omitempty"`
	TTY   bool   `json:"tty,omitempty"`
	Rows  uint16 `json:"rows,omitempty"`
	Cols  uint16 `json:"cols,omitempty"`
}

// ExecControl is a text message a client sends on the exec WebSocket
// after its ExecRequest: a new terminal size, or the end of its input.
type ExecControl struct {
	Rows       uint16 `json:"rows,omitempty"`
	Cols       uint16 `json:"cols,omitempty"`
	CloseStdin bool   `json:"close_stdin,omitempty"`
}

// Stream bytes that start each binary message of the exec WebSocket.
const (
	ExecStdin  byte = 0 // client to server: input
	ExecStdout byte = 1 // server to client: output (all of it on a terminal)
	ExecStderr byte = 2 // server to client: error output
)

// ExecFrame is one line of the newline-delimited JSON stream that
// POST /v1/sessions/{id}/exec answers with: output chunks, then one frame
// with the exit code (or an error).
type ExecFrame struct {
	Stream   string `json:"stream,omitempty"` // "stdout" or "stderr"
	Data     []byte `json:"data,omitempty"`
	ExitCode *int   `json:"exit_code,omitempty"`
	Error    string `json:"error,omitempty"`
}

// ErrorResponse is the body of every 4xx and 5xx answer.
type ErrorResponse struct {
	Error string `json:"error"`
}

// AgentImage is one image cached on one agent: an entry of GET /v1/images.
type AgentImage struct {
	AgentID   string `json:"agent_id"`
	AgentName string `json:"agent_name"`
	Ref       string `json:"ref"`
	Digest    string `json:"digest"`
	Size      int64  `json:"size"`
	// UnpackedSize is the size of the image's files on the agent (0: not
	// counted, by an agent older than this field).
	UnpackedSize int64     `json:"unpacked_size,omitempty"`
	PulledAt     time.Time `json:"pulled_at"`
}

// ImagePullRequest is the body of POST /v1/images/pull (warm an agent's
// cache) and of POST /v1/images/remove (remove an image from it).
type ImagePullRequest struct {
	Ref   string `json:"ref"`
	Agent string `json:"agent"` // agent ID, ID prefix or name
}

// CreateUserRequest is the body of POST /v1/users.
type CreateUserRequest struct {
	Name  string `json:"name"`
	Admin bool   `json:"admin,omitempty"`
}

// CreateKeyRequest is the body of POST /v1/keys.
type CreateKeyRequest struct {
	User          string   `json:"user"`
	Admin         bool     `json:"admin,omitempty"`
	Policy        string   `json:"policy,omitempty"`
	AllowedGroups []string `json:"allowed_groups,omitempty"`
}

// CreateKeyResponse carries the new key's token: the only time it is shown.
type CreateKeyResponse struct {
	Key   *structs.AccessKey `json:"key"`
	Token string             `json:"token"`
}

// PolicyRequest is the body of POST /v1/policies (create or replace).
// Durations are Go durations ("2h", "30m"); zero or absent means unlimited.
type PolicyRequest struct {
	Name                  string        `json:"name"`
	MaxConcurrentSessions int           `json:"max_concurrent_sessions,omitempty"`
	MaxPendingSessions    int           `json:"max_pending_sessions,omitempty"`
	TotalResourceSlots    structs.Slots `json:"total_resource_slots,omitempty"`
	MaxKernelsPerSession  int           `json:"max_kernels_per_session,omitempty"`
	MaxSessionLifetime    string        `json:"max_session_lifetime,omitempty"`
	IdleTimeout           string        `json:"idle_timeout,omitempty"`
	// IdleCPUThreshold is the CPU/GPU use in percent of a kernel's
	// allocation under which it counts as idle (0: 5).
	IdleCPUThreshold float64 `json:"idle_cpu_threshold,omitempty"`
	// Drivers lists the drivers the keys under the policy may use (empty:
	// every driver but the admin-only "host").
	Drivers []string `json:"drivers,omitempty"`
	// PidsPerKernel caps each kernel's pids limit and is the limit of the
	// kernels that ask for none (0: the agents' default, 4096).
	PidsPerKernel int64 `json:"pids_per_kernel,omitempty"`
	// Kernel options the keys may ask for (see structs.ResourcePolicy);
	// absent: a fresh policy's defaults. MaxShm caps /dev/shm ("8G"; "":
	// the kernel's mem). MaxMemlock caps the memlock ulimit ("1G",
	// "unlimited"; "": the kernel's mem).
	MaxShm     string `json:"max_shm,omitempty"`
	MaxMemlock string `json:"max_memlock,omitempty"`
	// AllowedCapabilities may be added to kernels ("IPC_LOCK" or
	// "CAP_IPC_LOCK"); none by default.
	AllowedCapabilities []string `json:"allowed_capabilities,omitempty"`
	// AllowedUlimits are the ulimits the keys may set (default: all but
	// nice, rtprio and rttime).
	AllowedUlimits []string `json:"allowed_ulimits,omitempty"`
	// AllowHostNetwork and AllowInfiniBand permit network "host" and
	// InfiniBand devices; both denied by default.
	AllowHostNetwork bool `json:"allow_host_network,omitempty"`
	AllowInfiniBand  bool `json:"allow_infiniband,omitempty"`
}

// ApplyPolicyRequest is the body of POST /v1/keys/{key}/policy.
type ApplyPolicyRequest struct {
	Policy string `json:"policy"`
}

// KeyStatus is the answer of GET /v1/keys/{key}/status: the key, its policy
// and what it holds now (the concurrency set of session IDs and the slots).
type KeyStatus struct {
	Key    *structs.AccessKey      `json:"key"`
	Policy *structs.ResourcePolicy `json:"policy,omitempty"`
	Usage  *structs.KeyUsage       `json:"usage"`
}

// QueueEntry is one pending session in the order its group's selector takes them.
type QueueEntry struct {
	Position int              `json:"position"`
	Session  *structs.Session `json:"session"`
}

// KernelStats is one kernel's resource usage: an entry of GET /v1/sessions/{id}/stats.
type KernelStats struct {
	KernelID       string    `json:"kernel_id"`
	Hostname       string    `json:"hostname"`
	Time           time.Time `json:"time,omitzero"`
	CPUUsageNanos  uint64    `json:"cpu_usage_nanos"`
	MemoryRSSBytes uint64    `json:"memory_rss_bytes"`
	Pids           uint64    `json:"pids"`
	// GPUs, GPUUtilPercent and GPUMemoryUsedBytes: the kernel's devices,
	// their mean utilisation and memory in use (absent without GPUs).
	GPUs               int    `json:"gpus,omitempty"`
	GPUUtilPercent     int    `json:"gpu_util_percent,omitempty"`
	GPUMemoryUsedBytes uint64 `json:"gpu_memory_used_bytes,omitempty"`
	Error              string `json:"error,omitempty"`
}

// DrainRequest is the body of POST /v1/agents/{id}/drain.
type DrainRequest struct {
	// Force also terminates the kernels running on the agent.
	Force bool `json:"force,omitempty"`
}

// RoleSpec overrides what the kernels of one role run and ask for.
type RoleSpec struct {
	Role string `json:"role"`
	// Count is the number of kernels of an extra role (any name but main
	// and sub: kernels ROLE1..ROLEn, e.g. ps1, ps2); 0 for main and sub
	// (cluster_size counts those) and 1 by default for an extra role.
	Count     int           `json:"count,omitempty"`
	Image     string        `json:"image,omitempty"`
	Driver    string        `json:"driver,omitempty"`
	Command   []string      `json:"command,omitempty"`
	Resources structs.Slots `json:"resources,omitempty"`
	// GPUConstraint replaces the session's for the role's kernels.
	GPUConstraint *structs.GPUConstraint `json:"gpu_constraint,omitempty"`
}

// DeleteConfigResponse is the answer of DELETE /v1/users/{name},
// /v1/policies/{name} and /v1/groups/{name}.
type DeleteConfigResponse struct {
	// Kind is user, policy or group; Name what was deleted.
	Kind string `json:"kind"`
	Name string `json:"name"`
	// Keys are the access keys deleted with a user.
	Keys []string `json:"keys,omitempty"`
}

// TemplateRequest is the body of POST /v1/templates: a session template
// in HCL or JSON (docs/templates.md).
type TemplateRequest struct {
	Name string `json:"name"`
	// Filename names the source in error messages ("ps.hcl"); a name
	// ending in .json, or a source starting with '{', is read as JSON.
	Filename string `json:"filename,omitempty"`
	Source   string `json:"source"`
	// Global makes the template everyone's (admins only); otherwise it is
	// the caller's user's.
	Global bool `json:"global,omitempty"`
	// Replace replaces a template of the same name (else 409).
	Replace bool `json:"replace,omitempty"`
}

// PlanResponse is the answer of POST /v1/plan: where the scheduler would
// place a session now, without submitting it.
type PlanResponse struct {
	// Placed says whether the session would be placed in the next pass;
	// Reason says why not (the scheduler's explanation, as `session
	// status` would show it).
	Placed bool   `json:"placed"`
	Reason string `json:"reason,omitempty"`
	// ResourceGroup is the group the session would queue in, and
	// QueuePosition its place among the group's pending sessions (1:
	// first) in the order the scheduler takes them.
	ResourceGroup string `json:"resource_group"`
	QueuePosition int    `json:"queue_position,omitempty"`
	// Kernels are the session's kernels, with the agent each would run on
	// when placed.
	Kernels []PlanKernel `json:"kernels"`
}

// PlanKernel is one kernel of a planned session.
type PlanKernel struct {
	Hostname  string        `json:"hostname"`
	Role      string        `json:"role"`
	Driver    string        `json:"driver"`
	Image     string        `json:"image,omitempty"`
	Command   []string      `json:"command,omitempty"`
	Resources structs.Slots `json:"resources"`
	AgentID   string        `json:"agent_id,omitempty"`
	AgentName string        `json:"agent_name,omitempty"`
}

package rpc

import (
	"time"

	"github.com/corral-dev/corral/structs"
)

// RegisterRequest is an agent's full inventory, sent on every (re)connect.
type RegisterRequest struct {
	Agent *structs.Agent `json:"agent"`
	// ProtocolVersion is the agent's ProtocolVersion; absent (0) from
	// agents of protocol 1.
	ProtocolVersion int `json:"protocol_version,omitempty"`
}

// RegisterResponse acknowledges a registration.
type RegisterResponse struct {
	ServerName string `json:"server_name"`
	Index      uint64 `json:"index"`
	// ProtocolVersion is the server's ProtocolVersion; absent (0) from
	// servers of protocol 1.
	ProtocolVersion int `json:"protocol_version,omitempty"`
}

// WatchRequest opens the stream of an agent's kernel assignments.
type WatchRequest struct {
	AgentID string `json:"agent_id"`
	// ProtocolVersion is the agent's ProtocolVersion, as in RegisterRequest.
	ProtocolVersion int `json:"protocol_version,omitempty"`
}

// WatchResponse carries kernels placed on the agent that changed since the
// last message. The first message of a stream has Full set and lists every
// kernel the server has on the agent that has not ended.
type WatchResponse struct {
	Full    bool              `json:"full"`
	Index   uint64            `json:"index"`
	Kernels []*structs.Kernel `json:"kernels"`
}

// UpdateKernelsResponse says which updates the server skipped and why.
type UpdateKernelsResponse struct {
	Index   uint64            `json:"index"`
	Skipped map[string]string `json:"skipped,omitempty"`
}

// ExecRequest runs a command inside a kernel on the agent.
// It is the first message of the Exec and ExecInteractive streams; on
// ExecInteractive, ExecInput messages follow it (Exec has no input).
type ExecRequest struct {
	KernelID string            `json:"kernel_id"`
	Command  []string          `json:"command"`
	Env      map[string]string `json:"env,omitempty"`
	// Stdin says that the command's stdin follows as ExecInput messages;
	// without it the command reads end of file.
	Stdin bool `json:"stdin,omitempty"`
	// TTY runs the command on a new pseudo-terminal of Rows x Cols (0:
	// the default); its output comes as "stdout" frames.
	TTY  bool   `json:"tty,omitempty"`
	Rows uint16 `json:"rows,omitempty"`
	Cols uint16 `json:"cols,omitempty"`
}

// ExecInput is what the caller sends after ExecRequest: a chunk of stdin,
// the end of stdin, or a new terminal size.
type ExecInput struct {
	Data    []byte `json:"data,omitempty"`
	CloseIn bool   `json:"close_stdin,omitempty"`
	Rows    uint16 `json:"rows,omitempty"`
	Cols    uint16 `json:"cols,omitempty"`
}

// ExecFrame is one chunk of an exec's output, or its end.
type ExecFrame struct {
	Stream   string `json:"stream,omitempty"`
	Data     []byte `json:"data,omitempty"`
	ExitCode *int   `json:"exit_code,omitempty"`
	Error    string `json:"error,omitempty"`
}

// LogsRequest asks for a kernel's logs; MaxBytes bounds each stream (the tail is kept).
type LogsRequest struct {
	KernelID string `json:"kernel_id"`
	MaxBytes int64  `json:"max_bytes,omitempty"`
	// From reads each stream from StdoutOffset and StderrOffset (at most
	// MaxBytes of each) instead of its tail: how a follower polls.
	From         bool  `json:"from,omitempty"`
	StdoutOffset int64 `json:"stdout_offset,omitempty"`
	StderrOffset int64 `json:"stderr_offset,omitempty"`
}

// LogsResponse holds the kernel's stdout and stderr.
type LogsResponse struct {
	Stdout    []byte `json:"stdout"`
	Stderr    []byte `json:"stderr"`
	Truncated bool   `json:"truncated,omitempty"`
	// StdoutEnd and StderrEnd are the offsets just past the bytes
	// returned: the offsets of the next read with From.
	StdoutEnd int64 `json:"stdout_end,omitempty"`
	StderrEnd int64 `json:"stderr_end,omitempty"`
}

// ImageInfo describes one image in an agent's cache.
type ImageInfo struct {
	Ref    string `json:"ref"`
	Digest string `json:"digest"`
	Size   int64  `json:"size"`
	// UnpackedSize is the size of the image's files (0: not counted).
	UnpackedSize int64     `json:"unpacked_size,omitempty"`
	PulledAt     time.Time `json:"pulled_at"`
}

// ImageListRequest asks an agent for its cached images.
type ImageListRequest struct{}

// ImageListResponse lists an agent's cached images.
type ImageListResponse struct {
	Images []*ImageInfo `json:"images"`
}

// ImagePullRequest asks an agent to pull an image into its cache.
type ImagePullRequest struct {
	Ref string `json:"ref"`
}

// ImagePullResponse is the pulled image.
type ImagePullResponse struct {
	Image *ImageInfo `json:"image"`
}

// ImageRemoveRequest asks an agent to remove an image from its cache;
// agents refuse (FailedPrecondition) while a kernel of theirs uses it.
type ImageRemoveRequest struct {
	Ref string `json:"ref"`
}

// ImageRemoveResponse is the image as it was before its removal.
type ImageRemoveResponse struct {
	Image *ImageInfo `json:"image"`
}

// StatsRequest asks for resource usage samples of kernels on the agent.
type StatsRequest struct {
	KernelIDs []string `json:"kernel_ids"`
}

// KernelStats is one kernel's resource usage sample, or why there is none.
type KernelStats struct {
	KernelID       string    `json:"kernel_id"`
	Time           time.Time `json:"time"`
	CPUUsageNanos  uint64    `json:"cpu_usage_nanos"`
	MemoryRSSBytes uint64    `json:"memory_rss_bytes"`
	Pids           uint64    `json:"pids"`
	// GPUs is how many devices the kernel holds; GPUUtilPercent the mean
	// utilisation of its whole GPUs, GPUMemoryUsedBytes the memory in use
	// on them (a kernel's devices are its own).
	GPUs               int    `json:"gpus,omitempty"`
	GPUUtilPercent     int    `json:"gpu_util_percent,omitempty"`
	GPUMemoryUsedBytes uint64 `json:"gpu_memory_used_bytes,omitempty"`
	Error              string `json:"error,omitempty"`
}

// StatsResponse holds one sample per requested kernel.
type StatsResponse struct {
	Kernels []*KernelStats `json:"kernels"`
}

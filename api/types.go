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
}

// SessionDetail is a session with its kernels: the answer of create, get and destroy.
type SessionDetail struct {
	Session *structs.Session  `json:"session"`
	Kernels []*structs.Kernel `json:"kernels"`
}

// LogsResponse is the answer of GET /v1/sessions/{id}/logs.
type LogsResponse struct {
	SessionID string `json:"session_id"`
	KernelID  string `json:"kernel_id"`
	Hostname  string `json:"hostname"`
	Stdout    string `json:"stdout"`
	Stderr    string `json:"stderr"`
}

// ExecRequest is the body of POST /v1/sessions/{id}/exec.
type ExecRequest struct {
	// Kernel is the hostname ("main1") or ID of the kernel; default main1.
	Kernel  string            `json:"kernel,omitempty"`
	Command []string          `json:"command"`
	Env     map[string]string `json:"env,omitempty"`
}

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
	AgentID   string    `json:"agent_id"`
	AgentName string    `json:"agent_name"`
	Ref       string    `json:"ref"`
	Digest    string    `json:"digest"`
	Size      int64     `json:"size"`
	PulledAt  time.Time `json:"pulled_at"`
}

// ImagePullRequest is the body of POST /v1/images/pull: warm an agent's cache.
type ImagePullRequest struct {
	Ref   string `json:"ref"`
	Agent string `json:"agent"` // agent ID, ID prefix or name
}

// Package drivers defines the interface every kernel driver implements, the
// types that cross it, and the errors drivers return. Built-in drivers run
// in-process behind it; external drivers will speak the same interface over
// go-plugin.
package drivers

import (
	"context"
	"errors"
	"io"
	"time"

	"github.com/corral-dev/corral/structs"
)

// APIVersion is the version of this interface; plugins must match it.
const APIVersion = "0.1.0"

// Sentinel errors, compared with errors.Is.
var (
	ErrTaskNotFound   = errors.New("task not found")
	ErrTaskExists     = errors.New("task already exists")
	ErrInvalidConfig  = errors.New("invalid task config")
	ErrNotSupported   = errors.New("operation not supported by this driver")
	ErrTaskNotRunning = errors.New("task is not running")
)

// Driver runs kernels ("tasks" to the driver) of one kind: native
// processes, containers or VMs.
type Driver interface {
	// Name is the driver's name as sessions refer to it ("exec", "runc").
	Name() string
	// Fingerprint says whether the driver can run on this node and with
	// which attributes.
	Fingerprint(ctx context.Context) (*Fingerprint, error)
	// Capabilities says which optional operations the driver supports.
	Capabilities() Capabilities
	// Start launches a task and returns the handle needed to find it again.
	Start(ctx context.Context, cfg *TaskConfig) (*TaskHandle, error)
	// Wait returns a channel that yields the task's exit result once.
	Wait(ctx context.Context, taskID string) (<-chan *ExitResult, error)
	// Stop asks the task to stop (signal, then kill after timeout).
	Stop(ctx context.Context, taskID string, timeout time.Duration, signal string) error
	// Destroy kills whatever is left of the task and releases its resources
	// (cgroups, rootfs). force kills a still-running task first.
	Destroy(ctx context.Context, taskID string, force bool) error
	// Inspect reports the task's current state.
	Inspect(ctx context.Context, taskID string) (*TaskStatus, error)
	// Stats reports the task's resource usage.
	Stats(ctx context.Context, taskID string) (*TaskStats, error)
	// Exec runs a command inside the task's environment and returns its exit code.
	Exec(ctx context.Context, taskID string, opts *ExecOptions) (int, error)
	// Recover reattaches to a task started by an earlier agent process.
	Recover(ctx context.Context, handle *TaskHandle) error
}

// HealthWatcher is implemented by drivers whose health changes while the
// agent runs, such as an external plugin that the agent relaunches when it
// exits and that may keep crashing. The agent advertises such a driver only
// while it is healthy.
type HealthWatcher interface {
	// Health returns the driver's health now, why when it is not healthy,
	// and a channel that is closed at the next change.
	Health() (state HealthState, reason string, changed <-chan struct{})
}

// HealthState is a driver's health on this node.
type HealthState string

// Health states.
const (
	HealthHealthy    HealthState = "healthy"
	HealthUndetected HealthState = "undetected"
	HealthUnhealthy  HealthState = "unhealthy"
)

// Fingerprint is what a driver found out about the node.
type Fingerprint struct {
	Health      HealthState       `json:"health"`
	Description string            `json:"description,omitempty"`
	Attributes  map[string]string `json:"attributes,omitempty"`
}

// Capabilities lists the optional features of a driver.
type Capabilities struct {
	Exec           bool `json:"exec"`
	ResourceLimits bool `json:"resource_limits"`
	Recover        bool `json:"recover"`
	HostNetworking bool `json:"host_networking"`
}

// TaskConfig is everything a driver needs to start one kernel.
type TaskConfig struct {
	ID        string            `json:"id"` // the kernel ID
	SessionID string            `json:"session_id"`
	Hostname  string            `json:"hostname"`
	Image     string            `json:"image,omitempty"`
	Command   []string          `json:"command"`
	Env       map[string]string `json:"env,omitempty"`
	// WorkDir is the kernel's working directory: for exec, a directory on the
	// host the agent created for the kernel; for containers, inside the rootfs.
	WorkDir string `json:"workdir,omitempty"`
	// TaskDir is a host directory the driver may use for its own files.
	TaskDir    string        `json:"task_dir"`
	Resources  structs.Slots `json:"resources"`
	StdoutPath string        `json:"stdout_path"`
	StderrPath string        `json:"stderr_path"`
	User       string        `json:"user,omitempty"`

	// RootFS is, for container drivers, the host directory holding the
	// kernel's unpacked image: read-only and shared by every kernel of that
	// image. The driver layers a writable root of the kernel's own over it.
	RootFS string `json:"rootfs,omitempty"`
	// ImageConfig is how the image says to run it, nil when it says
	// nothing. Command replaces its Cmd and keeps its Entrypoint; Env is
	// added to its Env; WorkDir and User override its WorkingDir and User.
	ImageConfig *ImageConfig `json:"image_config,omitempty"`
	// NetNSPath is a network namespace prepared by the agent (e.g.
	// /run/netns/<name>) for a container kernel to join; empty gives the
	// kernel a network namespace of its own with only loopback.
	NetNSPath string `json:"netns_path,omitempty"`
	// Hosts are extra /etc/hosts entries (hostname to IP) for container
	// drivers: the other kernels of a cluster session.
	Hosts map[string]string `json:"hosts,omitempty"`
	// Devices are the kernel's devices (its GPUs): nodes to create and
	// allow, nodes to deny, mounts and environment. A driver applies all
	// of it or fails the start; a kernel never sees a device it was not
	// given.
	Devices *structs.DeviceReservation `json:"devices,omitempty"`
	// Mounts are host files or directories bound into a container kernel
	// (e.g. /etc/corral with a cluster kernel's hostfile and ssh keys, and
	// corral's kernel helper). A driver without a filesystem of its own
	// (exec) sees the same paths on the host.
	Mounts []Mount `json:"mounts,omitempty"`
	// Cpuset pins the kernel to these CPUs ("0-1,4"), CpusetMems to these
	// NUMA nodes; empty: the agent's shared pool, no pinning.
	Cpuset     string `json:"cpuset,omitempty"`
	CpusetMems string `json:"cpuset_mems,omitempty"`
	// Options are the kernel's runtime settings beyond its slots: /dev/shm
	// size, ulimits, added capabilities, host networking. A driver that
	// cannot apply one fails the start with a clear error.
	Options *structs.KernelOptions `json:"options,omitempty"`
}

// Mount is a bind mount into a container kernel.
type Mount struct {
	Source      string `json:"source"`
	Destination string `json:"destination"`
	ReadOnly    bool   `json:"read_only,omitempty"`
	// Owner, when set, is the host user whose files in Source belong to
	// the kernel's own user (a volume): a container driver that gives
	// kernels user namespaces maps it to the kernel's root (an idmapped
	// mount), so that the kernel reads and writes them and its new files
	// get this owner on the host.
	Owner *MountOwner `json:"owner,omitempty"`
	// Volume marks a user's volume: data that lives on the host and
	// outlives the kernel. A driver that cannot bind-mount shares it live
	// (the vm driver: virtio-9p), and never copies it.
	Volume bool `json:"volume,omitempty"`
}

// MountOwner is the host uid and gid of a Mount's files.
type MountOwner struct {
	UID uint32 `json:"uid"`
	GID uint32 `json:"gid"`
}

// ImageConfig is the run configuration of an OCI image.
type ImageConfig struct {
	Entrypoint []string `json:"entrypoint,omitempty"`
	Cmd        []string `json:"cmd,omitempty"`
	// Env holds KEY=value entries.
	Env        []string `json:"env,omitempty"`
	WorkingDir string   `json:"working_dir,omitempty"`
	// User is a name or uid, optionally with ":group" or ":gid".
	User string `json:"user,omitempty"`
}

// TaskHandle is what the agent persists to find a task again after a restart;
// DriverState is opaque to everybody but the driver.
type TaskHandle struct {
	Version     int         `json:"version"`
	Driver      string      `json:"driver"`
	Config      *TaskConfig `json:"config"`
	State       TaskState   `json:"state"`
	DriverState []byte      `json:"driver_state,omitempty"`
	StartedAt   time.Time   `json:"started_at"`
}

// TaskState is the coarse state of a task.
type TaskState string

// Task states.
const (
	TaskStateUnknown TaskState = "unknown"
	TaskStateRunning TaskState = "running"
	TaskStateExited  TaskState = "exited"
)

// ExitResult is how a task ended.
type ExitResult struct {
	ExitCode  int   `json:"exit_code"`
	Signal    int   `json:"signal,omitempty"`
	OOMKilled bool  `json:"oom_killed,omitempty"`
	Err       error `json:"-"`
}

// Successful reports whether the task exited 0 without a signal or error.
func (r *ExitResult) Successful() bool {
	return r.ExitCode == 0 && r.Signal == 0 && r.Err == nil
}

// TaskStatus is the answer of Inspect.
type TaskStatus struct {
	ID          string      `json:"id"`
	State       TaskState   `json:"state"`
	StartedAt   time.Time   `json:"started_at"`
	CompletedAt time.Time   `json:"completed_at,omitzero"`
	ExitResult  *ExitResult `json:"exit_result,omitempty"`
}

// TaskStats is a sample of a task's resource usage.
type TaskStats struct {
	Time           time.Time `json:"time"`
	CPUUsageNanos  uint64    `json:"cpu_usage_nanos"`
	MemoryRSSBytes uint64    `json:"memory_rss_bytes"`
	Pids           uint64    `json:"pids"`
}

// ExecOptions is a command to run inside a task's environment.
type ExecOptions struct {
	Command []string
	Env     map[string]string
	Stdin   io.Reader
	Stdout  io.Writer
	Stderr  io.Writer
	// TTY runs the command on a new pseudo-terminal, as the leader of a
	// new session with the terminal as its controlling terminal: its
	// stdin, stdout and stderr are the terminal, whose output goes to
	// Stdout (Stderr gets nothing) and whose input comes from Stdin.
	TTY bool
	// Size is the terminal's size at start; zero rows or columns leave
	// the kernel's default. Only with TTY.
	Size TermSize
	// Resize delivers new terminal sizes while the command runs; nil when
	// the size never changes. Only with TTY.
	Resize <-chan TermSize
}

// TermSize is a terminal's size in characters.
type TermSize struct {
	Rows uint16 `json:"rows"`
	Cols uint16 `json:"cols"`
}

// ExecNotSupported can be embedded by drivers that cannot exec.
type ExecNotSupported struct{}

// Exec always fails with ErrNotSupported.
func (ExecNotSupported) Exec(context.Context, string, *ExecOptions) (int, error) {
	return 0, ErrNotSupported
}

// Package exec is the kernel driver that runs kernels as native processes
// on the node: each task is a process group in its own working directory,
// limited in CPU, memory and number of processes by per-task cgroups (v1 or
// v2) when the agent runs as root. Every task runs under its own shim
// (package shim), which survives agent restarts and records the task's exit
// status, so that a restarted agent recovers the task and still learns how
// it ended.
//
// The exec driver (New) never runs a kernel as host root: a kernel runs as
// an unprivileged user (DefaultUser unless WithUser or a UserMapper says
// otherwise) in its own pid, mount and IPC namespaces, with a private
// /tmp, /var/tmp and /dev/shm, a /proc of its own, and the agent's files
// out of sight (package taskrun). Kernels share the host's network. The host
// driver (NewHost) is the same driver without that isolation, for admins:
// kernels run as root in the host's namespaces.
package exec

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	osexec "os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/corral-dev/corral/drivers/exec/cgroup"
	// Denies devices on cgroup v2 with an eBPF device program.
	_ "github.com/corral-dev/corral/drivers/exec/cgroup/ebpfdev"
	"github.com/corral-dev/corral/drivers/exec/taskrun"
	"github.com/corral-dev/corral/drivers/internal/ibdev"
	"github.com/corral-dev/corral/drivers/internal/lifecycle"
	"github.com/corral-dev/corral/drivers/internal/logcap"
	"github.com/corral-dev/corral/drivers/internal/ptyio"
	"github.com/corral-dev/corral/drivers/shim"
	"github.com/corral-dev/corral/plugins/drivers"
	"github.com/corral-dev/corral/structs"
)

// driverName is the name sessions use to pick this driver; its shims (and
// the host driver's) are of kind taskrun.Kind.
const driverName = "exec"

// CgroupParent is the cgroup below which the driver creates one cgroup per
// task, e.g. /sys/fs/cgroup/memory/corral/<task ID> on cgroup v1.
const CgroupParent = "corral"

// ErrExitCodeUnknown is wrapped by the ExitResult.Err (with exit code -1)
// of a task whose exit status is lost: its shim died without recording it
// (shim.ErrNoExitStatus), or the task was recovered from the handle of an
// agent that ran tasks without shims.
var ErrExitCodeUnknown = errors.New("exit code unknown")

// errNoShim is why the exit status of a task started without shim is lost.
var errNoShim = errors.New("the task was started by an agent without shims, so its exit status went to that agent")

// shimSubdir is the directory below TaskConfig.TaskDir that holds the
// task's shim files.
const shimSubdir = "shim"

const (
	// pollInterval is how often Stop and Destroy check for leftover processes.
	pollInterval = 20 * time.Millisecond
	// destroyTimeout bounds Destroy when ctx has no earlier deadline.
	destroyTimeout = 30 * time.Second
	// execWaitDelay is how long Exec waits for output after the command
	// exited while a background child still holds its stdout or stderr.
	execWaitDelay = time.Second
)

// recoverPollInterval is how often a task recovered from a handle without
// shim is checked for exit.
var recoverPollInterval = 250 * time.Millisecond

// Driver runs tasks as native processes. It is safe for concurrent use.
type Driver struct {
	logger  *slog.Logger
	cgroups *cgroup.Manager // nil: tasks run without limits
	// noLimits says why cgroups are not used; empty when they are.
	noLimits string

	// kind is execKind, or hostKind in host mode.
	kind *lifecycle.Kind
	// isolated is false in host mode: tasks run as root (or cfg.User) in
	// the host's namespaces.
	isolated   bool
	user       string     // isolated mode: the default user of tasks
	mapUser    UserMapper // isolated mode: picks a task's user; may be nil
	pidsLimit  int64      // pids limit of tasks whose resources name none
	maxLogSize int64      // cap of each output log (WithMaxLogSize)
	hidden     []string   // isolated mode: host directories tasks must not see

	tasks lifecycle.Tasks[*task]
}

var _ drivers.Driver = (*Driver)(nil)

// New returns the exec driver, which isolates its kernels (see the package
// doc), configured by opts and logging to logger (nil discards). It detects
// the cgroup hierarchies once; when it cannot use them it logs, once, that
// tasks will run without resource limits. It also warns when the binary
// cannot run task shims (see shim.MaybeRun).
func New(logger *slog.Logger, opts ...Option) *Driver {
	return newDriver(logger, execKind, true, opts)
}

// NewHost returns the host driver: the exec driver without isolation, whose
// kernels run as root (or the task's User) in the host's namespaces, as
// exec kernels did before they were isolated. It is for admins only: the
// agent offers it only when asked to (corral agent -enable-host-driver).
// WithUser and WithUserMapper have no effect on it.
func NewHost(logger *slog.Logger, opts ...Option) *Driver {
	return newDriver(logger, hostKind, false, opts)
}

func newDriver(logger *slog.Logger, k *lifecycle.Kind, isolated bool, opts []Option) *Driver {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	d := &Driver{logger: logger.With("driver", k.Name), kind: k, isolated: isolated, user: DefaultUser, pidsLimit: DefaultPidsLimit, maxLogSize: logcap.DefaultMaxLogSize}
	for _, o := range opts {
		o(d)
	}
	if !shim.Available() {
		d.logger.Warn("this binary does not run task shims (shim.MaybeRun is not called first in main): " +
			"tasks run inside this process and lose their exit status if it restarts")
	}
	m, err := cgroup.Detect(CgroupParent)
	if err != nil {
		d.noLimits = err.Error()
		d.logger.Warn("tasks will run without CPU and memory limits", "reason", err)
		return d
	}
	d.cgroups = m
	if !m.CanLimitCPU() || !m.CanLimitMemory() || !m.CanLimitPids() {
		d.logger.Warn("some resource limits are unavailable", "cgroup_version", m.Version().String(),
			"cpu", m.CanLimitCPU(), "memory", m.CanLimitMemory(), "pids", m.CanLimitPids())
	} else {
		d.logger.Debug("resource limits enabled", "cgroup_version", m.Version().String())
	}
	return d
}

// Name returns "exec", or "host" for the host driver.
func (d *Driver) Name() string { return d.kind.Name }

// errNeedsRoot is why the exec driver cannot run kernels without root.
var errNeedsRoot = errors.New("the exec driver runs kernels as an unprivileged user in namespaces of their own, which needs an agent running as root")

// Fingerprint reports the driver healthy on Linux (the exec driver only
// when the agent runs as root), with the kernel version, the cgroup setup
// and the isolation as attributes.
func (d *Driver) Fingerprint(ctx context.Context) (*drivers.Fingerprint, error) {
	if runtime.GOOS != "linux" {
		return &drivers.Fingerprint{Health: drivers.HealthUndetected, Description: "the " + d.Name() + " driver needs Linux"}, nil
	}
	if d.isolated && os.Geteuid() != 0 {
		return &drivers.Fingerprint{Health: drivers.HealthUnhealthy, Description: errNeedsRoot.Error()}, nil
	}
	attrs := map[string]string{
		"driver.exec.cgroup_version":  cgroup.None.String(),
		"driver.exec.resource_limits": fmt.Sprint(d.Capabilities().ResourceLimits),
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		attrs["driver.exec.kernel_version"] = strings.TrimSpace(string(b))
	}
	desc := "native processes"
	if d.isolated {
		attrs["driver.exec.isolation"] = "namespaces"
		attrs["driver.exec.user"] = d.user
		desc += " as user " + d.user + " in pid, mount and IPC namespaces of their own"
	} else {
		attrs["driver.exec.isolation"] = "none"
		desc += " as root in the host's namespaces"
	}
	if shim.Available() {
		attrs["driver.exec.shim"] = "process"
		desc += " under shims"
	} else {
		attrs["driver.exec.shim"] = "in-process"
		desc += " without shims (they die with the agent)"
	}
	// Kernels share the host's /dev: the InfiniBand devices are theirs to
	// open (their device cgroup denies only other kernels' GPUs).
	if n := ibdev.Verbs(); n > 0 {
		attrs["driver.exec.infiniband"] = fmt.Sprint(n)
	}
	attrs["driver.exec.cpuset"] = "affinity"
	if d.cgroups != nil && d.cgroups.CanPin() {
		attrs["driver.exec.cpuset"] = "cgroup"
	}
	// Whether kernels can be denied the node's other GPUs (Devices.Deny).
	attrs["driver.exec.device_cgroup"] = "false"
	if d.isolated && d.cgroups != nil && d.cgroups.CanDenyDevices() {
		attrs["driver.exec.device_cgroup"] = "true"
	}
	if d.cgroups != nil {
		attrs["driver.exec.cgroup_version"] = d.cgroups.Version().String()
		desc += ", limited by cgroup " + d.cgroups.Version().String()
	} else {
		desc += ", without resource limits: " + d.noLimits
	}
	return &drivers.Fingerprint{Health: drivers.HealthHealthy, Description: desc, Attributes: attrs}, nil
}

// Capabilities reports exec, recover and host networking, and resource
// limits when both CPU and memory cgroups are usable.
func (d *Driver) Capabilities() drivers.Capabilities {
	return drivers.Capabilities{
		Exec:           true,
		ResourceLimits: d.cgroups != nil && d.cgroups.CanLimitCPU() && d.cgroups.CanLimitMemory(),
		Recover:        true,
		HostNetworking: true,
	}
}

// get returns the task with id or ErrTaskNotFound.
func (d *Driver) get(id string) (*task, error) { return d.tasks.Get(id) }

func validateConfig(cfg *drivers.TaskConfig) error {
	switch {
	case cfg == nil:
		return fmt.Errorf("%w: no task config", drivers.ErrInvalidConfig)
	case cfg.ID == "" || cfg.ID == "." || cfg.ID == ".." || strings.ContainsAny(cfg.ID, "/\x00\n"):
		return fmt.Errorf("%w: task ID %q must be a non-empty name without slashes", drivers.ErrInvalidConfig, cfg.ID)
	case len(cfg.Command) == 0 || cfg.Command[0] == "":
		return fmt.Errorf("%w: task %s has an empty command: give the program to run", drivers.ErrInvalidConfig, cfg.ID)
	case cfg.WorkDir == "" || !filepath.IsAbs(cfg.WorkDir):
		return fmt.Errorf("%w: task %s needs an absolute working directory, got %q", drivers.ErrInvalidConfig, cfg.ID, cfg.WorkDir)
	case cfg.TaskDir == "" || !filepath.IsAbs(cfg.TaskDir):
		return fmt.Errorf("%w: task %s needs an absolute task directory for its shim, got %q", drivers.ErrInvalidConfig, cfg.ID, cfg.TaskDir)
	}
	if err := drivers.ValidateDevices(cfg.Devices); err != nil {
		return fmt.Errorf("task %s: %w", cfg.ID, err)
	}
	return nil
}

func cloneConfig(cfg *drivers.TaskConfig) *drivers.TaskConfig {
	c := *cfg
	c.Command = slices.Clone(cfg.Command)
	c.Env = maps.Clone(cfg.Env)
	c.Resources = cfg.Resources.Copy()
	c.Devices = cfg.Devices.Copy()
	c.Options = cfg.Options.Copy()
	c.Mounts = slices.Clone(cfg.Mounts)
	c.Hosts = maps.Clone(cfg.Hosts)
	return &c
}

// limits turns the task's cpu, mem and pids slots into cgroup limits (the
// driver's pids limit when the task names none), leaving out (with a
// warning) what this node cannot enforce.
func (d *Driver) limits(cfg *drivers.TaskConfig, log *slog.Logger) cgroup.Limits {
	l := cgroup.Limits{
		CPU:         cfg.Resources[structs.SlotCPU].Float(),
		MemoryBytes: int64(cfg.Resources[structs.SlotMem].Float()),
		Pids:        int64(cfg.Resources[pidsSlot].Float()),
	}
	if l.Pids <= 0 {
		l.Pids = max(d.pidsLimit, 0)
	}
	if d.isolated && cfg.Devices != nil {
		// Kernels share the host's /dev: the other devices are denied in
		// the task's device cgroup (Start fails where there is none).
		l.DenyDevices = cgroupDevices(cfg.Devices.Deny)
	}
	if d.cgroups != nil && d.cgroups.CanPin() {
		l.Cpus, l.Mems = cfg.Cpuset, cfg.CpusetMems
	}
	if d.cgroups == nil {
		if l.CPU > 0 || l.MemoryBytes > 0 || l.Pids > 0 {
			log.Debug("resource limits not enforced", "reason", d.noLimits)
		}
		return cgroup.Limits{}
	}
	if l.CPU > 0 && !d.cgroups.CanLimitCPU() {
		log.Warn("no cpu cgroup controller: CPU limit not enforced", "cpu", l.CPU)
		l.CPU = 0
	}
	if l.MemoryBytes > 0 && !d.cgroups.CanLimitMemory() {
		log.Warn("no memory cgroup controller: memory limit not enforced", "mem", l.MemoryBytes)
		l.MemoryBytes = 0
	}
	if l.Pids > 0 && !d.cgroups.CanLimitPids() {
		log.Debug("no pids cgroup controller: pids limit not enforced", "pids", l.Pids)
		l.Pids = 0
	}
	return l
}

// Start runs cfg.Command[0] (resolved through PATH) with cfg.Command[1:] in
// its own process group and cgroups, in cfg.WorkDir (created if missing),
// with stdout and stderr appended to cfg.StdoutPath and cfg.StderrPath.
// The process is a child of the task's shim, which keeps its files in
// cfg.TaskDir/shim; the exec driver puts the task's init (package taskrun)
// between them. Start returns once the process runs inside its cgroups.
//
// Of cfg.Devices the kernel gets the environment (over cfg.Env) and, from
// the exec driver, a device cgroup that denies the Deny nodes (v1: the
// devices controller; v2: an eBPF device program); the start fails where
// no device cgroup can be had. The nodes and mounts are the host's, which
// kernels already see. The host driver applies the environment only: it
// does not confine devices.
func (d *Driver) Start(ctx context.Context, cfg *drivers.TaskConfig) (_ *drivers.TaskHandle, err error) {
	if err := validateConfig(cfg); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	cfg = cloneConfig(cfg)
	log := d.logger.With("kernel_id", cfg.ID, "session_id", cfg.SessionID)
	var cred *syscall.Credential
	var iso *Isolation
	if d.isolated {
		if os.Geteuid() != 0 {
			return nil, fmt.Errorf("task %s: %w; run the agent as root", cfg.ID, errNeedsRoot)
		}
		name, err := d.resolveUser(cfg)
		if err != nil {
			return nil, err
		}
		if iso, err = lookupTaskUser(name); err != nil {
			return nil, err
		}
		iso.Hidden = append(slices.Clone(d.hidden), filepath.Dir(cfg.TaskDir))
		cred = &syscall.Credential{Uid: iso.Uid, Gid: iso.Gid}
	} else if cred, err = lookupUser(cfg.User); err != nil {
		return nil, err
	}

	if err := d.tasks.Reserve(cfg.ID); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			d.tasks.Unreserve(cfg.ID)
		}
	}()

	created := false
	if _, err := os.Stat(cfg.WorkDir); errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(cfg.WorkDir, 0o755); err != nil {
			return nil, fmt.Errorf("creating working directory: %w", err)
		}
		created = true
	}
	// The task owns a working directory that lies in its task directory
	// (the agent makes it there), never one elsewhere on the host: a
	// directory made for it in /etc could hold configuration that root
	// reads. (Host tasks of a named user also get one Start made.)
	if cred != nil && (within(cfg.WorkDir, cfg.TaskDir) || (created && iso == nil)) {
		if err := os.Lchown(cfg.WorkDir, int(cred.Uid), int(cred.Gid)); err != nil {
			return nil, fmt.Errorf("handing working directory to uid %d: %w", cred.Uid, err)
		}
	}
	env := taskEnv(cfg)
	path, err := lookPath(cfg.Command[0], env["PATH"], cfg.WorkDir)
	if err != nil {
		return nil, fmt.Errorf("%w: task %s: %v", drivers.ErrInvalidConfig, cfg.ID, err)
	}

	if d.isolated && cfg.Devices != nil && len(cfg.Devices.Deny) > 0 && (d.cgroups == nil || !d.cgroups.CanDenyDevices()) {
		why := d.noLimits
		if d.cgroups != nil {
			why = "no cgroup v1 devices controller and no cgroup v2"
		}
		return nil, fmt.Errorf("task %s must be denied devices %s, but this node has no device cgroup (%s): %w",
			cfg.ID, denyPaths(cfg.Devices.Deny), why, cgroup.ErrDevicesUnavailable)
	}
	var group *cgroup.Group
	lim := d.limits(cfg, log)
	extra, err := d.taskLimits(cfg, lim.Cpus != "")
	if err != nil {
		return nil, err
	}
	binds, err := d.taskBinds(cfg, log)
	if err != nil {
		return nil, err
	}
	if d.cgroups != nil {
		group, err = d.cgroups.Create(cfg.ID, lim)
		if err != nil {
			return nil, fmt.Errorf("creating cgroups for task %s: %w", cfg.ID, err)
		}
		defer func() {
			if err != nil {
				cctx, cancel := context.WithTimeout(context.Background(), destroyTimeout)
				defer cancel()
				_ = group.Destroy(cctx)
			}
		}()
		if iso == nil && cred != nil && group.Version == cgroup.V1 {
			// The wrapper joins the cgroups after it became the user; an
			// isolated task's init joins them as root.
			for _, f := range group.ProcsFiles() {
				if err := os.Chown(f, int(cred.Uid), int(cred.Gid)); err != nil {
					return nil, fmt.Errorf("delegating cgroup to user %s: %w", cfg.User, err)
				}
			}
		}
	}

	rc := &taskrun.Config{
		Path: path, Args: cfg.Command, Dir: cfg.WorkDir, Env: envList(env),
		StdoutPath: cfg.StdoutPath, StderrPath: cfg.StderrPath, Cgroup: group, Isolation: iso,
		MaxLogSize: d.maxLogSize, Limits: extra, Binds: binds,
	}
	if iso == nil {
		rc.Credential = cred
	}
	shimDir := filepath.Join(cfg.TaskDir, shimSubdir)
	sh, err := shim.Launch(ctx, taskrun.Kind, shimDir, rc)
	if err != nil {
		return nil, fmt.Errorf("starting task %s: %w", cfg.ID, err)
	}
	st := sh.State()
	t := &task{
		env: env, cred: cred, iso: iso, pid: st.Pid, pgid: st.Pid, startTime: st.StartTime,
		group: group, shimDir: shimDir, shim: st,
	}
	t.Task = lifecycle.New(d.kind, t, cfg, st.StartedAt, log.With("pid", st.Pid))
	go t.WaitShim(sh)
	// The CPU quota comes once the init started (cgroup.Manager.Create).
	if group != nil && lim.CPU > 0 {
		if err = group.LimitCPU(lim.CPU); err != nil {
			t.Kill()
			return nil, fmt.Errorf("limiting the CPU of task %s: %w", cfg.ID, err)
		}
	}
	h, err := t.Handle(t.state())
	if err != nil {
		t.Kill()
		return nil, err
	}
	d.tasks.Set(cfg.ID, t)
	t.Logger.Info("task started", "command", cfg.Command, "cgroups", group != nil, "shim_pid", st.ShimPid,
		"isolated", iso != nil, "uid", credUID(cred))
	return h, nil
}

// cgroupDevices converts device nodes to the cgroup package's own type.
func cgroupDevices(nodes []structs.DeviceNode) []cgroup.Device {
	out := make([]cgroup.Device, len(nodes))
	for i, n := range nodes {
		out[i] = cgroup.Device{Path: n.Path, Type: n.Type, Major: n.Major, Minor: n.Minor}
	}
	return out
}

// denyPaths lists the paths of nodes, for errors.
func denyPaths(nodes []structs.DeviceNode) string {
	paths := make([]string, len(nodes))
	for i, n := range nodes {
		paths[i] = n.Path
	}
	return strings.Join(paths, ", ")
}

// within reports whether path is below dir (not dir itself, which holds
// the shim's files and the logs).
func within(path, dir string) bool {
	rel, err := filepath.Rel(dir, path)
	return err == nil && rel != "." && rel != ".." && !strings.HasPrefix(rel, "../")
}

// credUID is the uid of cred, 0 (root) for nil.
func credUID(cred *syscall.Credential) uint32 {
	if cred == nil {
		return 0
	}
	return cred.Uid
}

// Wait returns a channel that receives the task's exit result once the task
// has exited, at once if it already has. Every call gets its own channel;
// if ctx ends first, nothing is sent.
func (d *Driver) Wait(ctx context.Context, taskID string) (<-chan *drivers.ExitResult, error) {
	return d.tasks.Wait(ctx, taskID)
}

// Stop sends signal (default SIGTERM) to the task's process group and
// SIGKILL to the group and its cgroups if processes are left after timeout.
// It returns once the task's main process has exited.
func (d *Driver) Stop(ctx context.Context, taskID string, timeout time.Duration, signal string) error {
	sig, err := drivers.ParseSignal(signal)
	if err != nil {
		return err
	}
	return d.tasks.Stop(ctx, taskID, sig, timeout)
}

// Destroy kills every process left of the task (a running task only when
// force is set), waits until they are gone, removes its cgroups and shim
// files and forgets the task.
func (d *Driver) Destroy(ctx context.Context, taskID string, force bool) error {
	return d.tasks.Destroy(ctx, taskID, force, destroyTimeout, func(ctx context.Context, t *task) error {
		if t.group != nil {
			if err := t.group.Destroy(ctx); err != nil {
				return err
			}
		}
		if t.shimDir != "" {
			// The shim has exited (or is gone): the task's exit is known.
			if err := os.RemoveAll(t.shimDir); err != nil {
				return fmt.Errorf("removing shim files: %w", err)
			}
		}
		return nil
	})
}

// Inspect reports whether the task runs and, once it exited, how.
func (d *Driver) Inspect(ctx context.Context, taskID string) (*drivers.TaskStatus, error) {
	return d.tasks.Inspect(taskID)
}

// Stats samples the task's CPU time, resident memory and process count from
// its cgroups, or from /proc for the processes of its group without them.
func (d *Driver) Stats(ctx context.Context, taskID string) (*drivers.TaskStats, error) {
	t, err := d.get(taskID)
	if err != nil {
		return nil, err
	}
	if t.Exited() {
		return nil, fmt.Errorf("%w: %q", drivers.ErrTaskNotRunning, taskID)
	}
	st := &drivers.TaskStats{Time: time.Now()}
	var cs cgroup.Stats
	if t.group != nil {
		if cs, err = t.group.Stats(); err != nil {
			return nil, fmt.Errorf("task %s stats: %w", taskID, err)
		}
	}
	if cs.HasCPU && cs.HasMemory {
		st.CPUUsageNanos, st.MemoryRSSBytes, st.Pids = cs.CPUUsageNanos, cs.MemoryRSSBytes, cs.Pids
		return st, nil
	}
	cpu, rss, n := procGroupStats(t.pgid)
	st.CPUUsageNanos, st.MemoryRSSBytes, st.Pids = cpu, rss, n
	if cs.HasCPU {
		st.CPUUsageNanos = cs.CPUUsageNanos
	}
	if cs.HasMemory {
		st.MemoryRSSBytes = cs.MemoryRSSBytes
	}
	if t.group != nil {
		st.Pids = cs.Pids
	}
	return st, nil
}

// Exec runs opts.Command in the task's working directory with its
// environment plus opts.Env, inside its cgroups and process group, streams
// the output to opts.Stdout and opts.Stderr as it is produced and returns
// the exit code (128+N when killed by signal N). Ending ctx kills the
// command. In an isolated task the command runs in the task's namespaces
// as the task's user.
func (d *Driver) Exec(ctx context.Context, taskID string, opts *drivers.ExecOptions) (int, error) {
	if opts == nil || len(opts.Command) == 0 || opts.Command[0] == "" {
		return -1, fmt.Errorf("%w: exec needs a command", drivers.ErrInvalidConfig)
	}
	t, err := d.get(taskID)
	if err != nil {
		return -1, err
	}
	if t.Exited() {
		return -1, fmt.Errorf("%w: %q", drivers.ErrTaskNotRunning, taskID)
	}
	if t.userErr != nil {
		return -1, fmt.Errorf("exec in task %s: %w", taskID, t.userErr)
	}
	env := maps.Clone(t.env)
	maps.Copy(env, opts.Env)
	if t.iso != nil || t.execAs != nil {
		return d.execIsolated(ctx, t, env, opts)
	}
	path, err := lookPath(opts.Command[0], env["PATH"], t.Config.WorkDir)
	if err != nil {
		return -1, fmt.Errorf("%w: exec in task %s: %v", drivers.ErrInvalidConfig, taskID, err)
	}
	// os/exec waits for its stdin copier, which cannot be interrupted while
	// it blocks reading opts.Stdin; copy through our own pipe instead so
	// that Exec returns when the command exits.
	if opts.TTY {
		return d.execTTY(ctx, t, opts, func() *osexec.Cmd {
			cmd := osexec.CommandContext(ctx, path)
			cmd.Args = slices.Clone(opts.Command)
			cmd.Dir, cmd.Env = t.Config.WorkDir, envList(env)
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: t.cred}
			return cmd
		}, func(cmd *osexec.Cmd) error { return taskrun.StartCmd(ctx, cmd, t.group) })
	}
	stdin, stdinW, err := execStdin(opts.Stdin)
	if err != nil {
		return -1, fmt.Errorf("exec in task %s: %w", taskID, err)
	}
	if stdinW != nil {
		defer stdinW.Close()
	}
	newCmd := func(pgid int) *osexec.Cmd {
		cmd := osexec.CommandContext(ctx, path)
		cmd.Args = slices.Clone(opts.Command)
		cmd.Dir, cmd.Env = t.Config.WorkDir, envList(env)
		if stdin != nil {
			cmd.Stdin = stdin
		}
		cmd.Stdout, cmd.Stderr = opts.Stdout, opts.Stderr
		cmd.WaitDelay = execWaitDelay
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pgid: pgid, Credential: t.cred}
		return cmd
	}
	// Joining the task's process group lets Stop and Destroy reach the
	// command. The group is in its shim's session, where the kernel refuses
	// that, unless the shim runs in this process; otherwise the command
	// gets a group of its own, which the task tracks while it runs.
	pgid := t.pgid
	if sid, err := unix.Getsid(pgid); pgid <= 0 || err != nil || sid != ownSession() {
		pgid = 0
	}
	cmd := newCmd(pgid)
	err = taskrun.StartCmd(ctx, cmd, t.group)
	if pgid != 0 && (errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.ESRCH)) {
		pgid = 0
		cmd = newCmd(0)
		err = taskrun.StartCmd(ctx, cmd, t.group)
	}
	if stdinW != nil {
		stdin.Close() // the child has its copy
	}
	if err != nil {
		return -1, fmt.Errorf("exec in task %s: %w", taskID, err)
	}
	if stdinW != nil {
		go func() {
			_, _ = io.Copy(stdinW, opts.Stdin)
			stdinW.Close()
		}()
	}
	if pgid == 0 {
		defer t.addExec(cmd.Process.Pid)()
	}
	t.Logger.Debug("exec started", "command", opts.Command, "exec_pid", cmd.Process.Pid)
	err = cmd.Wait()
	res := exitResultOf(cmd.ProcessState, err)
	if err := ctx.Err(); err != nil {
		return res.ExitCode, fmt.Errorf("exec in task %s: %w", taskID, err)
	}
	return res.ExitCode, res.Err
}

// execIsolated is Exec in an isolated task: the command starts as the
// init helper in exec mode on a thread that entered the task's
// namespaces, joins the task's cgroups and becomes the command as the
// task's user. In a task that runs in the host's namespaces (t.execAs: one
// that an agent from before the isolation started) it does the same
// without entering namespaces.
func (d *Driver) execIsolated(ctx context.Context, t *task, env map[string]string, opts *drivers.ExecOptions) (int, error) {
	taskID := t.Config.ID
	as, enter := t.iso, true
	if as == nil {
		as, enter = t.execAs, false
	}
	var stdin, stdinW, ttyMaster *os.File
	var err error
	if opts.TTY {
		// The terminal's slave is the command's stdin, stdout and stderr;
		// the exec init starts as the leader of a new session with it as
		// its controlling terminal, and becomes the command.
		if ttyMaster, stdin, err = ptyio.Open(opts.Size.Rows, opts.Size.Cols); err != nil {
			return -1, fmt.Errorf("exec in task %s: allocating a terminal: %w", taskID, err)
		}
		defer stdin.Close()
	} else if stdin, stdinW, err = execStdin(opts.Stdin); err != nil {
		return -1, fmt.Errorf("exec in task %s: %w", taskID, err)
	}
	var term *ptyio.Terminal
	defer func() {
		if term != nil {
			term.Close(execWaitDelay)
		} else if ttyMaster != nil {
			ttyMaster.Close()
		}
	}()
	if stdinW != nil {
		defer stdinW.Close()
	}
	icfg := &taskrun.InitConfig{Mode: taskrun.ModeExec, Args: slices.Clone(opts.Command), Dir: t.Config.WorkDir, Env: envList(env), Isolation: as}
	// The command gets the task's rlimits and, where no cpuset cgroup
	// pins the task, its affinity.
	pinned := t.group != nil && (t.group.Dirs[cgroup.Cpuset] != "" || t.group.Version == cgroup.V2 && d.cgroups != nil && d.cgroups.CanPin())
	if lim, err := d.taskLimits(t.Config, pinned); err == nil {
		icfg.Rlimits, icfg.Affinity = lim.Rlimits, lim.Affinity
	}
	cmd, cfgW, statusR, closeChild, err := taskrun.InitCmd(ctx, icfg)
	if err != nil {
		return -1, fmt.Errorf("exec in task %s: %w", taskID, err)
	}
	defer statusR.Close()
	if stdin != nil {
		cmd.Stdin = stdin
	}
	cmd.Stdout, cmd.Stderr = opts.Stdout, opts.Stderr
	cmd.WaitDelay = execWaitDelay
	// Its own process group: the task's lives in its shim's session.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if opts.TTY {
		cmd.Stdout, cmd.Stderr = stdin, stdin
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	}
	procs, release, err := taskrun.CgroupFD(cmd, t.group)
	if err != nil {
		closeChild()
		cfgW.Close()
		return -1, fmt.Errorf("exec in task %s: %w", taskID, err)
	}
	icfg.Procs = procs
	var notFound error
	start := func() error {
		// Inside the task's mount namespace: its /tmp, its view.
		path, err := lookPath(opts.Command[0], env["PATH"], t.Config.WorkDir)
		if err != nil {
			notFound = err
			return nil
		}
		icfg.Path = path
		return cmd.Start()
	}
	if enter {
		err = enterTask(t.pid, t.startTime, start)
	} else {
		err = start()
	}
	release()
	closeChild()
	if stdinW != nil || ttyMaster != nil {
		stdin.Close() // the child has its copy
	}
	if err == nil && notFound != nil {
		cfgW.Close()
		return -1, fmt.Errorf("%w: exec in task %s: %v", drivers.ErrInvalidConfig, taskID, notFound)
	}
	if err != nil {
		cfgW.Close()
		return -1, fmt.Errorf("exec in task %s: %w", taskID, err)
	}
	defer t.addExec(cmd.Process.Pid)()
	if err := taskrun.SendConfig(cfgW, icfg); err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return -1, fmt.Errorf("exec in task %s: %w", taskID, err)
	}
	if err := taskrun.ReadStatus(ctx, statusR, bufio.NewReader(statusR), true); err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return -1, fmt.Errorf("exec in task %s: %w", taskID, err)
	}
	if stdinW != nil {
		go func() {
			_, _ = io.Copy(stdinW, opts.Stdin)
			stdinW.Close()
		}()
	}
	if ttyMaster != nil {
		term = ptyio.Serve(ttyMaster, opts.Stdin, opts.Stdout, opts.Resize)
	}
	t.Logger.Debug("exec started", "command", opts.Command, "exec_pid", cmd.Process.Pid, "tty", opts.TTY)
	err = cmd.Wait()
	res := exitResultOf(cmd.ProcessState, err)
	if err := ctx.Err(); err != nil {
		return res.ExitCode, fmt.Errorf("exec in task %s: %w", taskID, err)
	}
	return res.ExitCode, res.Err
}

// execTTY is Exec of a host task on a new terminal: newCmd makes the
// command, start starts it.
func (d *Driver) execTTY(ctx context.Context, t *task, opts *drivers.ExecOptions, newCmd func() *osexec.Cmd, start func(*osexec.Cmd) error) (int, error) {
	taskID := t.Config.ID
	master, slave, err := ptyio.Open(opts.Size.Rows, opts.Size.Cols)
	if err != nil {
		return -1, fmt.Errorf("exec in task %s: allocating a terminal: %w", taskID, err)
	}
	cmd := newCmd()
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	cmd.WaitDelay = execWaitDelay
	// A new session with the terminal as its controlling terminal: the
	// terminal's ^C reaches the command. Its session is its process
	// group, which the task tracks while it runs.
	cmd.SysProcAttr.Setsid, cmd.SysProcAttr.Setctty, cmd.SysProcAttr.Ctty = true, true, 0
	err = start(cmd)
	slave.Close() // the child has its copy
	if err != nil {
		master.Close()
		return -1, fmt.Errorf("exec in task %s: %w", taskID, err)
	}
	term := ptyio.Serve(master, opts.Stdin, opts.Stdout, opts.Resize)
	defer term.Close(execWaitDelay)
	defer t.addExec(cmd.Process.Pid)()
	t.Logger.Debug("exec started", "command", opts.Command, "exec_pid", cmd.Process.Pid, "tty", true)
	err = cmd.Wait()
	res := exitResultOf(cmd.ProcessState, err)
	if err := ctx.Err(); err != nil {
		return res.ExitCode, fmt.Errorf("exec in task %s: %w", taskID, err)
	}
	return res.ExitCode, res.Err
}

// execStdin returns what Exec gives the command as stdin: r itself when it
// is a file or nil, else the read end of a pipe whose write end (returned
// too) the caller feeds from r.
func execStdin(r io.Reader) (*os.File, *os.File, error) {
	switch f := r.(type) {
	case nil:
		return nil, nil, nil
	case *os.File:
		return f, nil, nil
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, nil, err
	}
	return pr, pw, nil
}

// Recover reattaches to a task started by an earlier agent process, using
// the shim directory, pids, start times and cgroups in handle.DriverState.
// The task's shim records its exit status, so Wait reports how the task
// ended, even when it ended while no agent ran. If the shim died without
// recording it, the task is reported with exit code -1 and an error
// wrapping ErrExitCodeUnknown and shim.ErrNoExitStatus once its process is
// gone. A process that is gone, or whose pid now belongs to another
// process, is never signalled. Recovering a task the driver already knows
// is a no-op.
func (d *Driver) Recover(ctx context.Context, handle *drivers.TaskHandle) error {
	if err := d.kind.CheckHandle(handle); err != nil {
		return err
	}
	var st driverState
	if err := json.Unmarshal(handle.DriverState, &st); err != nil || st.Pid <= 0 || st.Pgid <= 0 {
		return fmt.Errorf("%w: task %s: unreadable driver state %q", drivers.ErrInvalidConfig, handle.Config.ID, handle.DriverState)
	}
	cfg := cloneConfig(handle.Config)
	log := d.logger.With("kernel_id", cfg.ID, "session_id", cfg.SessionID, "pid", st.Pid)
	var cred *syscall.Credential
	var execAs *Isolation
	var userErr error
	switch {
	case st.Isolation != nil:
		cred = &syscall.Credential{Uid: st.Isolation.Uid, Gid: st.Isolation.Gid}
	case d.isolated:
		// A task of an agent whose exec kernels ran in the host's
		// namespaces, as root unless they named a user: exec into it runs
		// as the driver's user (or its own), never as root.
		name, err := d.resolveUser(cfg)
		if userErr = err; err == nil {
			execAs, userErr = lookupTaskUser(name)
		}
	default:
		cred, userErr = lookupUser(cfg.User)
	}
	if userErr != nil {
		log.Warn("recovered task's user is unknown; exec into it will fail", "error", userErr)
	}
	t := &task{
		env: taskEnv(cfg), cred: cred, iso: st.Isolation, execAs: execAs, userErr: userErr, pid: st.Pid, pgid: st.Pgid, startTime: st.StartTime,
		group: st.Cgroup, shimDir: st.ShimDir, shim: shim.State{ShimPid: st.ShimPid, ShimStartTime: st.ShimStartTime},
	}
	t.Task = lifecycle.New(d.kind, t, cfg, handle.StartedAt, log)
	t.Recovered = true
	ps, err := readProcStat(st.Pid)
	running := err == nil && ps.StartTime == st.StartTime && ps.Pgid == st.Pgid && ps.State != 'Z'
	if !running {
		// The pgid may now belong to unrelated processes: never signal it.
		t.pgid = 0
	}
	if !d.tasks.Add(cfg.ID, t) {
		return nil
	}

	if st.ShimDir == "" {
		if !running {
			log.Info("recovered task is no longer running; its exit status is unknown")
			t.Finish(d.kind.UnknownExit(errNoShim), time.Time{})
			return nil
		}
		log.Info("task recovered without shim: its exit status will be unknown")
		go t.Poll(recoverPollInterval, func() bool { return alive(t.pid, t.startTime) }, errNoShim)
		return nil
	}
	sh, err := shim.Reattach(st.ShimDir)
	if err == nil && (sh.State().Pid != st.Pid || sh.State().StartTime != st.StartTime) {
		err = fmt.Errorf("shim directory %s belongs to another start of the task (pid %d, the handle has %d)", st.ShimDir, sh.State().Pid, st.Pid)
	}
	if err != nil {
		log.Warn("cannot reattach to the task's shim; its exit status is lost", "error", err, "running", running)
		t.Finish(d.kind.UnknownExit(err), time.Time{})
		return nil
	}
	go t.WaitShim(sh)
	log.Info("task recovered", "running", running, "shim_pid", st.ShimPid)
	return nil
}

// ownSession returns the session of this process.
func ownSession() int {
	sid, _ := unix.Getsid(0)
	return sid
}

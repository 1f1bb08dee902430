// Package runc is the kernel driver that runs kernels as containers with
// libcontainer (runc's Go library, no runc binary): each kernel gets a
// writable root layered over its shared, read-only image directory, its own
// pid, mount, uts, ipc and network namespaces, runc's default security
// settings and per-kernel cgroups (v1 or v2) limiting CPU, memory and pids.
// Kernels are confined further by the container runtimes' default seccomp
// profile, a user namespace of their own where the host supports it (see
// UserNSMode), logs capped in size and a limit on what they write into
// their scratch space.
//
// Every container runs under its own shim (package shim): the init is a
// child of a small supervisor process that outlives agent restarts and
// records how the init ended, so that a restarted agent recovers the task
// and still learns its real exit code.
//
// The binary re-executes itself as each container's init and as each
// task's shim: it must call InitIfRequested and then shim.MaybeRun first
// thing in main.
package runc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/cgroups"
	"github.com/opencontainers/runc/libcontainer"
	"golang.org/x/sys/unix"

	"github.com/corral-dev/corral/drivers/internal/ibdev"
	"github.com/corral-dev/corral/drivers/internal/lifecycle"
	"github.com/corral-dev/corral/drivers/internal/ptyio"
	"github.com/corral-dev/corral/drivers/shim"
	"github.com/corral-dev/corral/plugins/drivers"
	"github.com/corral-dev/corral/structs"
)

// driverName is the name sessions use to pick this driver.
const driverName = "runc"

const (
	// DefaultStateDir is where libcontainer keeps the containers' state
	// unless WithStateDir says otherwise.
	DefaultStateDir = "/run/corral/runc"
	// DefaultCgroupParent is the cgroup below which each container gets
	// runc-<task ID>.
	DefaultCgroupParent = "corral"
	// DefaultPidsLimit is the most processes a container may have.
	DefaultPidsLimit = 4096
)

// ErrExitCodeUnknown is wrapped by the ExitResult.Err (with exit code -1)
// of a recovered task whose exit status is lost: its shim died without
// recording it (shim.ErrNoExitStatus), or the task was recovered from the
// handle of an agent that ran containers without shims, so that the init's
// exit status went to that agent.
var ErrExitCodeUnknown = errors.New("exit code unknown")

// errNoShim is why the exit status of a container started without shim
// is lost.
var errNoShim = errors.New("the container was started by an agent without shims, so its exit status went to that agent")

// shimExitGrace bounds how long Destroy waits for a task's shim to exit
// by itself once the container's init has exited.
const shimExitGrace = 2 * time.Second

const (
	// pollInterval is how often Stop and Destroy check for leftover processes.
	pollInterval = 10 * time.Millisecond
	// destroyTimeout bounds Destroy when ctx has no earlier deadline.
	destroyTimeout = 30 * time.Second
	// execWaitDelay is how long Exec waits for output after the command
	// exited while a background child still holds its stdout or stderr.
	execWaitDelay = time.Second
)

// recoverPollInterval is how often a recovered task is checked for exit.
var recoverPollInterval = 250 * time.Millisecond

// validID is what libcontainer accepts as a container ID.
var validID = regexp.MustCompile(`^[\w+.-]+$`)

// Option configures a Driver.
type Option func(*Driver)

// WithStateDir sets the directory where libcontainer keeps the containers'
// state (DefaultStateDir by default). Recover needs the same directory.
func WithStateDir(dir string) Option { return func(d *Driver) { d.stateDir = dir } }

// WithCgroupParent sets the cgroup (a relative path such as "corral")
// below which each container gets its own.
func WithCgroupParent(parent string) Option {
	return func(d *Driver) { d.cgroupParent = strings.Trim(parent, "/") }
}

// WithPidsLimit sets the most processes a container may have.
func WithPidsLimit(n int64) Option { return func(d *Driver) { d.pidsLimit = n } }

// WithRootFSMode sets how each kernel gets its writable root (RootFSAuto
// by default).
func WithRootFSMode(m RootFSMode) Option { return func(d *Driver) { d.rootfsMode = m } }

// WithSeccomp turns the default seccomp profile (Docker's, see
// defaultSeccomp) on, as it is by default, or off.
func WithSeccomp(on bool) Option { return func(d *Driver) { d.seccomp = on } }

// WithUserNS says whether kernels get user namespaces (UserNSAuto by
// default).
func WithUserNS(m UserNSMode) Option { return func(d *Driver) { d.userns = m } }

// WithMaxLogSize caps each of a kernel's output logs at n bytes on disk,
// the log and its rotated generation (.1) together (DefaultMaxLogSize by
// default; 0: no cap).
func WithMaxLogSize(n int64) Option { return func(d *Driver) { d.maxLogSize = n } }

// WithDiskLimit sets how many bytes a kernel without a disk slot may write
// into its scratch space before the driver stops it (DefaultDiskLimit by
// default; 0: no limit).
func WithDiskLimit(n int64) Option { return func(d *Driver) { d.diskLimit = n } }

// WithCapabilities replaces runc's default capability set (CAP_AUDIT_WRITE,
// CAP_KILL, CAP_NET_BIND_SERVICE) with caps, given as "CAP_..." names.
func WithCapabilities(caps ...string) Option {
	return func(d *Driver) { d.capabilities = slices.Clone(caps) }
}

// Driver runs tasks as libcontainer containers. It is safe for concurrent
// use.
type Driver struct {
	logger       *slog.Logger
	stateDir     string
	cgroupParent string
	pidsLimit    int64
	rootfsMode   RootFSMode
	capabilities []string
	seccomp      bool
	userns       UserNSMode
	maxLogSize   int64
	diskLimit    int64
	diskInterval time.Duration

	// usernsOnce probes whether kernels can get user namespaces here;
	// usernsErr says why not.
	usernsOnce sync.Once
	usernsErr  error
	ids        idRanges

	tasks lifecycle.Tasks[*task]
}

var _ drivers.Driver = (*Driver)(nil)

// New returns a runc driver that logs to logger (nil discards).
func New(logger *slog.Logger, opts ...Option) *Driver {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	d := &Driver{
		logger:       logger.With("driver", driverName),
		stateDir:     DefaultStateDir,
		cgroupParent: DefaultCgroupParent,
		pidsLimit:    DefaultPidsLimit,
		seccomp:      true,
		maxLogSize:   DefaultMaxLogSize,
		diskLimit:    DefaultDiskLimit,
		diskInterval: diskCheckInterval,
	}
	for _, o := range opts {
		o(d)
	}
	if d.seccomp && !seccompBuilt {
		d.logger.Warn("kernels run WITHOUT a seccomp profile: this binary was built without libcontainer's seccomp support " +
			"(build with cgo and -tags seccomp, as make build does, with libseccomp-dev installed)")
	}
	if !shim.Available() {
		d.logger.Warn("this binary does not run task shims (shim.MaybeRun is not called first in main): " +
			"containers are children of this process and lose their exit status if it restarts")
	}
	return d
}

// Name returns "runc".
func (d *Driver) Name() string { return driverName }

// Fingerprint reports the driver healthy when this process can run
// containers: Linux, root, built with cgo, InitIfRequested called at start,
// the pid, mount, uts, ipc and net namespaces and the cpu, memory and pids
// cgroup controllers available. Otherwise it is undetected, and the
// description says why.
func (d *Driver) Fingerprint(ctx context.Context) (*drivers.Fingerprint, error) {
	undetected := func(why string) (*drivers.Fingerprint, error) {
		return &drivers.Fingerprint{Health: drivers.HealthUndetected, Description: why}, nil
	}
	switch {
	case runtime.GOOS != "linux":
		return undetected("the runc driver needs Linux")
	case !cgoEnabled:
		return undetected("the binary was built without cgo, which libcontainer's namespace setup needs")
	case os.Geteuid() != 0:
		return undetected("the runc driver needs root to create namespaces and cgroups")
	case !initHooked.Load():
		return undetected("the binary cannot act as a container's init: call runc.InitIfRequested first thing in main")
	}
	for _, ns := range []string{"pid", "mnt", "uts", "ipc", "net"} {
		if _, err := os.Stat("/proc/self/ns/" + ns); err != nil {
			return undetected(fmt.Sprintf("the kernel lacks %s namespaces: %v", ns, err))
		}
	}
	if missing := missingControllers(); len(missing) > 0 {
		return undetected("cgroup controllers missing: " + strings.Join(missing, ", "))
	}
	attrs := map[string]string{
		"driver.runc.cgroup_version": cgroupVersion(),
		"driver.runc.overlayfs":      fmt.Sprint(overlayAvailable()),
		"driver.runc.rootfs_mode":    d.rootfsMode.String(),
		"driver.runc.shim":           "process",
		"driver.runc.seccomp":        d.seccompMode(),
		"driver.runc.userns":         fmt.Sprint(d.usernsWanted() == nil),
		"driver.runc.pids_limit":     fmt.Sprint(d.pidsLimit),
		"driver.runc.disk_limit":     fmt.Sprint(d.diskLimit),
		"driver.runc.max_log_size":   fmt.Sprint(d.maxLogSize),
	}
	if n := ibdev.Verbs(); n > 0 {
		attrs["driver.runc.infiniband"] = fmt.Sprint(n)
	}
	desc := "containers with libcontainer under shims, cgroup " + cgroupVersion()
	if !shim.Available() {
		attrs["driver.runc.shim"] = "in-process"
		desc = "containers with libcontainer without shims (their exit status is lost when the agent restarts), cgroup " + cgroupVersion()
	}
	desc += ", seccomp " + d.seccompMode()
	if err := d.usernsWanted(); err != nil {
		desc += ", no user namespaces (" + err.Error() + ")"
	} else {
		desc += ", user namespaces"
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		attrs["driver.runc.kernel_version"] = strings.TrimSpace(string(b))
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, m := range bi.Deps {
			if m.Path == "github.com/opencontainers/runc" {
				attrs["driver.runc.libcontainer_version"] = m.Version
			}
		}
	}
	return &drivers.Fingerprint{
		Health:      drivers.HealthHealthy,
		Description: desc,
		Attributes:  attrs,
	}, nil
}

// overlayAvailable reports whether the kernel knows overlayfs.
func overlayAvailable() bool {
	b, err := os.ReadFile("/proc/filesystems")
	return err == nil && strings.Contains(string(b), "\toverlay\n")
}

// Capabilities reports exec, resource limits and recover; kernels get a
// network namespace of their own unless their options ask for the host's.
func (d *Driver) Capabilities() drivers.Capabilities {
	return drivers.Capabilities{Exec: true, ResourceLimits: true, Recover: true}
}

// get returns the task with id or ErrTaskNotFound.
func (d *Driver) get(id string) (*task, error) { return d.tasks.Get(id) }

func validateConfig(cfg *drivers.TaskConfig) error {
	switch {
	case cfg == nil:
		return fmt.Errorf("%w: no task config", drivers.ErrInvalidConfig)
	case !validID.MatchString(cfg.ID) || cfg.ID == "." || cfg.ID == "..":
		return fmt.Errorf("%w: task ID %q must be a non-empty name of letters, digits and _+.-", drivers.ErrInvalidConfig, cfg.ID)
	case len(commandLine(cfg)) == 0:
		return fmt.Errorf("%w: task %s has no command and its image has neither entrypoint nor cmd", drivers.ErrInvalidConfig, cfg.ID)
	case commandLine(cfg)[0] == "":
		return fmt.Errorf("%w: task %s has an empty program name", drivers.ErrInvalidConfig, cfg.ID)
	case cfg.TaskDir != "" && !filepath.IsAbs(cfg.TaskDir):
		return fmt.Errorf("%w: task %s: task dir %q must be absolute", drivers.ErrInvalidConfig, cfg.ID, cfg.TaskDir)
	case cfg.NetNSPath != "" && !filepath.IsAbs(cfg.NetNSPath):
		return fmt.Errorf("%w: task %s: network namespace path %q must be absolute", drivers.ErrInvalidConfig, cfg.ID, cfg.NetNSPath)
	case hostNetwork(cfg) && cfg.NetNSPath != "":
		return fmt.Errorf("%w: task %s asks for the host's network and for network namespace %s: give one", drivers.ErrInvalidConfig, cfg.ID, cfg.NetNSPath)
	case cfg.Options != nil && cfg.Options.Network != structs.NetworkDefault && cfg.Options.Network != structs.NetworkHost:
		return fmt.Errorf("%w: task %s: unknown network mode %q (want %q or none)", drivers.ErrInvalidConfig, cfg.ID, cfg.Options.Network, structs.NetworkHost)
	case cfg.Options != nil && cfg.Options.ShmBytes < 0:
		return fmt.Errorf("%w: task %s: negative /dev/shm size %d", drivers.ErrInvalidConfig, cfg.ID, cfg.Options.ShmBytes)
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
	if cfg.ImageConfig != nil {
		ic := *cfg.ImageConfig
		ic.Entrypoint, ic.Cmd, ic.Env = slices.Clone(ic.Entrypoint), slices.Clone(ic.Cmd), slices.Clone(ic.Env)
		c.ImageConfig = &ic
	}
	return &c
}

// containerDir is the driver's directory for a task's rootfs and files.
func (d *Driver) containerDir(cfg *drivers.TaskConfig) string {
	if cfg.TaskDir != "" {
		return filepath.Join(cfg.TaskDir, "container")
	}
	return filepath.Join(d.stateDir, "tasks", cfg.ID)
}

// Start runs a container for cfg and returns once its init process runs the
// kernel's command:
//   - root: a writable layer (overlayfs, else a copy) over cfg.RootFS;
//   - command: the image's Entrypoint followed by cfg.Command, or by the
//     image's Cmd when cfg.Command is empty (Docker's rules);
//   - environment: the image's, plus PATH, HOME and HOSTNAME when it sets
//     none, plus cfg.Env, which wins;
//   - working dir: cfg.WorkDir, else the image's, else "/" (created when
//     missing);
//   - user: cfg.User, else the image's, as uid[:gid] or names from the
//     rootfs's /etc/passwd and /etc/group; root when neither says;
//   - hostname cfg.Hostname, with /etc/hosts, /etc/hostname and
//     /etc/resolv.conf bound from the task dir;
//   - a network namespace of its own with loopback, or cfg.NetNSPath, or
//     the agent's (Options.Network "host", whose /etc/hosts also names
//     the host);
//   - pinned to cfg.Cpuset and cfg.CpusetMems (the cpuset cgroup);
//   - Options: a /dev/shm of ShmBytes (64 MiB by default), Ulimits as the
//     processes' rlimits (-1 unlimited), CapAdd added to runc's default
//     capabilities (bounding, effective, permitted, and inheritable and
//     ambient for a non-root user);
//   - cfg.Mounts bound from the host (read-only when asked; the source
//     must exist, the destination is created in the writable root);
//   - cgroups /<parent>/runc-<ID> with the cpu and mem slots and the pids
//     limit;
//   - stdout and stderr appended to cfg.StdoutPath and cfg.StderrPath;
//   - devices (cfg.Devices): each node at its path (created in the
//     container's /dev or root, bound from the host's node in a user
//     namespace) and allowed in the device cgroup, which denies every
//     other device but runc's defaults (null, zero, tty...); the mounts
//     bound read-only from the host (whatever their ReadOnly says); the
//     environment added over cfg.Env. A reservation that cannot be applied
//     fails the start.
//
// The command runs as the pid namespace's init (pid 1), a child of the
// task's shim, which keeps its files in the container's dir (shim/).
func (d *Driver) Start(ctx context.Context, cfg *drivers.TaskConfig) (_ *drivers.TaskHandle, err error) {
	if err := validateConfig(cfg); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	cfg = cloneConfig(cfg)
	log := d.logger.With("kernel_id", cfg.ID, "session_id", cfg.SessionID)
	image, err := imageDir(cfg)
	if err != nil {
		return nil, err
	}
	if err := checkDevices(cfg.Devices); err != nil {
		return nil, fmt.Errorf("task %s: %w", cfg.ID, err)
	}

	if err := d.tasks.Reserve(cfg.ID); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			d.tasks.Unreserve(cfg.ID)
		}
	}()

	if _, err := os.Lstat(filepath.Join(d.stateDir, cfg.ID)); err == nil {
		return nil, fmt.Errorf("%w: container state %s is left from an earlier container: destroy that task first",
			drivers.ErrTaskExists, filepath.Join(d.stateDir, cfg.ID))
	}

	start := time.Now()
	var ids *idRange
	switch werr := d.usernsWanted(); {
	case werr == nil:
		if ids, err = d.ids.alloc(cfg.ID); err != nil {
			return nil, fmt.Errorf("task %s: %w", cfg.ID, err)
		}
		defer func() {
			if err != nil {
				d.ids.free(cfg.ID, ids)
			}
		}()
	case d.userns == UserNSOn:
		return nil, fmt.Errorf("task %s: the driver must give kernels user namespaces (-userns=true), but cannot: %w", cfg.ID, werr)
	}
	rfs, err := prepareRootFS(d.containerDir(cfg), image, d.rootfsMode, ids, log)
	if err != nil {
		return nil, fmt.Errorf("task %s: %w", cfg.ID, err)
	}
	defer func() {
		if err != nil {
			if rerr := rfs.release(); rerr != nil {
				log.Error("cleaning up the rootfs of a task that failed to start", "error", rerr)
			}
		}
	}()
	proc, err := d.processFor(cfg, rfs.RootFS)
	if err != nil {
		return nil, fmt.Errorf("task %s: %w", cfg.ID, err)
	}
	if cfg.Mounts, err = mapOwnedMounts(rfs.Dir, cfg.Mounts, ids); err != nil {
		return nil, fmt.Errorf("task %s: %w", cfg.ID, err)
	}
	etc, err := writeEtcFiles(rfs.Dir, cfg.Hostname, etcHosts(cfg), ids)
	if err != nil {
		return nil, fmt.Errorf("task %s: writing /etc files: %w", cfg.ID, err)
	}
	lc, rlimits, err := d.containerConfig(cfg, rfs.RootFS, etc, ids)
	if err != nil {
		return nil, fmt.Errorf("task %s: %w", cfg.ID, err)
	}
	proc.Rlimits = rlimits
	spec := &containerSpec{
		Root: d.stateDir, ID: cfg.ID, Config: lc, Process: *proc,
		StdoutPath: cfg.StdoutPath, StderrPath: cfg.StderrPath, MaxLogSize: d.maxLogSize,
	}

	// The leaves' paths, should libcontainer's state be unreadable.
	leaves, err := cgroupLeaves(lc.Cgroups)
	if err != nil {
		return nil, fmt.Errorf("task %s: %w", cfg.ID, err)
	}
	shimDir := filepath.Join(rfs.Dir, shimSubdir)
	cgroupParents.creating.RLock()
	parents, err := makeCgroupParents(lc.Cgroups)
	var sh *shim.Handle
	if err == nil {
		// The shim creates the container, whose init is its child, and
		// returns once the init runs the command.
		sh, err = shim.Launch(ctx, driverName, shimDir, spec)
	}
	cgroupParents.creating.RUnlock()
	if err != nil {
		d.removeCgroupParents(parents, log)
		return nil, fmt.Errorf("task %s: %w", cfg.ID, err)
	}

	ss := sh.State()
	t := &task{
		state: driverState{
			Root: d.stateDir, ContainerID: cfg.ID, InitPid: ss.Pid, InitStartTime: ss.StartTime,
			RootFS: *rfs, CgroupPaths: leaves, CgroupParents: parents, Process: *proc,
			CgroupsVersion: cgroupVersion(),
			ShimDir:        shimDir, ShimPid: ss.ShimPid, ShimStartTime: ss.ShimStartTime,
			DiskLimit: d.diskLimitOf(cfg),
		},
	}
	t.Task = lifecycle.New(kind, t, cfg, ss.StartedAt, log.With("pid", ss.Pid))
	// Signal, Exec, Stats and Destroy go through libcontainer's state,
	// which the shim wrote.
	c, err := libcontainer.Load(d.stateDir, cfg.ID)
	if err == nil {
		t.container = c
		if st, serr := c.State(); serr == nil && len(st.CgroupPaths) > 0 {
			// A copy: libcontainer shares its map and empties it on Destroy.
			t.state.CgroupPaths = maps.Clone(st.CgroupPaths)
		}
	} else {
		err = fmt.Errorf("task %s: loading the container the shim started: %w", cfg.ID, err)
	}
	go t.WaitShim(sh)
	var h *drivers.TaskHandle
	if err == nil {
		h, err = t.Handle(t.state)
	}
	if err != nil {
		d.abandon(t, sh)
		return nil, err
	}
	d.tasks.Set(cfg.ID, t)
	go t.watchDisk(t.state.DiskLimit, d.diskInterval)
	t.Logger.Info("task started", "command", proc.Args, "overlay", rfs.Overlay, "shim_pid", ss.ShimPid,
		"seccomp", lc.Seccomp != nil, "userns", ids != nil, "took", time.Since(start))
	return h, nil
}

// abandon kills the container of a task whose Start fails after its shim
// started it, waits until the init and the shim are gone and removes the
// container's state and cgroups; Start's deferred cleanup releases the
// rootfs.
func (d *Driver) abandon(t *task, sh *shim.Handle) {
	ctx, cancel := context.WithTimeout(context.Background(), destroyTimeout)
	defer cancel()
	if t.container == nil && procAlive(t.state.InitPid, t.state.InitStartTime) {
		_ = unix.Kill(t.state.InitPid, unix.SIGKILL)
	}
	_ = t.KillAll(ctx)
	_ = t.waitShimExit(ctx, shimExitGrace)
	if t.container != nil {
		_ = t.container.Destroy()
	} else {
		_ = os.RemoveAll(filepath.Join(t.state.Root, t.state.ContainerID))
	}
	_ = cgroups.RemovePaths(maps.Clone(t.state.CgroupPaths))
	d.removeCgroupParents(t.state.CgroupParents, t.Logger)
	select {
	case <-sh.Done():
	case <-ctx.Done():
	}
}

// processFor resolves cfg's command, environment, working dir and user
// against the rootfs.
func (d *Driver) processFor(cfg *drivers.TaskConfig, rootfs string) (*processSpec, error) {
	u, err := resolveUser(rootfs, userSpec(cfg))
	if err != nil {
		return nil, err
	}
	p := &processSpec{Args: commandLine(cfg), Cwd: workingDir(cfg), User: *u}
	p.Env = processEnv(cfg, u)
	path, _ := envValue(p.Env, "PATH")
	if _, err := lookPathIn(rootfs, p.Args[0], path, p.Cwd, cfg.Mounts); err != nil {
		return nil, err
	}
	return p, nil
}

// seccompOn says whether kernels get the default seccomp profile.
func (d *Driver) seccompOn() bool { return d.seccomp && seccompBuilt }

// seccompMode describes the kernels' seccomp confinement.
func (d *Driver) seccompMode() string {
	switch {
	case !d.seccomp:
		return "off"
	case !seccompBuilt:
		return "unavailable (binary built without -tags seccomp)"
	default:
		return "default profile"
	}
}

// usernsWanted returns nil when kernels get user namespaces, else why not.
func (d *Driver) usernsWanted() error {
	if d.userns == UserNSOff {
		return errors.New("turned off")
	}
	d.usernsOnce.Do(func() {
		d.usernsErr = usernsSupport()
		if d.usernsErr == nil {
			d.usernsErr = probeIDMappedOverlay(d.stateDir)
		}
		if d.usernsErr != nil && d.userns == UserNSAuto {
			d.logger.Warn("kernels run without user namespaces (container root is host root)", "reason", d.usernsErr)
		}
	})
	return d.usernsErr
}

// diskLimitOf is the task's disk slot, else the driver's disk limit.
func (d *Driver) diskLimitOf(cfg *drivers.TaskConfig) int64 {
	if n := int64(cfg.Resources[SlotDisk].Float()); n > 0 {
		return n
	}
	return d.diskLimit
}

// removeCgroupParents removes the parents of a container's cgroups that a
// runc driver created, where no other cgroup uses them any more.
func (d *Driver) removeCgroupParents(dirs []string, log *slog.Logger) {
	if err := removeCgroupParents(dirs); err != nil {
		log.Warn("cgroup parents left behind", "error", err)
	}
}

// Wait returns a channel that receives the task's exit result once the task
// has exited, at once if it already has. Every call gets its own channel;
// if ctx ends first, nothing is sent.
func (d *Driver) Wait(ctx context.Context, taskID string) (<-chan *drivers.ExitResult, error) {
	return d.tasks.Wait(ctx, taskID)
}

// Stop sends signal (default SIGTERM) to the container's init and SIGKILL
// to all its processes if it has not exited after timeout. It returns once
// the init has exited and no process of the container is left.
//
// The init is the pid namespace's pid 1, which the kernel protects from
// signals it has no handler for. Stop delivers such a signal as SIGKILL
// (the task's result then reports the signal asked for), so that a command
// that would die of SIGTERM elsewhere dies of it in a container too.
func (d *Driver) Stop(ctx context.Context, taskID string, timeout time.Duration, signal string) error {
	sig, err := drivers.ParseSignal(signal)
	if err != nil {
		return err
	}
	return d.tasks.Stop(ctx, taskID, sig, timeout)
}

// Destroy kills every process left of the task (a running task only when
// force is set), waits until they are gone, then removes the container's
// state and cgroups (and the cgroup parents its Start created, once
// unused), unmounts its rootfs, removes its directory and forgets the task.
func (d *Driver) Destroy(ctx context.Context, taskID string, force bool) error {
	return d.tasks.Destroy(ctx, taskID, force, destroyTimeout, func(ctx context.Context, t *task) error {
		// The shim exits right after recording the init's exit status.
		if err := t.waitShimExit(ctx, shimExitGrace); err != nil {
			return err
		}
		var errs []error
		if t.container != nil {
			if err := t.container.Destroy(); err != nil {
				errs = append(errs, fmt.Errorf("destroying container: %w", err))
			}
		}
		// libcontainer removes the leaves it knows; a recovered task whose
		// state was lost has only the paths in its handle. RemovePaths empties
		// the map it gets.
		if err := cgroups.RemovePaths(maps.Clone(t.state.CgroupPaths)); err != nil {
			errs = append(errs, fmt.Errorf("removing cgroups: %w", err))
		}
		if t.container == nil && t.state.Root != "" && t.state.ContainerID != "" {
			_ = os.RemoveAll(filepath.Join(t.state.Root, t.state.ContainerID))
		}
		levels := strings.Count(d.cgroupParent, "/") + 1
		d.removeCgroupParents(append(cgroupParentsOf(t.state.CgroupPaths, levels), t.state.CgroupParents...), t.Logger)
		if err := t.state.RootFS.release(); err != nil {
			errs = append(errs, err)
		} else {
			d.ids.free(t.Config.ID, t.state.RootFS.IDs)
		}
		return errors.Join(errs...)
	})
}

// Inspect reports whether the task runs and, once it exited, how.
func (d *Driver) Inspect(ctx context.Context, taskID string) (*drivers.TaskStatus, error) {
	return d.tasks.Inspect(taskID)
}

// Stats samples the container's CPU time, resident memory and process
// count from its cgroups.
func (d *Driver) Stats(ctx context.Context, taskID string) (*drivers.TaskStats, error) {
	t, err := d.get(taskID)
	if err != nil {
		return nil, err
	}
	if t.Exited() || t.container == nil {
		return nil, fmt.Errorf("%w: %q", drivers.ErrTaskNotRunning, taskID)
	}
	s, err := t.container.Stats()
	if err != nil {
		return nil, fmt.Errorf("task %s stats: %w", taskID, err)
	}
	st := &drivers.TaskStats{Time: time.Now()}
	if cs := s.CgroupStats; cs != nil {
		st.CPUUsageNanos = cs.CpuStats.CpuUsage.TotalUsage
		st.Pids = cs.PidsStats.Current
		mem := cs.MemoryStats.Stats
		for _, k := range []string{"total_rss", "rss", "anon"} { // v1, v1 without hierarchy, v2
			if v := mem[k]; v > 0 {
				st.MemoryRSSBytes = v
				break
			}
		}
	}
	return st, nil
}

// Exec runs opts.Command inside the container (its namespaces, cgroups,
// user, capabilities and working dir) with the kernel's environment plus
// opts.Env, streams the output to opts.Stdout and opts.Stderr as it is
// produced and returns the exit code (128+N when killed by signal N).
// Ending ctx kills the command.
func (d *Driver) Exec(ctx context.Context, taskID string, opts *drivers.ExecOptions) (int, error) {
	if opts == nil || len(opts.Command) == 0 || opts.Command[0] == "" {
		return -1, fmt.Errorf("%w: exec needs a command", drivers.ErrInvalidConfig)
	}
	t, err := d.get(taskID)
	if err != nil {
		return -1, err
	}
	if t.Exited() || t.container == nil {
		return -1, fmt.Errorf("%w: %q", drivers.ErrTaskNotRunning, taskID)
	}
	if err := ctx.Err(); err != nil {
		return -1, fmt.Errorf("exec in task %s: %w", taskID, err)
	}
	ps := t.state.Process
	ps.Args = opts.Command
	ps.Env = envList(ps.Env, opts.Env)
	// The container's root as the host sees it holds whatever the kernel
	// installed since it started (no volumes are mounted into it yet).
	path, _ := envValue(ps.Env, "PATH")
	if _, err := lookPathIn(t.state.RootFS.RootFS, ps.Args[0], path, ps.Cwd, t.Config.Mounts); err != nil {
		return -1, fmt.Errorf("exec in task %s: %w", taskID, err)
	}
	p := newProcess(&ps, false)
	var stdio *execIO
	var console *consoleSocket
	if opts.TTY {
		// libcontainer's init allocates the terminal in the container's
		// devpts, makes it the controlling terminal of the process (a new
		// session) and its stdio, and sends us the master.
		if console, err = newConsoleSocket(); err != nil {
			return -1, fmt.Errorf("exec in task %s: %w", taskID, err)
		}
		defer console.close()
		p.ConsoleSocket, p.ConsoleHeight, p.ConsoleWidth = console.child, opts.Size.Rows, opts.Size.Cols
		stdio = &execIO{}
	} else if stdio, err = newExecIO(opts); err != nil {
		return -1, fmt.Errorf("exec in task %s: %w", taskID, err)
	}
	defer stdio.close()
	stdio.attach(p)
	if err := t.container.Run(p); err != nil {
		if t.Exited() {
			return -1, fmt.Errorf("%w: %q", drivers.ErrTaskNotRunning, taskID)
		}
		return -1, fmt.Errorf("exec in task %s: %w", taskID, err)
	}
	stdio.started()
	if console != nil {
		master, err := console.receive()
		if err != nil {
			_ = p.Signal(unix.SIGKILL)
			_, _ = p.Wait()
			return -1, fmt.Errorf("exec in task %s: receiving its terminal: %w", taskID, err)
		}
		term := ptyio.Serve(master, opts.Stdin, opts.Stdout, opts.Resize)
		defer term.Close(execWaitDelay)
	}
	pid, _ := p.Pid()
	t.Logger.Debug("exec started", "command", opts.Command, "exec_pid", pid)
	waited := make(chan *drivers.ExitResult, 1)
	go func() { waited <- exitResultOf(p.Wait()) }()
	var res *drivers.ExitResult
	select {
	case res = <-waited:
	case <-ctx.Done():
		_ = p.Signal(unix.SIGKILL)
		res = <-waited
	}
	stdio.wait(execWaitDelay)
	if err := ctx.Err(); err != nil {
		return res.ExitCode, fmt.Errorf("exec in task %s: %w", taskID, err)
	}
	return res.ExitCode, res.Err
}

// Recover reattaches to a container started by an earlier agent process,
// with libcontainer.Load on the state root and container ID in
// handle.DriverState, so that Stop, Destroy, Exec and Stats work again,
// and with shim.Reattach on its shim's directory, so that Wait reports how
// the container's init ended, even when it ended while no agent ran. If
// the shim died without recording that, or the handle comes from an agent
// that ran containers without shims, the task is reported with exit code
// -1 and an error wrapping ErrExitCodeUnknown once its init is gone (at
// once when it already is, or when the container's state is lost).
// Recovering a task the driver already knows is a no-op.
func (d *Driver) Recover(ctx context.Context, handle *drivers.TaskHandle) error {
	if err := kind.CheckHandle(handle); err != nil {
		return err
	}
	var st driverState
	if err := json.Unmarshal(handle.DriverState, &st); err != nil || st.Root == "" || !validID.MatchString(st.ContainerID) {
		return fmt.Errorf("%w: task %s: unreadable driver state %q", drivers.ErrInvalidConfig, handle.Config.ID, handle.DriverState)
	}
	cfg := cloneConfig(handle.Config)
	log := d.logger.With("kernel_id", cfg.ID, "session_id", cfg.SessionID, "pid", st.InitPid)
	// The parents this container's Start created go when the last
	// container below them does, whichever driver process destroys it.
	ownCgroupParents(st.CgroupParents)
	t := &task{state: st}
	t.Task = lifecycle.New(kind, t, cfg, handle.StartedAt, log)
	t.Recovered = true
	c, err := libcontainer.Load(st.Root, st.ContainerID)
	if err != nil {
		log.Warn("container state not found; the task can only be destroyed", "error", err)
	} else {
		t.container = c
		if cs, err := c.State(); err == nil {
			if cs.InitProcessPid != st.InitPid || cs.InitProcessStartTime != st.InitStartTime {
				log.Warn("container's init differs from the handle's", "state_pid", cs.InitProcessPid)
			}
			t.state.InitPid, t.state.InitStartTime = cs.InitProcessPid, cs.InitProcessStartTime
			if len(cs.CgroupPaths) > 0 {
				t.state.CgroupPaths = maps.Clone(cs.CgroupPaths)
			}
		}
	}
	if !d.tasks.Add(cfg.ID, t) {
		return nil
	}
	d.ids.mark(cfg.ID, st.RootFS.IDs)
	go t.watchDisk(st.DiskLimit, d.diskInterval)

	why := errNoShim
	if st.ShimDir != "" {
		sh, err := shim.Reattach(st.ShimDir)
		if err == nil && (sh.State().Pid != st.InitPid || sh.State().StartTime != st.InitStartTime) {
			err = fmt.Errorf("shim directory %s belongs to another start of the task (init %d, the handle has %d)",
				st.ShimDir, sh.State().Pid, st.InitPid)
		}
		if err == nil {
			go t.WaitShim(sh)
			log.Info("task recovered", "running", t.initAlive(), "shim_pid", sh.State().ShimPid)
			return nil
		}
		log.Warn("cannot reattach to the container's shim; its exit status is lost", "error", err)
		why = err
	}
	if !t.initAlive() {
		log.Info("recovered task is no longer running; its exit status is unknown")
		t.Finish(kind.UnknownExit(why), time.Time{})
		return nil
	}
	log.Info("task recovered without shim: its exit status will be unknown")
	go t.Poll(recoverPollInterval, t.initAlive, why)
	return nil
}

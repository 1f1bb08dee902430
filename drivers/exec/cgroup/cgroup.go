// Package cgroup gives each exec task its own cgroups (v1 or v2) that limit
// its CPU, memory and number of processes, report its usage and find every one of its processes
// so that none survives the task.
package cgroup

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ErrUnavailable means this host offers no cgroup controller the driver can
// use (not root, controllers missing or not writable).
var ErrUnavailable = errors.New("cgroups unavailable")

// Version is the cgroup hierarchy layout in use.
type Version int

// Cgroup versions.
const (
	None Version = iota // no cgroups: tasks run without limits
	V1                  // one hierarchy per controller
	V2                  // the unified hierarchy
)

// String returns "none", "v1" or "v2".
func (v Version) String() string {
	switch v {
	case V1:
		return "v1"
	case V2:
		return "v2"
	default:
		return "none"
	}
}

// CFSPeriodMicros is the CFS scheduling period used for CPU quotas.
const CFSPeriodMicros = 100000

// minCFSQuotaMicros is the smallest quota the kernel accepts.
const minCFSQuotaMicros = 1000

// Controller names as they appear in mountinfo and Group.Dirs.
const (
	CPU     = "cpu"
	CPUAcct = "cpuacct"
	Memory  = "memory"
	Pids    = "pids"
	Devices = "devices"
	Cpuset  = "cpuset"
	Unified = "unified" // the key of the single v2 directory in Group.Dirs
)

// Limits are the resource limits of one task; zero means unlimited.
type Limits struct {
	// CPU is the number of cores (fractional allowed) the task may use.
	CPU float64
	// MemoryBytes is the most memory the task may use before it is OOM-killed.
	MemoryBytes int64
	// Pids is the most processes (and threads) the task may have at once,
	// which stops fork bombs.
	Pids int64
	// DenyDevices are device nodes the task must not open, read, write or
	// mknod: its device cgroup (v1: the devices controller; v2: an eBPF
	// device program) denies them and allows every other device. Create
	// fails when the node offers no device cgroup (see CanDenyDevices).
	DenyDevices []Device
	// Cpus and Mems pin the task to these CPUs and NUMA nodes ("0-1,4"),
	// through the cpuset controller; empty: not pinned. Create fails when
	// Cpus is set and the node has no cpuset controller (see CanPin).
	Cpus, Mems string
}

// Manager creates per-task cgroups below one parent cgroup (e.g. "corral")
// in every hierarchy it found.
type Manager struct {
	version Version
	// parents maps a controller (v1) or Unified (v2) to the parent directory.
	parents     map[string]string
	limitCPU    bool
	limitMemory bool
	limitPids   bool
	// devicesParent is the parent directory in the v1 devices hierarchy,
	// "" when that controller is not mounted.
	devicesParent string
	// cpusetParent is the parent directory in the v1 cpuset hierarchy,
	// "" when that controller is not mounted; on v2, pinCPUs says whether
	// the cpuset controller is enabled for the tasks' cgroups.
	cpusetParent string
	pinCPUs      bool
}

// Detect reads /proc/self/mountinfo and prepares a Manager that creates task
// cgroups below parent. It fails with ErrUnavailable when the process is not
// root or no cpu or memory controller can be used.
func Detect(parent string) (*Manager, error) {
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("%w: not running as root", ErrUnavailable)
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	defer f.Close()
	mounts, err := ParseMountinfo(f)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	return NewManager(mounts, parent)
}

// NewManager prepares a Manager from the given mounts: cgroup v1 when a v1
// cpu or memory controller is mounted, otherwise cgroup v2 when a cgroup2
// mount offers cpu or memory. It creates the parent cgroup and, on v2,
// enables the controllers for its children.
func NewManager(mounts []Mount, parent string) (*Manager, error) {
	if err := validName(parent); err != nil {
		return nil, err
	}
	m := &Manager{parents: map[string]string{}}
	for _, ctrl := range []string{CPU, Memory, CPUAcct, Pids} {
		for _, mt := range mounts {
			if !mt.V2 && slices.Contains(mt.Controllers, ctrl) {
				m.parents[ctrl] = filepath.Join(mt.Point, parent)
				break
			}
		}
	}
	if m.parents[CPU] != "" || m.parents[Memory] != "" {
		m.version = V1
		for ctrl, dir := range m.parents {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return nil, fmt.Errorf("%w: creating %s cgroup: %v", ErrUnavailable, ctrl, err)
			}
		}
		m.limitCPU = m.parents[CPU] != ""
		m.limitMemory = m.parents[Memory] != ""
		m.limitPids = m.parents[Pids] != ""
		for _, mt := range mounts {
			if !mt.V2 && slices.Contains(mt.Controllers, Devices) {
				m.devicesParent = filepath.Join(mt.Point, parent)
				if err := os.MkdirAll(m.devicesParent, 0o755); err != nil {
					return nil, fmt.Errorf("%w: creating devices cgroup: %v", ErrUnavailable, err)
				}
				break
			}
		}
		for _, mt := range mounts {
			if !mt.V2 && slices.Contains(mt.Controllers, Cpuset) {
				dir := filepath.Join(mt.Point, parent)
				// A v1 cpuset cgroup takes no task before its cpus and
				// mems are set: a new parent inherits its own parent's.
				if err := makeCpusetDir(mt.Point, dir); err == nil {
					m.cpusetParent, m.pinCPUs = dir, true
				}
				break
			}
		}
		return m, nil
	}
	return newV2(mounts, parent)
}

func newV2(mounts []Mount, parent string) (*Manager, error) {
	var mt *Mount
	for i := range mounts {
		if mounts[i].V2 && (mt == nil || mounts[i].Point == "/sys/fs/cgroup") {
			mt = &mounts[i]
		}
	}
	if mt == nil {
		return nil, fmt.Errorf("%w: no cgroup v1 cpu or memory controller and no cgroup2 mount", ErrUnavailable)
	}
	b, err := os.ReadFile(filepath.Join(mt.Point, "cgroup.controllers"))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	avail := strings.Fields(string(b))
	var enable []string
	for _, c := range []string{CPU, Memory, Pids, Cpuset} {
		if slices.Contains(avail, c) {
			enable = append(enable, c)
		}
	}
	if !slices.Contains(enable, CPU) && !slices.Contains(enable, Memory) {
		return nil, fmt.Errorf("%w: cgroup2 at %s offers neither cpu nor memory", ErrUnavailable, mt.Point)
	}
	dir := filepath.Join(mt.Point, parent)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("%w: creating cgroup: %v", ErrUnavailable, err)
	}
	for _, d := range []string{mt.Point, dir} {
		if err := enableControllers(d, enable); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
		}
	}
	return &Manager{
		version:     V2,
		parents:     map[string]string{Unified: dir},
		limitCPU:    slices.Contains(enable, CPU),
		limitMemory: slices.Contains(enable, Memory),
		limitPids:   slices.Contains(enable, Pids),
		pinCPUs:     slices.Contains(enable, Cpuset),
	}, nil
}

// makeCpusetDir creates the v1 cpuset cgroup dir and the directories
// between it and the hierarchy's root, each with the cpus and mems of its
// parent where it has none.
func makeCpusetDir(root, dir string) error {
	if dir == root {
		return nil
	}
	parent := filepath.Dir(dir)
	if err := makeCpusetDir(root, parent); err != nil {
		return err
	}
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	return inheritCpuset(parent, dir)
}

// inheritCpuset copies cpuset.cpus and cpuset.mems from parent into dir
// where dir's are empty (v1).
func inheritCpuset(parent, dir string) error {
	for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		if strings.TrimSpace(string(b)) != "" {
			continue
		}
		v, err := os.ReadFile(filepath.Join(parent, f))
		if err != nil {
			return err
		}
		if err := write(dir, f, strings.TrimSpace(string(v))); err != nil {
			return err
		}
	}
	return nil
}

// CanPin reports whether tasks can be pinned to CPUs by a cpuset cgroup.
func (m *Manager) CanPin() bool { return m.pinCPUs }

// enableControllers makes ctrls available to the children of the v2 cgroup dir.
func enableControllers(dir string, ctrls []string) error {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.subtree_control"))
	if err != nil {
		return err
	}
	have := strings.Fields(string(b))
	for _, c := range ctrls {
		if slices.Contains(have, c) {
			continue
		}
		if err := write(dir, "cgroup.subtree_control", "+"+c); err != nil {
			return fmt.Errorf("enabling %s controller in %s: %w", c, dir, err)
		}
	}
	return nil
}

// Version returns the cgroup version the manager uses.
func (m *Manager) Version() Version { return m.version }

// CanLimitCPU reports whether CPU quotas are enforced.
func (m *Manager) CanLimitCPU() bool { return m.limitCPU }

// CanLimitMemory reports whether memory limits are enforced.
func (m *Manager) CanLimitMemory() bool { return m.limitMemory }

// CanLimitPids reports whether limits on the number of processes are
// enforced (the pids controller).
func (m *Manager) CanLimitPids() bool { return m.limitPids }

// Create makes the cgroups of task id and applies l to them, except the
// CPU quota: LimitCPU applies it once the task's init has started. The
// init's own start (a Go runtime, mounts, an exec) inside a small quota
// (0.05 CPU is 5 ms per 100 ms period) would otherwise wait for the next
// period, making starts up to a period slower; the task runs for the
// millisecond in between with its memory and pids limits already set.
func (m *Manager) Create(id string, l Limits) (*Group, error) {
	if err := validName(id); err != nil {
		return nil, err
	}
	if len(l.DenyDevices) > 0 && !m.CanDenyDevices() {
		return nil, fmt.Errorf("%w: this node has no device cgroup (cgroup v1 devices controller or cgroup v2) to deny %s with",
			ErrDevicesUnavailable, l.DenyDevices[0].Path)
	}
	g := &Group{Version: m.version, Dirs: map[string]string{}}
	for ctrl, parent := range m.parents {
		g.Dirs[ctrl] = filepath.Join(parent, id)
	}
	if l.Cpus != "" && !m.pinCPUs {
		return nil, fmt.Errorf("%w: this node has no cpuset cgroup controller to pin a task to CPUs %s with", ErrUnavailable, l.Cpus)
	}
	if l.Cpus != "" && m.version == V1 {
		g.Dirs[Cpuset] = filepath.Join(m.cpusetParent, id)
	}
	if len(l.DenyDevices) > 0 && m.version == V1 {
		// The task gets a devices cgroup of its own only when it must be
		// denied devices: the parent's, the host's, allows them all.
		g.Dirs[Devices] = filepath.Join(m.devicesParent, id)
	}
	for _, dir := range g.dirs() {
		if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
			_ = g.remove(context.Background())
			return nil, fmt.Errorf("creating cgroup: %w", err)
		}
	}
	l.CPU = 0
	if err := g.apply(l); err != nil {
		_ = g.remove(context.Background())
		return nil, err
	}
	if err := g.denyDevices(l.DenyDevices); err != nil {
		_ = g.remove(context.Background())
		return nil, err
	}
	if err := g.pin(l.Cpus, l.Mems); err != nil {
		_ = g.remove(context.Background())
		return nil, err
	}
	return g, nil
}

// LimitCPU sets the task's CPU quota to cpu cores (no quota for 0).
func (g *Group) LimitCPU(cpu float64) error {
	quota, period := cpuQuota(cpu)
	switch g.Version {
	case V1:
		d := g.Dirs[CPU]
		if d == "" {
			return nil
		}
		if quota == "max" {
			quota = "-1"
		}
		return write(d, "cpu.cfs_quota_us", quota)
	case V2:
		d := g.Dirs[Unified]
		if _, err := os.Stat(filepath.Join(d, "cpu.max")); err == nil || cpu > 0 {
			return write(d, "cpu.max", quota+" "+period)
		}
	}
	return nil
}

// cpuQuota returns the CFS quota for cpu cores ("max" for none) and the
// period, in microseconds.
func cpuQuota(cpu float64) (quota, period string) {
	quota = "max"
	if cpu > 0 {
		q := int64(math.Round(cpu * CFSPeriodMicros))
		quota = strconv.FormatInt(max(q, minCFSQuotaMicros), 10)
	}
	return quota, strconv.Itoa(CFSPeriodMicros)
}

// Group is the set of cgroup directories of one task. It is plain data so
// that the driver can persist it and find the cgroups again after a restart.
type Group struct {
	Version Version `json:"version"`
	// Dirs maps a controller (v1: "cpu", "memory", "cpuacct", "pids" and,
	// for a task denied devices, "devices") or "unified" (v2) to the task's
	// cgroup directory.
	Dirs map[string]string `json:"dirs"`
}

// dirs returns the distinct directories of g in a stable order.
func (g *Group) dirs() []string {
	var out []string
	for _, d := range g.Dirs {
		if !slices.Contains(out, d) {
			out = append(out, d)
		}
	}
	slices.Sort(out)
	return out
}

// ProcsFiles returns the cgroup.procs files a process must write its pid to
// in order to join every cgroup of g.
func (g *Group) ProcsFiles() []string {
	var out []string
	for _, d := range g.dirs() {
		out = append(out, filepath.Join(d, "cgroup.procs"))
	}
	return out
}

// pin writes the task's cpuset: mems first (a v1 cpuset takes no cpus
// without them), the parent's mems when none are given.
func (g *Group) pin(cpus, mems string) error {
	if cpus == "" {
		return nil
	}
	d := g.Dirs[Cpuset]
	if g.Version == V2 {
		d = g.Dirs[Unified]
	}
	if d == "" {
		return nil
	}
	if mems == "" && g.Version == V1 {
		b, err := os.ReadFile(filepath.Join(filepath.Dir(d), "cpuset.mems"))
		if err != nil {
			return fmt.Errorf("reading the parent's cpuset.mems: %w", err)
		}
		mems = strings.TrimSpace(string(b))
	}
	if mems != "" {
		if err := write(d, "cpuset.mems", mems); err != nil {
			return err
		}
	}
	return write(d, "cpuset.cpus", cpus)
}

// UnifiedDir returns the v2 directory of g, or "" on v1.
func (g *Group) UnifiedDir() string { return g.Dirs[Unified] }

func (g *Group) apply(l Limits) error {
	quota, period := cpuQuota(l.CPU)
	mem := "max"
	if l.MemoryBytes > 0 {
		mem = strconv.FormatInt(l.MemoryBytes, 10)
	}
	pids := "max"
	if l.Pids > 0 {
		pids = strconv.FormatInt(l.Pids, 10)
	}
	switch g.Version {
	case V1:
		if d := g.Dirs[CPU]; d != "" {
			if quota == "max" {
				quota = "-1"
			}
			if err := write(d, "cpu.cfs_period_us", period); err != nil {
				return err
			}
			if err := write(d, "cpu.cfs_quota_us", quota); err != nil {
				return err
			}
		}
		if d := g.Dirs[Memory]; d != "" {
			if mem == "max" {
				mem = "-1"
			}
			if err := write(d, "memory.limit_in_bytes", mem); err != nil {
				return err
			}
			// Without swap accounting the file is missing; the limit
			// above still holds for RAM.
			if _, err := os.Stat(filepath.Join(d, "memory.memsw.limit_in_bytes")); err == nil {
				_ = write(d, "memory.memsw.limit_in_bytes", mem)
			}
		}
		if d := g.Dirs[Pids]; d != "" {
			if err := write(d, "pids.max", pids); err != nil {
				return err
			}
		}
	case V2:
		d := g.Dirs[Unified]
		if _, err := os.Stat(filepath.Join(d, "cpu.max")); err == nil || l.CPU > 0 {
			if err := write(d, "cpu.max", quota+" "+period); err != nil {
				return err
			}
		}
		if _, err := os.Stat(filepath.Join(d, "memory.max")); err == nil || l.MemoryBytes > 0 {
			if err := write(d, "memory.max", mem); err != nil {
				return err
			}
			if l.MemoryBytes > 0 {
				if _, err := os.Stat(filepath.Join(d, "memory.swap.max")); err == nil {
					_ = write(d, "memory.swap.max", "0")
				}
			}
		}
		if _, err := os.Stat(filepath.Join(d, "pids.max")); err == nil || l.Pids > 0 {
			if err := write(d, "pids.max", pids); err != nil {
				return err
			}
		}
	}
	return nil
}

// Pids returns the processes currently in g.
func (g *Group) Pids() ([]int, error) {
	var pids []int
	for _, f := range g.ProcsFiles() {
		b, err := os.ReadFile(f)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			return nil, err
		}
		for _, s := range strings.Fields(string(b)) {
			pid, err := strconv.Atoi(s)
			if err == nil && !slices.Contains(pids, pid) {
				pids = append(pids, pid)
			}
		}
	}
	return pids, nil
}

// Stats is a usage sample of a Group; the Has fields say which values the
// cgroup could provide.
type Stats struct {
	CPUUsageNanos  uint64 // CPU time used by all processes, ever
	HasCPU         bool   // CPUUsageNanos came from the cgroup
	MemoryRSSBytes uint64 // anonymous resident memory charged to the cgroup
	HasMemory      bool   // MemoryRSSBytes came from the cgroup
	Pids           uint64 // processes in the cgroup now
}

// Stats samples the CPU time, resident memory and process count of g.
func (g *Group) Stats() (Stats, error) {
	var s Stats
	pids, err := g.Pids()
	if err != nil {
		return s, err
	}
	s.Pids = uint64(len(pids))
	switch g.Version {
	case V1:
		if d := g.Dirs[CPUAcct]; d != "" {
			if b, err := os.ReadFile(filepath.Join(d, "cpuacct.usage")); err == nil {
				if v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64); err == nil {
					s.CPUUsageNanos, s.HasCPU = v, true
				}
			}
		}
		if d := g.Dirs[Memory]; d != "" {
			kv := readKV(filepath.Join(d, "memory.stat"))
			if v, ok := kv["total_rss"]; ok {
				s.MemoryRSSBytes, s.HasMemory = v, true
			} else if v, ok := kv["rss"]; ok {
				s.MemoryRSSBytes, s.HasMemory = v, true
			}
		}
	case V2:
		d := g.Dirs[Unified]
		if v, ok := readKV(filepath.Join(d, "cpu.stat"))["usage_usec"]; ok {
			s.CPUUsageNanos, s.HasCPU = v*1000, true
		}
		if v, ok := readKV(filepath.Join(d, "memory.stat"))["anon"]; ok {
			s.MemoryRSSBytes, s.HasMemory = v, true
		}
	}
	return s, nil
}

// OOMKilled reports whether the kernel OOM-killed a process of g because
// of its memory limit.
func (g *Group) OOMKilled() bool {
	switch g.Version {
	case V1:
		if d := g.Dirs[Memory]; d != "" {
			return readKV(filepath.Join(d, "memory.oom_control"))["oom_kill"] > 0
		}
	case V2:
		return readKV(filepath.Join(g.Dirs[Unified], "memory.events"))["oom_kill"] > 0
	}
	return false
}

// Kill sends SIGKILL to every process of g until none is left or ctx ends.
func (g *Group) Kill(ctx context.Context) error {
	for {
		pids, err := g.Pids()
		if err != nil {
			return fmt.Errorf("listing cgroup processes: %w", err)
		}
		if len(pids) == 0 {
			return nil
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("processes %v survived SIGKILL: %w", pids, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// Destroy kills what is left in g and removes its directories. Directories
// that are already gone are not an error.
func (g *Group) Destroy(ctx context.Context) error {
	if err := g.Kill(ctx); err != nil {
		return err
	}
	return g.remove(ctx)
}

func (g *Group) remove(ctx context.Context) error {
	var errs []error
	for _, d := range g.dirs() {
		for {
			err := os.Remove(d)
			if err == nil || errors.Is(err, fs.ErrNotExist) {
				break
			}
			// EBUSY: the kernel has not yet released exiting tasks.
			if !errors.Is(err, syscall.EBUSY) {
				errs = append(errs, fmt.Errorf("removing cgroup: %w", err))
				break
			}
			select {
			case <-ctx.Done():
				errs = append(errs, fmt.Errorf("removing cgroup %s: %w", d, ctx.Err()))
			case <-time.After(10 * time.Millisecond):
				continue
			}
			break
		}
	}
	return errors.Join(errs...)
}

// validName rejects names that are not a single path element.
func validName(name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00\n") {
		return fmt.Errorf("invalid cgroup name %q: want a single path element", name)
	}
	return nil
}

func write(dir, file, value string) error {
	if err := os.WriteFile(filepath.Join(dir, file), []byte(value), 0o644); err != nil {
		return fmt.Errorf("writing %q to %s: %w", value, filepath.Join(dir, file), err)
	}
	return nil
}

// readKV parses "key value" lines such as memory.stat; unreadable files and
// lines yield an empty or partial map.
func readKV(path string) map[string]uint64 {
	out := map[string]uint64{}
	b, err := os.ReadFile(path)
	if err != nil {
		return out
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), " ")
		if !ok {
			continue
		}
		if n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64); err == nil {
			out[k] = n
		}
	}
	return out
}

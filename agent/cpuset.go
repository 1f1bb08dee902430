package agent

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/corral-dev/corral/plugins/drivers"
	"github.com/corral-dev/corral/structs"
)

// Cpusets: a kernel whose cpu slot is a whole number n >= 1 gets n whole
// physical cores (every hyperthread of each) of its own, on one NUMA node
// when one has room (its GPUs' node first), so that a launcher binding
// ranks to cores (mpirun, torchrun) binds them to cores nobody else runs
// on. Kernels with a fractional cpu slot, and whole ones that find too
// few free cores, share the pool of CPUs that no kernel holds exclusively
// at their start. The allocation lives in memory and is rebuilt from the
// recovered kernels after an agent restart.

// sysCPURoot is where the kernel describes the CPUs.
const sysCPURoot = "/sys/devices/system"

// cpuCore is one physical core: its hardware threads and NUMA node.
type cpuCore struct {
	Node int
	CPUs []int // ascending
}

// cpuTopology is the node's online CPUs grouped into physical cores,
// ordered by NUMA node and then by lowest CPU.
type cpuTopology struct {
	Cores []cpuCore
}

// readCPUTopology reads the topology below root (sysCPURoot on a real
// node): root/cpu/online, root/cpu/cpuN/topology/thread_siblings_list and
// root/node/nodeM/cpulist. A CPU whose siblings cannot be read is a core of
// its own; without node files every CPU is on node 0.
func readCPUTopology(root string) (*cpuTopology, error) {
	b, err := os.ReadFile(filepath.Join(root, "cpu", "online"))
	if err != nil {
		return nil, fmt.Errorf("reading online CPUs: %w", err)
	}
	online, err := parseCPUList(string(b))
	if err != nil {
		return nil, fmt.Errorf("reading online CPUs: %w", err)
	}
	nodeOf := map[int]int{}
	nodes, _ := filepath.Glob(filepath.Join(root, "node", "node[0-9]*"))
	for _, dir := range nodes {
		n, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(dir), "node"))
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, "cpulist"))
		if err != nil {
			continue
		}
		cpus, err := parseCPUList(string(b))
		if err != nil {
			return nil, fmt.Errorf("reading the CPUs of NUMA node %d: %w", n, err)
		}
		for _, c := range cpus {
			nodeOf[c] = n
		}
	}
	isOnline := map[int]bool{}
	for _, c := range online {
		isOnline[c] = true
	}
	seen := map[int]bool{}
	t := &cpuTopology{}
	for _, c := range online {
		if seen[c] {
			continue
		}
		core := cpuCore{Node: nodeOf[c], CPUs: []int{c}}
		b, err := os.ReadFile(filepath.Join(root, "cpu", "cpu"+strconv.Itoa(c), "topology", "thread_siblings_list"))
		if err == nil {
			if sib, err := parseCPUList(string(b)); err == nil && slices.Contains(sib, c) {
				core.CPUs = nil
				for _, s := range sib {
					if isOnline[s] && !seen[s] {
						core.CPUs = append(core.CPUs, s)
					}
				}
			}
		}
		for _, s := range core.CPUs {
			seen[s] = true
		}
		t.Cores = append(t.Cores, core)
	}
	t.sort()
	return t, nil
}

func (t *cpuTopology) sort() {
	slices.SortStableFunc(t.Cores, func(a, b cpuCore) int {
		if a.Node != b.Node {
			return a.Node - b.Node
		}
		return a.CPUs[0] - b.CPUs[0]
	})
}

// parseCPUList parses the kernel's list format ("0-3,8,10-11").
func parseCPUList(s string) ([]int, error) {
	s = strings.TrimSpace(s)
	var out []int
	if s == "" {
		return out, nil
	}
	for part := range strings.SplitSeq(s, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil {
			return nil, fmt.Errorf("bad CPU list %q", s)
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil || b < a {
				return nil, fmt.Errorf("bad CPU list %q", s)
			}
		}
		for c := a; c <= b; c++ {
			out = append(out, c)
		}
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// formatCPUList writes CPUs in the kernel's list format, ranges folded.
func formatCPUList(cpus []int) string {
	cpus = slices.Clone(cpus)
	slices.Sort(cpus)
	cpus = slices.Compact(cpus)
	var b strings.Builder
	for i := 0; i < len(cpus); {
		j := i
		for j+1 < len(cpus) && cpus[j+1] == cpus[j]+1 {
			j++
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.Itoa(cpus[i]))
		if j > i {
			b.WriteString("-" + strconv.Itoa(cpus[j]))
		}
		i = j + 1
	}
	return b.String()
}

// errFewCores is an exclusive request that the free whole cores cannot meet.
var errFewCores = errors.New("not enough free whole cores")

// cpusetAllocator hands out whole cores to kernels. It is safe for
// concurrent use.
type cpusetAllocator struct {
	mu    sync.Mutex
	topo  *cpuTopology
	owner []string // by core index: the kernel holding it, "" when free
}

func newCPUSetAllocator(t *cpuTopology) *cpusetAllocator {
	return &cpusetAllocator{topo: t, owner: make([]string, len(t.Cores))}
}

// cpuset is a set of CPUs and the NUMA nodes of their memory, in the
// kernel's list format.
type cpuset struct {
	CPUs, Mems string
}

// exclusive gives kernel n whole cores of its own: on the first of
// prefer (its GPUs' NUMA nodes, in order) with n free cores, else on the
// lowest node with n free cores, else the lowest free cores of all nodes
// (prefer's first). Within a node the lowest free cores go first. It
// fails with errFewCores when fewer than n cores are free; a kernel that
// already holds cores gets them again.
func (a *cpusetAllocator) exclusive(kernel string, n int, prefer []int) (cpuset, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if held := a.heldBy(kernel); len(held) > 0 {
		return a.setOf(held), nil
	}
	if n < 1 {
		return cpuset{}, fmt.Errorf("a kernel needs at least one core, asked for %d", n)
	}
	freeOn := map[int][]int{} // node -> free core indexes, ascending
	var nodes []int
	total := 0
	for i, c := range a.topo.Cores {
		if a.owner[i] != "" {
			continue
		}
		if _, ok := freeOn[c.Node]; !ok {
			nodes = append(nodes, c.Node)
		}
		freeOn[c.Node] = append(freeOn[c.Node], i)
		total++
	}
	if total < n {
		return cpuset{}, fmt.Errorf("%w: %d asked, %d of %d free", errFewCores, n, total, len(a.topo.Cores))
	}
	var pick []int
	for _, node := range prefer {
		if len(freeOn[node]) >= n {
			pick = freeOn[node][:n]
			break
		}
	}
	if pick == nil {
		slices.Sort(nodes)
		for _, node := range nodes {
			if len(freeOn[node]) >= n {
				pick = freeOn[node][:n]
				break
			}
		}
	}
	if pick == nil {
		// Spanning nodes: the preferred nodes' cores first.
		order := slices.Clone(prefer)
		for _, node := range nodes {
			if !slices.Contains(order, node) {
				order = append(order, node)
			}
		}
		for _, node := range order {
			for _, i := range freeOn[node] {
				if len(pick) < n {
					pick = append(pick, i)
				}
			}
		}
	}
	for _, i := range pick {
		a.owner[i] = kernel
	}
	return a.setOf(pick), nil
}

// heldBy returns the indexes of the cores kernel holds; a.mu is held.
func (a *cpusetAllocator) heldBy(kernel string) []int {
	var out []int
	for i, o := range a.owner {
		if o == kernel {
			out = append(out, i)
		}
	}
	return out
}

// setOf returns the CPUs and nodes of the cores with indexes idx.
func (a *cpusetAllocator) setOf(idx []int) cpuset {
	var cpus, nodes []int
	for _, i := range idx {
		c := a.topo.Cores[i]
		cpus = append(cpus, c.CPUs...)
		if c.Node >= 0 {
			nodes = append(nodes, c.Node)
		}
	}
	return cpuset{CPUs: formatCPUList(cpus), Mems: formatCPUList(nodes)}
}

// shared returns the pool: the CPUs of the cores no kernel holds ("" when
// every core is held).
func (a *cpusetAllocator) shared() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var cpus []int
	for i, c := range a.topo.Cores {
		if a.owner[i] == "" {
			cpus = append(cpus, c.CPUs...)
		}
	}
	return formatCPUList(cpus)
}

// release frees the cores kernel holds.
func (a *cpusetAllocator) release(kernel string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for i, o := range a.owner {
		if o == kernel {
			a.owner[i] = ""
		}
	}
}

// restore marks the cores whose CPUs are in cpus ("2-3") as kernel's, for
// a kernel recovered after an agent restart. A core already held by
// another kernel stays that kernel's (and is reported in the error).
func (a *cpusetAllocator) restore(kernel, cpus string) error {
	list, err := parseCPUList(cpus)
	if err != nil {
		return err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	var clash []string
	for i, c := range a.topo.Cores {
		if !slices.ContainsFunc(c.CPUs, func(x int) bool { return slices.Contains(list, x) }) {
			continue
		}
		switch a.owner[i] {
		case "", kernel:
			a.owner[i] = kernel
		default:
			clash = append(clash, fmt.Sprintf("core %v held by %s", c.CPUs, a.owner[i]))
		}
	}
	if len(clash) > 0 {
		return fmt.Errorf("restoring cpuset %s of kernel %s: %s", cpus, kernel, strings.Join(clash, ", "))
	}
	return nil
}

// wholeCPUs returns the kernel's cpu slot as a whole number of cores, 0
// when it is fractional or below 1.
func wholeCPUs(k *structs.Kernel) int {
	cpu := k.Resources[structs.SlotCPU].Float()
	if cpu < 1 || cpu != math.Trunc(cpu) {
		return 0
	}
	return int(cpu)
}

// agentCPUSets is the agent's allocator, made on first use from the
// node's topology and the kernels recovered from the last run.
type agentCPUSets struct {
	once  sync.Once
	alloc *cpusetAllocator // nil: no topology, no cpusets
}

// cpusets returns the agent's allocator, nil when the node's topology is
// unreadable (kernels then run without cpusets).
func (a *Agent) cpusets() *cpusetAllocator {
	a.cpusetState.once.Do(func() {
		t, err := readCPUTopology(sysCPURoot)
		if err != nil || len(t.Cores) == 0 {
			a.logger.Warn("kernels get no cpusets: the CPU topology is unreadable", "error", err)
			return
		}
		alloc := newCPUSetAllocator(t)
		a.mu.Lock()
		var live []*kernelRunner
		for _, r := range a.kernels {
			if r.handle != nil {
				live = append(live, r)
			}
		}
		a.mu.Unlock()
		for _, r := range live {
			if cs := r.kernel.Cpuset; cs != "" {
				if err := alloc.restore(r.id, cs); err != nil {
					a.logger.Warn("recovered kernel's cpuset not restored", "kernel_id", r.id, "error", err)
				}
			}
		}
		a.cpusetState.alloc = alloc
	})
	return a.cpusetState.alloc
}

// gpuNUMANodes returns the NUMA nodes of the kernel's GPUs, in the order
// of its GPUs, from the inventory or, where that does not know it, from
// the PCI device's numa_node in sysfs.
func (a *Agent) gpuNUMANodes(k *structs.Kernel) []int {
	inv := a.gpus()
	if inv == nil {
		return nil
	}
	var nodes []int
	for _, id := range k.GPUs {
		g, _ := inv.Device(id)
		if g == nil {
			continue
		}
		n := g.NUMANode
		if n < 0 && g.PCIBusID != "" {
			if b, err := os.ReadFile(filepath.Join("/sys/bus/pci/devices", strings.ToLower(g.PCIBusID), "numa_node")); err == nil {
				if v, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
					n = v
				}
			}
		}
		if n >= 0 && !slices.Contains(nodes, n) {
			nodes = append(nodes, n)
		}
	}
	return nodes
}

// placeCPUs picks the kernel's cpuset at its start: whole cores of its
// own for a whole cpu slot (exclusive true), else the shared pool. It
// returns empty sets when the node has no readable topology.
func (a *Agent) placeCPUs(k *structs.Kernel) (cs cpuset, exclusive bool) {
	alloc := a.cpusets()
	if alloc == nil {
		return cpuset{}, false
	}
	log := a.logger.With("kernel_id", k.ID, "session_id", k.SessionID)
	if n := wholeCPUs(k); n > 0 {
		cs, err := alloc.exclusive(k.ID, n, a.gpuNUMANodes(k))
		if err == nil {
			return cs, true
		}
		log.Warn("kernel shares the CPU pool instead of whole cores of its own", "cpu", n, "reason", err)
	}
	return cpuset{CPUs: alloc.shared()}, false
}

// releaseCPUs frees the kernel's cores, if it held any.
func (a *Agent) releaseCPUs(id string) {
	if alloc := a.cpusets(); alloc != nil {
		alloc.release(id)
	}
}

// applyOptions completes the kernel's task config at its start: its
// cpuset (CORRAL_CPUSET in its environment; an exclusive one recorded in
// the kernel, persisted with its handle and reported when it runs), its
// runtime options and, when they ask for it, the agent's InfiniBand
// devices.
func (r *kernelRunner) applyOptions(log interface{ Info(string, ...any) }, cfg *drivers.TaskConfig) error {
	cs, exclusive := r.a.placeCPUs(r.kernel)
	cfg.Cpuset, cfg.CpusetMems = cs.CPUs, cs.Mems
	r.kernel.Cpuset = ""
	if exclusive {
		r.kernel.Cpuset = cs.CPUs
		log.Info("kernel pinned to whole cores of its own", "cpuset", cs.CPUs, "mems", cs.Mems)
	}
	if cs.CPUs != "" {
		cfg.Env["CORRAL_CPUSET"] = cs.CPUs
	}
	cfg.Options = r.kernel.Options.Copy()
	if cfg.Options != nil && cfg.Options.InfiniBand {
		devs, err := withInfiniBand(cfg.Devices, r.a.cfg.DevRoot)
		if err != nil {
			return err
		}
		cfg.Devices = devs
	}
	return nil
}

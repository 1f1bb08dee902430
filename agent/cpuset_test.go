package agent

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/corral-dev/corral/internal/devnode"
	"github.com/corral-dev/corral/plugins/drivers"
	"github.com/corral-dev/corral/structs"
)

// topo builds a topology of sockets x cores x threads, where thread t of
// core c on socket s is CPU t*(sockets*cores) + s*cores + c (as Linux
// numbers them on x86: all first threads, then all second threads).
func topo(sockets, cores, threads int) *cpuTopology {
	t := &cpuTopology{}
	for s := range sockets {
		for c := range cores {
			core := cpuCore{Node: s}
			for th := range threads {
				core.CPUs = append(core.CPUs, th*sockets*cores+s*cores+c)
			}
			t.Cores = append(t.Cores, core)
		}
	}
	t.sort()
	return t
}

func TestCPUSetAllocation(t *testing.T) {
	type step struct {
		kernel  string
		n       int   // 0: release kernel
		prefer  []int // GPU NUMA nodes
		cpus    string
		mems    string
		fewErr  bool
		pool    string // the shared pool after the step
		restore string // restore kernel with these CPUs instead
	}
	cases := []struct {
		name  string
		topo  *cpuTopology
		steps []step
	}{
		{"2 cores no SMT", topo(1, 2, 1), []step{
			{kernel: "a", n: 1, cpus: "0", mems: "0", pool: "1"},
			{kernel: "b", n: 1, cpus: "1", mems: "0", pool: ""},
			{kernel: "c", n: 1, fewErr: true, pool: ""},
			{kernel: "a", n: 0, pool: "0"},
			{kernel: "c", n: 1, cpus: "0", mems: "0", pool: ""},
		}},
		{"2 sockets x 4 cores x 2 threads", topo(2, 4, 2), []step{
			// Core 0 of socket 0 is CPUs 0 and 8.
			{kernel: "a", n: 2, cpus: "0-1,8-9", mems: "0", pool: "2-7,10-15"},
			// Two cores left on node 0: a 3-core kernel goes to node 1.
			{kernel: "b", n: 3, cpus: "4-6,12-14", mems: "1", pool: "2-3,7,10-11,15"},
			// Nothing fits one node: the lowest free cores of both.
			{kernel: "c", n: 3, cpus: "2-3,7,10-11,15", mems: "0-1", pool: ""},
			{kernel: "d", n: 1, fewErr: true, pool: ""},
			{kernel: "b", n: 0, pool: "4-6,12-14"},
			{kernel: "a", n: 0, pool: "0-1,4-6,8-9,12-14"},
		}},
		{"GPU NUMA preference", topo(2, 4, 2), []step{
			{kernel: "gpu1", n: 2, prefer: []int{1}, cpus: "4-5,12-13", mems: "1", pool: "0-3,6-11,14-15"},
			// Node 1 has 2 free cores, too few for 3: the lowest node with room.
			{kernel: "gpu1b", n: 3, prefer: []int{1}, cpus: "0-2,8-10", mems: "0", pool: "3,6-7,11,14-15"},
			// Spanning nodes: the preferred node's cores first.
			{kernel: "gpu1c", n: 3, prefer: []int{1}, cpus: "3,6-7,11,14-15", mems: "0-1", pool: ""},
		}},
		{"restore after restart", topo(2, 2, 2), []step{
			// Kernel "old" held socket 1's first core (CPUs 2 and 6).
			{kernel: "old", restore: "2,6", pool: "0-1,3-5,7"},
			{kernel: "new", n: 2, prefer: []int{1}, cpus: "0-1,4-5", mems: "0", pool: "3,7"},
			{kernel: "old", n: 0, pool: "2-3,6-7"},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a := newCPUSetAllocator(tc.topo)
			for i, s := range tc.steps {
				switch {
				case s.restore != "":
					if err := a.restore(s.kernel, s.restore); err != nil {
						t.Fatalf("step %d: restore: %v", i, err)
					}
				case s.n == 0:
					a.release(s.kernel)
				default:
					cs, err := a.exclusive(s.kernel, s.n, s.prefer)
					if s.fewErr {
						if !errors.Is(err, errFewCores) {
							t.Fatalf("step %d: %d cores for %s: err %v, want errFewCores", i, s.n, s.kernel, err)
						}
						break
					}
					if err != nil {
						t.Fatalf("step %d: %d cores for %s: %v", i, s.n, s.kernel, err)
					}
					if cs.CPUs != s.cpus || cs.Mems != s.mems {
						t.Fatalf("step %d: %s got cpus %q mems %q, want %q %q", i, s.kernel, cs.CPUs, cs.Mems, s.cpus, s.mems)
					}
					// Asking again gives the same cores.
					if again, _ := a.exclusive(s.kernel, s.n, s.prefer); again != cs {
						t.Fatalf("step %d: %s asked again got %v, want %v", i, s.kernel, again, cs)
					}
				}
				if got := a.shared(); got != s.pool {
					t.Fatalf("step %d: shared pool %q, want %q", i, got, s.pool)
				}
			}
		})
	}
}

func TestCPUSetRestoreClash(t *testing.T) {
	a := newCPUSetAllocator(topo(1, 2, 1))
	if _, err := a.exclusive("a", 1, nil); err != nil {
		t.Fatal(err)
	}
	if err := a.restore("b", "0"); err == nil {
		t.Fatal("restoring a core another kernel holds succeeded")
	}
}

func TestCPUList(t *testing.T) {
	for in, want := range map[string]string{"0-3,8,10-11\n": "0-3,8,10-11", "5": "5", "3,1,2": "1-3", "": ""} {
		l, err := parseCPUList(in)
		if err != nil {
			t.Fatalf("%q: %v", in, err)
		}
		if got := formatCPUList(l); got != want {
			t.Errorf("%q: got %q, want %q", in, got, want)
		}
	}
	for _, bad := range []string{"a", "3-1", "1-"} {
		if _, err := parseCPUList(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

// TestReadCPUTopology reads a fake sysfs of 2 nodes x 2 cores x 2
// threads with CPU 7 offline.
func TestReadCPUTopology(t *testing.T) {
	root := t.TempDir()
	write := func(p, s string) {
		t.Helper()
		p = filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(s+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("cpu/online", "0-6")
	sib := map[int]string{0: "0,4", 1: "1,5", 2: "2,6", 3: "3,7", 4: "0,4", 5: "1,5", 6: "2,6"}
	for c, s := range sib {
		write("cpu/cpu"+strconv.Itoa(c)+"/topology/thread_siblings_list", s)
	}
	write("node/node0/cpulist", "0-1,4-5")
	write("node/node1/cpulist", "2-3,6-7")
	got, err := readCPUTopology(root)
	if err != nil {
		t.Fatal(err)
	}
	want := []cpuCore{{0, []int{0, 4}}, {0, []int{1, 5}}, {1, []int{2, 6}}, {1, []int{3}}}
	if !slices.EqualFunc(got.Cores, want, func(a, b cpuCore) bool { return a.Node == b.Node && slices.Equal(a.CPUs, b.CPUs) }) {
		t.Fatalf("cores %v, want %v", got.Cores, want)
	}
}

// TestInfiniBandNodes lists fake /dev/infiniband nodes: the verbs, CM,
// umad and issm nodes, not other files.
func TestInfiniBandNodes(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("making device nodes needs root")
	}
	root := t.TempDir()
	if nodes, err := infinibandNodes(root); err != nil || len(nodes) != 0 {
		t.Fatalf("no /dev/infiniband: %v, %v", nodes, err)
	}
	if _, err := withInfiniBand(nil, root); err == nil {
		t.Fatal("asking for InfiniBand on an agent without it succeeded")
	}
	major, err := devnode.UnusedCharMajor()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, "infiniband")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for i, name := range []string{"uverbs0", "rdma_cm", "umad0", "issm0"} {
		if err := devnode.Make(filepath.Join(dir, name), major, i); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "README"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := withInfiniBand(nil, root)
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, n := range r.Nodes {
		paths = append(paths, n.Path)
		if n.Type != "c" || n.Major != int64(major) {
			t.Errorf("node %+v: want a char device of major %d", n, major)
		}
	}
	want := []string{"/dev/infiniband/issm0", "/dev/infiniband/rdma_cm", "/dev/infiniband/umad0", "/dev/infiniband/uverbs0"}
	if !slices.Equal(paths, want) {
		t.Fatalf("nodes %v, want %v", paths, want)
	}
}

// TestApplyOptions runs the start hook on this node's real topology: two
// 1-cpu kernels get different whole cores, reported and in their
// environment; a fractional kernel shares what is left.
func TestApplyOptions(t *testing.T) {
	topo, err := readCPUTopology(sysCPURoot)
	if err != nil || len(topo.Cores) < 2 {
		t.Skipf("needs a readable topology of 2 cores or more (%v)", err)
	}
	a := &Agent{logger: slog.New(slog.DiscardHandler), kernels: map[string]*kernelRunner{}, cfg: Config{DevRoot: t.TempDir()}}
	start := func(id string, cpu float64, o *structs.KernelOptions) (*kernelRunner, *drivers.TaskConfig, error) {
		k := &structs.Kernel{ID: id, Resources: structs.Slots{structs.SlotCPU: structs.Quantity(cpu * structs.QuantityScale)}, Options: o}
		r := newKernelRunner(a, k, nil)
		cfg := &drivers.TaskConfig{ID: id, Env: map[string]string{}}
		return r, cfg, r.applyOptions(a.logger, cfg)
	}
	r1, c1, err1 := start("k1", 1, nil)
	r2, c2, err2 := start("k2", 1, &structs.KernelOptions{ShmBytes: 1 << 30})
	if err := errors.Join(err1, err2); err != nil {
		t.Fatal(err)
	}
	if c1.Cpuset == "" || c1.Cpuset == c2.Cpuset || r1.kernel.Cpuset != c1.Cpuset || r2.kernel.Cpuset != c2.Cpuset {
		t.Fatalf("cpusets %q and %q (kernels %q, %q): want two different exclusive sets", c1.Cpuset, c2.Cpuset, r1.kernel.Cpuset, r2.kernel.Cpuset)
	}
	if c1.Env["CORRAL_CPUSET"] != c1.Cpuset || c1.CpusetMems == "" {
		t.Errorf("k1: CORRAL_CPUSET %q mems %q, want %q and its node", c1.Env["CORRAL_CPUSET"], c1.CpusetMems, c1.Cpuset)
	}
	if c2.Options == nil || c2.Options.ShmBytes != 1<<30 {
		t.Errorf("k2's options not passed on: %+v", c2.Options)
	}
	want := a.cpusets().shared()
	r3, c3, err := start("k3", 0.5, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c3.Cpuset != want || r3.kernel.Cpuset != "" {
		t.Errorf("fractional kernel: cpuset %q (reported %q), want the pool %q, reported empty", c3.Cpuset, r3.kernel.Cpuset, want)
	}
	a.releaseCPUs("k1")
	pool, _ := parseCPUList(a.cpusets().shared())
	freed, _ := parseCPUList(c1.Cpuset)
	for _, c := range freed {
		if !slices.Contains(pool, c) {
			t.Errorf("after k1 ended the pool %v lacks its CPU %d", pool, c)
		}
	}
	if _, _, err := start("k4", 0.5, &structs.KernelOptions{InfiniBand: true}); err == nil || !strings.Contains(err.Error(), "InfiniBand") {
		t.Errorf("InfiniBand on an agent without it: err = %v", err)
	}
}

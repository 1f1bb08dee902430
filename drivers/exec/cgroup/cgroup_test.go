package cgroup

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

func TestParseMountinfo(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []Mount
	}{
		{
			name: "hybrid v1",
			in: `22 27 0:21 / /proc rw,relatime - proc proc rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate`,
			want: []Mount{
				{Point: "/sys/fs/cgroup/cpu,cpuacct", Root: "/", Controllers: []string{"cpu", "cpuacct"}},
				{Point: "/sys/fs/cgroup/memory", Root: "/", Controllers: []string{"memory"}},
				{Point: "/sys/fs/cgroup/systemd", Root: "/"},
				{Point: "/sys/fs/cgroup/unified", Root: "/", V2: true},
			},
		},
		{
			name: "pure v2 in a namespace",
			in:   `29 23 0:26 /kubepods/pod1 /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw`,
			want: []Mount{{Point: "/sys/fs/cgroup", Root: "/kubepods/pod1", V2: true}},
		},
		{
			name: "escaped mount point",
			in:   `50 31 0:40 / /mnt/my\040cgroups rw - cgroup cgroup rw,memory`,
			want: []Mount{{Point: "/mnt/my cgroups", Root: "/", Controllers: []string{"memory"}}},
		},
		{name: "none", in: "22 27 0:21 / /proc rw,relatime - proc proc rw\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseMountinfo(strings.NewReader(tc.in))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %+v\nwant %+v", got, tc.want)
			}
		})
	}
	if _, err := ParseMountinfo(strings.NewReader("1 2 - cgroup\n")); err == nil {
		t.Error("malformed line accepted")
	}
}

// fakeV1 makes one directory per controller, as mount points of a v1 host.
func fakeV1(t *testing.T, ctrls ...string) []Mount {
	t.Helper()
	root := t.TempDir()
	var mounts []Mount
	for _, c := range ctrls {
		dir := filepath.Join(root, c)
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		mounts = append(mounts, Mount{Point: dir, Root: "/", Controllers: []string{c}})
	}
	return mounts
}

func read(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestV1Limits(t *testing.T) {
	tests := []struct {
		name      string
		limits    Limits
		wantQuota string
		wantMem   string
	}{
		{"limited", Limits{CPU: 1.5, MemoryBytes: 256 << 20}, "150000", "268435456"},
		{"unlimited", Limits{}, "-1", "-1"},
		{"tiny cpu is clamped", Limits{CPU: 0.001}, "1000", "-1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, err := NewManager(fakeV1(t, CPU, Memory, CPUAcct), "corral")
			if err != nil {
				t.Fatal(err)
			}
			if m.Version() != V1 || !m.CanLimitCPU() || !m.CanLimitMemory() {
				t.Fatalf("manager = %+v", m)
			}
			g, err := m.Create("task1", tc.limits)
			if err != nil {
				t.Fatal(err)
			}
			if len(g.Dirs) != 3 || len(g.ProcsFiles()) != 3 {
				t.Fatalf("group = %+v", g)
			}
			for c, d := range g.Dirs {
				if !strings.HasSuffix(d, "/"+c+"/corral/task1") {
					t.Errorf("%s dir = %s", c, d)
				}
			}
			if got := read(t, filepath.Join(g.Dirs[CPU], "cpu.cfs_period_us")); got != "100000" {
				t.Errorf("period = %s", got)
			}
			// No quota until the task's init started (LimitCPU).
			if got := read(t, filepath.Join(g.Dirs[CPU], "cpu.cfs_quota_us")); got != "-1" {
				t.Errorf("quota at creation = %s, want -1", got)
			}
			if err := g.LimitCPU(tc.limits.CPU); err != nil {
				t.Fatal(err)
			}
			if got := read(t, filepath.Join(g.Dirs[CPU], "cpu.cfs_quota_us")); got != tc.wantQuota {
				t.Errorf("quota = %s, want %s", got, tc.wantQuota)
			}
			if got := read(t, filepath.Join(g.Dirs[Memory], "memory.limit_in_bytes")); got != tc.wantMem {
				t.Errorf("memory = %s, want %s", got, tc.wantMem)
			}
		})
	}
}

func TestV1SharedMount(t *testing.T) {
	root := t.TempDir()
	m, err := NewManager([]Mount{
		{Point: filepath.Join(root, "cpu,cpuacct"), Controllers: []string{CPU, CPUAcct}},
	}, "corral")
	if err != nil {
		t.Fatal(err)
	}
	if !m.CanLimitCPU() || m.CanLimitMemory() {
		t.Errorf("cpu %v memory %v, want cpu only", m.CanLimitCPU(), m.CanLimitMemory())
	}
	g, err := m.Create("t", Limits{CPU: 2})
	if err != nil {
		t.Fatal(err)
	}
	if files := g.ProcsFiles(); len(files) != 1 {
		t.Errorf("procs files = %v, want one for the shared hierarchy", files)
	}
}

// fakeV2 makes a cgroup2 mount point offering controllers.
func fakeV2(t *testing.T, controllers string) []Mount {
	t.Helper()
	root := t.TempDir()
	for f, v := range map[string]string{"cgroup.controllers": controllers, "cgroup.subtree_control": ""} {
		if err := os.WriteFile(filepath.Join(root, f), []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return []Mount{{Point: root, Root: "/", V2: true}}
}

func TestV2(t *testing.T) {
	mounts := fakeV2(t, "cpuset cpu io memory pids")
	// A real cgroupfs creates these files in every new cgroup.
	parent := filepath.Join(mounts[0].Point, "corral")
	if err := os.MkdirAll(parent, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(parent, "cgroup.subtree_control"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	m, err := NewManager(mounts, "corral")
	if err != nil {
		t.Fatal(err)
	}
	if m.Version() != V2 || !m.CanLimitCPU() || !m.CanLimitMemory() || !m.CanLimitPids() || !m.CanPin() {
		t.Fatalf("manager = %+v", m)
	}
	// The fake file keeps only the last write.
	if got := read(t, filepath.Join(parent, "cgroup.subtree_control")); got != "+cpuset" {
		t.Errorf("parent subtree_control = %q", got)
	}
	g, err := m.Create("task1", Limits{CPU: 0.5, MemoryBytes: 1 << 20, Pids: 64})
	if err != nil {
		t.Fatal(err)
	}
	if g.UnifiedDir() != filepath.Join(parent, "task1") || len(g.ProcsFiles()) != 1 {
		t.Fatalf("group = %+v", g)
	}
	if got := read(t, filepath.Join(g.UnifiedDir(), "pids.max")); got != "64" {
		t.Errorf("pids.max = %q", got)
	}
	if b, err := os.ReadFile(filepath.Join(g.UnifiedDir(), "cpu.max")); err == nil && strings.TrimSpace(string(b)) != "max 100000" {
		t.Errorf("cpu.max at creation = %q, want no quota until the init started", b)
	}
	if err := g.LimitCPU(0.5); err != nil {
		t.Fatal(err)
	}
	if got := read(t, filepath.Join(g.UnifiedDir(), "cpu.max")); got != "50000 100000" {
		t.Errorf("cpu.max = %q", got)
	}
	if got := read(t, filepath.Join(g.UnifiedDir(), "memory.max")); got != "1048576" {
		t.Errorf("memory.max = %q", got)
	}
	// Existing limit files are reset when the task has no limits.
	g2, err := m.Create("task1", Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if got := read(t, filepath.Join(g2.UnifiedDir(), "cpu.max")); got != "max 100000" {
		t.Errorf("cpu.max = %q", got)
	}
	if got := read(t, filepath.Join(g2.UnifiedDir(), "memory.max")); got != "max" {
		t.Errorf("memory.max = %q", got)
	}
}

func TestUnavailable(t *testing.T) {
	tests := []struct {
		name   string
		mounts func(t *testing.T) []Mount
	}{
		{"no mounts", func(*testing.T) []Mount { return nil }},
		{"v1 without cpu or memory", func(t *testing.T) []Mount { return fakeV1(t, "pids", "freezer") }},
		{"v2 without cpu or memory", func(t *testing.T) []Mount { return fakeV2(t, "io pids") }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := NewManager(tc.mounts(t), "corral"); !errors.Is(err, ErrUnavailable) {
				t.Errorf("err = %v, want ErrUnavailable", err)
			}
		})
	}
}

func TestInvalidNames(t *testing.T) {
	m, err := NewManager(fakeV1(t, Memory), "corral")
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"", ".", "..", "a/b", "../../etc"} {
		if _, err := m.Create(id, Limits{}); err == nil {
			t.Errorf("Create(%q) succeeded", id)
		}
	}
	if _, err := NewManager(fakeV1(t, Memory), "../x"); err == nil {
		t.Error("parent with a slash accepted")
	}
}

func TestGroupFiles(t *testing.T) {
	m, err := NewManager(fakeV1(t, CPU, Memory, CPUAcct), "corral")
	if err != nil {
		t.Fatal(err)
	}
	g, err := m.Create("t", Limits{})
	if err != nil {
		t.Fatal(err)
	}
	write := func(ctrl, file, content string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(g.Dirs[ctrl], file), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// Pids that do not exist, so that Kill cannot hit anything.
	write(CPU, "cgroup.procs", "1073741800\n1073741801\n")
	write(Memory, "cgroup.procs", "1073741801\n")
	write(CPUAcct, "cpuacct.usage", "123456789\n")
	write(Memory, "memory.stat", "cache 10\nrss 20\ntotal_rss 4096\n")
	write(Memory, "memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n")
	pids, err := g.Pids()
	if err != nil || len(pids) != 2 {
		t.Errorf("Pids = %v, %v; want 2 distinct", pids, err)
	}
	s, err := g.Stats()
	if err != nil {
		t.Fatal(err)
	}
	want := Stats{CPUUsageNanos: 123456789, HasCPU: true, MemoryRSSBytes: 4096, HasMemory: true, Pids: 2}
	if s != want {
		t.Errorf("Stats = %+v, want %+v", s, want)
	}
	if !g.OOMKilled() {
		t.Error("OOMKilled = false")
	}
	// A fake directory is not a cgroup: the pids never leave, so Kill
	// gives up with the context.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := g.Kill(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Kill = %v, want context.Canceled", err)
	}
	for _, ctrl := range []string{CPU, Memory} {
		write(ctrl, "cgroup.procs", "")
	}
	// remove of non-empty fake dirs fails with ENOTEMPTY, not EBUSY; the
	// real cgroupfs has no such files.
	if err := g.Destroy(context.Background()); err == nil {
		t.Error("Destroy of a directory with files succeeded")
	}
}

func TestV1Pids(t *testing.T) {
	for _, tc := range []struct {
		limit int64
		want  string
	}{{64, "64"}, {0, "max"}} {
		m, err := NewManager(fakeV1(t, CPU, Memory, Pids), "corral")
		if err != nil {
			t.Fatal(err)
		}
		if !m.CanLimitPids() {
			t.Fatal("CanLimitPids = false with a pids hierarchy")
		}
		g, err := m.Create("task1", Limits{Pids: tc.limit})
		if err != nil {
			t.Fatal(err)
		}
		if got := read(t, filepath.Join(g.Dirs[Pids], "pids.max")); got != tc.want {
			t.Errorf("limit %d: pids.max = %q, want %q", tc.limit, got, tc.want)
		}
	}
	m, err := NewManager(fakeV1(t, CPU, Memory), "corral")
	if err != nil {
		t.Fatal(err)
	}
	if m.CanLimitPids() {
		t.Error("CanLimitPids = true without a pids hierarchy")
	}
}

// TestV1Cpuset checks that a pinned task gets a v1 cpuset cgroup below a
// parent that inherited the root's cpus and mems, with its mems written
// before its cpus, and that an unpinned task gets none.
func TestV1Cpuset(t *testing.T) {
	mounts := fakeV1(t, CPU, Memory, Cpuset)
	root := mounts[2].Point
	for f, v := range map[string]string{"cpuset.cpus": "0-3", "cpuset.mems": "0-1"} {
		if err := os.WriteFile(filepath.Join(root, f), []byte(v+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	m, err := NewManager(mounts, "corral")
	if err != nil {
		t.Fatal(err)
	}
	if !m.CanPin() {
		t.Fatal("CanPin = false with a cpuset hierarchy")
	}
	if got := read(t, filepath.Join(root, "corral", "cpuset.cpus")); got != "0-3" {
		t.Errorf("parent cpuset.cpus = %q, want the root's 0-3", got)
	}
	g, err := m.Create("pinned", Limits{Cpus: "2"})
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, "corral", "pinned")
	if g.Dirs[Cpuset] != dir || !slices.Contains(g.ProcsFiles(), filepath.Join(dir, "cgroup.procs")) {
		t.Fatalf("group = %+v, want the cpuset dir %s joined", g, dir)
	}
	if cpus, mems := read(t, filepath.Join(dir, "cpuset.cpus")), read(t, filepath.Join(dir, "cpuset.mems")); cpus != "2" || mems != "0-1" {
		t.Errorf("task cpuset = %q mems %q, want 2 and the parent's 0-1", cpus, mems)
	}
	g, err = m.Create("free", Limits{CPU: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := g.Dirs[Cpuset]; ok {
		t.Errorf("an unpinned task got a cpuset cgroup: %+v", g)
	}
	noCpuset, err := NewManager(fakeV1(t, CPU, Memory), "corral")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := noCpuset.Create("pinned", Limits{Cpus: "1"}); !errors.Is(err, ErrUnavailable) {
		t.Errorf("pinning without a cpuset controller: err = %v, want ErrUnavailable", err)
	}
}

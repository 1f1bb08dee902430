package gpu

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/corral-dev/corral/gpu/fakenvml"
	"github.com/corral-dev/corral/structs"
)

var (
	libOnce sync.Once
	libPath string
	libErr  error
)

// fakeLib builds the fake libnvidia-ml once per test binary.
func fakeLib(t *testing.T) string {
	t.Helper()
	libOnce.Do(func() {
		dir, err := os.MkdirTemp("", "fakenvml")
		if err != nil {
			libErr = err
			return
		}
		libPath, libErr = fakenvml.Build(dir)
	})
	if libErr != nil {
		t.Fatal(libErr)
	}
	return libPath
}

// openMachine points the fake library at m and opens it.
func openMachine(t *testing.T, m *fakenvml.Machine) *NVML {
	t.Helper()
	lib := fakeLib(t)
	cfg := filepath.Join(t.TempDir(), "machine")
	if err := m.Write(cfg); err != nil {
		t.Fatal(err)
	}
	t.Setenv(fakenvml.ConfigEnv, cfg)
	n, err := Open(lib)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Shutdown)
	return n
}

func TestInventoryEightGPUs(t *testing.T) {
	n := openMachine(t, fakenvml.EightH100(true))
	inv, err := n.Inventory()
	if err != nil {
		t.Fatal(err)
	}
	if inv.DriverVersion != "550.54.15" || inv.CUDAVersion != "12.4" || inv.NVMLVersion != "12.550.54.15" {
		t.Errorf("versions = %q %q %q", inv.DriverVersion, inv.CUDAVersion, inv.NVMLVersion)
	}
	if len(inv.Devices) != 8 {
		t.Fatalf("%d devices, want 8", len(inv.Devices))
	}
	for i, g := range inv.Devices {
		if g.Index != i || g.Minor != i || g.Name != "NVIDIA H100 80GB HBM3" || g.MemoryBytes != 80*fakenvml.GiB ||
			g.NUMANode != i/4 || !strings.HasPrefix(g.UUID, "GPU-") || g.Unhealthy != "" {
			t.Errorf("device %d = %+v", i, g)
		}
		if want := strings.ToLower(fakenvml.EightH100(false).GPUs[i].BusID[4:]); g.PCIBusID != want {
			t.Errorf("device %d bus = %q, want %q", i, g.PCIBusID, want)
		}
		for j, o := range inv.Devices {
			if i == j {
				continue
			}
			l := g.Links[o.UUID]
			same := i/4 == j/4
			if same && (l.NVLinks != 2 || l.Level != structs.GPULinkSingle) {
				t.Errorf("link %d-%d = %+v, want 2 NVLinks on one switch", i, j, l)
			}
			if !same && (l.NVLinks != 0 || l.Level != structs.GPULinkSystem) {
				t.Errorf("link %d-%d = %+v, want no NVLink, system level", i, j, l)
			}
		}
	}
	g7 := inv.Devices[7]
	if !g7.MIGMode || len(g7.MIG) != 7 {
		t.Fatalf("GPU 7: MIG mode %v with %d instances, want 7", g7.MIGMode, len(g7.MIG))
	}
	for k, m := range g7.MIG {
		if m.Profile != "1g.10gb" || m.MemoryBytes != 10*fakenvml.GiB || m.GIID != 7+k || !strings.HasPrefix(m.UUID, "MIG-") {
			t.Errorf("MIG %d = %+v", k, m)
		}
	}
	s := inv.Slots()
	if s[structs.SlotCUDADevice] != structs.Whole(7) || s[structs.SlotCUDAMem] != structs.Whole(7*80*fakenvml.GiB) ||
		s["cuda.mig-1g.10gb"] != structs.Whole(7) {
		t.Errorf("slots = %v", s)
	}
}

func TestXIDAndVanish(t *testing.T) {
	m := fakenvml.EightH100(false)
	m.GPUs[2].XIDAfterMs, m.GPUs[2].XID = 300, 79
	m.GPUs[5].VanishAfterMs = 300
	n := openMachine(t, m)
	if _, err := n.Inventory(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan XIDEvent, 1)
	done := make(chan error, 1)
	go func() { done <- n.Watch(ctx, func(e XIDEvent) { got <- e }) }()
	select {
	case e := <-got:
		if e.UUID != m.GPUs[2].UUID || e.XID != 79 {
			t.Fatalf("event %+v", e)
		}
	case err := <-done:
		t.Fatalf("Watch ended: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("no XID event within 10s")
	}
	inv, err := n.Inventory()
	if err != nil {
		t.Fatal(err)
	}
	if g := inv.Devices[2]; !strings.HasPrefix(g.Unhealthy, "XID 79") {
		t.Errorf("GPU 2 after XID: unhealthy %q", g.Unhealthy)
	}
	if g := inv.Devices[5]; g.UUID != m.GPUs[5].UUID || !strings.HasPrefix(g.Unhealthy, "vanished") {
		t.Errorf("GPU 5 after it fell off the bus: %+v", g)
	}
	if s := inv.Slots(); s[structs.SlotCUDADevice] != structs.Whole(6) {
		t.Errorf("capacity %v, want 6 healthy GPUs", s)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestProcesses(t *testing.T) {
	m := fakenvml.EightH100(false)
	m.GPUs[0].Procs = []fakenvml.Proc{{Pid: 4242, Memory: 3 << 30, SMPercent: 40}}
	m.GPUs[1].Procs = []fakenvml.Proc{{Pid: 4242, Memory: 1 << 30, SMPercent: 20}, {Pid: 7, Memory: 5, SMPercent: 1}}
	n := openMachine(t, m)
	procs, err := n.Processes()
	if err != nil {
		t.Fatal(err)
	}
	p := procs[4242]
	if p == nil || p.MemoryBytes != 4<<30 || p.SMPercent != 60 || len(p.Devices) != 2 {
		t.Fatalf("pid 4242: %+v", p)
	}
	if procs[7] == nil || procs[7].MemoryBytes != 5 {
		t.Fatalf("pid 7: %+v", procs[7])
	}
}

// TestNoDriver: without a library, with a library that is not NVML, and
// with NVML whose init fails, Open says so and calls nothing more (a call
// after a failed init would kill the test binary).
func TestNoDriver(t *testing.T) {
	notNVML := filepath.Join(t.TempDir(), "libother.so")
	if err := os.WriteFile(notNVML, []byte("not a library"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv(fakenvml.ConfigEnv, "") // the fake's init then fails
	for _, path := range []string{filepath.Join(t.TempDir(), "missing.so"), notNVML, "/lib/x86_64-linux-gnu/libc.so.6", fakeLib(t)} {
		n, err := Open(path)
		if err == nil {
			n.Shutdown()
			t.Fatalf("Open(%s) succeeded", path)
		}
		if !errors.Is(err, ErrNoDriver) {
			t.Errorf("Open(%s) = %v, want ErrNoDriver", path, err)
		}
	}
}

func mknodChar(t *testing.T, path string, major, minor uint32) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := mknod(path, major, minor); err != nil {
		t.Skipf("making device nodes needs root: %v", err)
	}
}

func TestReservation(t *testing.T) {
	n := openMachine(t, fakenvml.EightH100(true))
	inv, err := n.Inventory()
	if err != nil {
		t.Fatal(err)
	}
	dev := t.TempDir()
	for i := 0; i < 7; i++ { // no node for GPU 7: it is denied by number
		mknodChar(t, filepath.Join(dev, "nvidia"+string(rune('0'+i))), 195, uint32(i))
	}
	mknodChar(t, filepath.Join(dev, "nvidiactl"), 195, 255)
	mknodChar(t, filepath.Join(dev, "nvidia-uvm"), 510, 0)
	caps := filepath.Join(t.TempDir(), "mig-minors")
	if err := os.WriteFile(caps, []byte("gpu7/gi9/access 84\ngpu7/gi9/ci0/access 85\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	mknodChar(t, filepath.Join(dev, "nvidia-caps", "nvidia-cap84"), 237, 84)
	mknodChar(t, filepath.Join(dev, "nvidia-caps", "nvidia-cap85"), 237, 85)
	lib := structs.DeviceMount{HostPath: "/usr/lib/libcuda.so.1", Path: "/usr/lib/libcuda.so.1", ReadOnly: true}
	opts := ReservationOptions{DevRoot: dev, MIGMinors: caps, DriverFiles: []structs.DeviceMount{lib}}

	a, b := inv.Devices[0].UUID, inv.Devices[3].UUID
	r, err := Reservation(inv, []string{a, b}, opts)
	if err != nil {
		t.Fatal(err)
	}
	paths := func(ns []structs.DeviceNode) string {
		var out []string
		for _, n := range ns {
			out = append(out, n.Path)
		}
		return strings.Join(out, " ")
	}
	if got := paths(r.Nodes); got != "/dev/nvidia0 /dev/nvidia3 /dev/nvidiactl /dev/nvidia-uvm" {
		t.Errorf("nodes = %s", got)
	}
	if r.Nodes[1].Major != 195 || r.Nodes[1].Minor != 3 || r.Nodes[1].Type != "c" || r.Nodes[3].Major != 510 {
		t.Errorf("node numbers %+v", r.Nodes)
	}
	if got := paths(r.Deny); got != "/dev/nvidia1 /dev/nvidia2 /dev/nvidia4 /dev/nvidia5 /dev/nvidia6 /dev/nvidia7" {
		t.Errorf("deny = %s", got)
	}
	if r.Deny[5].Major != 195 || r.Deny[5].Minor != 7 {
		t.Errorf("a GPU without a node is denied by number: %+v", r.Deny[5])
	}
	if r.Env["NVIDIA_VISIBLE_DEVICES"] != a+","+b || r.Env["CUDA_VISIBLE_DEVICES"] != a+","+b {
		t.Errorf("env = %v", r.Env)
	}
	if len(r.Mounts) != 1 || r.Mounts[0] != lib {
		t.Errorf("mounts = %v", r.Mounts)
	}

	// A MIG slice: its parent's node, the capability nodes, its UUID.
	mig := inv.Devices[7].MIG[2] // GI 9, CI 0
	r, err = Reservation(inv, []string{mig.UUID}, opts)
	if err == nil {
		t.Fatalf("GPU 7 has no node in %s, yet its MIG slice got %+v", dev, r)
	}
	mknodChar(t, filepath.Join(dev, "nvidia7"), 195, 7)
	if r, err = Reservation(inv, []string{mig.UUID}, opts); err != nil {
		t.Fatal(err)
	}
	if got := paths(r.Nodes); got != "/dev/nvidia7 /dev/nvidia-caps/nvidia-cap84 /dev/nvidia-caps/nvidia-cap85 /dev/nvidiactl /dev/nvidia-uvm" {
		t.Errorf("MIG nodes = %s", got)
	}
	if r.Env["CUDA_VISIBLE_DEVICES"] != mig.UUID {
		t.Errorf("MIG env = %v", r.Env)
	}

	if _, err := Reservation(inv, []string{"GPU-nope"}, opts); err == nil || !strings.Contains(err.Error(), "not on this node") {
		t.Errorf("unknown UUID: %v", err)
	}
	inv.Devices[1].Unhealthy = "XID 79"
	if _, err := Reservation(inv, []string{inv.Devices[1].UUID}, opts); err == nil || !strings.Contains(err.Error(), "unhealthy") {
		t.Errorf("unhealthy GPU: %v", err)
	}
	if r, err := Reservation(inv, nil, opts); r != nil || err != nil {
		t.Errorf("no GPUs: %v, %v", r, err)
	}
}

func TestLdconfigLibraries(t *testing.T) {
	out := `1234 libs found in cache
	libnvidia-ml.so.1 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1
	libnvidia-ml.so.1 (libc6) => /usr/lib/i386-linux-gnu/libnvidia-ml.so.1
	libcuda.so.1 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libcuda.so.1
	libcudart.so.12 (libc6,x86-64) => /usr/local/cuda/lib64/libcudart.so.12
	libz.so.1 (libc6,x86-64) => /lib/x86_64-linux-gnu/libz.so.1
`
	got := ldconfigLibraries(out)
	if len(got) != 2 || got[0].HostPath != "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1" ||
		got[1].HostPath != "/usr/lib/x86_64-linux-gnu/libcuda.so.1" || !got[0].ReadOnly {
		t.Fatalf("libraries = %+v", got)
	}
}

func TestCDISpec(t *testing.T) {
	dir := t.TempDir()
	spec := `cdiVersion: 0.5.0
kind: nvidia.com/gpu
devices:
- name: all
containerEdits:
  mounts:
  - hostPath: /usr/lib/x86_64-linux-gnu/libcuda.so.550.54.15
    containerPath: /usr/lib/x86_64-linux-gnu/libcuda.so.550.54.15
    options: [ro, nosuid, nodev, bind]
  - hostPath: /usr/bin/nvidia-smi
    containerPath: /usr/bin/nvidia-smi
`
	if err := os.WriteFile(filepath.Join(dir, "other.json"), []byte(`{"kind":"vendor.com/fpga"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "nvidia.yaml"), []byte(spec), 0o644); err != nil {
		t.Fatal(err)
	}
	mounts, src, err := DriverFiles([]string{filepath.Join(dir, "missing"), dir})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(src, "nvidia.yaml") || len(mounts) != 2 || mounts[1].Path != "/usr/bin/nvidia-smi" || !mounts[1].ReadOnly {
		t.Fatalf("from %s: %+v", src, mounts)
	}
	// Without a spec: the linker cache (nothing NVIDIA on this host).
	if _, src, err := DriverFiles([]string{filepath.Join(dir, "missing")}); err != nil || src != "ldconfig cache" {
		t.Fatalf("fallback: %s, %v", src, err)
	}
}

// TestMachineFromJSON: a machine described in JSON (the 8-GPU test node)
// reads as the one built in Go, and unknown fields are refused.
func TestMachineFromJSON(t *testing.T) {
	m, err := fakenvml.LoadMachine(filepath.Join("fakenvml", "testdata", "8xh100-mig.json"))
	if err != nil {
		t.Fatal(err)
	}
	n := openMachine(t, m)
	inv, err := n.Inventory()
	if err != nil {
		t.Fatal(err)
	}
	if len(inv.Devices) != 8 || len(inv.Devices[7].MIG) != 7 || inv.Devices[0].Links[inv.Devices[1].UUID].NVLinks != 2 {
		t.Fatalf("inventory from JSON: %d devices, %+v", len(inv.Devices), inv.Devices[0].Links)
	}
	bad := filepath.Join(t.TempDir(), "bad.json")
	if err := os.WriteFile(bad, []byte(`{"GPUs": [{"Serial": "x"}]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := fakenvml.LoadMachine(bad); err == nil {
		t.Fatal("an unknown field was accepted")
	}
}

// Package fakenvml builds, for tests, a fake libnvidia-ml.so (csrc/fakenvml.c)
// that emulates a machine of NVIDIA GPUs, so that corral's real NVML path
// (github.com/NVIDIA/go-nvml) runs on a host without one. The library
// reads the machine from the file named by $FAKE_NVML_CONFIG (Machine.Write
// makes one, from a Machine built in Go or read from JSON by LoadMachine);
// without it, nvmlInit fails as on a node without a driver.
package fakenvml

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

//go:embed csrc/fakenvml.c
var source []byte

// ConfigEnv names the machine file the library reads at nvmlInit.
const ConfigEnv = "FAKE_NVML_CONFIG"

// Build compiles the fake library into dir with the host's C compiler and
// returns its path.
func Build(dir string) (string, error) {
	src := filepath.Join(dir, "fakenvml.c")
	if err := os.WriteFile(src, source, 0o644); err != nil {
		return "", err
	}
	lib := filepath.Join(dir, "libnvidia-ml.so.1")
	cc := os.Getenv("CC")
	if cc == "" {
		cc = "gcc"
	}
	out, err := exec.Command(cc, "-O1", "-shared", "-fPIC", "-o", lib, src).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("building the fake NVML library with %s: %v\n%s", cc, err, out)
	}
	return lib, nil
}

// Machine describes the emulated node.
type Machine struct {
	Driver string // e.g. "550.54.15"
	NVML   string // e.g. "12.550.54.15"
	CUDA   int    // e.g. 12040 for 12.4
	GPUs   []GPU
	// Topology gives the common PCIe ancestor level of pairs of GPU
	// indices; unlisted pairs are 50 (system).
	Topology []Topo `json:"topology,omitempty"`
}

// Topo is the common PCIe ancestor of GPUs A and B, in NVML's values: 0
// internal, 10 single switch, 20 multiple, 30 host bridge, 40 NUMA node,
// 50 system.
type Topo struct {
	A, B, Level int
}

// LoadMachine reads a machine from a JSON file (a Machine, as in
// testdata/8xh100-mig.json).
func LoadMachine(path string) (*Machine, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	m := &Machine{}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(m); err != nil {
		return nil, fmt.Errorf("fake NVML machine %s: %w", path, err)
	}
	return m, nil
}

// GPU is one emulated device.
type GPU struct {
	Minor       int
	UUID        string
	Name        string
	BusID       string
	NUMA        int
	Memory      uint64
	MemoryUsed  uint64
	UtilPercent int
	MIGMode     bool
	MIG         []MIG
	// NVLinks lists, per link, the GPU index at its other end.
	NVLinks []int
	// XIDAfterMs raises a critical XID error (XID) on the device that many
	// milliseconds after nvmlInit (0: never).
	XIDAfterMs int
	XID        int
	// VanishAfterMs makes the device fall off the bus that many
	// milliseconds after nvmlInit (0: never).
	VanishAfterMs int
	Procs         []Proc
}

// MIG is one MIG device of a GPU in MIG mode.
type MIG struct {
	UUID    string
	Profile string // e.g. "1g.10gb"
	GI, CI  int
	Memory  uint64
}

// Proc is a process using a GPU.
type Proc struct {
	Pid       int
	Memory    uint64
	SMPercent int
}

// Write writes m to path in the library's line format.
func (m *Machine) Write(path string) error {
	var b strings.Builder
	if m.Driver != "" {
		fmt.Fprintf(&b, "driver %s\n", m.Driver)
	}
	if m.NVML != "" {
		fmt.Fprintf(&b, "nvml %s\n", m.NVML)
	}
	if m.CUDA != 0 {
		fmt.Fprintf(&b, "cuda %d\n", m.CUDA)
	}
	mig := func(on bool) int {
		if on {
			return 1
		}
		return 0
	}
	for i, g := range m.GPUs {
		for _, s := range []string{g.UUID, g.BusID} {
			if s == "" || strings.ContainsAny(s, " \n") {
				return fmt.Errorf("gpu %d: UUID and bus ID must be single words", i)
			}
		}
		fmt.Fprintf(&b, "gpu %d %d %s %s %d %d %d %d %d %s\n", i, g.Minor, g.UUID, g.BusID, g.NUMA,
			g.Memory, g.MemoryUsed, g.UtilPercent, mig(g.MIGMode), g.Name)
		for _, x := range g.MIG {
			fmt.Fprintf(&b, "mig %d %s %d %d %d %s\n", i, x.UUID, x.GI, x.CI, x.Memory, x.Profile)
		}
		for link, peer := range g.NVLinks {
			fmt.Fprintf(&b, "nvlink %d %d %d\n", i, link, peer)
		}
		if g.XIDAfterMs > 0 {
			fmt.Fprintf(&b, "xid %d %d %d\n", i, g.XIDAfterMs, g.XID)
		}
		if g.VanishAfterMs > 0 {
			fmt.Fprintf(&b, "vanish %d %d\n", i, g.VanishAfterMs)
		}
		for _, p := range g.Procs {
			fmt.Fprintf(&b, "proc %d %d %d %d\n", i, p.Pid, p.Memory, p.SMPercent)
		}
	}
	for _, t := range m.Topology {
		fmt.Fprintf(&b, "topo %d %d %d\n", t.A, t.B, t.Level)
	}
	return os.WriteFile(path, []byte(b.String()), 0o644)
}

// GiB is 2^30 bytes.
const GiB = 1 << 30

// EightH100 is the standard test machine: 8 "NVIDIA H100 80GB HBM3" in two
// NVLink islands of 4 (GPUs 0-3 on NUMA node 0, 4-7 on node 1; every pair
// within an island joined by 2 NVLinks; pairs in an island share a PCIe
// switch, pairs across islands meet at the system level). With mig, GPU 7
// is in MIG mode with 7 instances of 1g.10gb.
func EightH100(mig bool) *Machine {
	m := &Machine{Driver: "550.54.15", NVML: "12.550.54.15", CUDA: 12040}
	for i := 0; i < 8; i++ {
		g := GPU{
			Minor: i, UUID: fmt.Sprintf("GPU-fa4e0000-0000-4000-8000-00000000000%d", i),
			Name: "NVIDIA H100 80GB HBM3", BusID: fmt.Sprintf("00000000:%02X:00.0", 0x18+i*0x10),
			NUMA: i / 4, Memory: 80 * GiB, MemoryUsed: 1 << 20,
		}
		island := i / 4 * 4
		for j := island; j < island+4; j++ {
			if j != i {
				g.NVLinks = append(g.NVLinks, j, j)
				m.Topology = append(m.Topology, Topo{A: i, B: j, Level: 10})
			}
		}
		m.GPUs = append(m.GPUs, g)
	}
	if mig {
		g := &m.GPUs[7]
		g.MIGMode = true
		for k := 0; k < 7; k++ {
			g.MIG = append(g.MIG, MIG{
				UUID: fmt.Sprintf("MIG-7a1c0000-0000-4000-8000-00000000000%d", k), Profile: "1g.10gb",
				GI: 7 + k, CI: 0, Memory: 10 * GiB,
			})
		}
	}
	return m
}

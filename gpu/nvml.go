// Package gpu finds a node's NVIDIA GPUs through NVML (github.com/NVIDIA/
// go-nvml, which loads libnvidia-ml with dlopen): their identity, memory,
// MIG instances, NVLink and PCIe topology, health and utilisation; and
// says what a kernel holding some of them needs from its driver
// (Reservation). Which devices a kernel gets is decided by the servers
// (server/scheduler devices.go); this package only describes and injects.
package gpu

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/dl"
	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/corral-dev/corral/structs"
)

// DefaultLibrary is the NVML library the loader finds by default.
const DefaultLibrary = "libnvidia-ml.so.1"

// requiredSymbols are the NVML functions corral calls. go-nvml resolves
// them lazily: a call to one the library lacks would kill the process, so
// Open checks them all first.
var requiredSymbols = []string{
	"nvmlInit_v2", "nvmlShutdown", "nvmlErrorString",
	"nvmlSystemGetDriverVersion", "nvmlSystemGetNVMLVersion", "nvmlSystemGetCudaDriverVersion",
	"nvmlDeviceGetCount_v2", "nvmlDeviceGetHandleByIndex_v2", "nvmlDeviceGetUUID", "nvmlDeviceGetName",
	"nvmlDeviceGetMemoryInfo", "nvmlDeviceGetPciInfo_v3", "nvmlDeviceGetMinorNumber",
	"nvmlDeviceGetUtilizationRates", "nvmlDeviceGetMigMode", "nvmlDeviceGetMaxMigDeviceCount",
	"nvmlDeviceGetMigDeviceHandleByIndex", "nvmlDeviceGetGpuInstanceId", "nvmlDeviceGetComputeInstanceId",
	"nvmlDeviceGetNvLinkState", "nvmlDeviceGetNvLinkRemotePciInfo_v2", "nvmlDeviceGetTopologyCommonAncestor",
	"nvmlDeviceGetComputeRunningProcesses_v3", "nvmlDeviceGetProcessUtilization",
	"nvmlEventSetCreate", "nvmlEventSetFree", "nvmlDeviceRegisterEvents", "nvmlEventSetWait_v2",
}

// optionalSymbols are called only when present.
var optionalSymbols = []string{"nvmlDeviceGetNumaNodeId"}

// ErrNoDriver wraps every reason NVML is not usable on this node.
var ErrNoDriver = errors.New("no NVIDIA driver")

// NVML is an initialised NVML library. After a failed Open nothing of
// NVML is ever called (go-nvml crashes the process on a call after a
// failed init, even Shutdown).
type NVML struct {
	lib  nvml.Interface
	path string
	has  map[string]bool

	mu sync.Mutex
	// sick holds, by UUID, why a device is unhealthy: sticky until the
	// agent restarts (an XID error), or while it is gone.
	sick map[string]string
	// last is the latest inventory, to describe a device that vanished.
	last   *structs.GPUInventory
	closed bool
}

// Open loads NVML from path (DefaultLibrary when empty) and initialises
// it. Every error wraps ErrNoDriver.
func Open(path string) (*NVML, error) {
	if path == "" {
		path = DefaultLibrary
	}
	has := map[string]bool{}
	lib := dl.New(path, dl.RTLD_LAZY|dl.RTLD_LOCAL)
	if err := lib.Open(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoDriver, err)
	}
	for _, s := range requiredSymbols {
		if err := lib.Lookup(s); err != nil {
			_ = lib.Close()
			return nil, fmt.Errorf("%w: %s has no %s (not NVML, or a driver too old for corral)", ErrNoDriver, path, s)
		}
	}
	for _, s := range optionalSymbols {
		has[s] = lib.Lookup(s) == nil
	}
	_ = lib.Close()
	n := &NVML{lib: nvml.New(nvml.WithLibraryPath(path)), path: path, has: has, sick: map[string]string{}}
	if ret := n.lib.Init(); ret != nvml.SUCCESS {
		return nil, fmt.Errorf("%w: initialising %s: %s", ErrNoDriver, path, errorString(ret))
	}
	return n, nil
}

// errorString names an NVML return code without calling NVML (which is
// not allowed after a failed init).
func errorString(ret nvml.Return) string {
	switch ret {
	case nvml.ERROR_LIBRARY_NOT_FOUND:
		return "library not found"
	case nvml.ERROR_DRIVER_NOT_LOADED:
		return "driver not loaded"
	case nvml.ERROR_NO_PERMISSION:
		return "no permission"
	case nvml.ERROR_UNINITIALIZED:
		return "uninitialized"
	}
	return fmt.Sprintf("NVML error %d", int32(ret))
}

// Path returns the library NVML was loaded from.
func (n *NVML) Path() string { return n.path }

// Shutdown releases NVML; n must not be used afterwards.
func (n *NVML) Shutdown() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.closed {
		n.closed = true
		_ = n.lib.Shutdown()
	}
}

func str(s string, ret nvml.Return) (string, error) {
	if ret != nvml.SUCCESS {
		return "", errors.New(nvml.ErrorString(ret))
	}
	return s, nil
}

func busID(p nvml.PciInfo) string {
	b := make([]byte, 0, len(p.BusId))
	for _, c := range p.BusId {
		if c == 0 {
			break
		}
		b = append(b, byte(c))
	}
	return normBusID(string(b))
}

// normBusID writes a PCI bus ID as "0000:18:00.0" (NVML has an 8-digit
// domain, sysfs a 4-digit one), lower case.
func normBusID(s string) string {
	s = strings.ToLower(strings.TrimSpace(s))
	if i := strings.IndexByte(s, ':'); i > 4 {
		s = s[i-4:]
	}
	return s
}

// Inventory reads the node's GPUs. A device NVML cannot reach any more
// (it fell off the bus) is kept from the previous inventory, marked
// unhealthy; a device that had an XID error stays unhealthy.
func (n *NVML) Inventory() (*structs.GPUInventory, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil, errors.New("NVML is shut down")
	}
	inv := &structs.GPUInventory{}
	if v, ret := n.lib.SystemGetDriverVersion(); ret == nvml.SUCCESS {
		inv.DriverVersion = v
	}
	if v, ret := n.lib.SystemGetNVMLVersion(); ret == nvml.SUCCESS {
		inv.NVMLVersion = v
	}
	if v, ret := n.lib.SystemGetCudaDriverVersion(); ret == nvml.SUCCESS {
		inv.CUDAVersion = fmt.Sprintf("%d.%d", v/1000, v%1000/10)
	}
	count, ret := n.lib.DeviceGetCount()
	if ret != nvml.SUCCESS {
		return nil, fmt.Errorf("counting GPUs: %s", nvml.ErrorString(ret))
	}
	handles := map[*structs.GPU]nvml.Device{}
	remotes := map[*structs.GPU][]string{}
	for i := 0; i < count; i++ {
		d, ret := n.lib.DeviceGetHandleByIndex(i)
		if ret != nvml.SUCCESS {
			if g := n.lastByIndex(i); g != nil {
				g.Unhealthy = "vanished: " + nvml.ErrorString(ret)
				inv.Devices = append(inv.Devices, g)
			}
			continue
		}
		g, err := n.device(i, d)
		if err != nil {
			if prev := n.lastByIndex(i); prev != nil {
				prev.Unhealthy = "vanished: " + err.Error()
				inv.Devices = append(inv.Devices, prev)
			}
			continue
		}
		handles[g] = d
		remotes[g] = nvlinkRemotes(d)
		inv.Devices = append(inv.Devices, g)
	}
	// How each pair connects.
	for _, a := range inv.Devices {
		da, ok := handles[a]
		if !ok {
			continue
		}
		for _, b := range inv.Devices {
			db, ok := handles[b]
			if !ok || a == b {
				continue
			}
			link := structs.GPULink{}
			for _, r := range remotes[a] {
				if r == b.PCIBusID {
					link.NVLinks++
				}
			}
			if lvl, ret := n.lib.DeviceGetTopologyCommonAncestor(da, db); ret == nvml.SUCCESS {
				link.Level = levelName(lvl)
			}
			if a.Links == nil {
				a.Links = map[string]structs.GPULink{}
			}
			a.Links[b.UUID] = link
		}
	}
	for _, g := range inv.Devices {
		if why := n.sick[g.UUID]; why != "" && g.Unhealthy == "" {
			g.Unhealthy = why
		}
	}
	n.last = inv.Copy()
	return inv, nil
}

func (n *NVML) lastByIndex(i int) *structs.GPU {
	if n.last == nil {
		return nil
	}
	for _, g := range n.last.Devices {
		if g.Index == i {
			c := *g
			c.Links = nil
			c.UtilPercent, c.MemoryUsedBytes = 0, 0
			return &c
		}
	}
	return nil
}

// device describes GPU i.
func (n *NVML) device(i int, d nvml.Device) (*structs.GPU, error) {
	g := &structs.GPU{Index: i, NUMANode: -1}
	var err error
	if g.UUID, err = str(d.GetUUID()); err != nil {
		return nil, fmt.Errorf("GPU %d: UUID: %w", i, err)
	}
	if g.Name, err = str(d.GetName()); err != nil {
		return nil, fmt.Errorf("GPU %d: name: %w", i, err)
	}
	mem, ret := d.GetMemoryInfo()
	if ret != nvml.SUCCESS {
		return nil, fmt.Errorf("GPU %d: memory: %s", i, nvml.ErrorString(ret))
	}
	g.MemoryBytes, g.MemoryUsedBytes = int64(mem.Total), int64(mem.Used)
	minor, ret := d.GetMinorNumber()
	if ret != nvml.SUCCESS {
		return nil, fmt.Errorf("GPU %d: minor number: %s", i, nvml.ErrorString(ret))
	}
	g.Minor = minor
	if pci, ret := d.GetPciInfo(); ret == nvml.SUCCESS {
		g.PCIBusID = busID(pci)
	}
	if n.has["nvmlDeviceGetNumaNodeId"] {
		if node, ret := d.GetNumaNodeId(); ret == nvml.SUCCESS {
			g.NUMANode = node
		}
	}
	if g.NUMANode < 0 && g.PCIBusID != "" {
		g.NUMANode = sysfsNUMA(g.PCIBusID)
	}
	if u, ret := d.GetUtilizationRates(); ret == nvml.SUCCESS {
		g.UtilPercent = int(u.Gpu)
	}
	if cur, _, ret := d.GetMigMode(); ret == nvml.SUCCESS && cur == nvml.DEVICE_MIG_ENABLE {
		g.MIGMode = true
		g.MIG = migDevices(d, g.Name)
	}
	return g, nil
}

// sysfsNUMA reads a PCI device's NUMA node from sysfs, -1 when unknown.
func sysfsNUMA(bus string) int {
	b, err := os.ReadFile(filepath.Join("/sys/bus/pci/devices", bus, "numa_node"))
	if err != nil {
		return -1
	}
	v, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || v < 0 {
		return -1
	}
	return v
}

// migDevices lists the MIG devices of a GPU in MIG mode.
func migDevices(d nvml.Device, gpuName string) []*structs.MIGInstance {
	max, ret := d.GetMaxMigDeviceCount()
	if ret != nvml.SUCCESS {
		return nil
	}
	var out []*structs.MIGInstance
	for j := 0; j < max; j++ {
		m, ret := d.GetMigDeviceHandleByIndex(j)
		if ret != nvml.SUCCESS {
			continue // no instance in that slot
		}
		uuid, err := str(m.GetUUID())
		if err != nil {
			continue
		}
		mi := &structs.MIGInstance{UUID: uuid}
		name, _ := str(m.GetName())
		mi.Profile = migProfile(name, gpuName)
		if mem, ret := m.GetMemoryInfo(); ret == nvml.SUCCESS {
			mi.MemoryBytes = int64(mem.Total)
		}
		if v, ret := m.GetGpuInstanceId(); ret == nvml.SUCCESS {
			mi.GIID = v
		}
		if v, ret := m.GetComputeInstanceId(); ret == nvml.SUCCESS {
			mi.CIID = v
		}
		out = append(out, mi)
	}
	return out
}

// migProfile takes the profile ("1g.10gb") from a MIG device's name,
// "NVIDIA H100 80GB HBM3 MIG 1g.10gb".
func migProfile(name, gpuName string) string {
	if i := strings.LastIndex(name, " MIG "); i >= 0 {
		return strings.ToLower(strings.TrimSpace(name[i+5:]))
	}
	p := strings.TrimSpace(strings.TrimPrefix(name, gpuName))
	if p == "" {
		return "unknown"
	}
	return strings.ToLower(strings.ReplaceAll(p, " ", "-"))
}

// nvlinkRemotes lists the PCI bus IDs at the far end of d's active links
// (one entry per link).
func nvlinkRemotes(d nvml.Device) []string {
	var out []string
	for link := 0; link < nvml.NVLINK_MAX_LINKS; link++ {
		st, ret := d.GetNvLinkState(link)
		if ret != nvml.SUCCESS || st != nvml.FEATURE_ENABLED {
			continue
		}
		pci, ret := d.GetNvLinkRemotePciInfo(link)
		if ret != nvml.SUCCESS {
			continue
		}
		out = append(out, busID(pci))
	}
	return out
}

func levelName(l nvml.GpuTopologyLevel) string {
	switch l {
	case nvml.TOPOLOGY_INTERNAL:
		return structs.GPULinkInternal
	case nvml.TOPOLOGY_SINGLE:
		return structs.GPULinkSingle
	case nvml.TOPOLOGY_MULTIPLE:
		return structs.GPULinkMultiple
	case nvml.TOPOLOGY_HOSTBRIDGE:
		return structs.GPULinkHostBridge
	case nvml.TOPOLOGY_NODE:
		return structs.GPULinkNode
	}
	return structs.GPULinkSystem
}

// XIDEvent is a critical XID error NVML reported on a device.
type XIDEvent struct {
	UUID string
	XID  uint64
	At   time.Time
}

// Watch waits for critical XID errors on every GPU until ctx ends, marks
// the device unhealthy (until the agent restarts) and calls onXID. It
// returns an error if NVML cannot deliver events.
func (n *NVML) Watch(ctx context.Context, onXID func(XIDEvent)) error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return errors.New("NVML is shut down")
	}
	set, ret := n.lib.EventSetCreate()
	if ret != nvml.SUCCESS {
		n.mu.Unlock()
		return fmt.Errorf("NVML events: %s", nvml.ErrorString(ret))
	}
	count, _ := n.lib.DeviceGetCount()
	registered := 0
	for i := 0; i < count; i++ {
		d, ret := n.lib.DeviceGetHandleByIndex(i)
		if ret != nvml.SUCCESS {
			continue
		}
		if d.RegisterEvents(nvml.EventTypeXidCriticalError, set) == nvml.SUCCESS {
			registered++
		}
	}
	n.mu.Unlock()
	defer set.Free()
	if registered == 0 && count > 0 {
		return errors.New("NVML events: no GPU accepts XID event registration")
	}
	for ctx.Err() == nil {
		ev, ret := set.Wait(500)
		if ret == nvml.ERROR_TIMEOUT {
			continue
		}
		if ret != nvml.SUCCESS {
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
			continue
		}
		if ev.EventType&nvml.EventTypeXidCriticalError == 0 || ev.Device == nil {
			continue
		}
		uuid, err := str(ev.Device.GetUUID())
		if err != nil {
			continue
		}
		e := XIDEvent{UUID: uuid, XID: ev.EventData, At: time.Now().UTC()}
		n.mu.Lock()
		n.sick[uuid] = fmt.Sprintf("XID %d at %s", e.XID, e.At.Format(time.RFC3339))
		n.mu.Unlock()
		if onXID != nil {
			onXID(e)
		}
	}
	return nil
}

// ProcUsage is one process's use of the GPUs.
type ProcUsage struct {
	MemoryBytes int64
	// SMPercent is the process's share of the GPUs' compute, summed over
	// the devices it uses (a percentage of one device each).
	SMPercent int
	Devices   []string
}

// Processes returns, by pid, what each process uses of the GPUs.
func (n *NVML) Processes() (map[int]*ProcUsage, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil, errors.New("NVML is shut down")
	}
	out := map[int]*ProcUsage{}
	get := func(pid int) *ProcUsage {
		p := out[pid]
		if p == nil {
			p = &ProcUsage{}
			out[pid] = p
		}
		return p
	}
	count, ret := n.lib.DeviceGetCount()
	if ret != nvml.SUCCESS {
		return nil, fmt.Errorf("counting GPUs: %s", nvml.ErrorString(ret))
	}
	for i := 0; i < count; i++ {
		d, ret := n.lib.DeviceGetHandleByIndex(i)
		if ret != nvml.SUCCESS {
			continue
		}
		uuid, _ := str(d.GetUUID())
		if procs, ret := d.GetComputeRunningProcesses(); ret == nvml.SUCCESS {
			for _, p := range procs {
				u := get(int(p.Pid))
				u.MemoryBytes += int64(p.UsedGpuMemory)
				u.Devices = append(u.Devices, uuid)
			}
		}
		if samples, ret := d.GetProcessUtilization(0); ret == nvml.SUCCESS {
			for _, s := range samples {
				get(int(s.Pid)).SMPercent += int(s.SmUtil)
			}
		}
	}
	return out, nil
}

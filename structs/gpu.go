package structs

import (
	"slices"
	"strings"
)

// GPU slot names besides SlotCUDADevice. A MIG profile is its own slot:
// SlotMIGPrefix + the profile, e.g. "cuda.mig-1g.18gb".
const (
	// SlotCUDAMem is the memory of an agent's whole GPUs (bytes). Kernels
	// do not ask for it: a kernel holding whole GPUs occupies their
	// memory, set on the kernel in the apply that chose its devices.
	SlotCUDAMem   = "cuda.mem"
	SlotMIGPrefix = "cuda.mig-"
)

// IsMIGSlot reports whether a slot name is a MIG profile's
// (cuda.mig-<profile>), and returns the profile.
func IsMIGSlot(name string) (profile string, ok bool) {
	if !strings.HasPrefix(name, SlotMIGPrefix) || len(name) == len(SlotMIGPrefix) {
		return "", false
	}
	return name[len(SlotMIGPrefix):], true
}

// GPUInventory is what an agent's NVML fingerprint found: the node's GPUs,
// their MIG instances and how they connect. It travels in the agent's
// registration (not in gossip tags) and is kept in the state store.
type GPUInventory struct {
	DriverVersion string `json:"driver_version,omitempty"`
	CUDAVersion   string `json:"cuda_version,omitempty"`
	// NVMLVersion is the NVML library's own version.
	NVMLVersion string `json:"nvml_version,omitempty"`
	Devices     []*GPU `json:"devices,omitempty"`
}

// GPU is one physical device. A GPU in MIG mode is not handed out whole:
// its MIG instances are, each as one unit of its profile's slot.
type GPU struct {
	// Index is NVML's device index; Minor the N of /dev/nvidiaN.
	Index int    `json:"index"`
	Minor int    `json:"minor"`
	UUID  string `json:"uuid"`
	// Name is the model as NVML names it, e.g. "NVIDIA H200".
	Name        string `json:"name"`
	MemoryBytes int64  `json:"memory_bytes"`
	PCIBusID    string `json:"pci_bus_id,omitempty"`
	// NUMANode is the device's NUMA node, -1 when unknown.
	NUMANode int            `json:"numa_node"`
	MIGMode  bool           `json:"mig_mode,omitempty"`
	MIG      []*MIGInstance `json:"mig,omitempty"`
	// Links says, for every other GPU of the node (by UUID), how the two
	// connect.
	Links map[string]GPULink `json:"links,omitempty"`
	// Unhealthy, when set, is why the device gets no new work (an XID
	// error, it vanished from the bus...).
	Unhealthy string `json:"unhealthy,omitempty"`
	// Utilisation at the agent's last refresh: percent of time a kernel
	// ran on the device, and the memory in use.
	UtilPercent     int   `json:"util_percent"`
	MemoryUsedBytes int64 `json:"memory_used_bytes"`
}

// GPU link levels, best first: the common ancestor of two GPUs on the PCIe
// tree, as NVML's nvmlDeviceGetTopologyCommonAncestor names them.
const (
	GPULinkInternal   = "internal"   // same board
	GPULinkSingle     = "single"     // one PCIe switch
	GPULinkMultiple   = "multiple"   // several PCIe switches
	GPULinkHostBridge = "hostbridge" // one host bridge
	GPULinkNode       = "node"       // one NUMA node
	GPULinkSystem     = "system"     // across NUMA nodes
)

// GPULink is how two GPUs connect: NVLinks between them (0 when none) and
// their common PCIe ancestor.
type GPULink struct {
	NVLinks int    `json:"nvlinks,omitempty"`
	Level   string `json:"level,omitempty"`
}

// MIGInstance is one MIG device (a GPU instance with its compute
// instance) of a GPU in MIG mode.
type MIGInstance struct {
	UUID string `json:"uuid"`
	// Profile is e.g. "1g.18gb": the slot is SlotMIGPrefix + Profile.
	Profile     string `json:"profile"`
	MemoryBytes int64  `json:"memory_bytes"`
	GIID        int    `json:"gi_id"`
	CIID        int    `json:"ci_id"`
	Unhealthy   string `json:"unhealthy,omitempty"`
}

// Copy returns a deep copy of inv (nil for nil).
func (inv *GPUInventory) Copy() *GPUInventory {
	if inv == nil {
		return nil
	}
	c := *inv
	c.Devices = make([]*GPU, len(inv.Devices))
	for i, d := range inv.Devices {
		g := *d
		g.MIG = make([]*MIGInstance, len(d.MIG))
		for j, m := range d.MIG {
			mm := *m
			g.MIG[j] = &mm
		}
		if d.Links != nil {
			g.Links = make(map[string]GPULink, len(d.Links))
			for k, v := range d.Links {
				g.Links[k] = v
			}
		}
		c.Devices[i] = &g
	}
	return &c
}

// Slots returns the capacity the inventory adds to an agent: healthy whole
// GPUs (not in MIG mode) as SlotCUDADevice and their memory as
// SlotCUDAMem, healthy MIG instances one unit each of their profile's slot.
func (inv *GPUInventory) Slots() Slots {
	s := Slots{}
	if inv == nil {
		return s
	}
	for _, d := range inv.Devices {
		if d.Unhealthy != "" {
			continue
		}
		if !d.MIGMode {
			s[SlotCUDADevice] += Whole(1)
			s[SlotCUDAMem] += Whole(d.MemoryBytes)
			continue
		}
		for _, m := range d.MIG {
			if m.Unhealthy == "" {
				s[SlotMIGPrefix+m.Profile] += Whole(1)
			}
		}
	}
	return s
}

// Device finds a GPU or the GPU of a MIG instance by UUID; mig is nil for
// a whole GPU.
func (inv *GPUInventory) Device(uuid string) (gpu *GPU, mig *MIGInstance) {
	if inv == nil {
		return nil, nil
	}
	for _, d := range inv.Devices {
		if d.UUID == uuid {
			return d, nil
		}
		for _, m := range d.MIG {
			if m.UUID == uuid {
				return d, m
			}
		}
	}
	return nil, nil
}

// GPUConstraint narrows which devices a kernel's GPUs may be.
type GPUConstraint struct {
	// Model is a glob over the device name, alternatives separated by
	// '|', e.g. "H100*|H200*"; matched against the name with and without
	// a leading "NVIDIA ".
	Model string `json:"model,omitempty"`
	// MinMemory is the least memory (bytes) of each device.
	MinMemory Quantity `json:"min_memory,omitempty"`
}

// Empty reports whether c constrains nothing.
func (c *GPUConstraint) Empty() bool { return c == nil || (c.Model == "" && c.MinMemory == 0) }

// Copy returns a copy of c (nil for nil).
func (c *GPUConstraint) Copy() *GPUConstraint {
	if c == nil {
		return nil
	}
	v := *c
	return &v
}

// DeviceReservation is what a driver must do for a kernel's devices (as a
// Nomad device plugin's reservation): the agent builds it from the
// kernel's GPUs and its own inventory; drivers apply it generically.
type DeviceReservation struct {
	// IDs are the devices' UUIDs, for drivers that pass devices through
	// by ID (e.g. VFIO for VMs).
	IDs []string `json:"ids,omitempty"`
	// Nodes are device nodes the kernel gets (container drivers create
	// them in its /dev) and may open (its device cgroup allows them).
	Nodes []DeviceNode `json:"nodes,omitempty"`
	// Deny are device nodes of the node's other devices of the same kind:
	// drivers that share the host's /dev (exec) deny them in the kernel's
	// device cgroup.
	Deny []DeviceNode `json:"deny,omitempty"`
	// Mounts are host files (driver libraries, binaries) mounted into
	// container kernels.
	Mounts []DeviceMount `json:"mounts,omitempty"`
	// Env is added to the kernel's environment
	// (NVIDIA_VISIBLE_DEVICES, CUDA_VISIBLE_DEVICES...).
	Env map[string]string `json:"env,omitempty"`
}

// DeviceNode is a character or block device node.
type DeviceNode struct {
	// Path is the node's path on the host and, by default, in the kernel.
	Path string `json:"path"`
	// Type is 'c' or 'b'.
	Type  string `json:"type"`
	Major int64  `json:"major"`
	Minor int64  `json:"minor"`
	// Perms are the cgroup access rights, e.g. "rwm".
	Perms string `json:"perms"`
}

// DeviceMount is a bind mount of a host path into a container kernel.
type DeviceMount struct {
	HostPath string `json:"host_path"`
	Path     string `json:"path"`
	ReadOnly bool   `json:"read_only"`
}

// Empty reports whether r asks nothing of a driver.
func (r *DeviceReservation) Empty() bool {
	return r == nil || (len(r.IDs) == 0 && len(r.Nodes) == 0 && len(r.Deny) == 0 && len(r.Mounts) == 0 && len(r.Env) == 0)
}

// Copy returns a deep copy of r (nil for nil).
func (r *DeviceReservation) Copy() *DeviceReservation {
	if r == nil {
		return nil
	}
	c := *r
	c.IDs = slices.Clone(r.IDs)
	c.Nodes = slices.Clone(r.Nodes)
	c.Deny = slices.Clone(r.Deny)
	c.Mounts = slices.Clone(r.Mounts)
	if r.Env != nil {
		c.Env = make(map[string]string, len(r.Env))
		for k, v := range r.Env {
			c.Env[k] = v
		}
	}
	return &c
}

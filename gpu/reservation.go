package gpu

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
	"gopkg.in/yaml.v3"

	"github.com/corral-dev/corral/structs"
)

// ReservationOptions say where the host's device nodes are and which
// driver files a container kernel gets.
type ReservationOptions struct {
	// DevRoot is the host's /dev (tests use a directory of nodes made
	// with mknod); "/dev" when empty.
	DevRoot string
	// MIGMinors is the file mapping MIG instances to nvidia-caps minors
	// (/proc/driver/nvidia-caps/mig-minors when empty).
	MIGMinors string
	// DriverFiles are the driver's libraries and binaries to mount
	// read-only (from DriverFiles).
	DriverFiles []structs.DeviceMount
}

// controlNodes are the NVIDIA nodes every GPU kernel needs besides its
// devices' own, when the host has them.
var controlNodes = []string{"nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset"}

// nvidiaMajor is the character major of /dev/nvidiaN, used to deny a GPU
// whose node the host lacks.
const nvidiaMajor = 195

// Reservation says what a kernel holding the given GPUs and MIG instances
// (UUIDs from Kernel.GPUs) needs from its driver: their device nodes and
// the control nodes, the other GPUs' nodes to deny, the driver's files
// and NVIDIA_VISIBLE_DEVICES/CUDA_VISIBLE_DEVICES. A UUID the inventory
// does not know, or a device node missing on the host, is an error: a
// kernel never starts without its devices.
func Reservation(inv *structs.GPUInventory, uuids []string, opt ReservationOptions) (*structs.DeviceReservation, error) {
	if len(uuids) == 0 {
		return nil, nil
	}
	devRoot := opt.DevRoot
	if devRoot == "" {
		devRoot = "/dev"
	}
	r := &structs.DeviceReservation{IDs: slices.Clone(uuids)}
	mine := map[int]bool{} // minors of the GPUs given (whole or a MIG slice's parent)
	var migMinors map[string]int
	for _, id := range uuids {
		g, mig := inv.Device(id)
		if g == nil {
			return nil, fmt.Errorf("GPU %s is not on this node (its inventory has %d devices)", id, len(inventoryDevices(inv)))
		}
		if g.Unhealthy != "" {
			return nil, fmt.Errorf("GPU %s is unhealthy: %s", id, g.Unhealthy)
		}
		if mig != nil && mig.Unhealthy != "" {
			return nil, fmt.Errorf("MIG device %s is unhealthy: %s", id, mig.Unhealthy)
		}
		if !mine[g.Minor] {
			mine[g.Minor] = true
			n, err := node(devRoot, "nvidia"+strconv.Itoa(g.Minor), "/dev/nvidia"+strconv.Itoa(g.Minor))
			if err != nil {
				return nil, fmt.Errorf("GPU %s: %w", g.UUID, err)
			}
			r.Nodes = append(r.Nodes, n)
		}
		if mig != nil {
			// A MIG instance is opened through its GPU and compute
			// instance's capability nodes.
			if migMinors == nil {
				var err error
				if migMinors, err = readMIGMinors(opt.MIGMinors); err != nil {
					return nil, err
				}
			}
			for _, key := range []string{
				fmt.Sprintf("gpu%d/gi%d/access", g.Minor, mig.GIID),
				fmt.Sprintf("gpu%d/gi%d/ci%d/access", g.Minor, mig.GIID, mig.CIID),
			} {
				minor, ok := migMinors[key]
				if !ok {
					continue // a host without nvidia-caps (or a fake one)
				}
				name := filepath.Join("nvidia-caps", "nvidia-cap"+strconv.Itoa(minor))
				n, err := node(devRoot, name, "/dev/"+name)
				if err != nil {
					return nil, fmt.Errorf("MIG device %s: %w", id, err)
				}
				r.Nodes = append(r.Nodes, n)
			}
		}
	}
	for _, name := range controlNodes {
		if n, err := node(devRoot, name, "/dev/"+name); err == nil {
			r.Nodes = append(r.Nodes, n)
		}
	}
	for _, g := range inventoryDevices(inv) {
		if mine[g.Minor] {
			continue
		}
		n, err := node(devRoot, "nvidia"+strconv.Itoa(g.Minor), "/dev/nvidia"+strconv.Itoa(g.Minor))
		if err != nil {
			n = structs.DeviceNode{Path: "/dev/nvidia" + strconv.Itoa(g.Minor), Type: "c",
				Major: nvidiaMajor, Minor: int64(g.Minor), Perms: "rwm"}
		}
		r.Deny = append(r.Deny, n)
	}
	visible := strings.Join(uuids, ",")
	r.Env = map[string]string{"NVIDIA_VISIBLE_DEVICES": visible, "CUDA_VISIBLE_DEVICES": visible}
	r.Mounts = slices.Clone(opt.DriverFiles)
	return r, nil
}

func inventoryDevices(inv *structs.GPUInventory) []*structs.GPU {
	if inv == nil {
		return nil
	}
	return inv.Devices
}

// node describes the device node dir/name, to appear in kernels at path.
func node(devRoot, name, path string) (structs.DeviceNode, error) {
	var st unix.Stat_t
	p := filepath.Join(devRoot, name)
	if err := unix.Stat(p, &st); err != nil {
		return structs.DeviceNode{}, fmt.Errorf("device node %s: %w", p, err)
	}
	typ := ""
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFCHR:
		typ = "c"
	case unix.S_IFBLK:
		typ = "b"
	default:
		return structs.DeviceNode{}, fmt.Errorf("%s is not a device node", p)
	}
	return structs.DeviceNode{Path: path, Type: typ, Major: int64(unix.Major(uint64(st.Rdev))),
		Minor: int64(unix.Minor(uint64(st.Rdev))), Perms: "rwm"}, nil
}

// readMIGMinors reads nvidia-caps' "gpuN/giN[/ciN]/access MINOR" lines; a
// missing file is an empty map.
func readMIGMinors(path string) (map[string]int, error) {
	if path == "" {
		path = "/proc/driver/nvidia-caps/mig-minors"
	}
	out := map[string]int{}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return out, nil
	}
	if err != nil {
		return nil, err
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 2 {
			continue
		}
		if v, err := strconv.Atoi(f[1]); err == nil {
			out[f[0]] = v
		}
	}
	return out, nil
}

// DriverFiles finds the NVIDIA driver's user-space files a container
// kernel needs (libcuda, libnvidia-ml, nvidia-smi...), each to be mounted
// read-only at its host path: from a CDI spec for NVIDIA GPUs when one
// exists in cdiDirs (/etc/cdi and /var/run/cdi when nil), else from the
// dynamic linker's cache and PATH. It returns the files and where they
// came from.
func DriverFiles(cdiDirs []string) ([]structs.DeviceMount, string, error) {
	if cdiDirs == nil {
		cdiDirs = []string{"/etc/cdi", "/var/run/cdi"}
	}
	for _, dir := range cdiDirs {
		mounts, spec, err := cdiMounts(dir)
		if err != nil {
			return nil, "", err
		}
		if spec != "" {
			return mounts, "CDI spec " + spec, nil
		}
	}
	out, err := exec.Command("ldconfig", "-p").Output()
	if err != nil {
		return nil, "", fmt.Errorf("reading the linker cache (ldconfig -p): %w", err)
	}
	mounts := ldconfigLibraries(string(out))
	for _, bin := range []string{"nvidia-smi", "nvidia-debugdump", "nvidia-persistenced", "nvidia-cuda-mps-control", "nvidia-cuda-mps-server"} {
		if p, err := exec.LookPath(bin); err == nil {
			mounts = append(mounts, structs.DeviceMount{HostPath: p, Path: p, ReadOnly: true})
		}
	}
	return mounts, "ldconfig cache", nil
}

// driverLibPrefixes are the driver libraries a CUDA program may load.
var driverLibPrefixes = []string{
	"libcuda.so", "libcudadebugger.so", "libnvidia-ml.so", "libnvidia-ptxjitcompiler.so",
	"libnvidia-nvvm.so", "libnvidia-opencl.so", "libnvidia-cfg.so", "libnvidia-gpucomp.so",
	"libnvidia-allocator.so", "libnvidia-pkcs11.so", "libnvidia-fatbinaryloader.so",
}

// ldconfigLibraries picks the driver's 64-bit libraries out of
// `ldconfig -p` output.
func ldconfigLibraries(out string) []structs.DeviceMount {
	var mounts []structs.DeviceMount
	seen := map[string]bool{}
	for _, line := range strings.Split(out, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), " (")
		if !ok || !strings.Contains(rest, "x86-64") && !strings.Contains(rest, "AArch64") {
			continue
		}
		_, path, ok := strings.Cut(rest, "=> ")
		if !ok {
			continue
		}
		path = strings.TrimSpace(path)
		for _, p := range driverLibPrefixes {
			if strings.HasPrefix(name, p) && !seen[path] {
				seen[path] = true
				mounts = append(mounts, structs.DeviceMount{HostPath: path, Path: path, ReadOnly: true})
			}
		}
	}
	return mounts
}

// cdiSpec is the part of a CDI spec corral reads.
type cdiSpec struct {
	Kind           string   `yaml:"kind"`
	ContainerEdits cdiEdits `yaml:"containerEdits"`
}

type cdiEdits struct {
	Mounts []struct {
		HostPath      string   `yaml:"hostPath"`
		ContainerPath string   `yaml:"containerPath"`
		Options       []string `yaml:"options"`
	} `yaml:"mounts"`
}

// cdiMounts reads the first NVIDIA GPU CDI spec (kind nvidia.com/gpu, JSON
// or YAML) in dir and returns its common mounts and the spec's path ("" if
// there is none).
func cdiMounts(dir string) ([]structs.DeviceMount, string, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, "", nil
	}
	if err != nil {
		return nil, "", err
	}
	for _, e := range ents {
		ext := filepath.Ext(e.Name())
		if e.IsDir() || (ext != ".json" && ext != ".yaml" && ext != ".yml") {
			continue
		}
		p := filepath.Join(dir, e.Name())
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, "", err
		}
		var spec cdiSpec
		if err := yaml.Unmarshal(b, &spec); err != nil {
			return nil, "", fmt.Errorf("CDI spec %s: %w", p, err)
		}
		if spec.Kind != "nvidia.com/gpu" {
			continue
		}
		var mounts []structs.DeviceMount
		for _, m := range spec.ContainerEdits.Mounts {
			if m.HostPath == "" || m.ContainerPath == "" {
				continue
			}
			mounts = append(mounts, structs.DeviceMount{HostPath: m.HostPath, Path: m.ContainerPath, ReadOnly: true})
		}
		return mounts, p, nil
	}
	return nil, "", nil
}

package agent

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/corral-dev/corral/structs"
)

// InfiniBand and RDMA: a kernel that asks for it (KernelOptions.InfiniBand)
// gets the agent's /dev/infiniband device nodes, as GPUs get theirs: a
// container driver creates them in the kernel's /dev and allows them in
// its device cgroup; the exec driver's kernels share the host's /dev and
// are denied only other kernels' GPUs, so they can open them already.

// infinibandPrefixes are the nodes in /dev/infiniband a verbs or RDMA CM
// program opens: uverbsN (verbs), rdma_cm (connection manager), umadN and
// issmN (management datagrams, subnet manager).
var infinibandPrefixes = []string{"uverbs", "rdma_cm", "umad", "issm"}

// infinibandNodes lists the InfiniBand device nodes in devRoot/infiniband
// ("" is /dev), as /dev/infiniband/NAME in the kernel, in name order; none
// when the directory is absent.
func infinibandNodes(devRoot string) ([]structs.DeviceNode, error) {
	if devRoot == "" {
		devRoot = "/dev"
	}
	dir := filepath.Join(devRoot, "infiniband")
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listing InfiniBand devices: %w", err)
	}
	var out []structs.DeviceNode
	for _, e := range entries {
		name := e.Name()
		if !slices.ContainsFunc(infinibandPrefixes, func(p string) bool { return strings.HasPrefix(name, p) }) {
			continue
		}
		var st unix.Stat_t
		if err := unix.Stat(filepath.Join(dir, name), &st); err != nil {
			return nil, fmt.Errorf("InfiniBand device %s: %w", name, err)
		}
		if st.Mode&unix.S_IFMT != unix.S_IFCHR {
			continue
		}
		out = append(out, structs.DeviceNode{
			Path: "/dev/infiniband/" + name, Type: "c",
			Major: int64(unix.Major(st.Rdev)), Minor: int64(unix.Minor(st.Rdev)), Perms: "rwm",
		})
	}
	return out, nil
}

// withInfiniBand adds the agent's InfiniBand nodes to a kernel's device
// reservation (nil: a new one); it fails when the agent has none, so
// that a job that needs the fabric does not run over TCP unnoticed.
func withInfiniBand(r *structs.DeviceReservation, devRoot string) (*structs.DeviceReservation, error) {
	nodes, err := infinibandNodes(devRoot)
	if err != nil {
		return nil, err
	}
	if len(nodes) == 0 {
		return nil, errors.New("the kernel asks for InfiniBand but this agent has no /dev/infiniband devices")
	}
	if r == nil {
		r = &structs.DeviceReservation{}
	}
	for _, n := range nodes {
		if !slices.ContainsFunc(r.Nodes, func(o structs.DeviceNode) bool { return o.Path == n.Path }) {
			r.Nodes = append(r.Nodes, n)
		}
	}
	return r, nil
}

package ebpfdev_test

import (
	"os"
	osexec "os/exec"
	"strings"
	"syscall"
	"testing"

	"github.com/corral-dev/corral/drivers/exec/cgroup"
	_ "github.com/corral-dev/corral/drivers/exec/cgroup/ebpfdev"
	"github.com/corral-dev/corral/drivers/internal/drivertest"
	"github.com/corral-dev/corral/structs"
)

func devs(nodes []structs.DeviceNode) []cgroup.Device {
	out := make([]cgroup.Device, len(nodes))
	for i, n := range nodes {
		out[i] = cgroup.Device{Path: n.Path, Type: n.Type, Major: n.Major, Minor: n.Minor}
	}
	return out
}

// TestDenyDevicesV2 attaches the eBPF device program to a cgroup of this
// host's cgroup2 hierarchy (the unified one, or the hybrid one next to v1
// controllers) and checks, with fake device nodes, that a process in it is
// denied the denied node (EPERM) and allowed the other (ENXIO: no driver).
func TestDenyDevicesV2(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("device cgroups need root")
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	mounts, err := cgroup.ParseMountinfo(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	var point string
	for _, mt := range mounts {
		if mt.V2 {
			point = mt.Point
		}
	}
	if point == "" {
		t.Skip("no cgroup2 mount on this host")
	}
	nodes := drivertest.FakeDeviceNodes(t, "", 2)
	dir, err := os.MkdirTemp(point, "corral-devtest-")
	if err != nil {
		t.Skipf("cgroup2 at %s is not writable: %v", point, err)
	}
	t.Cleanup(func() { _ = os.Remove(dir) })
	if err := cgroup.DenyDevicesV2(dir, devs(nodes[1:])); err != nil {
		t.Fatal(err)
	}
	cg, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer cg.Close()
	cmd := osexec.Command("/bin/sh", "-c", `cat "$1" </dev/null; cat "$2" </dev/null; true`, "sh", nodes[0].Path, nodes[1].Path)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != 2 || !strings.HasSuffix(lines[0], "No such device or address") || !strings.HasSuffix(lines[1], "Operation not permitted") {
		t.Errorf("opening the allowed and the denied node:\n%s\nwant ENXIO, then EPERM", out)
	}
}

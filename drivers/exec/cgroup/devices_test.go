package cgroup

import (
	"errors"
	"os"
	osexec "os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/corral-dev/corral/drivers/internal/drivertest"
	"github.com/corral-dev/corral/structs"
)

func TestV1DenyDevices(t *testing.T) {
	deny := []structs.DeviceNode{{Path: "/dev/nvidia1", Type: "c", Major: 195, Minor: 1}}
	m, err := NewManager(fakeV1(t, CPU, Memory, Devices), "corral")
	if err != nil {
		t.Fatal(err)
	}
	if !m.CanDenyDevices() {
		t.Fatal("a v1 host with the devices controller cannot deny devices")
	}
	// Only a task that must be denied devices gets a devices cgroup.
	g, err := m.Create("plain", Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := g.Dirs[Devices]; ok {
		t.Errorf("a task without devices to deny got a devices cgroup: %+v", g.Dirs)
	}
	g, err = m.Create("gpu", Limits{DenyDevices: deny})
	if err != nil {
		t.Fatal(err)
	}
	if d := g.Dirs[Devices]; !strings.HasSuffix(d, "/devices/corral/gpu") {
		t.Fatalf("devices dir = %q", d)
	}
	if got := read(t, filepath.Join(g.Dirs[Devices], "devices.deny")); got != "c 195:1 rwm" {
		t.Errorf("devices.deny = %q, want %q", got, "c 195:1 rwm")
	}
	if len(g.ProcsFiles()) != 3 {
		t.Errorf("the task joins %v, want its devices cgroup too", g.ProcsFiles())
	}

	// Without the devices controller a task that must be denied devices
	// cannot start.
	m, err = NewManager(fakeV1(t, CPU, Memory), "corral")
	if err != nil {
		t.Fatal(err)
	}
	if m.CanDenyDevices() {
		t.Error("a v1 host without the devices controller says it can deny devices")
	}
	if _, err := m.Create("gpu", Limits{DenyDevices: deny}); !errors.Is(err, ErrDevicesUnavailable) {
		t.Errorf("Create = %v, want ErrDevicesUnavailable", err)
	}
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
	mounts, err := ParseMountinfo(f)
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
	if err := DenyDevicesV2(dir, nodes[1:]); err != nil {
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

package exec

import (
	"errors"
	"strings"
	"testing"

	"github.com/corral-dev/corral/drivers/exec/cgroup"
	"github.com/corral-dev/corral/drivers/internal/drivertest"
	"github.com/corral-dev/corral/plugins/drivers/testutils"
	"github.com/corral-dev/corral/structs"
)

// devicesProbe opens nodes A and B and prints the devices' environment.
const devicesProbe = `cat "$1" 2>&1 </dev/null; cat "$2" 2>&1 </dev/null; echo "NV=$NVIDIA_VISIBLE_DEVICES"`

// checkOpens checks a devicesProbe output: opening A gets ENXIO (the
// device cgroup allows it; no driver is behind the fake major), opening
// B gets wantB, and the environment is the devices'.
func checkOpens(t *testing.T, out, wantB string) {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) < 3 || !strings.HasSuffix(lines[0], "No such device or address") ||
		!strings.HasSuffix(lines[1], wantB) || lines[2] != "NV=GPU-fake-0" {
		t.Errorf("kernel output:\n%s\nwant A: ENXIO, B: %s, NV=GPU-fake-0", out, wantB)
	}
}

// fakeGPUs makes two fake device nodes outside /tmp (which exec kernels
// do not share with the host) and a reservation giving the first and
// denying the second.
func fakeGPUs(t *testing.T) (a, b structs.DeviceNode, r *structs.DeviceReservation) {
	t.Helper()
	nodes := drivertest.FakeDeviceNodes(t, "/var/lib", 2)
	a, b = nodes[0], nodes[1]
	return a, b, &structs.DeviceReservation{
		IDs: []string{"GPU-fake-0"}, Nodes: []structs.DeviceNode{a}, Deny: []structs.DeviceNode{b},
		Env: map[string]string{"NVIDIA_VISIBLE_DEVICES": "GPU-fake-0"},
	}
}

func TestDevicesDenied(t *testing.T) {
	d := newTestDriver(t)
	if d.cgroups == nil || !d.cgroups.CanDenyDevices() {
		t.Skip("no device cgroup on this host")
	}
	if fp, err := d.Fingerprint(t.Context()); err != nil || fp.Attributes["driver.exec.device_cgroup"] != "true" {
		t.Errorf("Fingerprint = %+v, %v; want driver.exec.device_cgroup true", fp, err)
	}
	a, b, r := fakeGPUs(t)
	cfg := testutils.TaskConfig(t, "/bin/sh", "-c", devicesProbe+"; echo ready; exec sleep 1000", "probe", a.Path, b.Path)
	cfg.Env = map[string]string{"NVIDIA_VISIBLE_DEVICES": "all"}
	cfg.Devices = r
	h := testutils.StartTask(t, d, cfg)
	testutils.WaitForLog(t, cfg.StdoutPath, "ready", testTimeout)
	checkOpens(t, testutils.ReadLog(t, cfg.StdoutPath), "Operation not permitted")
	// A command run in the kernel is in its device cgroup too, also once
	// a restarted agent recovered it.
	_, out := execOut(t, d, cfg.ID, "/bin/sh", "-c", devicesProbe, "probe", a.Path, b.Path)
	checkOpens(t, out, "Operation not permitted")
	second := newTestDriver(t)
	drivertest.Recover(t, second, h)
	_, out = execOut(t, second, cfg.ID, "/bin/sh", "-c", devicesProbe, "probe", a.Path, b.Path)
	checkOpens(t, out, "Operation not permitted")

	t.Run("without Deny the node opens", func(t *testing.T) {
		// The same kernel without Deny: B's EPERM above was the cgroup's.
		cfg := testutils.TaskConfig(t, "/bin/sh", "-c", devicesProbe, "probe", a.Path, b.Path)
		cfg.Devices = &structs.DeviceReservation{Env: r.Env}
		res, out, stderr := runToEnd(t, d, cfg)
		if !res.Successful() {
			t.Fatalf("result %+v, stderr %q", res, stderr)
		}
		checkOpens(t, out, "No such device or address")
	})
	t.Run("no device cgroup fails the start", func(t *testing.T) {
		nocg := newTestDriver(t)
		nocg.cgroups, nocg.noLimits = nil, "cgroups taken away by the test"
		cfg := testutils.TaskConfig(t, "true")
		cfg.Devices = r
		if _, err := nocg.Start(t.Context(), cfg); !errors.Is(err, cgroup.ErrDevicesUnavailable) {
			t.Fatalf("Start = %v, want ErrDevicesUnavailable", err)
		} else {
			t.Log(err)
		}
	})
}

// TestHostDriverDevices checks that the host driver gives a kernel its
// devices' environment and, as documented, confines no device.
func TestHostDriverDevices(t *testing.T) {
	requireRoot(t)
	a, b, r := fakeGPUs(t)
	cfg := testutils.TaskConfig(t, "/bin/sh", "-c", devicesProbe, "probe", a.Path, b.Path)
	cfg.Devices = r
	res, out, stderr := runToEnd(t, NewHost(slogWarn()), cfg)
	if !res.Successful() {
		t.Fatalf("result %+v, stderr %q", res, stderr)
	}
	checkOpens(t, out, "No such device or address")
}

package runc

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/cgroups"

	"github.com/corral-dev/corral/drivers/internal/drivertest"
	"github.com/corral-dev/corral/plugins/drivers"
	"github.com/corral-dev/corral/plugins/drivers/testutils"
	"github.com/corral-dev/corral/structs"
)

// devicesProbe prints what a kernel sees of its devices: the given node
// A, the other node B, the environment and the mounted library.
const devicesProbe = `A=$1; B=$2; LIB=$3
[ -c "$A" ] && echo "A:present"
[ -e "$B" ] && echo "B:present" || echo "B:absent"
cat "$A" 2>&1 </dev/null
cat "$B" 2>&1 </dev/null
echo "NV=$NVIDIA_VISIBLE_DEVICES CUDA=$CUDA_VISIBLE_DEVICES"
cat "$LIB"
{ echo x >"$LIB"; } 2>&1 || echo "write:failed"
`

// checkDevicesProbe checks devicesProbe's output: A is there and the
// device cgroup lets it be opened (ENXIO: no driver behind the fake
// major), B is not there, the devices' environment won over the task's and
// the library is there, read-only.
func checkDevicesProbe(t *testing.T, out string) {
	t.Helper()
	for _, want := range []string{
		"A:present", "B:absent", "No such device or address", "NV=GPU-fake-0 CUDA=GPU-fake-0",
		"fake driver library", "Read-only file system", "write:failed",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("kernel output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "Operation not permitted") {
		t.Errorf("the device cgroup denied the given node:\n%s", out)
	}
}

// checkDeviceRules checks, on cgroup v1, that the container's device
// cgroup allows node a and not node b.
func checkDeviceRules(t *testing.T, d *Driver, id string, a, b structs.DeviceNode) {
	t.Helper()
	if cgroups.IsCgroup2UnifiedMode() {
		return // an eBPF program, not readable as a list
	}
	tk, err := d.get(id)
	if err != nil {
		t.Fatal(err)
	}
	list, err := os.ReadFile(filepath.Join(tk.state.CgroupPaths["devices"], "devices.list"))
	if err != nil {
		t.Fatal(err)
	}
	rule := func(n structs.DeviceNode) string { return fmt.Sprintf("c %d:%d rwm", n.Major, n.Minor) }
	if !strings.Contains(string(list), rule(a)) || strings.Contains(string(list), rule(b)) || strings.Contains(string(list), "a *:*") {
		t.Errorf("devices.list = %q, want %q and not %q nor a wildcard", list, rule(a), rule(b))
	}
}

func TestDevices(t *testing.T) {
	image := testImage(t)
	nodes := drivertest.FakeDeviceNodes(t, "", 2)
	a, b := nodes[0], nodes[1]
	libDir, err := os.MkdirTemp("", "corral-fakelib-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(libDir) })
	lib := filepath.Join(libDir, "libfake.so.1")
	if err := os.Chmod(libDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(lib, []byte("fake driver library\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// No /usr in the image: its parents are made in the writable root, by
	// the kernel's root (in a user namespace: the owner of that root).
	const libPath = "/usr/lib/corral-fake/libfake.so.1"
	reservation := func() *structs.DeviceReservation {
		return &structs.DeviceReservation{
			IDs: []string{"GPU-fake-0"}, Nodes: []structs.DeviceNode{a}, Deny: []structs.DeviceNode{b},
			Mounts: []structs.DeviceMount{{HostPath: lib, Path: libPath, ReadOnly: true}},
			Env:    map[string]string{"NVIDIA_VISIBLE_DEVICES": "GPU-fake-0", "CUDA_VISIBLE_DEVICES": "GPU-fake-0"},
		}
	}
	for _, mode := range []UserNSMode{UserNSAuto, UserNSOff} {
		t.Run("userns-"+mode.String(), func(t *testing.T) {
			stateDir := t.TempDir()
			d := newTestDriver(t, WithStateDir(stateDir), WithUserNS(mode))
			if mode == UserNSAuto && d.usernsWanted() != nil {
				t.Skipf("no user namespaces here: %v", d.usernsWanted())
			}
			cfg := taskConfig(t, "/bin/sh", "-c", devicesProbe+"echo ready; exec sleep 1000", "probe", a.Path, b.Path, libPath)
			cfg.RootFS = image
			cfg.Env = map[string]string{"NVIDIA_VISIBLE_DEVICES": "all"}
			cfg.Devices = reservation()
			h := testutils.StartTask(t, d, cfg)
			testutils.WaitForLog(t, cfg.StdoutPath, "ready", testTimeout)
			checkDevicesProbe(t, testutils.ReadLog(t, cfg.StdoutPath))
			checkDeviceRules(t, d, cfg.ID, a, b)

			// The agent restarts: the recovered container keeps its rules,
			// and a command run in it sees the same.
			second := newTestDriver(t, WithStateDir(stateDir), WithUserNS(mode))
			drivertest.Recover(t, second, h)
			out, code := execOutput(t, second, cfg.ID, nil, "/bin/sh", "-c", devicesProbe, "probe", a.Path, b.Path, libPath)
			if code != 0 {
				t.Errorf("exec after Recover exited %d", code)
			}
			checkDevicesProbe(t, out)
			checkDeviceRules(t, second, cfg.ID, a, b)
		})
	}

	t.Run("unusable reservations fail the start", func(t *testing.T) {
		d := newTestDriver(t)
		for name, r := range map[string]*structs.DeviceReservation{
			"missing node":   {Nodes: []structs.DeviceNode{{Path: a.Path + "-gone", Type: "c", Major: a.Major, Minor: 7}}},
			"wrong number":   {Nodes: []structs.DeviceNode{{Path: a.Path, Type: "c", Major: a.Major, Minor: 9}}},
			"missing mount":  {Mounts: []structs.DeviceMount{{HostPath: lib + "-gone", Path: libPath}}},
			"invalid config": {Nodes: []structs.DeviceNode{{Path: "fakegpu0", Type: "c"}}},
		} {
			cfg := taskConfig(t, "true")
			cfg.RootFS = image
			cfg.Devices = r
			h, err := d.Start(context.Background(), cfg)
			if err == nil {
				_ = d.Destroy(context.Background(), h.Config.ID, true)
				t.Errorf("%s: Start succeeded", name)
				continue
			}
			t.Logf("%s: %v", name, err)
			if name == "invalid config" && !errors.Is(err, drivers.ErrInvalidConfig) {
				t.Errorf("%s: %v, want ErrInvalidConfig", name, err)
			}
		}
	})
}

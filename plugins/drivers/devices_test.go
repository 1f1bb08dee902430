package drivers

import (
	"errors"
	"reflect"
	"testing"

	gproto "google.golang.org/protobuf/proto"

	"github.com/corral-dev/corral/plugins/drivers/proto"
	"github.com/corral-dev/corral/structs"
)

func TestDevicesRoundTrip(t *testing.T) {
	full := &structs.DeviceReservation{
		IDs:    []string{"GPU-1", "GPU-2"},
		Nodes:  []structs.DeviceNode{{Path: "/dev/nvidia0", Type: "c", Major: 195, Minor: 0, Perms: "rwm"}, {Path: "/dev/nvidiactl", Type: "c", Major: 195, Minor: 255, Perms: "rw"}},
		Deny:   []structs.DeviceNode{{Path: "/dev/nvidia1", Type: "c", Major: 195, Minor: 1, Perms: "rwm"}},
		Mounts: []structs.DeviceMount{{HostPath: "/usr/lib/libcuda.so.1", Path: "/usr/lib/libcuda.so.1", ReadOnly: true}},
		Env:    map[string]string{"NVIDIA_VISIBLE_DEVICES": "GPU-1,GPU-2", "CUDA_VISIBLE_DEVICES": "GPU-1,GPU-2"},
	}
	for name, r := range map[string]*structs.DeviceReservation{"nil": nil, "empty": {}, "full": full} {
		t.Run(name, func(t *testing.T) {
			cfg := &TaskConfig{ID: "k1", Devices: r}
			// Through the wire format too: presence of the message survives.
			b, err := gproto.Marshal(taskConfigToProto(cfg))
			if err != nil {
				t.Fatal(err)
			}
			var p proto.TaskConfig
			if err := gproto.Unmarshal(b, &p); err != nil {
				t.Fatal(err)
			}
			got := taskConfigFromProto(&p)
			if !reflect.DeepEqual(got.Devices, r) {
				t.Errorf("Devices round trip = %#v, want %#v", got.Devices, r)
			}
		})
	}
}

func TestValidateDevices(t *testing.T) {
	node := structs.DeviceNode{Path: "/dev/nvidia0", Type: "c", Major: 195, Perms: "rwm"}
	ok := []*structs.DeviceReservation{
		nil, {}, {Nodes: []structs.DeviceNode{node}, Deny: []structs.DeviceNode{{Path: "/dev/nvidia1", Type: "c", Major: 195, Minor: 1}}},
		{Mounts: []structs.DeviceMount{{HostPath: "/usr/bin/nvidia-smi", Path: "/usr/bin/nvidia-smi", ReadOnly: true}}, Env: map[string]string{"A": "1"}},
	}
	for _, r := range ok {
		if err := ValidateDevices(r); err != nil {
			t.Errorf("ValidateDevices(%+v) = %v, want nil", r, err)
		}
	}
	with := func(f func(n *structs.DeviceNode)) *structs.DeviceReservation {
		n := node
		f(&n)
		return &structs.DeviceReservation{Nodes: []structs.DeviceNode{n}}
	}
	bad := map[string]*structs.DeviceReservation{
		"relative path": with(func(n *structs.DeviceNode) { n.Path = "dev/nvidia0" }),
		"unclean path":  with(func(n *structs.DeviceNode) { n.Path = "/dev/../etc/x" }),
		"type":          with(func(n *structs.DeviceNode) { n.Type = "p" }),
		"major":         with(func(n *structs.DeviceNode) { n.Major = -1 }),
		"perms":         with(func(n *structs.DeviceNode) { n.Perms = "rwx" }),
		"deny type":     {Deny: []structs.DeviceNode{{Path: "/dev/x", Type: "a"}}},
		"mount":         {Mounts: []structs.DeviceMount{{HostPath: "/lib/x", Path: "lib/x"}}},
		"mount root":    {Mounts: []structs.DeviceMount{{HostPath: "/lib", Path: "/"}}},
		"env":           {Env: map[string]string{"A=B": "1"}},
	}
	for name, r := range bad {
		if err := ValidateDevices(r); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%s: ValidateDevices = %v, want ErrInvalidConfig", name, err)
		}
	}
}

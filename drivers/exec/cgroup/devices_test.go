package cgroup

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
)

func TestV1DenyDevices(t *testing.T) {
	deny := []Device{{Path: "/dev/nvidia1", Type: "c", Major: 195, Minor: 1}}
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

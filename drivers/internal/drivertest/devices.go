package drivertest

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/corral-dev/corral/internal/devnode"
	"github.com/corral-dev/corral/structs"
)

// FakeDeviceNodes makes n character device nodes (rw for all, minors
// 0..n-1) of a major number that no driver of this machine registered, in
// a fresh directory below parent ("": the system's temporary directory)
// that every user may pass (not below the 0700 t.TempDir), removed after
// the test. Opening such a node fails with ENXIO where the
// device cgroup allows it and with EPERM where it denies it, which tells
// the cgroup's decision apart. It needs root.
func FakeDeviceNodes(t testing.TB, parent string, n int) []structs.DeviceNode {
	t.Helper()
	major, err := devnode.UnusedCharMajor()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp(parent, "corral-fakedev-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	nodes := make([]structs.DeviceNode, n)
	for i := range nodes {
		p := filepath.Join(dir, "fakegpu"+strconv.Itoa(i))
		if err := devnode.Make(p, major, i); err != nil {
			t.Fatal(err)
		}
		nodes[i] = structs.DeviceNode{Path: p, Type: "c", Major: int64(major), Minor: int64(i), Perms: "rwm"}
	}
	return nodes
}

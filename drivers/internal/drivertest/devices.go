package drivertest

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

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
	major, err := unusedCharMajor()
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
	old := unix.Umask(0)
	defer unix.Umask(old)
	for i := range nodes {
		p := filepath.Join(dir, "fakegpu"+strconv.Itoa(i))
		if err := unix.Mknod(p, unix.S_IFCHR|0o666, int(unix.Mkdev(uint32(major), uint32(i)))); err != nil {
			t.Fatalf("mknod %s: %v", p, err)
		}
		nodes[i] = structs.DeviceNode{Path: p, Type: "c", Major: int64(major), Minor: int64(i), Perms: "rwm"}
	}
	return nodes
}

// unusedCharMajor returns a major number from the range that Linux keeps
// for local use (234-254) that /proc/devices does not list for a
// character driver.
func unusedCharMajor() (int, error) {
	b, err := os.ReadFile("/proc/devices")
	if err != nil {
		return 0, err
	}
	var used []int
	for line := range strings.Lines(string(b)) {
		if strings.HasPrefix(line, "Block devices") {
			break
		}
		if f := strings.Fields(line); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil {
				used = append(used, n)
			}
		}
	}
	for m := 234; m <= 254; m++ {
		if !slices.Contains(used, m) {
			return m, nil
		}
	}
	return 0, fmt.Errorf("every character major of 234-254 is in use (/proc/devices)")
}

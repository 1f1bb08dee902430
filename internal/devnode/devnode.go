// Package devnode helps tests make fake device nodes: character nodes of
// a major number no driver of this machine registered, which a process may
// open only to get ENXIO (where its device cgroup allows the node) or
// EPERM (where the cgroup denies it).
package devnode

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// UnusedCharMajor returns a major number from the range Linux keeps for
// local use (234-254) that /proc/devices does not list for a character
// driver.
func UnusedCharMajor() (int, error) {
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

// Make creates a character node at path (mode 0666 whatever the umask).
func Make(path string, major, minor int) error {
	old := unix.Umask(0)
	defer unix.Umask(old)
	if err := unix.Mknod(path, unix.S_IFCHR|0o666, int(unix.Mkdev(uint32(major), uint32(minor)))); err != nil {
		return fmt.Errorf("mknod %s: %w", path, err)
	}
	return nil
}

package runc

import (
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/opencontainers/cgroups"
	"github.com/opencontainers/cgroups/manager"
	"golang.org/x/sys/unix"
)

// cgroupPath returns the container's cgroup path below the roots of the
// hierarchies: /<parent>/runc-<task ID>.
func (d *Driver) cgroupPath(taskID string) string {
	return "/" + d.cgroupParent + "/runc-" + taskID
}

// cgroupParents tracks the parent cgroups that runc drivers of this process
// created, so that the last container below one removes it (libcontainer
// removes only the leaves), while parents that somebody else made (an
// administrator, the exec driver) stay.
var cgroupParents = struct {
	// creating is held shared while a Start creates parents and the leaf
	// below them, and exclusively while a Destroy removes parents, so that
	// no Start loses a parent it just saw.
	creating sync.RWMutex
	mu       sync.Mutex
	owned    map[string]bool
}{owned: map[string]bool{}}

// own records dirs as parents that a runc driver created.
func ownCgroupParents(dirs []string) {
	cgroupParents.mu.Lock()
	defer cgroupParents.mu.Unlock()
	for _, d := range dirs {
		cgroupParents.owned[d] = true
	}
}

// makeCgroupParents creates the missing parents of the cgroups that c will
// get in every hierarchy and returns those it created, deepest first. The
// caller holds cgroupParents.creating shared until the container's leaves
// exist.
func makeCgroupParents(c *cgroups.Cgroup) ([]string, error) {
	m, err := manager.New(c)
	if err != nil {
		return nil, fmt.Errorf("cgroup manager: %w", err)
	}
	var created []string
	defer func() { ownCgroupParents(created) }()
	for _, leaf := range m.GetPaths() {
		var missing []string
		for dir := filepath.Dir(leaf); dir != "/" && dir != "."; dir = filepath.Dir(dir) {
			if _, err := os.Stat(dir); err == nil {
				break
			}
			missing = append(missing, dir)
		}
		for _, dir := range slices.Backward(missing) {
			if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
				return created, fmt.Errorf("creating cgroup %s: %w", dir, err)
			}
			created = append(created, dir)
		}
	}
	return deepestFirst(created), nil
}

// cgroupLeaves returns the cgroups that c will get, by hierarchy, as
// libcontainer's state records them.
func cgroupLeaves(c *cgroups.Cgroup) (map[string]string, error) {
	m, err := manager.New(c)
	if err != nil {
		return nil, fmt.Errorf("cgroup manager: %w", err)
	}
	return maps.Clone(m.GetPaths()), nil
}

// cgroupParentsOf returns the parents of the leaves in paths that lie
// within the driver's parent cgroup (levels deep), deepest first.
func cgroupParentsOf(paths map[string]string, levels int) []string {
	var dirs []string
	for _, leaf := range paths {
		dir := leaf
		for range levels {
			dir = filepath.Dir(dir)
			dirs = append(dirs, dir)
		}
	}
	return deepestFirst(dirs)
}

// removeCgroupParents removes those of dirs that a runc driver created and
// that no cgroup uses any more.
func removeCgroupParents(dirs []string) error {
	dirs = deepestFirst(slices.Clone(dirs))
	cgroupParents.creating.Lock()
	defer cgroupParents.creating.Unlock()
	cgroupParents.mu.Lock()
	defer cgroupParents.mu.Unlock()
	var errs []error
	for _, dir := range dirs {
		if !cgroupParents.owned[dir] {
			continue
		}
		err := unix.Rmdir(dir)
		switch {
		case err == nil || errors.Is(err, unix.ENOENT):
			delete(cgroupParents.owned, dir)
		case errors.Is(err, unix.EBUSY) || errors.Is(err, unix.ENOTEMPTY):
			// Another container still lives below it.
		default:
			errs = append(errs, fmt.Errorf("removing cgroup %s: %w", dir, err))
		}
	}
	return errors.Join(errs...)
}

// deepestFirst sorts dirs by depth, deepest first, without duplicates.
func deepestFirst(dirs []string) []string {
	slices.SortFunc(dirs, func(a, b string) int {
		if d := strings.Count(b, "/") - strings.Count(a, "/"); d != 0 {
			return d
		}
		return strings.Compare(a, b)
	})
	return slices.Compact(dirs)
}

// cgroupPids returns the processes in the container's cgroups.
func cgroupPids(paths map[string]string) []int {
	seen := map[int]bool{}
	var pids []int
	for _, p := range paths {
		ps, err := cgroups.GetAllPids(p)
		if err != nil {
			continue
		}
		for _, pid := range ps {
			if !seen[pid] {
				seen[pid] = true
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

// oomKilled reports whether the kernel's OOM killer killed a process in
// the container's memory cgroup.
func oomKilled(paths map[string]string) bool {
	var file string
	if p := paths["memory"]; p != "" {
		file = filepath.Join(p, "memory.oom_control") // v1
	} else if p := paths[""]; p != "" && cgroups.IsCgroup2UnifiedMode() {
		file = filepath.Join(p, "memory.events") // v2
	} else {
		return false
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return false
	}
	for line := range strings.Lines(string(b)) {
		if f := strings.Fields(line); len(f) == 2 && f[0] == "oom_kill" {
			n, _ := strconv.Atoi(f[1])
			return n > 0
		}
	}
	return false
}

// cgroupVersion describes the node's cgroup setup: "v2", or "v1" (with
// "hybrid" when a v2 hierarchy is mounted too).
func cgroupVersion() string {
	switch {
	case cgroups.IsCgroup2UnifiedMode():
		return "v2"
	case cgroups.IsCgroup2HybridMode():
		return "v1 (hybrid)"
	default:
		return "v1"
	}
}

// missingControllers lists which of the cpu, memory and pids controllers
// the node does not offer.
func missingControllers() []string {
	var missing []string
	if cgroups.IsCgroup2UnifiedMode() {
		b, err := os.ReadFile("/sys/fs/cgroup/cgroup.controllers")
		have := strings.Fields(string(b))
		for _, c := range []string{"cpu", "memory", "pids"} {
			if err != nil || !slices.Contains(have, c) {
				missing = append(missing, c)
			}
		}
		return missing
	}
	for _, c := range []string{"cpu", "cpuacct", "memory", "pids", "devices"} {
		if _, err := cgroups.FindCgroupMountpoint("", c); err != nil {
			missing = append(missing, c)
		}
	}
	return missing
}

package testutils

import (
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/corral-dev/corral/plugins/drivers"
)

// HostPidsByCgroup turns pids that an exec task printed, which are its pid
// namespace's, into the host's: the task's processes are those in the
// cgroups named after it. For WithHostPids, with drivers that run tasks
// in pid namespaces of their own (exec, also behind a plugin).
func HostPidsByCgroup(t testing.TB, _ drivers.Driver, taskID string, pids []int) []int {
	t.Helper()
	return HostPids(t, taskID, pids, func(procDir string) bool {
		cg, err := os.ReadFile(procDir + "/cgroup")
		return err == nil && strings.Contains(string(cg), "/"+taskID+"\n")
	})
}

// HostPids turns pids of a task's pid namespace into the host's, among
// the processes whose /proc directory mine accepts.
func HostPids(t testing.TB, taskID string, pids []int, mine func(procDir string) bool) []int {
	t.Helper()
	byNS := map[int]int{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		hp, err := strconv.Atoi(e.Name())
		if err != nil || !mine("/proc/"+e.Name()) {
			continue
		}
		st, err := os.ReadFile("/proc/" + e.Name() + "/status")
		if err != nil {
			continue
		}
		for line := range strings.Lines(string(st)) {
			if rest, ok := strings.CutPrefix(line, "NSpid:"); ok {
				if f := strings.Fields(rest); len(f) > 0 {
					if n, err := strconv.Atoi(f[len(f)-1]); err == nil {
						byNS[n] = hp
					}
				}
			}
		}
	}
	out := make([]int, len(pids))
	for i, p := range pids {
		hp, ok := byNS[p]
		if !ok {
			t.Fatalf("task %s: no process with pid %d among its processes (have %v)", taskID, p, byNS)
		}
		out[i] = hp
	}
	return out
}

package drivers_test

import (
	"log/slog"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/corral-dev/corral/drivers/exec"
	"github.com/corral-dev/corral/plugins/drivers"
	"github.com/corral-dev/corral/plugins/drivers/testutils"
)

// TestConformanceInMemory runs the conformance suite against the exec
// driver through the plugin protocol over an in-memory go-plugin gRPC
// connection.
func TestConformanceInMemory(t *testing.T) {
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	testutils.RunConformance(t, func(t *testing.T) drivers.Driver {
		if os.Geteuid() != 0 {
			t.Skip("the exec driver isolates kernels, which needs root")
		}
		return testutils.InMemoryPlugin(t, exec.New(logger))
	}, testutils.WithHostPids(hostPidsByCgroup))
}

// hostPidsByCgroup turns pids that an exec task printed, which are its pid
// namespace's, into the host's: the task's processes are those in the
// cgroups named after it.
func hostPidsByCgroup(t testing.TB, _ drivers.Driver, taskID string, pids []int) []int {
	t.Helper()
	byNS := map[int]int{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		hp, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cg, err := os.ReadFile("/proc/" + e.Name() + "/cgroup")
		if err != nil || !strings.Contains(string(cg), "/"+taskID+"\n") {
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
			t.Fatalf("task %s: no process with pid %d in its cgroups (have %v)", taskID, p, byNS)
		}
		out[i] = hp
	}
	return out
}

// TestLaunchPlugin builds the example plugin and runs it as a process, as
// docs/plugins.md tells plugin authors to do in their tests.
func TestLaunchPlugin(t *testing.T) {
	bin := testutils.BuildPlugin(t, "github.com/corral-dev/corral/cmd/corral-driver-example")
	d := testutils.LaunchPlugin(t, bin)
	if d.Name() != "example" {
		t.Fatalf("Name = %q, want example", d.Name())
	}
	cfg := testutils.TaskConfig(t, "/bin/sh", "-c", "echo hi")
	testutils.StartTask(t, d, cfg)
	if res := testutils.WaitResult(t, d, cfg.ID, 10*time.Second); !res.Successful() {
		t.Fatalf("result = %+v", res)
	}
	if got := testutils.ReadLog(t, cfg.StdoutPath); got != "hi\n" {
		t.Errorf("stdout = %q", got)
	}
}

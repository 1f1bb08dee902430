package exec

import (
	"os"
	osexec "os/exec"
	"path/filepath"
	"testing"

	"github.com/corral-dev/corral/drivers/exec/taskrun"
	"github.com/corral-dev/corral/drivers/shim"
	"github.com/corral-dev/corral/plugins/drivers/testutils"
)

// buildShimHelper builds cmd/corral-shim into a temporary directory and
// returns its path.
func buildShimHelper(tb testing.TB) string {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "corral-shim")
	build := osexec.Command("go", "build", "-o", path, "../../cmd/corral-shim")
	if out, err := build.CombinedOutput(); err != nil {
		tb.Fatalf("building corral-shim: %v\n%s", err, out)
	}
	return path
}

// useShimHelper builds cmd/corral-shim and makes the exec and host
// drivers' shims run from it until tb ends; it returns the helper's path.
func useShimHelper(tb testing.TB) string {
	tb.Helper()
	path := buildShimHelper(tb)
	shim.UseHelper(path, taskrun.Kind)
	tb.Cleanup(func() { shim.UseHelper("", taskrun.Kind) })
	return path
}

// exeOf returns the binary that process pid runs.
func exeOf(t *testing.T, pid int) string {
	t.Helper()
	exe, err := os.Readlink(filepath.Join("/proc", itoa(pid), "exe"))
	if err != nil {
		t.Fatalf("reading the binary of process %d: %v", pid, err)
	}
	return exe
}

// TestShimHelper checks that exec and host tasks run under shims (and the
// exec task under an init) from the corral-shim binary, and that they and
// Exec in them work as with shims of the test binary.
func TestShimHelper(t *testing.T) {
	requireRoot(t)
	helper := useShimHelper(t)
	for _, d := range []*Driver{New(slogWarn()), NewHost(slogWarn())} {
		t.Run(d.Name(), func(t *testing.T) {
			cfg := testutils.TaskConfig(t, "/bin/sh", "-c", "echo up; exec sleep 1000")
			testutils.StartTask(t, d, cfg)
			testutils.WaitForLog(t, cfg.StdoutPath, "up", testTimeout)
			tk, err := d.get(cfg.ID)
			if err != nil {
				t.Fatal(err)
			}
			if got := exeOf(t, tk.shim.ShimPid); got != helper {
				t.Errorf("the shim runs %s, want the helper %s", got, helper)
			}
			if d.isolated {
				if got := exeOf(t, tk.pid); got != helper {
					t.Errorf("the task's init runs %s, want the helper %s", got, helper)
				}
			}
			if code, out := execOut(t, d, cfg.ID, "/bin/sh", "-c", "echo in; exit 4"); code != 4 || out != "in\n" {
				t.Errorf("exec = %d, %q; want 4, %q", code, out, "in\n")
			}
			if err := tk.Signal(9); err != nil {
				t.Fatal(err)
			}
			if res := testutils.WaitResult(t, d, cfg.ID, testTimeout); res.Signal != 9 || res.ExitCode != 137 || res.Err != nil {
				t.Errorf("result = %+v, want killed by signal 9", res)
			}
		})
	}
}

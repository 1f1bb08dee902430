package drivers_test

import (
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/corral-dev/corral/drivers/exec"
	"github.com/corral-dev/corral/plugins/drivers"
	"github.com/corral-dev/corral/plugins/drivers/testutils"
	"github.com/corral-dev/corral/structs"
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
	}, testutils.WithHostPids(testutils.HostPidsByCgroup))
}

// TestLaunchPlugin builds the example plugin and runs it as a process, as
// docs/plugins.md tells plugin authors to do in their tests.
func TestLaunchPlugin(t *testing.T) {
	bin := testutils.BuildPlugin(t, "github.com/corral-dev/corral/cmd/corral-driver-example")
	d := testutils.LaunchPlugin(t, bin)
	if d.Name() != "example" {
		t.Fatalf("Name = %q, want example", d.Name())
	}
	// The kernel's devices cross the protocol: the example applies their
	// environment.
	cfg := testutils.TaskConfig(t, "/bin/sh", "-c", `echo hi "$NVIDIA_VISIBLE_DEVICES"`)
	cfg.Devices = &structs.DeviceReservation{IDs: []string{"GPU-x"}, Env: map[string]string{"NVIDIA_VISIBLE_DEVICES": "GPU-x"}}
	testutils.StartTask(t, d, cfg)
	if res := testutils.WaitResult(t, d, cfg.ID, 10*time.Second); !res.Successful() {
		t.Fatalf("result = %+v", res)
	}
	if got := testutils.ReadLog(t, cfg.StdoutPath); got != "hi GPU-x\n" {
		t.Errorf("stdout = %q, want %q", got, "hi GPU-x\n")
	}
}

// TestExecTTYInMemory runs interactive exec (terminal, resize, ^C, stdin)
// against the exec driver through the plugin protocol.
func TestExecTTYInMemory(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the exec driver isolates kernels, which needs root")
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	d := testutils.InMemoryPlugin(t, exec.New(logger))
	cfg := testutils.TaskConfig(t, "sleep", "1000")
	testutils.StartTask(t, d, cfg)
	testutils.RunExecTTY(t, d, cfg.ID)
}

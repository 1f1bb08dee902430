package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/corral-dev/corral/drivers/exec/taskrun"
	"github.com/corral-dev/corral/drivers/shim"
)

// runShimIfRequested makes this process a task's shim, and never returns,
// when a driver re-executed the binary for that (shim.Launch); otherwise it
// returns at once and tells Launch that this binary can act as a shim. main
// calls it before anything else.
func runShimIfRequested() { shim.MaybeRun() }

// shimHelperName is the helper binary, built from cmd/corral-shim, that
// runs the exec and host kernels' shims and inits when it lies next to
// this binary: it starts in a fraction of this binary's start-up time.
const shimHelperName = "corral-shim"

// shimHelperTimeout bounds how long `corral-shim version` may take.
const shimHelperTimeout = 5 * time.Second

// useShimHelper makes the exec and host kernels' shims run from the
// corral-shim next to this binary when it is there and of this version;
// otherwise it logs why they re-execute this binary. Agents and dev call it
// before they create their drivers.
func useShimHelper(logger *slog.Logger) {
	exe, err := os.Executable()
	if err == nil {
		var path string
		if path, err = findShimHelper(filepath.Join(filepath.Dir(exe), shimHelperName), version); err == nil {
			shim.UseHelper(path, taskrun.Kind)
			logger.Debug("exec kernels' shims run from the helper binary", "path", path, "version", version)
			return
		}
	}
	logger.Info("exec kernels' shims re-exec the agent binary (slower)", "reason", err)
}

// findShimHelper returns path when it is an executable file whose
// `version` output is that of version want, or an error that says why it
// cannot be used.
func findShimHelper(path, want string) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("no %s next to the agent binary (make build builds it)", path)
		}
		return "", err
	}
	if !fi.Mode().IsRegular() || fi.Mode()&0o111 == 0 {
		return "", fmt.Errorf("%s is not an executable file", path)
	}
	ctx, cancel := context.WithTimeout(context.Background(), shimHelperTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, path, "version").Output()
	if err != nil {
		return "", fmt.Errorf("%s version: %w", path, err)
	}
	got := strings.TrimSpace(string(out))
	if got != shimHelperName+" "+want {
		return "", fmt.Errorf("%s is %q, not version %s of the agent: rebuild both (make build)", path, got, want)
	}
	return path, nil
}

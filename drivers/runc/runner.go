package runc

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"time"

	"golang.org/x/sys/unix"

	"github.com/corral-dev/corral/drivers/shim"
)

// shimSubdir is the directory below a container's dir (rootfsState.Dir)
// that holds its shim's files.
const shimSubdir = "shim"

func init() { shim.Register(driverName, runContainer) }

// runContainer is the runc driver's shim.Runner: it creates and starts the
// container that a containerSpec describes, so that the container's init is
// a child of the calling process (the task's shim, which outlives agent
// restarts), reaps the init and reports how it ended. The runner only
// starts and reaps: the agent signals, execs into, samples and destroys
// the container through libcontainer.Load. A container whose start the
// agent gave up on is killed and destroyed here.
func runContainer(ctx context.Context, raw json.RawMessage, started func(pid int) error) (shim.ExitStatus, error) {
	var spec containerSpec
	if err := json.Unmarshal(raw, &spec); err != nil {
		return shim.ExitStatus{}, fmt.Errorf("reading container spec: %w", err)
	}
	if spec.Config == nil {
		return shim.ExitStatus{}, fmt.Errorf("container spec %s has no libcontainer config", spec.ID)
	}
	rc, err := launch(&spec)
	if err != nil {
		return shim.ExitStatus{}, err
	}
	// The paths, for the OOM check once the init is gone.
	var paths map[string]string
	if st, err := rc.container.State(); err == nil {
		paths = maps.Clone(st.CgroupPaths)
	}
	if err := started(rc.pid); err != nil {
		_ = rc.container.Signal(unix.SIGKILL)
		rc.wait()
		_ = rc.container.Destroy()
		return shim.ExitStatus{}, err
	}
	res := rc.wait()
	st := shim.ExitStatus{ExitCode: res.ExitCode, Signal: res.Signal, ExitedAt: time.Now()}
	st.OOMKilled = oomKilled(paths)
	return st, res.Err
}

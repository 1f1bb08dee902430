// Command corral-driver-example is an example external driver plugin for
// plugin authors: a complete, working driver named "example" that runs
// tasks as native processes by wrapping the built-in exec driver, served
// over go-plugin with drivers.Serve. It passes the driver conformance suite
// (see plugins/loader/loader_test.go) and shows the whole contract of a
// plugin binary in a few lines; copy its shape, not its wrapping.
//
// Build it with `make plugins` (bin/plugins/corral-driver-example) and
// start the agent with `corral agent -plugin-dir bin/plugins`. Run by hand,
// it says that it is a plugin and exits 1. See docs/plugins.md.
package main

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/corral-dev/corral/drivers/exec"
	"github.com/corral-dev/corral/drivers/shim"
	"github.com/corral-dev/corral/plugins/drivers"
)

// name is the driver name sessions use to pick this driver.
const name = "example"

// version is this plugin's own version, reported to the agent.
const version = "0.1.0"

// driver is the exec driver under another name. The handles it returns say
// "example"; the wrapped driver wants "exec" back on Recover.
type driver struct {
	*exec.Driver
}

var (
	_ drivers.Driver          = (*driver)(nil)
	_ drivers.PluginVersioner = (*driver)(nil)
)

// Name returns "example".
func (d *driver) Name() string { return name }

// PluginVersion returns the plugin's version for the agent's log.
func (d *driver) PluginVersion() string { return version }

// Fingerprint reports what the exec driver finds, described as this
// example.
func (d *driver) Fingerprint(ctx context.Context) (*drivers.Fingerprint, error) {
	fp, err := d.Driver.Fingerprint(ctx)
	if err != nil {
		return nil, err
	}
	fp.Description = "example plugin driver: " + fp.Description
	return fp, nil
}

// Start starts the task with the exec driver and labels its handle.
//
// cfg.Devices (a kernel's GPUs) must be applied all or nothing: a driver
// that cannot apply every part of it fails the start. The exec driver
// adds its Env to the kernel's environment and denies its Deny nodes in
// the kernel's device cgroup; its Nodes and Mounts are host paths, which
// native processes see as they are. A plugin that wraps nothing checks it
// with drivers.ValidateDevices first (see docs/plugins.md).
func (d *driver) Start(ctx context.Context, cfg *drivers.TaskConfig) (*drivers.TaskHandle, error) {
	h, err := d.Driver.Start(ctx, cfg)
	if err != nil {
		return nil, err
	}
	h.Driver = name
	return h, nil
}

// Recover hands the exec driver a handle of this driver under its own name.
func (d *driver) Recover(ctx context.Context, h *drivers.TaskHandle) error {
	if h == nil {
		return d.Driver.Recover(ctx, nil)
	}
	if h.Driver != "" && h.Driver != name {
		return fmt.Errorf("%w: handle belongs to driver %q, not %q", drivers.ErrInvalidConfig, h.Driver, name)
	}
	c := *h
	c.Driver = d.Driver.Name()
	return d.Driver.Recover(ctx, &c)
}

func main() {
	// Tasks run under shims, re-executions of this binary in their own
	// session: they outlive this plugin process (a crash, or the agent
	// ending it) and record their exit status, so that a relaunched plugin
	// recovers them and still learns how they ended.
	shim.MaybeRun()
	// Plugins log JSON lines on stderr; the agent puts them in its own log.
	drivers.Serve(&driver{Driver: exec.New(drivers.PluginLogger(slog.LevelInfo))})
}

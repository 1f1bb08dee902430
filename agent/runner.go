package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/corral-dev/corral/plugins/drivers"
	"github.com/corral-dev/corral/structs"
)

// stopTimeout is how long a kernel gets between SIGTERM and SIGKILL.
const stopTimeout = 5 * time.Second

// kernelRunner drives one kernel through its driver and reports each
// status change.
type kernelRunner struct {
	a      *Agent
	id     string
	kernel *structs.Kernel
	driver drivers.Driver

	// handle is set for a kernel recovered after an agent restart.
	handle *drivers.TaskHandle
	// imagePorts are the apps the image's labels declare, reported with
	// RUNNING.
	imagePorts []structs.ServicePort

	stopOnce   sync.Once
	stopCh     chan struct{}
	stopReason string
	done       chan struct{}
}

func newKernelRunner(a *Agent, k *structs.Kernel, d drivers.Driver) *kernelRunner {
	return &kernelRunner{a: a, id: k.ID, kernel: k, driver: d, stopCh: make(chan struct{}), done: make(chan struct{})}
}

func (r *kernelRunner) requestStop(reason string) {
	r.stopOnce.Do(func() {
		r.stopReason = reason
		close(r.stopCh)
	})
}

func (r *kernelRunner) isDone() bool {
	select {
	case <-r.done:
		return true
	default:
		return false
	}
}

// kernelDir is where a kernel's working directory and logs live on the agent.
func (a *Agent) kernelDir(id string) string { return filepath.Join(a.cfg.DataDir, "kernels", id) }

// taskConfig turns a kernel record into the driver's task config.
func (r *kernelRunner) taskConfig() *drivers.TaskConfig {
	k := r.kernel
	dir := r.a.kernelDir(k.ID)
	env := map[string]string{
		"CORRAL_SESSION_ID":    k.SessionID,
		"CORRAL_KERNEL_ID":     k.ID,
		"CORRAL_CLUSTER_ROLE":  k.Role,
		"CORRAL_CLUSTER_IDX":   strconv.Itoa(k.Idx),
		"CORRAL_CLUSTER_HOST":  k.Hostname,
		"CORRAL_CLUSTER_HOSTS": k.Hostname,
		"CORRAL_CLUSTER_SIZE":  "1",
	}
	for key, v := range k.Env {
		env[key] = v
	}
	workdir := k.WorkDir
	if workdir == "" {
		workdir = filepath.Join(dir, "work")
	}
	// The driver sees the per-kernel limits (pids, disk) among the
	// resources, where it looks for them.
	res := k.Resources.Copy()
	for name, q := range k.Limits {
		res[name] = q
	}
	return &drivers.TaskConfig{
		ID: k.ID, SessionID: k.SessionID, Hostname: k.Hostname, Image: k.Image,
		Command: k.Command, Env: env, WorkDir: workdir, TaskDir: dir, Resources: res,
		StdoutPath: filepath.Join(dir, "stdout.log"), StderrPath: filepath.Join(dir, "stderr.log"),
	}
}

func (r *kernelRunner) run(ctx context.Context) {
	defer close(r.done)
	defer r.a.releaseCPUs(r.id)
	log := r.a.logger.With("kernel_id", r.id, "session_id", r.kernel.SessionID)
	cfg := r.taskConfig()
	if r.handle == nil {
		if !r.start(ctx, log, cfg) {
			return
		}
	} else {
		log.Info("reattached to kernel after agent restart", "driver", r.driver.Name())
	}
	waitCh, err := r.driver.Wait(ctx, r.id)
	if err != nil {
		r.destroy(log)
		r.finish(newUpdate(r.id, structs.KernelError, "driver wait: "+err.Error(), nil))
		return
	}
	var res *drivers.ExitResult
	stopped := false
	select {
	case res = <-waitCh:
	case <-r.stopCh:
		stopped = true
		if err := r.driver.Stop(context.Background(), r.id, stopTimeout, "SIGTERM"); err != nil {
			log.Warn("stopping kernel failed", "error", err)
		}
		select {
		case res = <-waitCh:
		case <-time.After(stopTimeout + 5*time.Second):
			log.Warn("kernel did not exit after stop; destroying it")
		}
	case <-ctx.Done():
		return // agent shutting down: the kernel keeps running
	}
	r.destroy(log)
	var code *int
	info := ""
	status := structs.KernelTerminated
	switch {
	case res == nil:
		info = "killed: " + r.stopReason
	case res.Err != nil:
		// The driver stopped the task for a reason of its own (a limit),
		// or lost it (its exit status, or the task itself after a plugin
		// relaunch): an error, unless we were stopping it.
		info = "exit status unknown: " + res.Err.Error()
		if errors.Is(res.Err, drivers.ErrStoppedByDriver) {
			info = res.Err.Error()
		}
		if !stopped {
			status = structs.KernelError
		}
	case res.Signal != 0:
		c := res.ExitCode
		code = &c
		info = fmt.Sprintf("killed by signal %d", res.Signal)
	default:
		c := res.ExitCode
		code = &c
		info = fmt.Sprintf("exited with code %d", c)
	}
	if res != nil && res.OOMKilled {
		info += " (out of memory)"
	}
	if stopped {
		info = r.stopReason + ": " + info
	}
	r.finish(newUpdate(r.id, status, info, code))
}

// start prepares the kernel's directory and starts it through the driver,
// persisting the driver's handle so a restarted agent can reattach.
func (r *kernelRunner) start(ctx context.Context, log *slog.Logger, cfg *drivers.TaskConfig) bool {
	rep := r.a.reporter
	rep.report(r.id, structs.KernelPreparing, "preparing kernel directory on agent "+r.a.cfg.Name, nil)
	devices, err := r.a.deviceReservation(r.kernel)
	if err != nil {
		r.fail(structs.KernelError, "GPUs: "+err.Error())
		return false
	}
	cfg.Devices = devices
	if err := r.applyOptions(log, cfg); err != nil {
		r.fail(structs.KernelError, err.Error())
		return false
	}
	if err := os.MkdirAll(cfg.WorkDir, 0o755); err != nil {
		r.fail(structs.KernelError, "preparing kernel directory: "+err.Error())
		return false
	}
	if r.kernel.Image != "" && !structs.IsDiskImage(r.kernel.Image) { // a disk image is the driver's to read
		if err := r.pullImage(ctx, cfg); err != nil {
			log.Warn("image pull failed", "image", r.kernel.Image, "error", err)
			r.fail(structs.KernelError, err.Error())
			return false
		}
	}
	select {
	case <-r.stopCh:
		r.fail(structs.KernelTerminated, r.stopReason+" (before it started)")
		return false
	default:
	}
	if err := r.prepareVolumes(cfg); err != nil {
		log.Warn("preparing volumes failed", "error", err)
		r.fail(structs.KernelError, "volumes: "+err.Error())
		return false
	}
	if err := r.prepareKernel(cfg); err != nil {
		log.Warn("preparing cluster launch failed", "error", err)
		r.fail(structs.KernelError, "cluster launch: "+err.Error())
		return false
	}
	if err := r.a.overlays.prepare(r.kernel, r.driver, cfg); err != nil {
		log.Warn("network setup failed", "error", err)
		r.a.overlays.release(r.kernel, r.driver)
		r.fail(structs.KernelError, "network: "+err.Error())
		return false
	}
	started := time.Now()
	h, err := r.driver.Start(ctx, cfg)
	r.a.metrics.observeDriverStart(r.driver.Name(), time.Since(started), err)
	if err != nil {
		r.a.overlays.release(r.kernel, r.driver)
		log.Warn("kernel failed to start", "error", err)
		r.fail(structs.KernelError, fmt.Sprintf("driver %s could not start the kernel: %v", r.driver.Name(), err))
		return false
	}
	if h.Driver == "" {
		h.Driver = r.driver.Name()
	}
	r.handle = h
	if err := r.a.store.put(&kernelRecord{Kernel: r.kernel, Handle: h}); err != nil {
		log.Error("persisting kernel handle failed: the kernel cannot be recovered after an agent restart", "error", err)
	}
	running := newUpdate(r.id, structs.KernelRunning, "started by driver "+r.driver.Name(), nil)
	running.Cpuset = r.kernel.Cpuset
	running.ImagePorts = r.imagePorts
	rep.reportUpdate(running, nil)
	return true
}

// finish records the final status locally and reports it; the local record
// goes away only once a server has accepted the report.
func (r *kernelRunner) finish(u *structs.KernelUpdate) {
	if err := r.a.store.setFinal(u); err != nil {
		r.a.logger.Error("recording final kernel status failed", "kernel_id", r.id, "error", err)
	}
	if err := r.a.store.put(&kernelRecord{Kernel: r.kernel, Final: u}); err != nil {
		r.a.logger.Error("persisting final kernel status failed", "kernel_id", r.id, "error", err)
	}
	r.a.reporter.reportUpdate(u, func() {
		if err := r.a.store.delete(r.id); err != nil {
			r.a.logger.Warn("removing kernel record failed", "kernel_id", r.id, "error", err)
		}
	})
}

// fail reports that the kernel ended before it ran, and records that
// final status with the kernel's start record.
func (r *kernelRunner) fail(status structs.KernelStatus, info string) {
	u := newUpdate(r.id, status, info, nil)
	if err := r.a.store.setFinal(u); err != nil {
		r.a.logger.Error("recording final kernel status failed", "kernel_id", r.id, "error", err)
	}
	r.a.reporter.reportUpdate(u, nil)
}

func (r *kernelRunner) destroy(log interface{ Warn(string, ...any) }) {
	if err := r.driver.Destroy(context.Background(), r.id, true); err != nil {
		log.Warn("destroying kernel failed", "error", err)
	}
	r.a.overlays.release(r.kernel, r.driver)
}

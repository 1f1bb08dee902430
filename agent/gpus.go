package agent

import (
	"errors"
	"fmt"
	"time"

	"github.com/corral-dev/corral/gpu"
	"github.com/corral-dev/corral/structs"
)

// gpuRefresh is how often the agent reads its GPUs again (health,
// utilisation, a device that fell off the bus).
const gpuRefresh = 10 * time.Second

// setupGPUs opens NVML (cfg.NVMLLib, or the default library) and reads the
// node's GPUs. A node without NVML logs one line and serves CPU work.
func (a *Agent) setupGPUs() {
	if a.cfg.NoGPUs {
		return
	}
	n, err := gpu.Open(a.cfg.NVMLLib)
	if err != nil {
		// Nothing of NVML is called after this (go-nvml would crash).
		a.logger.Info("no NVIDIA driver: 0 GPUs", "reason", err.Error())
		return
	}
	inv, err := n.Inventory()
	if err != nil {
		a.logger.Warn("reading the GPUs failed: 0 GPUs", "library", n.Path(), "error", err)
		n.Shutdown()
		return
	}
	files, src, err := gpu.DriverFiles(nil)
	if err != nil {
		a.logger.Warn("finding the NVIDIA driver's files for container kernels failed; they get device nodes only", "error", err)
	}
	a.nvml, a.gpuInv, a.driverFiles = n, inv, files
	a.logger.Info("GPUs found", "gpus", len(inv.Devices), "driver", inv.DriverVersion, "cuda", inv.CUDAVersion,
		"slots", inv.Slots().String(), "driver_files", len(files), "from", src)
}

// slots is the agent's capacity: CPU and memory, its healthy GPUs, and
// the operator's overrides (-cpu, -mem...) over both.
func (a *Agent) slots() structs.Slots {
	a.mu.Lock()
	inv := a.gpuInv
	a.mu.Unlock()
	s := a.capacity.Copy()
	for k, v := range inv.Slots() {
		if _, overridden := a.cfg.Capacity[k]; !overridden {
			s[k] = v
		}
	}
	return s
}

// gpus returns a copy of the agent's current GPU inventory (nil: none).
func (a *Agent) gpus() *structs.GPUInventory {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.gpuInv.Copy()
}

// watchGPUs reads the GPUs every gpuRefresh and at once after an XID
// error, and advertises the agent again when a device's health or the
// set of devices changed (the servers then stop placing work on a sick
// device; kernels holding it keep running).
func (a *Agent) watchGPUs() {
	xid := make(chan struct{}, 1)
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		err := a.nvml.Watch(a.ctx, func(e gpu.XIDEvent) {
			a.logger.Warn("GPU XID error: no new work for the device", "uuid", e.UUID, "xid", e.XID)
			select {
			case xid <- struct{}{}:
			default:
			}
		})
		if err != nil {
			a.logger.Warn("GPU events unavailable: XID errors are not noticed", "error", err)
		}
	}()
	t := time.NewTicker(gpuRefresh)
	defer t.Stop()
	defer a.nvml.Shutdown()
	for {
		select {
		case <-a.ctx.Done():
			return
		case <-t.C:
		case <-xid:
		}
		inv, err := a.nvml.Inventory()
		if err != nil {
			a.logger.Warn("reading the GPUs failed", "error", err)
			continue
		}
		a.mu.Lock()
		changed := gpuHealthChanged(a.gpuInv, inv)
		a.gpuInv = inv
		if changed {
			a.healthGen++
		}
		a.mu.Unlock()
		if changed {
			a.logger.Info("GPU health changed", "slots", inv.Slots().String())
			a.advertise()
		}
	}
}

// gpuHealthChanged reports whether the devices or their health differ.
func gpuHealthChanged(old, cur *structs.GPUInventory) bool {
	if old == nil || cur == nil {
		return old != cur
	}
	if len(old.Devices) != len(cur.Devices) {
		return true
	}
	for i, d := range cur.Devices {
		o := old.Devices[i]
		if o.UUID != d.UUID || o.Unhealthy != d.Unhealthy || o.MIGMode != d.MIGMode || len(o.MIG) != len(d.MIG) {
			return true
		}
		for j, m := range d.MIG {
			if o.MIG[j].UUID != m.UUID || o.MIG[j].Unhealthy != m.Unhealthy {
				return true
			}
		}
	}
	return false
}

// errNoGPUs is a kernel given GPUs on an agent without NVML.
var errNoGPUs = errors.New("this agent has no NVIDIA driver (NVML)")

// deviceReservation is what the kernel's GPUs need from its driver; nil
// for a kernel without GPUs.
func (a *Agent) deviceReservation(k *structs.Kernel) (*structs.DeviceReservation, error) {
	if len(k.GPUs) == 0 {
		return nil, nil
	}
	inv := a.gpus()
	if inv == nil {
		return nil, fmt.Errorf("kernel holds GPUs %v but %w", k.GPUs, errNoGPUs)
	}
	return gpu.Reservation(inv, k.GPUs, gpu.ReservationOptions{DevRoot: a.cfg.DevRoot, DriverFiles: a.driverFiles})
}

// kernelGPUStats sums what a kernel's GPUs do: its devices are its own, so
// their utilisation (the mean over whole GPUs) and memory in use are the
// kernel's.
func (a *Agent) kernelGPUStats(k *structs.Kernel) (util int, memUsed uint64, n int) {
	inv := a.gpus()
	if inv == nil {
		return 0, 0, 0
	}
	whole := 0
	for _, id := range k.GPUs {
		g, mig := inv.Device(id)
		if g == nil {
			continue
		}
		n++
		if mig == nil {
			whole++
			util += g.UtilPercent
			memUsed += uint64(max(g.MemoryUsedBytes, 0))
		}
	}
	if whole > 0 {
		util /= whole
	}
	return util, memUsed, n
}

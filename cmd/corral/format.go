package main

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/structs"
)

// shortID is the first 8 characters of an ID: enough to name it anywhere
// an ID is taken.
func shortID(id string) string {
	if len(id) > 8 {
		return id[:8]
	}
	return id
}

// formatAge formats a duration the way a table column wants it: 12s, 3m, 2h, 5d.
func formatAge(d time.Duration) string {
	switch {
	case d < 0:
		return "0s"
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d/time.Second))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d/time.Minute))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d/time.Hour))
	}
	return fmt.Sprintf("%dd", int(d/(24*time.Hour)))
}

// since is the age of t at now, "-" when t is unset.
func since(t, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return formatAge(now.Sub(t))
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// formatTime formats a server timestamp in local time.
func formatTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Local().Format("2006-01-02 15:04:05 MST")
}

func newTable(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// renderSessions writes the table of `session list`.
func renderSessions(w io.Writer, list []*structs.Session, now time.Time) error {
	tw := newTable(w)
	fmt.Fprintln(tw, "ID\tNAME\tTYPE\tSTATUS\tRESULT\tAGE")
	for _, s := range list {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", shortID(s.ID), dash(s.Name), s.Type, s.Status, dash(string(s.Result)), since(s.CreatedAt, now))
	}
	return tw.Flush()
}

// renderSessionDetail writes `session status`: the session, its kernels and
// the status histories that say why it is where it is. agents maps agent
// IDs to the agents where known (names; kernels on DISCONNECTED agents
// show UNKNOWN).
func renderSessionDetail(w io.Writer, d *api.SessionDetail, agents map[string]*structs.Agent, now time.Time) error {
	s := d.Session
	tw := newTable(w)
	field := func(k, v string) { fmt.Fprintf(tw, "%s:\t%s\n", k, v) }
	field("ID", s.ID)
	field("Name", dash(s.Name))
	field("Type", string(s.Type))
	field("Status", string(s.Status))
	field("Status info", dash(s.StatusInfo))
	field("Result", dash(string(s.Result)))
	field("Resource group", dash(s.ResourceGroup))
	field("Created", fmt.Sprintf("%s (%s ago)", formatTime(s.CreatedAt), since(s.CreatedAt, now)))
	if !s.TerminatedAt.IsZero() {
		field("Ended", fmt.Sprintf("%s (after %s)", formatTime(s.TerminatedAt), formatDuration(s.TerminatedAt.Sub(s.CreatedAt))))
	}
	if d.IdleRemaining != "" {
		field("Idle timeout in", d.IdleRemaining+" (idle: no exec, no app traffic, no CPU/GPU use)")
	}
	if d.LifetimeRemaining != "" {
		field("Lifetime left", d.LifetimeRemaining)
	}
	if s.ScheduleAttempts > 0 {
		field("Schedule attempts", fmt.Sprint(s.ScheduleAttempts))
	}
	if s.RunOn != "" || s.FailOn != "" || s.StartOrder != "" {
		// A cluster session's job: who runs the command, whose failure
		// ends it, whether the kernels start together.
		field("Job", fmt.Sprintf("run_on %s, fail_on %s, start_order %s", dash(s.RunOn), dash(s.FailOn), dash(s.StartOrder)))
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	fmt.Fprintln(w, "\nKernels")
	tw = newTable(w)
	fmt.Fprintln(tw, "HOSTNAME\tID\tAGENT\tSTATUS\tEXIT\tRANK\tCPUSET\tRESOURCES")
	for _, k := range d.Kernels {
		agent := shortID(k.AgentID)
		st := string(k.Status)
		if a := agents[k.AgentID]; a != nil {
			agent = a.Name
			// A kernel on a DISCONNECTED agent may be running or not:
			// nobody can tell until the agent is back (or LOST).
			if a.Status == structs.AgentDisconnected && k.HoldsSlots() {
				st = fmt.Sprintf("UNKNOWN (agent disconnected %s; last %s)", since(a.DisconnectedAt, now), k.Status)
			}
		}
		if why := d.Unknown[k.ID]; why != "" && !strings.HasPrefix(st, "UNKNOWN") {
			st = why // the server's word when the agent list is not at hand
		}
		exit := "-"
		if k.ExitCode != nil {
			exit = fmt.Sprint(*k.ExitCode)
		}
		rank := "-"
		if k.Launch != nil {
			rank = fmt.Sprintf("%d/%d", k.Launch.NodeRank, k.Launch.NumNodes)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", k.Hostname, shortID(k.ID), dash(agent), st, exit, rank, dash(k.Cpuset), dash(slotsString(k.Resources)))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if err := renderKernelGPUs(w, d.Kernels); err != nil {
		return err
	}

	fmt.Fprintln(w, "\nSession history")
	if err := renderHistory(w, s.History, s.CreatedAt); err != nil {
		return err
	}
	for _, k := range d.Kernels {
		fmt.Fprintf(w, "\nKernel %s history\n", k.Hostname)
		if err := renderHistory(w, k.History, s.CreatedAt); err != nil {
			return err
		}
	}
	return nil
}

// slotsString formats slots as Slots.String does, with cuda.mem as bytes
// too: "cpu=1 cuda.device=2 cuda.mem=160GiB mem=1GiB".
func slotsString(s structs.Slots) string {
	parts := make([]string, 0, len(s))
	for _, k := range s.Names() {
		if k == structs.SlotMem || k == structs.SlotCUDAMem {
			parts = append(parts, k+"="+structs.FormatBytes(s[k]))
			continue
		}
		parts = append(parts, k+"="+s[k].String())
	}
	return strings.Join(parts, " ")
}

// renderKernelGPUs writes, when a kernel holds devices or has a GPU
// constraint, each kernel's devices (UUIDs) and constraint.
func renderKernelGPUs(w io.Writer, kernels []*structs.Kernel) error {
	show := false
	for _, k := range kernels {
		show = show || len(k.GPUs) > 0 || !k.GPUConstraint.Empty()
	}
	if !show {
		return nil
	}
	fmt.Fprintln(w, "\nGPUs")
	tw := newTable(w)
	fmt.Fprintln(tw, "HOSTNAME\tCONSTRAINT\tDEVICES")
	for _, k := range kernels {
		var c []string
		if k.GPUConstraint != nil && k.GPUConstraint.Model != "" {
			c = append(c, "model "+k.GPUConstraint.Model)
		}
		if k.GPUConstraint != nil && k.GPUConstraint.MinMemory > 0 {
			c = append(c, ">= "+structs.FormatBytes(k.GPUConstraint.MinMemory))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", k.Hostname, dash(strings.Join(c, ", ")), dash(strings.Join(k.GPUs, ", ")))
	}
	return tw.Flush()
}

// renderHistory writes a status history with each change's time, its
// offset from the session's creation and its reason.
func renderHistory(w io.Writer, history []structs.StatusChange, created time.Time) error {
	tw := newTable(w)
	fmt.Fprintln(tw, "TIME\tELAPSED\tSTATUS\tINFO")
	for _, h := range history {
		elapsed := "-"
		if !created.IsZero() && !h.Time.IsZero() {
			elapsed = "+" + formatDuration(h.Time.Sub(created))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", h.Time.Local().Format("15:04:05.000"), elapsed, h.Status, dash(oneLine(h.Info)))
	}
	return tw.Flush()
}

// formatDuration rounds a latency for humans: 850µs, 12.3ms, 1.25s.
func formatDuration(d time.Duration) string {
	switch {
	case d < time.Millisecond:
		return d.Round(time.Microsecond).String()
	case d < time.Second:
		return d.Round(100 * time.Microsecond).String()
	case d < time.Minute:
		return d.Round(10 * time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}

// usedTotal formats one slot of an agent as used/total.
func usedTotal(a *structs.Agent, slot string) string {
	used, total := a.Occupied[slot], a.Capacity[slot]
	if slot == structs.SlotMem || slot == structs.SlotCUDAMem {
		return structs.FormatBytes(used) + "/" + structs.FormatBytes(total)
	}
	return used.String() + "/" + total.String()
}

// driverList joins the agent's drivers with sep, the unhealthy ones (not
// offered for placements) marked as such.
func driverList(a *structs.Agent, sep string) string {
	out := slices.Clone(a.Drivers)
	for _, d := range slices.Sorted(maps.Keys(a.UnhealthyDrivers)) {
		out = append(out, d+"(unhealthy)")
	}
	return strings.Join(out, sep)
}

// renderAgents writes the table of `node list`.
func renderAgents(w io.Writer, agents []*structs.Agent, now time.Time) error {
	tw := newTable(w)
	fmt.Fprintln(tw, "ID\tNAME\tSTATUS\tDRAIN\tELIGIBILITY\tGROUP\tDRIVERS\tCPU\tMEM\tGPUS\tAGE")
	for _, a := range agents {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", shortID(a.ID), dash(a.Name), a.Status, drainState(a), eligibility(a), dash(a.ResourceGroup),
			dash(driverList(a, ",")), usedTotal(a, structs.SlotCPU), usedTotal(a, structs.SlotMem), gpuUsage(a), since(a.RegisteredAt, now))
	}
	return tw.Flush()
}

// drainState is an agent's drain column: "-" (not drained), "draining"
// (drained, kernels still hold slots there) or "drained" (empty).
func drainState(a *structs.Agent) string {
	switch {
	case !a.Drain:
		return "-"
	}
	for _, q := range a.Occupied {
		if q > 0 {
			return "draining"
		}
	}
	return "drained"
}

// eligibility says whether the scheduler places new kernels on an agent:
// only ALIVE agents that are not drained are eligible.
func eligibility(a *structs.Agent) string {
	if a.Status == structs.AgentAlive && !a.Drain {
		return "eligible"
	}
	return "ineligible"
}

// gpuUsage writes an agent's GPU slots compactly for `node list`: whole
// GPUs used/total, then each MIG profile's, e.g. "2/7 1g.10gb:1/7"; "-"
// when it has none.
func gpuUsage(a *structs.Agent) string {
	var parts []string
	if a.Capacity[structs.SlotCUDADevice] > 0 || a.Occupied[structs.SlotCUDADevice] > 0 {
		parts = append(parts, usedTotal(a, structs.SlotCUDADevice))
	}
	for _, name := range a.Capacity.Add(a.Occupied).Names() {
		if profile, ok := structs.IsMIGSlot(name); ok {
			parts = append(parts, profile+":"+usedTotal(a, name))
		}
	}
	return dash(strings.Join(parts, " "))
}

// renderAgent writes `node status`: the agent and every resource slot it has.
func renderAgent(w io.Writer, a *structs.Agent, now time.Time) error {
	return renderAgentWith(w, a, now, nil)
}

// renderAgentWith is renderAgent with heldBy naming the kernel that holds
// a device (by kernel ID; nil, or "" from it: the kernel's short ID).
func renderAgentWith(w io.Writer, a *structs.Agent, now time.Time, heldBy func(kernelID string) string) error {
	tw := newTable(w)
	field := func(k, v string) { fmt.Fprintf(tw, "%s:\t%s\n", k, v) }
	field("ID", a.ID)
	field("Name", dash(a.Name))
	st := string(a.Status)
	if a.Drain {
		st += " (drained: no new placements)"
	}
	field("Status", st)
	field("Status info", dash(a.StatusInfo))
	field("Resource group", dash(a.ResourceGroup))
	field("Drivers", dash(driverList(a, ", ")))
	for _, d := range slices.Sorted(maps.Keys(a.UnhealthyDrivers)) {
		field("Driver "+d, a.UnhealthyDrivers[d])
	}
	field("RPC address", dash(a.RPCAddr))
	field("Gossip address", dash(a.SerfAddr))
	field("Version", dash(a.Version))
	field("Registered", fmt.Sprintf("%s (%s ago)", formatTime(a.RegisteredAt), since(a.RegisteredAt, now)))
	field("Updated", fmt.Sprintf("%s (%s ago)", formatTime(a.UpdatedAt), since(a.UpdatedAt, now)))
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w, "\nResources")
	tw = newTable(w)
	fmt.Fprintln(tw, "SLOT\tUSED\tTOTAL\tFREE")
	free := a.Free()
	for _, name := range a.Capacity.Add(a.Occupied).Names() {
		f := func(q structs.Quantity) string {
			if name == structs.SlotMem || name == structs.SlotCUDAMem {
				return structs.FormatBytes(q)
			}
			return q.String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", name, f(a.Occupied[name]), f(a.Capacity[name]), f(free[name]))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	return renderGPUs(w, a, heldBy)
}

// renderGPUs writes the agent's devices for `node status`: every GPU with
// its health, utilisation and the kernel holding it, and its MIG instances
// under it.
func renderGPUs(w io.Writer, a *structs.Agent, heldBy func(kernelID string) string) error {
	inv := a.GPUs
	if inv == nil {
		return nil
	}
	var versions []string
	for _, v := range []struct{ k, v string }{{"driver", inv.DriverVersion}, {"CUDA", inv.CUDAVersion}, {"NVML", inv.NVMLVersion}} {
		if v.v != "" {
			versions = append(versions, v.k+" "+v.v)
		}
	}
	head := "\nGPUs"
	if len(versions) > 0 {
		head += " (" + strings.Join(versions, ", ") + ")"
	}
	fmt.Fprintln(w, head)
	if len(inv.Devices) == 0 {
		fmt.Fprintln(w, "none")
		return nil
	}
	holder := func(uuid string) string {
		id := a.GPUHolders[uuid]
		if id == "" {
			return "-"
		}
		if heldBy != nil {
			if s := heldBy(id); s != "" {
				return s
			}
		}
		return "kernel " + shortID(id)
	}
	health := func(why string) string {
		if why == "" {
			return "healthy"
		}
		return "unhealthy: " + oneLine(why)
	}
	tw := newTable(w)
	fmt.Fprintln(tw, "IDX\tUUID\tMODEL\tMEMORY\tHEALTH\tUTIL\tMEM USED\tHELD BY")
	devices := slices.Clone(inv.Devices)
	slices.SortStableFunc(devices, func(x, y *structs.GPU) int { return x.Index - y.Index })
	for _, d := range devices {
		util, used := fmt.Sprintf("%d%%", d.UtilPercent), structs.FormatBytes(structs.Whole(d.MemoryUsedBytes))
		held := holder(d.UUID)
		if d.MIGMode {
			held = fmt.Sprintf("MIG mode (%d instances)", len(d.MIG))
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", d.Index, d.UUID, dash(d.Name), structs.FormatBytes(structs.Whole(d.MemoryBytes)),
			health(d.Unhealthy), util, used, held)
		for _, m := range d.MIG {
			why := m.Unhealthy
			if why == "" && d.Unhealthy != "" {
				why = "its GPU is unhealthy"
			}
			fmt.Fprintf(tw, "  %d/%d\t%s\t%s\t%s\t%s\t-\t-\t%s\n", m.GIID, m.CIID, m.UUID, "MIG "+m.Profile,
				structs.FormatBytes(structs.Whole(m.MemoryBytes)), health(why), holder(m.UUID))
		}
	}
	return tw.Flush()
}

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
	if s.ScheduleAttempts > 0 {
		field("Schedule attempts", fmt.Sprint(s.ScheduleAttempts))
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	fmt.Fprintln(w, "\nKernels")
	tw = newTable(w)
	fmt.Fprintln(tw, "HOSTNAME\tID\tAGENT\tSTATUS\tEXIT\tRESOURCES")
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
		exit := "-"
		if k.ExitCode != nil {
			exit = fmt.Sprint(*k.ExitCode)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", k.Hostname, shortID(k.ID), dash(agent), st, exit, dash(k.Resources.String()))
	}
	if err := tw.Flush(); err != nil {
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
	if slot == structs.SlotMem {
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
	fmt.Fprintln(tw, "ID\tNAME\tSTATUS\tGROUP\tDRIVERS\tCPU\tMEM\tAGE")
	for _, a := range agents {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", shortID(a.ID), dash(a.Name), a.Status, dash(a.ResourceGroup),
			dash(driverList(a, ",")), usedTotal(a, structs.SlotCPU), usedTotal(a, structs.SlotMem), since(a.RegisteredAt, now))
	}
	return tw.Flush()
}

// renderAgent writes `node status`: the agent and every resource slot it has.
func renderAgent(w io.Writer, a *structs.Agent, now time.Time) error {
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
			if name == structs.SlotMem {
				return structs.FormatBytes(q)
			}
			return q.String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", name, f(a.Occupied[name]), f(a.Capacity[name]), f(free[name]))
	}
	return tw.Flush()
}

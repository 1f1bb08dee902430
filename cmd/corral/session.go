package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/server/scheduler"
	"github.com/corral-dev/corral/structs"
)

// pullLineEvery is the least time between two image pull progress lines.
const pullLineEvery = 2 * time.Second

// followWait is the wait of each blocking query while following a session.
const followWait = 30 * time.Second

// createCmd is a parsed `session create`.
type createCmd struct {
	flags       *flagSet
	wait        bool
	waitTimeout time.Duration
	req         api.CreateSessionRequest
}

// parseCreate parses `session create` flags and the command after them
// (after "--", or from the first argument that is not a flag).
func (c *cli) parseCreate(args []string) (*createCmd, error) {
	f := c.newFlags("session create", "[flags] -- CMD [ARGS...]",
		"Submit a session that runs CMD in its kernels (main1, and sub1..subN-1 with\n"+
			"-cluster-size N) and print its ID.\n"+
			"With -wait, follow it: a batch session until it ends (then print main1's output\n"+
			"and exit 0 on SUCCESS, 1 otherwise), an interactive one until it is RUNNING.", false)
	cmd := &createCmd{flags: f}
	r := &cmd.req
	f.StringVar(&r.Name, "name", "", "session name: a reference to it wherever an ID is taken")
	f.StringVar(&r.Template, "template", "", "start from this session template (yours, else a global one; see 'corral template list'): the flags given here override its fields")
	typ := f.String("type", "", "session type (default batch, or the template's): batch (ends with its command, SUCCESS or FAILURE), interactive (runs until destroyed or idle) or system (like interactive, for corral's own services such as file transfer)")
	f.StringVar(&r.Driver, "driver", "", "kernel driver (the server's default: exec)")
	f.StringVar(&r.Image, "image", "", "image reference, for drivers that run images (driver vm: also a disk image path or URL)")
	cpu := f.String("cpu", "", "CPU cores per kernel, fractions allowed, e.g. 0.5 (the server's default when unset)")
	mem := f.String("mem", "", "memory per kernel, e.g. 256M or 2G (the server's default when unset)")
	pids := f.Int("pids", 0, "most processes and threads per kernel (0: the policy's or the agent's default, 4096)")
	disk := f.String("disk", "", "most bytes a container kernel may write to its scratch space, e.g. 20G (0/unset: the agent's -runc-disk-limit)")
	f.StringVar(&r.ResourceGroup, "group", "", "resource group to run in (the server's default: default)")
	f.IntVar(&r.Priority, "priority", 0, "scheduling priority within the group: higher goes first")
	startsAt := f.String("starts-at", "", "batch reservation: start no earlier than this RFC 3339 time or duration from now (e.g. 10m)")
	deps := &csvFlag{}
	f.Var(deps, "depends-on", "sessions (comma-separated IDs or names) that must end with SUCCESS first")
	env := envFlag{}
	f.Var(env, "env", "environment variable `KEY=VALUE` of the kernel (repeatable)")
	gpu := f.String("gpu", "", "whole GPUs per kernel (alias of -slot cuda.device=N)")
	slotArgs := slotFlag{}
	f.Var(slotArgs, "slot", "resource slot `NAME=QTY` per kernel, any slot, e.g. cuda.device=2 or cuda.mig-1g.10gb=1 (repeatable)")
	gpuModel := f.String("gpu-model", "", "GPU model glob the kernels' GPUs must match, alternatives split by '|', e.g. 'H100*|H200*' (\"NVIDIA \" optional, case ignored)")
	gpuMem := f.String("gpu-mem", "", "least memory of each of the kernels' GPUs (or MIG instances), e.g. 40G")
	f.Var(roleFlag{&r.Roles}, "role", "per-role `ROLE:key=value,...` override, ROLE main, sub or an extra role (ps:count=2,image=IMG adds kernels ps1, ps2); keys "+roleKeys+
		", e.g. sub:image=IMG2,cpu=2,mem=1G,gpu=1,gpu-model=A100*,slot.cuda.mig-1g.10gb=1 or 'sub:cpu=2,command=sleep 1; echo hi' (repeatable, once per role)")
	f.StringVar(&r.RunOn, "run-on", "", "cluster sessions: who runs the command: main (main1 only; the subs serve ssh and exec until main1 ends; the default for batch) or all (every kernel; the default for interactive)")
	f.StringVar(&r.FailOn, "fail-on", "", "batch cluster sessions: any (the first kernel that fails ends the session FAILURE and stops the others; the default) or main (only main1 decides)")
	f.StringVar(&r.StartOrder, "start", "", "cluster sessions: barrier (no command starts before every kernel is ready; the default) or unordered")
	f.StringVar(&r.Shm, "shm", "", "size of the kernels' /dev/shm, e.g. 8G (the policy's cap, by default the kernel's -mem)")
	f.Var(ulimitFlag{&r.Ulimits}, "ulimit", "kernel resource limit `name=soft[:hard]`, values a number or unlimited, e.g. memlock=unlimited,nofile=65536 (repeatable; capped by the key's policy)")
	f.Var(capFlag{&r.CapAdd}, "cap-add", "capability to add to the kernels, e.g. IPC_LOCK or SYS_PTRACE (repeatable or comma-separated; the key's policy must allow it)")
	f.StringVar(&r.Network, "network", "", "default (empty): container kernels get an address on their agent's kernel bridge and reach out through NAT (cluster kernels also get their session's overlay); host: the kernels use their agents' network (fast fabrics; peers are the agents' addresses; the key's policy must allow it); none: loopback only (cluster kernels keep their overlay)")
	f.Var(portFlag{&r.ServicePorts}, "port", portUsage)
	f.Var((*volumeFlag)(&r.Volumes), "volume", "mount a volume into every kernel, `NAME:/path[:ro]` (NAME, or OWNER/NAME when shared with you; repeatable)")
	f.BoolVar(&r.SFTP, "sftp", false, "with -type system: serve the first -volume over SFTP (no command; see corral volume sftp)")
	f.BoolVar(&r.InfiniBand, "infiniband", false, "pass the agents' /dev/infiniband devices into the kernels (the key's policy must allow it)")
	f.IntVar(&r.MaxRetries, "max-retries", 0, "batch: re-queue the session up to N times when an agent running it is lost")
	f.StringVar(&r.LostAfter, "lost-after", "", "give the kernels up (ERROR, or re-queue with -max-retries) once their agent is DISCONNECTED this long, sooner than the cluster's -agent-lost-after (e.g. 30s)")
	f.IntVar(&r.ClusterSize, "cluster-size", 0, "number of kernels: main1 plus sub1..subN-1, placed together or not at all (0: one)")
	f.StringVar(&r.ClusterMode, "cluster-mode", "", "single-node (all kernels on one agent, the default) or multi-node")
	f.BoolVar(&cmd.wait, "wait", false, "follow the session until it ends (batch) or runs (interactive)")
	f.DurationVar(&cmd.waitTimeout, "wait-timeout", 0, "with -wait, give up following after this long and exit non-zero (0: no limit); the session goes on")
	_, command, err := f.parse(args, 0)
	if err != nil {
		return nil, err
	}
	if len(command) == 0 && r.Image == "" && !r.SFTP && r.Template == "" {
		return nil, f.usageErr("missing the command to run: corral session create [flags] -- CMD [ARGS...]")
	}
	if len(*deps) > 0 {
		r.DependsOn = *deps
	}
	if *startsAt != "" {
		if d, err := time.ParseDuration(*startsAt); err == nil && d >= 0 {
			r.StartsAt = time.Now().Add(d).UTC()
		} else if t, err := time.Parse(time.RFC3339, *startsAt); err == nil {
			r.StartsAt = t
		} else {
			return nil, f.usageErr("invalid -starts-at %q: want an RFC 3339 time or a duration such as 10m", *startsAt)
		}
	}
	if r.ClusterSize < 0 {
		return nil, f.usageErr("invalid -cluster-size %d: want 1 or more kernels", r.ClusterSize)
	}
	switch r.ClusterMode {
	case "", structs.ClusterModeSingleNode, structs.ClusterModeMultiNode:
	default:
		return nil, f.usageErr("invalid -cluster-mode %q: want single-node or multi-node", r.ClusterMode)
	}
	for _, v := range []struct{ flag, val, a, b string }{
		{"-run-on", r.RunOn, structs.RunOnMain, structs.RunOnAll},
		{"-fail-on", r.FailOn, structs.FailOnAny, structs.FailOnMain},
		{"-start", r.StartOrder, structs.StartBarrier, structs.StartUnordered},
		{"-network", r.Network, structs.NetworkHost, structs.NetworkNone},
	} {
		if v.val != "" && v.val != v.a && v.val != v.b {
			want := v.a + " or " + v.b
			if v.a == v.b {
				want = v.a
			}
			return nil, f.usageErr("invalid %s %q: want %s", v.flag, v.val, want)
		}
	}
	if r.Shm != "" {
		if q, err := structs.ParseBytes(r.Shm); err != nil || q <= 0 {
			return nil, f.usageErr("invalid -shm %q: want a size such as 8G", r.Shm)
		}
	}
	r.Command = command
	r.Type = structs.SessionType(*typ)
	if r.Type == "" && r.Template == "" {
		r.Type = structs.SessionTypeBatch
	}
	if r.Type != "" && r.Type != structs.SessionTypeBatch && r.Type != structs.SessionTypeInteractive && r.Type != structs.SessionTypeSystem {
		return nil, f.usageErr("invalid -type %q: want batch, interactive or system", *typ)
	}
	if len(env) > 0 {
		r.Env = env
	}
	if *cpu != "" || *mem != "" || *pids != 0 || *disk != "" || *gpu != "" || len(slotArgs) > 0 {
		r.Resources = structs.Slots{}
	}
	for name, q := range slotArgs {
		r.Resources[name] = q
	}
	for _, dup := range []struct{ flag, slot, val string }{
		{"-cpu", structs.SlotCPU, *cpu}, {"-mem", structs.SlotMem, *mem}, {"-gpu", structs.SlotCUDADevice, *gpu},
	} {
		if _, ok := slotArgs[dup.slot]; ok && dup.val != "" {
			return nil, f.usageErr("both %s and -slot %s given: give one", dup.flag, dup.slot)
		}
	}
	if *gpu != "" {
		q, err := parseDevices(*gpu)
		if err != nil {
			return nil, f.usageErr("invalid -gpu %q: %v", *gpu, err)
		}
		r.Resources[structs.SlotCUDADevice] = q
	}
	gc, err := parseGPUConstraint(*gpuModel, *gpuMem)
	if err != nil {
		return nil, f.usageErr("%v", err)
	}
	r.GPUConstraint = gc
	if *pids < 0 {
		return nil, f.usageErr("invalid -pids %d: want a positive number of processes", *pids)
	}
	if *pids > 0 {
		r.Resources[structs.LimitPids] = structs.Whole(int64(*pids))
	}
	if *disk != "" {
		q, err := structs.ParseBytes(*disk)
		if err != nil || q <= 0 {
			return nil, f.usageErr("invalid -disk %q: want a size such as 20G", *disk)
		}
		r.Resources[structs.LimitDisk] = q
	}
	if *cpu != "" {
		q, err := structs.ParseQuantity(*cpu)
		if err != nil || q <= 0 {
			return nil, f.usageErr("invalid -cpu %q: want a positive number of cores such as 1 or 0.5", *cpu)
		}
		r.Resources[structs.SlotCPU] = q
	}
	if *mem != "" {
		q, err := structs.ParseBytes(*mem)
		if err != nil || q <= 0 {
			return nil, f.usageErr("invalid -mem %q: want a size such as 256M or 2G", *mem)
		}
		r.Resources[structs.SlotMem] = q
	}
	return cmd, nil
}

func (c *cli) sessionCreate(ctx context.Context, args []string) error {
	cmd, err := c.parseCreate(args)
	if err != nil {
		return err
	}
	client, err := cmd.flags.client()
	if err != nil {
		return err
	}
	d, err := createOnce(ctx, client, &cmd.req, c.stderr)
	if err != nil {
		return err
	}
	s := d.Session
	batch := s.Type == structs.SessionTypeBatch
	// With -wait, a batch session's stdout is its command's: the ID goes to stderr.
	idOut := c.stdout
	if cmd.wait && batch {
		idOut = c.stderr
	}
	if s.Name != "" {
		fmt.Fprintf(idOut, "%s %s\n", s.ID, s.Name)
	} else {
		fmt.Fprintln(idOut, s.ID)
	}
	if !cmd.wait {
		return nil
	}

	short := shortID(s.ID)
	last := c.printProgress(short, structs.StatusChange{}, s)
	done := func(s *structs.Session) bool {
		return s.Status.Terminal() || (!batch && (s.Status == structs.SessionRunning || s.Status == structs.SessionRunningDegraded))
	}
	fctx, cancel := ctx, context.CancelFunc(func() {})
	if cmd.waitTimeout > 0 {
		fctx, cancel = context.WithTimeout(ctx, cmd.waitTimeout)
	}
	d, err = followSession(fctx, client, d, done, func(s *structs.Session) { last = c.printProgress(short, last, s) })
	cancel()
	if err != nil {
		if fctx.Err() == context.DeadlineExceeded && ctx.Err() == nil {
			return fmt.Errorf("session %s is still %s after -wait-timeout %s: it goes on (see 'corral session wait %s')", short, d.Session.Status, cmd.waitTimeout, short)
		}
		if ctx.Err() == context.Canceled {
			return fmt.Errorf("interrupted: session %s goes on (see 'corral session status %s', or end it with 'corral session destroy %s')", short, short, short)
		}
		return fmt.Errorf("following session %s: %w", short, err)
	}
	s = d.Session
	if !batch {
		switch s.Status {
		case structs.SessionRunning, structs.SessionRunningDegraded:
			return nil
		case structs.SessionTerminated:
			fmt.Fprintf(c.stderr, "session %s already ended %s%s\n", short, s.Status, suffix(s.StatusInfo))
			return nil
		}
		return fmt.Errorf("session %s ended %s%s", short, s.Status, suffix(s.StatusInfo))
	}
	c.printMainLogs(ctx, client, d)
	if s.Result == structs.ResultSuccess {
		return nil
	}
	return fmt.Errorf("session %s ended %s (%s)%s", short, s.Status, s.Result, suffix(s.StatusInfo))
}

func suffix(info string) string {
	if info == "" {
		return ""
	}
	return ": " + info
}

// printMainLogs copies main1's output of an ended batch session to stdout
// and stderr; a kernel that never reached an agent has none.
func (c *cli) printMainLogs(ctx context.Context, client *api.Client, d *api.SessionDetail) {
	placed := false
	for _, k := range d.Kernels {
		placed = placed || (k.Hostname == "main1" && k.AgentID != "")
	}
	if !placed {
		return
	}
	logs, err := client.SessionLogs(ctx, d.Session.ID, "main1")
	if err != nil {
		fmt.Fprintf(c.stderr, "Warning: cannot read the output of session %s: %s\n", shortID(d.Session.ID), oneLine(describe(ctx, err)))
		return
	}
	_, _ = c.stdout.Write(logs.StdoutData())
	_, _ = c.stderr.Write(logs.StderrData())
}

// followSession follows a session with blocking queries until done holds,
// calling onUpdate with each new state.
func followSession(ctx context.Context, client *api.Client, d *api.SessionDetail, done func(*structs.Session) bool, onUpdate func(*structs.Session)) (*api.SessionDetail, error) {
	index := d.Session.ModifyIndex
	for !done(d.Session) {
		next, idx, err := client.WaitSession(ctx, d.Session.ID, index, followWait)
		if err != nil {
			return d, err
		}
		if idx == 0 {
			// No usable index (a server without one, or one that went
			// backwards): do not spin.
			select {
			case <-ctx.Done():
				return d, ctx.Err()
			case <-time.After(200 * time.Millisecond):
			}
		}
		d, index = next, idx
		if onUpdate != nil {
			onUpdate(d.Session)
		}
	}
	return d, nil
}

// printProgress prints, one line each on stderr, the status changes of s
// recorded after last, and returns the last one printed. The first call
// (last is zero) prints the current status.
func (c *cli) printProgress(short string, last structs.StatusChange, s *structs.Session) structs.StatusChange {
	for _, ch := range newChanges(s, last) {
		switch {
		case last.Status == "" || last.Status == ch.Status:
			fmt.Fprintf(c.stderr, "session %s: %s%s\n", short, ch.Status, suffix(ch.Info))
		default:
			fmt.Fprintf(c.stderr, "session %s: %s -> %s%s\n", short, last.Status, ch.Status, suffix(ch.Info))
		}
		last = ch
	}
	// Progress within a status (bytes of an image pulled) changes the
	// status info without a new history entry: show it as a progress line.
	// last stays the history entry (else the next call would print that
	// entry again after each progress line); one progress line per
	// pullLineEvery at most: the kernels of a cluster session each
	// report their pull.
	if s.Status == structs.SessionPulling && string(s.Status) == last.Status && s.StatusInfo != last.Info && s.StatusInfo != c.pull.info {
		now := time.Now()
		if !strings.HasPrefix(s.StatusInfo, "pulling image ") || now.Sub(c.pull.at) >= pullLineEvery {
			fmt.Fprintf(c.stderr, "session %s: %s%s\n", short, s.Status, suffix(s.StatusInfo))
			c.pull.info, c.pull.at = s.StatusInfo, now
		}
	}
	return last
}

// newChanges returns the changes of s's history after last. When last is
// zero or no longer in the (bounded) history, it is just the latest state.
func newChanges(s *structs.Session, last structs.StatusChange) []structs.StatusChange {
	h := s.History
	if len(h) == 0 {
		h = []structs.StatusChange{{Status: string(s.Status), Info: s.StatusInfo}}
	}
	if last.Status != "" {
		for i := len(h) - 1; i >= 0; i-- {
			if h[i].Status == last.Status && h[i].Info == last.Info && h[i].Time.Equal(last.Time) {
				return h[i+1:]
			}
		}
	}
	cur := h[len(h)-1]
	if cur.Status == last.Status && cur.Info == last.Info {
		return nil
	}
	return h[len(h)-1:]
}

func (c *cli) sessionList(ctx context.Context, args []string) error {
	f := c.newFlags("session list", "[flags]", "List sessions, oldest first. Without -limit (or with -all) every page is fetched.", true)
	status := f.String("status", "", "only sessions in these statuses, comma-separated, e.g. PENDING,RUNNING")
	limit := f.Int("limit", 0, "list at most this many sessions (the oldest first)")
	all := f.Bool("all", false, "list every session, following the pages to the end (the default without -limit)")
	if err := f.parseNone(args); err != nil {
		return err
	}
	if *limit < 0 {
		return f.usageErr("invalid -limit %d: want a positive number of sessions", *limit)
	}
	if *all && *limit > 0 {
		return f.usageErr("give -limit N or -all, not both")
	}
	client, err := f.client()
	if err != nil {
		return err
	}
	list, more, err := listSessions(ctx, client, *status, *limit)
	if err != nil {
		return err
	}
	if more {
		fmt.Fprintf(c.stderr, "(showing the first %d sessions: more match; use -all or a larger -limit)\n", len(list))
	}
	if f.json {
		return printJSON(c.stdout, list)
	}
	return renderSessions(c.stdout, list, time.Now())
}

// listSessions fetches the sessions in the given statuses (comma-separated,
// "" for all), page after page, up to limit (0: all); more says whether
// sessions beyond the limit exist.
func listSessions(ctx context.Context, client *api.Client, status string, limit int) (list []*structs.Session, more bool, err error) {
	opts := api.SessionListOptions{}
	if status != "" {
		opts.Statuses = strings.Split(status, ",")
	}
	list = []*structs.Session{}
	for {
		opts.Limit = api.MaxPageSize
		if limit > 0 {
			opts.Limit = min(limit-len(list), api.MaxPageSize)
		}
		page, err := client.ListSessionsPage(ctx, opts)
		if err != nil {
			return nil, false, err
		}
		list = append(list, page.Sessions...)
		if page.Next == "" || page.Next == opts.Next {
			if limit > 0 && len(list) > limit {
				return list[:limit], true, nil // a server that does not page
			}
			return list, false, nil
		}
		if limit > 0 && len(list) >= limit {
			return list[:limit], true, nil
		}
		opts.Next = page.Next
	}
}

func (c *cli) sessionStatus(ctx context.Context, args []string) error {
	f := c.newFlags("session status", "REF [flags]",
		"Show a session, its kernels and their status histories: why it is PENDING, why it failed.", true)
	ref, client, err := f.refClient(args, "session ID, ID prefix or name")
	if err != nil {
		return err
	}
	d, err := client.GetSession(ctx, ref)
	if err != nil {
		return err
	}
	if f.json {
		return printJSON(c.stdout, d)
	}
	// Agent names make the kernels table readable (without them, IDs
	// do), and their liveness says whether a kernel's status is current.
	names := map[string]*structs.Agent{}
	if agents, err := client.ListAgents(ctx); err == nil {
		for _, a := range agents {
			names[a.ID] = a
		}
	}
	if err := renderSessionDetail(c.stdout, d, names, time.Now()); err != nil {
		return err
	}
	renderSessionApps(c.stdout, d)
	if d.Session.Status.Terminal() {
		return nil
	}
	stats, err := client.SessionStats(ctx, d.Session.ID)
	if err != nil {
		return nil // usage is a bonus: the status above stands
	}
	return renderStats(c.stdout, stats)
}

// renderStats writes the resource usage of a session's running kernels.
func renderStats(w io.Writer, stats []*api.KernelStats) error {
	fmt.Fprintln(w, "\nKernel usage")
	tw := newTable(w)
	fmt.Fprintln(tw, "HOSTNAME\tCPU TIME\tMEMORY\tPIDS\tGPU UTIL\tGPU MEMORY\tNOTE")
	for _, st := range stats {
		if st.Error != "" {
			fmt.Fprintf(tw, "%s\t-\t-\t-\t-\t-\t%s\n", st.Hostname, st.Error)
			continue
		}
		gpuUtil, gpuMem := "-", "-"
		if st.GPUs > 0 {
			gpuUtil = fmt.Sprintf("%d%% of %d", st.GPUUtilPercent, st.GPUs)
			gpuMem = structs.FormatBytes(structs.Whole(int64(st.GPUMemoryUsedBytes)))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t-\n", st.Hostname, time.Duration(st.CPUUsageNanos).Round(time.Millisecond),
			structs.FormatBytes(structs.Whole(int64(st.MemoryRSSBytes))), st.Pids, gpuUtil, gpuMem)
	}
	return tw.Flush()
}

func (c *cli) sessionExec(ctx context.Context, args []string) error {
	f := c.newFlags("session exec", "REF [flags] -- CMD [ARGS...]",
		"Run CMD in a running kernel of a session, stream its output and exit with its exit code.", false)
	kernel := f.String("kernel", "main1", "kernel hostname or ID")
	startWait := f.Duration("wait-start", time.Minute, "how long to wait for a session that is still starting (0: not at all)")
	env := envFlag{}
	f.Var(env, "env", "environment variable `KEY=VALUE` for the command (repeatable)")
	interactive := f.Bool("i", false, "stream this command's stdin to CMD")
	tty := f.Bool("t", false, "run CMD on a pseudo-terminal, with this terminal in raw mode and its size followed (needs a terminal; with -i, keys such as ^C go to CMD)")
	it := f.Bool("it", false, "-i and -t")
	ti := f.Bool("ti", false, "-i and -t")
	pos, command, err := f.parse(args, 1)
	if err != nil {
		return err
	}
	if *it || *ti {
		*interactive, *tty = true, true
	}
	if len(pos) == 0 || pos[0] == "" {
		return f.usageErr("missing session ID, ID prefix or name")
	}
	if len(command) == 0 {
		return f.usageErr("missing the command to run: corral session exec REF [flags] -- CMD [ARGS...]")
	}
	client, err := f.client()
	if err != nil {
		return err
	}
	if *startWait > 0 {
		// A session created a moment ago may still be starting: wait for
		// it to run (or end) rather than fail.
		d, err := client.GetSession(ctx, pos[0])
		if err != nil {
			return err
		}
		if starting(d.Session.Status) {
			wctx, cancel := context.WithTimeout(ctx, *startWait)
			_, err = followSession(wctx, client, d, func(s *structs.Session) bool { return !starting(s.Status) }, nil)
			cancel()
			if err != nil && wctx.Err() != nil && ctx.Err() == nil {
				return fmt.Errorf("session %s is still starting after -wait-start %s", pos[0], *startWait)
			}
			if err != nil {
				return err
			}
		}
	}
	req := &api.ExecRequest{Kernel: *kernel, Command: command}
	if len(env) > 0 {
		req.Env = env
	}
	var code int
	if *interactive || *tty {
		code, err = c.execInteractive(ctx, client, pos[0], req, *interactive, *tty)
	} else {
		code, err = client.Exec(ctx, pos[0], req, c.stdout, c.stderr)
	}
	if err != nil {
		return err
	}
	if code < 0 || code > 255 {
		code = 1
	}
	if code != 0 {
		return exitCode(code)
	}
	return nil
}

// starting reports whether a session with status st is on its way to
// running.
func starting(st structs.SessionStatus) bool {
	switch st {
	case structs.SessionPending, structs.SessionScheduled, structs.SessionPreparing, structs.SessionPulling:
		return true
	}
	return false
}

func (c *cli) sessionDestroy(ctx context.Context, args []string) error {
	f := c.newFlags("session destroy", "REF [flags]", "Cancel a pending session or terminate a running one.", false)
	ref, client, err := f.refClient(args, "session ID, ID prefix or name")
	if err != nil {
		return err
	}
	d, err := client.DestroySession(ctx, ref)
	if err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "session %s destroyed (%s)\n", d.Session.ID, d.Session.Status)
	return nil
}

// parseDevices parses a number of whole devices (zero or more).
func parseDevices(v string) (structs.Quantity, error) {
	q, err := structs.ParseQuantity(v)
	if err != nil || q < 0 || q%structs.QuantityScale != 0 {
		return 0, errors.New("want a whole number of devices, e.g. 1 or 4")
	}
	return q, nil
}

// parseSlot parses the quantity of -slot NAME=QTY: sizes for mem and
// disk (e.g. 2G), whole numbers for device slots, else a decimal.
func parseSlot(name, val string) (structs.Quantity, error) {
	switch {
	case name == structs.SlotMem || name == structs.LimitDisk:
		q, err := structs.ParseBytes(val)
		if err != nil || q <= 0 {
			return 0, fmt.Errorf("invalid %s %q: want a size such as 256M or 2G", name, val)
		}
		return q, nil
	case name == structs.SlotCUDADevice || strings.HasPrefix(name, structs.SlotMIGPrefix):
		q, err := parseDevices(val)
		if err != nil {
			return 0, fmt.Errorf("invalid %s %q: %v", name, val, err)
		}
		return q, nil
	}
	q, err := structs.ParseQuantity(val)
	if err != nil {
		return 0, fmt.Errorf("invalid %s %q: want a number", name, val)
	}
	return q, nil
}

// parseGPUConstraint builds the constraint of -gpu-model and -gpu-mem (nil
// when both are empty).
func parseGPUConstraint(model, mem string) (*structs.GPUConstraint, error) {
	if model == "" && mem == "" {
		return nil, nil
	}
	c := &structs.GPUConstraint{Model: model}
	if model != "" {
		if err := scheduler.ValidateGPUModel(model); err != nil {
			return nil, fmt.Errorf("invalid -gpu-model: %v", err)
		}
	}
	if mem != "" {
		q, err := structs.ParseBytes(mem)
		if err != nil || q <= 0 {
			return nil, fmt.Errorf("invalid -gpu-mem %q: want a size such as 40G", mem)
		}
		c.MinMemory = q
	}
	return c, nil
}

// slotFlag collects -slot NAME=QTY.
type slotFlag structs.Slots

func (f slotFlag) String() string { return structs.Slots(f).String() }

func (f slotFlag) Set(v string) error {
	name, val, ok := strings.Cut(v, "=")
	name = strings.TrimSpace(name)
	if !ok || name == "" || val == "" {
		return errors.New("want NAME=QTY, e.g. cuda.device=2 or cuda.mig-1g.10gb=1")
	}
	if _, dup := f[name]; dup {
		return fmt.Errorf("slot %s given twice", name)
	}
	q, err := parseSlot(name, strings.TrimSpace(val))
	if err != nil {
		return err
	}
	f[name] = q
	return nil
}

// cliRoleRe is a role the -role flag takes: main, sub or an extra role.
var cliRoleRe = regexp.MustCompile(`^[a-z]([a-z-]{0,30}[a-z])?$`)

// roleKeys are the keys of -role ROLE:key=value,...: every field of the
// API's RoleSpec.
const roleKeys = "image, driver, cpu, mem, gpu, gpu-model, gpu-mem, slot.NAME, pids, disk and command (last: the rest of the value, commas included, run by /bin/sh -c); count (an extra role's number of kernels)"

// roleFlag parses -role ROLE:key=value,... into an api.RoleSpec; see
// roleKeys. command takes the rest of the value, commas included, and
// runs it through ["/bin/sh", "-c", value]: -role 'sub:cpu=2,command=sleep 1; echo hi'.
type roleFlag struct{ specs *[]api.RoleSpec }

func (f roleFlag) String() string {
	if f.specs == nil {
		return ""
	}
	var parts []string
	for _, r := range *f.specs {
		parts = append(parts, r.Role)
	}
	return strings.Join(parts, " ")
}

func (f roleFlag) Set(v string) error {
	role, rest, ok := strings.Cut(v, ":")
	if !ok || !cliRoleRe.MatchString(role) {
		return errors.New("want ROLE:key=value,... with ROLE main, sub or an extra role's name (e.g. ps, with count=N), e.g. sub:image=busybox,cpu=2,mem=1G")
	}
	spec := api.RoleSpec{Role: role}
	for _, r := range *f.specs {
		if r.Role == role {
			return fmt.Errorf("role %s given twice: give all its keys in one -role %s:key=value,...", role, role)
		}
	}
	// command= takes the rest of the value: a shell command line may hold
	// commas.
	if i := strings.Index(rest, "command="); i >= 0 && (i == 0 || rest[i-1] == ',') {
		cmdline := rest[i+len("command="):]
		if strings.TrimSpace(cmdline) == "" {
			return errors.New("command= is empty: give the command line to run, e.g. command=sleep 1; echo hi")
		}
		spec.Command = []string{"/bin/sh", "-c", cmdline}
		rest = strings.TrimSuffix(rest[:i], ",")
	}
	if rest == "" && spec.Command != nil {
		*f.specs = append(*f.specs, spec)
		return nil
	}
	for _, kv := range strings.Split(rest, ",") {
		k, val, ok := strings.Cut(strings.TrimSpace(kv), "=")
		if !ok || val == "" {
			return fmt.Errorf("%q: want key=value; keys are %s", kv, roleKeys)
		}
		setSlot := func(name string, q structs.Quantity) error {
			if spec.Resources == nil {
				spec.Resources = structs.Slots{}
			}
			if _, dup := spec.Resources[name]; dup {
				return fmt.Errorf("slot %s given twice for role %s", name, role)
			}
			spec.Resources[name] = q
			return nil
		}
		switch k {
		case "gpu":
			q, err := parseDevices(val)
			if err != nil {
				return fmt.Errorf("invalid gpu %q: %v", val, err)
			}
			if err := setSlot(structs.SlotCUDADevice, q); err != nil {
				return err
			}
			continue
		case "gpu-model", "gpu-mem":
			if spec.GPUConstraint == nil {
				spec.GPUConstraint = &structs.GPUConstraint{}
			}
			model, mem := "", ""
			if k == "gpu-model" {
				model = val
			} else {
				mem = val
			}
			c, err := parseGPUConstraint(model, mem)
			if err != nil {
				return errors.New(strings.Replace(err.Error(), "-gpu-", "gpu-", 1))
			}
			if model != "" {
				spec.GPUConstraint.Model = c.Model
			} else {
				spec.GPUConstraint.MinMemory = c.MinMemory
			}
			continue
		}
		if name, ok := strings.CutPrefix(k, "slot."); ok {
			q, err := parseSlot(name, val)
			if err != nil {
				return err
			}
			if err := setSlot(name, q); err != nil {
				return err
			}
			continue
		}
		switch k {
		case "image":
			spec.Image = val
		case "driver":
			spec.Driver = val
		case "cpu", "mem", "disk":
			var q structs.Quantity
			var err error
			name := map[string]string{"cpu": structs.SlotCPU, "mem": structs.SlotMem, "disk": structs.LimitDisk}[k]
			if k == "cpu" {
				q, err = structs.ParseQuantity(val)
			} else {
				q, err = structs.ParseBytes(val)
			}
			if err != nil || q <= 0 {
				return fmt.Errorf("invalid %s %q", k, val)
			}
			if err := setSlot(name, q); err != nil {
				return err
			}
		case "count":
			n, err := strconv.Atoi(val)
			if err != nil || n < 1 || role == "main" || role == "sub" {
				return fmt.Errorf("invalid count %q: an extra role (not main or sub) has 1 or more kernels", val)
			}
			spec.Count = n
		case "pids":
			n, err := strconv.ParseInt(val, 10, 64)
			if err != nil || n <= 0 {
				return fmt.Errorf("invalid pids %q: want a positive number of processes", val)
			}
			if err := setSlot(structs.LimitPids, structs.Whole(n)); err != nil {
				return err
			}
		default:
			return fmt.Errorf("unknown key %q: keys are %s", k, roleKeys)
		}
	}
	*f.specs = append(*f.specs, spec)
	return nil
}

// ulimitFlag collects -ulimit name=soft[:hard] (repeatable, or a comma list).
type ulimitFlag struct{ list *[]string }

func (f ulimitFlag) String() string {
	if f.list == nil {
		return ""
	}
	return strings.Join(*f.list, ",")
}

func (f ulimitFlag) Set(v string) error {
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p == "" {
			continue
		}
		u, err := structs.ParseUlimit(p)
		if err != nil {
			return err
		}
		*f.list = append(*f.list, structs.FormatUlimit(u))
	}
	return nil
}

// capFlag collects -cap-add CAP (repeatable, or a comma list), normalised
// to CAP_X.
type capFlag struct{ list *[]string }

func (f capFlag) String() string {
	if f.list == nil {
		return ""
	}
	return strings.Join(*f.list, ",")
}

func (f capFlag) Set(v string) error {
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p == "" {
			continue
		}
		c, err := structs.NormalizeCapability(p)
		if err != nil {
			return err
		}
		*f.list = append(*f.list, c)
	}
	return nil
}

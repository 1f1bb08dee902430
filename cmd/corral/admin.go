package main

import (
	"context"
	"flag"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/structs"
)

var userCommands = []command{
	{"create", "NAME [-admin]", "create a user", (*cli).userCreate},
	{"list", "[flags]", "list users", (*cli).userList},
	{"delete", "NAME", "delete a user and its access keys (refused while its sessions run)", (*cli).userDelete},
	{"ssh-key", "add FILE|- | list", "manage your SSH public keys for SFTP", (*cli).sshKey},
}

var keyCommands = []command{
	{"create", "-user NAME [flags]", "create an access key and print its token once", (*cli).keyCreate},
	{"list", "[flags]", "list access keys", (*cli).keyList},
	{"revoke", "KEY", "revoke an access key", (*cli).keyRevoke},
	{"status", "KEY [flags]", "show a key's policy and what it holds now", (*cli).keyStatus},
}

var policyCommands = []command{
	{"create", "NAME [flags]", "create or replace a resource policy", (*cli).policyCreate},
	{"update", "NAME [flags]", "change some limits of a resource policy, keeping the others", (*cli).policyUpdate},
	{"apply", "NAME -key KEY", "apply a resource policy to an access key", (*cli).policyApply},
	{"list", "[flags]", "list resource policies", (*cli).policyList},
	{"delete", "NAME", "delete a resource policy (refused while keys have it)", (*cli).policyDelete},
}

var groupCommands = []command{
	{"create", "NAME [flags]", "create a resource group with its scheduler configuration", (*cli).groupCreate},
	{"update", "NAME [flags]", "change a resource group's scheduler configuration", (*cli).groupUpdate},
	{"list", "[flags]", "list resource groups", (*cli).groupList},
	{"delete", "NAME", "delete a resource group (refused while agents or sessions are in it)", (*cli).groupDelete},
}

// csvFlag collects a comma-separated or repeated flag.
type csvFlag []string

func (l *csvFlag) String() string { return strings.Join(*l, ",") }
func (l *csvFlag) Set(v string) error {
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*l = append(*l, p)
		}
	}
	return nil
}

func (c *cli) userCreate(ctx context.Context, args []string) error {
	f := c.newFlags("user create", "NAME [-admin]", "Create a user (admin only).", false)
	admin := f.Bool("admin", false, "the user may hold admin keys")
	name, client, err := f.refClient(args, "user name")
	if err != nil {
		return err
	}
	u, err := client.CreateUser(ctx, &api.CreateUserRequest{Name: name, Admin: *admin})
	if err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "user %s created\n", u.Name)
	return nil
}

func (c *cli) userList(ctx context.Context, args []string) error {
	return listCommand(c, ctx, args, "user list", "List users (admin only).", (*api.Client).ListUsers,
		"NAME\tADMIN\tCREATED", func(u *structs.User) string {
			return fmt.Sprintf("%s\t%v\t%s ago", u.Name, u.Admin, since(u.CreatedAt, time.Now()))
		})
}

func (c *cli) keyCreate(ctx context.Context, args []string) error {
	f := c.newFlags("key create", "-user NAME [flags]", "Create an access key and print its token (shown once).", false)
	user := f.String("user", "", "owner of the key (required)")
	admin := f.Bool("admin", false, "an admin key (the user must be an admin)")
	policy := f.String("policy", "", "resource policy of the key")
	var groups csvFlag
	f.Var(&groups, "groups", "resource groups the key may use (comma-separated; default: default)")
	if err := f.parseNone(args); err != nil {
		return err
	}
	if *user == "" {
		return f.usageErr("-user is required")
	}
	client, err := f.client()
	if err != nil {
		return err
	}
	k, err := client.CreateKey(ctx, &api.CreateKeyRequest{User: *user, Admin: *admin, Policy: *policy, AllowedGroups: groups})
	if err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "access key %s for user %s (shown once):\nexport CORRAL_TOKEN=%s\n", k.Key.AccessKey, k.Key.User, k.Token)
	return nil
}

func (c *cli) keyList(ctx context.Context, args []string) error {
	return listCommand(c, ctx, args, "key list", "List access keys (admins: all; users: their own).", (*api.Client).ListKeys,
		"ACCESS KEY\tUSER\tADMIN\tPOLICY\tGROUPS\tREVOKED", func(k *structs.AccessKey) string {
			return fmt.Sprintf("%s\t%s\t%v\t%s\t%s\t%v", k.AccessKey, k.User, k.Admin, dash(k.Policy), dash(strings.Join(k.AllowedGroups, ",")), k.Revoked)
		})
}

func (c *cli) keyRevoke(ctx context.Context, args []string) error {
	f := c.newFlags("key revoke", "KEY", "Revoke an access key (admin only).", false)
	key, client, err := f.refClient(args, "access key")
	if err != nil {
		return err
	}
	if _, err := client.RevokeKey(ctx, key); err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "access key %s revoked\n", key)
	return nil
}

func (c *cli) keyStatus(ctx context.Context, args []string) error {
	f := c.newFlags("key status", "KEY [flags]", "Show a key's policy and its concurrency set and occupied slots.", true)
	key, client, err := f.refClient(args, "access key")
	if err != nil {
		return err
	}
	st, err := client.KeyStatus(ctx, key)
	if err != nil {
		return err
	}
	if f.json {
		return printJSON(c.stdout, st)
	}
	tw := newTable(c.stdout)
	fmt.Fprintf(tw, "Access key:\t%s\nUser:\t%s\nAdmin:\t%v\nRevoked:\t%v\n", st.Key.AccessKey, st.Key.User, st.Key.Admin, st.Key.Revoked)
	if p := st.Policy; p != nil {
		fmt.Fprintf(tw, "Policy:\t%s (concurrent %s, pending %s, slots %s, kernels/session %s, lifetime %s, idle %s)\n", p.Name,
			limit(p.MaxConcurrentSessions), limit(p.MaxPendingSessions), dash(slotsString(p.TotalResourceSlots)), limit(p.MaxKernelsPerSession),
			durLimit(p.MaxSessionLifetime), durLimit(p.IdleTimeout))
	} else {
		fmt.Fprintf(tw, "Policy:\t- (unlimited)\n")
	}
	ids := make([]string, 0, len(st.Usage.Sessions))
	for id := range st.Usage.Sessions {
		ids = append(ids, shortID(id))
	}
	fmt.Fprintf(tw, "Concurrency set:\t%d [%s]\nOccupied:\t%s\n", len(ids), strings.Join(ids, " "), dash(slotsString(st.Usage.Occupied)))
	return tw.Flush()
}

func limit(n int) string {
	if n == 0 {
		return "unlimited"
	}
	return fmt.Sprint(n)
}

func durLimit(d time.Duration) string {
	if d == 0 {
		return "unlimited"
	}
	return d.String()
}

// policyFlags are the flags of `policy create` and `policy update`.
type policyFlags struct {
	req             *api.PolicyRequest
	cpu, mem, gpu   *string
	drivers         *csvFlag
	caps, ulimitsOK *csvFlag
}

func newPolicyFlags(f *flagSet) *policyFlags {
	p := &policyFlags{req: &api.PolicyRequest{}, drivers: &csvFlag{}, caps: &csvFlag{}, ulimitsOK: &csvFlag{}}
	req := p.req
	f.IntVar(&req.MaxConcurrentSessions, "max-concurrent", 0, "max sessions holding resources at once")
	f.IntVar(&req.MaxPendingSessions, "max-pending", 0, "max sessions waiting in the queue")
	f.IntVar(&req.MaxKernelsPerSession, "max-kernels", 0, "max kernels per session")
	f.StringVar(&req.MaxSessionLifetime, "max-lifetime", "", "max session lifetime, e.g. 12h")
	f.StringVar(&req.IdleTimeout, "idle-timeout", "", "terminate sessions idle this long, e.g. 30m")
	f.Float64Var(&req.IdleCPUThreshold, "idle-cpu-threshold", 0, "CPU/GPU use in percent of a kernel's allocation under which it counts as idle (0: 5)")
	p.cpu = f.String("cpu", "", "total cpu cores of all the key's sessions")
	p.mem = f.String("mem", "", "total memory of all the key's sessions, e.g. 64G")
	p.gpu = f.String("gpu", "", "total GPUs (cuda.device) of all the key's sessions")
	f.Int64Var(&req.PidsPerKernel, "pids", 0, "most processes and threads per kernel; also the limit of kernels that ask for none (0: the agents' default)")
	f.Var(p.drivers, "drivers", "drivers the key's sessions may use, comma-separated, e.g. runc,exec (default: all but the admin-only host)")
	f.StringVar(&req.MaxShm, "max-shm", "", "largest /dev/shm a kernel may ask for (-shm), e.g. 16G (default: the kernel's mem)")
	f.StringVar(&req.MaxMemlock, "max-memlock", "", "largest memlock ulimit a kernel may ask for, a size or unlimited (default: the kernel's mem)")
	f.Var(p.caps, "allow-cap", "capabilities kernels may add (-cap-add), e.g. IPC_LOCK,SYS_PTRACE (repeatable; default: none)")
	f.Var(p.ulimitsOK, "allow-ulimit", "ulimits kernels may set (-ulimit), e.g. memlock,nofile,rtprio (default: all but nice, rtprio, rttime)")
	f.BoolVar(&req.AllowHostNetwork, "allow-host-network", false, "kernels may use their agents' network (-network host)")
	f.BoolVar(&req.AllowInfiniBand, "allow-infiniband", false, "kernels may have the agents' InfiniBand devices (-infiniband)")
	return p
}

// finish completes the request from the flags' own parsing.
func (p *policyFlags) finish(f *flagSet, name string) error {
	p.req.Name = name
	slots, err := parseSlotFlags(f, *p.cpu, *p.mem, *p.gpu)
	if err != nil {
		return err
	}
	p.req.TotalResourceSlots = slots
	orNil := func(l csvFlag) []string {
		if len(l) == 0 {
			return nil
		}
		return l
	}
	p.req.Drivers = orNil(*p.drivers)
	p.req.AllowedCapabilities = orNil(*p.caps)
	p.req.AllowedUlimits = orNil(*p.ulimitsOK)
	return nil
}

func (c *cli) policyCreate(ctx context.Context, args []string) error {
	f := c.newFlags("policy create", "NAME [flags]", "Create or replace a resource policy (admin only). Zero means unlimited; "+
		"kernel options (shm, memlock, capabilities, ulimits, host network, InfiniBand) not given get a fresh policy's defaults.", false)
	p := newPolicyFlags(f)
	name, err := f.parseRef(args, "policy name")
	if err != nil {
		return err
	}
	if err := p.finish(f, name); err != nil {
		return err
	}
	client, err := f.client()
	if err != nil {
		return err
	}
	if _, err := client.CreatePolicy(ctx, p.req); err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "policy %s saved\n", name)
	return nil
}

// policyRequestOf is the request that re-creates a policy as it is.
func policyRequestOf(p *structs.ResourcePolicy) *api.PolicyRequest {
	r := &api.PolicyRequest{Name: p.Name, MaxConcurrentSessions: p.MaxConcurrentSessions, MaxPendingSessions: p.MaxPendingSessions,
		TotalResourceSlots: p.TotalResourceSlots.Copy(), MaxKernelsPerSession: p.MaxKernelsPerSession, Drivers: p.Drivers, PidsPerKernel: p.PidsPerKernel,
		AllowedCapabilities: p.AllowedCapabilities, AllowedUlimits: p.AllowedUlimits, AllowHostNetwork: p.AllowHostNetwork, AllowInfiniBand: p.AllowInfiniBand,
		IdleCPUThreshold: p.IdleCPUThreshold}
	if p.MaxSessionLifetime > 0 {
		r.MaxSessionLifetime = p.MaxSessionLifetime.String()
	}
	if p.IdleTimeout > 0 {
		r.IdleTimeout = p.IdleTimeout.String()
	}
	if p.MaxShmBytes > 0 {
		r.MaxShm = strconv.FormatInt(p.MaxShmBytes, 10)
	}
	switch {
	case p.MaxMemlockBytes < 0:
		r.MaxMemlock = "unlimited"
	case p.MaxMemlockBytes > 0:
		r.MaxMemlock = strconv.FormatInt(p.MaxMemlockBytes, 10)
	}
	return r
}

// mergePolicy applies the flags given on the command line (set) of a
// `policy update` to the policy's current request.
func mergePolicy(cur, flags *api.PolicyRequest, set map[string]bool) *api.PolicyRequest {
	out := *cur
	if set["max-concurrent"] {
		out.MaxConcurrentSessions = flags.MaxConcurrentSessions
	}
	if set["max-pending"] {
		out.MaxPendingSessions = flags.MaxPendingSessions
	}
	if set["max-kernels"] {
		out.MaxKernelsPerSession = flags.MaxKernelsPerSession
	}
	if set["max-lifetime"] {
		out.MaxSessionLifetime = flags.MaxSessionLifetime
	}
	if set["idle-timeout"] {
		out.IdleTimeout = flags.IdleTimeout
	}
	if set["idle-cpu-threshold"] {
		out.IdleCPUThreshold = flags.IdleCPUThreshold
	}
	for flagName, slot := range map[string]string{"cpu": structs.SlotCPU, "mem": structs.SlotMem, "gpu": structs.SlotCUDADevice} {
		if !set[flagName] {
			continue
		}
		if out.TotalResourceSlots == nil {
			out.TotalResourceSlots = structs.Slots{}
		}
		out.TotalResourceSlots[slot] = flags.TotalResourceSlots[slot]
	}
	if set["pids"] {
		out.PidsPerKernel = flags.PidsPerKernel
	}
	if set["drivers"] {
		out.Drivers = flags.Drivers
	}
	if set["max-shm"] {
		out.MaxShm = flags.MaxShm
	}
	if set["max-memlock"] {
		out.MaxMemlock = flags.MaxMemlock
	}
	if set["allow-cap"] {
		out.AllowedCapabilities = flags.AllowedCapabilities
	}
	if set["allow-ulimit"] {
		out.AllowedUlimits = flags.AllowedUlimits
	}
	if set["allow-host-network"] {
		out.AllowHostNetwork = flags.AllowHostNetwork
	}
	if set["allow-infiniband"] {
		out.AllowInfiniBand = flags.AllowInfiniBand
	}
	return &out
}

func (c *cli) policyUpdate(ctx context.Context, args []string) error {
	f := c.newFlags("policy update", "NAME [flags]", "Change the given limits of a resource policy, keeping the others (admin only); "+
		"e.g. -allow-host-network, -allow-cap IPC_LOCK, -max-memlock unlimited. A bool flag is revoked with =false.", false)
	p := newPolicyFlags(f)
	name, err := f.parseRef(args, "policy name")
	if err != nil {
		return err
	}
	if err := p.finish(f, name); err != nil {
		return err
	}
	set := map[string]bool{}
	f.Visit(func(fl *flag.Flag) { set[fl.Name] = true })
	client, err := f.client()
	if err != nil {
		return err
	}
	list, err := client.ListPolicies(ctx)
	if err != nil {
		return err
	}
	var cur *structs.ResourcePolicy
	for _, pol := range list {
		if pol.Name == name {
			cur = pol
		}
	}
	if cur == nil {
		return fmt.Errorf("no resource policy %q: create it with 'corral policy create %s'", name, name)
	}
	if _, err := client.CreatePolicy(ctx, mergePolicy(policyRequestOf(cur), p.req, set)); err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "policy %s updated\n", name)
	return nil
}

func parseSlotFlags(f *flagSet, cpu, mem, gpu string) (structs.Slots, error) {
	out := structs.Slots{}
	if cpu != "" {
		q, err := structs.ParseQuantity(cpu)
		if err != nil || q <= 0 {
			return nil, f.usageErr("invalid -cpu %q: want a positive number", cpu)
		}
		out[structs.SlotCPU] = q
	}
	if mem != "" {
		q, err := structs.ParseBytes(mem)
		if err != nil || q <= 0 {
			return nil, f.usageErr("invalid -mem %q: want a size such as 64G", mem)
		}
		out[structs.SlotMem] = q
	}
	if gpu != "" {
		q, err := parseDevices(gpu)
		if err != nil || q <= 0 {
			return nil, f.usageErr("invalid -gpu %q: want a positive whole number of GPUs", gpu)
		}
		out[structs.SlotCUDADevice] = q
	}
	if len(out) == 0 {
		return nil, nil
	}
	return out, nil
}

func (c *cli) policyApply(ctx context.Context, args []string) error {
	f := c.newFlags("policy apply", "NAME -key KEY", "Apply a resource policy to an access key (admin only).", false)
	key := f.String("key", "", "access key (required)")
	name, err := f.parseRef(args, "policy name")
	if err != nil {
		return err
	}
	if *key == "" {
		return f.usageErr("-key is required")
	}
	client, err := f.client()
	if err != nil {
		return err
	}
	if _, err := client.ApplyPolicy(ctx, *key, name); err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "policy %s applied to %s\n", name, *key)
	return nil
}

func (c *cli) policyList(ctx context.Context, args []string) error {
	return listCommand(c, ctx, args, "policy list", "List resource policies.", (*api.Client).ListPolicies,
		"NAME\tCONCURRENT\tPENDING\tSLOTS\tKERNELS\tLIFETIME\tIDLE", func(p *structs.ResourcePolicy) string {
			return fmt.Sprintf("%s\t%s\t%s\t%s\t%s\t%s\t%s", p.Name, limit(p.MaxConcurrentSessions), limit(p.MaxPendingSessions),
				dash(slotsString(p.TotalResourceSlots)), limit(p.MaxKernelsPerSession), durLimit(p.MaxSessionLifetime), durLimit(p.IdleTimeout))
		})
}

func groupFlags(f *flagSet) (*structs.ResourceGroup, *csvFlag) {
	g := &structs.ResourceGroup{}
	f.Var(slotLimitFlag{&g.TotalResourceSlots, structs.SlotCPU, false}, "total-cpu", "cap on the CPU cores all sessions of the group hold at once")
	f.Var(slotLimitFlag{&g.TotalResourceSlots, structs.SlotMem, true}, "total-mem", "cap on the memory all sessions of the group hold at once, e.g. 64G")
	f.Var(slotLimitFlag{&g.TotalResourceSlots, structs.SlotCUDADevice, false}, "total-gpu", "cap on the whole GPUs (cuda.device) all sessions of the group hold at once")
	f.StringVar(&g.SessionSelector, "session-selector", "", "fifo, lifo or drf (default fifo)")
	f.IntVar(&g.NumRetriesToSkip, "num-retries-to-skip", 0, "fifo: failed passes after which a head-of-line session stops blocking")
	f.StringVar(&g.AgentSelector, "agent-selector", "", "concentrated, dispersed or roundrobin (default dispersed)")
	prio := &csvFlag{}
	f.Var(prio, "resource-priority", "slot order for comparing agents, e.g. cuda.device,cpu,mem")
	f.Var((*listFlag)(&g.AllowedRegistries), "allow-registry",
		"registry host[:port] or *.domain the group's sessions may pull images from (repeatable; default: any registry at a public address)")
	return g, prio
}

func (c *cli) groupCreate(ctx context.Context, args []string) error {
	return c.groupSave(ctx, args, false)
}
func (c *cli) groupUpdate(ctx context.Context, args []string) error {
	return c.groupSave(ctx, args, true)
}

func (c *cli) groupSave(ctx context.Context, args []string, update bool) error {
	verb := "create"
	if update {
		verb = "update"
	}
	f := c.newFlags("group "+verb, "NAME [flags]", "Save a resource group's scheduler configuration (admin only).", false)
	g, prio := groupFlags(f)
	name, err := f.parseRef(args, "group name")
	if err != nil {
		return err
	}
	g.Name = name
	g.ResourcePriority = *prio
	client, err := f.client()
	if err != nil {
		return err
	}
	if update {
		// Keep what the flags do not set.
		groups, err := client.ListGroups(ctx)
		if err != nil {
			return err
		}
		set := map[string]bool{}
		f.Visit(func(fl *flag.Flag) { set[fl.Name] = true })
		for _, cur := range groups {
			if cur.Name != name {
				continue
			}
			if !set["session-selector"] {
				g.SessionSelector = cur.SessionSelector
			}
			if !set["num-retries-to-skip"] {
				g.NumRetriesToSkip = cur.NumRetriesToSkip
			}
			if !set["agent-selector"] {
				g.AgentSelector = cur.AgentSelector
			}
			if !set["resource-priority"] {
				g.ResourcePriority = cur.ResourcePriority
			}
			if !set["allow-registry"] {
				g.AllowedRegistries = cur.AllowedRegistries
			}
			for flagName, slot := range map[string]string{"total-cpu": structs.SlotCPU, "total-mem": structs.SlotMem, "total-gpu": structs.SlotCUDADevice} {
				if !set[flagName] {
					if q, ok := cur.TotalResourceSlots[slot]; ok {
						if g.TotalResourceSlots == nil {
							g.TotalResourceSlots = structs.Slots{}
						}
						g.TotalResourceSlots[slot] = q
					}
				}
			}
		}
		_, err = client.UpdateGroup(ctx, g)
		if err != nil {
			return err
		}
	} else if _, err := client.CreateGroup(ctx, g); err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "resource group %s saved\n", name)
	return nil
}

func (c *cli) groupList(ctx context.Context, args []string) error {
	return listCommand(c, ctx, args, "group list", "List resource groups and their scheduler configuration.", (*api.Client).ListGroups,
		"NAME\tSESSION SELECTOR\tRETRIES TO SKIP\tAGENT SELECTOR\tRESOURCE PRIORITY\tTOTAL LIMIT\tREGISTRIES", func(g *structs.ResourceGroup) string {
			registries := strings.Join(g.AllowedRegistries, ",")
			if registries == "" {
				registries = "public"
			}
			return fmt.Sprintf("%s\t%s\t%d\t%s\t%s\t%s\t%s", g.Name, g.SessionSelector, g.NumRetriesToSkip, g.AgentSelector,
				dash(strings.Join(g.ResourcePriority, ",")), dash(slotsString(g.TotalResourceSlots)), registries)
		})
}

func (c *cli) queue(ctx context.Context, args []string) error {
	f := c.newFlags("queue", "[-group G] [flags]", "List pending sessions in the order the scheduler will take them.", true)
	group := f.String("group", "", "resource group (default: all groups)")
	if err := f.parseNone(args); err != nil {
		return err
	}
	client, err := f.client()
	if err != nil {
		return err
	}
	q, err := client.Queue(ctx, *group)
	if err != nil {
		return err
	}
	if f.json {
		return printJSON(c.stdout, q)
	}
	tw := newTable(c.stdout)
	fmt.Fprintln(tw, "#\tID\tNAME\tOWNER\tGROUP\tPRIORITY\tRETRIES\tWHY PENDING")
	for _, e := range q {
		s := e.Session
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%d\t%d\t%s\n", e.Position, shortID(s.ID), dash(s.Name), dash(s.Owner), s.ResourceGroup, s.Priority, s.ScheduleAttempts, dash(s.StatusInfo))
	}
	return tw.Flush()
}

// slotLimitFlag sets one slot of a Slots limit from a flag.
type slotLimitFlag struct {
	slots *structs.Slots
	slot  string
	bytes bool
}

func (f slotLimitFlag) String() string {
	if f.slots == nil || *f.slots == nil {
		return ""
	}
	return (*f.slots)[f.slot].String()
}

func (f slotLimitFlag) Set(v string) error {
	parse := structs.ParseQuantity
	if f.bytes {
		parse = structs.ParseBytes
	}
	q, err := parse(v)
	if err != nil || q < 0 {
		return fmt.Errorf("invalid %s limit %q", f.slot, v)
	}
	if f.slot == structs.SlotCUDADevice && q%structs.QuantityScale != 0 {
		return fmt.Errorf("invalid %s limit %q: want a whole number of GPUs", f.slot, v)
	}
	if *f.slots == nil {
		*f.slots = structs.Slots{}
	}
	(*f.slots)[f.slot] = q
	return nil
}

// listCommand runs a command that takes no argument and lists what list
// returns: as JSON with -json, else as a table with header and one row
// (tab-separated, no newline) per item.
func listCommand[T any](c *cli, ctx context.Context, args []string, name, summary string,
	list func(*api.Client, context.Context) ([]T, error), header string, row func(T) string) error {
	f := c.newFlags(name, "[flags]", summary, true)
	if err := f.parseNone(args); err != nil {
		return err
	}
	client, err := f.client()
	if err != nil {
		return err
	}
	items, err := list(client, ctx)
	if err != nil {
		return err
	}
	if f.json {
		return printJSON(c.stdout, items)
	}
	tw := newTable(c.stdout)
	fmt.Fprintln(tw, header)
	for _, it := range items {
		fmt.Fprintln(tw, row(it))
	}
	return tw.Flush()
}

func (c *cli) userDelete(ctx context.Context, args []string) error {
	return c.configDelete(ctx, args, "user", "Delete a user and its access keys (admin only). Refused, with what uses it,\nwhile the user has sessions that have not ended or endpoints.", (*api.Client).DeleteUser)
}

func (c *cli) policyDelete(ctx context.Context, args []string) error {
	return c.configDelete(ctx, args, "policy", "Delete a resource policy (admin only). Refused, naming them, while access keys\nhave it applied.", (*api.Client).DeletePolicy)
}

func (c *cli) groupDelete(ctx context.Context, args []string) error {
	return c.configDelete(ctx, args, "group", "Delete a resource group's configuration (admin only). Refused, with what uses\nit, while agents, sessions that have not ended or endpoints are in the group.", (*api.Client).DeleteGroup)
}

func (c *cli) configDelete(ctx context.Context, args []string, kind, summary string, del func(*api.Client, context.Context, string) (*api.DeleteConfigResponse, error)) error {
	f := c.newFlags(kind+" delete", "NAME", summary, false)
	name, client, err := f.refClient(args, kind+" name")
	if err != nil {
		return err
	}
	res, err := del(client, ctx, name)
	if err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "%s %s deleted", res.Kind, res.Name)
	if len(res.Keys) > 0 {
		fmt.Fprintf(c.stdout, " with its access keys %s", strings.Join(res.Keys, ", "))
	}
	fmt.Fprintln(c.stdout)
	return nil
}

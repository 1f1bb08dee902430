package server_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/rpc"
	"github.com/corral-dev/corral/rpc/tlsutil"
	"github.com/corral-dev/corral/structs"
)

func status(s structs.SessionStatus) func(*api.SessionDetail) bool {
	return func(d *api.SessionDetail) bool { return d.Session.Status == s || terminal(d) }
}

func reasonHas(sub string) func(*api.SessionDetail) bool {
	return func(d *api.SessionDetail) bool { return strings.Contains(d.Session.StatusInfo, sub) || terminal(d) }
}

func oneCPU() structs.Slots {
	return structs.Slots{structs.SlotCPU: structs.Whole(1), structs.SlotMem: structs.Whole(32 << 20)}
}

// TestDependencies: a dependent waits for its dependency's SUCCESS; a
// FAILURE cancels its dependents, and theirs in turn, with the reason.
func TestDependencies(t *testing.T) {
	c := startCluster(t, structs.Slots{structs.SlotCPU: structs.Whole(4)})
	a := create(t, c, &api.CreateSessionRequest{Name: "a", Command: []string{"sh", "-c", "sleep 1; exit 0"}, Resources: small})
	b := create(t, c, &api.CreateSessionRequest{Name: "b", Command: []string{"true"}, Resources: small, DependsOn: []string{"a"}})
	f := create(t, c, &api.CreateSessionRequest{Name: "f", Command: []string{"sh", "-c", "sleep 0.5; exit 3"}, Resources: small})
	x := create(t, c, &api.CreateSessionRequest{Name: "x", Command: []string{"true"}, Resources: small, DependsOn: []string{"f"}})
	y := create(t, c, &api.CreateSessionRequest{Name: "y", Command: []string{"true"}, Resources: small, DependsOn: []string{"x", "a"}})

	d := c.waitFor(t, b.Session.ID, reasonHas("waiting for dependency "+a.Session.ID))
	if d.Session.Status != structs.SessionPending {
		t.Fatalf("b before a ended: %s %q", d.Session.Status, d.Session.StatusInfo)
	}
	if d = c.waitFor(t, b.Session.ID, terminal); d.Session.Result != structs.ResultSuccess {
		t.Fatalf("b: %s/%s %q", d.Session.Status, d.Session.Result, d.Session.StatusInfo)
	}
	ad := c.waitFor(t, a.Session.ID, terminal)
	if !d.Kernels[0].CreatedAt.Before(ad.Session.TerminatedAt) || d.Kernels[0].History[1].Time.Before(ad.Session.History[len(ad.Session.History)-1].Time) {
		t.Fatalf("b was scheduled before a ended: %+v / %+v", d.Kernels[0].History, ad.Session.History)
	}
	c.waitFor(t, f.Session.ID, terminal)
	for s, why := range map[*api.SessionDetail]string{x: f.Session.ID + " ended TERMINATED/FAILURE", y: x.Session.ID + " ended CANCELLED"} {
		d := c.waitFor(t, s.Session.ID, terminal)
		if d.Session.Status != structs.SessionCancelled || !strings.Contains(d.Session.StatusInfo, why) {
			t.Fatalf("%s: %s %q", d.Session.Name, d.Session.Status, d.Session.StatusInfo)
		}
		if d.Kernels[0].AgentID != "" || d.Kernels[0].Status != structs.KernelCancelled {
			t.Fatalf("%s's kernel: %+v", d.Session.Name, d.Kernels[0])
		}
	}
}

// TestPriorityQueueAndStartsAt: pending sessions wait in priority order
// (corral queue shows it) and the highest goes first when room frees up; a
// reserved session waits for its start time even with room.
func TestPriorityQueueAndStartsAt(t *testing.T) {
	c := startCluster(t, structs.Slots{structs.SlotCPU: structs.Whole(1)})
	ctx := context.Background()
	blocker := create(t, c, &api.CreateSessionRequest{Name: "blocker", Type: "interactive", Command: []string{"sleep", "infinity"}, Resources: oneCPU()})
	c.waitFor(t, "blocker", status(structs.SessionRunning))
	var ids []string
	for _, p := range []struct {
		name string
		prio int
	}{{"low", -5}, {"mid", 0}, {"high", 7}, {"mid2", 0}} {
		d := create(t, c, &api.CreateSessionRequest{Name: p.name, Type: "interactive", Command: []string{"sleep", "infinity"}, Resources: oneCPU(), Priority: p.prio})
		ids = append(ids, d.Session.ID)
	}
	c.waitFor(t, "mid2", reasonHas("cpu")) // the pass after the last create
	d := c.waitFor(t, "low", reasonHas("cpu"))
	if d.Session.Status != structs.SessionPending || d.Session.ScheduleAttempts < 1 {
		t.Fatalf("low: %s attempts %d %q", d.Session.Status, d.Session.ScheduleAttempts, d.Session.StatusInfo)
	}
	// An idle queue is not rescheduled over and over: attempts count real
	// retries (changes the scheduler did not make itself).
	time.Sleep(300 * time.Millisecond)
	if again, _ := c.client.GetSession(ctx, "low"); again.Session.ScheduleAttempts != d.Session.ScheduleAttempts {
		t.Fatalf("attempts of an idle pending session went from %d to %d", d.Session.ScheduleAttempts, again.Session.ScheduleAttempts)
	}
	q, err := c.client.Queue(ctx, "default")
	if err != nil {
		t.Fatal(err)
	}
	var order []string
	for _, e := range q {
		order = append(order, e.Session.Name)
	}
	if want := []string{"high", "mid", "mid2", "low"}; !slices.Equal(order, want) {
		t.Fatalf("queue %v, want %v", order, want)
	}
	if _, err := c.client.Queue(ctx, "bad group!"); apiStatus(err) != 400 {
		t.Fatalf("bad group: %v", err)
	}
	// Free the room: the highest priority goes next, the rest still wait.
	if _, err := c.client.DestroySession(ctx, blocker.Session.ID); err != nil {
		t.Fatal(err)
	}
	if d := c.waitFor(t, "high", status(structs.SessionRunning)); d.Session.Status != structs.SessionRunning {
		t.Fatalf("high: %s %q", d.Session.Status, d.Session.StatusInfo)
	}
	for _, id := range ids[:2] {
		if d, _ := c.client.GetSession(ctx, id); d.Session.Status != structs.SessionPending {
			t.Fatalf("%s went before high ended: %s", d.Session.Name, d.Session.Status)
		}
	}
	for _, id := range ids {
		if _, err := c.client.DestroySession(ctx, id); err != nil {
			t.Fatal(err)
		}
		c.waitFor(t, id, terminal)
	}

	// A reservation waits for its time although the agent is free.
	at := time.Now().Add(1500 * time.Millisecond).UTC()
	r := create(t, c, &api.CreateSessionRequest{Command: []string{"true"}, Resources: small, StartsAt: at})
	d = c.waitFor(t, r.Session.ID, reasonHas("starts_at"))
	if d.Session.Status != structs.SessionPending {
		t.Fatalf("reserved: %s %q", d.Session.Status, d.Session.StatusInfo)
	}
	d = c.waitFor(t, r.Session.ID, terminal)
	if d.Session.Result != structs.ResultSuccess {
		t.Fatalf("reserved: %s/%s %q", d.Session.Status, d.Session.Result, d.Session.StatusInfo)
	}
	if placed := d.Kernels[0].History[1]; placed.Status != string(structs.KernelScheduled) || placed.Time.Before(at) {
		t.Fatalf("reserved session placed at %v, before %v", placed.Time, at)
	}
}

// TestGangAndSingleNodeCluster: a session of several kernels is placed all
// together on one agent or not at all; main1's end stops the sub kernels
// of a batch session, and every kernel sees the cluster's environment.
func TestGangAndSingleNodeCluster(t *testing.T) {
	c := startCluster(t, structs.Slots{structs.SlotCPU: structs.Whole(2)})
	ctx := context.Background()
	half := structs.Slots{structs.SlotCPU: 500, structs.SlotMem: structs.Whole(32 << 20)}
	script := `if [ "$CORRAL_CLUSTER_ROLE" = main ]; then echo "$CORRAL_CLUSTER_HOST $CORRAL_CLUSTER_SIZE $CORRAL_CLUSTER_HOSTS"; exit 0; fi; sleep 60`
	s := create(t, c, &api.CreateSessionRequest{Command: []string{"sh", "-c", script}, Resources: half, ClusterSize: 3})
	if len(s.Kernels) != 3 || s.Session.ClusterMode != structs.ClusterModeSingleNode {
		t.Fatalf("created %d kernels, mode %q", len(s.Kernels), s.Session.ClusterMode)
	}
	d := c.waitFor(t, s.Session.ID, terminal)
	if d.Session.Status != structs.SessionTerminated || d.Session.Result != structs.ResultSuccess {
		t.Fatalf("cluster batch: %s/%s %q", d.Session.Status, d.Session.Result, d.Session.StatusInfo)
	}
	var hosts []string
	for _, k := range d.Kernels {
		hosts = append(hosts, k.Hostname)
		if k.AgentID != c.agent.ID() || k.Status != structs.KernelTerminated {
			t.Fatalf("kernel %s: %s on %q (%s)", k.Hostname, k.Status, k.AgentID, k.StatusInfo)
		}
		if k.Role == "sub" && !strings.Contains(k.StatusInfo, "main1 ended") {
			t.Fatalf("sub kernel %s ended with %q", k.Hostname, k.StatusInfo)
		}
	}
	if !slices.Equal(hosts, []string{"main1", "sub1", "sub2"}) {
		t.Fatalf("hostnames %v", hosts)
	}
	logs, err := c.client.SessionLogs(ctx, s.Session.ID, "main1")
	if err != nil || logs.Stdout != "main1 3 main1,sub1,sub2\n" {
		t.Fatalf("main1's output %q (%v)", logs.Stdout, err)
	}

	// Three kernels of one core each fit no two-core agent: none is placed.
	g := create(t, c, &api.CreateSessionRequest{Command: []string{"true"}, Resources: oneCPU(), ClusterSize: 3})
	d = c.waitFor(t, g.Session.ID, reasonHas("kernels"))
	if d.Session.Status != structs.SessionPending {
		t.Fatalf("gang: %s %q", d.Session.Status, d.Session.StatusInfo)
	}
	for _, k := range d.Kernels {
		if k.Status != structs.KernelPending || k.AgentID != "" {
			t.Fatalf("gang kernel %s placed alone: %s on %q", k.Hostname, k.Status, k.AgentID)
		}
	}
	if a, err := c.client.GetAgent(ctx, c.agent.ID()); err != nil || len(a.Occupied) != 0 {
		t.Fatalf("agent occupancy %v (%v)", a.Occupied, err)
	}
	// Heterogeneous kernels: the sub role runs its own command and size.
	h := create(t, c, &api.CreateSessionRequest{Command: []string{"sh", "-c", "echo main"}, Resources: half, ClusterSize: 2,
		Roles: []api.RoleSpec{{Role: "sub", Command: []string{"sh", "-c", "sleep 60"}, Resources: structs.Slots{structs.SlotCPU: 250}}}})
	if ks := h.Kernels; ks[1].Resources[structs.SlotCPU] != 250 || ks[1].Command[2] != "sleep 60" || ks[0].Resources[structs.SlotCPU] != 500 {
		t.Fatalf("role overrides: main %v %v, sub %v %v", ks[0].Resources, ks[0].Command, ks[1].Resources, ks[1].Command)
	}
	if d := c.waitFor(t, h.Session.ID, terminal); d.Session.Result != structs.ResultSuccess {
		t.Fatalf("heterogeneous session: %s/%s %q", d.Session.Status, d.Session.Result, d.Session.StatusInfo)
	}
	for _, bad := range []*api.CreateSessionRequest{
		{Command: []string{"true"}, ClusterSize: 2, Roles: []api.RoleSpec{{Role: "Boss1"}}},
		{Command: []string{"true"}, Roles: []api.RoleSpec{{Role: "sub", Resources: structs.Slots{structs.SlotCPU: 500}}}},
		{Command: []string{"true"}, ClusterSize: 2, Roles: []api.RoleSpec{{Role: "sub", Driver: "warp"}}},
		{Command: []string{"true"}, ClusterSize: 1000},
		{Command: []string{"true"}, ClusterSize: 2, ClusterMode: "sideways"},
	} {
		if _, err := c.client.CreateSession(ctx, bad); apiStatus(err) != 400 {
			t.Fatalf("bad cluster request %+v: %v", bad, err)
		}
	}
}

// TestKeyConcurrencyAndSlotLimits: a key's sessions beyond its policy wait
// with the predicate's reason, its concurrency set is exact, and they start
// as soon as the key's others end.
func TestKeyConcurrencyAndSlotLimits(t *testing.T) {
	c := startCluster(t, structs.Slots{structs.SlotCPU: structs.Whole(4)})
	ctx := context.Background()
	admin := c.client
	if _, err := admin.CreatePolicy(ctx, &api.PolicyRequest{Name: "one", MaxConcurrentSessions: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.CreatePolicy(ctx, &api.PolicyRequest{Name: "twocpu", TotalResourceSlots: structs.Slots{structs.SlotCPU: structs.Whole(2)}}); err != nil {
		t.Fatal(err)
	}
	keyFor := func(user, policy string) (*api.Client, string) {
		if _, err := admin.CreateUser(ctx, &api.CreateUserRequest{Name: user}); err != nil {
			t.Fatal(err)
		}
		k, err := admin.CreateKey(ctx, &api.CreateKeyRequest{User: user, Policy: policy})
		if err != nil {
			t.Fatal(err)
		}
		cl, _ := api.NewClient(c.addr)
		cl.SetToken(k.Token)
		return cl, k.Key.AccessKey
	}
	one, oneKey := keyFor("carol", "one")
	two, _ := keyFor("dave", "twocpu")
	run := func(cl *api.Client, res structs.Slots) string {
		d, err := cl.CreateSession(ctx, &api.CreateSessionRequest{Type: "interactive", Command: []string{"sleep", "infinity"}, Resources: res})
		if err != nil {
			t.Fatal(err)
		}
		return d.Session.ID
	}
	first := run(one, small)
	c.waitFor(t, first, status(structs.SessionRunning))
	second := run(one, small)
	if d := c.waitFor(t, second, reasonHas("max_concurrent_sessions")); d.Session.Status != structs.SessionPending {
		t.Fatalf("second: %s %q", d.Session.Status, d.Session.StatusInfo)
	}
	ks, err := admin.KeyStatus(ctx, oneKey)
	if err != nil || len(ks.Usage.Sessions) != 1 || !ks.Usage.Sessions[first] {
		t.Fatalf("concurrency set %v (%v)", ks.Usage, err)
	}
	if _, err := one.DestroySession(ctx, first); err != nil {
		t.Fatal(err)
	}
	if d := c.waitFor(t, second, status(structs.SessionRunning)); d.Session.Status != structs.SessionRunning {
		t.Fatalf("second after first ended: %s %q", d.Session.Status, d.Session.StatusInfo)
	}

	a := run(two, oneCPU())
	b := run(two, oneCPU())
	c.waitFor(t, a, status(structs.SessionRunning))
	c.waitFor(t, b, status(structs.SessionRunning))
	x := run(two, oneCPU())
	if d := c.waitFor(t, x, reasonHas("total_resource_slots")); d.Session.Status != structs.SessionPending {
		t.Fatalf("third core: %s %q", d.Session.Status, d.Session.StatusInfo)
	}
	if _, err := two.DestroySession(ctx, a); err != nil {
		t.Fatal(err)
	}
	c.waitFor(t, x, status(structs.SessionRunning))
	for _, id := range []string{second, b, x} {
		if _, err := admin.DestroySession(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
}

// TestDrainAndEligible: a drained agent takes no new session (the reason
// says so), its running kernels go on unless the drain is forced, and
// eligible opens it again.
func TestDrainAndEligible(t *testing.T) {
	c := startCluster(t, structs.Slots{structs.SlotCPU: structs.Whole(2)})
	ctx := context.Background()
	run := create(t, c, &api.CreateSessionRequest{Type: "interactive", Command: []string{"sleep", "infinity"}, Resources: small})
	c.waitFor(t, run.Session.ID, status(structs.SessionRunning))
	a, err := c.client.DrainAgent(ctx, c.agent.ID(), true, false)
	if err != nil || !a.Drain {
		t.Fatalf("drain: %+v %v", a, err)
	}
	// The agent registers again (a reconnect sends its inventory, where
	// Drain is false): the operator's drain stays.
	cc, err := grpc.NewClient(c.srv.RPCAddr(), c.agent.Security().DialOptions(tlsutil.RoleServer)...)
	if err != nil {
		t.Fatal(err)
	}
	inv := a.Copy()
	inv.Drain = false
	if _, err := rpc.NewServerClient(cc).Register(ctx, &rpc.RegisterRequest{Agent: inv}); err != nil {
		t.Fatal(err)
	}
	cc.Close()
	if a, err := c.client.GetAgent(ctx, c.agent.ID()); err != nil || !a.Drain {
		t.Fatalf("after a re-registration: drain %v, %v", a != nil && a.Drain, err)
	}
	p := create(t, c, &api.CreateSessionRequest{Command: []string{"true"}, Resources: small})
	if d := c.waitFor(t, p.Session.ID, reasonHas("drained")); d.Session.Status != structs.SessionPending {
		t.Fatalf("session on a drained cluster: %s %q", d.Session.Status, d.Session.StatusInfo)
	}
	if d, _ := c.client.GetSession(ctx, run.Session.ID); d.Session.Status != structs.SessionRunning {
		t.Fatalf("running session after a drain: %s", d.Session.Status)
	}
	if _, err := c.client.DrainAgent(ctx, c.agent.ID(), false, false); err != nil {
		t.Fatal(err)
	}
	if d := c.waitFor(t, p.Session.ID, terminal); d.Session.Result != structs.ResultSuccess {
		t.Fatalf("after eligible: %s/%s %q", d.Session.Status, d.Session.Result, d.Session.StatusInfo)
	}
	if _, err := c.client.DrainAgent(ctx, c.agent.ID(), true, true); err != nil {
		t.Fatal(err)
	}
	if d := c.waitFor(t, run.Session.ID, terminal); d.Session.Status != structs.SessionTerminated || !strings.Contains(d.Kernels[0].StatusInfo, "drained (forced)") {
		t.Fatalf("after a forced drain: %s %q", d.Session.Status, d.Kernels[0].StatusInfo)
	}
	if _, err := c.client.DrainAgent(ctx, "no-such-agent", true, false); apiStatus(err) != 404 {
		t.Fatalf("drain of an unknown agent: %v", err)
	}
}

// TestGroupTotalResourceSlots: a resource group's cap keeps its sessions
// within it (with the predicate's reason) even where agents have room.
func TestGroupTotalResourceSlots(t *testing.T) {
	c := startCluster(t, structs.Slots{structs.SlotCPU: structs.Whole(4)})
	ctx := context.Background()
	if _, err := c.client.CreateGroup(ctx, &structs.ResourceGroup{Name: "default", TotalResourceSlots: structs.Slots{structs.SlotCPU: structs.Whole(1)}}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.client.CreateGroup(ctx, &structs.ResourceGroup{Name: "bad", TotalResourceSlots: structs.Slots{"warp": 1}}); apiStatus(err) != 400 {
		t.Fatalf("unknown slot in a group cap: %v", err)
	}
	first := create(t, c, &api.CreateSessionRequest{Type: "interactive", Command: []string{"sleep", "infinity"}, Resources: oneCPU()})
	c.waitFor(t, first.Session.ID, status(structs.SessionRunning))
	second := create(t, c, &api.CreateSessionRequest{Command: []string{"true"}, Resources: oneCPU()})
	if d := c.waitFor(t, second.Session.ID, reasonHas(`total_resource_slots of resource group "default"`)); d.Session.Status != structs.SessionPending {
		t.Fatalf("second: %s %q", d.Session.Status, d.Session.StatusInfo)
	}
	if _, err := c.client.DestroySession(ctx, first.Session.ID); err != nil {
		t.Fatal(err)
	}
	if d := c.waitFor(t, second.Session.ID, terminal); d.Session.Result != structs.ResultSuccess {
		t.Fatalf("second after the first ended: %s/%s %q", d.Session.Status, d.Session.Result, d.Session.StatusInfo)
	}
}

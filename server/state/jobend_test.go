package state

import (
	"reflect"
	"strings"
	"testing"

	"github.com/corral-dev/corral/structs"
)

// clusterFixture is a fixture with agents a1 and a2 (underlay 10.9.0.11
// and .12, exec and runc) for cluster sessions.
func clusterFixture(t *testing.T) *fixture {
	t.Helper()
	f := newFixture(t)
	for _, id := range []string{"a1", "a2"} {
		a := &structs.Agent{ID: id, Name: id, Status: structs.AgentAlive, Drivers: []string{"exec", "runc"}, Capacity: slots(16, 16384),
			SerfAddr: map[string]string{"a1": "10.9.0.11:8643", "a2": "10.9.0.12:8643"}[id]}
		if err := f.s.UpsertAgent(f.next(), &structs.AgentUpsertRequest{Agent: a, Time: t0}); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// cluster enqueues a multi-node session id of n kernels (id-main1,
// id-sub1...) with sess's job settings and places main1 on a1, the subs
// on a2. edit, when set, changes each kernel before the enqueue.
func (f *fixture) cluster(id string, typ structs.SessionType, n int, runOn, failOn string, edit func(k *structs.Kernel)) {
	f.t.Helper()
	f.clusterOn(id, typ, n, runOn, failOn, edit, func(i int) string {
		if i == 0 {
			return "a1"
		}
		return "a2"
	})
}

// clusterOn is cluster with kernel i placed on agentFor(i).
func (f *fixture) clusterOn(id string, typ structs.SessionType, n int, runOn, failOn string, edit func(k *structs.Kernel), agentFor func(i int) string) {
	f.t.Helper()
	sess := &structs.Session{ID: id, Type: typ, ResourceGroup: structs.DefaultResourceGroup, ClusterMode: structs.ClusterModeMultiNode, ClusterSize: n,
		RunOn: runOn, FailOn: failOn, StartOrder: structs.StartBarrier}
	var ks []*structs.Kernel
	var pl []structs.Placement
	for i := range n {
		role, idx, host, agent := "main", 1, "main1", agentFor(i)
		if i > 0 {
			role, idx, host = "sub", i, "sub"+string(rune('0'+i))
		}
		k := &structs.Kernel{ID: id + "-" + host, SessionID: id, Role: role, Idx: idx, Hostname: host, Driver: "runc", Image: "busybox",
			Command: []string{"true"}, Resources: slots(1, 64),
			Launch: &structs.ClusterLaunch{SSHPrivateKey: "PRIVATE " + id, AuthorizedKeys: []string{"ssh-ed25519 AAAA " + id},
				Serve: runOn == structs.RunOnMain && i > 0}} // as the HTTP create decides
		if edit != nil {
			edit(k)
		}
		ks = append(ks, k)
		pl = append(pl, structs.Placement{KernelID: k.ID, AgentID: agent})
	}
	if err := f.s.EnqueueSession(f.next(), &structs.SessionEnqueueRequest{Session: sess, Kernels: ks, Time: t0}); err != nil {
		f.t.Fatal(err)
	}
	plan := &structs.Plan{Placements: []structs.SessionPlacement{{SessionID: id, Placements: pl}}}
	res, err := f.s.ApplyPlan(f.next(), &structs.PlanApplyRequest{Plan: plan, Time: t0})
	if err != nil || len(res.Applied) != 1 {
		f.t.Fatalf("place %s: %+v %v", id, res, err)
	}
}

func (f *fixture) kernel(id string) *structs.Kernel {
	f.t.Helper()
	k, err := f.s.Snapshot().Kernel(id)
	if err != nil {
		f.t.Fatal(err)
	}
	return k
}

// info sends one update with a status line, as agents do.
func (f *fixture) info(agentID, kernelID string, st structs.KernelStatus, info string, code *int) {
	f.t.Helper()
	_, err := f.s.UpdateKernels(f.next(), &structs.KernelUpdateRequest{AgentID: agentID, Updates: []*structs.KernelUpdate{{KernelID: kernelID, Status: st, Info: info, ExitCode: code, Time: t0}}})
	if err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) run(id string, hosts ...string) {
	f.t.Helper()
	for _, h := range hosts {
		agent := "a2"
		if h == "main1" {
			agent = "a1"
		}
		f.info(agent, id+"-"+h, structs.KernelRunning, "running", nil)
	}
}

func TestClusterLaunchOverlay(t *testing.T) {
	f := clusterFixture(t)
	f.cluster("c1", structs.SessionTypeBatch, 3, structs.RunOnMain, structs.FailOnAny, func(k *structs.Kernel) {
		if k.Hostname == "sub2" {
			k.Resources = slots(3, 64)
			k.Resources[structs.SlotCPU] = structs.Whole(3) + 500 // 3.5 cores: 3 slots
		}
	})
	peers := []structs.ClusterPeer{
		{Hostname: "main1", Addr: "10.224.0.2", Rank: 0, Slots: 1, SSHPort: OverlaySSHPort},
		{Hostname: "sub1", Addr: "10.224.0.3", Rank: 1, Slots: 1, SSHPort: OverlaySSHPort},
		{Hostname: "sub2", Addr: "10.224.0.4", Rank: 2, Slots: 3, SSHPort: OverlaySSHPort},
	}
	for rank, h := range []string{"main1", "sub1", "sub2"} {
		k := f.kernel("c1-" + h)
		want := &structs.ClusterLaunch{NodeRank: rank, NumNodes: 3, MasterAddr: "10.224.0.2", MasterPort: OverlayMasterPort, SSHPort: OverlaySSHPort,
			Peers: peers, Barrier: true, Serve: h != "main1", SSHPrivateKey: "PRIVATE c1", AuthorizedKeys: []string{"ssh-ed25519 AAAA c1"}}
		if !reflect.DeepEqual(k.Launch, want) {
			t.Errorf("%s's launch\n%+v, want\n%+v", h, k.Launch, want)
		}
		if k.Network.Hosts["sub2"] != "10.224.0.4" {
			t.Errorf("%s's hosts %v", h, k.Network.Hosts)
		}
	}
}

// TestClusterLaunchHostNetwork: exec kernels and runc kernels with
// network host reach each other at their agents' underlay addresses, on
// ports of their own: no two live kernels on one agent share an ssh port
// (kernels of one session on one agent included), no two live sessions a
// master port.
func TestClusterLaunchHostNetwork(t *testing.T) {
	f := clusterFixture(t)
	exec := func(k *structs.Kernel) { k.Driver, k.Image = "exec", "" }
	f.cluster("h1", structs.SessionTypeBatch, 2, structs.RunOnAll, structs.FailOnAny, exec)
	f.cluster("h2", structs.SessionTypeBatch, 2, structs.RunOnAll, structs.FailOnAny, func(k *structs.Kernel) {
		k.Options = &structs.KernelOptions{Network: structs.NetworkHost}
	})
	// A single-node exec session: three kernels, one agent, one address.
	f.clusterOn("h3", structs.SessionTypeBatch, 3, structs.RunOnAll, structs.FailOnAny, exec, func(int) string { return "a1" })

	for _, id := range []string{"h1", "h2"} {
		nw := f.sess(id).Network
		if nw == nil {
			t.Fatalf("%s has no pool slot", id)
		}
		for _, h := range []string{"main1", "sub1"} {
			l := f.kernel(id + "-" + h).Launch
			if l == nil || !l.HostNetwork || l.MasterAddr != "10.9.0.11" || l.Serve || l.MasterPort != HostMasterPortBase+nw.Slot {
				t.Fatalf("%s/%s launch %+v", id, h, l)
			}
			// Alone on its agent: the session's preferred port.
			want := []structs.ClusterPeer{{Hostname: "main1", Addr: "10.9.0.11", Rank: 0, Slots: 1, SSHPort: HostSSHPortBase + nw.Slot},
				{Hostname: "sub1", Addr: "10.9.0.12", Rank: 1, Slots: 1, SSHPort: HostSSHPortBase + nw.Slot}}
			if !reflect.DeepEqual(l.Peers, want) || l.SSHPort != HostSSHPortBase+nw.Slot {
				t.Fatalf("%s/%s ssh port %d, peers %+v", id, h, l.SSHPort, l.Peers)
			}
			if hosts := f.kernel(id + "-" + h).Network.Hosts; hosts["sub1"] != "10.9.0.12" {
				t.Fatalf("%s/%s hosts %v", id, h, hosts)
			}
		}
	}
	h3 := f.kernel("h3-sub2").Launch
	for i, p := range h3.Peers {
		if p.Addr != "10.9.0.11" {
			t.Fatalf("h3 peer %+v", p)
		}
		if k := f.kernel("h3-" + p.Hostname); k.Launch.SSHPort != p.SSHPort {
			t.Fatalf("h3/%s listens on %d, its peers reach it on %d", p.Hostname, k.Launch.SSHPort, p.SSHPort)
		}
		for _, q := range h3.Peers[:i] {
			if q.SSHPort == p.SSHPort {
				t.Fatalf("h3's %s and %s share ssh port %d on one agent", q.Hostname, p.Hostname, p.SSHPort)
			}
		}
	}
	// Every live kernel on each agent has its own ssh port; every session
	// its own master port.
	masters := map[int]string{}
	for _, agent := range []string{"a1", "a2"} {
		ks, err := f.s.Snapshot().KernelsByAgent(nil, agent)
		if err != nil {
			t.Fatal(err)
		}
		seen := map[int]string{}
		for _, k := range ks {
			if other, dup := seen[k.Launch.SSHPort]; dup {
				t.Fatalf("agent %s: %s and %s share ssh port %d", agent, other, k.ID, k.Launch.SSHPort)
			}
			seen[k.Launch.SSHPort] = k.ID
			if other, dup := masters[k.Launch.MasterPort]; dup && other != k.SessionID {
				t.Fatalf("sessions %s and %s share master port %d", other, k.SessionID, k.Launch.MasterPort)
			}
			masters[k.Launch.MasterPort] = k.SessionID
		}
	}
	if len(masters) != 3 {
		t.Fatalf("master ports %v, want one per session", masters)
	}
}

// TestFailOnAnySubExit: a sub kernel that exits 3 on its own fails a batch
// session, stops the others and is named; the stopped kernels' reports
// never replace that.
func TestFailOnAnySubExit(t *testing.T) {
	f := clusterFixture(t)
	f.cluster("c1", structs.SessionTypeBatch, 3, structs.RunOnMain, structs.FailOnAny, nil)
	f.run("c1", "main1", "sub1", "sub2")
	f.info("a2", "c1-sub2", structs.KernelTerminated, "exited with code 3", intp(3))
	s := f.sess("c1")
	if s.Result != structs.ResultFailure || s.Status != structs.SessionTerminating || s.StatusInfo != "sub2 exited with code 3" {
		t.Fatalf("after sub2 exited 3: %s/%s %q", s.Status, s.Result, s.StatusInfo)
	}
	for _, h := range []string{"main1", "sub1"} {
		if k := f.kernel("c1-" + h); k.Status != structs.KernelTerminating {
			t.Fatalf("%s is %s, want TERMINATING", h, k.Status)
		}
	}
	f.info("a1", "c1-main1", structs.KernelTerminated, "stopped: sub2 exited with code 3: exited with code 0", intp(0))
	f.info("a2", "c1-sub1", structs.KernelTerminated, "stopped: sub2 exited with code 3: killed by signal 15", intp(-1))
	s = f.sess("c1")
	if s.Status != structs.SessionTerminated || s.Result != structs.ResultFailure || s.StatusInfo != "sub2 exited with code 3" {
		t.Fatalf("at the end: %s/%s %q", s.Status, s.Result, s.StatusInfo)
	}
}

// TestMainExitWhileSubsPull: main1 exits 3 while the subs still pull their
// images; the status line keeps main1's own exit.
func TestMainExitWhileSubsPull(t *testing.T) {
	for _, failOn := range []string{structs.FailOnAny, structs.FailOnMain} {
		t.Run(failOn, func(t *testing.T) {
			f := clusterFixture(t)
			f.cluster("c1", structs.SessionTypeBatch, 3, structs.RunOnMain, failOn, nil)
			f.info("a1", "c1-main1", structs.KernelRunning, "running", nil)
			f.info("a2", "c1-sub1", structs.KernelPulling, "pulling busybox", nil)
			f.info("a2", "c1-sub2", structs.KernelPulling, "pulling busybox", nil)
			f.info("a1", "c1-main1", structs.KernelTerminated, "exited with code 3", intp(3))
			if k := f.kernel("c1-sub1"); k.Status != structs.KernelTerminating {
				t.Fatalf("sub1 %s after main1 ended", k.Status)
			}
			f.info("a2", "c1-sub1", structs.KernelTerminated, "stopped: main1 exited with code 3 (before it started)", nil)
			f.info("a2", "c1-sub2", structs.KernelTerminated, "exited with code 0", intp(0))
			s := f.sess("c1")
			if s.Status != structs.SessionTerminated || s.Result != structs.ResultFailure || s.StatusInfo != "main1 exited with code 3" {
				t.Fatalf("%s/%s %q, want TERMINATED/FAILURE \"main1 exited with code 3\"", s.Status, s.Result, s.StatusInfo)
			}
		})
	}
}

// TestMainSuccessEndsSession: main1 exiting 0 stops the serving subs, which
// are no failures; the status line is main1's.
func TestMainSuccessEndsSession(t *testing.T) {
	f := clusterFixture(t)
	f.cluster("c1", structs.SessionTypeBatch, 2, structs.RunOnMain, structs.FailOnAny, nil)
	f.run("c1", "main1", "sub1")
	f.info("a1", "c1-main1", structs.KernelTerminated, "exited with code 0", intp(0))
	f.info("a2", "c1-sub1", structs.KernelTerminated, "stopped: main1 ended: exited with code 0: killed by signal 15", intp(-1))
	s := f.sess("c1")
	if s.Status != structs.SessionTerminated || s.Result != structs.ResultSuccess || s.StatusInfo != "main1 ended: exited with code 0" {
		t.Fatalf("%s/%s %q", s.Status, s.Result, s.StatusInfo)
	}
}

// TestFailOnMainSubExit: under fail_on main a sub's exit 3 leaves the
// session running; main1's exit 0 then makes it SUCCESS.
func TestFailOnMainSubExit(t *testing.T) {
	f := clusterFixture(t)
	f.cluster("c1", structs.SessionTypeBatch, 3, structs.RunOnAll, structs.FailOnMain, nil)
	f.run("c1", "main1", "sub1", "sub2")
	f.info("a2", "c1-sub2", structs.KernelTerminated, "exited with code 3", intp(3))
	f.info("a2", "c1-sub1", structs.KernelError, "exit status unknown: lost", nil)
	s := f.sess("c1")
	if s.Status != structs.SessionRunning || s.Result != structs.ResultUndefined {
		t.Fatalf("after subs ended: %s/%s %q", s.Status, s.Result, s.StatusInfo)
	}
	if k := f.kernel("c1-main1"); k.Status != structs.KernelRunning {
		t.Fatalf("main1 %s", k.Status)
	}
	f.info("a1", "c1-main1", structs.KernelTerminated, "exited with code 0", intp(0))
	if s := f.sess("c1"); s.Status != structs.SessionTerminated || s.Result != structs.ResultSuccess || s.StatusInfo != "main1 ended: exited with code 0" {
		t.Fatalf("at the end: %s/%s %q", s.Status, s.Result, s.StatusInfo)
	}
}

// TestStartFailureFailsCluster: a kernel that fails to start fails any
// cluster session, whatever fail_on, naming the kernel.
func TestStartFailureFailsCluster(t *testing.T) {
	for _, tc := range []struct {
		typ    structs.SessionType
		failOn string
	}{{structs.SessionTypeBatch, structs.FailOnMain}, {structs.SessionTypeInteractive, structs.FailOnMain}, {structs.SessionTypeBatch, structs.FailOnAny}} {
		t.Run(string(tc.typ)+"/"+tc.failOn, func(t *testing.T) {
			f := clusterFixture(t)
			f.cluster("c1", tc.typ, 3, structs.RunOnAll, tc.failOn, nil)
			f.run("c1", "main1", "sub2")
			f.info("a2", "c1-sub1", structs.KernelPulling, "pulling", nil)
			f.info("a2", "c1-sub1", structs.KernelError, "pull busybox: manifest unknown", nil)
			s := f.sess("c1")
			if !strings.HasPrefix(s.StatusInfo, "sub1 failed to start: pull busybox") {
				t.Fatalf("status line %q", s.StatusInfo)
			}
			if tc.typ == structs.SessionTypeBatch && s.Result != structs.ResultFailure {
				t.Fatalf("result %s", s.Result)
			}
			for _, h := range []string{"main1", "sub2"} {
				if k := f.kernel("c1-" + h); k.Status != structs.KernelTerminating {
					t.Fatalf("%s is %s, want TERMINATING", h, k.Status)
				}
			}
			f.info("a1", "c1-main1", structs.KernelTerminated, "stopped", intp(0))
			f.info("a2", "c1-sub2", structs.KernelTerminated, "stopped", intp(0))
			if s := f.sess("c1"); !s.Status.Terminal() || !strings.HasPrefix(s.StatusInfo, "sub1 failed to start") {
				t.Fatalf("at the end: %s %q", s.Status, s.StatusInfo)
			}
		})
	}
}

// TestDestroyedClusterKeepsReason: a destroyed cluster session's status
// line is the destroy's reason, not the last kernel's report.
func TestDestroyedClusterKeepsReason(t *testing.T) {
	f := clusterFixture(t)
	f.cluster("c1", structs.SessionTypeBatch, 2, structs.RunOnMain, structs.FailOnAny, nil)
	f.run("c1", "main1", "sub1")
	if err := f.s.DestroySession(f.next(), &structs.SessionDestroyRequest{SessionID: "c1", Reason: "destroyed by user", Time: t0}); err != nil {
		t.Fatal(err)
	}
	f.info("a1", "c1-main1", structs.KernelTerminated, "destroyed by user: killed by signal 15", intp(-1))
	f.info("a2", "c1-sub1", structs.KernelTerminated, "destroyed by user: killed by signal 15", intp(-1))
	if s := f.sess("c1"); s.Status != structs.SessionTerminated || s.StatusInfo != "destroyed by user" {
		t.Fatalf("%s %q", s.Status, s.StatusInfo)
	}
}

// TestKernelCpuset: the agent's cpuset report is kept on the kernel.
func TestKernelCpuset(t *testing.T) {
	f := clusterFixture(t)
	f.cluster("c1", structs.SessionTypeBatch, 2, structs.RunOnMain, structs.FailOnAny, nil)
	_, err := f.s.UpdateKernels(f.next(), &structs.KernelUpdateRequest{AgentID: "a2", Updates: []*structs.KernelUpdate{{KernelID: "c1-sub1", Status: structs.KernelRunning, Cpuset: "2-3", Time: t0}}})
	if err != nil {
		t.Fatal(err)
	}
	if k := f.kernel("c1-sub1"); k.Cpuset != "2-3" {
		t.Fatalf("cpuset %q", k.Cpuset)
	}
	_, err = f.s.UpdateKernels(f.next(), &structs.KernelUpdateRequest{AgentID: "a2", Updates: []*structs.KernelUpdate{{KernelID: "c1-sub1", Status: structs.KernelRunning, Cpuset: "4-5", Time: t0}}})
	if err != nil {
		t.Fatal(err)
	}
	if k := f.kernel("c1-sub1"); k.Cpuset != "4-5" {
		t.Fatalf("cpuset %q after a second report", k.Cpuset)
	}
}

// TestClusterLaunchRecomputedOnRetry: a re-queued session's kernels are
// launched afresh where they land (peers, master address), keeping the
// session's keys and dropping the old cpuset.
func TestClusterLaunchRecomputedOnRetry(t *testing.T) {
	f := clusterFixture(t)
	sess := &structs.Session{ID: "r1", Type: structs.SessionTypeBatch, ResourceGroup: structs.DefaultResourceGroup, ClusterMode: structs.ClusterModeMultiNode,
		ClusterSize: 2, RunOn: structs.RunOnMain, FailOn: structs.FailOnAny, StartOrder: structs.StartBarrier, MaxRetries: 1}
	var ks []*structs.Kernel
	for i, h := range []string{"main1", "sub1"} {
		role := "main"
		if i > 0 {
			role = "sub"
		}
		ks = append(ks, &structs.Kernel{ID: "r1-" + h, SessionID: "r1", Role: role, Idx: 1, Hostname: h, Driver: "exec", Command: []string{"true"},
			Resources: slots(1, 64), Launch: &structs.ClusterLaunch{SSHPrivateKey: "PRIVATE r1", AuthorizedKeys: []string{"pub r1"}}})
	}
	if err := f.s.EnqueueSession(f.next(), &structs.SessionEnqueueRequest{Session: sess, Kernels: ks, Time: t0}); err != nil {
		t.Fatal(err)
	}
	place := func(main, sub, agent string) {
		plan := &structs.Plan{Placements: []structs.SessionPlacement{{SessionID: "r1", Placements: []structs.Placement{{KernelID: main, AgentID: agent}, {KernelID: sub, AgentID: agent}}}}}
		if res, err := f.s.ApplyPlan(f.next(), &structs.PlanApplyRequest{Plan: plan, Time: t0}); err != nil || len(res.Applied) != 1 {
			t.Fatalf("place: %+v %v", res, err)
		}
	}
	place("r1-main1", "r1-sub1", "a1")
	_, err := f.s.UpdateKernels(f.next(), &structs.KernelUpdateRequest{AgentID: "a1", Updates: []*structs.KernelUpdate{{KernelID: "r1-sub1", Status: structs.KernelRunning, Cpuset: "3", Time: t0}}})
	if err != nil {
		t.Fatal(err)
	}
	// Its agent lost: the session goes back to PENDING with new kernels.
	if err := f.s.SetAgentStatus(f.next(), &structs.AgentStatusRequest{AgentID: "a1", Status: structs.AgentLost, Info: "gone", Time: t0}); err != nil {
		t.Fatal(err)
	}
	if s := f.sess("r1"); s.Status != structs.SessionPending || s.Retries != 1 {
		t.Fatalf("not re-queued: %s retries %d %q", s.Status, s.Retries, s.StatusInfo)
	}
	if k := f.kernel("r1-sub1.r1"); k.Cpuset != "" || k.Launch == nil || k.Launch.SSHPrivateKey != "PRIVATE r1" {
		t.Fatalf("re-queued sub1: cpuset %q launch %+v", k.Cpuset, k.Launch)
	}
	place("r1-main1.r1", "r1-sub1.r1", "a2")
	l := f.kernel("r1-sub1.r1").Launch
	if l.SSHPrivateKey != "PRIVATE r1" || l.NodeRank != 1 || len(l.Peers) != 2 || l.MasterAddr != "10.9.0.12" || l.Peers[1].Addr != "10.9.0.12" {
		t.Fatalf("launch after the retry %+v", l)
	}
}

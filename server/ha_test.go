package server_test

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/corral-dev/corral/agent"
	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/server"
	"github.com/corral-dev/corral/structs"
)

// startQuorum starts n servers with -bootstrap-expect n that find each
// other through gossip only, and returns them with the admin token.
func startQuorum(t *testing.T, n int) ([]*server.Server, string) {
	t.Helper()
	return startQuorumCfg(t, n, nil)
}

// startQuorumCfg is startQuorum with mod applied to each server's config.
func startQuorumCfg(t *testing.T, n int, mod func(*server.Config)) ([]*server.Server, string) {
	t.Helper()
	var mu sync.Mutex
	token := ""
	srvs := make([]*server.Server, n)
	for i := range n {
		var join []string
		if i > 0 {
			join = []string{srvs[0].SerfAddr()}
		}
		cfg := server.Config{
			OnBootstrapToken: func(tok string) { mu.Lock(); token = tok; mu.Unlock() },
			NodeName:         fmt.Sprintf("server%d", i), DataDir: t.TempDir(), HTTPAddr: "127.0.0.1:0", RPCAddr: "127.0.0.1:0",
			SerfAddr: "127.0.0.1:0", Join: join, BootstrapExpect: n, Logger: testLogger(t), LogOutput: io.Discard, FastGossip: true,
		}
		if i > 0 && srvs[0].AutoTLS() {
			// The others join the first one's cluster with its token.
			cfg.ServerJoinToken, cfg.EnrollAddr = srvs[0].ServerJoinToken(), srvs[0].RPCAddr()
		}
		if mod != nil {
			mod(&cfg)
		}
		srv, err := server.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		go func() { _ = srv.Serve() }()
		servers.Store(srv.SerfAddr(), srv)
		t.Cleanup(func() { servers.Delete(srv.SerfAddr()) })
		srvs[i] = srv
		t.Cleanup(srv.Shutdown)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, s := range srvs {
		if err := s.WaitForLeader(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for ctx.Err() == nil {
		mu.Lock()
		tok := token
		mu.Unlock()
		if tok != "" {
			return srvs, tok
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("no admin token from the new cluster")
	return nil, ""
}

func apiClient(t *testing.T, addr, token string) *api.Client {
	c, err := api.NewClient("http://" + addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetToken(token)
	return c
}

// TestQuorumFailoverAndAgentLoss: three servers bootstrap one raft quorum
// from gossip; a follower serves the API by forwarding to the leader and
// agents may register with any server; when the leader goes, a new one
// takes over with every acknowledged session; an agent that stops is
// DISCONNECTED (its kernels untouched), then LOST once the grace period
// (short here) runs out: its kernels end with the reason, and a batch
// session with -max-retries runs again on another agent.
func TestQuorumFailoverAndAgentLoss(t *testing.T) {
	srvs, token := startQuorumCfg(t, 3, func(c *server.Config) { c.AgentLostAfter = 3 * time.Second })
	leaders := 0
	var leader int
	for i, s := range srvs {
		if s.IsLeader() {
			leaders++
			leader = i
		}
	}
	if leaders != 1 {
		t.Fatalf("%d leaders", leaders)
	}
	follower := (leader + 1) % 3
	other := (leader + 2) % 3
	ctx := context.Background()
	fc := apiClient(t, srvs[follower].HTTPAddr(), token)

	var agentList []string
	byID := map[string]*agent.Agent{}
	dirs := map[string]string{}
	for _, s := range []int{follower, other} {
		dir := t.TempDir()
		a := startAgent(t, dir, srvs[s].SerfAddr(), structs.Slots{structs.SlotCPU: structs.Whole(2)})
		agentList = append(agentList, a.ID())
		byID[a.ID()], dirs[a.ID()] = a, dir
		t.Cleanup(func() { a.StopKernels(5 * time.Second); a.Shutdown() })
	}
	c := &cluster{client: fc}
	for _, id := range agentList {
		c.waitAgentAlive(t, id)
	}

	// Writes through a follower are forwarded to the leader.
	d := create(t, c, &api.CreateSessionRequest{Name: "before", Command: []string{"true"}, Resources: small})
	if d = c.waitFor(t, d.Session.ID, terminal); d.Session.Result != structs.ResultSuccess {
		t.Fatalf("session through a follower: %s/%s %q", d.Session.Status, d.Session.Result, d.Session.StatusInfo)
	}

	// The leader goes; another takes over within seconds and has it all.
	start := time.Now()
	srvs[leader].Shutdown()
	cc := apiClient(t, srvs[other].HTTPAddr(), token)
	var newLeader int = -1
	for time.Since(start) < 15*time.Second && newLeader < 0 {
		for _, i := range []int{follower, other} {
			if srvs[i].IsLeader() {
				newLeader = i
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	if newLeader < 0 {
		t.Fatal("no new leader within 15 s")
	}
	t.Logf("new leader after %v", time.Since(start).Round(time.Millisecond))
	c.client = cc
	got, err := cc.GetSession(ctx, "before")
	if err != nil || got.Session.Result != structs.ResultSuccess {
		t.Fatalf("session acknowledged before the failover: %+v %v", got, err)
	}
	for _, id := range agentList {
		c.waitAgentAlive(t, id)
	}
	d = create(t, c, &api.CreateSessionRequest{Command: []string{"true"}, Resources: small})
	if d = c.waitFor(t, d.Session.ID, terminal); d.Session.Result != structs.ResultSuccess {
		t.Fatalf("session after the failover: %s/%s %q", d.Session.Status, d.Session.Result, d.Session.StatusInfo)
	}

	// An agent goes: with everything packed on one agent, its interactive
	// kernel ends in ERROR with the reason and the batch session with a
	// retry runs again on the other agent.
	if _, err := cc.CreateGroup(ctx, &structs.ResourceGroup{Name: "default", SessionSelector: "fifo", AgentSelector: "concentrated"}); err != nil {
		t.Fatal(err)
	}
	one := structs.Slots{structs.SlotCPU: structs.Whole(1), structs.SlotMem: structs.Whole(32 << 20)}
	i := create(t, c, &api.CreateSessionRequest{Type: "interactive", Command: []string{"sleep", "4"}, Resources: one})
	di := c.waitFor(t, i.Session.ID, status(structs.SessionRunning))
	b := create(t, c, &api.CreateSessionRequest{Command: []string{"sleep", "2"}, Resources: one, MaxRetries: 1})
	db := c.waitFor(t, b.Session.ID, status(structs.SessionRunning))
	lost := di.Kernels[0].AgentID
	if db.Kernels[0].AgentID != lost {
		t.Fatalf("concentrated put the sessions on %s and %s", lost, db.Kernels[0].AgentID)
	}
	byID[lost].Shutdown()
	// Stopped, not gone: DISCONNECTED first, with both signals named, and
	// its sessions untouched while the grace period runs.
	ag := c.waitAgentStatus(t, lost, structs.AgentDisconnected, 15*time.Second)
	if !strings.Contains(ag.StatusInfo, "gossip: member failed") || !strings.Contains(ag.StatusInfo, "no RPC heartbeat") {
		t.Fatalf("disconnected agent's reason: %q", ag.StatusInfo)
	}
	if got, err := cc.GetSession(ctx, i.Session.ID); err != nil || got.Session.Status != structs.SessionRunning {
		t.Fatalf("a session on a DISCONNECTED agent must keep running: %+v %v", got.Session, err)
	}
	di = c.waitFor(t, i.Session.ID, terminal)
	if di.Session.Status != structs.SessionError || !strings.Contains(di.Kernels[0].StatusInfo, "agent lost") ||
		!strings.Contains(di.Kernels[0].StatusInfo, "past the grace period") {
		t.Fatalf("interactive session on the lost agent: %s, kernel %s %q", di.Session.Status, di.Kernels[0].Status, di.Kernels[0].StatusInfo)
	}
	db = c.waitFor(t, b.Session.ID, terminal)
	if db.Session.Result != structs.ResultSuccess || db.Session.Retries != 1 || db.Kernels[0].AgentID == lost {
		t.Fatalf("batch session with a retry: %s/%s retries %d on %s (%q)", db.Session.Status, db.Session.Result, db.Session.Retries, db.Kernels[0].AgentID, db.Session.StatusInfo)
	}
	requeued := false
	for _, h := range db.Session.History {
		requeued = requeued || (h.Status == string(structs.SessionPending) && strings.Contains(h.Info, "re-queued (retry 1 of 1): agent lost"))
	}
	if !requeued {
		t.Fatalf("no re-queue in the history: %+v", db.Session.History)
	}
	if a, err := cc.GetAgent(ctx, lost); err != nil || len(a.Occupied) != 0 {
		t.Fatalf("the lost agent still holds %v (%v)", a.Occupied, err)
	}
	// The lost agent comes back on its data dir: it finds its kernels of
	// the last run (ended meanwhile, or stopped since the server gave up on
	// them) and cleans up after them (processes, cgroups).
	back := startAgent(t, dirs[lost], srvs[newLeader].SerfAddr(), structs.Slots{structs.SlotCPU: structs.Whole(2)})
	c.waitAgentAlive(t, back.ID())
	back.StopKernels(5 * time.Second)
	back.Shutdown()
}

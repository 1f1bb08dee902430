package server

import (
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/raft"
	"github.com/hashicorp/serf/serf"

	"github.com/corral-dev/corral/gossip"
	"github.com/corral-dev/corral/structs"
	buildversion "github.com/corral-dev/corral/version"
)

func (s *Server) setupSerf() error {
	s.events = make(chan serf.Event, 256)
	tags := map[string]string{gossip.TagRole: "server", gossip.TagID: s.id, gossip.TagRPC: s.RPCAddr(), gossip.TagHTTP: s.cfg.HTTPAddr,
		gossip.TagExpect: strconv.Itoa(s.cfg.BootstrapExpect), gossip.TagVersion: buildversion.Version}
	conf, err := gossip.NewConfig(s.cfg.NodeName, s.cfg.SerfAddr, tags, s.cfg.FastGossip, s.events)
	if err != nil {
		return err
	}
	gossip.SetLogger(conf, s.cfg.Logger, s.cfg.LogOutput)
	conf.SnapshotPath = ""
	if err := gossip.Encrypt(conf, s.cfg.GossipKey); err != nil {
		return err
	}
	sf, err := serf.Create(conf)
	if err != nil {
		return fmt.Errorf("gossip on %s: %w", s.cfg.SerfAddr, err)
	}
	s.serf = sf
	if len(s.cfg.Join) > 0 {
		s.wg.Add(1)
		go func() { defer s.wg.Done(); s.joinLoop() }()
	}
	return nil
}

// joinLoop joins the gossip pool through -join, retrying with backoff until
// some other member is seen: servers of a new cluster start together, and
// the one they join may not listen yet.
func (s *Server) joinLoop() {
	delay := 100 * time.Millisecond
	for {
		n, err := s.serf.Join(s.cfg.Join, true)
		if err == nil && n > 0 {
			return
		}
		if s.serf.NumNodes() > 1 {
			return // someone else found us meanwhile
		}
		s.logger.Warn("gossip join failed, retrying", "addrs", s.cfg.Join, "error", err, "retry_in", delay)
		select {
		case <-s.ctx.Done():
			return
		case <-time.After(delay):
		}
		if delay < 5*time.Second {
			delay *= 2
		}
	}
}

// handleSerfEvents turns membership changes of agents into raft updates
// while this server leads; a new leader reconciles the full member list.
func (s *Server) handleSerfEvents() {
	for {
		select {
		case <-s.ctx.Done():
			return
		case ev := <-s.events:
			me, ok := ev.(serf.MemberEvent)
			if !ok || !s.IsLeader() {
				continue
			}
			for _, m := range me.Members {
				s.reconcileMember(m)
			}
		}
	}
}

func (s *Server) reconcileMembers() {
	for _, m := range s.serf.Members() {
		s.reconcileMember(m)
	}
}

// reconcileMember records one agent member's gossip state in raft, and
// keeps raft's voters in step with the server members.
func (s *Server) reconcileMember(m serf.Member) {
	if m.Tags[gossip.TagRole] == "server" {
		s.reconcileServer(m)
		return
	}
	if m.Tags[gossip.TagRole] != "agent" || m.Tags[gossip.TagID] == "" {
		return
	}
	id := m.Tags[gossip.TagID]
	now := time.Now().UTC()
	var status structs.AgentStatus
	var info string
	switch m.Status {
	case serf.StatusAlive:
		status, info = structs.AgentAlive, "gossip: member alive"
	case serf.StatusLeft:
		// Only an explicit leave gets here: a stopped agent does not
		// leave the pool, it fails, and comes back to its kernels.
		status, info = structs.AgentTerminated, "gossip: member left the cluster"
	default:
		// A failed member alone kills nothing: a busy node is not a dead
		// one. The liveness loop weighs it with the RPC heartbeats.
		if m.Status == serf.StatusFailed {
			s.logger.Info("gossip failed an agent; its RPC heartbeats decide whether it is disconnected", "agent_id", id, "name", m.Name)
		}
		s.heartbeats.check()
		return
	}
	cur, err := s.state.Snapshot().Agent(nil, id)
	if err != nil {
		if status != structs.AgentAlive || s.cfg.Security.Enabled() {
			// In a secured cluster gossip alone proves nothing: the agent
			// appears when it registers with its certificate and token.
			return
		}
		// First sight through gossip: record what the tags say; the agent's
		// registration RPC fills in the full inventory.
		a := &structs.Agent{
			ID: id, Name: m.Name, ResourceGroup: m.Tags[gossip.TagGroup], Status: status, StatusInfo: info,
			RPCAddr: m.Tags[gossip.TagRPC], SerfAddr: net.JoinHostPort(m.Addr.String(), strconv.Itoa(int(m.Port))),
			Capacity: gossip.ParseSlots(m.Tags[gossip.TagSlots]), Version: m.Tags[gossip.TagVersion],
		}
		if d := m.Tags[gossip.TagDrivers]; d != "" {
			a.Drivers = strings.Split(d, ",")
		}
		if _, _, err := s.apply(structs.AgentUpsertRequestType, &structs.AgentUpsertRequest{Agent: a, Time: now}); err != nil {
			s.logger.Warn("recording agent from gossip failed", "agent_id", id, "error", err)
		}
		return
	}
	if cur.Status == status {
		return
	}
	s.logger.Info("agent status changed", "agent_id", id, "name", m.Name, "from", cur.Status, "to", status, "reason", info)
	if _, _, err := s.apply(structs.AgentStatusRequestType, &structs.AgentStatusRequest{AgentID: id, Status: status, Info: info, Time: now}); err != nil {
		s.logger.Warn("recording agent status failed", "agent_id", id, "error", err)
	}
}

// reconcileServer, on the leader, adds an alive server member that raft
// does not know as a voter (a server started after the first quorum, or a
// replaced one) and removes one that left the pool for good. A failed
// server stays a voter: it may come back, and removing it would shrink the
// quorum behind the operator's back.
func (s *Server) reconcileServer(m serf.Member) {
	id, addr := m.Tags[gossip.TagID], m.Tags[gossip.TagRPC]
	if id == "" || addr == "" || id == s.id {
		return
	}
	fut := s.raft.GetConfiguration()
	if err := fut.Error(); err != nil {
		return
	}
	known := false
	for _, srv := range fut.Configuration().Servers {
		known = known || string(srv.ID) == id
	}
	switch {
	case m.Status == serf.StatusAlive && !known:
		s.logger.Info("adding server to the raft quorum", "server", m.Name, "id", id, "addr", addr)
		if err := s.raft.AddVoter(raft.ServerID(id), raft.ServerAddress(addr), 0, 10*time.Second).Error(); err != nil {
			s.logger.Warn("adding raft voter failed", "server", m.Name, "error", err)
		}
	case m.Status == serf.StatusLeft && known:
		s.logger.Info("removing server that left from the raft quorum", "server", m.Name, "id", id)
		if err := s.raft.RemoveServer(raft.ServerID(id), 0, 10*time.Second).Error(); err != nil {
			s.logger.Warn("removing raft voter failed", "server", m.Name, "error", err)
		}
	}
}

// bootstrapWhenExpected waits until -bootstrap-expect servers (this one
// included) announce the same expectation in gossip, then bootstraps raft
// with all of them as voters. Every one of them does the same with the same
// list, which raft accepts; a server that finds a leader first joins it.
func (s *Server) bootstrapWhenExpected() {
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		if addr, _ := s.raft.LeaderWithID(); addr != "" {
			return
		}
		want := strconv.Itoa(s.cfg.BootstrapExpect)
		var servers []raft.Server
		for _, m := range s.serf.Members() {
			if m.Status != serf.StatusAlive || m.Tags[gossip.TagRole] != "server" || m.Tags[gossip.TagID] == "" {
				continue
			}
			if m.Tags[gossip.TagExpect] != want {
				s.logger.Warn("server in the pool expects a different first quorum", "server", m.Name, "expects", m.Tags[gossip.TagExpect], "we_expect", want)
				continue
			}
			servers = append(servers, raft.Server{ID: raft.ServerID(m.Tags[gossip.TagID]), Address: raft.ServerAddress(m.Tags[gossip.TagRPC])})
		}
		if len(servers) < s.cfg.BootstrapExpect {
			continue
		}
		slices.SortFunc(servers, func(a, b raft.Server) int { return strings.Compare(string(a.ID), string(b.ID)) })
		err := s.raft.BootstrapCluster(raft.Configuration{Servers: servers}).Error()
		if err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
			s.logger.Error("raft bootstrap failed", "error", err)
			continue
		}
		s.logger.Info("bootstrapped a new cluster", "voters", len(servers))
		return
	}
}

// rejoinIfLost pulls an agent that the leader holds LOST back into the
// gossip pool as soon as it shows it is reachable again (it talks RPC):
// after a partition heals, the agent may still take the servers for alive
// and never learn that the pool declared it dead until its next periodic
// push-pull, tens of seconds away. A join from the server's side
// exchanges state at once; the agent refutes its death and the usual
// member-alive event marks it ALIVE. At most one try per agent every few
// seconds.
func (s *Server) rejoinIfLost(agentID string) {
	if s.ctx.Err() != nil {
		return
	}
	a, err := s.state.Snapshot().Agent(nil, agentID)
	if err != nil || a.Status != structs.AgentLost {
		return
	}
	s.rejoin(a)
}

// rejoin joins an agent's gossip address from this server's side (at most
// once every few seconds per agent): used for agents that talk RPC while
// gossip holds them failed or the state holds them lost.
func (s *Server) rejoin(a *structs.Agent) {
	agentID := a.ID
	if a.SerfAddr == "" || s.ctx.Err() != nil {
		return
	}
	s.rejoinMu.Lock()
	if s.rejoinAt == nil {
		s.rejoinAt = map[string]time.Time{}
	}
	if time.Since(s.rejoinAt[agentID]) < 3*time.Second {
		s.rejoinMu.Unlock()
		return
	}
	s.rejoinAt[agentID] = time.Now()
	s.rejoinMu.Unlock()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if _, err := s.serf.Join([]string{a.SerfAddr}, true); err != nil {
			s.logger.Warn("rejoining a lost agent that talks RPC failed", "agent_id", agentID, "serf", a.SerfAddr, "error", err)
			return
		}
		s.logger.Info("an agent gossip had failed or lost reached us over RPC: pulled it back into gossip", "agent_id", agentID, "serf", a.SerfAddr)
	}()
}

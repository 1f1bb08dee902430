package server

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/serf/serf"

	"github.com/corral-dev/corral/gossip"
	"github.com/corral-dev/corral/structs"
)

func (s *Server) setupSerf() error {
	s.events = make(chan serf.Event, 256)
	tags := map[string]string{gossip.TagRole: "server", gossip.TagID: s.id, gossip.TagRPC: s.RPCAddr(), gossip.TagHTTP: s.cfg.HTTPAddr}
	conf, err := gossip.NewConfig(s.cfg.NodeName, s.cfg.SerfAddr, tags, s.cfg.FastGossip, s.events)
	if err != nil {
		return err
	}
	conf.LogOutput = s.cfg.LogOutput
	conf.MemberlistConfig.LogOutput = s.cfg.LogOutput
	conf.SnapshotPath = ""
	sf, err := serf.Create(conf)
	if err != nil {
		return fmt.Errorf("gossip on %s: %w", s.cfg.SerfAddr, err)
	}
	s.serf = sf
	if len(s.cfg.Join) > 0 {
		if _, err := sf.Join(s.cfg.Join, true); err != nil {
			s.logger.Warn("gossip join failed", "addrs", s.cfg.Join, "error", err)
		}
	}
	return nil
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

// reconcileMember records one agent member's gossip state in raft.
func (s *Server) reconcileMember(m serf.Member) {
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
	case serf.StatusFailed:
		status, info = structs.AgentLost, "gossip: member failed (unreachable)"
	case serf.StatusLeft:
		status, info = structs.AgentTerminated, "gossip: member left the cluster"
	default:
		return
	}
	cur, err := s.state.Snapshot().Agent(nil, id)
	if err != nil {
		if status != structs.AgentAlive {
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

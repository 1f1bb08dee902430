package server

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/serf/serf"

	"github.com/corral-dev/corral/gossip"
	"github.com/corral-dev/corral/structs"
)

// Liveness defaults. An agent is DISCONNECTED only when gossip marks it
// failed and no RPC heartbeat reached the leader for HeartbeatTTL; it is
// LOST, and its kernels given up, only after AgentLostAfter more.
const (
	DefaultAgentLostAfter = 5 * time.Minute
	DefaultHeartbeatTTL   = 10 * time.Second
	// FastHeartbeatTTL is the TTL under -fast-gossip (tests, dev).
	FastHeartbeatTTL = 3 * time.Second
)

// heartbeats is the leader's memory of when each agent last spoke RPC
// (register, status reports, heartbeats). It is not replicated: a new
// leader gives every agent a full TTL from the moment it took over.
type heartbeats struct {
	mu    sync.Mutex
	last  map[string]time.Time
	since time.Time // start of this leadership
	kick  chan struct{}
}

func newHeartbeats() *heartbeats {
	return &heartbeats{last: map[string]time.Time{}, kick: make(chan struct{}, 1)}
}

// seen records an RPC from the agent now.
func (h *heartbeats) seen(agentID string) {
	h.mu.Lock()
	h.last[agentID] = time.Now()
	h.mu.Unlock()
}

// reset starts a leadership: every agent's heartbeat counts from now.
func (h *heartbeats) reset() {
	h.mu.Lock()
	h.last = map[string]time.Time{}
	h.since = time.Now()
	h.mu.Unlock()
}

// age is how long the agent has not been heard from over RPC in this
// leadership.
func (h *heartbeats) age(agentID string, now time.Time) time.Duration {
	h.mu.Lock()
	defer h.mu.Unlock()
	t := h.last[agentID]
	if t.Before(h.since) {
		t = h.since
	}
	return now.Sub(t)
}

// check asks the liveness loop for a pass now (a gossip event came).
func (h *heartbeats) check() {
	select {
	case h.kick <- struct{}{}:
	default:
	}
}

// SetLocalAgent names the agent embedded in this server's process (corral
// dev): it is never DISCONNECTED or LOST while the process lives.
func (s *Server) SetLocalAgent(id string) { s.localAgent.Store(id) }

// agentLostAfter is the cluster's grace period for DISCONNECTED agents.
func (s *Server) agentLostAfter() time.Duration {
	if s.cfg.AgentLostAfter > 0 {
		return s.cfg.AgentLostAfter
	}
	return DefaultAgentLostAfter
}

// heartbeatTTL is how long an agent may stay silent over RPC.
func (s *Server) heartbeatTTL() time.Duration {
	switch {
	case s.cfg.HeartbeatTTL > 0:
		return s.cfg.HeartbeatTTL
	case s.cfg.FastGossip:
		return FastHeartbeatTTL
	}
	return DefaultHeartbeatTTL
}

// watchLiveness runs on the leader: it combines gossip and RPC heartbeats
// into each agent's liveness and applies the changes through raft.
func (s *Server) watchLiveness(ctx context.Context) {
	s.heartbeats.reset()
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-s.heartbeats.kick:
		}
		s.checkLiveness(time.Now())
	}
}

// gossipStates maps agent IDs to their serf member status.
func (s *Server) gossipStates() map[string]serf.MemberStatus {
	out := map[string]serf.MemberStatus{}
	for _, m := range s.serf.Members() {
		if m.Tags[gossip.TagRole] == "agent" && m.Tags[gossip.TagID] != "" {
			out[m.Tags[gossip.TagID]] = m.Status
		}
	}
	return out
}

// checkLiveness is one pass over the agents that are ALIVE or DISCONNECTED.
func (s *Server) checkLiveness(now time.Time) {
	if !s.IsLeader() {
		return
	}
	agents, err := s.state.Snapshot().Agents(nil)
	if err != nil {
		s.logger.Warn("liveness: listing agents failed", "error", err)
		return
	}
	members := s.gossipStates()
	ttl, grace := s.heartbeatTTL(), s.agentLostAfter()
	for _, a := range agents {
		if !a.Status.Reachable() {
			continue
		}
		if local, _ := s.localAgent.Load().(string); a.ID == local {
			// The embedded agent of `corral dev` lives as long as this
			// process: a busy machine never makes it lost.
			if a.Status != structs.AgentAlive {
				s.setAgentStatus(a, structs.AgentAlive, "embedded agent: runs in the server's process", now)
			}
			continue
		}
		gs, member := members[a.ID]
		gossipOK := member && gs == serf.StatusAlive
		rpcAge := s.heartbeats.age(a.ID, now)
		rpcOK := rpcAge <= ttl
		if rpcOK && member && gs == serf.StatusFailed {
			s.rejoin(a) // it talks RPC: tell it gossip thinks it dead
		}
		if gossipOK || rpcOK {
			if a.Status == structs.AgentDisconnected {
				signal := "gossip: member alive"
				if !gossipOK {
					signal = "RPC heartbeats"
				}
				s.setAgentStatus(a, structs.AgentAlive, fmt.Sprintf("reconnected after %s (%s)", now.Sub(a.DisconnectedAt).Round(time.Millisecond), signal), now)
			}
			continue
		}
		gossipWhy := "gossip: not a member"
		if member {
			gossipWhy = "gossip: member " + gs.String()
		}
		why := fmt.Sprintf("%s; no RPC heartbeat for %s (ttl %s)", gossipWhy, rpcAge.Round(time.Millisecond), ttl)
		if a.Status == structs.AgentAlive {
			s.setAgentStatus(a, structs.AgentDisconnected, why, now)
			continue
		}
		away := now.Sub(a.DisconnectedAt)
		if away >= grace {
			s.setAgentStatus(a, structs.AgentLost, fmt.Sprintf("disconnected for %s, past the grace period of %s (-agent-lost-after): %s",
				away.Round(time.Second), grace, why), now)
			continue
		}
		s.loseImpatientSessions(a, away, why, now)
	}
}

// loseImpatientSessions gives up the kernels, on a DISCONNECTED agent, of
// sessions whose own -lost-after is shorter than the time it has been away.
func (s *Server) loseImpatientSessions(a *structs.Agent, away time.Duration, why string, now time.Time) {
	sn := s.state.Snapshot()
	kernels, err := sn.KernelsByAgent(nil, a.ID)
	if err != nil {
		return
	}
	var ids []string
	seen := map[string]bool{}
	for _, k := range kernels {
		if !k.HoldsSlots() || seen[k.SessionID] {
			continue
		}
		seen[k.SessionID] = true
		sess, err := sn.Session(nil, k.SessionID)
		if err != nil || sess.LostAfter <= 0 || away < sess.LostAfter {
			continue
		}
		ids = append(ids, sess.ID)
	}
	if len(ids) == 0 {
		return
	}
	info := fmt.Sprintf("disconnected for %s, past the session's -lost-after: %s", away.Round(time.Second), why)
	s.logger.Warn("giving up kernels of sessions with a short grace period on a disconnected agent", "agent_id", a.ID, "sessions", len(ids), "away", away)
	if _, _, err := s.apply(structs.KernelsLostRequestType, &structs.KernelsLostRequest{AgentID: a.ID, SessionIDs: ids, Info: info, Time: now.UTC()}); err != nil {
		s.logger.Warn("recording lost kernels failed", "agent_id", a.ID, "error", err)
	}
}

// setAgentStatus records an agent's new liveness through raft.
func (s *Server) setAgentStatus(a *structs.Agent, to structs.AgentStatus, info string, now time.Time) {
	s.logger.Info("agent status changed", "agent_id", a.ID, "name", a.Name, "from", a.Status, "to", to, "reason", info)
	if _, _, err := s.apply(structs.AgentStatusRequestType, &structs.AgentStatusRequest{AgentID: a.ID, Status: to, Info: info, Time: now.UTC()}); err != nil {
		s.logger.Warn("recording agent status failed", "agent_id", a.ID, "error", err)
	}
}

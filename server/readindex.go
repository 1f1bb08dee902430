package server

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/corral-dev/corral/rpc"
)

// readIndexWait bounds how long a server waits to catch up with the
// leader's read index before it tells the agent to try another server.
const readIndexWait = 10 * time.Second

// ReadIndex, called by a follower on the leader, confirms with a quorum
// that this server still leads and returns the index the follower must
// have applied before it hands an agent a full kernel list.
func (e *agentEndpoint) ReadIndex(ctx context.Context, req *rpc.ReadIndexRequest) (*rpc.ReadIndexResponse, error) {
	if !e.srv.IsLeader() {
		return nil, status.Error(codes.Unavailable, fmt.Sprintf("read index: %v", ErrNotLeader))
	}
	idx, commit, err := e.srv.leaderReadIndex()
	if err != nil {
		return nil, grpcError(err)
	}
	return &rpc.ReadIndexResponse{Index: idx, CommitIndex: commit, Leader: e.srv.cfg.NodeName}, nil
}

// leaderReadIndex is the read index on the leader: its last log index
// (at or past every entry committed so far, by it or by any earlier
// leader), taken before a round of heartbeats confirms that no newer
// leader has been elected meanwhile.
func (s *Server) leaderReadIndex() (index, commit uint64, err error) {
	index, commit = s.raft.LastIndex(), s.raft.CommitIndex()
	if err := s.raft.VerifyLeader().Error(); err != nil {
		if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) {
			return 0, 0, fmt.Errorf("confirming leadership: %v: %w", err, ErrNotLeader)
		}
		return 0, 0, fmt.Errorf("confirming leadership: %w", err)
	}
	return index, commit, nil
}

// readIndex asks the current leader (or, on the leader, raft) for the
// index this server must apply before serving a consistent read. A server
// that has not heard from a leader since it started has none to ask.
func (s *Server) readIndex(ctx context.Context) (uint64, error) {
	if s.IsLeader() {
		idx, _, err := s.leaderReadIndex()
		return idx, err
	}
	if _, id := s.raft.LeaderWithID(); id == "" {
		return 0, fmt.Errorf("this server has not heard from a raft leader since it started, so it cannot tell whether its state is current: %w", ErrNotLeader)
	}
	cl, err := s.leaderClient()
	if err != nil {
		return 0, err
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := cl.ReadIndex(cctx, &rpc.ReadIndexRequest{Server: s.cfg.NodeName})
	if err != nil {
		return 0, fmt.Errorf("asking the leader for its commit index: %v: %w", err, ErrNotLeader)
	}
	return resp.Index, nil
}

// waitCaughtUpWithLeader makes this server wait until its state holds
// every entry the leader had when it was called (a read index), so that
// an agent's full kernel list from it is never older than what the agent
// may already have run. A restarted follower's own commit index is no
// guide: until the leader has sent it the rest of the log it may be far
// behind.
func (s *Server) waitCaughtUpWithLeader(ctx context.Context) error {
	target, err := s.readIndex(ctx)
	if err != nil {
		return err
	}
	deadline := time.After(readIndexWait)
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	// raft's applied index counts entries handed to the FSM; the FSM's
	// own counts commands it has applied (noops and configuration
	// entries never reach it), so wait for both.
	cmd := uint64(0)
	found := false
	for {
		if applied := s.raft.AppliedIndex(); applied >= target {
			if !found {
				if cmd, err = lastCommandAtOrBelow(s.logs, target); err != nil {
					return err
				}
				found = true
			}
			if s.fsm.applied.Load() >= cmd {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline:
			return fmt.Errorf("this server is behind the leader (applied %d of %d): %w", s.raft.AppliedIndex(), target, ErrNotReady)
		case <-t.C:
		}
	}
}

// lastCommandAtOrBelow finds the newest command entry at or below index
// in the log store; 0 when the log holds none there (a snapshot, restored
// before raft reports it applied, holds the older ones).
func lastCommandAtOrBelow(logs raft.LogStore, index uint64) (uint64, error) {
	first, err := logs.FirstIndex()
	if err != nil {
		return 0, err
	}
	for i := index; i >= first && i > 0; i-- {
		var l raft.Log
		if err := logs.GetLog(i, &l); err != nil {
			if errors.Is(err, raft.ErrLogNotFound) {
				return 0, nil // compacted into a snapshot meanwhile
			}
			return 0, fmt.Errorf("reading raft log %d: %w", i, err)
		}
		if l.Type == raft.LogCommand {
			return i, nil
		}
	}
	return 0, nil
}

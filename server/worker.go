package server

import (
	"context"
	"time"

	"github.com/hashicorp/go-memdb"

	"github.com/corral-dev/corral/server/scheduler"
	"github.com/corral-dev/corral/structs"
)

// runScheduler is the leader's scheduling worker: whenever pending sessions
// or agents change it takes a snapshot, asks the pure scheduler for a plan
// and submits the plan through raft, where the FSM re-checks it.
func (s *Server) runScheduler(ctx context.Context) {
	backoff := 50 * time.Millisecond
	for {
		if ctx.Err() != nil {
			return
		}
		abandon := s.state.AbandonCh()
		ws := memdb.NewWatchSet()
		progressed, err := s.schedulePass(ws)
		if err != nil {
			s.logger.Warn("scheduling pass failed", "error", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			if backoff < 2*time.Second {
				backoff *= 2
			}
			continue
		}
		backoff = 50 * time.Millisecond
		if progressed {
			continue
		}
		ws.Add(abandon)
		_ = ws.WatchCtx(ctx)
	}
}

// schedulePass runs one pass; it reports whether it changed the state (so
// the caller runs another pass at once rather than waiting).
func (s *Server) schedulePass(ws memdb.WatchSet) (bool, error) {
	snap := s.state.Snapshot()
	pending, err := snap.Sessions(ws, string(structs.SessionPending))
	if err != nil {
		return false, err
	}
	agents, err := snap.Agents(ws)
	if err != nil {
		return false, err
	}
	if len(pending) == 0 {
		return false, nil
	}
	in := &scheduler.Input{Agents: agents, Index: snap.Index("")}
	byID := make(map[string]*structs.Session, len(pending))
	for _, sess := range pending {
		ks, err := snap.KernelsBySession(nil, sess.ID)
		if err != nil {
			return false, err
		}
		in.Pending = append(in.Pending, &scheduler.PendingSession{Session: sess, Kernels: ks})
		byID[sess.ID] = sess
	}
	plan := scheduler.Schedule(in)
	// Record a reason only when it changed, so an idle queue writes nothing.
	for id, reason := range plan.Unplaced {
		if sess := byID[id]; sess != nil && sess.StatusInfo == reason {
			delete(plan.Unplaced, id)
		}
	}
	if len(plan.Placements) == 0 && len(plan.Unplaced) == 0 {
		return false, nil
	}
	resp, _, err := s.apply(structs.PlanApplyRequestType, &structs.PlanApplyRequest{Plan: plan, Time: time.Now().UTC()})
	if err != nil {
		return false, err
	}
	if res, ok := resp.(*structs.PlanResult); ok {
		for id, why := range res.Rejected {
			s.logger.Info("plan placement rejected by the FSM", "session_id", id, "reason", why)
		}
		return len(res.Applied) > 0 || len(plan.Unplaced) > 0, nil
	}
	return true, nil
}

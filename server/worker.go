package server

import (
	"context"
	"time"

	"github.com/hashicorp/go-memdb"

	"github.com/corral-dev/corral/server/scheduler"
	"github.com/corral-dev/corral/structs"
)

// schedWorker is the leader's scheduling loop state: what survives from one
// pass to the next lives here, in memory, and is rebuilt by a new leader.
type schedWorker struct {
	s *Server
	// roundRobin holds each group's round-robin cursor.
	roundRobin map[string]string
	// ownIndex is the state index of the worker's last plan apply: a pass
	// that sees nothing newer was woken by its own write and counts no
	// attempts, so fifo's num_retries_to_skip counts real retries only.
	ownIndex uint64
}

// runScheduler is the leader's scheduling worker: whenever pending sessions,
// agents or the scheduling configuration change (or a reserved session's
// start time comes) it takes a snapshot, asks the pure scheduler for a plan
// and submits the plan through raft, where the FSM re-checks it.
func (s *Server) runScheduler(ctx context.Context) {
	wk := &schedWorker{s: s, roundRobin: map[string]string{}}
	backoff := 50 * time.Millisecond
	for {
		if ctx.Err() != nil {
			return
		}
		abandon := s.state.AbandonCh()
		ws := memdb.NewWatchSet()
		progressed, wake, err := wk.pass(ws)
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
		wctx := ctx
		if !wake.IsZero() {
			var cancel context.CancelFunc
			wctx, cancel = context.WithDeadline(ctx, wake)
			_ = ws.WatchCtx(wctx)
			cancel()
			continue
		}
		_ = ws.WatchCtx(wctx)
	}
}

// pass runs one scheduling pass. It reports whether it changed the state
// (so the caller runs another pass at once rather than waiting) and when a
// reserved session is due (zero: none).
func (wk *schedWorker) pass(ws memdb.WatchSet) (bool, time.Time, error) {
	s := wk.s
	start := time.Now()
	snap := s.state.Snapshot()
	in, byID, wake, err := snap.SchedulerInput(ws, time.Now().UTC())
	if err != nil || len(in.Pending) == 0 {
		return false, wake, err
	}
	// Passes with sessions to place only: an idle pass is no measure.
	defer func() { s.metrics.observePass(time.Since(start)) }()
	in.RoundRobin = wk.roundRobin
	res := scheduler.Plan(in)
	wk.roundRobin = res.RoundRobin
	plan := res.Plan
	// Record a reason only when it changed, and attempts only when the
	// pass saw a change it did not make itself, so an idle queue writes
	// nothing and the worker's own writes do not count as retries.
	if in.Index == wk.ownIndex {
		res.Attempts = map[string]int{}
	}
	for id, n := range res.Attempts {
		if sess := byID[id]; sess == nil || sess.ScheduleAttempts == n {
			delete(res.Attempts, id)
		}
	}
	for id, reason := range plan.Unplaced {
		if sess := byID[id]; sess != nil && sess.StatusInfo == reason {
			if _, counted := res.Attempts[id]; !counted {
				delete(plan.Unplaced, id)
			}
		}
	}
	plan.Attempts, plan.Cancel = res.Attempts, res.Cancel
	if len(plan.Placements) == 0 && len(plan.Unplaced) == 0 && len(plan.Cancel) == 0 && len(plan.Attempts) == 0 {
		return false, wake, nil
	}
	// Big plans go through raft in parts: each apply stays small, and the
	// first placements reach their agents while the rest are applied.
	progressed := false
	for _, part := range scheduler.SplitPlan(plan, planChunk) {
		resp, index, err := s.apply(structs.PlanApplyRequestType, &structs.PlanApplyRequest{Plan: part, Time: time.Now().UTC()})
		if err != nil {
			return progressed, wake, err
		}
		wk.ownIndex = index
		res, ok := resp.(*structs.PlanResult)
		s.metrics.observePlan(res)
		if !ok {
			progressed = true
			continue
		}
		for id, why := range res.Rejected {
			s.logger.Info("plan placement rejected by the FSM", "session_id", id, "reason", why)
		}
		for _, id := range res.Cancelled {
			s.logger.Info("session cancelled by the scheduler", "session_id", id, "reason", plan.Cancel[id])
		}
		// Rejections alone wait for the next change: retrying at once
		// would only be rejected again.
		progressed = progressed || len(res.Applied) > 0 || len(res.Cancelled) > 0
	}
	return progressed, wake, nil
}

// planChunk is the most session placements one raft apply carries.
const planChunk = 1000

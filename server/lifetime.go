package server

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/corral-dev/corral/structs"
)

// activity remembers when users last touched each session (exec, logs) on
// this server; the idle timeout counts from there, or from when the
// session started running. It lives in memory: a new leader starts the
// count afresh, which can only delay an idle termination.
type activity struct {
	mu   sync.Mutex
	last map[string]time.Time
}

func (a *activity) touch(sessionID string, now time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.last == nil {
		a.last = map[string]time.Time{}
	}
	a.last[sessionID] = now
}

func (a *activity) get(sessionID string) time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.last[sessionID]
}

func (a *activity) forget(keep map[string]bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for id := range a.last {
		if !keep[id] {
			delete(a.last, id)
		}
	}
}

// lifetimeInterval is how often the leader enforces lifetimes and idle timeouts.
var lifetimeInterval = time.Second

// enforceLimits terminates sessions that outlived their key's
// max_session_lifetime or sat idle past its idle_timeout, with the reason.
func (s *Server) enforceLimits(ctx context.Context) {
	t := time.NewTicker(lifetimeInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		snap := s.state.Snapshot()
		sessions, err := snap.Sessions(nil, "")
		if err != nil {
			continue
		}
		now := time.Now().UTC()
		live := map[string]bool{}
		for _, sess := range sessions {
			if sess.Status.Terminal() || sess.Status == structs.SessionTerminating || sess.AccessKey == "" {
				continue
			}
			live[sess.ID] = true
			key, err := snap.Key(sess.AccessKey)
			if err != nil || key.Policy == "" {
				continue
			}
			pol, err := snap.Policy(key.Policy)
			if err != nil {
				continue
			}
			reason := ""
			if pol.MaxSessionLifetime > 0 && now.Sub(sess.CreatedAt) > pol.MaxSessionLifetime {
				reason = fmt.Sprintf("terminated: exceeded the max session lifetime %s of policy %s", pol.MaxSessionLifetime, pol.Name)
			} else if pol.IdleTimeout > 0 && sess.Type.LongRunning() && sess.Status == structs.SessionRunning {
				since := runningSince(sess)
				if a := s.activity.get(sess.ID); a.After(since) {
					since = a
				}
				if !since.IsZero() && now.Sub(since) > pol.IdleTimeout {
					reason = fmt.Sprintf("terminated: idle for more than %s (idle timeout of policy %s)", pol.IdleTimeout, pol.Name)
				}
			}
			if reason == "" {
				continue
			}
			s.logger.Info("terminating session", "session_id", sess.ID, "reason", reason)
			if _, _, err := s.apply(structs.SessionDestroyRequestType, &structs.SessionDestroyRequest{SessionID: sess.ID, Reason: reason, Time: now}); err != nil {
				s.logger.Warn("terminating session failed", "session_id", sess.ID, "error", err)
			}
		}
		s.activity.forget(live)
	}
}

// runningSince is when the session last became RUNNING.
func runningSince(sess *structs.Session) time.Time {
	for i := len(sess.History) - 1; i >= 0; i-- {
		if sess.History[i].Status == string(structs.SessionRunning) {
			return sess.History[i].Time
		}
	}
	return time.Time{}
}

package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/structs"
)

// DefaultGCRetention is how long ended sessions stay when the server's
// config names no retention.
const DefaultGCRetention = 24 * time.Hour

// maxGCInterval bounds the time between two periodic collections.
const maxGCInterval = 5 * time.Minute

// retention is the configured retention; negative when GC is off.
func (s *Server) retention() time.Duration {
	if s.cfg.GCRetention == 0 {
		return DefaultGCRetention
	}
	return s.cfg.GCRetention
}

// gcInterval is how often the leader collects: a quarter of the
// retention, at most maxGCInterval, at least a second.
func gcInterval(retention time.Duration) time.Duration {
	return max(min(retention/4, maxGCInterval), time.Second)
}

// runGC collects ended sessions older than the retention while this
// server leads, once at the start and then every gcInterval.
func (s *Server) runGC(ctx context.Context) {
	ret := s.retention()
	if ret < 0 {
		return
	}
	t := time.NewTicker(gcInterval(ret))
	defer t.Stop()
	for {
		now := time.Now().UTC()
		res, err := s.collect(ctx, now.Add(-ret), now)
		switch {
		case err != nil && ctx.Err() == nil:
			s.logger.Warn("session gc failed", "error", err)
		case res.Sessions > 0:
			s.logger.Info("collected ended sessions", "sessions", res.Sessions, "kernels", res.Kernels, "retention", ret.String())
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// collect deletes, through raft, the sessions that ended before cutoff,
// in entries of at most structs.DefaultGCBatch sessions, until none is
// left or ctx ends; it returns the totals.
func (s *Server) collect(ctx context.Context, cutoff, now time.Time) (*structs.SessionsGCResult, error) {
	total := &structs.SessionsGCResult{}
	for ctx.Err() == nil {
		resp, _, err := s.apply(structs.SessionsGCRequestType, &structs.SessionsGCRequest{Cutoff: cutoff, Limit: structs.DefaultGCBatch, Time: now})
		if err != nil {
			return total, err
		}
		res, ok := resp.(*structs.SessionsGCResult)
		if !ok {
			return total, fmt.Errorf("session gc: unexpected FSM answer %T", resp)
		}
		total.Sessions += res.Sessions
		total.Kernels += res.Kernels
		// A full batch that collected nothing (every one still holds
		// slots) would loop for ever.
		if !res.More || res.Sessions == 0 {
			return total, nil
		}
	}
	return total, ctx.Err()
}

// systemGC answers POST /v1/system/gc: an admin forces a collection now
// of the sessions that ended more than older_than ago (default the
// server's retention; "0s" every ended session).
func (s *Server) systemGC(w http.ResponseWriter, r *http.Request) (any, error) {
	var req api.SystemGCRequest
	if err := decodeAdmin(r, &req); err != nil {
		return nil, err
	}
	older := s.retention()
	if req.OlderThan != "" {
		d, err := time.ParseDuration(req.OlderThan)
		if err != nil || d < 0 {
			return nil, badRequest("invalid older_than %q: want a duration such as 1h, or 0s for every ended session", req.OlderThan)
		}
		older = d
	} else if older < 0 {
		return nil, badRequest("this server keeps ended sessions for ever (-gc-retention is negative): give older_than")
	}
	now := time.Now().UTC()
	cutoff := now.Add(-older)
	if older == 0 {
		// Every ended session: one that ended in this very instant too.
		cutoff = now.Add(time.Nanosecond)
	}
	res, err := s.collect(r.Context(), cutoff, now)
	if err != nil && !errors.Is(err, context.Canceled) {
		return nil, err
	}
	s.logger.Info("forced session gc", "sessions", res.Sessions, "kernels", res.Kernels, "older_than", older.String())
	return &api.SystemGCResponse{Sessions: res.Sessions, Kernels: res.Kernels, Cutoff: cutoff}, nil
}

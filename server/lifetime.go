package server

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/rpc"
	"github.com/corral-dev/corral/structs"
)

// activity remembers, per session, when users last touched it (exec, app
// connections: touch) and when one of its kernels last used CPU or GPU
// above its policy's threshold (busy), plus the last CPU sample of each
// kernel to measure that use from. The idle timeout counts from the latest
// of these, or from when the session started running. It lives in the
// leader's memory: a new leader starts the count afresh, which can only
// delay an idle termination.
type activity struct {
	mu      sync.Mutex
	last    map[string]time.Time
	busy    map[string]time.Time
	sampled map[string]time.Time     // session ID: when its kernels were last sampled
	samples map[string]*kernelSample // kernel ID: its last CPU sample
}

// kernelSample is one CPU sample of a kernel.
type kernelSample struct {
	sessionID string
	at        time.Time
	cpuNanos  uint64
}

func (a *activity) touch(sessionID string, now time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.last == nil {
		a.last = map[string]time.Time{}
	}
	if now.After(a.last[sessionID]) {
		a.last[sessionID] = now
	}
}

func (a *activity) get(sessionID string) time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.last[sessionID]
}

// markBusy records that a kernel of the session used CPU or GPU above its
// threshold at now.
func (a *activity) markBusy(sessionID string, now time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.busy == nil {
		a.busy = map[string]time.Time{}
	}
	if now.After(a.busy[sessionID]) {
		a.busy[sessionID] = now
	}
}

func (a *activity) lastBusy(sessionID string) time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.busy[sessionID]
}

// dueSample says whether the session's kernels are due for a sample at now
// and, if so, records that they are being sampled.
func (a *activity) dueSample(sessionID string, now time.Time, every time.Duration) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.sampled == nil {
		a.sampled = map[string]time.Time{}
	}
	if last, ok := a.sampled[sessionID]; ok && now.Sub(last) < every {
		return false
	}
	a.sampled[sessionID] = now
	return true
}

// cpuSample stores a kernel's new CPU sample and returns the previous one
// (nil for the first).
func (a *activity) cpuSample(kernelID string, s *kernelSample) *kernelSample {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.samples == nil {
		a.samples = map[string]*kernelSample{}
	}
	prev := a.samples[kernelID]
	a.samples[kernelID] = s
	return prev
}

func (a *activity) forget(keep map[string]bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, m := range []map[string]time.Time{a.last, a.busy, a.sampled} {
		for id := range m {
			if !keep[id] {
				delete(m, id)
			}
		}
	}
	for id, s := range a.samples {
		if !keep[s.sessionID] {
			delete(a.samples, id)
		}
	}
}

// lifetimeInterval is how often the leader enforces lifetimes and idle timeouts.
var lifetimeInterval = time.Second

// maxIdleSampleEvery is the longest time between two usage samples of a
// session's kernels; shorter idle timeouts sample at a quarter of theirs.
const maxIdleSampleEvery = 15 * time.Second

// idleSampleEvery is how often the leader samples the kernels of a session
// under an idle timeout: often enough that a busy kernel is seen several
// times within one timeout.
func idleSampleEvery(timeout time.Duration) time.Duration {
	return max(min(maxIdleSampleEvery, timeout/4), lifetimeInterval/2)
}

// idleInput is what the idle decision of one session reads.
type idleInput struct {
	Now          time.Time
	RunningSince time.Time     // when the session last became RUNNING
	LastTouch    time.Time     // last exec, log read or app connection
	LastBusy     time.Time     // last sample above the CPU/GPU threshold
	Timeout      time.Duration // the policy's idle timeout (0: none)
}

// idleDecision says how long the session may stay idle before the idle
// timeout ends it (remaining, never negative) and whether it is due now:
// the idle time counts from the latest of its start, its last touch and
// its last busy sample. Without a timeout or a start nothing is due.
func idleDecision(in idleInput) (remaining time.Duration, due bool) {
	if in.Timeout <= 0 || in.RunningSince.IsZero() {
		return 0, false
	}
	since := in.RunningSince
	for _, t := range []time.Time{in.LastTouch, in.LastBusy} {
		if t.After(since) {
			since = t
		}
	}
	left := in.Timeout - in.Now.Sub(since)
	if left < 0 {
		return 0, true
	}
	return left, false
}

// kernelBusy says whether a kernel's use between two samples is above
// threshold percent: CPU of its CPU allocation (one core where it has
// none), or the utilisation of its GPUs.
func kernelBusy(prev, cur *kernelSample, cpuMilli int64, gpuUtil int, threshold float64) bool {
	if float64(gpuUtil) > threshold {
		return true
	}
	if prev == nil || !cur.at.After(prev.at) || cur.cpuNanos < prev.cpuNanos {
		return false
	}
	cores := float64(cpuMilli) / 1000
	if cores <= 0 {
		cores = 1
	}
	used := float64(cur.cpuNanos-prev.cpuNanos) / float64(cur.at.Sub(prev.at).Nanoseconds())
	return used/cores*100 > threshold
}

// idleReason is the status info of a session the idle timeout ended.
func idleReason(pol *structs.ResourcePolicy, gpus bool) string {
	use := fmt.Sprintf("cpu<%g%%", pol.IdleThreshold())
	if gpus {
		use += fmt.Sprintf(", gpu<%g%%", pol.IdleThreshold())
	}
	return fmt.Sprintf("terminated: idle for %s (no app traffic, no exec, %s): the idle timeout of policy %s", pol.IdleTimeout, use, pol.Name)
}

// lifetimeReason is the status info of a session its max lifetime ended.
func lifetimeReason(pol *structs.ResourcePolicy) string {
	return fmt.Sprintf("terminated: reached the max session lifetime %s of policy %s", pol.MaxSessionLifetime, pol.Name)
}

// sessionPolicy is the resource policy of a session's key (nil: none).
func sessionPolicy(snap interface {
	Key(string) (*structs.AccessKey, error)
	Policy(string) (*structs.ResourcePolicy, error)
}, sess *structs.Session) *structs.ResourcePolicy {
	if sess.AccessKey == "" {
		return nil
	}
	key, err := snap.Key(sess.AccessKey)
	if err != nil || key.Policy == "" {
		return nil
	}
	pol, err := snap.Policy(key.Policy)
	if err != nil {
		return nil
	}
	return pol
}

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
			pol := sessionPolicy(snap, sess)
			if pol == nil {
				continue
			}
			reason := ""
			if pol.MaxSessionLifetime > 0 && now.Sub(sess.CreatedAt) > pol.MaxSessionLifetime {
				reason = lifetimeReason(pol)
			} else if pol.IdleTimeout > 0 && sess.Type.LongRunning() && sess.Status == structs.SessionRunning {
				ks, _ := snap.KernelsBySession(nil, sess.ID)
				if s.activity.dueSample(sess.ID, now, idleSampleEvery(pol.IdleTimeout)) {
					s.sampleUsage(ctx, sess.ID, ks, pol.IdleThreshold())
				}
				_, due := idleDecision(idleInput{Now: now, RunningSince: runningSince(sess), LastTouch: s.activity.get(sess.ID),
					LastBusy: s.activity.lastBusy(sess.ID), Timeout: pol.IdleTimeout})
				if due {
					gpus := false
					for _, k := range ks {
						gpus = gpus || len(k.GPUs) > 0
					}
					reason = idleReason(pol, gpus)
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

// sampleUsage samples the running kernels of a session on their agents
// (one Stats call per agent) and marks the session busy when one of them
// used CPU or GPU above threshold since its previous sample. A kernel
// whose agent cannot answer counts as not busy.
func (s *Server) sampleUsage(ctx context.Context, sessionID string, ks []*structs.Kernel, threshold float64) {
	byAgent := map[string][]*structs.Kernel{}
	for _, k := range ks {
		if k.Status == structs.KernelRunning && k.AgentID != "" {
			byAgent[k.AgentID] = append(byAgent[k.AgentID], k)
		}
	}
	for _, group := range byAgent {
		c, err := s.agentFor(group[0])
		if err != nil {
			continue
		}
		req := &rpc.StatsRequest{}
		byID := map[string]*structs.Kernel{}
		for _, k := range group {
			req.KernelIDs = append(req.KernelIDs, k.ID)
			byID[k.ID] = k
		}
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		resp, err := c.Stats(sctx, req)
		cancel()
		if err != nil {
			s.logger.Debug("sampling kernel usage for the idle timeout failed", "session_id", sessionID, "error", err)
			continue
		}
		for _, st := range resp.Kernels {
			k := byID[st.KernelID]
			if k == nil || st.Error != "" || st.Time.IsZero() {
				continue
			}
			cur := &kernelSample{sessionID: sessionID, at: st.Time, cpuNanos: st.CPUUsageNanos}
			prev := s.activity.cpuSample(k.ID, cur)
			if kernelBusy(prev, cur, int64(k.Resources[structs.SlotCPU]), st.GPUUtilPercent, threshold) {
				s.activity.markBusy(sessionID, st.Time.UTC())
			}
		}
	}
}

// fillLimits sets the remaining idle time and lifetime of a session under
// its policy (GET /v1/sessions/{id}); the idle part is the leader's view.
func (s *Server) fillLimits(d *api.SessionDetail) {
	sess := d.Session
	if sess.Status.Terminal() || sess.Status == structs.SessionTerminating {
		return
	}
	pol := sessionPolicy(s.state.Snapshot(), sess)
	if pol == nil {
		return
	}
	now := time.Now().UTC()
	if pol.MaxSessionLifetime > 0 {
		d.LifetimeRemaining = roundDuration(max(pol.MaxSessionLifetime-now.Sub(sess.CreatedAt), 0))
	}
	if pol.IdleTimeout > 0 && sess.Type.LongRunning() {
		if sess.Status != structs.SessionRunning {
			d.IdleRemaining = roundDuration(pol.IdleTimeout) // counts from RUNNING
			return
		}
		left, _ := idleDecision(idleInput{Now: now, RunningSince: runningSince(sess), LastTouch: s.activity.get(sess.ID),
			LastBusy: s.activity.lastBusy(sess.ID), Timeout: pol.IdleTimeout})
		d.IdleRemaining = roundDuration(left)
	}
}

func roundDuration(d time.Duration) string {
	return strings.TrimSpace(d.Round(time.Second).String())
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

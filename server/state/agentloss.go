package state

import (
	"fmt"
	"strings"
	"time"

	"github.com/corral-dev/corral/structs"
)

// agentGone handles the kernels of an agent that was declared LOST (its
// grace period as DISCONNECTED ran out) or that left: in the same apply, every kernel it held ends in
// ERROR with the reason and frees its slots, and the sessions follow. A
// batch session with retries left whose live kernels were all on gone
// agents is re-queued instead: its kernels go back to PENDING and the
// scheduler places them elsewhere. If the agent comes back with those
// kernels still running, its kernel stream no longer lists them and it
// kills them: the server's state wins. With only set, just those
// sessions' kernels are given up (their own, shorter grace period ran out).
func (w *writer) agentGone(a *structs.Agent, why string, now time.Time, only map[string]bool) error {
	sn := w.snap()
	kernels, err := sn.KernelsByAgent(nil, a.ID)
	if err != nil {
		return err
	}
	reason := fmt.Sprintf("agent lost: %s (%s)", a.Name, why)
	sessions := map[string]bool{}
	for _, k := range kernels {
		if k.HoldsSlots() && (only == nil || only[k.SessionID]) {
			sessions[k.SessionID] = true
		}
	}
	for _, id := range sortedKeys(sessions) {
		sess, err := sn.Session(nil, id)
		if err != nil {
			return err
		}
		all, err := sn.kernelsOf(nil, sess)
		if err != nil {
			return err
		}
		if w.requeue(sn, sess, all, a.ID, reason, now) {
			continue
		}
		for _, cur := range all {
			if cur.AgentID != a.ID || !cur.HoldsSlots() {
				continue
			}
			k := cur.Copy()
			if err := k.SetStatus(structs.KernelError, reason, now); err != nil {
				return err
			}
			if err := w.releaseIfEnded(cur, k, now); err != nil {
				return err
			}
			if err := w.putKernel(k); err != nil {
				return err
			}
		}
		// The session's kernels elsewhere have nothing left to serve in a
		// batch session; an interactive one keeps them (degraded).
		if sess.Type == structs.SessionTypeBatch {
			fresh, err := w.snap().KernelsBySession(nil, id)
			if err != nil {
				return err
			}
			if err := w.stopKernels(w.snap(), fresh, nil, reason, now); err != nil {
				return err
			}
		}
		if err := w.stopAfterMain(id, now); err != nil {
			return err
		}
		if err := w.refreshSession(id, reason, now); err != nil {
			return err
		}
	}
	return nil
}

// requeue puts a batch session with retries left back to PENDING when
// none of its live kernels runs on an agent other than lostAgent that is
// ALIVE or DISCONNECTED (may still run it); it reports whether it did.
func (w *writer) requeue(sn *Snapshot, sess *structs.Session, kernels []*structs.Kernel, lostAgent, reason string, now time.Time) bool {
	if sess.Type != structs.SessionTypeBatch || sess.Retries >= sess.MaxRetries || sess.Status.Terminal() {
		return false
	}
	for _, k := range kernels {
		if !k.HoldsSlots() {
			if k.Status.Terminal() {
				return false // a kernel already ended: the attempt is over
			}
			continue
		}
		// A kernel on another agent that is ALIVE, or DISCONNECTED and so
		// maybe still running, keeps the attempt going.
		if ag, err := w.snap().Agent(nil, k.AgentID); err == nil && ag.ID != lostAgent && ag.Status.Reachable() {
			return false
		}
	}
	retry := sess.Retries + 1
	info := fmt.Sprintf("re-queued (retry %d of %d): %s", retry, sess.MaxRetries, reason)
	// The attempt's kernels end, kept as records of the attempt under a
	// session ID of their own; the retry gets fresh kernels (new IDs), so a
	// late report from the old attempt, or an agent that comes back still
	// running it, can never touch the new one.
	ids := make([]string, 0, len(kernels))
	for _, cur := range kernels {
		old := cur.Copy()
		nk := cur.Copy()
		to := structs.KernelError
		if cur.Status == structs.KernelPending {
			to = structs.KernelCancelled
		}
		if err := old.SetStatus(to, info, now); err != nil {
			return false
		}
		old.SessionID = fmt.Sprintf("%s%s%d", sess.ID, supersededMark, retry)
		if err := w.releaseIfEnded(cur, old, now); err != nil {
			return false
		}
		if err := w.putKernel(old); err != nil {
			return false
		}
		nk.ID = retryKernelID(cur.ID, retry)
		nk.AgentID, nk.Network, nk.ExitCode, nk.Cpuset = "", nil, nil, ""
		// Its devices are chosen anew where it is placed next.
		nk.GPUs = nil
		delete(nk.Resources, structs.SlotCUDAMem)
		nk.Status, nk.StatusInfo = structs.KernelPending, info
		nk.History = []structs.StatusChange{{Status: string(structs.KernelPending), Info: info, Time: now}}
		if nk.Env != nil && nk.Env["CORRAL_KERNEL_ID"] != "" {
			nk.Env["CORRAL_KERNEL_ID"] = nk.ID
		}
		if err := w.putKernel(nk); err != nil {
			return false
		}
		ids = append(ids, nk.ID)
	}
	c := sess.Copy()
	c.KernelIDs = ids
	c.Retries++
	c.EndReason = ""
	if err := w.freeNetwork(c.Network); err != nil {
		return false
	}
	c.Network = nil
	if err := w.putSession(c); err != nil {
		return false
	}
	// It leaves its key's concurrency set until it is placed again.
	if err := w.release(c.AccessKey, c.ID, nil, true); err != nil {
		return false
	}
	if err := w.release(groupUsageKey(c.ResourceGroup), c.ID, nil, true); err != nil {
		return false
	}
	return w.refreshSession(c.ID, info, now) == nil
}

// supersededMark joins a session ID and an attempt number into the session
// ID of the kernels of an earlier attempt of a re-queued session.
const supersededMark = "~attempt"

// retryKernelID is the deterministic ID of a kernel's copy in a retry.
func retryKernelID(id string, retry int) string {
	if i := strings.LastIndex(id, ".r"); i > 0 {
		id = id[:i]
	}
	return fmt.Sprintf("%s.r%d", id, retry)
}

// DrainAgent stops or resumes new placements on an agent; a forced drain
// also asks the agent to terminate every kernel it runs.
func (s *StateStore) DrainAgent(index uint64, req *structs.AgentDrainRequest) error {
	w := s.write(index)
	defer w.txn.Abort()
	a, err := w.ownAgent(req.AgentID)
	if err != nil {
		return err
	}
	a.Drain = req.Drain
	a.UpdatedAt = req.Time
	if req.Drain && req.Force {
		sn := w.snap()
		kernels, err := sn.KernelsByAgent(nil, a.ID)
		if err != nil {
			return err
		}
		reason := fmt.Sprintf("agent %s drained (forced)", a.Name)
		touched := map[string]bool{}
		for _, k := range kernels {
			if k.HoldsSlots() {
				touched[k.SessionID] = true
			}
		}
		if err := w.stopKernels(sn, kernels, nil, reason, req.Time); err != nil {
			return err
		}
		for _, id := range sortedKeys(touched) {
			if err := w.refreshSession(id, reason, req.Time); err != nil {
				return err
			}
		}
	}
	return w.commit()
}

package state

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/corral-dev/corral/structs"
)

// EndedAt is when a terminal session ended: its TerminatedAt, else the
// time of its last recorded status change; zero for a live session.
func EndedAt(s *structs.Session) time.Time {
	if !s.Status.Terminal() {
		return time.Time{}
	}
	if !s.TerminatedAt.IsZero() {
		return s.TerminatedAt
	}
	if n := len(s.History); n > 0 {
		return s.History[n-1].Time
	}
	return s.CreatedAt
}

// GCSessions deletes, in one transaction, the terminal sessions that ended
// before req.Cutoff together with their kernels, the kernels of their
// earlier attempts included. The set depends on the state and the request
// only, so every server deletes the same one. A session stays when a live
// session depends on it (its result decides whether that one runs) or
// when one of its kernels still holds slots on an agent (its slots would
// otherwise never be freed). At most req.Limit sessions go, oldest (by
// create index) first.
func (s *StateStore) GCSessions(index uint64, req *structs.SessionsGCRequest) (*structs.SessionsGCResult, error) {
	w := s.write(index)
	defer w.txn.Abort()
	limit := req.Limit
	if limit <= 0 {
		limit = structs.DefaultGCBatch
	}
	// Read through the transaction itself, not the writer's cache: rows
	// are deleted below.
	sn := &Snapshot{txn: w.txn}
	var all []*structs.Session
	if len(req.IDs) > 0 {
		seen := map[string]bool{}
		for _, id := range req.IDs {
			if seen[id] {
				continue
			}
			seen[id] = true
			raw, err := w.txn.First(tableSessions, "id", id)
			if err != nil {
				return nil, err
			}
			if raw != nil {
				all = append(all, raw.(*structs.Session))
			}
		}
	} else {
		var err error
		if all, err = sn.Sessions(nil, ""); err != nil {
			return nil, err
		}
	}
	needed := map[string]bool{}
	if len(req.IDs) > 0 {
		// Dependencies of live sessions need the whole table.
		live, err := sn.Sessions(nil, "")
		if err != nil {
			return nil, err
		}
		markNeeded(needed, live)
	} else {
		markNeeded(needed, all)
	}
	var doomed []*structs.Session
	for _, sess := range all {
		end := EndedAt(sess)
		if !sess.Status.Terminal() || !end.Before(req.Cutoff) || needed[sess.ID] {
			continue
		}
		doomed = append(doomed, sess)
	}
	slices.SortFunc(doomed, cmpSessions)
	res := &structs.SessionsGCResult{}
	if len(doomed) > limit {
		doomed, res.More = doomed[:limit], true
	}
	for _, sess := range doomed {
		kernels, err := sn.gcKernels(sess)
		if err != nil {
			return nil, err
		}
		holds := false
		for _, k := range kernels {
			holds = holds || k.HoldsSlots()
		}
		if holds {
			continue
		}
		for _, k := range kernels {
			if err := w.txn.Delete(tableKernels, k); err != nil {
				return nil, fmt.Errorf("gc: delete kernel %s of session %s: %w", k.ID, sess.ID, err)
			}
			w.deleted = append(w.deleted, Change{Table: tableKernels, Key: k.ID, Owner: sess.Owner, Deleted: true, Obj: k, Prev: k})
		}
		if err := w.txn.Delete(tableSessions, sess); err != nil {
			return nil, fmt.Errorf("gc: delete session %s: %w", sess.ID, err)
		}
		w.deleted = append(w.deleted, Change{Table: tableSessions, Key: sess.ID, Owner: sess.Owner, Deleted: true, Obj: sess, Prev: sess})
		// Its idempotency key goes with it: a retry that late creates anew.
		if err := w.forgetIdempotency(sess.ID); err != nil {
			return nil, fmt.Errorf("gc: forget the idempotency key of session %s: %w", sess.ID, err)
		}
		// An ended session left its key's and its group's concurrency
		// sets when it ended; one that is still there would be counted
		// forever once the session is gone.
		for _, key := range []string{sess.AccessKey, groupUsageKey(sess.ResourceGroup)} {
			if key != "" && sn.Usage(key).Sessions[sess.ID] {
				if err := w.release(key, sess.ID, nil, true); err != nil {
					return nil, err
				}
			}
		}
		res.Sessions++
		res.Kernels += len(kernels)
	}
	if res.Sessions == 0 {
		return res, nil
	}
	w.dirty[tableSessions] = true
	w.dirty[tableKernels] = true
	return res, w.commit()
}

// markNeeded records the dependencies of the live sessions of list.
func markNeeded(needed map[string]bool, list []*structs.Session) {
	for _, s := range list {
		if !s.Status.Terminal() {
			for _, d := range s.DependsOn {
				needed[d] = true
			}
		}
	}
}

// gcKernels returns a session's kernels and those of its earlier
// attempts: a re-queue keeps each old kernel under the session ID
// "<id>~attemptN" and gives the retry the ID "<base>.rN" (retryKernelID),
// so the old ones are <base> and <base>.r1 ... <base>.r(Retries-1).
func (sn *Snapshot) gcKernels(sess *structs.Session) ([]*structs.Kernel, error) {
	var out []*structs.Kernel
	seen := map[string]bool{}
	add := func(id string, own bool) error {
		if seen[id] {
			return nil
		}
		seen[id] = true
		raw, err := sn.txn.First(tableKernels, "id", id)
		if err != nil || raw == nil {
			return err
		}
		k := raw.(*structs.Kernel)
		if (own && k.SessionID == sess.ID) || strings.HasPrefix(k.SessionID, sess.ID+supersededMark) {
			out = append(out, k)
		}
		return nil
	}
	for _, id := range sess.KernelIDs {
		if err := add(id, true); err != nil {
			return nil, err
		}
		if sess.Retries == 0 {
			continue
		}
		base := id
		if i := strings.LastIndex(id, ".r"); i > 0 {
			base = id[:i]
		}
		if err := add(base, false); err != nil {
			return nil, err
		}
		for r := 1; r <= sess.Retries; r++ {
			if err := add(retryKernelID(base, r), false); err != nil {
				return nil, err
			}
		}
	}
	return out, nil
}

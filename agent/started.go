package agent

import (
	"encoding/json"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/corral-dev/corral/structs"
)

// startedBucket holds one record per kernel ID this agent has ever begun
// to start, kept for startedRetention: a server that lists such a kernel
// again (a restarted follower replaying an old state, a stale snapshot)
// never gets it started a second time.
var startedBucket = []byte("started")

// startedRetention is how long the agent remembers that it started a
// kernel. Servers forget nothing that recent: a state older than this is
// not served to agents.
const startedRetention = 7 * 24 * time.Hour

// errAlreadyRan is the status info reported for a kernel a server lists
// again after this agent started it, when no final status was recorded.
const errAlreadyRan = "kernel already ran on this agent; not started twice"

// startedRecord is what the agent remembers about a kernel it started:
// when, and the final status it reported, if the kernel ended.
type startedRecord struct {
	Started time.Time             `json:"started"`
	Final   *structs.KernelUpdate `json:"final,omitempty"`
}

// markStarted records, before the driver is asked to start it, that the
// kernel is being started. When the kernel was started before it writes
// nothing and returns the earlier record.
func (s *localStore) markStarted(id string, now time.Time) (*startedRecord, error) {
	buf, err := json.Marshal(&startedRecord{Started: now})
	if err != nil {
		return nil, err
	}
	var prev *startedRecord
	err = s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(startedBucket)
		if v := b.Get([]byte(id)); v != nil {
			prev = &startedRecord{}
			if json.Unmarshal(v, prev) != nil {
				prev = &startedRecord{Started: now} // unreadable: still started
			}
			return nil
		}
		return b.Put([]byte(id), buf)
	})
	return prev, err
}

// setFinal records the final status of a started kernel.
func (s *localStore) setFinal(u *structs.KernelUpdate) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(startedBucket)
		rec := &startedRecord{Started: u.Time}
		if v := b.Get([]byte(u.KernelID)); v != nil {
			_ = json.Unmarshal(v, rec)
		}
		rec.Final = u
		buf, err := json.Marshal(rec)
		if err != nil {
			return err
		}
		return b.Put([]byte(u.KernelID), buf)
	})
}

// started returns the record of a kernel this agent started, or nil.
func (s *localStore) started(id string) (*startedRecord, error) {
	var rec *startedRecord
	err := s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(startedBucket).Get([]byte(id))
		if v == nil {
			return nil
		}
		rec = &startedRecord{}
		return json.Unmarshal(v, rec)
	})
	return rec, err
}

// pruneStarted forgets kernels started before cutoff and returns how many.
func (s *localStore) pruneStarted(cutoff time.Time) (int, error) {
	n := 0
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(startedBucket)
		var old [][]byte
		if err := b.ForEach(func(k, v []byte) error {
			rec := &startedRecord{}
			if json.Unmarshal(v, rec) != nil || rec.Started.Before(cutoff) {
				old = append(old, append([]byte(nil), k...))
			}
			return nil
		}); err != nil {
			return err
		}
		for _, k := range old {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		n = len(old)
		return nil
	})
	return n, err
}

// pruneStartedEvery bounds how often a full kernel list prunes old records.
const pruneStartedEvery = time.Hour

// maybePruneStarted forgets old start records, at most once per
// pruneStartedEvery.
func (a *Agent) maybePruneStarted(now time.Time) {
	a.mu.Lock()
	due := now.Sub(a.lastPrune) >= pruneStartedEvery
	if due {
		a.lastPrune = now
	}
	a.mu.Unlock()
	if !due {
		return
	}
	if n, err := a.store.pruneStarted(now.Add(-startedRetention)); err != nil {
		a.logger.Warn("pruning old kernel start records failed", "error", err)
	} else if n > 0 {
		a.logger.Debug("pruned old kernel start records", "records", n)
	}
}

// claimStart records that kernel k is about to be started and reports
// whether to go on. A kernel this agent started before is not started
// again: the final status it recorded is reported again (or an ERROR
// saying so), and claimStart reports false. So does a record that cannot
// be written: a start the agent cannot remember could happen twice.
func (a *Agent) claimStart(k *structs.Kernel) bool {
	rec, err := a.store.markStarted(k.ID, time.Now().UTC())
	if err != nil {
		a.logger.Error("recording the kernel start failed; not starting it", "kernel_id", k.ID, "error", err)
		a.reporter.report(k.ID, structs.KernelError, "agent "+a.cfg.Name+" could not record the kernel start in its state file: "+err.Error(), nil)
		return false
	}
	if rec == nil {
		return true
	}
	a.logger.Warn("server listed a kernel this agent already started; not starting it again", "kernel_id", k.ID, "status", k.Status)
	a.reportAgain(k.ID, rec)
	return false
}

// reportAgain re-reports what became of a kernel this agent started.
func (a *Agent) reportAgain(id string, rec *startedRecord) {
	if rec.Final != nil {
		u := *rec.Final
		a.reporter.reportUpdate(&u, nil)
		return
	}
	a.reporter.report(id, structs.KernelError, errAlreadyRan, nil)
}

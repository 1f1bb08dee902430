package state

import (
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/go-memdb"

	"github.com/corral-dev/corral/structs"
)

// Idempotent creates.
//
// A create (SessionEnqueueRequest) may carry an idempotency key, chosen by
// the client, and a hash of its request body. The FSM keeps one
// IdempotencyEntry per (access key, idempotency key) in the idempotency
// table, in the same transaction as the session it created, so that a
// create retried after a lost answer (a leader that died after commit, a
// forwarding follower that saw EOF) enqueues nothing the second time:
// the entry names the session the first one created. The table is in
// raft snapshots (Dump) like every other.
//
// Session GC: whoever deletes a session row must call
// (*writer).forgetIdempotency(sessionID) in the same transaction, so the
// key can be used again and the table does not grow forever.

// tableIdempotency holds IdempotencyEntry rows.
const tableIdempotency = "idempotency"

// MaxIdempotencyKey is the longest idempotency key accepted.
const MaxIdempotencyKey = 128

// ErrIdempotencyConflict is returned for a create whose idempotency key
// was used before with a different request body.
var ErrIdempotencyConflict = errors.New("idempotency key reused with a different request")

// IdempotencyEntry records which session a create with an idempotency key
// made.
type IdempotencyEntry struct {
	// ID is the entry's key: idempotencyID(AccessKey, Key).
	ID        string `json:"id"`
	AccessKey string `json:"access_key"`
	Key       string `json:"key"`
	SessionID string `json:"session_id"`
	// RequestHash identifies the body of the create that made the session.
	RequestHash string    `json:"request_hash"`
	CreateIndex uint64    `json:"create_index"`
	Created     time.Time `json:"created"`
}

// idempotencyID joins an access key and an idempotency key (which holds
// printable characters only) into one primary key.
func idempotencyID(accessKey, key string) string { return accessKey + "\n" + key }

func idempotencyTable() *memdb.TableSchema {
	return &memdb.TableSchema{Name: tableIdempotency, Indexes: map[string]*memdb.IndexSchema{
		"id":      {Name: "id", Unique: true, Indexer: &memdb.StringFieldIndex{Field: "ID"}},
		"session": {Name: "session", Indexer: &memdb.StringFieldIndex{Field: "SessionID"}},
	}}
}

// IdempotentCreate returns the entry of an earlier create by accessKey with
// the idempotency key, or nil.
func (sn *Snapshot) IdempotentCreate(accessKey, key string) (*IdempotencyEntry, error) {
	raw, err := sn.txn.First(tableIdempotency, "id", idempotencyID(accessKey, key))
	if err != nil || raw == nil {
		return nil, err
	}
	return raw.(*IdempotencyEntry), nil
}

// IdempotencyEntries lists every entry (snapshots, tests).
func (sn *Snapshot) IdempotencyEntries() ([]*IdempotencyEntry, error) {
	return listAll[*IdempotencyEntry](sn.txn, tableIdempotency)
}

// claimIdempotency records the idempotency key of a create in w. dup says
// the key was used before with the same body: the create is then a replay
// and enqueues nothing. A key used with a different body is an error. An
// entry whose session no longer exists is taken over.
func (w *writer) claimIdempotency(req *structs.SessionEnqueueRequest) (dup bool, err error) {
	if req.IdempotencyKey == "" {
		return false, nil
	}
	sess := req.Session
	id := idempotencyID(sess.AccessKey, req.IdempotencyKey)
	raw, err := w.base.First(tableIdempotency, "id", id)
	if err != nil {
		return false, err
	}
	if prev, ok := raw.(*IdempotencyEntry); ok {
		if s, _ := w.snap().Session(nil, prev.SessionID); s != nil {
			if prev.RequestHash != req.RequestHash {
				return false, fmt.Errorf("idempotency key %q was first used for session %s with a different request body: %w", req.IdempotencyKey, prev.SessionID, ErrIdempotencyConflict)
			}
			return true, nil
		}
	}
	w.dirty[tableIdempotency] = true
	return false, w.txn.Insert(tableIdempotency, &IdempotencyEntry{ID: id, AccessKey: sess.AccessKey, Key: req.IdempotencyKey,
		SessionID: sess.ID, RequestHash: req.RequestHash, CreateIndex: w.index, Created: req.Time})
}

// forgetIdempotency deletes the idempotency entries of a session. Session
// GC calls it in the transaction that deletes the session.
func (w *writer) forgetIdempotency(sessionID string) error {
	n, err := w.txn.DeleteAll(tableIdempotency, "session", sessionID)
	if n > 0 {
		w.dirty[tableIdempotency] = true
	}
	return err
}

package server

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/server/state"
)

// Idempotent creates: POST /v1/sessions with an Idempotency-Key header
// creates at most one session per (access key, idempotency key). The key
// and a hash of the request body travel inside the raft create entry, and
// the FSM enqueues nothing for a key it has seen (server/state,
// idempotency.go), so a create retried after a lost answer, even one that
// reached a leader that died after committing it, never makes a second
// session. A replay is answered like the first create (201 Created, the
// same session) plus the header Idempotent-Replayed: true. The same key
// with a different body is refused with 422.

// idempotencyOf reads and checks the Idempotency-Key header of a create
// and hashes its body; both are empty without the header.
func idempotencyOf(r *http.Request, req *api.CreateSessionRequest) (key, hash string, err error) {
	vals := r.Header.Values(api.IdempotencyKeyHeader)
	if len(vals) == 0 {
		return "", "", nil
	}
	if len(vals) > 1 {
		return "", "", badRequest("%s given %d times: give it once", api.IdempotencyKeyHeader, len(vals))
	}
	if err := checkIdempotencyKey(vals[0]); err != nil {
		return "", "", err
	}
	// The body as decoded, encoded again: spacing and key order do not count.
	b, err := json.Marshal(req)
	if err != nil {
		return "", "", err
	}
	sum := sha256.Sum256(b)
	return vals[0], hex.EncodeToString(sum[:]), nil
}

// checkIdempotencyKey accepts 1 to state.MaxIdempotencyKey visible ASCII
// characters.
func checkIdempotencyKey(key string) error {
	if key == "" || len(key) > state.MaxIdempotencyKey {
		return badRequest("invalid %s: want 1 to %d characters, got %d (a UUID is a good key)", api.IdempotencyKeyHeader, state.MaxIdempotencyKey, len(key))
	}
	for i := 0; i < len(key); i++ {
		if c := key[i]; c < 0x21 || c > 0x7e {
			return badRequest("invalid %s: character %q at position %d: use printable ASCII without spaces (a UUID is a good key)", api.IdempotencyKeyHeader, rune(c), i)
		}
	}
	return nil
}

// replayedCreate answers a create whose idempotency key was used before
// for another session than created (empty before the create is applied):
// that session, marked as replayed. It returns nil when there is nothing
// to replay, and an error when the key came with another body.
func (s *Server) replayedCreate(ctx context.Context, w http.ResponseWriter, key, hash, created string) (*api.SessionDetail, error) {
	id := callerOf(ctx)
	if key == "" || id == nil {
		return nil, nil
	}
	snap := s.state.Snapshot()
	e, err := snap.IdempotentCreate(id.key.AccessKey, key)
	if err != nil || e == nil || e.SessionID == created {
		return nil, err
	}
	d, err := s.sessionDetail(ctx, nil, snap, e.SessionID, w)
	switch {
	case errors.Is(err, state.ErrNotFound):
		return nil, nil // its session is gone: the key is free again
	case err != nil:
		return nil, err
	case e.RequestHash != hash:
		return nil, idempotencyConflict(key, e.SessionID)
	}
	w.Header().Set(api.IdempotentReplayedHeader, "true")
	return d, nil
}

func idempotencyConflict(key, sessionID string) error {
	return &httpError{code: http.StatusUnprocessableEntity, msg: fmt.Sprintf(
		"%s %q was already used for session %s with a different request body: use a new key for a new session", api.IdempotencyKeyHeader, key, sessionID)}
}

// idempotentRequest tells a request that may be sent to the leader again
// after an error that leaves unknown whether it got there: a create with
// an idempotency key.
func idempotentRequest(r *http.Request) bool {
	return r.Method == http.MethodPost && r.URL.Path == "/v1/sessions" && r.Header.Get(api.IdempotencyKeyHeader) != ""
}

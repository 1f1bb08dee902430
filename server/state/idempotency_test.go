package state

import (
	"encoding/json"
	"errors"
	"testing"

	"github.com/corral-dev/corral/structs"
)

// enqueueWithKey enqueues session id for access key ak with an
// idempotency key and a body hash, as the HTTP API does.
func (f *fixture) enqueueWithKey(id, ak, key, hash string) error {
	f.t.Helper()
	sess := &structs.Session{ID: id, Name: "n-" + id, Type: structs.SessionTypeBatch, AccessKey: ak, ResourceGroup: structs.DefaultResourceGroup}
	k := &structs.Kernel{ID: id + "-k", SessionID: id, Role: "main", Idx: 1, Hostname: "main1", Driver: "exec", Command: []string{"true"}, Resources: slots(1, 64)}
	return f.s.EnqueueSession(f.next(), &structs.SessionEnqueueRequest{Session: sess, Kernels: []*structs.Kernel{k}, Time: t0,
		IdempotencyKey: key, RequestHash: hash})
}

func (f *fixture) sessionCount() int {
	f.t.Helper()
	ss, err := f.s.Snapshot().Sessions(nil, "")
	if err != nil {
		f.t.Fatal(err)
	}
	return len(ss)
}

func TestIdempotentCreate(t *testing.T) {
	f := newFixture(t)
	if err := f.enqueueWithKey("s1", "AK1", "key-1", "h1"); err != nil {
		t.Fatal(err)
	}
	// The same key and body again (a retry with a new session ID, as the
	// leader picks one per request): nothing new.
	if err := f.enqueueWithKey("s2", "AK1", "key-1", "h1"); err != nil {
		t.Fatalf("replayed create: %v", err)
	}
	if n := f.sessionCount(); n != 1 {
		t.Fatalf("%d sessions after a replayed create, want 1", n)
	}
	e, err := f.s.Snapshot().IdempotentCreate("AK1", "key-1")
	if err != nil || e == nil || e.SessionID != "s1" {
		t.Fatalf("entry of key-1 = %+v, %v; want session s1", e, err)
	}
	// The same key with another body is refused.
	if err := f.enqueueWithKey("s3", "AK1", "key-1", "h2"); !errors.Is(err, ErrIdempotencyConflict) {
		t.Fatalf("create with a reused key and another body: %v, want ErrIdempotencyConflict", err)
	}
	// Keys are per access key.
	if err := f.enqueueWithKey("s4", "AK2", "key-1", "h2"); err != nil {
		t.Fatal(err)
	}
	if n := f.sessionCount(); n != 2 {
		t.Fatalf("%d sessions, want 2", n)
	}

	// Snapshot and restore (through JSON, as raft persists it) keep it.
	d, err := f.s.Snapshot().Dump()
	if err != nil {
		t.Fatal(err)
	}
	buf, err := json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	var d2 Dump
	if err := json.Unmarshal(buf, &d2); err != nil {
		t.Fatal(err)
	}
	s2, err := New()
	if err != nil {
		t.Fatal(err)
	}
	if err := s2.Restore(&d2); err != nil {
		t.Fatal(err)
	}
	f2 := &fixture{t: t, s: s2, index: f.index}
	if err := f2.enqueueWithKey("s5", "AK1", "key-1", "h1"); err != nil {
		t.Fatalf("replayed create after restore: %v", err)
	}
	if err := f2.enqueueWithKey("s6", "AK1", "key-1", "h9"); !errors.Is(err, ErrIdempotencyConflict) {
		t.Fatalf("conflicting create after restore: %v, want ErrIdempotencyConflict", err)
	}
	if n := f2.sessionCount(); n != 2 {
		t.Fatalf("%d sessions after restore and replays, want 2", n)
	}

	// Deleting a session (GC) forgets its key.
	w := s2.write(f2.next())
	if err := w.forgetIdempotency("s1"); err != nil {
		t.Fatal(err)
	}
	if err := w.txn.Delete(tableSessions, w.snap().mustSession(t, "s1")); err != nil {
		t.Fatal(err)
	}
	if err := w.commit(); err != nil {
		t.Fatal(err)
	}
	if e, _ := s2.Snapshot().IdempotentCreate("AK1", "key-1"); e != nil {
		t.Fatalf("entry survived its session: %+v", e)
	}
	if err := f2.enqueueWithKey("s7", "AK1", "key-1", "h2"); err != nil {
		t.Fatalf("key reused after its session went: %v", err)
	}
}

func (sn *Snapshot) mustSession(t *testing.T, id string) *structs.Session {
	t.Helper()
	s, err := sn.Session(nil, id)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

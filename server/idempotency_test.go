package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/corral-dev/corral/api"
)

// TestIdempotentCreateThroughFollowerAndFailover: creates with an
// Idempotency-Key sent to a follower (forwarded to the leader) make one
// session however often they are sent, also after the leader that
// committed the first one is gone; the same key with another body is
// refused with 422, a malformed key with 400.
func TestIdempotentCreateThroughFollowerAndFailover(t *testing.T) {
	srvs, token := startQuorum(t, 3)
	leader, follower := -1, -1
	for i, s := range srvs {
		if s.IsLeader() {
			leader = i
		} else if follower < 0 {
			follower = i
		}
	}
	ctx := context.Background()
	lc := apiClient(t, srvs[leader].HTTPAddr(), token)
	fc := apiClient(t, srvs[follower].HTTPAddr(), token)
	req := &api.CreateSessionRequest{Name: "once", Type: "batch", Command: []string{"true"}, Resources: small}

	// The first send reached the leader; its answer was "lost".
	first, err := lc.CreateSessionWithKey(ctx, req, "key-1")
	if err != nil {
		t.Fatal(err)
	}
	// The retry goes through a follower.
	again, err := fc.CreateSessionWithKey(ctx, req, "key-1")
	if err != nil {
		t.Fatal(err)
	}
	if again.Session.ID != first.Session.ID {
		t.Fatalf("retried create made session %s, want the first one %s", again.Session.ID, first.Session.ID)
	}
	// A raw retry says it was replayed.
	body, _ := json.Marshal(req)
	resp := rawCreate(t, srvs[follower].HTTPAddr(), token, "key-1", body)
	if resp.StatusCode != http.StatusCreated || resp.Header.Get(api.IdempotentReplayedHeader) != "true" {
		t.Fatalf("raw retry: status %d, %s=%q; want 201 and true", resp.StatusCode, api.IdempotentReplayedHeader, resp.Header.Get(api.IdempotentReplayedHeader))
	}

	// The same key for another request.
	other := *req
	other.Command = []string{"false"}
	_, err = fc.CreateSessionWithKey(ctx, &other, "key-1")
	var ae *api.Error
	if !errors.As(err, &ae) || ae.StatusCode != http.StatusUnprocessableEntity || !strings.Contains(ae.Message, "different request body") {
		t.Fatalf("reused key with another body: %v, want 422 saying the body differs", err)
	}
	// Malformed keys.
	for _, key := range []string{strings.Repeat("k", 129), "has space", "tab\there"} {
		resp := rawCreate(t, srvs[follower].HTTPAddr(), token, key, body)
		var e api.ErrorResponse
		_ = json.NewDecoder(resp.Body).Decode(&e)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(e.Error, api.IdempotencyKeyHeader) {
			t.Errorf("key %q: status %d %q, want 400 naming the header", key, resp.StatusCode, e.Error)
		}
	}

	// The leader goes; the key still maps to the first session on the next.
	srvs[leader].Shutdown()
	var survivor *api.Client
	for i, s := range srvs {
		if i != leader {
			survivor = apiClient(t, s.HTTPAddr(), token)
			break
		}
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		after, err := survivor.CreateSessionWithKey(ctx, req, "key-1")
		if err == nil {
			if after.Session.ID != first.Session.ID {
				t.Fatalf("create retried after failover made session %s, want %s", after.Session.ID, first.Session.ID)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("create after failover: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	ss, err := survivor.ListSessions(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, s := range ss {
		if s.Name == "once" {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%d sessions named once, want 1", n)
	}
}

func rawCreate(t *testing.T, addr, token, key string, body []byte) *http.Response {
	t.Helper()
	r, err := http.NewRequest(http.MethodPost, "http://"+addr+"/v1/sessions", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	r.Header.Set("Authorization", "Bearer "+token)
	r.Header.Set(api.IdempotencyKeyHeader, key)
	resp, err := http.DefaultClient.Do(r)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

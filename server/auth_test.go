package server_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/structs"
)

func apiStatus(err error) int {
	var e *api.Error
	if errors.As(err, &e) {
		return e.StatusCode
	}
	return 0
}

func TestAuthOwnershipAndPolicies(t *testing.T) {
	c := startCluster(t, structs.Slots{structs.SlotCPU: structs.Whole(2)})
	ctx := context.Background()
	admin := c.client

	anon, _ := api.NewClient(c.addr)
	if _, err := anon.ListSessions(ctx, ""); apiStatus(err) != http.StatusUnauthorized {
		t.Fatalf("no token: %v", err)
	}
	bad, _ := api.NewClient(c.addr)
	bad.SetToken("AKNOPE.secret")
	if _, err := bad.ListSessions(ctx, ""); apiStatus(err) != http.StatusUnauthorized {
		t.Fatalf("bad token: %v", err)
	}

	keyFor := func(user string, policy string) *api.Client {
		t.Helper()
		if _, err := admin.CreateUser(ctx, &api.CreateUserRequest{Name: user}); err != nil {
			t.Fatal(err)
		}
		k, err := admin.CreateKey(ctx, &api.CreateKeyRequest{User: user, Policy: policy})
		if err != nil {
			t.Fatal(err)
		}
		cl, _ := api.NewClient(c.addr)
		cl.SetToken(k.Token)
		return cl
	}
	if _, err := admin.CreatePolicy(ctx, &api.PolicyRequest{Name: "tight", MaxPendingSessions: 1, MaxConcurrentSessions: 1}); err != nil {
		t.Fatal(err)
	}
	// A limit on a slot that does not exist would limit nothing: refused.
	for _, slots := range []structs.Slots{{"gpu": structs.Whole(1)}, {structs.SlotCPU: 0}} {
		_, err := admin.CreatePolicy(ctx, &api.PolicyRequest{Name: "typo", TotalResourceSlots: slots})
		if apiStatus(err) != 400 || !strings.Contains(err.Error(), "total_resource_slots") {
			t.Fatalf("policy with total_resource_slots %v: %v", slots, err)
		}
	}
	alice := keyFor("alice", "tight")
	bob := keyFor("bob", "")

	// Alice's session is hers: bob gets 404, admin sees it.
	huge := structs.Slots{structs.SlotCPU: structs.Whole(64)} // never fits: stays PENDING
	d, err := alice.CreateSession(ctx, &api.CreateSessionRequest{Name: "a1", Command: []string{"true"}, Resources: huge})
	if err != nil {
		t.Fatal(err)
	}
	if d.Session.Owner != "alice" {
		t.Fatalf("owner %q", d.Session.Owner)
	}
	if _, err := bob.GetSession(ctx, d.Session.ID); apiStatus(err) != http.StatusNotFound {
		t.Fatalf("bob reads alice's session: %v", err)
	}
	if _, err := bob.DestroySession(ctx, "a1"); apiStatus(err) != http.StatusNotFound {
		t.Fatalf("bob destroys alice's session: %v", err)
	}
	if list, err := bob.ListSessions(ctx, ""); err != nil || len(list) != 0 {
		t.Fatalf("bob's list: %v %v", list, err)
	}
	if _, err := admin.GetSession(ctx, d.Session.ID); err != nil {
		t.Fatalf("admin: %v", err)
	}
	// The policy's pending limit refuses a second pending session.
	if _, err := alice.CreateSession(ctx, &api.CreateSessionRequest{Command: []string{"true"}, Resources: huge}); apiStatus(err) != http.StatusTooManyRequests {
		t.Fatalf("second pending session: %v", err)
	}
	// Users cannot administer.
	if _, err := alice.CreateUser(ctx, &api.CreateUserRequest{Name: "mallory"}); apiStatus(err) != http.StatusForbidden {
		t.Fatalf("user creates user: %v", err)
	}
	// A key may only use its groups.
	if _, err := bob.CreateSession(ctx, &api.CreateSessionRequest{Command: []string{"true"}, ResourceGroup: "gpu"}); apiStatus(err) != http.StatusForbidden {
		t.Fatalf("group outside the key: %v", err)
	}
	// Key status shows the concurrency set.
	st, err := alice.KeyStatus(ctx, d.Session.AccessKey)
	if err != nil || st.Policy == nil || st.Policy.Name != "tight" {
		t.Fatalf("key status: %+v %v", st, err)
	}
	// A revoked key stops working.
	keys, err := admin.ListKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if k.SecretHash != "" {
			t.Fatal("key list leaks secret hashes")
		}
		if k.User == "bob" {
			if _, err := admin.RevokeKey(ctx, k.AccessKey); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := bob.ListSessions(ctx, ""); apiStatus(err) != http.StatusUnauthorized {
		t.Fatalf("revoked key: %v", err)
	}
}

func TestLifetimeAndIdleTimeout(t *testing.T) {
	c := startCluster(t, nil)
	ctx := context.Background()
	admin := c.client
	if _, err := admin.CreatePolicy(ctx, &api.PolicyRequest{Name: "short", MaxSessionLifetime: "2s"}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.CreatePolicy(ctx, &api.PolicyRequest{Name: "idle", IdleTimeout: "2s"}); err != nil {
		t.Fatal(err)
	}
	newUser := func(name, policy string) *api.Client {
		if _, err := admin.CreateUser(ctx, &api.CreateUserRequest{Name: name}); err != nil {
			t.Fatal(err)
		}
		k, err := admin.CreateKey(ctx, &api.CreateKeyRequest{User: name, Policy: policy})
		if err != nil {
			t.Fatal(err)
		}
		cl, _ := api.NewClient(c.addr)
		cl.SetToken(k.Token)
		return cl
	}
	short, idle := newUser("shorty", "short"), newUser("sleepy", "idle")
	a, err := short.CreateSession(ctx, &api.CreateSessionRequest{Type: "interactive", Command: []string{"sleep", "infinity"}, Resources: small})
	if err != nil {
		t.Fatal(err)
	}
	b, err := idle.CreateSession(ctx, &api.CreateSessionRequest{Type: "interactive", Command: []string{"sleep", "infinity"}, Resources: small})
	if err != nil {
		t.Fatal(err)
	}
	// A system session (corral's own services) idles out like an
	// interactive one.
	sys, err := idle.CreateSession(ctx, &api.CreateSessionRequest{Type: "system", Command: []string{"sleep", "infinity"}, Resources: small})
	if err != nil {
		t.Fatal(err)
	}
	for id, want := range map[string]string{a.Session.ID: "max session lifetime", b.Session.ID: "idle for 2s (no app traffic, no exec, cpu<5%)", sys.Session.ID: "idle for 2s (no app traffic, no exec, cpu<5%)"} {
		d := c.waitFor(t, id, terminal)
		if d.Session.Status != structs.SessionTerminated || !strings.Contains(d.Session.StatusInfo, want) {
			t.Fatalf("session %s: %s %q, want reason with %q", id, d.Session.Status, d.Session.StatusInfo, want)
		}
	}
}

// TestIdleTimeoutSparesBusyKernel: under one policy, a session whose kernel
// burns CPU (and so never idles) outlives an idle one, which the idle
// timeout ends; the busy one's remaining idle time shows in its detail.
func TestIdleTimeoutSparesBusyKernel(t *testing.T) {
	c := startCluster(t, nil)
	ctx := context.Background()
	admin := c.client
	if _, err := admin.CreatePolicy(ctx, &api.PolicyRequest{Name: "idle4", IdleTimeout: "4s", MaxSessionLifetime: "1h"}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.CreateUser(ctx, &api.CreateUserRequest{Name: "worker"}); err != nil {
		t.Fatal(err)
	}
	k, err := admin.CreateKey(ctx, &api.CreateKeyRequest{User: "worker", Policy: "idle4"})
	if err != nil {
		t.Fatal(err)
	}
	u, _ := api.NewClient(c.addr)
	u.SetToken(k.Token)
	busy, err := u.CreateSession(ctx, &api.CreateSessionRequest{Type: "interactive", Command: []string{"sh", "-c", "while :; do :; done"}, Resources: small})
	if err != nil {
		t.Fatal(err)
	}
	running := func(d *api.SessionDetail) bool {
		return d.Session.Status == structs.SessionRunning || d.Session.Status.Terminal()
	}
	if d := c.waitFor(t, busy.Session.ID, running); d.Session.Status != structs.SessionRunning {
		t.Fatalf("busy session: %s %q", d.Session.Status, d.Session.StatusInfo)
	}
	// The idle session starts after the busy one runs: when the idle
	// timeout ends it, the busy one has run longer than the timeout.
	idle, err := u.CreateSession(ctx, &api.CreateSessionRequest{Type: "interactive", Command: []string{"sleep", "infinity"}, Resources: small})
	if err != nil {
		t.Fatal(err)
	}
	d := c.waitFor(t, idle.Session.ID, terminal)
	if want := "idle for 4s (no app traffic, no exec, cpu<5%)"; d.Session.Status != structs.SessionTerminated || !strings.Contains(d.Session.StatusInfo, want) {
		t.Fatalf("idle session: %s %q, want TERMINATED with %q", d.Session.Status, d.Session.StatusInfo, want)
	}
	b, err := u.GetSession(ctx, busy.Session.ID)
	if err != nil {
		t.Fatal(err)
	}
	if b.Session.Status != structs.SessionRunning {
		t.Fatalf("busy session: %s %q, want it RUNNING", b.Session.Status, b.Session.StatusInfo)
	}
	if b.IdleRemaining == "" || b.LifetimeRemaining == "" {
		t.Fatalf("busy session detail lacks the remaining idle time or lifetime: %q %q", b.IdleRemaining, b.LifetimeRemaining)
	}
	if left, err := time.ParseDuration(b.IdleRemaining); err != nil || left > 4*time.Second {
		t.Fatalf("idle_remaining %q: want a duration up to 4s", b.IdleRemaining)
	}
	if left, err := time.ParseDuration(b.LifetimeRemaining); err != nil || left <= 50*time.Minute {
		t.Fatalf("lifetime_remaining %q: want about 1h", b.LifetimeRemaining)
	}
}

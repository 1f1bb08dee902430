package server_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/structs"
)

// TestEventsEndpointTopic: an endpoint's create, change and delete reach
// the endpoint topic in order, with the stored endpoint as payload; a user
// sees their own endpoints' events only, an admin every one.
func TestEventsEndpointTopic(t *testing.T) {
	dir := t.TempDir()
	srv := startServer(t, dir)
	t.Cleanup(srv.Shutdown)
	admin := client(t, srv, dir)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	keyFor := func(user string) *api.Client {
		t.Helper()
		if _, err := admin.CreateUser(ctx, &api.CreateUserRequest{Name: user}); err != nil {
			t.Fatal(err)
		}
		k, err := admin.CreateKey(ctx, &api.CreateKeyRequest{User: user})
		if err != nil {
			t.Fatal(err)
		}
		return apiClient(t, srv.HTTPAddr(), k.Token)
	}
	alice, bob := keyFor("alice"), keyFor("bob")

	// An unknown topic is still refused, and names endpoint among the known.
	if err := admin.Events(ctx, []string{"endpoints"}, 0, func(*api.EventBatch) error { return nil }); err == nil || !strings.Contains(err.Error(), "endpoint") {
		t.Fatalf("unknown topic: %v", err)
	}

	// Alice's endpoint: created, scaled, deleted. Replicas stay PENDING
	// (no agent): only the endpoint's rows matter here.
	if _, err := alice.CreateEndpoint(ctx, &api.CreateEndpointRequest{Name: "ep1", Driver: "exec", Command: []string{"sleep", "600"}, Port: 8080, Replicas: 1, MaxReplicas: 4, Resources: small}); err != nil {
		t.Fatal(err)
	}
	two := 2
	if _, err := alice.UpdateEndpoint(ctx, "ep1", &api.UpdateEndpointRequest{Replicas: &two}); err != nil {
		t.Fatal(err)
	}
	if err := alice.DeleteEndpoint(ctx, "ep1"); err != nil {
		t.Fatal(err)
	}
	// Bob's endpoint comes last: his stream stops on it.
	if _, err := bob.CreateEndpoint(ctx, &api.CreateEndpointRequest{Name: "bob-ep", Driver: "exec", Command: []string{"sleep", "600"}, Port: 8080, Replicas: 1, Resources: small}); err != nil {
		t.Fatal(err)
	}

	type seen struct {
		typ      string
		name     string
		replicas int
		owner    string
	}
	collect := func(c *api.Client, until string) []seen {
		t.Helper()
		var out []seen
		var f followed
		err := follow(ctx, c, []string{api.TopicEndpoint}, 1, &f, func(b *api.EventBatch) bool {
			done := false
			for _, e := range b.Events {
				if e.Topic != api.TopicEndpoint {
					t.Errorf("event of topic %q on an endpoint-only stream", e.Topic)
					continue
				}
				var ep structs.Endpoint
				if err := json.Unmarshal(e.Payload, &ep); err != nil {
					t.Fatalf("endpoint payload: %v", err)
				}
				if ep.Name != e.Key {
					t.Errorf("event key %q, payload name %q", e.Key, ep.Name)
				}
				out = append(out, seen{e.Type, ep.Name, ep.Replicas, ep.Owner})
				done = done || (ep.Name == until && e.Type == "created")
			}
			return done
		})
		if err != nil {
			t.Fatal(err)
		}
		return out
	}

	want := []seen{
		{"created", "ep1", 1, "alice"},
		{"updated", "ep1", 2, "alice"},
		{"deleted", "ep1", 2, "alice"},
		{"created", "bob-ep", 1, "bob"},
	}
	got := collect(admin, "bob-ep")
	if !equalSeen(got, want) {
		t.Fatalf("admin saw %+v, want %+v", got, want)
	}
	if got := collect(bob, "bob-ep"); !equalSeen(got, want[3:]) {
		t.Fatalf("bob saw %+v, want only his own %+v", got, want[3:])
	}
	// Alice follows from now: nothing of hers is left to see, and bob's
	// later change is not hers either; her new endpoint is.
	if _, err := alice.CreateEndpoint(ctx, &api.CreateEndpointRequest{Name: "ep2", Driver: "exec", Command: []string{"sleep", "600"}, Port: 8080, Replicas: 1, Resources: small}); err != nil {
		t.Fatal(err)
	}
	if got := collect(alice, "ep2"); !equalSeen(got, append(want[:3:3], seen{"created", "ep2", 1, "alice"})) {
		t.Fatalf("alice saw %+v", got)
	}
}

func equalSeen[T comparable](a, b []T) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

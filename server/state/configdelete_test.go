package state

import (
	"errors"
	"strings"
	"testing"

	"github.com/corral-dev/corral/structs"
)

// TestDeleteConfigRefusedWhileInUse: users, policies and groups in use
// are refused with what uses them, nothing changed (all or nothing);
// once unused they go, a user with its keys and their usage.
func TestDeleteConfigRefusedWhileInUse(t *testing.T) {
	f := newFixture(t)
	err := f.s.UpsertConfig(f.next(), &structs.ConfigUpsertRequest{
		Users: []*structs.User{{Name: "alice"}, {Name: "bob"}, {Name: "dave"}},
		Keys: []*structs.AccessKey{{AccessKey: "KA", SecretHash: "h", User: "alice", Policy: "p1"},
			{AccessKey: "KB", SecretHash: "h", User: "bob", Policy: "p2"}},
		Policies: []*structs.ResourcePolicy{{Name: "p1"}, {Name: "p2"}},
		Groups:   []*structs.ResourceGroup{{Name: "gpu"}, {Name: "idle"}, {Name: "busy"}, {Name: "store"}},
		Time:     t0,
	})
	if err != nil {
		t.Fatal(err)
	}
	a := &structs.Agent{ID: "ag1", Name: "node-1", Status: structs.AgentAlive, ResourceGroup: "gpu", Drivers: []string{"exec"}, Capacity: slots(4, 1024)}
	if err := f.s.UpsertAgent(f.next(), &structs.AgentUpsertRequest{Agent: a, Time: t0}); err != nil {
		t.Fatal(err)
	}
	sess := &structs.Session{ID: "s1", Type: structs.SessionTypeBatch, ResourceGroup: "busy", Owner: "alice", AccessKey: "KA"}
	k := &structs.Kernel{ID: "s1-k", SessionID: "s1", Role: "main", Idx: 1, Hostname: "main1", Driver: "exec", Command: []string{"true"}, Resources: slots(1, 64)}
	if err := f.s.EnqueueSession(f.next(), &structs.SessionEnqueueRequest{Session: sess, Kernels: []*structs.Kernel{k}, Time: t0}); err != nil {
		t.Fatal(err)
	}
	// dave owns a volume (on group store) and a template.
	vol := &structs.Volume{ID: structs.VolumeID("dave", "data"), Name: "data", Owner: "dave", Backend: "local", ResourceGroup: "store"}
	if err := f.s.UpsertVolume(f.next(), &structs.VolumeUpsertRequest{Volume: vol, Create: true, Time: t0}); err != nil {
		t.Fatal(err)
	}
	tmpl := &structs.Template{ID: structs.TemplateID("dave", "train"), Name: "train", Owner: "dave", Source: "image = \"x\""}
	if err := f.s.UpsertTemplate(f.next(), &structs.TemplateUpsertRequest{Template: tmpl, Time: t0}); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name string
		req  structs.ConfigDeleteRequest
		want error
		why  []string
	}{
		{"user with a pending session", structs.ConfigDeleteRequest{Users: []string{"alice"}}, ErrInUse, []string{"user alice has 1 session that have not ended (s1)"}},
		{"policy on a key", structs.ConfigDeleteRequest{Policies: []string{"p1"}}, ErrInUse, []string{"policy p1 is applied to 1 access key (KA)"}},
		{"group with an agent", structs.ConfigDeleteRequest{Groups: []string{"gpu"}}, ErrInUse, []string{"group gpu has 1 agent (node-1)"}},
		{"group with a pending session", structs.ConfigDeleteRequest{Groups: []string{"busy"}}, ErrInUse, []string{"group busy has 1 session that have not ended (s1)"}},
		// One name in use refuses the whole request: idle and bob stay.
		{"all or nothing", structs.ConfigDeleteRequest{Users: []string{"bob"}, Groups: []string{"idle", "gpu"}}, ErrInUse, []string{"group gpu has 1 agent"}},
		{"user with a volume and a template", structs.ConfigDeleteRequest{Users: []string{"dave"}}, ErrInUse, []string{"user dave owns volume data", "user dave owns template train"}},
		{"group with a volume", structs.ConfigDeleteRequest{Groups: []string{"store"}}, ErrInUse, []string{"group store holds volume dave/data"}},
		{"unknown user", structs.ConfigDeleteRequest{Users: []string{"carol"}}, ErrNotFound, nil},
		{"unknown group", structs.ConfigDeleteRequest{Groups: []string{"nope"}}, ErrNotFound, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := f.s.DeleteConfig(f.next(), &tc.req)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err %v, want %v", err, tc.want)
			}
			for _, w := range tc.why {
				if !strings.Contains(err.Error(), w) {
					t.Fatalf("err %q lacks %q", err, w)
				}
			}
		})
	}
	sn := f.s.Snapshot()
	for _, name := range []string{"alice", "bob"} {
		if _, err := sn.User(name); err != nil {
			t.Fatalf("user %s after refused deletes: %v", name, err)
		}
	}
	if _, err := sn.Group("idle"); err != nil {
		t.Fatalf("group idle after the refused delete: %v", err)
	}

	// Unused: bob (his key goes with him), the policy only his key had,
	// an empty group; in one request.
	if err := f.s.DeleteConfig(f.next(), &structs.ConfigDeleteRequest{Users: []string{"bob"}, Policies: []string{"p2"}, Groups: []string{"idle"}}); err != nil {
		t.Fatal(err)
	}
	sn = f.s.Snapshot()
	if _, err := sn.User("bob"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("bob after the delete: %v", err)
	}
	if _, err := sn.Key("KB"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("bob's key after the delete: %v", err)
	}
	if _, err := sn.Policy("p2"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("p2 after the delete: %v", err)
	}
	if _, err := sn.Group("idle"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("idle after the delete: %v", err)
	}
	if _, err := sn.Key("KA"); err != nil {
		t.Fatalf("alice's key: %v", err)
	}

	// A LOST agent holds its group no longer.
	lost := *a
	lost.Status = structs.AgentLost
	if err := f.s.UpsertAgent(f.next(), &structs.AgentUpsertRequest{Agent: &lost, Time: t0}); err != nil {
		t.Fatal(err)
	}
	if err := f.s.DeleteConfig(f.next(), &structs.ConfigDeleteRequest{Groups: []string{"gpu"}}); err != nil {
		t.Fatalf("group of a LOST agent: %v", err)
	}
}

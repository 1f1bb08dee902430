package state

import (
	"errors"
	"reflect"
	"testing"

	"github.com/corral-dev/corral/structs"
)

func TestVolumesCreateDeleteInUseAndRestore(t *testing.T) {
	f := newFixture(t)
	v := &structs.Volume{ID: "alice/data", Name: "data", Owner: "alice", Backend: "local", CreatedAt: t0}
	if err := f.s.UpsertVolume(f.next(), &structs.VolumeUpsertRequest{Volume: v, Create: true, Time: t0}); err != nil {
		t.Fatal(err)
	}
	if err := f.s.UpsertVolume(f.next(), &structs.VolumeUpsertRequest{Volume: v, Create: true, Time: t0}); !errors.Is(err, ErrVolumeExists) {
		t.Fatalf("second create: %v, want ErrVolumeExists", err)
	}
	bad := v.Copy()
	bad.ID = "bob/data"
	if err := f.s.UpsertVolume(f.next(), &structs.VolumeUpsertRequest{Volume: bad, Time: t0}); err == nil {
		t.Fatal("a volume whose ID is not owner/name was stored")
	}
	if err := f.s.SetSSHKeys(f.next(), &structs.SSHKeysSetRequest{User: "alice", Keys: []string{"ssh-ed25519 AAAA"}, Time: t0}); err != nil {
		t.Fatal(err)
	}

	// A live session that mounts it keeps it from being deleted.
	sess := &structs.Session{ID: "s1", Type: structs.SessionTypeBatch, ResourceGroup: structs.DefaultResourceGroup, Volumes: []string{"alice/data"}}
	k := &structs.Kernel{ID: "s1-k", SessionID: "s1", Role: "main", Idx: 1, Hostname: "main1", Driver: "exec", Command: []string{"true"}, Resources: slots(1, 64),
		Volumes: []structs.VolumeMount{{Volume: "alice/data", Backend: "local", Dir: "alice/data", Target: "/d"}}}
	if err := f.s.EnqueueSession(f.next(), &structs.SessionEnqueueRequest{Session: sess, Kernels: []*structs.Kernel{k}, Time: t0}); err != nil {
		t.Fatal(err)
	}
	if err := f.s.DeleteVolume(f.next(), &structs.VolumeDeleteRequest{ID: "alice/data", Time: t0}); !errors.Is(err, ErrVolumeInUse) {
		t.Fatalf("delete while mounted: %v, want ErrVolumeInUse", err)
	}

	// Snapshot and restore keep volumes, keys and the sessions' index.
	d, err := f.s.Snapshot().Dump()
	if err != nil {
		t.Fatal(err)
	}
	restored, _ := New()
	if err := restored.Restore(d); err != nil {
		t.Fatal(err)
	}
	got, err := restored.Snapshot().Volume("alice/data")
	if err != nil || got.Backend != "local" {
		t.Fatalf("restored volume %+v, %v", got, err)
	}
	if keys, _ := restored.Snapshot().SSHKeys("alice"); !reflect.DeepEqual(keys, []string{"ssh-ed25519 AAAA"}) {
		t.Fatalf("restored keys %v", keys)
	}
	if users, _ := restored.Snapshot().VolumeSessions("alice/data"); len(users) != 1 {
		t.Fatalf("restored sessions of the volume: %v", users)
	}

	// Once the session ended, the delete goes through.
	if err := f.s.DestroySession(f.next(), &structs.SessionDestroyRequest{SessionID: "s1", Reason: "test", Time: t0}); err != nil {
		t.Fatal(err)
	}
	if err := f.s.DeleteVolume(f.next(), &structs.VolumeDeleteRequest{ID: "alice/data", Time: t0}); err != nil {
		t.Fatalf("delete after the session ended: %v", err)
	}
	if _, err := f.s.Snapshot().Volume("alice/data"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("volume after delete: %v", err)
	}
}

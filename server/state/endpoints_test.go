package state

import (
	"errors"
	"reflect"
	"testing"

	"github.com/corral-dev/corral/structs"
)

// replica enqueues a replica session of an endpoint.
func (f *fixture) replica(id, endpoint string, gen int) {
	f.t.Helper()
	sess := &structs.Session{ID: id, Type: structs.SessionTypeInference, ResourceGroup: structs.DefaultResourceGroup, Endpoint: endpoint, EndpointGeneration: gen}
	k := &structs.Kernel{ID: id + "-k", SessionID: id, Role: "main", Idx: 1, Hostname: "main1", Driver: "exec", Command: []string{"srv"}, Resources: slots(1, 64)}
	if err := f.s.EnqueueSession(f.next(), &structs.SessionEnqueueRequest{Session: sess, Kernels: []*structs.Kernel{k}, Time: t0}); err != nil {
		f.t.Fatal(err)
	}
}

func TestEndpointUpsertReplicasAndDelete(t *testing.T) {
	f := newFixture(t)
	f.agent("a1", slots(8, 4096))
	e := &structs.Endpoint{Name: "llm", Owner: "alice", Image: "img:1", Port: 8000, HealthPath: "/healthz", Replicas: 2, MinReplicas: 1, MaxReplicas: 4, Generation: 1, CreatedAt: t0}
	if err := f.s.UpsertEndpoint(f.next(), &structs.EndpointUpsertRequest{Endpoint: e, Time: t0}); err != nil {
		t.Fatal(err)
	}
	created := f.index
	// A second write replaces the record and keeps its create index.
	e2 := e.Copy()
	e2.Replicas = 3
	e2.AddEvent(structs.EndpointEvent{Time: t0, Kind: "scale", From: 2, To: 3, Reason: "test"})
	if err := f.s.UpsertEndpoint(f.next(), &structs.EndpointUpsertRequest{Endpoint: e2, Time: t0}); err != nil {
		t.Fatal(err)
	}
	got, err := f.s.Snapshot().Endpoint(nil, "llm")
	if err != nil {
		t.Fatal(err)
	}
	if got.Replicas != 3 || got.CreateIndex != created || got.ModifyIndex != f.index || len(got.Events) != 1 {
		t.Fatalf("endpoint after update: %+v", got)
	}

	f.replica("r1", "llm", 1)
	f.replica("r2", "llm", 1)
	f.session("other", structs.SessionTypeBatch, slots(1, 64))
	f.place("r1", "a1")
	reps, err := f.s.Snapshot().EndpointReplicas(nil, "llm")
	if err != nil || len(reps) != 2 {
		t.Fatalf("replicas %v, %v", reps, err)
	}

	// Snapshot and restore keep the endpoint and the replica index.
	d, err := f.s.Snapshot().Dump()
	if err != nil {
		t.Fatal(err)
	}
	restored, _ := New()
	if err := restored.Restore(d); err != nil {
		t.Fatal(err)
	}
	back, err := restored.Snapshot().Endpoint(nil, "llm")
	if err != nil || !reflect.DeepEqual(back, got) {
		t.Fatalf("restored endpoint %+v (%v), want %+v", back, err, got)
	}
	if reps, _ := restored.Snapshot().EndpointReplicas(nil, "llm"); len(reps) != 2 {
		t.Fatalf("restored replicas: %d", len(reps))
	}

	// Delete ends the replicas (placed: TERMINATING; pending: CANCELLED)
	// and leaves other sessions alone.
	if err := f.s.DeleteEndpoint(f.next(), &structs.EndpointDeleteRequest{Name: "llm", Reason: "gone", Time: t0}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.s.Snapshot().Endpoint(nil, "llm"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("endpoint after delete: %v", err)
	}
	if st := f.sess("r1").Status; st != structs.SessionTerminating {
		t.Errorf("placed replica %s, want TERMINATING", st)
	}
	if st := f.sess("r2").Status; st != structs.SessionCancelled {
		t.Errorf("pending replica %s, want CANCELLED", st)
	}
	if st := f.sess("other").Status; st != structs.SessionPending {
		t.Errorf("unrelated session %s, want PENDING", st)
	}
	if err := f.s.DeleteEndpoint(f.next(), &structs.EndpointDeleteRequest{Name: "llm", Time: t0}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
}

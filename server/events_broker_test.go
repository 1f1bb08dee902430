package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/server/state"
	"github.com/corral-dev/corral/structs"
)

// sessionChanges makes n session changes owned by owner.
func sessionChanges(n int, owner string, seq int) []state.Change {
	out := make([]state.Change, n)
	for i := range out {
		id := fmt.Sprintf("s-%d-%d", seq, i)
		out[i] = state.Change{Table: state.TableSessions, Key: id, Owner: owner,
			Obj: &structs.Session{ID: id, Owner: owner, Status: structs.SessionPending}}
	}
	return out
}

func TestEventBrokerRingAndReset(t *testing.T) {
	b := newEventBroker(4)
	for i := uint64(1); i <= 3; i++ {
		b.publish(i*10, sessionChanges(2, "alice", int(i)))
	}
	// 6 events published, 4 held: index 10's batch left the ring.
	if _, _, err := b.start(5, 30); !isGone(err) {
		t.Fatalf("start at 5 after the ring dropped index 10: %v", err)
	}
	cursor, epoch, err := b.start(10, 30)
	if err != nil || cursor != 10 {
		t.Fatalf("start at 10: %d %v", cursor, err)
	}
	got, _, _, err := b.since(cursor, epoch, 100)
	if err != nil || len(got) != 2 || got[0].index != 20 || got[1].index != 30 {
		t.Fatalf("since 10: %+v %v", got, err)
	}
	// index 0 starts at the newest applied index.
	if c, _, _ := b.start(0, 35); c != 35 {
		t.Fatalf("start at 0: %d, want 35", c)
	}
	// A raft restore: streams of the old epoch are told to reload.
	b.reset(100)
	if _, _, _, err := b.since(30, epoch, 10); !isGone(err) {
		t.Fatalf("since after a reset: %v", err)
	}
	if _, _, err := b.start(99, 100); !isGone(err) {
		t.Fatalf("start before the restored index: %v", err)
	}
	// Only sessions and kernels of one's own; nodes for everyone.
	f := &eventFilter{topics: map[string]bool{api.TopicSession: true, api.TopicNode: true}, owner: "bob"}
	for _, tc := range []struct {
		e    *event
		want bool
	}{
		{&event{topic: api.TopicSession, owner: "bob"}, true},
		{&event{topic: api.TopicSession, owner: "alice"}, false},
		{&event{topic: api.TopicKernel, owner: "bob"}, false}, // topic not asked
		{&event{topic: api.TopicNode}, true},
		{&event{topic: api.TopicSession, owner: ""}, false},
	} {
		if got := f.allows(tc.e); got != tc.want {
			t.Errorf("bob's filter on %s of %q: %v", tc.e.topic, tc.e.owner, got)
		}
	}
}

func TestEventPayloadIsTheAPIView(t *testing.T) {
	k := &structs.Kernel{ID: "k1", SessionID: "s1", Launch: &structs.ClusterLaunch{SSHPrivateKey: "-----BEGIN OPENSSH PRIVATE KEY----- secret"}}
	e := &event{index: 7, topic: api.TopicKernel, typ: "updated", key: "k1", obj: k}
	got := string(e.json())
	if strings.Contains(got, "secret") || !strings.Contains(got, "(redacted)") {
		t.Fatalf("kernel event payload: %s", got)
	}
	if k.Launch.SSHPrivateKey == "(redacted)" {
		t.Fatal("redacting the event changed the stored kernel")
	}
}

func isGone(err error) bool {
	var g *errEventsGone
	return errors.As(err, &g)
}

// BenchmarkEventsFanout100 measures events delivered per second to 100
// followers over HTTP (the SSE writer and the api client's parser), one
// batch of 10 session changes per raft index.
func BenchmarkEventsFanout100(b *testing.B) {
	const followers, perBatch = 100, 10
	broker := newEventBroker(b.N*perBatch + 1)
	stop := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		f := &eventFilter{topics: map[string]bool{api.TopicSession: true}, admin: true}
		broker.stream(r.Context(), stop, w, w.(http.Flusher), 0, 0, f)
	}))
	defer srv.Close()
	defer close(stop)
	batches := b.N
	var delivered atomic.Int64
	var wg sync.WaitGroup
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	opened := make(chan struct{}, followers)
	for i := 0; i < followers; i++ {
		c, _ := api.NewClient(srv.URL)
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := 0
			opened <- struct{}{}
			_ = c.Events(ctx, nil, 0, func(batch *api.EventBatch) error {
				delivered.Add(int64(len(batch.Events)))
				if n++; n == batches {
					return errors.New("done")
				}
				return nil
			})
		}()
	}
	for i := 0; i < followers; i++ {
		<-opened
	}
	// Streams open at index 0: every batch from index 1 on reaches them.
	b.ResetTimer()
	start := time.Now()
	for i := 1; i <= batches; i++ {
		broker.publish(uint64(i), sessionChanges(perBatch, "u", i))
	}
	wg.Wait()
	el := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(delivered.Load())/el.Seconds(), "events/s")
	b.ReportMetric(float64(delivered.Load())/float64(followers*batches*perBatch), "delivered/published")
}

// TestRestoreResetsTheEventStream: a raft snapshot restore replaces the
// whole state, so streams that followed the old one must reload, and the
// ring starts after the restored index.
func TestRestoreResetsTheEventStream(t *testing.T) {
	src, _ := testFSM(t)
	t0 := time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)
	for i := uint64(1); i <= 3; i++ {
		id := fmt.Sprintf("s%d", i)
		req := &structs.SessionEnqueueRequest{Session: &structs.Session{ID: id, Type: structs.SessionTypeBatch, ResourceGroup: "default", Owner: "u"},
			Kernels: []*structs.Kernel{{ID: id + "-k", SessionID: id, Role: "main", Idx: 1, Hostname: "main1", Driver: "exec", Command: []string{"true"}}}, Time: t0}
		if err := src.state.EnqueueSession(i*10, req); err != nil {
			t.Fatal(err)
		}
	}
	snap, err := src.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var sink memSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}

	dst, _ := testFSM(t)
	b := newEventBroker(0)
	dst.state.SetCommitHook(b.publish)
	dst.restored = b.reset
	if err := dst.state.EnqueueSession(5, &structs.SessionEnqueueRequest{Session: &structs.Session{ID: "old", Type: structs.SessionTypeBatch, ResourceGroup: "default", Owner: "u"},
		Kernels: []*structs.Kernel{{ID: "old-k", SessionID: "old", Role: "main", Idx: 1, Hostname: "main1", Driver: "exec", Command: []string{"true"}}}, Time: t0}); err != nil {
		t.Fatal(err)
	}
	cursor, epoch, err := b.start(1, 5)
	if err != nil {
		t.Fatal(err)
	}
	if got, _, _, err := b.since(cursor, epoch, 10); err != nil || len(got) != 1 || got[0].index != 5 {
		t.Fatalf("before the restore: %+v %v", got, err)
	}
	if err := dst.Restore(io.NopCloser(&sink.Buffer)); err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := b.since(cursor, epoch, 10); !isGone(err) {
		t.Fatalf("a stream of the old state after the restore: %v", err)
	}
	if _, _, err := b.start(29, 30); !isGone(err) {
		t.Fatalf("start before the restored index 30: %v", err)
	}
	if c, _, err := b.start(30, 30); err != nil || c != 30 {
		t.Fatalf("start at the restored index: %d %v", c, err)
	}
}

package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/server"
	"github.com/corral-dev/corral/structs"
)

// followed is what one follower of /v1/events collected.
type followed struct {
	mu      sync.Mutex
	batches []api.EventBatch
}

func (f *followed) add(b *api.EventBatch) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.batches = append(f.batches, *b)
}

func (f *followed) all() []api.EventBatch {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.batches)
}

// sessionOf returns the session ID an event concerns.
func sessionOf(t *testing.T, e api.Event) string {
	t.Helper()
	switch e.Topic {
	case api.TopicSession:
		return e.Key
	case api.TopicKernel:
		var k structs.Kernel
		if err := json.Unmarshal(e.Payload, &k); err != nil {
			t.Fatalf("kernel payload: %v", err)
		}
		return k.SessionID
	}
	return ""
}

// sessionStatus decodes a session event's status.
func sessionStatus(t *testing.T, e api.Event) (*structs.Session, bool) {
	t.Helper()
	if e.Topic != api.TopicSession {
		return nil, false
	}
	var s structs.Session
	if err := json.Unmarshal(e.Payload, &s); err != nil {
		t.Fatalf("session payload: %v", err)
	}
	return &s, true
}

// follow runs c.Events from index until until(batch) says stop.
func follow(ctx context.Context, c *api.Client, topics []string, index uint64, f *followed, until func(*api.EventBatch) bool) error {
	stop := errors.New("stop")
	err := c.Events(ctx, topics, index, func(b *api.EventBatch) error {
		f.add(b)
		if until(b) {
			return stop
		}
		return nil
	})
	if errors.Is(err, stop) {
		return nil
	}
	return err
}

func TestEventsFollowSessionResumeAndOwnership(t *testing.T) {
	c := startCluster(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	keyFor := func(user string) *api.Client {
		t.Helper()
		if _, err := c.client.CreateUser(ctx, &api.CreateUserRequest{Name: user}); err != nil {
			t.Fatal(err)
		}
		k, err := c.client.CreateKey(ctx, &api.CreateKeyRequest{User: user})
		if err != nil {
			t.Fatal(err)
		}
		cl, _ := api.NewClient(c.addr)
		cl.SetToken(k.Token)
		return cl
	}
	alice, bob := keyFor("alice"), keyFor("bob")

	a, err := alice.CreateSession(ctx, &api.CreateSessionRequest{Type: "batch", Command: []string{"sh", "-c", "sleep 0.5"}, Resources: small})
	if err != nil {
		t.Fatal(err)
	}
	b, err := bob.CreateSession(ctx, &api.CreateSessionRequest{Type: "batch", Command: []string{"true"}, Resources: small})
	if err != nil {
		t.Fatal(err)
	}
	aID, bID := a.Session.ID, b.Session.ID
	ended := func(id string) func(*api.EventBatch) bool {
		return func(batch *api.EventBatch) bool {
			for _, e := range batch.Events {
				if s, ok := sessionStatus(t, e); ok && s.ID == id && s.Status == structs.SessionTerminated {
					return true
				}
			}
			return false
		}
	}

	// The admin follows everything from the first index, uninterrupted,
	// until both sessions ended: the reference.
	var ref followed
	refDone := make(chan error, 1)
	go func() {
		seen := map[string]bool{}
		refDone <- follow(ctx, c.client, nil, 1, &ref, func(batch *api.EventBatch) bool {
			for id := range map[string]bool{aID: true, bID: true} {
				if ended(id)(batch) {
					seen[id] = true
				}
			}
			return seen[aID] && seen[bID]
		})
	}()
	// Bob follows sessions and kernels until his session ended.
	var bobs followed
	bobDone := make(chan error, 1)
	go func() { bobDone <- follow(ctx, bob, []string{"session", "kernel"}, 1, &bobs, ended(bID)) }()

	// Alice follows until her session left PENDING, disconnects, then
	// resumes from the last index she got until it ended.
	var first, second followed
	err = follow(ctx, alice, []string{"session", "kernel"}, 1, &first, func(batch *api.EventBatch) bool {
		for _, e := range batch.Events {
			if s, ok := sessionStatus(t, e); ok && s.ID == aID && s.Status != structs.SessionPending {
				return true
			}
		}
		return false
	})
	if err != nil {
		t.Fatalf("alice's first stream: %v", err)
	}
	got1 := first.all()
	last := got1[len(got1)-1].Index
	if err := follow(ctx, alice, []string{"session", "kernel"}, last, &second, ended(aID)); err != nil {
		t.Fatalf("alice's resumed stream from index %d: %v", last, err)
	}
	if err := <-refDone; err != nil {
		t.Fatalf("admin stream: %v", err)
	}
	if err := <-bobDone; err != nil {
		t.Fatalf("bob's stream: %v", err)
	}

	// Alice's two streams: indexes strictly increasing (none repeated),
	// only her session's events.
	alices := append(got1, second.all()...)
	var prev uint64
	var aliceEvents []string
	for _, batch := range alices {
		if batch.Index <= prev {
			t.Fatalf("alice got index %d after %d: repeated or out of order", batch.Index, prev)
		}
		prev = batch.Index
		for _, e := range batch.Events {
			if id := sessionOf(t, e); id != aID {
				t.Fatalf("alice saw a %s event of session %s, not hers", e.Topic, id)
			}
			aliceEvents = append(aliceEvents, eventKey(e))
		}
	}
	// The reference's events of alice's session, up to where her resumed
	// stream stopped: exactly hers, none missed.
	var want []string
	for _, batch := range ref.all() {
		if batch.Index > prev {
			break
		}
		for _, e := range batch.Events {
			if (e.Topic == api.TopicSession || e.Topic == api.TopicKernel) && sessionOf(t, e) == aID {
				want = append(want, eventKey(e))
			}
		}
	}
	if !slices.Equal(aliceEvents, want) {
		t.Fatalf("alice's events across the reconnect differ from the uninterrupted stream:\n got %v\nwant %v", aliceEvents, want)
	}
	t.Logf("alice: %d events in %d+%d batches (resumed at %d), bob: %d batches, reference: %d batches", len(aliceEvents), len(got1), len(second.all()), last, len(bobs.all()), len(ref.all()))
	// Her session's status changes, in order, are its status history.
	var statuses []string
	for _, batch := range alices {
		for _, e := range batch.Events {
			if s, ok := sessionStatus(t, e); ok {
				statuses = append(statuses, string(s.Status))
			}
		}
	}
	d, err := alice.GetSession(ctx, aID)
	if err != nil {
		t.Fatal(err)
	}
	var history []string
	for _, h := range d.Session.History {
		history = append(history, h.Status)
	}
	if !slices.Equal(slices.Compact(statuses), slices.Compact(history)) {
		t.Fatalf("statuses through events %v, status history %v", statuses, history)
	}
	if statuses[0] != string(structs.SessionPending) || statuses[len(statuses)-1] != string(structs.SessionTerminated) {
		t.Fatalf("statuses through events %v: want PENDING ... TERMINATED", statuses)
	}
	// Bob never saw alice's session or its kernels.
	for _, batch := range bobs.all() {
		for _, e := range batch.Events {
			if id := sessionOf(t, e); id != bID {
				t.Fatalf("bob saw a %s event of session %s", e.Topic, id)
			}
		}
	}
}

// eventKey identifies one event for comparing streams.
func eventKey(e api.Event) string {
	return fmt.Sprintf("%d/%s/%s/%s", e.Index, e.Topic, e.Type, e.Key)
}

func TestEventsGoneAndBadRequests(t *testing.T) {
	dir := t.TempDir()
	srv := startServerCfg(t, dir, func(c *server.Config) { c.EventRing = 2 })
	a := startAgent(t, t.TempDir(), srv.SerfAddr(), nil)
	t.Cleanup(func() {
		a.StopKernels(5 * time.Second)
		a.Shutdown()
		srv.Shutdown()
	})
	cl := &cluster{srv: srv, agent: a, client: client(t, srv, dir), addr: "http://" + srv.HTTPAddr(), token: mustToken(dir)}
	cl.waitAgentAlive(t, a.ID())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d := create(t, cl, &api.CreateSessionRequest{Type: "batch", Command: []string{"true"}, Resources: small})
	cl.waitFor(t, d.Session.ID, terminal)

	get := func(query string, token string) (*http.Response, string) {
		t.Helper()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, cl.addr+"/v1/events"+query, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if resp.Header.Get("Content-Type") == "text/event-stream" {
			return resp, ""
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp, string(body)
	}
	// The ring holds 2 events: index 1 is long gone.
	resp, body := get("?index=1", cl.token)
	if resp.StatusCode != http.StatusGone || !strings.Contains(body, "reload the state") {
		t.Fatalf("index 1 with a ring of 2: %d %s", resp.StatusCode, body)
	}
	err := cl.client.Events(ctx, nil, 1, func(*api.EventBatch) error { return nil })
	if !api.IsGone(err) {
		t.Fatalf("client on a gone index: %v", err)
	}
	for _, tc := range []struct {
		query, token string
		code         int
		says         string
	}{
		{"?topic=sessions", cl.token, 400, "unknown event topic"},
		{"?index=x", cl.token, 400, "raft index"},
		{"", "", 401, "credentials"},
	} {
		resp, body := get(tc.query, tc.token)
		if resp.StatusCode != tc.code || !strings.Contains(body, tc.says) {
			t.Fatalf("%q: %d %s, want %d saying %q", tc.query, resp.StatusCode, body, tc.code, tc.says)
		}
	}
	// Last-Event-ID resumes like ?index=: from a held index the stream opens.
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, cl.addr+"/v1/events", nil)
	req.Header.Set("Authorization", "Bearer "+cl.token)
	req.Header.Set("Last-Event-ID", "1")
	resp2, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp2.Body.Close()
	if resp2.StatusCode != http.StatusGone {
		t.Fatalf("Last-Event-ID 1: %d, want 410", resp2.StatusCode)
	}
}

// TestEventsServedByFollowersResumeOnAnother: every server serves its own
// stream (no forwarding), under the cluster's raft indexes, so a stream
// broken on one follower resumes on another without a gap or a repeat.
func TestEventsServedByFollowersResumeOnAnother(t *testing.T) {
	srvs, token := startQuorum(t, 3)
	var leader int
	for i, s := range srvs {
		if s.IsLeader() {
			leader = i
		}
	}
	f1, f2 := srvs[(leader+1)%3], srvs[(leader+2)%3]
	a := startAgent(t, t.TempDir(), f1.SerfAddr(), nil)
	t.Cleanup(func() { a.StopKernels(5 * time.Second); a.Shutdown() })
	c := &cluster{client: apiClient(t, f1.HTTPAddr(), token)}
	c.waitAgentAlive(t, a.ID())
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	d := create(t, c, &api.CreateSessionRequest{Type: "batch", Command: []string{"sh", "-c", "sleep 0.3"}, Resources: small})
	id := d.Session.ID
	isStatus := func(want ...structs.SessionStatus) func(*api.EventBatch) bool {
		return func(b *api.EventBatch) bool {
			for _, e := range b.Events {
				if s, ok := sessionStatus(t, e); ok && s.ID == id && slices.Contains(want, s.Status) {
					return true
				}
			}
			return false
		}
	}
	var ref, first, second followed
	refDone := make(chan error, 1)
	go func() {
		refDone <- follow(ctx, apiClient(t, srvs[leader].HTTPAddr(), token), nil, 1, &ref, isStatus(structs.SessionTerminated))
	}()
	if err := follow(ctx, apiClient(t, f1.HTTPAddr(), token), nil, 1, &first, isStatus(structs.SessionScheduled, structs.SessionPreparing, structs.SessionRunning)); err != nil {
		t.Fatalf("stream on follower %s: %v", f1.ID(), err)
	}
	got := first.all()
	last := got[len(got)-1].Index
	if err := follow(ctx, apiClient(t, f2.HTTPAddr(), token), nil, last, &second, isStatus(structs.SessionTerminated)); err != nil {
		t.Fatalf("resumed stream on follower %s from %d: %v", f2.ID(), last, err)
	}
	if err := <-refDone; err != nil {
		t.Fatalf("stream on the leader: %v", err)
	}
	var mine, want []string
	for _, b := range append(got, second.all()...) {
		for _, e := range b.Events {
			mine = append(mine, eventKey(e))
		}
	}
	end := second.all()[len(second.all())-1].Index
	for _, b := range ref.all() {
		if b.Index > end {
			break
		}
		for _, e := range b.Events {
			want = append(want, eventKey(e))
		}
	}
	if !slices.Equal(mine, want) {
		t.Fatalf("two followers' streams joined at index %d differ from the leader's:\n got %v\nwant %v", last, mine, want)
	}
	// The followers answered the streams themselves: their own metrics
	// count GET /v1/events under its route, not as forwarded (once the
	// server noticed the client hung up and the handler returned).
	for _, f := range []*server.Server{f1, f2} {
		var v float64
		for deadline := time.Now().Add(20 * time.Second); v < 1 && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			_, fams := scrape(t, "http://"+f.HTTPAddr(), token)
			v = metricValue(fams, "corral_http_requests_total", map[string]string{"route": "GET /v1/events"})
		}
		if v < 1 {
			t.Fatalf("follower %s counted %v local GET /v1/events", f.ID(), v)
		}
	}
}

// BenchmarkEventsEndToEnd100Followers: 100 followers of a real server's
// /v1/events (admin token, topic session) while 16 API clients create b.N
// batch sessions that one agent runs to the end. Reported: session events
// delivered per second to all followers together, from the first create
// until every follower saw every session TERMINATED, and the sessions
// per second that fed them.
func BenchmarkEventsEndToEnd100Followers(b *testing.B) {
	const followers, writers = 100, 16
	dir := b.TempDir()
	srv := startServer(b, dir)
	a := startAgent(b, b.TempDir(), srv.SerfAddr(), structs.Slots{structs.SlotCPU: structs.Whole(1000), structs.SlotMem: structs.Whole(1 << 40)})
	b.Cleanup(func() { a.StopKernels(5 * time.Second); a.Shutdown(); srv.Shutdown() })
	tok, _ := tokens.Load(dir)
	token := tok.(string)
	addr := srv.HTTPAddr()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	newClient := func() *api.Client {
		c, _ := api.NewClient("http://" + addr)
		c.SetToken(token)
		return c
	}
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if ag, err := newClient().GetAgent(ctx, a.ID()); err == nil && ag.Status == structs.AgentAlive && len(ag.Drivers) > 0 {
			break
		}
		if time.Now().After(deadline) {
			b.Fatal("the agent never became ALIVE")
		}
	}
	// Every stream starts at the same index, before the first create.
	from := srv.State().Snapshot().Index("")
	n := b.N
	terminated := []byte(`"status":"TERMINATED"`)
	done := errors.New("done")
	var delivered atomic.Int64
	var wg sync.WaitGroup
	for range followers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ended := 0
			err := newClient().Events(ctx, []string{"session"}, from, func(batch *api.EventBatch) error {
				delivered.Add(int64(len(batch.Events)))
				for _, e := range batch.Events {
					if bytes.Contains(e.Payload, terminated) {
						ended++
					}
				}
				if ended >= n {
					return done
				}
				return nil
			})
			if !errors.Is(err, done) {
				b.Error(err)
			}
		}()
	}
	b.ResetTimer()
	t0 := time.Now()
	var next atomic.Int64
	var ww sync.WaitGroup
	for range writers {
		ww.Add(1)
		go func() {
			defer ww.Done()
			c := newClient()
			for next.Add(1) <= int64(n) {
				if _, err := c.CreateSession(ctx, &api.CreateSessionRequest{Type: "batch", Command: []string{"true"}, Resources: small}); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	ww.Wait()
	wg.Wait()
	el := time.Since(t0)
	b.StopTimer()
	b.ReportMetric(float64(delivered.Load())/el.Seconds(), "events/s")
	b.ReportMetric(float64(n)/el.Seconds(), "sessions/s")
	b.ReportMetric(float64(delivered.Load())/float64(followers)/float64(n), "events/session")
}

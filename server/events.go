package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/server/state"
	"github.com/corral-dev/corral/structs"
)

// The event stream (GET /v1/events, docs/events.md).
//
// Every server keeps a bounded ring of the changes its FSM applied to
// sessions, kernels and agents, grouped by raft index. Followers apply the
// same log as the leader, so each server serves its own stream and the
// route bypasses forwardToLeader: a stream does not tie up the leader, a
// follower's stream survives an election, and because indexes are the
// cluster's raft indexes a client may resume on any server. A follower's
// stream can lag the leader's by the replication delay, as its reads do.

// eventTopics maps a state table to the topic its changes are published
// under. Adding a topic is one line here (and one in state.Change's
// tables).
var eventTopics = map[string]string{
	state.TableSessions:  api.TopicSession,
	state.TableKernels:   api.TopicKernel,
	state.TableAgents:    api.TopicNode,
	state.TableEndpoints: api.TopicEndpoint,
}

// adminOnlyTopics are topics only admin keys may follow. Nodes are not
// among them: every key may list agents (GET /v1/agents), so it may follow
// their changes too.
var adminOnlyTopics = map[string]bool{}

// event is one change in the ring; its JSON is encoded once, on first use.
type event struct {
	index   uint64
	topic   string
	typ     string
	key     string
	owner   string
	obj     any
	once    sync.Once
	encoded []byte
}

func (e *event) json() []byte {
	e.once.Do(func() {
		// The wire form of api.Event.
		type wire struct {
			Index   uint64 `json:"index"`
			Topic   string `json:"topic"`
			Type    string `json:"type"`
			Key     string `json:"key"`
			Payload any    `json:"payload"`
		}
		b, err := json.Marshal(wire{Index: e.index, Topic: e.topic, Type: e.typ, Key: e.key, Payload: apiView(e.obj)})
		if err != nil {
			b, _ = json.Marshal(wire{Index: e.index, Topic: e.topic, Type: e.typ, Key: e.key, Payload: map[string]string{"error": err.Error()}})
		}
		e.encoded = b
	})
	return e.encoded
}

// apiView is an object as the API shows it: a kernel's cluster launch
// without its SSH private key (as GET /v1/sessions/{id} shows it).
func apiView(obj any) any {
	if k, ok := obj.(*structs.Kernel); ok && k.Launch != nil {
		return redactKernels([]*structs.Kernel{k})[0]
	}
	return obj
}

// eventBatch is the events of one raft index.
type eventBatch struct {
	index  uint64
	events []*event
}

// eventBroker holds the ring and wakes followers when it grows.
type eventBroker struct {
	mu sync.Mutex
	// batches are in index order; they hold every event with an index
	// above from.
	batches []eventBatch
	from    uint64
	held    int // events in batches
	max     int // bound on held
	// notify is closed (and replaced) when batches grow or the ring resets.
	notify chan struct{}
	// epoch counts resets (raft restores): a follower of an older epoch
	// has missed changes.
	epoch uint64

	// onPublish, when set, also sees every published change (metrics).
	onPublish func(index uint64, changes []state.Change)
}

// defaultEventRing is how many events each server keeps for resuming.
const defaultEventRing = 16384

func newEventBroker(max int) *eventBroker {
	if max <= 0 {
		max = defaultEventRing
	}
	return &eventBroker{max: max, notify: make(chan struct{})}
}

// publish is the state store's commit hook: it runs on the FSM goroutine.
func (b *eventBroker) publish(index uint64, changes []state.Change) {
	if b.onPublish != nil {
		b.onPublish(index, changes)
	}
	evs := make([]*event, 0, len(changes))
	for _, c := range changes {
		topic, ok := eventTopics[c.Table]
		if !ok {
			continue
		}
		typ := "updated"
		if c.Deleted {
			typ = "deleted"
		} else if c.Prev == nil {
			typ = "created"
		}
		evs = append(evs, &event{index: index, topic: topic, typ: typ, key: c.Key, owner: c.Owner, obj: c.Obj})
	}
	if len(evs) == 0 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if n := len(b.batches); n > 0 && b.batches[n-1].index >= index {
		// Never happens (the FSM applies in order); keep the ring sorted.
		return
	}
	b.batches = append(b.batches, eventBatch{index: index, events: evs})
	b.held += len(evs)
	drop := 0
	for b.held > b.max && drop < len(b.batches)-1 {
		b.held -= len(b.batches[drop].events)
		b.from = b.batches[drop].index
		drop++
	}
	if drop > 0 {
		b.batches = slices.Clone(b.batches[drop:])
	}
	close(b.notify)
	b.notify = make(chan struct{})
}

// reset empties the ring after a raft restore replaced the whole state at
// index: followers of the old epoch are told to reload.
func (b *eventBroker) reset(index uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.batches, b.held, b.from = nil, 0, index
	b.epoch++
	close(b.notify)
	b.notify = make(chan struct{})
}

// errEventsGone: the events after the asked index left the ring.
type errEventsGone struct{ asked, from uint64 }

func (e *errEventsGone) Error() string {
	return fmt.Sprintf("events after index %d are no longer held (this server keeps those after %d): reload the state (GET /v1/sessions, /v1/agents), then follow from the index it was read at", e.asked, e.from)
}

// since returns the batches after index (at most limit), the channel that
// is closed when there are more, the current epoch and the newest index
// held; an error when events after index are gone.
func (b *eventBroker) since(index uint64, epoch uint64, limit int) ([]eventBatch, <-chan struct{}, uint64, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if epoch != b.epoch || index < b.from {
		return nil, nil, 0, &errEventsGone{asked: index, from: b.from}
	}
	i := sort.Search(len(b.batches), func(i int) bool { return b.batches[i].index > index })
	out := b.batches[i:]
	if len(out) > limit {
		out = out[:limit]
	}
	return out, b.notify, b.epoch, nil
}

// start returns the index and epoch a stream asking for index begins at
// (0: from now, the newest index this server applied).
func (b *eventBroker) start(index, applied uint64) (uint64, uint64, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if index == 0 {
		index = applied
		if n := len(b.batches); n > 0 && b.batches[n-1].index > index {
			index = b.batches[n-1].index
		}
		return index, b.epoch, nil
	}
	if index < b.from {
		return 0, 0, &errEventsGone{asked: index, from: b.from}
	}
	return index, b.epoch, nil
}

// eventFilter decides what one stream sees.
type eventFilter struct {
	topics map[string]bool
	admin  bool   // sees every session and kernel
	owner  string // else: only those of this user
}

func (f *eventFilter) allows(e *event) bool {
	if !f.topics[e.topic] {
		return false
	}
	if f.admin || e.topic == api.TopicNode {
		return true
	}
	// As visible(): a session without an owner is an admin's alone.
	return e.owner != "" && e.owner == f.owner
}

// parseEventFilter reads ?topic= (default: every topic) against the key.
func parseEventFilter(r *http.Request, id *identity) (*eventFilter, error) {
	f := &eventFilter{topics: map[string]bool{}}
	f.admin = id.admin()
	if !f.admin {
		f.owner = id.key.User
	}
	raw := strings.Join(r.URL.Query()["topic"], ",")
	known := slices.Sorted(func(yield func(string) bool) {
		for _, t := range eventTopics {
			if !yield(t) {
				return
			}
		}
	})
	if raw == "" || raw == "*" {
		for _, t := range known {
			if !adminOnlyTopics[t] || id.admin() {
				f.topics[t] = true
			}
		}
		return f, nil
	}
	for _, t := range strings.Split(raw, ",") {
		t = strings.TrimSpace(t)
		if t == "" {
			continue
		}
		if !slices.Contains(known, t) {
			return nil, badRequest("unknown event topic %q: want one or more of %s, comma-separated", t, strings.Join(known, ","))
		}
		if adminOnlyTopics[t] && !id.admin() {
			return nil, errAdminOnly
		}
		f.topics[t] = true
	}
	return f, nil
}

// eventsIndex reads where a stream resumes: ?index=N, else the SSE
// Last-Event-ID header a reconnecting EventSource sends; 0 when neither.
func eventsIndex(r *http.Request) (uint64, error) {
	raw := r.URL.Query().Get("index")
	what := "index"
	if raw == "" {
		raw, what = r.Header.Get("Last-Event-ID"), "Last-Event-ID"
	}
	if raw == "" {
		return 0, nil
	}
	n, err := strconv.ParseUint(raw, 10, 64)
	if err != nil {
		return 0, badRequest("%s %q: want a raft index (a non-negative integer)", what, raw)
	}
	return n, nil
}

// eventsKeepalive is how often an idle stream sends an SSE comment, so
// that proxies and clients see the connection is alive.
const eventsKeepalive = 15 * time.Second

// eventsHTTP serves GET /v1/events as server-sent events: one SSE message
// per raft index, "id: <index>", "event: events", data one JSON object
// {"index": N, "events": [...]}. A stream asking for an index older than
// the ring answers 410; a stream that falls behind the ring, or outlives a
// raft restore, ends with an "event: error" message of the same kind.
func (s *Server) eventsHTTP(w http.ResponseWriter, r *http.Request) {
	fail := func(err error) {
		code, msg := errorStatus(err)
		if gone := (*errEventsGone)(nil); errors.As(err, &gone) {
			code = http.StatusGone
		}
		writeError(w, code, msg)
	}
	if err := s.waitReady(r.Context()); err != nil {
		fail(err)
		return
	}
	id, err := s.authenticate(r)
	if err != nil {
		fail(err)
		return
	}
	filter, err := parseEventFilter(r, id)
	if err != nil {
		fail(err)
		return
	}
	index, err := eventsIndex(r)
	if err != nil {
		fail(err)
		return
	}
	cursor, epoch, err := s.eventBroker.start(index, s.fsm.applied.Load())
	if err != nil {
		fail(err)
		return
	}
	flusher, ok := w.(http.Flusher)
	if !ok {
		fail(fmt.Errorf("this connection cannot stream"))
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	h.Set(api.IndexHeader, strconv.FormatUint(cursor, 10))
	w.WriteHeader(http.StatusOK)
	// The first line tells the client the stream is open and where it
	// starts, before any event.
	fmt.Fprintf(w, ": corral events from index %d\n\n", cursor)
	flusher.Flush()
	s.eventBroker.stream(r.Context(), s.ctx.Done(), w, flusher, cursor, epoch, filter)
}

// stream writes the batches after cursor that filter lets through to w,
// one SSE message per index, until ctx ends or stop is closed; it ends with
// an "event: error" message when the events it needs left the ring.
func (b *eventBroker) stream(ctx context.Context, stop <-chan struct{}, w io.Writer, flusher http.Flusher, cursor, epoch uint64, filter *eventFilter) {
	keepalive := time.NewTicker(eventsKeepalive)
	defer keepalive.Stop()
	var buf bytes.Buffer
	for {
		batches, notify, _, err := b.since(cursor, epoch, 256)
		if err != nil {
			_, msg := errorStatus(err)
			body, _ := json.Marshal(api.ErrorResponse{Error: msg})
			fmt.Fprintf(w, "event: error\ndata: %s\n\n", body)
			flusher.Flush()
			return
		}
		buf.Reset()
		for _, batch := range batches {
			n := 0
			for _, e := range batch.events {
				if !filter.allows(e) {
					continue
				}
				if n == 0 {
					fmt.Fprintf(&buf, "id: %d\nevent: events\ndata: {\"index\":%d,\"events\":[", batch.index, batch.index)
				} else {
					buf.WriteByte(',')
				}
				buf.Write(e.json())
				n++
			}
			if n > 0 {
				buf.WriteString("]}\n\n")
			}
			cursor = batch.index
		}
		if buf.Len() > 0 {
			if _, err := w.Write(buf.Bytes()); err != nil {
				return
			}
			flusher.Flush()
		}
		if len(batches) > 0 {
			continue // there may be more right away
		}
		select {
		case <-ctx.Done():
			return
		case <-stop:
			return
		case <-notify:
		case <-keepalive.C:
			if _, err := fmt.Fprint(w, ": keepalive\n\n"); err != nil {
				return
			}
			flusher.Flush()
		}
	}
}

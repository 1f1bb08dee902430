package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/server"
	"github.com/corral-dev/corral/structs"
)

// cancelWriter collects output and cancels when it holds want.
type cancelWriter struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	want   string
	cancel context.CancelFunc
}

func (w *cancelWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(b)
	if strings.Contains(w.buf.String(), w.want) {
		w.cancel()
	}
	return len(b), nil
}

func (w *cancelWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

func TestEventsCommandFollowsASession(t *testing.T) {
	dir := t.TempDir()
	var token string
	tokenCh := make(chan string, 1)
	srv, err := server.New(server.Config{NodeName: "events-cli", DataDir: dir, HTTPAddr: "127.0.0.1:0", RPCAddr: "127.0.0.1:0",
		SerfAddr: "127.0.0.1:0", Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), LogOutput: io.Discard, FastGossip: true,
		OnBootstrapToken: func(tok string) { tokenCh <- tok }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	go func() { _ = srv.Serve() }()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	select {
	case token = <-tokenCh:
	case <-ctx.Done():
		t.Fatal("no admin token bootstrapped")
	}
	addr := "http://" + srv.HTTPAddr()
	client, _ := api.NewClient(addr)
	client.SetToken(token)
	// No agent: the session stays PENDING until destroyed (CANCELLED).
	d, err := client.CreateSession(ctx, &api.CreateSessionRequest{Name: "watched", Type: "batch", Command: []string{"true"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.DestroySession(ctx, d.Session.ID); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"events", "-index", "1", "-topic", "session"}, "CANCELLED"},
		{[]string{"events", "-index", "1", "-topic", "session,kernel", "-json"}, `"CANCELLED"`},
	} {
		runCtx, stop := context.WithCancel(ctx)
		out := &cancelWriter{want: tc.want, cancel: stop}
		var errb bytes.Buffer
		c := &cli{stdout: out, stderr: &errb, getenv: func(k string) string {
			switch k {
			case "CORRAL_ADDR":
				return addr
			case "CORRAL_TOKEN":
				return token
			}
			return ""
		}}
		code := c.run(runCtx, tc.args)
		stop()
		if code != 0 || ctx.Err() != nil {
			t.Fatalf("corral %s: exit %d (test context: %v)\nstdout:\n%s\nstderr:\n%s", strings.Join(tc.args, " "), code, ctx.Err(), out, errb.String())
		}
		lines := strings.Split(strings.TrimSpace(out.String()), "\n")
		if tc.args[len(tc.args)-1] != "-json" {
			if len(lines) < 2 || !strings.Contains(lines[0], "session created") || !strings.Contains(lines[0], "PENDING name=watched owner=admin") ||
				!strings.Contains(lines[len(lines)-1], "CANCELLED") || !strings.Contains(lines[0], shortID(d.Session.ID)) {
				t.Fatalf("events lines:\n%s", out)
			}
			continue
		}
		var kernels, sessions int
		for _, l := range lines {
			var e api.Event
			if err := json.Unmarshal([]byte(l), &e); err != nil {
				t.Fatalf("-json line %q: %v", l, err)
			}
			switch e.Topic {
			case api.TopicKernel:
				kernels++
			case api.TopicSession:
				var s structs.Session
				if err := json.Unmarshal(e.Payload, &s); err != nil || s.ID != d.Session.ID {
					t.Fatalf("session event %q: %v", l, err)
				}
				sessions++
			}
		}
		if kernels == 0 || sessions < 2 {
			t.Fatalf("-json: %d kernel and %d session events:\n%s", kernels, sessions, out)
		}
	}
	// An unknown topic is refused with the server's reason.
	r := runCLI(t, addr, "events", "-topic", "jobs", "-token", token)
	if r.code != 1 || !strings.Contains(r.stderr, `unknown event topic "jobs"`) {
		t.Fatalf("unknown topic: exit %d, stderr %q", r.code, r.stderr)
	}
}

func TestEventLineOfAnEndpoint(t *testing.T) {
	payload, _ := json.Marshal(&structs.Endpoint{Name: "chat", Owner: "alice", Replicas: 3, ResourceGroup: "gpu"})
	got := eventLine(api.Event{Index: 42, Topic: api.TopicEndpoint, Type: "updated", Key: "chat", Payload: payload})
	if got != "42       endpoint updated chat  replicas=3 owner=alice group=gpu" {
		t.Fatalf("event line %q", got)
	}
}

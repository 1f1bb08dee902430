package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/corral-dev/corral/structs"
)

// fakeAPI serves handlers keyed by "METHOD path" and records the requests.
func fakeAPI(t *testing.T, routes map[string]http.HandlerFunc) (*Client, func() []*http.Request) {
	t.Helper()
	var mu sync.Mutex
	var seen []*http.Request
	mux := http.NewServeMux()
	for pattern, h := range routes {
		mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			seen = append(seen, r)
			mu.Unlock()
			h(w, r)
		})
	}
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	c, err := NewClient(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	return c, func() []*http.Request {
		mu.Lock()
		defer mu.Unlock()
		return append([]*http.Request(nil), seen...)
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func TestParseAddress(t *testing.T) {
	for _, tc := range []struct{ in, want, err string }{
		{"", DefaultAddress, ""},
		{"127.0.0.1:8640", "http://127.0.0.1:8640", ""},
		{"localhost:9000", "http://localhost:9000", ""},
		{"http://10.0.0.1:8640/", "http://10.0.0.1:8640", ""},
		{"https://corral.example.com/api/", "https://corral.example.com/api", ""},
		{"ftp://x:1", "", "scheme"},
		{"http://", "", "no host"},
		{"http://h:1/?a=b", "", "host:port only"},
	} {
		got, err := parseAddress(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("parseAddress(%q) = %q, %v; want error with %q", tc.in, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("parseAddress(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

func TestCreateSessionEncodesRequest(t *testing.T) {
	c, seen := fakeAPI(t, map[string]http.HandlerFunc{
		"POST /v1/sessions": func(w http.ResponseWriter, r *http.Request) {
			if ct := r.Header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("content type %q", ct)
			}
			var raw map[string]any
			if err := json.NewDecoder(r.Body).Decode(&raw); err != nil {
				t.Fatal(err)
			}
			res := raw["resources"].(map[string]any)
			if raw["type"] != "batch" || res["cpu"] != 0.5 || res["mem"] != float64(256<<20) || raw["name"] != "nb" {
				t.Errorf("body: %v", raw)
			}
			if _, ok := raw["driver"]; ok {
				t.Errorf("empty driver should be omitted: %v", raw)
			}
			writeJSON(w, http.StatusCreated, SessionDetail{Session: &structs.Session{ID: "s1", Name: "nb", Status: structs.SessionPending}})
		},
	})
	d, err := c.CreateSession(context.Background(), &CreateSessionRequest{
		Name: "nb", Type: structs.SessionTypeBatch, Command: []string{"true"},
		Resources: structs.Slots{structs.SlotCPU: 500, structs.SlotMem: structs.Whole(256 << 20)},
	})
	if err != nil {
		t.Fatal(err)
	}
	if d.Session.ID != "s1" || d.Session.Status != structs.SessionPending || len(seen()) != 1 {
		t.Fatalf("got %+v", d.Session)
	}
}

func TestErrorDecoding(t *testing.T) {
	c, _ := fakeAPI(t, map[string]http.HandlerFunc{
		"GET /v1/sessions/{ref}": func(w http.ResponseWriter, r *http.Request) {
			switch r.PathValue("ref") {
			case "missing":
				writeJSON(w, http.StatusNotFound, ErrorResponse{Error: `no session with ID, ID prefix or name "missing"`})
			case "plain":
				w.WriteHeader(http.StatusBadGateway)
				_, _ = io.WriteString(w, "<html>proxy error</html>")
			case "empty":
				w.WriteHeader(599)
			}
		},
	})
	ctx := context.Background()
	_, err := c.GetSession(ctx, "missing")
	var apiErr *Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 404 || err.Error() != `no session with ID, ID prefix or name "missing"` {
		t.Fatalf("404: %#v", err)
	}
	if !IsNotFound(err) || IsNotFound(errors.New("x")) {
		t.Fatal("IsNotFound")
	}
	_, err = c.GetSession(ctx, "plain")
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 502 || apiErr.Message != "Bad Gateway" {
		t.Fatalf("502 without JSON: %#v", err)
	}
	_, err = c.GetSession(ctx, "empty")
	if !errors.As(err, &apiErr) || apiErr.Message != "HTTP status 599" {
		t.Fatalf("599: %#v", err)
	}
}

func TestPathEscapingAndQueries(t *testing.T) {
	c, seen := fakeAPI(t, map[string]http.HandlerFunc{
		"GET /v1/sessions": func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, 200, []*structs.Session{{ID: "a"}, {ID: "b"}})
		},
		"GET /v1/sessions/{ref}/logs": func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, 200, LogsResponse{Hostname: r.URL.Query().Get("kernel"), Stdout: r.PathValue("ref")})
		},
		"DELETE /v1/sessions/{ref}": func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, 200, SessionDetail{Session: &structs.Session{ID: r.PathValue("ref"), Status: structs.SessionCancelled}})
		},
		"GET /v1/agents": func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, 200, []*structs.Agent{{ID: "a1", Capacity: structs.Slots{"cpu": structs.Whole(4)}}})
		},
		"GET /v1/agents/{id}": func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, 200, structs.Agent{ID: r.PathValue("id")})
		},
	})
	ctx := context.Background()
	list, err := c.ListSessions(ctx, "PENDING")
	if err != nil || len(list) != 2 || list[1].ID != "b" {
		t.Fatalf("list: %v %v", list, err)
	}
	if q := seen()[0].URL.RawQuery; q != "limit=500&status=PENDING" {
		t.Errorf("list query %q", q)
	}
	if _, err := c.ListSessions(ctx, ""); err != nil || seen()[1].URL.RawQuery != "limit=500" {
		t.Errorf("unfiltered list query %q, %v", seen()[1].URL.RawQuery, err)
	}
	logs, err := c.SessionLogs(ctx, "a b/c", "sub1")
	if err != nil || logs.Stdout != "a b/c" || logs.Hostname != "sub1" {
		t.Fatalf("logs: %+v %v", logs, err)
	}
	if p := seen()[2].URL.EscapedPath(); p != "/v1/sessions/a%20b%2Fc/logs" {
		t.Errorf("escaped path %q", p)
	}
	d, err := c.DestroySession(ctx, "s1")
	if err != nil || d.Session.ID != "s1" || d.Session.Status != structs.SessionCancelled {
		t.Fatalf("destroy: %+v %v", d, err)
	}
	agents, err := c.ListAgents(ctx)
	if err != nil || len(agents) != 1 || agents[0].Capacity["cpu"] != structs.Whole(4) {
		t.Fatalf("agents: %v %v", agents, err)
	}
	a, err := c.GetAgent(ctx, "a1")
	if err != nil || a.ID != "a1" {
		t.Fatalf("agent: %v %v", a, err)
	}
}

func TestWaitSessionIndex(t *testing.T) {
	var current uint64 = 7
	c, seen := fakeAPI(t, map[string]http.HandlerFunc{
		"GET /v1/sessions/{ref}": func(w http.ResponseWriter, r *http.Request) {
			q := r.URL.Query()
			if q.Get("index") != "" {
				if _, err := time.ParseDuration(q.Get("wait")); err != nil {
					t.Errorf("wait %q: %v", q.Get("wait"), err)
				}
			}
			idx := current
			if q.Get("index") == "7" {
				idx = 9 // something changed while we waited
			}
			if q.Get("index") == "9" {
				idx = 3 // the server's state went backwards
			}
			w.Header().Set(IndexHeader, fmt.Sprint(idx))
			writeJSON(w, 200, SessionDetail{Session: &structs.Session{ID: "s1", ModifyIndex: idx}})
		},
	})
	ctx := context.Background()
	d, idx, err := c.WaitSession(ctx, "s1", 0, time.Second)
	if err != nil || idx != 7 || d.Session.ID != "s1" {
		t.Fatalf("first: %d %v", idx, err)
	}
	if q := seen()[0].URL.Query(); q.Has("index") || q.Has("wait") {
		t.Errorf("index 0 should not block: %v", q)
	}
	_, idx, err = c.WaitSession(ctx, "s1", idx, 1500*time.Millisecond)
	if err != nil || idx != 9 {
		t.Fatalf("second: %d %v", idx, err)
	}
	if q := seen()[1].URL.Query(); q.Get("index") != "7" || q.Get("wait") != "1.5s" {
		t.Errorf("blocking query: %v", q)
	}
	_, idx, err = c.WaitSession(ctx, "s1", idx, 0)
	if err != nil || idx != 0 {
		t.Fatalf("index going backwards should reset to 0: %d %v", idx, err)
	}
	if q := seen()[2].URL.Query(); q.Get("wait") != DefaultWait.String() {
		t.Errorf("default wait: %v", q)
	}
}

func TestWaitSessionWithoutHeaderUsesModifyIndex(t *testing.T) {
	c, _ := fakeAPI(t, map[string]http.HandlerFunc{
		"GET /v1/sessions/{ref}": func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, 200, SessionDetail{Session: &structs.Session{ID: "s1", ModifyIndex: 42}})
		},
	})
	_, idx, err := c.WaitSession(context.Background(), "s1", 0, time.Second)
	if err != nil || idx != 42 {
		t.Fatalf("%d %v", idx, err)
	}
}

func TestWaitSessionHonoursContext(t *testing.T) {
	c, _ := fakeAPI(t, map[string]http.HandlerFunc{
		"GET /v1/sessions/{ref}": func(w http.ResponseWriter, r *http.Request) {
			<-r.Context().Done()
		},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, _, err := c.WaitSession(ctx, "s1", 5, time.Minute)
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 5*time.Second {
		t.Fatalf("got %v after %v", err, time.Since(start))
	}
}

func execServer(t *testing.T, frames ...string) *Client {
	c, _ := fakeAPI(t, map[string]http.HandlerFunc{
		"POST /v1/sessions/{ref}/exec": func(w http.ResponseWriter, r *http.Request) {
			var req ExecRequest
			if err := json.NewDecoder(r.Body).Decode(&req); err != nil || len(req.Command) == 0 {
				writeJSON(w, 400, ErrorResponse{Error: "command is empty"})
				return
			}
			if r.PathValue("ref") == "ended" {
				writeJSON(w, 409, ErrorResponse{Error: "kernel main1 is TERMINATED: exec needs a RUNNING kernel"})
				return
			}
			w.Header().Set("Content-Type", "application/x-ndjson")
			for _, f := range frames {
				_, _ = io.WriteString(w, f+"\n")
				w.(http.Flusher).Flush()
			}
		},
	})
	return c
}

func b64(s string) string {
	b, _ := json.Marshal([]byte(s))
	return string(b)
}

func TestExecStream(t *testing.T) {
	c := execServer(t,
		`{"stream":"stdout","data":`+b64("hello ")+`}`,
		`{"stream":"stderr","data":`+b64("oops\n")+`}`,
		`{"stream":"stdout","data":`+b64("world\n")+`}`,
		`{"exit_code":4}`,
		`{"stream":"stdout","data":`+b64("after the end")+`}`,
	)
	var out, errb bytes.Buffer
	code, err := c.Exec(context.Background(), "nb", &ExecRequest{Command: []string{"sh"}}, &out, &errb)
	if err != nil || code != 4 || out.String() != "hello world\n" || errb.String() != "oops\n" {
		t.Fatalf("code %d err %v stdout %q stderr %q", code, err, out.String(), errb.String())
	}
}

func TestExecErrors(t *testing.T) {
	ctx := context.Background()
	req := &ExecRequest{Command: []string{"true"}}
	for _, tc := range []struct {
		name, ref string
		frames    []string
		want      string
	}{
		{"error frame", "nb", []string{`{"stream":"stdout","data":` + b64("x") + `}`, `{"error":"exec stream from agent broke: EOF"}`}, "exec: exec stream from agent broke: EOF"},
		{"no exit frame", "nb", []string{`{"stream":"stdout","data":` + b64("x") + `}`}, "without an exit code"},
		{"garbage", "nb", []string{`{"stream":`}, "reading the output stream"},
		{"refused", "ended", nil, "exec needs a RUNNING kernel"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := execServer(t, tc.frames...)
			code, err := c.Exec(ctx, tc.ref, req, nil, nil)
			if err == nil || code != -1 || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %d, %v; want %q", code, err, tc.want)
			}
		})
	}
	var apiErr *Error
	_, err := execServer(t).Exec(ctx, "ended", req, nil, nil)
	if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusConflict {
		t.Fatalf("refused exec should be an *Error: %#v", err)
	}
}

func TestUnreachableServer(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	addr := srv.URL
	srv.Close()
	c, err := NewClient(addr)
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.ListAgents(context.Background())
	var apiErr *Error
	if err == nil || errors.As(err, &apiErr) {
		t.Fatalf("want a transport error, got %#v", err)
	}
}

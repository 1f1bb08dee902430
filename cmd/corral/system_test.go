package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/structs"
)

// pagedAPI serves GET /v1/sessions with pages (next token = offset) and
// POST /v1/system/gc, recording the queries and bodies it got.
func pagedAPI(t *testing.T, n int) (string, func() []string) {
	t.Helper()
	var mu sync.Mutex
	var seen []string
	var sessions []*structs.Session
	for i := range n {
		st := structs.SessionRunning
		if i%2 == 1 {
			st = structs.SessionTerminated
		}
		sessions = append(sessions, &structs.Session{ID: fmt.Sprintf("%08d-0000", i), Type: structs.SessionTypeBatch, Status: st, Result: structs.ResultUndefined})
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/sessions", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.URL.RawQuery)
		mu.Unlock()
		q := r.URL.Query()
		want := map[string]bool{}
		for _, s := range strings.Split(q.Get("status"), ",") {
			if s != "" {
				want[strings.ToUpper(s)] = true
			}
		}
		var match []*structs.Session
		for _, s := range sessions {
			if len(want) == 0 || want[string(s.Status)] {
				match = append(match, s)
			}
		}
		from, _ := strconv.Atoi(q.Get("next"))
		limit, _ := strconv.Atoi(q.Get("limit"))
		end := len(match)
		if limit > 0 && from+limit < end {
			end = from + limit
			w.Header().Set(api.NextTokenHeader, strconv.Itoa(end))
		}
		w.Header().Set(api.IndexHeader, "5")
		_ = json.NewEncoder(w).Encode(append([]*structs.Session{}, match[from:end]...))
	})
	mux.HandleFunc("POST /v1/system/gc", func(w http.ResponseWriter, r *http.Request) {
		var req api.SystemGCRequest
		_ = json.NewDecoder(r.Body).Decode(&req)
		mu.Lock()
		seen = append(seen, "gc:"+req.OlderThan)
		mu.Unlock()
		if r.Header.Get("Authorization") == "Bearer user" {
			w.WriteHeader(http.StatusForbidden)
			_ = json.NewEncoder(w).Encode(api.ErrorResponse{Error: "this needs an admin key"})
			return
		}
		w.WriteHeader(http.StatusCreated)
		_ = json.NewEncoder(w).Encode(api.SystemGCResponse{Sessions: 3, Kernels: 4})
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv.URL, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), seen...)
	}
}

func rows(out string) int { return strings.Count(strings.TrimSpace(out), "\n") } // minus the header

func TestSessionListPagesAndLimit(t *testing.T) {
	url, seen := pagedAPI(t, 2500)
	// No -limit: every page, 1000 at a time.
	r := mustRun(t, url, 0, "session", "list")
	if rows(r.stdout) != 2500 || r.stderr != "" {
		t.Fatalf("list: %d rows, stderr %q", rows(r.stdout), r.stderr)
	}
	if q := seen(); len(q) != 3 || q[2] != "limit=1000&next=2000" {
		t.Fatalf("queries %v", q)
	}
	// -limit: that many, and a note that more match.
	r = mustRun(t, url, 0, "session", "list", "-limit", "1500", "-status", "running,TERMINATED")
	if rows(r.stdout) != 1500 || !strings.Contains(r.stderr, "showing the first 1500 sessions") {
		t.Fatalf("-limit: %d rows, stderr %q", rows(r.stdout), r.stderr)
	}
	if q := seen()[3:]; len(q) != 2 || q[1] != "limit=500&next=1000&status=running%2CTERMINATED" {
		t.Fatalf("-limit queries %v", q)
	}
	// A filter with fewer matches than the limit: no note.
	r = mustRun(t, url, 0, "session", "list", "-status", "TERMINATED", "-limit", "5000", "-json")
	var list []*structs.Session
	if err := json.Unmarshal([]byte(r.stdout), &list); err != nil || len(list) != 1250 || r.stderr != "" {
		t.Fatalf("-status TERMINATED: %d %v %q", len(list), err, r.stderr)
	}
	r = mustRun(t, url, 0, "session", "list", "-all", "-status", "RUNNING")
	if rows(r.stdout) != 1250 {
		t.Fatalf("-all: %d rows", rows(r.stdout))
	}
}

func TestSystemGCCommand(t *testing.T) {
	url, seen := pagedAPI(t, 0)
	r := mustRun(t, url, 0, "system", "gc", "-older-than", "2h")
	if !strings.HasPrefix(r.stdout, "Collected 3 sessions and 4 kernels that ended before ") {
		t.Fatalf("stdout %q", r.stdout)
	}
	mustRun(t, url, 0, "system", "gc")
	mustRun(t, url, 0, "system", "gc", "-older-than", "0")
	if q := seen(); strings.Join(q, " ") != "gc:2h0m0s gc: gc:0s" {
		t.Fatalf("requests %v", q)
	}
	// A user key gets the server's 403 as one line.
	var out, errb strings.Builder
	c := &cli{stdout: &out, stderr: &errb, getenv: func(k string) string {
		return map[string]string{"CORRAL_ADDR": url, "CORRAL_TOKEN": "user"}[k]
	}}
	if code := c.run(t.Context(), []string{"system", "gc"}); code != 1 || !strings.Contains(errb.String(), "this needs an admin key") {
		t.Fatalf("user gc: exit %d, stderr %q", code, errb.String())
	}
}

func TestGCUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"session", "list", "-limit", "-1"}, "invalid -limit -1"},
		{[]string{"session", "list", "-limit", "5", "-all"}, "give -limit N or -all, not both"},
		{[]string{"system", "gc", "-older-than", "-1s"}, "invalid -older-than -1s"},
		{[]string{"system", "gc", "-older-than", "soon"}, `invalid value "soon" for flag -older-than`},
		{[]string{"system", "frob"}, `unknown subcommand "frob": want one of gc`},
	} {
		r := runCLI(t, "http://127.0.0.1:1", tc.args...)
		if r.code != 2 || !strings.Contains(r.stderr, tc.want) || strings.Count(r.stderr, "\n") != 1 {
			t.Errorf("%v: exit %d, stderr %q, want %q", tc.args, r.code, r.stderr, tc.want)
		}
	}
}

func TestGCRetentionFlag(t *testing.T) {
	for _, role := range []string{"dev", "server"} {
		f, err := parseDaemonFlags(role, []string{"-gc-retention", "90m"})
		if err != nil || f.gcRetention.Minutes() != 90 {
			t.Fatalf("%s: %+v %v", role, f, err)
		}
		if f, err := parseDaemonFlags(role, nil); err != nil || f.gcRetention.Hours() != 24 {
			t.Fatalf("%s default: %v %v", role, f.gcRetention, err)
		}
	}
	f, err := parseDaemonFlags("agent", []string{"-join", "127.0.0.1:8642", "-gc-retention", "1h"})
	if err != nil || f.gcRetention.Hours() != 1 {
		t.Fatalf("agent: %v", err)
	}
	for _, bad := range []string{"0", "-5m"} {
		if _, err := parseDaemonFlags("server", []string{"-gc-retention", bad}); err == nil || !strings.Contains(err.Error(), "invalid -gc-retention") {
			t.Fatalf("-gc-retention %s: %v", bad, err)
		}
	}
}

package main

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
)

// TestTokenFlag: -token is sent as the bearer token; without it the
// environment's is (runCLI's environment has none).
func TestTokenFlag(t *testing.T) {
	var mu sync.Mutex
	var got []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got = append(got, r.Header.Get("Authorization"))
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`[]`))
	}))
	t.Cleanup(srv.Close)
	mustRun(t, srv.URL, 0, "node", "list", "-token", "AK1.secret")
	mustRun(t, srv.URL, 0, "node", "list")
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 2 || got[0] != "Bearer AK1.secret" || got[1] != "" {
		t.Fatalf("Authorization headers %q, want the -token one, then none", got)
	}
}

// TestLocalCommandsHaveNoAPIFlags: commands that never talk to the API do
// not offer -address or -token.
func TestLocalCommandsHaveNoAPIFlags(t *testing.T) {
	for _, args := range [][]string{{"keygen", "-h"}, {"tls", "ca", "create", "-h"}, {"tls", "cert", "create", "-h"}} {
		r := mustRun(t, "http://127.0.0.1:1", 0, args...)
		if strings.Contains(r.stdout, "-address") || strings.Contains(r.stdout, "-token") {
			t.Errorf("corral %s lists API flags:\n%s", strings.Join(args, " "), r.stdout)
		}
	}
	if r := mustRun(t, "http://127.0.0.1:1", 0, "help"); !strings.Contains(r.stdout, "queue ") {
		t.Errorf("corral help does not list queue:\n%s", r.stdout)
	}
}

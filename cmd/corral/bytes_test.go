package main

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/corral-dev/corral/api"
)

// TestLogsAreBytes: corral session logs writes a kernel's output byte for
// byte, and falls back to the text fields of a server that sends no bytes.
func TestLogsAreBytes(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/sessions/{ref}/logs", func(w http.ResponseWriter, r *http.Request) {
		resp := api.LogsResponse{Hostname: "main1", Stdout: "\ufffd\ufffdok", Stderr: "e\ufffd"}
		if r.PathValue("ref") == "new" {
			resp.StdoutBytes, resp.StderrBytes = []byte("\xff\xfeok"), []byte("e\xc3")
		}
		_ = json.NewEncoder(w).Encode(resp)
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	if r := mustRun(t, srv.URL, 0, "session", "logs", "new"); r.stdout != "\xff\xfeok" || r.stderr != "e\xc3" {
		t.Fatalf("logs from a server that sends bytes: %q / %q", r.stdout, r.stderr)
	}
	if r := mustRun(t, srv.URL, 0, "session", "logs", "old"); r.stdout != "\ufffd\ufffdok" || r.stderr != "e\ufffd" {
		t.Fatalf("logs from an older server: %q / %q", r.stdout, r.stderr)
	}
}

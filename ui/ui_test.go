package ui

import (
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
)

func serve(t *testing.T, method, path string) *http.Response {
	t.Helper()
	next := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusTeapot) // the API behind the dashboard
	})
	rec := httptest.NewRecorder()
	Wrap(next).ServeHTTP(rec, httptest.NewRequest(method, path, nil))
	return rec.Result()
}

func TestAssetsServedWithStrictHeaders(t *testing.T) {
	for _, tc := range []struct{ path, ctype, body string }{
		{"/ui/", "text/html", `<script src="app.js" defer></script>`},
		{"/ui/app.js", "javascript", "'use strict';"},
		{"/ui/app.css", "text/css", ":root"},
	} {
		resp := serve(t, http.MethodGet, tc.path)
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK || !strings.Contains(resp.Header.Get("Content-Type"), tc.ctype) || !strings.Contains(string(body), tc.body) {
			t.Errorf("GET %s: %s %q, body %.80q", tc.path, resp.Status, resp.Header.Get("Content-Type"), body)
		}
		csp := resp.Header.Get("Content-Security-Policy")
		for _, want := range []string{"script-src 'self'", "frame-ancestors 'none'", "default-src 'none'"} {
			if !strings.Contains(csp, want) {
				t.Errorf("GET %s: CSP %q lacks %q", tc.path, csp, want)
			}
		}
		if strings.Contains(csp, "unsafe") {
			t.Errorf("GET %s: CSP %q allows unsafe sources", tc.path, csp)
		}
		if resp.Header.Get("X-Content-Type-Options") != "nosniff" || resp.Header.Get("X-Frame-Options") != "DENY" {
			t.Errorf("GET %s: headers %v", tc.path, resp.Header)
		}
	}
}

func TestRoutes(t *testing.T) {
	for _, tc := range []struct {
		method, path string
		code         int
		location     string
	}{
		{http.MethodGet, "/ui", http.StatusFound, "/ui/"},
		{http.MethodGet, "/", http.StatusFound, "/ui/"},
		{http.MethodGet, "/v1/agents", http.StatusTeapot, ""},
		{http.MethodPost, "/", http.StatusTeapot, ""},
		{http.MethodGet, "/ui/no-such-file.js", http.StatusNotFound, ""},
		{http.MethodPost, "/ui/app.js", http.StatusMethodNotAllowed, ""},
	} {
		resp := serve(t, tc.method, tc.path)
		if resp.StatusCode != tc.code || resp.Header.Get("Location") != tc.location {
			t.Errorf("%s %s: %s location %q, want %d %q", tc.method, tc.path, resp.Status, resp.Header.Get("Location"), tc.code, tc.location)
		}
	}
}

// The policy forbids inline script and inline handlers: none may creep in.
func TestNoInlineScript(t *testing.T) {
	inline := regexp.MustCompile(`(?i)<script(\s[^>]*)?>\s*[^<\s]|\son[a-z]+\s*=|javascript:|\sstyle\s*=`)
	err := fs.WalkDir(assets, "assets", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".html") {
			return err
		}
		b, err := assets.ReadFile(path)
		if err != nil {
			return err
		}
		if m := inline.Find(b); m != nil {
			t.Errorf("%s has inline script or style the policy would block: %q", path, m)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	js, _ := assets.ReadFile("assets/app.js")
	for _, bad := range []string{"innerHTML", "eval(", "new Function", "document.write"} {
		if strings.Contains(string(js), bad) {
			t.Errorf("app.js uses %s", bad)
		}
	}
}

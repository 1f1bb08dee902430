// Package ui is the web dashboard: hand-written static assets (HTML, CSS,
// vanilla JavaScript) embedded in the binary and served at /ui/ by every
// server. The dashboard is a thin client of the HTTP API: the assets hold
// no data and are served without a token; every request they make goes to
// /v1 with the token the user logs in with (docs/ui.md).
package ui

import (
	"embed"
	"io/fs"
	"net/http"
	"strings"
)

// Prefix is the path the dashboard is served under.
const Prefix = "/ui/"

//go:embed assets
var assets embed.FS

// ContentSecurityPolicy is the policy every asset is served with: scripts
// and styles only from the server's own files (no inline script, no eval),
// requests only to the same origin (the API, its events and the exec
// WebSocket), and no framing of the dashboard by another page.
const ContentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// Handler serves the dashboard's assets under Prefix.
func Handler() http.Handler {
	sub, err := fs.Sub(assets, "assets")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	files := http.StripPrefix(Prefix, http.FileServerFS(sub))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", ContentSecurityPolicy)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		// The assets change with the binary: revalidate on every load
		// (Last-Modified is the build's, so an unchanged file is a 304).
		h.Set("Cache-Control", "no-cache")
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			h.Set("Allow", "GET, HEAD")
			h.Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusMethodNotAllowed)
			_, _ = w.Write([]byte(`{"error":"the dashboard's files are read with GET"}` + "\n"))
			return
		}
		files.ServeHTTP(w, r)
	})
}

// Wrap serves the dashboard at Prefix (and redirects /ui there) in front
// of next, which gets every other request.
func Wrap(next http.Handler) http.Handler {
	h := Handler()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/ui" || r.URL.Path == "/":
			if r.Method == http.MethodGet || r.Method == http.MethodHead {
				http.Redirect(w, r, Prefix, http.StatusFound)
				return
			}
		case strings.HasPrefix(r.URL.Path, Prefix):
			h.ServeHTTP(w, r)
			return
		}
		next.ServeHTTP(w, r)
	})
}

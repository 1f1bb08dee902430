package api

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/coder/websocket"
)

// TestAppConn: bytes both ways, a half close in each direction, large
// writes in chunks, and an abrupt close that is not a clean end of data.
func TestAppConn(t *testing.T) {
	abrupt := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		c := NewAppConn(r.Context(), nil, ws)
		defer c.Close()
		if r.URL.Path == "/abrupt" {
			<-abrupt
			_ = ws.Close(websocket.StatusNormalClosure, "")
			return
		}
		// Echo upper-cased until the client's end of data, then end ours.
		b, err := io.ReadAll(c)
		if err != nil {
			t.Errorf("server read: %v", err)
			return
		}
		if _, err := c.Write([]byte(strings.ToUpper(string(b)))); err != nil {
			t.Errorf("server write: %v", err)
		}
		_ = c.CloseWrite()
		_, _ = io.ReadAll(c) // until the client closes
	}))
	defer srv.Close()
	ctx := context.Background()
	dial := func(path string) *AppConn {
		ws, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http")+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		return NewAppConn(ctx, nil, ws)
	}
	c := dial("/echo")
	msg := strings.Repeat("abc", 50<<10) // several chunks
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c)
	if err != nil || string(got) != strings.ToUpper(msg) {
		t.Fatalf("echo: %d bytes, %v", len(got), err)
	}
	c.Close()

	c = dial("/abrupt")
	close(abrupt)
	if _, err := io.ReadAll(c); err == nil || !strings.Contains(err.Error(), "before the end of its data") {
		t.Fatalf("abrupt close read as %v, want an error", err)
	}
}

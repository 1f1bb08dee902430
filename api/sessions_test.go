package api

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/corral-dev/corral/structs"
)

// TestListSessionsWalksPages checks that ListSessions follows the next
// tokens to the end and that a blocking page query sends index and wait.
func TestListSessionsWalksPages(t *testing.T) {
	pages := map[string]struct {
		ids  []string
		next string
	}{"": {[]string{"a", "b"}, "t1"}, "t1": {[]string{"c", "d"}, "t2"}, "t2": {[]string{"e"}, ""}}
	c, seen := fakeAPI(t, map[string]http.HandlerFunc{
		"GET /v1/sessions": func(w http.ResponseWriter, r *http.Request) {
			p := pages[r.URL.Query().Get("next")]
			var out []*structs.Session
			for _, id := range p.ids {
				out = append(out, &structs.Session{ID: id})
			}
			if p.next != "" {
				w.Header().Set(NextTokenHeader, p.next)
			}
			w.Header().Set(IndexHeader, "12")
			writeJSON(w, 200, out)
		},
	})
	ctx := context.Background()
	list, err := c.ListSessions(ctx, "RUNNING,PENDING")
	if err != nil || len(list) != 5 || list[4].ID != "e" {
		t.Fatalf("list: %v %v", list, err)
	}
	if n := len(seen()); n != 3 {
		t.Fatalf("%d requests, want 3 pages", n)
	}
	if q := seen()[2].URL.Query(); q.Get("status") != "RUNNING,PENDING" || q.Get("next") != "t2" || q.Get("limit") != "500" {
		t.Fatalf("third page query %v", q)
	}
	page, err := c.ListSessionsPage(ctx, SessionListOptions{Limit: 2, Index: 11, Wait: 2 * time.Second})
	if err != nil || page.Next != "t1" || page.Index != 12 || len(page.Sessions) != 2 {
		t.Fatalf("page: %+v %v", page, err)
	}
	if q := seen()[3].URL.Query(); q.Get("index") != "11" || q.Get("wait") != "2s" || q.Get("limit") != "2" {
		t.Fatalf("blocking page query %v", q)
	}
	// A server whose index went backwards: 0, resynchronize.
	if page, err := c.ListSessionsPage(ctx, SessionListOptions{Index: 20}); err != nil || page.Index != 0 {
		t.Fatalf("backwards index: %+v %v", page, err)
	}
}

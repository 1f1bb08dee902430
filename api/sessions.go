package api

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/corral-dev/corral/structs"
)

// NextTokenHeader carries, on a page of GET /v1/sessions that is not the
// last, the token to pass back as ?next=TOKEN for the following page.
const NextTokenHeader = "X-Corral-Next-Token"

// MaxPageSize is the largest ?limit= a list accepts.
const MaxPageSize = 1000

// listPageSize is the page size ListSessions walks the list with.
const listPageSize = 500

// SessionListOptions selects a page of GET /v1/sessions.
type SessionListOptions struct {
	// Statuses keeps only sessions in one of these statuses (all when empty).
	Statuses []string
	// Limit bounds the page (1..MaxPageSize); 0 asks for every session
	// from Next on in one answer.
	Limit int
	// Next is the NextTokenHeader of the previous page ("" for the first).
	Next string
	// Index, when not 0, makes this a blocking query: the answer comes
	// once the sessions table changed after Index, or when Wait has passed.
	Index uint64
	// Wait bounds a blocking query (<= 0: DefaultWait).
	Wait time.Duration
}

// SessionPage is one page of the session list.
type SessionPage struct {
	Sessions []*structs.Session
	// Next is the token of the following page; "" on the last one.
	Next string
	// Index is the sessions table's index at the answer: pass it as
	// SessionListOptions.Index to wait for the next change. 0 when the
	// server's index went backwards (a restored state): resynchronize.
	Index uint64
}

// ListSessionsPage returns one page of sessions, oldest (by creation)
// first, or, with opts.Index set, waits for a change first.
func (c *Client) ListSessionsPage(ctx context.Context, opts SessionListOptions) (*SessionPage, error) {
	q := url.Values{}
	if len(opts.Statuses) > 0 {
		q.Set("status", strings.Join(opts.Statuses, ","))
	}
	if opts.Limit > 0 {
		q.Set("limit", strconv.Itoa(opts.Limit))
	}
	if opts.Next != "" {
		q.Set("next", opts.Next)
	}
	timeout := c.timeout
	if opts.Index > 0 {
		wait := opts.Wait
		if wait <= 0 {
			wait = DefaultWait
		}
		q.Set("index", strconv.FormatUint(opts.Index, 10))
		q.Set("wait", wait.String())
		timeout = wait + wait/8 + 10*time.Second
	}
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	resp, err := c.send(ctx, http.MethodGet, "/v1/sessions", q, nil)
	if err != nil {
		return nil, err
	}
	defer closeBody(resp)
	page := &SessionPage{}
	if err := json.NewDecoder(resp.Body).Decode(&page.Sessions); err != nil {
		return nil, fmt.Errorf("GET /v1/sessions: decoding the answer: %w", err)
	}
	page.Next = resp.Header.Get(NextTokenHeader)
	page.Index, _ = strconv.ParseUint(resp.Header.Get(IndexHeader), 10, 64)
	if page.Index < opts.Index {
		page.Index = 0
	}
	return page, nil
}

// ListSessions lists every session, oldest first, walking the pages;
// status filters by one or more comma-separated session statuses when
// not empty.
func (c *Client) ListSessions(ctx context.Context, status string) ([]*structs.Session, error) {
	opts := SessionListOptions{Limit: listPageSize}
	if status != "" {
		opts.Statuses = []string{status}
	}
	var out []*structs.Session
	for {
		page, err := c.ListSessionsPage(ctx, opts)
		if err != nil {
			return nil, err
		}
		out = append(out, page.Sessions...)
		if page.Next == "" || page.Next == opts.Next {
			return out, nil
		}
		opts.Next = page.Next
	}
}

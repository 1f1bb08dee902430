package api

import (
	"context"
	"net/http"
	"time"
)

// SystemGCRequest is the body of POST /v1/system/gc.
type SystemGCRequest struct {
	// OlderThan collects the sessions that ended more than this long ago
	// (a duration such as "1h"); empty means the server's -gc-retention,
	// "0s" every ended session.
	OlderThan string `json:"older_than,omitempty"`
}

// SystemGCResponse says what a forced garbage collection deleted.
type SystemGCResponse struct {
	Sessions int `json:"sessions"`
	Kernels  int `json:"kernels"`
	// Cutoff is the end time before which sessions were collected.
	Cutoff time.Time `json:"cutoff"`
}

// SystemGC deletes the ended sessions (and their kernels) that ended more
// than olderThan ago; olderThan < 0 uses the server's retention. It needs
// an admin key.
func (c *Client) SystemGC(ctx context.Context, olderThan time.Duration) (*SystemGCResponse, error) {
	req := &SystemGCRequest{}
	if olderThan >= 0 {
		req.OlderThan = olderThan.String()
	}
	var out SystemGCResponse
	if _, err := c.do(ctx, http.MethodPost, "/v1/system/gc", nil, req, &out, c.timeout+time.Minute); err != nil {
		return nil, err
	}
	return &out, nil
}

// SystemStats is the answer of GET /v1/system/stats: what the answering
// server holds, measured after a Go garbage collection.
type SystemStats struct {
	// Sessions and Kernels count the rows of the state store.
	Sessions int `json:"sessions"`
	Kernels  int `json:"kernels"`
	// SnapshotBytes is the size of the state as a raft snapshot stores it.
	SnapshotBytes int64 `json:"snapshot_bytes"`
	// HeapBytes is the Go heap in use; RSSBytes the process's resident
	// set, AnonRSSBytes its anonymous part (without the binary's pages and
	// the memory-mapped raft log and stores, which the kernel may reclaim).
	HeapBytes    uint64 `json:"heap_bytes"`
	RSSBytes     uint64 `json:"rss_bytes"`
	AnonRSSBytes uint64 `json:"anon_rss_bytes"`
}

// SystemStats measures the answering server (admin key).
func (c *Client) SystemStats(ctx context.Context) (*SystemStats, error) {
	var out SystemStats
	if _, err := c.do(ctx, http.MethodGet, "/v1/system/stats", nil, nil, &out, c.timeout+time.Minute); err != nil {
		return nil, err
	}
	return &out, nil
}

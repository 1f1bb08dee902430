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

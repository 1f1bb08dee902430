package api

import (
	"context"
	"net/http"
	"net/url"
	"strconv"
)

// SessionLogsFrom returns what a kernel wrote to its stdout and stderr
// after the given offsets (the StdoutEnd and StderrEnd of the previous
// answer): how `session logs -f` follows a kernel.
func (c *Client) SessionLogsFrom(ctx context.Context, ref, kernel string, stdoutOffset, stderrOffset int64) (*LogsResponse, error) {
	q := url.Values{"stdout_offset": {strconv.FormatInt(stdoutOffset, 10)}, "stderr_offset": {strconv.FormatInt(stderrOffset, 10)}}
	if kernel != "" {
		q.Set("kernel", kernel)
	}
	var out LogsResponse
	if _, err := c.do(ctx, http.MethodGet, sessionPath(ref, "/logs"), q, nil, &out, c.timeout); err != nil {
		return nil, err
	}
	return &out, nil
}

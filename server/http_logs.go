package server

import (
	"net/http"
	"strconv"

	"github.com/corral-dev/corral/rpc"
	"github.com/corral-dev/corral/structs"
)

// maxLogRead bounds what one GET /v1/sessions/{id}/logs returns of each
// stream (the agent's default tail is less).
const maxLogRead = 8 << 20

// logsRequest is the agent request of GET /v1/sessions/{id}/logs: the
// tail of each stream, or with ?stdout_offset=N&stderr_offset=M what
// follows those offsets (at most ?max_bytes= of each). Reading logs is not
// activity for the idle timeout.
func logsRequest(r *http.Request, k *structs.Kernel) (*rpc.LogsRequest, error) {
	q := r.URL.Query()
	req := &rpc.LogsRequest{KernelID: k.ID}
	num := func(name string) (int64, error) {
		v := q.Get(name)
		if v == "" {
			return 0, nil
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return 0, badRequest("invalid %s %q: want a byte offset (a non-negative integer)", name, v)
		}
		return n, nil
	}
	var err error
	if q.Has("stdout_offset") || q.Has("stderr_offset") {
		req.From = true
		if req.StdoutOffset, err = num("stdout_offset"); err != nil {
			return nil, err
		}
		if req.StderrOffset, err = num("stderr_offset"); err != nil {
			return nil, err
		}
	}
	if req.MaxBytes, err = num("max_bytes"); err != nil {
		return nil, err
	}
	req.MaxBytes = min(req.MaxBytes, maxLogRead)
	return req, nil
}

package rpc

import "context"

// ReadIndexRequest asks the leader for the index a follower must have
// applied before it serves reads that must not go back in time (an
// agent's full kernel list).
type ReadIndexRequest struct {
	// Server names the asking server, for the leader's logs.
	Server string `json:"server,omitempty"`
}

// ReadIndexResponse is the leader's answer once it confirmed with a
// quorum that it still leads.
type ReadIndexResponse struct {
	// Index is the index to wait for: the leader's last log index when
	// asked, at or past every entry committed then.
	Index uint64 `json:"index"`
	// CommitIndex is the leader's commit index when asked.
	CommitIndex uint64 `json:"commit_index"`
	// Leader names the server that answered.
	Leader string `json:"leader,omitempty"`
}

// ReadIndex asks the leader for its read index.
func (c *ServerClient) ReadIndex(ctx context.Context, req *ReadIndexRequest) (*ReadIndexResponse, error) {
	out := new(ReadIndexResponse)
	return out, c.cc.Invoke(ctx, "/"+serverServiceName+"/ReadIndex", req, out, CallOptions()...)
}

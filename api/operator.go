package api

import (
	"context"
	"io"
	"net/http"
	"net/url"
	"time"
)

// ServerMember is one server of the cluster as GET /v1/operator/members
// shows it: its gossip membership joined with its place in raft.
type ServerMember struct {
	// Name is the server's node name; ID its raft server ID.
	Name string `json:"name"`
	ID   string `json:"id"`
	// Address is its gossip address; RPCAddr the raft/gRPC one; HTTPAddr
	// its API.
	Address  string `json:"address"`
	RPCAddr  string `json:"rpc_addr"`
	HTTPAddr string `json:"http_addr,omitempty"`
	// Status is the gossip status: alive, leaving, left or failed.
	Status string `json:"status"`
	// Raft is its role in the raft configuration: leader, follower
	// (voter), nonvoter, or none (not in the quorum).
	Raft string `json:"raft"`
	// Version is the build version the server announces.
	Version string `json:"version"`
}

// RaftPeer is one server of the raft configuration.
type RaftPeer struct {
	ID      string `json:"id"`
	Address string `json:"address"`
	// Node is the server's node name from gossip ("" when gossip does not
	// know the ID: a server that is gone).
	Node   string `json:"node"`
	Leader bool   `json:"leader"`
	Voter  bool   `json:"voter"`
}

// RaftPeers is the answer of GET /v1/operator/raft/peers.
type RaftPeers struct {
	Peers []*RaftPeer `json:"peers"`
	// Index is the raft index of the configuration.
	Index uint64 `json:"index"`
}

// RemovePeerRequest names the raft peer DELETE /v1/operator/raft/peers
// removes: by ID or by address, one of them.
type RemovePeerRequest struct {
	ID      string
	Address string
	// Force allows removing the leader itself (it steps down).
	Force bool
}

// SnapshotRestored is the answer of PUT /v1/operator/snapshot.
type SnapshotRestored struct {
	// Index is the raft index the cluster restored the snapshot at.
	Index uint64 `json:"index"`
	// SnapshotIndex is the index the snapshot was saved at (in the
	// cluster it came from).
	SnapshotIndex uint64 `json:"snapshot_index"`
	Sessions      int    `json:"sessions"`
	Users         int    `json:"users"`
	Keys          int    `json:"keys"`
}

// ServerMembers lists the cluster's servers (any key).
func (c *Client) ServerMembers(ctx context.Context) ([]*ServerMember, error) {
	var out []*ServerMember
	if _, err := c.do(ctx, http.MethodGet, "/v1/operator/members", nil, nil, &out, c.timeout); err != nil {
		return nil, err
	}
	return out, nil
}

// RaftPeers lists the raft configuration (admin key).
func (c *Client) RaftPeers(ctx context.Context) (*RaftPeers, error) {
	var out RaftPeers
	if _, err := c.do(ctx, http.MethodGet, "/v1/operator/raft/peers", nil, nil, &out, c.timeout); err != nil {
		return nil, err
	}
	return &out, nil
}

// RemoveRaftPeer removes a server from the raft configuration (admin
// key) and returns the configuration after.
func (c *Client) RemoveRaftPeer(ctx context.Context, req *RemovePeerRequest) (*RaftPeers, error) {
	q := url.Values{}
	if req.ID != "" {
		q.Set("id", req.ID)
	}
	if req.Address != "" {
		q.Set("address", req.Address)
	}
	if req.Force {
		q.Set("force", "true")
	}
	var out RaftPeers
	if _, err := c.do(ctx, http.MethodDelete, "/v1/operator/raft/peers", q, nil, &out, c.timeout+30*time.Second); err != nil {
		return nil, err
	}
	return &out, nil
}

// SaveSnapshot writes a snapshot of the cluster's state, taken on the
// leader, to w (admin key) and returns its size.
func (c *Client) SaveSnapshot(ctx context.Context, w io.Writer) (int64, error) {
	resp, err := c.send(ctx, http.MethodGet, "/v1/operator/snapshot", nil, nil)
	if err != nil {
		return 0, err
	}
	defer closeBody(resp)
	return io.Copy(w, resp.Body)
}

// RestoreSnapshot replaces the cluster's state with a snapshot SaveSnapshot
// wrote (admin key).
func (c *Client) RestoreSnapshot(ctx context.Context, r io.Reader) (*SnapshotRestored, error) {
	var out SnapshotRestored
	if _, err := c.do(ctx, http.MethodPut, "/v1/operator/snapshot", nil, r, &out, 0); err != nil {
		return nil, err
	}
	return &out, nil
}

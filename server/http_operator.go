package server

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/raft"
	"github.com/hashicorp/serf/serf"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/gossip"
	"github.com/corral-dev/corral/server/state"
	buildversion "github.com/corral-dev/corral/version"
)

// registerOperator adds the cluster operations: servers, raft peers and
// snapshots of the state (docs/operator-cli.md).
func (s *Server) registerOperator(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/operator/members", s.wrap(s.serverMembers))
	mux.HandleFunc("GET /v1/operator/raft/peers", s.wrap(s.raftPeers))
	mux.HandleFunc("DELETE /v1/operator/raft/peers", s.wrap(s.removeRaftPeer))
	mux.HandleFunc("GET /v1/operator/snapshot", s.saveSnapshot)
	mux.HandleFunc("PUT /v1/operator/snapshot", s.restoreSnapshot)
}

// raftConfig returns the raft configuration with its index, and the
// leader's ID.
func (s *Server) raftConfig() (raft.Configuration, uint64, string, error) {
	fut := s.raft.GetConfiguration()
	if err := fut.Error(); err != nil {
		return raft.Configuration{}, 0, "", err
	}
	_, leader := s.raft.LeaderWithID()
	return fut.Configuration(), fut.Index(), string(leader), nil
}

// serverMembers joins the servers of the gossip pool with the raft
// configuration (any key: it shows addresses and roles, no secrets).
func (s *Server) serverMembers(w http.ResponseWriter, r *http.Request) (any, error) {
	conf, _, leader, err := s.raftConfig()
	if err != nil {
		return nil, err
	}
	roles := map[string]string{}
	for _, srv := range conf.Servers {
		role := "follower"
		if srv.Suffrage != raft.Voter {
			role = "nonvoter"
		}
		if string(srv.ID) == leader {
			role = "leader"
		}
		roles[string(srv.ID)] = role
	}
	out := []*api.ServerMember{}
	for _, m := range s.serf.Members() {
		if m.Tags[gossip.TagRole] != "server" {
			continue
		}
		id := m.Tags[gossip.TagID]
		role, ok := roles[id]
		if !ok {
			role = "none"
		}
		out = append(out, &api.ServerMember{Name: m.Name, ID: id, Address: fmt.Sprintf("%s:%d", m.Addr, m.Port),
			RPCAddr: m.Tags[gossip.TagRPC], HTTPAddr: m.Tags[gossip.TagHTTP], Status: m.Status.String(), Raft: role,
			Version: m.Tags[gossip.TagVersion]})
	}
	slices.SortFunc(out, func(a, b *api.ServerMember) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// peers renders a raft configuration, naming each server from gossip.
func (s *Server) peers(conf raft.Configuration, index uint64, leader string) *api.RaftPeers {
	names := map[string]string{}
	for _, m := range s.serf.Members() {
		if m.Tags[gossip.TagRole] == "server" && m.Status != serf.StatusLeft {
			names[m.Tags[gossip.TagID]] = m.Name
		}
	}
	out := &api.RaftPeers{Peers: []*api.RaftPeer{}, Index: index}
	for _, srv := range conf.Servers {
		out.Peers = append(out.Peers, &api.RaftPeer{ID: string(srv.ID), Address: string(srv.Address), Node: names[string(srv.ID)],
			Leader: string(srv.ID) == leader, Voter: srv.Suffrage == raft.Voter})
	}
	return out
}

func (s *Server) raftPeers(w http.ResponseWriter, r *http.Request) (any, error) {
	if err := requireAdmin(r); err != nil {
		return nil, err
	}
	conf, index, leader, err := s.raftConfig()
	if err != nil {
		return nil, err
	}
	return s.peers(conf, index, leader), nil
}

// removeRaftPeer removes one server from the raft configuration: a dead
// server that will not come back, which gossip alone would never remove
// (only a server that leaves gracefully is removed by itself).
func (s *Server) removeRaftPeer(w http.ResponseWriter, r *http.Request) (any, error) {
	if err := requireAdmin(r); err != nil {
		return nil, err
	}
	q := r.URL.Query()
	id, addr := strings.TrimSpace(q.Get("id")), strings.TrimSpace(q.Get("address"))
	if (id == "") == (addr == "") {
		return nil, badRequest("name the peer to remove by id or by address, one of them (see GET /v1/operator/raft/peers)")
	}
	force := false
	if raw := q.Get("force"); raw != "" {
		var err error
		if force, err = strconv.ParseBool(raw); err != nil {
			return nil, badRequest("force %q: want true or false", raw)
		}
	}
	conf, index, leader, err := s.raftConfig()
	if err != nil {
		return nil, err
	}
	var target *raft.Server
	for i, srv := range conf.Servers {
		if (id != "" && string(srv.ID) == id) || (addr != "" && string(srv.Address) == addr) {
			target = &conf.Servers[i]
		}
	}
	if target == nil {
		what := "id " + id
		if addr != "" {
			what = "address " + addr
		}
		var known []string
		for _, srv := range conf.Servers {
			known = append(known, fmt.Sprintf("%s (%s)", srv.ID, srv.Address))
		}
		return nil, &httpError{code: http.StatusNotFound, msg: fmt.Sprintf("no raft peer with %s: the peers are %s", what, strings.Join(known, ", "))}
	}
	if len(conf.Servers) == 1 {
		return nil, &httpError{code: http.StatusConflict, msg: fmt.Sprintf("%s is the only raft peer: removing it would leave no quorum", target.ID)}
	}
	if string(target.ID) == leader && !force {
		return nil, &httpError{code: http.StatusConflict, msg: fmt.Sprintf("%s is the raft leader: removing it forces an election; give -force to do it anyway", target.ID)}
	}
	if err := s.raft.RemoveServer(target.ID, index, 30*time.Second).Error(); err != nil {
		if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) {
			return nil, &httpError{code: http.StatusServiceUnavailable, msg: "leadership moved while removing the peer: list the peers and retry"}
		}
		return nil, fmt.Errorf("removing raft peer %s: %w", target.ID, err)
	}
	s.logger.Info("removed raft peer", "id", target.ID, "addr", target.Address, "by", callerOf(r.Context()).key.User)
	if string(target.ID) == s.id {
		// The leader removed itself: it is no longer part of the quorum
		// and cannot answer for the next configuration.
		return &api.RaftPeers{Peers: []*api.RaftPeer{}}, nil
	}
	conf, index, leader, err = s.raftConfig()
	if err != nil {
		return nil, err
	}
	return s.peers(conf, index, leader), nil
}

// snapshotFormat names the file corral operator snapshot save writes: a
// gzip stream of one JSON header line, then the FSM's snapshot as raft
// persists it (state.Dump as JSON).
const snapshotFormat = "corral-snapshot"

// snapshotHeader is the first line of a snapshot file.
type snapshotHeader struct {
	Format  string `json:"format"`
	Version int    `json:"version"`
	// Index and Term are the raft index and term the state was read at.
	Index   uint64    `json:"index"`
	Term    uint64    `json:"term"`
	Created time.Time `json:"created"`
	// ServerVersion is the build of the server that wrote it.
	ServerVersion string `json:"server_version"`
	// Size and SHA256 are those of the snapshot data after the header.
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// maxSnapshot bounds a restored snapshot (uncompressed).
const maxSnapshot = 8 << 30

// operatorIdentity is the admin preamble of the raw snapshot handlers:
// the caller's user, or false when it answered the request.
func (s *Server) operatorIdentity(w http.ResponseWriter, r *http.Request) (string, bool) {
	ctx, ok := s.streamIdentity(w, r)
	if !ok {
		return "", false
	}
	id := callerOf(ctx)
	if id == nil || !id.admin() {
		writeError(w, http.StatusForbidden, errAdminOnly.msg)
		return "", false
	}
	return id.key.User, true
}

// saveSnapshot answers with a snapshot of the whole state, read on the
// leader after a barrier (every acknowledged write is in it).
func (s *Server) saveSnapshot(w http.ResponseWriter, r *http.Request) {
	if _, ok := s.operatorIdentity(w, r); !ok {
		return
	}
	if err := s.raft.Barrier(30 * time.Second).Error(); err != nil {
		writeError(w, http.StatusServiceUnavailable, "waiting for the leader to apply its log: "+err.Error())
		return
	}
	snap := s.state.Snapshot()
	d, err := snap.Dump()
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	var data bytes.Buffer
	if err := json.NewEncoder(&data).Encode(d); err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	sum := sha256.Sum256(data.Bytes())
	term, _ := strconv.ParseUint(s.raft.Stats()["term"], 10, 64)
	h := snapshotHeader{Format: snapshotFormat, Version: 1, Index: dumpIndex(d), Term: term, Created: time.Now().UTC(),
		ServerVersion: buildversion.Version, Size: int64(data.Len()), SHA256: hex.EncodeToString(sum[:])}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Disposition", fmt.Sprintf(`attachment; filename="corral-%d.snap"`, h.Index))
	w.Header().Set(api.IndexHeader, strconv.FormatUint(h.Index, 10))
	zw := gzip.NewWriter(w)
	line, _ := json.Marshal(h)
	_, _ = zw.Write(append(line, '\n'))
	_, _ = zw.Write(data.Bytes())
	if err := zw.Close(); err != nil {
		s.logger.Warn("sending a snapshot failed", "error", err)
	}
}

// dumpIndex is the newest index of any table in a dump.
func dumpIndex(d *state.Dump) uint64 {
	var newest uint64
	for _, v := range d.Index {
		newest = max(newest, v)
	}
	return newest
}

// readSnapshot reads and checks a snapshot file: its header, size and
// checksum, and that this server can decode the state in it.
func (s *Server) readSnapshot(r io.Reader) (*snapshotHeader, *state.Dump, error) {
	zr, err := gzip.NewReader(r)
	if err != nil {
		return nil, nil, badRequest("not a corral snapshot (want the gzip file corral operator snapshot save writes): %v", err)
	}
	br := bufio.NewReader(io.LimitReader(zr, maxSnapshot+64<<10))
	line, err := br.ReadBytes('\n')
	if err != nil {
		return nil, nil, badRequest("not a corral snapshot: reading its header: %v", err)
	}
	var h snapshotHeader
	if err := json.Unmarshal(line, &h); err != nil || h.Format != snapshotFormat {
		return nil, nil, badRequest("not a corral snapshot: its header is not a %s header", snapshotFormat)
	}
	if h.Version != 1 {
		return nil, nil, badRequest("snapshot format version %d: this server (%s) reads version 1; restore it with the server version that wrote it (%s) or newer", h.Version, buildversion.Version, h.ServerVersion)
	}
	if h.Size < 0 || h.Size > maxSnapshot {
		return nil, nil, badRequest("snapshot size %d is out of bounds", h.Size)
	}
	data := make([]byte, h.Size)
	if _, err := io.ReadFull(br, data); err != nil {
		return nil, nil, badRequest("snapshot is truncated: want %d bytes of state: %v", h.Size, err)
	}
	if _, err := br.ReadByte(); err != io.EOF {
		return nil, nil, badRequest("snapshot has data after its %d bytes of state", h.Size)
	}
	sum := sha256.Sum256(data)
	if hex.EncodeToString(sum[:]) != h.SHA256 {
		return nil, nil, badRequest("snapshot is corrupt: its checksum does not match its header")
	}
	d, err := s.fsm.decodeDump(bytes.NewReader(data))
	if err != nil {
		return nil, nil, badRequest("snapshot state: %v", err)
	}
	return &h, d, nil
}

// restoreSnapshot replaces the state with a snapshot through raft's
// user restore: the leader installs it and every follower receives it,
// with the current raft configuration (the servers of this cluster, not
// of the one that saved it). The cluster keeps its own identity: its CA,
// join secrets, gossip key and node certificates stay (the servers' and
// agents' certificates are signed by them), and so do its registered
// agents; everything else (sessions, kernels, users, keys, policies,
// groups, endpoints, networks, usage) becomes the snapshot's.
func (s *Server) restoreSnapshot(w http.ResponseWriter, r *http.Request) {
	user, ok := s.operatorIdentity(w, r)
	if !ok {
		return
	}
	h, d, err := s.readSnapshot(http.MaxBytesReader(w, r.Body, maxSnapshot))
	if err != nil {
		code, msg := errorStatus(err)
		writeError(w, code, msg)
		return
	}
	cur, err := s.state.Snapshot().Dump()
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	d.Secrets, d.Certs = cur.Secrets, cur.Certs
	for _, t := range []string{"secrets", "certs"} {
		d.Index[t] = cur.Index[t]
	}
	have := map[string]bool{}
	for _, a := range d.Agents {
		have[a.ID] = true
	}
	for _, a := range cur.Agents {
		if !have[a.ID] {
			d.Agents = append(d.Agents, a)
		}
	}
	var data bytes.Buffer
	if err := json.NewEncoder(&data).Encode(d); err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	meta := &raft.SnapshotMeta{Version: raft.SnapshotVersionMax, Index: max(dumpIndex(d), h.Index), Size: int64(data.Len())}
	if err := s.raft.Restore(meta, &data, 2*time.Minute); err != nil {
		if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) {
			writeError(w, http.StatusServiceUnavailable, "leadership moved during the restore: check the state, and retry")
			return
		}
		writeError(w, http.StatusInternalServerError, "restoring the snapshot: "+err.Error())
		return
	}
	s.logger.Info("restored a snapshot", "snapshot_index", h.Index, "snapshot_created", h.Created, "index", s.raft.LastIndex(),
		"sessions", len(d.Sessions), "by", user)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_ = json.NewEncoder(w).Encode(&api.SnapshotRestored{Index: s.raft.LastIndex(), SnapshotIndex: h.Index,
		Sessions: len(d.Sessions), Users: len(d.Users), Keys: len(d.Keys)})
}

package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/server"
	"github.com/corral-dev/corral/structs"
	buildversion "github.com/corral-dev/corral/version"
)

// startServers starts a new cluster of n in-process servers (-bootstrap-
// expect n, on loopback) and returns them with the first admin token.
func startServers(t *testing.T, n int) ([]*server.Server, string) {
	t.Helper()
	var mu sync.Mutex
	token := ""
	srvs := make([]*server.Server, n)
	for i := range n {
		cfg := server.Config{
			OnBootstrapToken: func(tok string) { mu.Lock(); token = tok; mu.Unlock() },
			NodeName:         fmt.Sprintf("%s-s%d", strings.ToLower(t.Name()), i), DataDir: t.TempDir(),
			HTTPAddr: "127.0.0.1:0", RPCAddr: "127.0.0.1:0", SerfAddr: "127.0.0.1:0", BootstrapExpect: n,
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), LogOutput: io.Discard, FastGossip: true,
		}
		if i > 0 {
			cfg.Join = []string{srvs[0].SerfAddr()}
			if srvs[0].AutoTLS() {
				cfg.ServerJoinToken, cfg.EnrollAddr = srvs[0].ServerJoinToken(), srvs[0].RPCAddr()
			}
		}
		srv, err := server.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		go func() { _ = srv.Serve() }()
		t.Cleanup(srv.Shutdown)
		srvs[i] = srv
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, s := range srvs {
		if err := s.WaitForLeader(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for ctx.Err() == nil {
		mu.Lock()
		tok := token
		mu.Unlock()
		if tok != "" {
			return srvs, tok
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("no admin token from the new cluster")
	return nil, ""
}

func leaderOf(srvs []*server.Server) *server.Server {
	for _, s := range srvs {
		if s.IsLeader() {
			return s
		}
	}
	return nil
}

// waitUntil polls cond every 100 ms until it holds or 60 s pass.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after 60s: %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestServerMembersAndRaftPeers(t *testing.T) {
	srvs, token := startServers(t, 3)
	var follower *server.Server
	waitUntil(t, "a leader and all three servers alive in gossip", func() bool {
		alive := 0
		for _, m := range srvs[0].SerfMembers() {
			if m.Status.String() == "alive" {
				alive++
			}
		}
		return leaderOf(srvs) != nil && alive == 3
	})
	leader := leaderOf(srvs)
	for _, s := range srvs {
		if s != leader {
			follower = s
		}
	}
	addr := "http://" + follower.HTTPAddr() // a follower forwards to the leader

	// server members: every server once, one leader, two followers, the
	// build's version.
	var members []*api.ServerMember
	waitUntil(t, "server members to show one leader and two followers", func() bool {
		r := mustRun(t, addr, 0, "server", "members", "-json", "-token", token)
		members = nil
		if err := json.Unmarshal([]byte(r.stdout), &members); err != nil {
			t.Fatalf("server members -json: %v\n%s", err, r.stdout)
		}
		roles := map[string]int{}
		for _, m := range members {
			roles[m.Raft]++
		}
		return len(members) == 3 && roles["leader"] == 1 && roles["follower"] == 2
	})
	for _, m := range members {
		if m.Status != "alive" || m.Version != buildversion.Version || m.RPCAddr == "" || m.HTTPAddr == "" {
			t.Fatalf("member %+v", m)
		}
		if (m.Raft == "leader") != (m.ID == leader.ID()) {
			t.Fatalf("member %s says raft %s; the leader is %s", m.Name, m.Raft, leader.ID())
		}
	}
	r := mustRun(t, addr, 0, "server", "members", "-token", token)
	if !strings.HasPrefix(r.stdout, "NAME") || strings.Count(r.stdout, "\n") != 4 || !strings.Contains(r.stdout, "leader") {
		t.Fatalf("server members:\n%s", r.stdout)
	}

	// list-peers: the three, the leader marked.
	r = mustRun(t, addr, 0, "operator", "raft", "list-peers", "-json", "-token", token)
	var peers api.RaftPeers
	if err := json.Unmarshal([]byte(r.stdout), &peers); err != nil || len(peers.Peers) != 3 {
		t.Fatalf("list-peers -json: %v\n%s", err, r.stdout)
	}
	var leaderPeer, followerPeer *api.RaftPeer
	for _, p := range peers.Peers {
		if p.Leader {
			leaderPeer = p
		} else if p.ID == follower.ID() {
			followerPeer = p
		}
		if !p.Voter || p.Node == "" {
			t.Fatalf("peer %+v", p)
		}
	}
	if leaderPeer == nil || leaderPeer.ID != leader.ID() || followerPeer == nil {
		t.Fatalf("peers %s", r.stdout)
	}

	// A key that is not an admin's may list members, not peers.
	mustRun(t, addr, 0, "user", "create", "carol", "-token", token)
	kr := mustRun(t, addr, 0, "key", "create", "-user", "carol", "-token", token)
	carol := kr.stdout[strings.Index(kr.stdout, "CORRAL_TOKEN=")+len("CORRAL_TOKEN="):]
	carol = strings.TrimSpace(carol)
	mustRun(t, addr, 0, "server", "members", "-token", carol)
	if r := mustRun(t, addr, 1, "operator", "raft", "list-peers", "-token", carol); !strings.Contains(r.stderr, "admin") {
		t.Fatalf("list-peers by a user: %q", r.stderr)
	}
	if r := mustRun(t, addr, 1, "operator", "raft", "remove-peer", "-id", followerPeer.ID, "-token", carol); !strings.Contains(r.stderr, "admin") {
		t.Fatalf("remove-peer by a user: %q", r.stderr)
	}

	// Bad input: one line, nothing removed.
	if r := mustRun(t, addr, 2, "operator", "raft", "remove-peer", "-token", token); !strings.Contains(r.stderr, "-id ID or -peer-address ADDR") {
		t.Fatalf("remove-peer without a peer: %q", r.stderr)
	}
	if r := mustRun(t, addr, 1, "operator", "raft", "remove-peer", "-id", "no-such-server", "-token", token); !strings.Contains(r.stderr, "no raft peer with id no-such-server") {
		t.Fatalf("remove-peer of an unknown ID: %q", r.stderr)
	}
	if r := mustRun(t, addr, 1, "operator", "raft", "remove-peer", "-id", leaderPeer.ID, "-token", token); !strings.Contains(r.stderr, "is the raft leader") || !strings.Contains(r.stderr, "-force") {
		t.Fatalf("remove-peer of the leader: %q", r.stderr)
	}
	if !leader.IsLeader() {
		t.Fatal("refusing to remove the leader changed the leadership")
	}

	// Removing a follower by address: the configuration after has two.
	r = mustRun(t, addr, 0, "operator", "raft", "remove-peer", "-peer-address", followerPeer.Address, "-token", token)
	if !strings.Contains(r.stdout, "removed raft peer "+followerPeer.Address) || strings.Contains(r.stdout, followerPeer.ID) || strings.Count(r.stdout, "\n") != 4 {
		t.Fatalf("remove-peer by address:\n%s", r.stdout)
	}

	// The leader itself with -force: it steps down and another server
	// leads (the leader answers directly: it is about to leave raft).
	laddr := "http://" + leader.HTTPAddr()
	mustRun(t, laddr, 0, "operator", "raft", "remove-peer", "-id", leader.ID(), "-force", "-token", token)
	waitUntil(t, "another server to lead after the leader removed itself", func() bool {
		l := leaderOf(srvs)
		return l != nil && l != leader
	})
}

// TestSnapshotSaveRestoreOntoNewCluster: a snapshot saved from a three-
// server cluster (through a follower) and restored onto a new cluster of
// three brings every session, user, key, policy and group; the old keys
// authenticate there and keep their policies; the new cluster's own first
// key is replaced. Corrupt files and other keys are refused, nothing
// changed.
func TestSnapshotSaveRestoreOntoNewCluster(t *testing.T) {
	srcs, token := startServers(t, 3)
	var follower *server.Server
	for _, s := range srcs {
		if !s.IsLeader() {
			follower = s
		}
	}
	src := "http://" + follower.HTTPAddr()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	admin, _ := api.NewClient(src)
	admin.SetToken(token)
	if _, err := admin.CreatePolicy(ctx, &api.PolicyRequest{Name: "small", MaxConcurrentSessions: 3, MaxPendingSessions: 7}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.CreateGroup(ctx, &structs.ResourceGroup{Name: "gpu", SessionSelector: "fifo", AgentSelector: "dispersed"}); err != nil {
		t.Fatal(err)
	}
	tokens := map[string]string{}
	for _, u := range []string{"alice", "bob"} {
		if _, err := admin.CreateUser(ctx, &api.CreateUserRequest{Name: u}); err != nil {
			t.Fatal(err)
		}
		k, err := admin.CreateKey(ctx, &api.CreateKeyRequest{User: u, Policy: "small", AllowedGroups: []string{"default", "gpu"}})
		if err != nil {
			t.Fatal(err)
		}
		tokens[u] = k.Token
	}
	// Sessions: no agent runs them, they stay PENDING; one is cancelled.
	var sessions []string
	for i, u := range []string{"alice", "alice", "bob"} {
		c, _ := api.NewClient(src)
		c.SetToken(tokens[u])
		d, err := c.CreateSession(ctx, &api.CreateSessionRequest{Name: fmt.Sprintf("s%d", i), Type: "batch", Command: []string{"true"}, ResourceGroup: "gpu"})
		if err != nil {
			t.Fatal(err)
		}
		sessions = append(sessions, d.Session.ID)
	}
	if _, err := admin.DestroySession(ctx, sessions[2]); err != nil {
		t.Fatal(err)
	}
	before := map[string]*structs.Session{}
	all, err := admin.ListSessions(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range all {
		before[s.ID] = s
	}
	keysBefore, err := admin.ListKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}

	file := filepath.Join(t.TempDir(), "backup.snap")
	r := mustRun(t, src, 0, "operator", "snapshot", "save", file, "-token", token)
	if !strings.Contains(r.stdout, "saved snapshot to "+file) {
		t.Fatalf("save: %s", r.stdout)
	}
	if st, err := os.Stat(file); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("snapshot file: %v %v", st, err)
	}
	if r := mustRun(t, src, 1, "operator", "snapshot", "save", filepath.Join(t.TempDir(), "x.snap"), "-token", tokens["alice"]); !strings.Contains(r.stderr, "admin") {
		t.Fatalf("save by a user: %q", r.stderr)
	}

	// A new cluster of three servers.
	dsts, dstToken := startServers(t, 3)
	dst := "http://" + dsts[0].HTTPAddr()
	// Bad files first: refused with the reason, the state unchanged.
	bad := filepath.Join(t.TempDir(), "bad.snap")
	raw, _ := os.ReadFile(file)
	for _, tc := range []struct {
		data []byte
		want string
	}{
		{[]byte("hello"), "not a corral snapshot"},
		{raw[:len(raw)/2], "snapshot"},
		{corrupt(t, raw), "corrupt"},
	} {
		if err := os.WriteFile(bad, tc.data, 0o600); err != nil {
			t.Fatal(err)
		}
		if r := mustRun(t, dst, 1, "operator", "snapshot", "restore", bad, "-token", dstToken); !strings.Contains(r.stderr, tc.want) {
			t.Fatalf("restore of a bad file: %q, want %q", r.stderr, tc.want)
		}
	}
	if r := mustRun(t, dst, 1, "operator", "snapshot", "restore", filepath.Join(t.TempDir(), "missing.snap"), "-token", dstToken); !strings.Contains(r.stderr, "no such file") {
		t.Fatalf("restore of a missing file: %q", r.stderr)
	}
	mustRun(t, dst, 0, "user", "list", "-token", dstToken) // still the new cluster's key

	r = mustRun(t, dst, 0, "operator", "snapshot", "restore", file, "-token", dstToken)
	if !strings.Contains(r.stdout, fmt.Sprintf("%d sessions, 3 users, 3 keys", len(before))) {
		t.Fatalf("restore: %s", r.stdout)
	}

	// Every server of the new cluster holds the restored state (the
	// followers received it from the leader as a raft snapshot).
	for i, srv := range dsts {
		waitUntil(t, fmt.Sprintf("server %d of the new cluster to hold the restored sessions", i), func() bool {
			ss, err := srv.State().Snapshot().Sessions(nil, "")
			return err == nil && len(ss) == len(before)
		})
	}
	// The old admin key works on the new cluster and sees everything.
	nadmin, _ := api.NewClient(dst)
	nadmin.SetToken(token)
	after, err := nadmin.ListSessions(ctx, "")
	if err != nil {
		t.Fatalf("old admin key on the restored cluster: %v", err)
	}
	if len(after) != len(before) {
		t.Fatalf("%d sessions after the restore, %d before", len(after), len(before))
	}
	for _, s := range after {
		b := before[s.ID]
		if b == nil || b.Status != s.Status || b.Owner != s.Owner || b.Name != s.Name || b.ResourceGroup != s.ResourceGroup {
			t.Fatalf("session %s after the restore: %+v, before %+v", s.ID, s, b)
		}
	}
	users, _ := nadmin.ListUsers(ctx)
	var names []string
	for _, u := range users {
		names = append(names, u.Name)
	}
	slices.Sort(names)
	if strings.Join(names, ",") != "admin,alice,bob" {
		t.Fatalf("users after the restore: %v", names)
	}
	keysAfter, _ := nadmin.ListKeys(ctx)
	if len(keysAfter) != len(keysBefore) {
		t.Fatalf("%d keys after, %d before", len(keysAfter), len(keysBefore))
	}
	pols, _ := nadmin.ListPolicies(ctx)
	groups, _ := nadmin.ListGroups(ctx)
	if len(pols) != 1 || pols[0].MaxPendingSessions != 7 || !slices.ContainsFunc(groups, func(g *structs.ResourceGroup) bool { return g.Name == "gpu" }) {
		t.Fatalf("policies %+v groups %+v", pols, groups)
	}
	// Alice's old key authenticates, sees her two sessions only, and
	// keeps its policy: its pending limit counts the restored sessions.
	alice, _ := api.NewClient(dst)
	alice.SetToken(tokens["alice"])
	mine, err := alice.ListSessions(ctx, "")
	if err != nil || len(mine) != 2 {
		t.Fatalf("alice's sessions after the restore: %d %v", len(mine), err)
	}
	st, err := alice.KeyStatus(ctx, keyID(tokens["alice"]))
	if err != nil || st.Policy == nil || st.Policy.Name != "small" {
		t.Fatalf("alice's key status: %+v %v", st, err)
	}
	// The new cluster's first key is gone with its state.
	if r := mustRun(t, dst, 1, "user", "list", "-token", dstToken); !strings.Contains(r.stderr, "invalid credentials") {
		t.Fatalf("the replaced key: %q", r.stderr)
	}
	// The restored cluster takes new work under the old keys.
	if _, err := alice.CreateSession(ctx, &api.CreateSessionRequest{Type: "batch", Command: []string{"true"}}); err != nil {
		t.Fatalf("a session after the restore: %v", err)
	}
}

// corrupt flips one byte of the snapshot's state inside the gzip stream.
func corrupt(t *testing.T, raw []byte) []byte {
	t.Helper()
	zr, err := gzipReader(raw)
	if err != nil {
		t.Fatal(err)
	}
	plain, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	i := strings.Index(string(plain), `"alice"`)
	if i < 0 {
		t.Fatal("no alice in the snapshot")
	}
	plain[i+1] = 'A'
	return gzipBytes(t, plain)
}

// keyID is the access key part of a token (KEY.SECRET).
func keyID(token string) string {
	k, _, _ := strings.Cut(token, ".")
	return k
}

func gzipReader(raw []byte) (io.Reader, error) { return gzip.NewReader(bytes.NewReader(raw)) }

func gzipBytes(t *testing.T, plain []byte) []byte {
	t.Helper()
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	if _, err := zw.Write(plain); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

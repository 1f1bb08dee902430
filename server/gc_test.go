package server_test

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/corral-dev/corral/agent"
	"github.com/corral-dev/corral/api"
	execdriver "github.com/corral-dev/corral/drivers/exec"
	"github.com/corral-dev/corral/server"
	"github.com/corral-dev/corral/structs"
)

// bareServer is a server without agents: its sessions stay PENDING until
// destroyed (CANCELLED).
type bareServer struct {
	srv   *server.Server
	admin *api.Client
	addr  string
	token string
}

func startBare(t *testing.T, mod func(*server.Config)) *bareServer {
	t.Helper()
	dir := t.TempDir()
	if mod == nil {
		mod = func(*server.Config) {}
	}
	srv := startServerCfg(t, dir, mod)
	t.Cleanup(srv.Shutdown)
	return &bareServer{srv: srv, admin: client(t, srv, dir), addr: "http://" + srv.HTTPAddr(), token: mustToken(dir)}
}

// sessions creates n sessions and returns their IDs in creation order.
func (b *bareServer) sessions(t *testing.T, n int) []string {
	t.Helper()
	var ids []string
	for range n {
		d, err := b.admin.CreateSession(context.Background(), &api.CreateSessionRequest{Command: []string{"true"}})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, d.Session.ID)
	}
	return ids
}

// get sends GET path with the admin token and decodes the answer.
func (b *bareServer) get(t *testing.T, path string, out any) *http.Response {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, b.addr+path, nil)
	req.Header.Set("Authorization", "Bearer "+b.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	return resp
}

func idsOf(list []*structs.Session) []string {
	var out []string
	for _, s := range list {
		out = append(out, s.ID)
	}
	return out
}

func TestSessionListPages(t *testing.T) {
	b := startBare(t, nil)
	ctx := context.Background()
	ids := b.sessions(t, 7)
	for _, id := range ids[1:3] {
		if _, err := b.admin.DestroySession(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	// Three pages of 3, 3 and 1, in creation order, over raw HTTP.
	var got []string
	next := ""
	for page := 1; ; page++ {
		var list []*structs.Session
		path := "/v1/sessions?limit=3"
		if next != "" {
			path += "&next=" + next
		}
		resp := b.get(t, path, &list)
		if resp.StatusCode != 200 || resp.Header.Get(api.IndexHeader) == "" {
			t.Fatalf("page %d: status %d, headers %v", page, resp.StatusCode, resp.Header)
		}
		got = append(got, idsOf(list)...)
		next = resp.Header.Get(api.NextTokenHeader)
		if want := []int{3, 3, 1}[page-1]; len(list) != want {
			t.Fatalf("page %d has %d sessions, want %d", page, len(list), want)
		}
		if next == "" {
			if page != 3 {
				t.Fatalf("no next token after page %d", page)
			}
			break
		}
	}
	if strings.Join(got, ",") != strings.Join(ids, ",") {
		t.Fatalf("pages gave %v, want %v", got, ids)
	}
	// Filters: one status, several (any case), with pages.
	page, err := b.admin.ListSessionsPage(ctx, api.SessionListOptions{Statuses: []string{"CANCELLED"}})
	if err != nil || strings.Join(idsOf(page.Sessions), ",") != strings.Join(ids[1:3], ",") || page.Next != "" {
		t.Fatalf("cancelled: %v %v", page, err)
	}
	page, err = b.admin.ListSessionsPage(ctx, api.SessionListOptions{Statuses: []string{"pending", "Running"}, Limit: 4})
	if err != nil || len(page.Sessions) != 4 || page.Next == "" || page.Sessions[1].ID != ids[3] {
		t.Fatalf("pending,running page 1: %v %v", page, err)
	}
	page, err = b.admin.ListSessionsPage(ctx, api.SessionListOptions{Statuses: []string{"pending", "Running"}, Limit: 4, Next: page.Next})
	if err != nil || len(page.Sessions) != 1 || page.Next != "" || page.Sessions[0].ID != ids[6] {
		t.Fatalf("pending,running page 2: %v %v", page, err)
	}
	// The walking client sees them all.
	all, err := b.admin.ListSessions(ctx, "")
	if err != nil || len(all) != 7 {
		t.Fatalf("all: %d %v", len(all), err)
	}
	// Bad input: 400 with a JSON error saying what was wrong.
	for _, tc := range []struct{ query, want string }{
		{"status=RUNNING,BOGUS", `unknown session status "BOGUS"`},
		{"limit=0", `invalid limit "0"`},
		{"limit=ten", `invalid limit "ten"`},
		{"limit=5000", "from 1 to 1000"},
		{"next=%25%25garbage", "invalid next token"},
		{"next=" + "YzE6eDp5", "invalid next token"}, // "c1:x:y": not an index
		{"index=-1", "invalid index"},
		{"index=1&wait=soon", "invalid wait"},
	} {
		var e api.ErrorResponse
		resp := b.get(t, "/v1/sessions?"+tc.query, &e)
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(e.Error, tc.want) {
			t.Errorf("?%s: %d %q, want 400 saying %q", tc.query, resp.StatusCode, e.Error, tc.want)
		}
	}
}

func TestSessionListBlockingQuery(t *testing.T) {
	b := startBare(t, nil)
	ctx := context.Background()
	b.sessions(t, 1)
	first, err := b.admin.ListSessionsPage(ctx, api.SessionListOptions{})
	if err != nil || first.Index == 0 || len(first.Sessions) != 1 {
		t.Fatalf("first: %+v %v", first, err)
	}
	// Nothing changes: the wait ends with the same index. (The scheduler
	// records why the new session stays PENDING first: a change or two.)
	settled := false
	for try := 0; try < 10 && !settled; try++ {
		start := time.Now()
		same, err := b.admin.ListSessionsPage(ctx, api.SessionListOptions{Index: first.Index, Wait: 400 * time.Millisecond})
		if err != nil || len(same.Sessions) != 1 || same.Index < first.Index {
			t.Fatalf("waiting list: %+v %v", same, err)
		}
		if same.Index > first.Index {
			first = same // a change woke it: wait again from there
			continue
		}
		if el := time.Since(start); el < 350*time.Millisecond || el > 5*time.Second {
			t.Fatalf("timed-out wait took %v, want about 400ms", el)
		}
		settled = true
	}
	if !settled {
		t.Fatal("the sessions table never settled")
	}
	// A write wakes a waiting list.
	type answer struct {
		page *api.SessionPage
		err  error
		at   time.Time
	}
	done := make(chan answer, 1)
	go func() {
		p, err := b.admin.ListSessionsPage(ctx, api.SessionListOptions{Index: first.Index, Wait: 20 * time.Second})
		done <- answer{p, err, time.Now()}
	}()
	time.Sleep(300 * time.Millisecond)
	select {
	case a := <-done:
		t.Fatalf("the list answered before any write: %+v %v", a.page, a.err)
	default:
	}
	created := time.Now()
	id := b.sessions(t, 1)[0]
	select {
	case a := <-done:
		if a.err != nil || a.page.Index <= first.Index || len(a.page.Sessions) != 2 || a.page.Sessions[1].ID != id {
			t.Fatalf("woken list: %+v %v", a.page, a.err)
		}
		if a.at.Sub(created) > 3*time.Second {
			t.Fatalf("woken %v after the write", a.at.Sub(created))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a write did not wake the waiting list")
	}
}

func TestSystemGC(t *testing.T) {
	b := startBare(t, nil)
	ctx := context.Background()
	ids := b.sessions(t, 3)
	for _, id := range ids[:2] {
		if _, err := b.admin.DestroySession(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	// Admin only.
	if _, err := b.admin.CreateUser(ctx, &api.CreateUserRequest{Name: "bob"}); err != nil {
		t.Fatal(err)
	}
	k, err := b.admin.CreateKey(ctx, &api.CreateKeyRequest{User: "bob"})
	if err != nil {
		t.Fatal(err)
	}
	bob, _ := api.NewClient(b.addr)
	bob.SetToken(k.Token)
	if _, err := bob.SystemGC(ctx, 0); apiStatus(err) != http.StatusForbidden {
		t.Fatalf("non-admin gc: %v, want 403", err)
	}
	// The default retention (24h) keeps what just ended.
	res, err := b.admin.SystemGC(ctx, -1)
	if err != nil || res.Sessions != 0 {
		t.Fatalf("gc with the retention: %+v %v", res, err)
	}
	res, err = b.admin.SystemGC(ctx, time.Hour)
	if err != nil || res.Sessions != 0 {
		t.Fatalf("gc older than 1h: %+v %v", res, err)
	}
	before, err := b.admin.SystemStats(ctx)
	if err != nil || before.Sessions != 3 || before.Kernels != 3 || before.SnapshotBytes == 0 || before.HeapBytes == 0 {
		t.Fatalf("stats before gc: %+v %v", before, err)
	}
	if _, err := bob.SystemStats(ctx); apiStatus(err) != http.StatusForbidden {
		t.Fatalf("non-admin stats: %v, want 403", err)
	}
	res, err = b.admin.SystemGC(ctx, 0)
	if err != nil || res.Sessions != 2 || res.Kernels != 2 {
		t.Fatalf("gc of every ended session: %+v %v", res, err)
	}
	after, err := b.admin.SystemStats(ctx)
	if err != nil || after.Sessions != 1 || after.Kernels != 1 || after.SnapshotBytes >= before.SnapshotBytes {
		t.Fatalf("stats after gc: %+v (before %+v) %v", after, before, err)
	}
	list, err := b.admin.ListSessions(ctx, "")
	if err != nil || len(list) != 1 || list[0].ID != ids[2] {
		t.Fatalf("after gc: %v %v", idsOf(list), err)
	}
	if _, err := b.admin.GetSession(ctx, ids[0]); apiStatus(err) != http.StatusNotFound {
		t.Fatalf("collected session: %v, want 404", err)
	}
	// A bad duration says so.
	req, _ := http.NewRequest(http.MethodPost, b.addr+"/v1/system/gc", strings.NewReader(`{"older_than":"-1s"}`))
	req.Header.Set("Authorization", "Bearer "+b.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var e api.ErrorResponse
	_ = json.NewDecoder(resp.Body).Decode(&e)
	resp.Body.Close()
	if resp.StatusCode != 400 || !strings.Contains(e.Error, `invalid older_than "-1s"`) {
		t.Fatalf("bad older_than: %d %q", resp.StatusCode, e.Error)
	}
}

func TestPeriodicGC(t *testing.T) {
	b := startBare(t, func(c *server.Config) { c.GCRetention = 500 * time.Millisecond })
	ctx := context.Background()
	ids := b.sessions(t, 2)
	if _, err := b.admin.DestroySession(ctx, ids[0]); err != nil {
		t.Fatal(err)
	}
	// Wait on the list (blocking queries) until the leader's GC removes it.
	var index uint64
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		page, err := b.admin.ListSessionsPage(ctx, api.SessionListOptions{Index: index, Wait: 2 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		if len(page.Sessions) == 1 {
			if page.Sessions[0].ID != ids[1] {
				t.Fatalf("gc took the live session: %v", idsOf(page.Sessions))
			}
			return
		}
		index = page.Index
	}
	t.Fatal("the leader never collected the ended session")
}

func TestAgentRemovesEndedKernelDirs(t *testing.T) {
	dir := t.TempDir()
	srv := startServer(t, dir)
	agentDir := t.TempDir()
	a := startAgentCfg(t, agentDir, srv.SerfAddr(), nil, execdriver.New(testLogger(t)), func(c *agent.Config) { c.GCRetention = 300 * time.Millisecond })
	t.Cleanup(func() {
		a.StopKernels(5 * time.Second)
		a.Shutdown()
		srv.Shutdown()
	})
	c := &cluster{srv: srv, agent: a, client: client(t, srv, dir), addr: "http://" + srv.HTTPAddr()}
	c.waitAgentAlive(t, a.ID())
	d := create(t, c, &api.CreateSessionRequest{Command: []string{"sh", "-c", "echo kept-for-a-while"}, Resources: small})
	d = c.waitFor(t, d.Session.ID, terminal)
	kdir := filepath.Join(agentDir, "kernels", d.Kernels[0].ID)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(kdir); os.IsNotExist(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("kernel directory %s still there 10s after its session ended", kdir)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The server still knows the session; its logs say where they went.
	_, err := c.client.SessionLogs(context.Background(), d.Session.ID, "main1")
	if err == nil || !strings.Contains(err.Error(), "collected") {
		t.Fatalf("logs of a collected kernel: %v", err)
	}
}

// TestGCSameOnEveryServer forces a collection through a follower and
// checks that every server's state lost the same sessions and kernels.
func TestGCSameOnEveryServer(t *testing.T) {
	srvs, token := startQuorum(t, 3)
	var follower *server.Server
	for _, s := range srvs {
		if !s.IsLeader() {
			follower = s
			break
		}
	}
	c := apiClient(t, follower.HTTPAddr(), token)
	ctx := context.Background()
	var ids []string
	for range 4 {
		d, err := c.CreateSession(ctx, &api.CreateSessionRequest{Command: []string{"true"}})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, d.Session.ID)
	}
	for _, id := range ids[:3] {
		if _, err := c.DestroySession(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	res, err := c.SystemGC(ctx, 0)
	if err != nil || res.Sessions != 3 || res.Kernels != 3 {
		t.Fatalf("gc through a follower: %+v %v", res, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, s := range srvs {
		for {
			snap := s.State().Snapshot()
			sessions, _ := snap.Sessions(nil, "")
			kernels, _ := snap.Kernels()
			if len(sessions) == 1 && sessions[0].ID == ids[3] && len(kernels) == 1 && kernels[0].SessionID == ids[3] {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("server %s: sessions %v, %d kernels after gc", s.ID(), idsOf(sessions), len(kernels))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

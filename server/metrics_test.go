package server_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/corral-dev/corral/agent"
	"github.com/corral-dev/corral/api"
	execdriver "github.com/corral-dev/corral/drivers/exec"
	"github.com/corral-dev/corral/server"
	"github.com/corral-dev/corral/structs"
)

// scrape GETs /v1/metrics with token and parses it.
func scrape(t *testing.T, addr, token string) (int, map[string]*dto.MetricFamily) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, addr+"/v1/metrics", nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, resp.Body)
		return resp.StatusCode, nil
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Fatalf("metrics content type %q", ct)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parsing the metrics: %v", err)
	}
	return resp.StatusCode, fams
}

// metricValue sums the samples of a family whose labels include want.
func metricValue(fams map[string]*dto.MetricFamily, name string, want map[string]string) float64 {
	f := fams[name]
	if f == nil {
		return 0
	}
	var sum float64
next:
	for _, m := range f.Metric {
		for k, v := range want {
			found := false
			for _, l := range m.Label {
				if l.GetName() == k && l.GetValue() == v {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			sum += m.Counter.GetValue()
		case m.Gauge != nil:
			sum += m.Gauge.GetValue()
		case m.Histogram != nil:
			sum += float64(m.Histogram.GetSampleCount())
		}
	}
	return sum
}

func TestMetricsScrapeDuringSessions(t *testing.T) {
	c := startCluster(t, nil)
	ctx := context.Background()

	if code, _ := scrape(t, c.addr, ""); code != http.StatusUnauthorized {
		t.Fatalf("metrics without a token: %d, want 401", code)
	}
	if _, err := c.client.CreateUser(ctx, &api.CreateUserRequest{Name: "carol"}); err != nil {
		t.Fatal(err)
	}
	k, err := c.client.CreateKey(ctx, &api.CreateKeyRequest{User: "carol"})
	if err != nil {
		t.Fatal(err)
	}
	if code, _ := scrape(t, c.addr, k.Token); code != http.StatusForbidden {
		t.Fatalf("metrics with a user's token: %d, want 403", code)
	}

	_, before := scrape(t, c.addr, c.token)
	for _, name := range []string{"corral_agents", "corral_slots_total", "corral_gossip_members", "corral_raft_leader", "go_goroutines"} {
		if before[name] == nil {
			t.Fatalf("no %s before any session", name)
		}
	}
	if v := metricValue(before, "corral_agents", map[string]string{"status": "ALIVE", "group": "default"}); v != 1 {
		t.Fatalf("corral_agents{ALIVE,default} = %v, want 1", v)
	}
	if v := metricValue(before, "corral_raft_leader", nil); v != 1 {
		t.Fatalf("corral_raft_leader = %v on the only server", v)
	}
	if v := metricValue(before, "corral_gossip_members", map[string]string{"role": "agent", "status": "alive"}); v != 1 {
		t.Fatalf("corral_gossip_members{agent,alive} = %v, want 1", v)
	}

	// A session that stays PENDING (too big) and three that run.
	huge := create(t, c, &api.CreateSessionRequest{Type: "batch", Command: []string{"true"}, Resources: structs.Slots{structs.SlotCPU: structs.Whole(4096)}})
	var ids []string
	for i := 0; i < 3; i++ {
		d := create(t, c, &api.CreateSessionRequest{Type: "batch", Command: []string{"true"}, Resources: small})
		ids = append(ids, d.Session.ID)
	}
	sleeper := create(t, c, &api.CreateSessionRequest{Type: "interactive", Command: []string{"sleep", "infinity"}, Resources: small})
	for _, id := range ids {
		c.waitFor(t, id, terminal)
	}
	c.waitFor(t, sleeper.Session.ID, func(d *api.SessionDetail) bool { return d.Session.Status == structs.SessionRunning })
	c.waitFor(t, huge.Session.ID, func(d *api.SessionDetail) bool { return d.Session.StatusInfo != "" })
	// The FSM counts a change just after it is visible: one more write,
	// answered once applied, orders every count before the scrape.
	if _, err := c.client.CreateUser(ctx, &api.CreateUserRequest{Name: "barrier"}); err != nil {
		t.Fatal(err)
	}

	_, during := scrape(t, c.addr, c.token)
	moved := func(name string, labels map[string]string, by float64) {
		t.Helper()
		b, a := metricValue(before, name, labels), metricValue(during, name, labels)
		if a-b < by {
			t.Errorf("%s%v went from %v to %v, want +%v at least", name, labels, b, a, by)
		}
	}
	moved("corral_kernel_starts_total", map[string]string{"driver": "exec"}, 4)
	moved("corral_kernel_start_duration_seconds", map[string]string{"driver": "exec"}, 4)
	moved("corral_scheduler_placements_total", nil, 4)
	moved("corral_scheduler_pass_duration_seconds", nil, 1)
	moved("corral_raft_apply_duration_seconds", map[string]string{"type": "session_enqueue"}, 5)
	moved("corral_raft_apply_duration_seconds", map[string]string{"type": "plan_apply"}, 1)
	moved("corral_raft_apply_duration_seconds", map[string]string{"type": "kernel_update"}, 1)
	moved("corral_http_requests_total", map[string]string{"route": "POST /v1/sessions", "code": "201"}, 5)
	moved("corral_events_published_total", nil, 10)
	for status, want := range map[string]float64{"TERMINATED": 3, "PENDING": 1, "RUNNING": 1} {
		if v := metricValue(during, "corral_sessions", map[string]string{"status": status, "group": "default"}); v != want {
			t.Errorf("corral_sessions{%s,default} = %v, want %v", status, v, want)
		}
	}
	if v := metricValue(during, "corral_sessions_pending_oldest_seconds", map[string]string{"group": "default"}); v <= 0 {
		t.Errorf("corral_sessions_pending_oldest_seconds = %v with a PENDING session", v)
	}
	if v := metricValue(during, "corral_sessions_pending_age_seconds", map[string]string{"group": "default"}); v != 1 {
		t.Errorf("corral_sessions_pending_age_seconds has %v samples, want 1", v)
	}
	// The running sleeper holds its slots.
	used := metricValue(during, "corral_slots_used", map[string]string{"slot": "mem", "group": "default"})
	if used != float64(32<<20) {
		t.Errorf("corral_slots_used{mem} = %v, want the sleeper's %d", used, 32<<20)
	}
	// Routes are the mux's patterns, never raw paths.
	for _, m := range during["corral_http_requests_total"].Metric {
		for _, l := range m.Label {
			if l.GetName() == "route" && strings.Contains(l.GetValue(), sleeper.Session.ID) {
				t.Fatalf("a route label holds a session ID: %q", l.GetValue())
			}
		}
	}
	if v := metricValue(during, "corral_http_requests_total", map[string]string{"route": "GET /v1/sessions/{ref}"}); v == 0 {
		t.Errorf("no corral_http_requests_total{route=\"GET /v1/sessions/{ref}\"}")
	}
}

func TestAgentMetricsAddr(t *testing.T) {
	reg := httptest.NewServer(registry.New())
	defer reg.Close()
	ref := strings.TrimPrefix(reg.URL, "http://") + "/demo/metrics:1"
	img, err := random.Image(1<<20, 2)
	if err != nil {
		t.Fatal(err)
	}
	tag, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(tag, img); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	// As corral dev does: the server's /v1/metrics also serves the agent's.
	var embedded atomic.Pointer[agent.Agent]
	srv := startServerCfg(t, dir, func(c *server.Config) {
		c.ExtraMetrics = prometheus.GathererFunc(func() ([]*dto.MetricFamily, error) {
			if a := embedded.Load(); a != nil {
				return a.Metrics().Gather()
			}
			return nil, nil
		})
	})
	a := startAgentCfg(t, t.TempDir(), srv.SerfAddr(), nil, execdriver.New(testLogger(t)), func(c *agent.Config) { c.MetricsAddr = "127.0.0.1:0" })
	embedded.Store(a)
	t.Cleanup(func() { a.StopKernels(5e9); a.Shutdown(); srv.Shutdown() })
	cl := &cluster{srv: srv, agent: a, client: client(t, srv, dir)}
	cl.waitAgentAlive(t, a.ID())
	if a.MetricsAddr() == "" {
		t.Fatal("the agent has no metrics address")
	}
	d := create(t, cl, &api.CreateSessionRequest{Type: "batch", Command: []string{"true"}, Resources: small})
	cl.waitFor(t, d.Session.ID, terminal)
	ctx := context.Background()
	if _, err := cl.client.PullImage(ctx, &api.ImagePullRequest{Ref: ref, Agent: a.ID()[:8]}); err != nil {
		t.Fatalf("image pull: %v", err)
	}
	if _, err := cl.client.PullImage(ctx, &api.ImagePullRequest{Ref: ref, Agent: a.ID()[:8]}); err != nil {
		t.Fatalf("second image pull: %v", err)
	}
	// No token: the agent's listener is for the monitoring network.
	code, fams := scrape(t, "http://"+a.MetricsAddr(), "")
	if code != http.StatusOK {
		t.Fatalf("agent metrics: %d", code)
	}
	_, merged := scrape(t, "http://"+srv.HTTPAddr(), mustToken(dir))
	if merged["corral_agent_image_pulls_total"] == nil || merged["corral_sessions"] == nil || merged["go_goroutines"] == nil {
		t.Fatalf("the server's metrics with the embedded agent's lack a family: %d families", len(merged))
	}
	for _, tc := range []struct {
		name   string
		labels map[string]string
		min    float64
	}{
		{"corral_agent_driver_start_duration_seconds", map[string]string{"driver": "exec", "result": "ok"}, 1},
		{"corral_agent_image_pulls_total", map[string]string{"result": "pulled"}, 1},
		{"corral_agent_image_pulls_total", map[string]string{"result": "cached"}, 1},
		{"corral_agent_image_pull_bytes_total", nil, 1 << 20},
		{"corral_agent_image_pull_duration_seconds", nil, 2},
	} {
		if v := metricValue(fams, tc.name, tc.labels); v < tc.min {
			t.Errorf("%s%v = %v, want %v at least", tc.name, tc.labels, v, tc.min)
		}
	}
}

func TestMetricsAnonymous(t *testing.T) {
	srv := startServerCfg(t, t.TempDir(), func(c *server.Config) { c.MetricsAnonymous = true })
	t.Cleanup(srv.Shutdown)
	code, fams := scrape(t, "http://"+srv.HTTPAddr(), "")
	if code != http.StatusOK || fams["corral_raft_leader"] == nil {
		t.Fatalf("anonymous scrape with MetricsAnonymous: %d, %d families", code, len(fams))
	}
}

package server

import (
	"bufio"
	"context"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/raft"
	"github.com/hashicorp/serf/serf"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"

	"github.com/corral-dev/corral/gossip"
	"github.com/corral-dev/corral/server/state"
	"github.com/corral-dev/corral/structs"
)

// Metrics of a server (GET /v1/metrics, docs/metrics.md).
//
// What the state holds (sessions, agents, slots, GPUs) is read from a
// snapshot at scrape time by stateCollector, so it cannot drift. What
// happens (requests, raft applies, scheduler passes, kernel starts) is
// counted where it happens. Kernel starts and failures are counted from
// the kernel transitions the FSM commits: every server counts the same
// ones, from the same log, once it has caught up at start (the replay of
// old entries is not counted again).
type serverMetrics struct {
	reg *prometheus.Registry

	httpRequests *prometheus.CounterVec
	httpDuration *prometheus.HistogramVec

	raftApply         *prometheus.HistogramVec
	leadershipChanges prometheus.Counter
	raftObserver      *raft.Observer

	schedPass      prometheus.Histogram
	placements     prometheus.Counter
	planRejections prometheus.Counter
	cancellations  prometheus.Counter

	kernelStarts       *prometheus.CounterVec
	kernelFailures     *prometheus.CounterVec
	kernelStartLatency *prometheus.HistogramVec

	eventsPublished prometheus.Counter
}

func newServerMetrics(s *Server) *serverMetrics {
	m := &serverMetrics{reg: prometheus.NewRegistry()}
	f := func(c prometheus.Collector) { m.reg.MustRegister(c) }
	m.httpRequests = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "corral_http_requests_total",
		Help: "HTTP API requests by route (the mux's pattern; \"forwarded\" for those a follower proxied to the leader) and status code."},
		[]string{"route", "code"})
	m.httpDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "corral_http_request_duration_seconds",
		Help:    "Time to answer an HTTP API request by route (streams: until they end).",
		Buckets: prometheus.ExponentialBuckets(0.0005, 4, 10)}, []string{"route"})
	m.raftApply = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "corral_raft_apply_duration_seconds",
		Help:    "Time from submitting a raft entry on the leader to the FSM's answer (commit and apply), by entry type.",
		Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10)}, []string{"type"})
	m.leadershipChanges = prometheus.NewCounter(prometheus.CounterOpts{Name: "corral_raft_leadership_changes_total",
		Help: "Leader changes this server observed (elections won by any server, and losing a leader)."})
	m.schedPass = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "corral_scheduler_pass_duration_seconds",
		Help:    "Time of one scheduling pass on the leader (snapshot, plan, raft apply of the plan).",
		Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10)})
	m.placements = prometheus.NewCounter(prometheus.CounterOpts{Name: "corral_scheduler_placements_total",
		Help: "Sessions placed by plans the FSM applied (rate() gives placements per second)."})
	m.planRejections = prometheus.NewCounter(prometheus.CounterOpts{Name: "corral_scheduler_plan_rejections_total",
		Help: "Session placements the FSM refused when it re-checked a plan (the state changed since the scheduler's snapshot)."})
	m.cancellations = prometheus.NewCounter(prometheus.CounterOpts{Name: "corral_scheduler_cancellations_total",
		Help: "Sessions the scheduler cancelled (they can never be placed)."})
	m.kernelStarts = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "corral_kernel_starts_total",
		Help: "Kernels that reached RUNNING, by driver."}, []string{"driver"})
	m.kernelFailures = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "corral_kernel_failures_total",
		Help: "Kernels that ended in ERROR, by driver."}, []string{"driver"})
	m.kernelStartLatency = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "corral_kernel_start_duration_seconds",
		Help:    "Time from SCHEDULED to RUNNING of a kernel (network, image pull, driver start), by driver.",
		Buckets: prometheus.ExponentialBuckets(0.01, 3, 10)}, []string{"driver"})
	m.eventsPublished = prometheus.NewCounter(prometheus.CounterOpts{Name: "corral_events_published_total",
		Help: "Session, kernel and node changes this server's FSM applied (the event stream's input)."})
	for _, c := range []prometheus.Collector{m.httpRequests, m.httpDuration, m.raftApply, m.leadershipChanges,
		m.schedPass, m.placements, m.planRejections, m.cancellations, m.kernelStarts, m.kernelFailures,
		m.kernelStartLatency, m.eventsPublished} {
		f(c)
	}
	f(&stateCollector{s: s})
	f(collectors.NewGoCollector())
	f(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	s.eventBroker.onPublish = func(index uint64, changes []state.Change) { m.observeChanges(s, changes) }
	return m
}

// watchRaft counts leadership changes until ctx ends; call it once raft
// exists.
func (m *serverMetrics) watchRaft(ctx context.Context, r *raft.Raft) {
	ch := make(chan raft.Observation, 16)
	m.raftObserver = raft.NewObserver(ch, false, func(o *raft.Observation) bool {
		_, ok := o.Data.(raft.LeaderObservation)
		return ok
	})
	r.RegisterObserver(m.raftObserver)
	go func() {
		defer r.DeregisterObserver(m.raftObserver)
		for {
			select {
			case <-ctx.Done():
				return
			case <-ch:
				m.leadershipChanges.Inc()
			}
		}
	}()
}

// observeApply records one raft apply's latency (s.apply).
func (m *serverMetrics) observeApply(t structs.MessageType, d time.Duration) {
	if m == nil {
		return
	}
	m.raftApply.WithLabelValues(messageTypeName(t)).Observe(d.Seconds())
}

// observePass records one scheduling pass (runScheduler).
func (m *serverMetrics) observePass(d time.Duration) {
	if m == nil {
		return
	}
	m.schedPass.Observe(d.Seconds())
}

// observePlan records what the FSM did with one plan (schedWorker.pass).
func (m *serverMetrics) observePlan(res *structs.PlanResult) {
	if m == nil || res == nil {
		return
	}
	m.placements.Add(float64(len(res.Applied)))
	m.planRejections.Add(float64(len(res.Rejected)))
	m.cancellations.Add(float64(len(res.Cancelled)))
}

// observeChanges counts kernel starts and failures from committed
// transitions (the commit hook, on the FSM goroutine).
func (m *serverMetrics) observeChanges(s *Server, changes []state.Change) {
	m.eventsPublished.Add(float64(len(changes)))
	select {
	case <-s.ready:
	default:
		return // replaying the log at start: counted in an earlier life
	}
	for _, c := range changes {
		k, ok := c.Obj.(*structs.Kernel)
		if !ok || c.Deleted {
			continue
		}
		// One apply may take a kernel through several statuses (an agent
		// reports PREPARING, RUNNING and TERMINATED of a short kernel in
		// one batch): read what the history gained, not the status alone.
		added := len(k.History)
		if p, ok := c.Prev.(*structs.Kernel); ok {
			added -= len(p.History)
			if added <= 0 && p.ModifyIndex != k.ModifyIndex && k.Status != p.Status {
				added = 1 // the history was trimmed at its bound
			}
		}
		for i := max(len(k.History)-added, 0); i < len(k.History); i++ {
			switch structs.KernelStatus(k.History[i].Status) {
			case structs.KernelRunning:
				if i > 0 && structs.KernelStatus(k.History[i-1].Status) == structs.KernelRestarting {
					continue // back from a restart, not a start
				}
				m.kernelStarts.WithLabelValues(k.Driver).Inc()
				if d, ok := startLatency(k.History[:i+1]); ok {
					m.kernelStartLatency.WithLabelValues(k.Driver).Observe(d.Seconds())
				}
			case structs.KernelError:
				m.kernelFailures.WithLabelValues(k.Driver).Inc()
			}
		}
	}
}

// startLatency is the time from the last SCHEDULED to the RUNNING that
// ends h.
func startLatency(h []structs.StatusChange) (time.Duration, bool) {
	run := h[len(h)-1].Time
	for i := len(h) - 2; i >= 0; i-- {
		if h[i].Status == string(structs.KernelScheduled) {
			if d := run.Sub(h[i].Time); d >= 0 {
				return d, true
			}
			return 0, false
		}
	}
	return 0, false
}

func messageTypeName(t structs.MessageType) string {
	if n, ok := messageTypeNames[t]; ok {
		return n
	}
	return "type_" + strconv.Itoa(int(t))
}

var messageTypeNames = map[structs.MessageType]string{
	structs.SessionEnqueueRequestType: "session_enqueue",
	structs.PlanApplyRequestType:      "plan_apply",
	structs.KernelUpdateRequestType:   "kernel_update",
	structs.AgentUpsertRequestType:    "agent_upsert",
	structs.AgentStatusRequestType:    "agent_status",
	structs.SessionDestroyRequestType: "session_destroy",
	structs.ConfigUpsertRequestType:   "config_upsert",
	structs.AgentDrainRequestType:     "agent_drain",
	structs.KernelsLostRequestType:    "kernels_lost",
	structs.SessionsGCRequestType:     "sessions_gc",
	structs.ClusterSecretsRequestType: "cluster_secrets",
	structs.CertIssueRequestType:      "cert_issue",
	structs.CertRevokeRequestType:     "cert_revoke",
	structs.ConfigDeleteRequestType:   "config_delete",
}

// stateCollector reads the gauges of the state and of gossip at scrape
// time.
type stateCollector struct{ s *Server }

var (
	descSessions = prometheus.NewDesc("corral_sessions", "Sessions in the state by status and resource group (ended ones until garbage collection).",
		[]string{"status", "group"}, nil)
	descPendingOldest = prometheus.NewDesc("corral_sessions_pending_oldest_seconds", "Age of the oldest PENDING session by resource group.",
		[]string{"group"}, nil)
	descPendingAge = prometheus.NewDesc("corral_sessions_pending_age_seconds", "Ages of the PENDING sessions by resource group, at scrape time.",
		[]string{"group"}, nil)
	descAgents = prometheus.NewDesc("corral_agents", "Agents by status, resource group and drain state.",
		[]string{"status", "group", "drain"}, nil)
	descSlotsTotal = prometheus.NewDesc("corral_slots_total", "Capacity of the reachable agents by slot type and resource group (cpu in cores, mem in bytes).",
		[]string{"slot", "group"}, nil)
	descSlotsUsed = prometheus.NewDesc("corral_slots_used", "Slots held by kernels that have not ended on the reachable agents, by slot type and resource group.",
		[]string{"slot", "group"}, nil)
	descGPUUtil = prometheus.NewDesc("corral_gpu_utilization_percent", "GPU utilisation per device at its agent's last report.",
		[]string{"agent", "gpu", "uuid"}, nil)
	descGPUMemUsed = prometheus.NewDesc("corral_gpu_memory_used_bytes", "GPU memory in use per device at its agent's last report.",
		[]string{"agent", "gpu", "uuid"}, nil)
	descGPUMemTotal = prometheus.NewDesc("corral_gpu_memory_total_bytes", "GPU memory per device.",
		[]string{"agent", "gpu", "uuid"}, nil)
	descGPUHeld = prometheus.NewDesc("corral_gpu_held", "1 when a kernel holds the device (or one of its MIG instances), else 0.",
		[]string{"agent", "gpu", "uuid"}, nil)
	descMembers = prometheus.NewDesc("corral_gossip_members", "Gossip pool members as this server sees them, by role and status.",
		[]string{"role", "status"}, nil)
	descLeader  = prometheus.NewDesc("corral_raft_leader", "1 when this server is the raft leader.", nil, nil)
	descApplied = prometheus.NewDesc("corral_raft_applied_index", "The last raft index this server's FSM applied.", nil, nil)
	descRing    = prometheus.NewDesc("corral_events_ring_events", "Events held for resuming streams of GET /v1/events.", nil, nil)
)

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descSessions, descPendingOldest, descPendingAge, descAgents, descSlotsTotal, descSlotsUsed,
		descGPUUtil, descGPUMemUsed, descGPUMemTotal, descGPUHeld, descMembers, descLeader, descApplied, descRing} {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.s
	snap := s.state.Snapshot()
	now := time.Now()
	type sg struct{ status, group string }
	counts := map[sg]int{}
	oldest := map[string]time.Time{}
	ages := map[string]*ageHistogram{}
	_ = snap.EachSession(func(sess *structs.Session) {
		g := groupOf(sess.ResourceGroup)
		counts[sg{string(sess.Status), g}]++
		if sess.Status != structs.SessionPending {
			return
		}
		if o, ok := oldest[g]; !ok || sess.CreatedAt.Before(o) {
			oldest[g] = sess.CreatedAt
		}
		h := ages[g]
		if h == nil {
			h = &ageHistogram{counts: make(map[float64]uint64, len(pendingAgeBuckets))}
			ages[g] = h
		}
		h.observe(now.Sub(sess.CreatedAt).Seconds())
	})
	for k, n := range counts {
		ch <- prometheus.MustNewConstMetric(descSessions, prometheus.GaugeValue, float64(n), k.status, k.group)
	}
	for g, t := range oldest {
		ch <- prometheus.MustNewConstMetric(descPendingOldest, prometheus.GaugeValue, now.Sub(t).Seconds(), g)
	}
	for g, h := range ages {
		ch <- prometheus.MustNewConstHistogram(descPendingAge, h.n, h.sum, h.counts, g)
	}
	type agk struct{ status, group, drain string }
	agents := map[agk]int{}
	type slk struct{ slot, group string }
	total, used := map[slk]float64{}, map[slk]float64{}
	if list, err := snap.Agents(nil); err == nil {
		for _, a := range list {
			g := groupOf(a.ResourceGroup)
			agents[agk{string(a.Status), g, strconv.FormatBool(a.Drain)}]++
			if !a.Status.Reachable() {
				continue
			}
			for slot, q := range a.Capacity {
				total[slk{slot, g}] += q.Float()
			}
			for slot, q := range a.Occupied {
				used[slk{slot, g}] += q.Float()
			}
			if a.GPUs == nil {
				continue
			}
			for _, gpu := range a.GPUs.Devices {
				idx := strconv.Itoa(gpu.Index)
				held := 0.0
				if _, ok := a.GPUHolders[gpu.UUID]; ok {
					held = 1
				}
				for _, mig := range gpu.MIG {
					if _, ok := a.GPUHolders[mig.UUID]; ok {
						held = 1
					}
				}
				ch <- prometheus.MustNewConstMetric(descGPUUtil, prometheus.GaugeValue, float64(gpu.UtilPercent), a.Name, idx, gpu.UUID)
				ch <- prometheus.MustNewConstMetric(descGPUMemUsed, prometheus.GaugeValue, float64(gpu.MemoryUsedBytes), a.Name, idx, gpu.UUID)
				ch <- prometheus.MustNewConstMetric(descGPUMemTotal, prometheus.GaugeValue, float64(gpu.MemoryBytes), a.Name, idx, gpu.UUID)
				ch <- prometheus.MustNewConstMetric(descGPUHeld, prometheus.GaugeValue, held, a.Name, idx, gpu.UUID)
			}
		}
	}
	for k, n := range agents {
		ch <- prometheus.MustNewConstMetric(descAgents, prometheus.GaugeValue, float64(n), k.status, k.group, k.drain)
	}
	for k, v := range total {
		ch <- prometheus.MustNewConstMetric(descSlotsTotal, prometheus.GaugeValue, v, k.slot, k.group)
		ch <- prometheus.MustNewConstMetric(descSlotsUsed, prometheus.GaugeValue, used[k], k.slot, k.group)
	}
	if s.serf != nil {
		type ms struct{ role, status string }
		members := map[ms]int{}
		for _, m := range s.serf.Members() {
			if m.Status == serf.StatusLeft && m.Tags[gossip.TagRole] == "" {
				continue
			}
			members[ms{m.Tags[gossip.TagRole], m.Status.String()}]++
		}
		for k, n := range members {
			ch <- prometheus.MustNewConstMetric(descMembers, prometheus.GaugeValue, float64(n), k.role, k.status)
		}
	}
	leader := 0.0
	if s.IsLeader() {
		leader = 1
	}
	ch <- prometheus.MustNewConstMetric(descLeader, prometheus.GaugeValue, leader)
	if s.fsm != nil {
		ch <- prometheus.MustNewConstMetric(descApplied, prometheus.GaugeValue, float64(s.fsm.applied.Load()))
	}
	s.eventBroker.mu.Lock()
	held := s.eventBroker.held
	s.eventBroker.mu.Unlock()
	ch <- prometheus.MustNewConstMetric(descRing, prometheus.GaugeValue, float64(held))
}

var pendingAgeBuckets = []float64{1, 10, 60, 300, 900, 3600, 4 * 3600, 24 * 3600}

// ageHistogram counts values into pendingAgeBuckets at scrape time.
type ageHistogram struct {
	n      uint64
	sum    float64
	counts map[float64]uint64 // cumulative, as Prometheus wants
}

func (h *ageHistogram) observe(v float64) {
	h.n++
	h.sum += v
	for _, b := range pendingAgeBuckets {
		if v <= b {
			h.counts[b]++
		}
	}
}

func groupOf(g string) string {
	if g == "" {
		return structs.DefaultResourceGroup
	}
	return g
}

// metricsHTTP serves GET /v1/metrics in Prometheus' text format: an admin
// token is needed unless the server runs with MetricsAnonymous.
func (s *Server) metricsHTTP(w http.ResponseWriter, r *http.Request) {
	if !s.cfg.MetricsAnonymous {
		id, err := s.authenticate(r)
		if err == nil && !id.admin() {
			err = errAdminOnly
		}
		if err != nil {
			code, msg := errorStatus(err)
			writeError(w, code, msg)
			return
		}
	}
	var g prometheus.Gatherer = s.metrics.reg
	if s.cfg.ExtraMetrics != nil {
		g = mergedGatherer{own: s.metrics.reg, extra: s.cfg.ExtraMetrics}
	}
	promhttp.HandlerFor(g, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}).ServeHTTP(w, r)
}

// mergedGatherer gathers the server's metrics and extra ones (the
// embedded agent's in corral dev), dropping extra families the server has
// too (go_*, process_*: one process).
type mergedGatherer struct{ own, extra prometheus.Gatherer }

func (m mergedGatherer) Gather() ([]*dto.MetricFamily, error) {
	own, err := m.own.Gather()
	if err != nil {
		return own, err
	}
	extra, err := m.extra.Gather()
	have := make(map[string]bool, len(own))
	for _, f := range own {
		have[f.GetName()] = true
	}
	for _, f := range extra {
		if !have[f.GetName()] {
			own = append(own, f)
		}
	}
	slices.SortFunc(own, func(a, b *dto.MetricFamily) int { return strings.Compare(a.GetName(), b.GetName()) })
	return own, err
}

// localRoutes serves, on this server without forwarding to the leader,
// the routes every server answers from its own state (the event stream,
// its metrics), hands the rest to next, and counts every request by the
// route pattern the API's mux matched.
func (s *Server) localRoutes(next http.Handler) http.Handler {
	local := http.NewServeMux()
	local.HandleFunc("GET /v1/events", s.eventsHTTP)
	local.HandleFunc("GET /v1/metrics", s.metricsHTTP)
	local.Handle("/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The API's mux sets the pattern it matched on this same request
		// when this server serves it; it stays empty when it is forwarded.
		r.Pattern = ""
		next.ServeHTTP(w, r)
	}))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rw := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
		local.ServeHTTP(rw, r)
		route := r.Pattern
		switch route {
		case "":
			route = "forwarded"
		case "/":
			route = "unmatched"
		}
		s.metrics.httpRequests.WithLabelValues(route, strconv.Itoa(rw.code)).Inc()
		s.metrics.httpDuration.WithLabelValues(route).Observe(time.Since(start).Seconds())
	})
}

// statusRecorder remembers the status code a handler answered with.
type statusRecorder struct {
	http.ResponseWriter
	code  int
	wrote bool
}

func (r *statusRecorder) WriteHeader(code int) {
	if !r.wrote {
		r.code, r.wrote = code, true
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Write(b []byte) (int, error) {
	r.wrote = true
	return r.ResponseWriter.Write(b)
}

// Flush passes streaming flushes through (events, exec, blocking queries).
func (r *statusRecorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Hijack hands the connection over (the exec WebSocket, a forwarded
// upgrade): the request counts as 101 Switching Protocols.
func (r *statusRecorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, rw, err := http.NewResponseController(r.ResponseWriter).Hijack()
	if err == nil && !r.wrote {
		r.code, r.wrote = http.StatusSwitchingProtocols, true
	}
	return c, rw, err
}

// Unwrap lets http.ResponseController reach the connection (hijacking
// for the exec WebSocket).
func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

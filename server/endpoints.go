package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/rpc"
	"github.com/corral-dev/corral/rpc/tlsutil"
	"github.com/corral-dev/corral/server/state"
	"github.com/corral-dev/corral/structs"
)

// Inference endpoints: the HTTP API (create, list, get, update, delete),
// the leader's replica manager (desired count, replacement of dead and
// unhealthy replicas, autoscaling, rolling updates, drains) and the load
// tracker that sums every server's router counters. The router itself is
// endpoint_router.go; docs/endpoints.md tells the whole story.

// Replica management timings (variables so that tests may shorten them).
var (
	// endpointInterval is how often the leader reconciles endpoints.
	endpointInterval = time.Second
	// drainPeriod is how long a replica taken out of routing keeps
	// serving the requests it has before it is destroyed.
	drainPeriod = 3 * time.Second
	// unhealthyAfter consecutive failed checks replace a replica that
	// served before; startGrace is how long a new one may take to pass
	// its first check after its kernel is RUNNING.
	unhealthyAfter = 3
	startGrace     = 2 * time.Minute
	// loadWindow is the window of the observed request rate.
	loadWindow = 5 * time.Second
)

// endpointState is the leader's in-memory view of its endpoints.
type endpointState struct {
	mu sync.Mutex // serializes read-modify-write of endpoints on the leader
	// lastUp and lowSince per endpoint feed DecideScale; known remembers
	// the live replicas seen in the last pass, to tell replacements.
	lastUp   map[string]time.Time
	lowSince map[string]time.Time
	known    map[string]map[string]bool
	// served marks replicas seen healthy; failures counts the replicas of
	// an endpoint in a row that ended without ever being healthy, and
	// holdUntil delays the next create (a crash loop backs off).
	served    map[string]bool
	failures  map[string]int
	holdUntil map[string]time.Time
	// lastRates keeps what the autoscaler last saw, for GET (under ratesMu).
	ratesMu   sync.Mutex
	lastRates map[string][2]float64
}

// loadTracker sums the routers' counters of all servers.
type loadTracker struct {
	mu sync.Mutex
	// samples[server][endpoint] are the counters over the last window.
	samples map[string]map[string][]loadSample
}

type loadSample struct {
	t time.Time
	c rpc.EndpointCounters
}

// record adds one server's report.
func (l *loadTracker) record(req *rpc.EndpointStatsRequest, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.samples == nil {
		l.samples = map[string]map[string][]loadSample{}
	}
	per := l.samples[req.Server]
	if per == nil {
		per = map[string][]loadSample{}
		l.samples[req.Server] = per
	}
	for name, c := range req.Endpoints {
		ss := per[name]
		if n := len(ss); n > 0 && c.Requests < ss[n-1].c.Requests {
			ss = nil // the server restarted: its counters start over
		}
		ss = append(ss, loadSample{t: now, c: c})
		for len(ss) > 2 && now.Sub(ss[1].t) >= loadWindow {
			ss = ss[1:]
		}
		per[name] = ss
	}
}

// rates returns an endpoint's request rate and mean concurrency over the
// window, summed over the servers that reported lately.
func (l *loadTracker) rates(name string, now time.Time) (rps, conc float64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, per := range l.samples {
		ss := per[name]
		if len(ss) < 2 || now.Sub(ss[len(ss)-1].t) > 2*loadWindow {
			continue
		}
		first, last := ss[0], ss[len(ss)-1]
		dt := last.t.Sub(first.t).Seconds()
		if dt <= 0 {
			continue
		}
		rps += float64(last.c.Requests-first.c.Requests) / dt
		conc += float64(last.c.InFlightNanos-first.c.InFlightNanos) / 1e9 / dt
	}
	return rps, conc
}

// EndpointStats takes a follower's router counters (leader only; servers only).
func (e *agentEndpoint) EndpointStats(ctx context.Context, req *rpc.EndpointStatsRequest) (*rpc.EndpointStatsResponse, error) {
	if cert := rpc.PeerCert(ctx); cert != nil {
		if role, _ := tlsutil.RoleOf(cert); role != tlsutil.RoleServer {
			return nil, status.Error(codes.PermissionDenied, "endpoint stats are taken from servers only")
		}
	}
	if !e.srv.IsLeader() {
		return nil, status.Error(codes.Unavailable, fmt.Sprintf("endpoint stats: %v", ErrNotLeader))
	}
	e.srv.load.record(req, time.Now())
	return &rpc.EndpointStatsResponse{Leader: e.srv.cfg.NodeName}, nil
}

// serveEndpointsOrAPI sends the router's paths (/v1/endpoints/NAME/...)
// to the router, which every server serves from its own state, and the
// rest of the API to next.
func (s *Server) serveEndpointsOrAPI(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if rest, ok := strings.CutPrefix(r.URL.Path, endpointPrefix); ok && strings.Contains(rest, "/") {
			s.serveEndpoint(w, r)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// registerEndpointAPI adds the endpoints' API to the mux.
func (s *Server) registerEndpointAPI(mux *http.ServeMux) {
	mux.HandleFunc("POST /v1/endpoints", s.wrap(s.createEndpoint))
	mux.HandleFunc("GET /v1/endpoints", s.wrap(s.listEndpoints))
	mux.HandleFunc("GET /v1/endpoints/{name}", s.wrap(s.getEndpoint))
	mux.HandleFunc("POST /v1/endpoints/{name}", s.wrap(s.updateEndpoint))
	mux.HandleFunc("DELETE /v1/endpoints/{name}", s.wrap(s.deleteEndpoint))
}

// sessionRequest is the create request of one replica of e.
func sessionRequest(e *structs.Endpoint) *api.CreateSessionRequest {
	return &api.CreateSessionRequest{
		// Validated as an interactive session (a single long-running
		// kernel), then made an inference replica.
		Type: structs.SessionTypeInteractive, Driver: e.Driver, Image: e.Image,
		Command: e.Command, Env: e.Env, Resources: e.Resources.Copy(), ResourceGroup: e.ResourceGroup,
	}
}

// replicaSession validates and builds one replica session of e as its
// owner's key would create it.
func (s *Server) replicaSession(ctx context.Context, snap *state.Snapshot, e *structs.Endpoint, now time.Time) (*structs.Session, []*structs.Kernel, error) {
	sess, kernels, err := s.validateCreate(sessionRequest(e), snap, "", now)
	if err != nil {
		return nil, nil, err
	}
	if err := s.admit(ctx, snap, sess, kernels); err != nil {
		return nil, nil, err
	}
	sess.Type = structs.SessionTypeInference
	sess.Endpoint, sess.EndpointGeneration = e.Name, e.Generation
	for _, k := range kernels {
		if k.Env == nil {
			k.Env = map[string]string{}
		}
		k.Env["CORRAL_ENDPOINT"] = e.Name
	}
	return sess, kernels, nil
}

func parseDelay(field, v string, def time.Duration) (time.Duration, error) {
	if v == "" {
		return def, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		return 0, badRequest("%s %q: want a Go duration such as 10s or 1m", field, v)
	}
	return d, nil
}

func (s *Server) createEndpoint(w http.ResponseWriter, r *http.Request) (any, error) {
	var req api.CreateEndpointRequest
	if err := decodeBody(r, &req); err != nil {
		return nil, err
	}
	if !nameRe.MatchString(req.Name) {
		return nil, badRequest("invalid endpoint name %q: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit", req.Name)
	}
	if req.Port < 1 || req.Port > 65535 {
		return nil, badRequest("port %d: give the port the replicas serve HTTP on (1-65535), e.g. -port 8000", req.Port)
	}
	if req.HealthPath == "" {
		req.HealthPath = "/"
	}
	if !strings.HasPrefix(req.HealthPath, "/") {
		return nil, badRequest("health path %q must start with '/'", req.HealthPath)
	}
	if req.Driver == "" {
		req.Driver = "runc"
	}
	id := callerOf(r.Context())
	e := &structs.Endpoint{
		Name: req.Name, AccessKey: id.key.AccessKey, Owner: id.key.User,
		Driver: req.Driver, Image: req.Image, Command: req.Command, Env: req.Env, Resources: req.Resources, ResourceGroup: req.ResourceGroup,
		Port: req.Port, HealthPath: req.HealthPath,
		Replicas: req.Replicas, MinReplicas: req.MinReplicas, MaxReplicas: req.MaxReplicas,
		TargetRPS: req.TargetRPS, TargetConcurrency: req.TargetConcurrency, Public: req.Public,
		Generation: 1, CreatedAt: time.Now().UTC(),
	}
	var err error
	if e.ScaleUpCooldown, err = parseDelay("scale_up_cooldown", req.ScaleUpCooldown, structs.DefaultScaleUpCooldown); err != nil {
		return nil, err
	}
	if e.ScaleDownDelay, err = parseDelay("scale_down_delay", req.ScaleDownDelay, structs.DefaultScaleDownDelay); err != nil {
		return nil, err
	}
	defaultCounts(e)
	if err := e.CheckScale(); err != nil {
		return nil, badRequest("%v", err)
	}
	snap := s.state.Snapshot()
	if _, err := snap.Endpoint(nil, e.Name); err == nil {
		return nil, &httpError{code: http.StatusConflict, msg: fmt.Sprintf("an endpoint named %q exists: delete it or pick another name", e.Name)}
	}
	// A dry run of a replica's create: the spec's errors are the user's now.
	if _, kernels, err := s.replicaSession(r.Context(), snap, e, e.CreatedAt); err != nil {
		return nil, err
	} else if err := s.checkRegistries(r.Context(), snap, e.ResourceGroup, kernels); err != nil {
		return nil, err
	}
	token := newEndpointToken()
	e.TokenHash = HashSecret(token)
	e.AddEvent(structs.EndpointEvent{Time: e.CreatedAt, Kind: "scale", From: 0, To: e.Replicas, Reason: fmt.Sprintf("created with %d replicas", e.Replicas)})
	s.endpoints.mu.Lock()
	defer s.endpoints.mu.Unlock()
	if _, err := s.state.Snapshot().Endpoint(nil, e.Name); err == nil {
		return nil, &httpError{code: http.StatusConflict, msg: fmt.Sprintf("an endpoint named %q exists: delete it or pick another name", e.Name)}
	}
	if _, _, err := s.apply(structs.EndpointUpsertRequestType, &structs.EndpointUpsertRequest{Endpoint: e, Time: e.CreatedAt}); err != nil {
		return nil, err
	}
	d, err := s.endpointDetail(r.Context(), e.Name)
	if err != nil {
		return nil, err
	}
	d.Token = token
	return d, nil
}

// defaultCounts fills the replica counts a request left out.
func defaultCounts(e *structs.Endpoint) {
	if e.Autoscaled() {
		if e.MinReplicas == 0 {
			e.MinReplicas = 1
		}
		if e.MaxReplicas == 0 {
			e.MaxReplicas = max(8, e.MinReplicas, e.Replicas)
		}
	} else {
		if e.Replicas == 0 {
			e.Replicas = max(e.MinReplicas, 1)
		}
		if e.MinReplicas == 0 {
			e.MinReplicas = min(e.Replicas, max(e.MaxReplicas, e.Replicas))
		}
		if e.MaxReplicas == 0 {
			e.MaxReplicas = max(e.Replicas, e.MinReplicas)
		}
	}
	if e.Replicas == 0 {
		e.Replicas = e.MinReplicas
	}
}

func newEndpointToken() string {
	b := make([]byte, 24)
	_, _ = rand.Read(b)
	return "ep_" + hex.EncodeToString(b)
}

// visibleEndpoint finds an endpoint the caller may see (404 otherwise).
func visibleEndpoint(ctx context.Context, snap *state.Snapshot, name string) (*structs.Endpoint, error) {
	e, err := snap.Endpoint(nil, name)
	if err != nil {
		return nil, err
	}
	id := callerOf(ctx)
	if id == nil || !(id.admin() || id.key.User == e.Owner) {
		return nil, fmt.Errorf("no endpoint named %q: %w", name, state.ErrNotFound)
	}
	return e, nil
}

// endpointDetail builds the API view of an endpoint.
func (s *Server) endpointDetail(ctx context.Context, name string) (*api.EndpointDetail, error) {
	snap := s.state.Snapshot()
	e, err := visibleEndpoint(ctx, snap, name)
	if err != nil {
		return nil, err
	}
	c := e.Copy()
	c.TokenHash = ""
	d := &api.EndpointDetail{Endpoint: c, Path: endpointPrefix + e.Name + "/", Replicas: []api.EndpointReplica{}}
	s.endpoints.ratesMu.Lock()
	if r, ok := s.endpoints.lastRates[e.Name]; ok {
		d.RPS, d.Concurrency = r[0], r[1]
	}
	s.endpoints.ratesMu.Unlock()
	reps, _ := snap.EndpointReplicas(nil, e.Name)
	for _, sess := range reps {
		if sess.Status.Terminal() {
			continue
		}
		rep := api.EndpointReplica{SessionID: sess.ID, Status: string(sess.Status), Generation: sess.EndpointGeneration, Health: "unknown", Created: sess.CreatedAt}
		_, rep.Draining = e.Draining[sess.ID]
		if len(sess.KernelIDs) > 0 {
			rep.KernelID = sess.KernelIDs[0]
			if k, err := snap.Kernel(rep.KernelID); err == nil && k.AgentID != "" {
				rep.Agent = k.AgentID
				if a, err := snap.Agent(nil, k.AgentID); err == nil {
					rep.Agent = a.Name
				}
			}
			if h, ok := s.router.healthOf(rep.KernelID); ok {
				if h.ok {
					rep.Health = "healthy"
				} else {
					rep.Health = "unhealthy: " + h.err
				}
			}
		}
		d.Replicas = append(d.Replicas, rep)
	}
	return d, nil
}

func (s *Server) listEndpoints(w http.ResponseWriter, r *http.Request) (any, error) {
	eps, err := s.state.Snapshot().Endpoints()
	if err != nil {
		return nil, err
	}
	out := []*api.EndpointDetail{}
	for _, e := range eps {
		d, err := s.endpointDetail(r.Context(), e.Name)
		if err != nil {
			continue // another user's
		}
		out = append(out, d)
	}
	return out, nil
}

func (s *Server) getEndpoint(w http.ResponseWriter, r *http.Request) (any, error) {
	return s.endpointDetail(r.Context(), r.PathValue("name"))
}

func (s *Server) updateEndpoint(w http.ResponseWriter, r *http.Request) (any, error) {
	var req api.UpdateEndpointRequest
	if err := decodeBody(r, &req); err != nil {
		return nil, err
	}
	s.endpoints.mu.Lock()
	defer s.endpoints.mu.Unlock()
	snap := s.state.Snapshot()
	cur, err := visibleEndpoint(r.Context(), snap, r.PathValue("name"))
	if err != nil {
		return nil, err
	}
	e := cur.Copy()
	now := time.Now().UTC()
	var changes []string
	specChanged := false
	if req.Image != nil && *req.Image != e.Image {
		changes = append(changes, fmt.Sprintf("image %s → %s", e.Image, *req.Image))
		e.Image, specChanged = *req.Image, true
	}
	if req.Command != nil && !slices.Equal(req.Command, e.Command) {
		changes = append(changes, "command")
		e.Command, specChanged = req.Command, true
	}
	if req.HealthPath != nil {
		if !strings.HasPrefix(*req.HealthPath, "/") {
			return nil, badRequest("health path %q must start with '/'", *req.HealthPath)
		}
		e.HealthPath = *req.HealthPath
	}
	if req.Public != nil {
		e.Public = *req.Public
	}
	if req.TargetRPS != nil {
		e.TargetRPS = *req.TargetRPS
	}
	if req.TargetConcurrency != nil {
		e.TargetConcurrency = *req.TargetConcurrency
	}
	if req.MinReplicas != nil {
		e.MinReplicas = *req.MinReplicas
	}
	if req.MaxReplicas != nil {
		e.MaxReplicas = *req.MaxReplicas
	}
	if req.ScaleUpCooldown != nil {
		if e.ScaleUpCooldown, err = parseDelay("scale_up_cooldown", *req.ScaleUpCooldown, structs.DefaultScaleUpCooldown); err != nil {
			return nil, err
		}
	}
	if req.ScaleDownDelay != nil {
		if e.ScaleDownDelay, err = parseDelay("scale_down_delay", *req.ScaleDownDelay, structs.DefaultScaleDownDelay); err != nil {
			return nil, err
		}
	}
	if req.Replicas != nil {
		if *req.Replicas != e.Replicas {
			e.AddEvent(structs.EndpointEvent{Time: now, Kind: "scale", From: e.Replicas, To: *req.Replicas, Reason: "set by user"})
		}
		e.Replicas = *req.Replicas
		// A count outside the bounds moves them, as a user would expect.
		if req.MinReplicas == nil && e.Replicas < e.MinReplicas {
			e.MinReplicas = e.Replicas
		}
		if req.MaxReplicas == nil && e.Replicas > e.MaxReplicas {
			e.MaxReplicas = e.Replicas
		}
	} else {
		e.Replicas = max(min(e.Replicas, e.MaxReplicas), e.MinReplicas)
	}
	if err := e.CheckScale(); err != nil {
		return nil, badRequest("%v", err)
	}
	if specChanged {
		if _, kernels, err := s.replicaSession(r.Context(), snap, e, now); err != nil {
			return nil, err
		} else if err := s.checkRegistries(r.Context(), snap, e.ResourceGroup, kernels); err != nil {
			return nil, err
		}
		e.Generation++
		e.AddEvent(structs.EndpointEvent{Time: now, Kind: "update", Reason: fmt.Sprintf("rolling update to generation %d: %s", e.Generation, strings.Join(changes, ", "))})
	}
	if _, _, err := s.apply(structs.EndpointUpsertRequestType, &structs.EndpointUpsertRequest{Endpoint: e, Time: now}); err != nil {
		return nil, err
	}
	return s.endpointDetail(r.Context(), e.Name)
}

func (s *Server) deleteEndpoint(w http.ResponseWriter, r *http.Request) (any, error) {
	s.endpoints.mu.Lock()
	defer s.endpoints.mu.Unlock()
	e, err := visibleEndpoint(r.Context(), s.state.Snapshot(), r.PathValue("name"))
	if err != nil {
		return nil, err
	}
	req := &structs.EndpointDeleteRequest{Name: e.Name, Reason: fmt.Sprintf("endpoint %s deleted by user", e.Name), Time: time.Now().UTC()}
	if _, _, err := s.apply(structs.EndpointDeleteRequestType, req); err != nil {
		return nil, err
	}
	return map[string]string{"deleted": e.Name}, nil
}

// manageEndpoints is the leader's replica manager loop.
func (s *Server) manageEndpoints(ctx context.Context) {
	t := time.NewTicker(endpointInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		// The leader's own counters go to its tracker every pass too.
		eps, err := s.state.Snapshot().Endpoints()
		if err != nil {
			continue
		}
		for _, e := range eps {
			if ctx.Err() != nil {
				return
			}
			if err := s.reconcileEndpoint(ctx, e.Name); err != nil {
				s.logger.Warn("endpoint reconcile failed", "endpoint", e.Name, "error", err)
			}
		}
	}
}

// replicaView is one live replica as the manager sees it.
type replicaView struct {
	sess     *structs.Session
	kernel   *structs.Kernel
	healthy  bool
	draining bool
}

// reconcileEndpoint moves one endpoint one step towards what it should
// be: drained replicas destroyed, unhealthy ones replaced, the count
// scaled, old generations rolled, missing replicas created.
func (s *Server) reconcileEndpoint(ctx context.Context, name string) error {
	s.endpoints.mu.Lock()
	defer s.endpoints.mu.Unlock()
	snap := s.state.Snapshot()
	cur, err := snap.Endpoint(nil, name)
	if err != nil {
		return nil // deleted meanwhile
	}
	e := cur.Copy()
	now := time.Now().UTC()
	changed := false
	event := func(kind string, from, to int, reason string) {
		e.AddEvent(structs.EndpointEvent{Time: now, Kind: kind, From: from, To: to, Reason: reason})
		changed = true
		s.logger.Info("endpoint event", "endpoint", name, "kind", kind, "reason", reason)
	}
	reps, err := snap.EndpointReplicas(nil, name)
	if err != nil {
		return err
	}
	if s.endpoints.served == nil {
		s.endpoints.served, s.endpoints.failures, s.endpoints.holdUntil = map[string]bool{}, map[string]int{}, map[string]time.Time{}
	}
	var live []*replicaView
	liveIDs := map[string]bool{}
	for _, sess := range reps {
		if sess.Status.Terminal() {
			if _, ok := e.Draining[sess.ID]; ok {
				delete(e.Draining, sess.ID)
				changed = true
			}
			if s.endpoints.known[name][sess.ID] {
				s.replicaEnded(name, sess, now, event)
			}
			continue
		}
		v := &replicaView{sess: sess}
		if len(sess.KernelIDs) > 0 {
			v.kernel, _ = snap.Kernel(sess.KernelIDs[0])
		}
		_, v.draining = e.Draining[sess.ID]
		if sess.Status == structs.SessionTerminating {
			v.draining = true
		}
		if v.kernel != nil {
			h, checked := s.router.healthOf(v.kernel.ID)
			v.healthy = checked && h.ok && v.kernel.Status == structs.KernelRunning
			if v.healthy {
				s.endpoints.served[sess.ID] = true
				s.endpoints.failures[name] = 0
			}
			if !v.draining && v.kernel.Status == structs.KernelRunning && checked && !h.ok {
				since := kernelRunningSince(v.kernel)
				if (h.everOK && h.fails >= unhealthyAfter) || (!h.everOK && !since.IsZero() && now.Sub(since) > startGrace) {
					why := fmt.Sprintf("replica %s unhealthy: %s (%d failed checks)", sess.ID[:8], h.err, h.fails)
					if err := s.destroyReplica(sess.ID, why, now); err != nil {
						return err
					}
					event("replace", 0, 0, why+"; a new one replaces it")
					continue
				}
			}
		}
		if !v.draining {
			liveIDs[sess.ID] = true
		}
		live = append(live, v)
	}
	if s.endpoints.known == nil {
		s.endpoints.known = map[string]map[string]bool{}
	}
	s.endpoints.known[name] = liveIDs

	// Drains: destroy once the period passed and this server's requests to
	// it are done (other servers stopped sending when they saw the drain).
	for _, v := range live {
		since, ok := e.Draining[v.sess.ID]
		if !ok || v.sess.Status == structs.SessionTerminating {
			continue
		}
		idle := v.kernel == nil || s.router.kernelInflight(v.kernel.ID).Load() == 0
		if now.Sub(since) >= drainPeriod && (idle || now.Sub(since) > 10*drainPeriod) {
			if err := s.destroyReplica(v.sess.ID, fmt.Sprintf("drained from endpoint %s", name), now); err != nil {
				return err
			}
			delete(e.Draining, v.sess.ID)
			changed = true
		}
	}

	// Autoscaling.
	rps, conc := s.load.rates(name, now)
	if s.endpoints.lastUp == nil {
		s.endpoints.lastUp, s.endpoints.lowSince = map[string]time.Time{}, map[string]time.Time{}
	}
	s.endpoints.ratesMu.Lock()
	if s.endpoints.lastRates == nil {
		s.endpoints.lastRates = map[string][2]float64{}
	}
	s.endpoints.lastRates[name] = [2]float64{rps, conc}
	s.endpoints.ratesMu.Unlock()
	if e.Autoscaled() {
		dec := structs.DecideScale(structs.ScaleInput{
			Now: now, Current: e.Replicas, Min: e.MinReplicas, Max: e.MaxReplicas,
			TargetRPS: e.TargetRPS, TargetConcurrency: e.TargetConcurrency, RPS: rps, Concurrency: conc,
			LastScaleUp: s.endpoints.lastUp[name], LowSince: s.endpoints.lowSince[name],
			ScaleUpCooldown: e.ScaleUpCooldown, ScaleDownDelay: e.ScaleDownDelay,
		})
		s.endpoints.lowSince[name] = dec.LowSince
		if dec.Replicas != e.Replicas {
			if dec.Replicas > e.Replicas {
				s.endpoints.lastUp[name] = now
			}
			event("scale", e.Replicas, dec.Replicas, dec.Reason)
			e.Replicas = dec.Replicas
		}
	}

	// Counts: active replicas are the live ones not draining.
	var active, oldGen []*replicaView
	healthyNew := 0
	for _, v := range live {
		if v.draining {
			continue
		}
		active = append(active, v)
		if v.sess.EndpointGeneration < e.Generation {
			oldGen = append(oldGen, v)
		} else if v.healthy {
			healthyNew++
		}
	}
	want := e.Replicas
	drain := func(v *replicaView, why string) {
		if e.Draining == nil {
			e.Draining = map[string]time.Time{}
		}
		e.Draining[v.sess.ID] = now
		event("drain", 0, 0, fmt.Sprintf("replica %s out of routing: %s", v.sess.ID[:8], why))
	}
	create := 0
	switch {
	case len(oldGen) > 0:
		// Rolling update, one extra replica at a time: a new one starts;
		// once it is healthy an old one drains.
		if healthyNew+len(oldGen) > want {
			drain(oldest(oldGen), fmt.Sprintf("replaced by generation %d", e.Generation))
		} else if len(active) <= want {
			create = 1
		}
	case len(active) < want:
		create = want - len(active)
	case len(active) > want:
		extra := len(active) - want
		for _, v := range drainOrder(active)[:extra] {
			drain(v, fmt.Sprintf("scaled down to %d", want))
		}
	}
	if changed {
		if _, _, err := s.apply(structs.EndpointUpsertRequestType, &structs.EndpointUpsertRequest{Endpoint: e, Time: now}); err != nil {
			return err
		}
	}
	if create > 0 && now.Before(s.endpoints.holdUntil[name]) {
		create = 0
	}
	for i := 0; i < create; i++ {
		id, err := s.createReplica(ctx, e, now)
		if err != nil {
			return err
		}
		// Known from its birth: a replica that ends before the next pass
		// still counts as a failure.
		s.endpoints.known[name][id] = true
	}
	return nil
}

// maxReplicaBackoff bounds the delay before a new replica after replicas
// that kept failing before they ever were healthy.
const maxReplicaBackoff = time.Minute

// replicaEnded records a replica that ended without being drained: a new
// one replaces it, after a backoff when replicas keep failing before they
// ever serve (a crash loop must not create a session a second).
func (s *Server) replicaEnded(name string, sess *structs.Session, now time.Time, event func(kind string, from, to int, reason string)) {
	why := fmt.Sprintf("replica %s ended (%s: %s)", sess.ID[:8], sess.Status, sess.StatusInfo)
	if s.endpoints.served[sess.ID] {
		delete(s.endpoints.served, sess.ID)
		s.endpoints.failures[name] = 0
		event("replace", 0, 0, why+"; a new one replaces it")
		return
	}
	n := s.endpoints.failures[name] + 1
	s.endpoints.failures[name] = n
	wait := min(time.Second<<min(n-1, 6), maxReplicaBackoff)
	s.endpoints.holdUntil[name] = now.Add(wait)
	event("replace", 0, 0, fmt.Sprintf("%s before it was ever healthy (%d in a row); the next one starts in %s", why, n, wait))
}

// oldest returns the replica created first.
func oldest(vs []*replicaView) *replicaView {
	o := vs[0]
	for _, v := range vs[1:] {
		if v.sess.CreateIndex < o.sess.CreateIndex {
			o = v
		}
	}
	return o
}

// drainOrder sorts replicas by how little is lost removing them:
// unhealthy and not yet running ones first, then the newest.
func drainOrder(vs []*replicaView) []*replicaView {
	out := slices.Clone(vs)
	slices.SortStableFunc(out, func(a, b *replicaView) int {
		if a.healthy != b.healthy {
			if !a.healthy {
				return -1
			}
			return 1
		}
		switch {
		case a.sess.CreateIndex > b.sess.CreateIndex:
			return -1
		case a.sess.CreateIndex < b.sess.CreateIndex:
			return 1
		}
		return 0
	})
	return out
}

// kernelRunningSince is when the kernel last became RUNNING.
func kernelRunningSince(k *structs.Kernel) time.Time {
	for i := len(k.History) - 1; i >= 0; i-- {
		if k.History[i].Status == string(structs.KernelRunning) {
			return k.History[i].Time
		}
	}
	return time.Time{}
}

// createReplica enqueues one replica session of e as its owner's key.
func (s *Server) createReplica(ctx context.Context, e *structs.Endpoint, now time.Time) (string, error) {
	snap := s.state.Snapshot()
	key, err := snap.Key(e.AccessKey)
	if err != nil || key.Revoked {
		return "", fmt.Errorf("endpoint %s: the access key %s it was created with is gone or revoked: no replica can be created", e.Name, e.AccessKey)
	}
	sess, kernels, err := s.replicaSession(withIdentity(ctx, &identity{key: key}), snap, e, now)
	if err != nil {
		return "", fmt.Errorf("endpoint %s: creating a replica: %w", e.Name, err)
	}
	enq := &structs.SessionEnqueueRequest{Session: sess, Kernels: kernels, Time: now}
	if _, _, err := s.apply(structs.SessionEnqueueRequestType, enq); err != nil {
		return "", fmt.Errorf("endpoint %s: enqueueing a replica: %w", e.Name, err)
	}
	s.logger.Info("endpoint replica created", "endpoint", e.Name, "session_id", sess.ID, "generation", e.Generation)
	return sess.ID, nil
}

// destroyReplica ends one replica session.
func (s *Server) destroyReplica(id, reason string, now time.Time) error {
	_, _, err := s.apply(structs.SessionDestroyRequestType, &structs.SessionDestroyRequest{SessionID: id, Reason: reason, Time: now})
	return err
}

package server

import (
	"bytes"
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/corral-dev/corral/rpc"
	"github.com/corral-dev/corral/structs"
)

// The endpoint router: every server (leader or follower) serves
// /v1/endpoints/{name}/... itself from its own copy of the raft state,
// proxying each request to a healthy replica of the endpoint through the
// replica's agent (dialKernel). It counts requests for the leader's
// autoscaler and health-checks the replicas it routes to.

// endpointPrefix starts the router's paths: /v1/endpoints/{name}/{rest...}.
const endpointPrefix = "/v1/endpoints/"

// routerRetries bounds how many replicas one request tries.
const routerRetries = 3

// maxReplayBody is the largest request body the router holds in memory
// so that it can resend the request to another replica.
const maxReplayBody = 1 << 20

// Health checking of replicas (every server checks those it routes to).
var (
	healthInterval = time.Second
	healthTimeout  = 2 * time.Second
)

// router is one server's endpoint router state.
type router struct {
	s         *Server
	transport *http.Transport
	proxy     *httputil.ReverseProxy

	mu sync.Mutex
	// stats per endpoint name: counters reported to the leader.
	stats map[string]*endpointCounters
	// inflight per kernel ID: requests this server has open to it.
	inflight map[string]*atomic.Int64
	// health per kernel ID, from this server's checks.
	health map[string]*replicaHealth
	rr     atomic.Uint64
}

// endpointCounters are one endpoint's counters on this server.
type endpointCounters struct {
	mu       sync.Mutex
	requests uint64
	inflight int64
	integral uint64 // request-nanoseconds in flight
	last     time.Time
}

func (c *endpointCounters) add(delta int64, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.last.IsZero() && c.inflight > 0 {
		c.integral += uint64(c.inflight) * uint64(now.Sub(c.last))
	}
	c.last = now
	c.inflight += delta
	if delta > 0 {
		c.requests++
	}
}

func (c *endpointCounters) snapshot(now time.Time) rpc.EndpointCounters {
	c.add(0, now)
	c.mu.Lock()
	defer c.mu.Unlock()
	return rpc.EndpointCounters{Requests: c.requests, InFlightNanos: c.integral}
}

// replicaHealth is the result of the last health checks of one replica.
type replicaHealth struct {
	ok bool
	// fails counts consecutive failed checks; err is the last failure.
	fails   int
	err     string
	checked time.Time
	// everOK: the replica passed a check once (it started serving).
	everOK bool
}

func newRouter(s *Server) *router {
	rt := &router{s: s, stats: map[string]*endpointCounters{}, inflight: map[string]*atomic.Int64{}, health: map[string]*replicaHealth{}}
	rt.transport = &http.Transport{
		DialContext:         rt.dial,
		MaxIdleConns:        1024,
		MaxIdleConnsPerHost: 128,
		IdleConnTimeout:     90 * time.Second,
		// Replicas speak plain HTTP/1.1 on their port.
		ForceAttemptHTTP2: false,
	}
	rt.proxy = &httputil.ReverseProxy{
		Transport:     &retryTransport{rt: rt},
		Rewrite:       func(pr *httputil.ProxyRequest) { pr.SetXForwarded() },
		FlushInterval: -1,
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			code := http.StatusBadGateway
			var he *httpError
			if errors.As(err, &he) {
				code = he.code
			}
			writeError(w, code, err.Error())
		},
	}
	return rt
}

// dial connects to "KERNELID:PORT" through the kernel's agent.
func (rt *router) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, &dialError{err}
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, &dialError{err}
	}
	k, err := rt.s.state.Snapshot().Kernel(host)
	if err != nil {
		return nil, &dialError{err}
	}
	conn, err := rt.s.dialKernel(ctx, k, port)
	if err != nil {
		return nil, &dialError{err}
	}
	return conn, nil
}

// dialError marks a failure to connect: the request was not sent.
type dialError struct{ err error }

func (e *dialError) Error() string { return e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

func (rt *router) counters(name string) *endpointCounters {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	c := rt.stats[name]
	if c == nil {
		c = &endpointCounters{}
		rt.stats[name] = c
	}
	return c
}

func (rt *router) kernelInflight(id string) *atomic.Int64 {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	c := rt.inflight[id]
	if c == nil {
		c = new(atomic.Int64)
		rt.inflight[id] = c
	}
	return c
}

// healthOf returns a copy of a replica's health, and whether it was checked.
func (rt *router) healthOf(kernelID string) (replicaHealth, bool) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	h, ok := rt.health[kernelID]
	if !ok {
		return replicaHealth{}, false
	}
	return *h, true
}

// target is one replica the router may send to.
type target struct {
	sessionID string
	kernel    *structs.Kernel
}

// replicaKernels returns the main kernel of each live replica of e with
// whether this server may route to it (RUNNING, not draining, healthy).
func (s *Server) replicaKernels(e *structs.Endpoint) (all []target, routable []target) {
	snap := s.state.Snapshot()
	reps, err := snap.EndpointReplicas(nil, e.Name)
	if err != nil {
		return nil, nil
	}
	for _, sess := range reps {
		if sess.Status.Terminal() || len(sess.KernelIDs) == 0 {
			continue
		}
		k, err := snap.Kernel(sess.KernelIDs[0])
		if err != nil {
			continue
		}
		t := target{sessionID: sess.ID, kernel: k}
		all = append(all, t)
		if _, draining := e.Draining[sess.ID]; draining || sess.Status == structs.SessionTerminating || k.Status != structs.KernelRunning {
			continue
		}
		if h, ok := s.router.healthOf(k.ID); ok && h.ok {
			routable = append(routable, t)
		}
	}
	return all, routable
}

// pick chooses the routable replica with the fewest requests in flight
// from this server, skipping tried ones; ties go round robin.
func (rt *router) pick(routable []target, tried map[string]bool) *target {
	n := len(routable)
	if n == 0 {
		return nil
	}
	start := int(rt.rr.Add(1) % uint64(n))
	var best *target
	var bestLoad int64
	for i := 0; i < n; i++ {
		t := &routable[(start+i)%n]
		if tried[t.kernel.ID] {
			continue
		}
		load := rt.kernelInflight(t.kernel.ID).Load()
		if best == nil || load < bestLoad {
			best, bestLoad = t, load
		}
	}
	return best
}

type routeKey struct{}

// route is what the handler tells the transport about one request.
type route struct {
	endpoint *structs.Endpoint
	replayOK bool // the body can be sent again
}

// serveEndpoint is the router's handler of /v1/endpoints/{name}/{rest...}.
func (s *Server) serveEndpoint(w http.ResponseWriter, r *http.Request) {
	name, rest, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, endpointPrefix), "/")
	e, err := s.state.Snapshot().Endpoint(nil, name)
	if err != nil {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no endpoint named %q", name))
		return
	}
	if err := s.authorizeEndpoint(r, e); err != nil {
		code, msg := errorStatus(err)
		writeError(w, code, msg)
		return
	}
	// The caller's corral or endpoint token is not the replica's business.
	r.Header.Del("Authorization")
	rt := &route{endpoint: e}
	if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
		rt.replayOK = true
	} else if r.ContentLength > 0 && r.ContentLength <= maxReplayBody {
		body, err := io.ReadAll(io.LimitReader(r.Body, maxReplayBody+1))
		if err != nil {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("reading the request body: %v", err))
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
		rt.replayOK = true
	}
	out := r.Clone(context.WithValue(r.Context(), routeKey{}, rt))
	out.URL.Path = "/" + rest
	out.URL.RawPath = ""
	out.URL.Scheme, out.URL.Host = "http", "replica"
	c := s.router.counters(e.Name)
	c.add(1, time.Now())
	defer func() { c.add(-1, time.Now()) }()
	s.router.proxy.ServeHTTP(w, out)
}

// authorizeEndpoint lets a request through when the endpoint is public,
// or it carries the endpoint's token, or the token of the owner's key or
// an admin key.
func (s *Server) authorizeEndpoint(r *http.Request, e *structs.Endpoint) error {
	if e.Public {
		return nil
	}
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		return &httpError{code: http.StatusUnauthorized, msg: fmt.Sprintf("endpoint %s needs 'Authorization: Bearer <token>': its token (shown at create) or your corral token", e.Name)}
	}
	token = strings.TrimSpace(token)
	if e.TokenHash != "" && subtle.ConstantTimeCompare([]byte(HashSecret(token)), []byte(e.TokenHash)) == 1 {
		return nil
	}
	id, err := s.authenticate(r)
	if err != nil {
		return &httpError{code: http.StatusUnauthorized, msg: fmt.Sprintf("invalid token for endpoint %s", e.Name)}
	}
	if id.admin() || id.key.User == e.Owner {
		return nil
	}
	return &httpError{code: http.StatusForbidden, msg: fmt.Sprintf("endpoint %s belongs to another user: use its token", e.Name)}
}

// retryTransport sends a routed request to a replica and, when the
// connection to one fails before the request was sent (or the request
// can safely be sent again), to another one.
type retryTransport struct{ rt *router }

func (t *retryTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	ro, _ := req.Context().Value(routeKey{}).(*route)
	if ro == nil {
		return nil, errors.New("request without a route")
	}
	rt := t.rt
	tried := map[string]bool{}
	var lastErr error
	for attempt := 0; attempt < routerRetries; attempt++ {
		_, routable := rt.s.replicaKernels(ro.endpoint)
		tg := rt.pick(routable, tried)
		if tg == nil && attempt > 0 && len(routable) > 0 {
			// Every replica was tried once; try the least loaded again.
			tried = map[string]bool{}
			tg = rt.pick(routable, tried)
		}
		if tg == nil {
			if lastErr != nil {
				return nil, lastErr
			}
			return nil, &httpError{code: http.StatusServiceUnavailable, msg: fmt.Sprintf("endpoint %s has no healthy replica yet (%d desired)", ro.endpoint.Name, ro.endpoint.Replicas)}
		}
		tried[tg.kernel.ID] = true
		out := req
		if attempt > 0 {
			out = req.Clone(req.Context())
			if req.GetBody != nil {
				b, err := req.GetBody()
				if err != nil {
					return nil, err
				}
				out.Body = b
			}
		}
		u := *req.URL
		u.Host = tg.kernel.ID + ":" + strconv.Itoa(ro.endpoint.Port)
		out.URL = &u
		out.Host = req.Host
		in := rt.kernelInflight(tg.kernel.ID)
		in.Add(1)
		resp, err := rt.transport.RoundTrip(out)
		if err == nil {
			resp.Body = &doneBody{ReadCloser: resp.Body, done: func() { in.Add(-1) }}
			return resp, nil
		}
		in.Add(-1)
		lastErr = fmt.Errorf("replica %s of endpoint %s: %w", tg.sessionID[:8], ro.endpoint.Name, err)
		var de *dialError
		sent := !errors.As(err, &de)
		if sent && !(ro.replayOK && idempotentMethod(req.Method)) {
			return nil, lastErr
		}
		if req.Context().Err() != nil {
			return nil, lastErr
		}
		rt.s.logger.Debug("endpoint request retried on another replica", "endpoint", ro.endpoint.Name, "session_id", tg.sessionID, "error", err)
	}
	return nil, lastErr
}

// idempotentMethod: requests a replica may see twice without harm.
func idempotentMethod(m string) bool {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodPut, http.MethodDelete, http.MethodTrace:
		return true
	}
	return false
}

// doneBody calls done once when the body is closed.
type doneBody struct {
	io.ReadCloser
	once sync.Once
	done func()
}

func (b *doneBody) Close() error {
	err := b.ReadCloser.Close()
	b.once.Do(b.done)
	return err
}

// Write lets a 101 Switching Protocols body (a WebSocket) be written.
func (b *doneBody) Write(p []byte) (int, error) {
	if w, ok := b.ReadCloser.(io.Writer); ok {
		return w.Write(p)
	}
	return 0, errors.New("body is not writable")
}

// checkHealth probes every live replica of every endpoint once.
func (rt *router) checkHealth(ctx context.Context) {
	eps, err := rt.s.state.Snapshot().Endpoints()
	if err != nil {
		return
	}
	var wg sync.WaitGroup
	live := map[string]bool{}
	for _, e := range eps {
		all, _ := rt.s.replicaKernels(e)
		for _, tg := range all {
			live[tg.kernel.ID] = true
			if tg.kernel.Status != structs.KernelRunning {
				continue
			}
			wg.Add(1)
			go func(e *structs.Endpoint, k *structs.Kernel) {
				defer wg.Done()
				err := rt.probe(ctx, e, k)
				rt.mu.Lock()
				h := rt.health[k.ID]
				if h == nil {
					h = &replicaHealth{}
					rt.health[k.ID] = h
				}
				h.checked = time.Now()
				if err == nil {
					h.ok, h.fails, h.err, h.everOK = true, 0, "", true
				} else {
					h.ok = false
					h.fails++
					h.err = err.Error()
				}
				rt.mu.Unlock()
			}(e, tg.kernel)
		}
	}
	wg.Wait()
	rt.mu.Lock()
	for id := range rt.health {
		if !live[id] {
			delete(rt.health, id)
		}
	}
	for id, c := range rt.inflight {
		if !live[id] && c.Load() == 0 {
			delete(rt.inflight, id)
		}
	}
	rt.mu.Unlock()
}

// probe GETs a replica's health path: nil for a 2xx answer.
func (rt *router) probe(ctx context.Context, e *structs.Endpoint, k *structs.Kernel) error {
	ctx, cancel := context.WithTimeout(ctx, healthTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+k.ID+":"+strconv.Itoa(e.Port)+e.HealthPath, nil)
	if err != nil {
		return err
	}
	resp, err := rt.transport.RoundTrip(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("GET %s answered %s", e.HealthPath, resp.Status)
	}
	return nil
}

// runRouterDuties health-checks replicas and reports this server's
// counters to the leader (on the leader they go straight to its tracker)
// until the server stops.
func (s *Server) runRouterDuties() {
	t := time.NewTicker(healthInterval)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		s.router.checkHealth(s.ctx)
		s.reportEndpointStats()
	}
}

// reportEndpointStats hands this server's counters to the leader.
func (s *Server) reportEndpointStats() {
	now := time.Now()
	req := &rpc.EndpointStatsRequest{Server: s.id, Endpoints: map[string]rpc.EndpointCounters{}}
	s.router.mu.Lock()
	names := make([]string, 0, len(s.router.stats))
	for n := range s.router.stats {
		names = append(names, n)
	}
	s.router.mu.Unlock()
	for _, n := range names {
		req.Endpoints[n] = s.router.counters(n).snapshot(now)
	}
	if s.IsLeader() {
		s.load.record(req, now)
		return
	}
	if len(req.Endpoints) == 0 {
		return
	}
	cl, err := s.leaderClient()
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(s.ctx, 2*time.Second)
	defer cancel()
	if _, err := cl.EndpointStats(ctx, req); err != nil {
		s.logger.Debug("reporting endpoint stats to the leader failed", "error", err)
	}
}

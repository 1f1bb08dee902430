package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sync"
	"time"

	"github.com/hashicorp/serf/serf"
	"google.golang.org/grpc"

	"github.com/corral-dev/corral/gossip"
	"github.com/corral-dev/corral/rpc"
	"github.com/corral-dev/corral/rpc/tlsutil"
	"github.com/corral-dev/corral/structs"
)

// forwardedHeader marks a request one server forwarded to another, so that
// a request never goes round in circles while leadership moves.
const forwardedHeader = "X-Corral-Forwarded-By"

// forwardToLeader serves the API on the leader and makes followers proxy
// every request to it: writes must go through the leader's raft, and reads
// there see every acknowledged write. Streams (exec, blocking queries) are
// proxied as they come.
func (s *Server) forwardToLeader(next http.Handler) http.Handler {
	var mu sync.Mutex
	proxies := map[string]*httputil.ReverseProxy{}
	proxyFor := func(addr string) *httputil.ReverseProxy {
		mu.Lock()
		defer mu.Unlock()
		if p, ok := proxies[addr]; ok {
			return p
		}
		target := &url.URL{Scheme: "http", Host: addr}
		var transport http.RoundTripper
		if s.cfg.HTTPTLS {
			target.Scheme = "https"
			transport = &http.Transport{TLSClientConfig: s.cfg.Security.TLS.ClientConfig(tlsutil.RoleServer), ForceAttemptHTTP2: true}
		}
		p := &httputil.ReverseProxy{
			Transport: transport,
			Rewrite: func(pr *httputil.ProxyRequest) {
				pr.SetURL(target)
				pr.Out.Host = pr.In.Host
				pr.Out.Header.Set(forwardedHeader, s.cfg.NodeName)
			},
			FlushInterval: -1,
			ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
				if a, ok := r.Context().Value(forwardAttemptKey{}).(*forwardAttempt); ok && (notSent(err) || idempotentRequest(r)) {
					// Nothing reached the old leader, or the request is
					// idempotent (a create with a key the FSM dedups):
					// try the next leader.
					a.dialErr = err
					return
				}
				writeError(w, http.StatusServiceUnavailable, fmt.Sprintf("forwarding to the leader at %s: %v", addr, err))
			},
		}
		proxies[addr] = p
		return p
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.IsLeader() {
			next.ServeHTTP(w, r)
			return
		}
		if r.Header.Get(forwardedHeader) != "" {
			writeError(w, http.StatusServiceUnavailable, fmt.Sprintf("leadership is moving: server %s took this server for the leader; retry in a moment", r.Header.Get(forwardedHeader)))
			return
		}
		// While leadership moves (the leader died, an election runs) the
		// request waits for the next leader instead of failing: it is
		// re-sent only when it never reached a leader, so nothing is
		// applied twice.
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxForwardBody))
		if tooLarge := (*http.MaxBytesError)(nil); errors.As(err, &tooLarge) {
			writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body is larger than the limit of %s", structs.FormatBytes(structs.Whole(tooLarge.Limit))))
			return
		}
		if err != nil {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("reading the request body: %v", err))
			return
		}
		deadline := time.Now().Add(forwardWait)
		for {
			if s.IsLeader() {
				r.Body = io.NopCloser(bytes.NewReader(body))
				next.ServeHTTP(w, r)
				return
			}
			addr, err := s.leaderHTTP()
			if err == nil {
				a := &forwardAttempt{}
				rr := r.Clone(context.WithValue(r.Context(), forwardAttemptKey{}, a))
				rr.Body = io.NopCloser(bytes.NewReader(body))
				rr.ContentLength = int64(len(body))
				proxyFor(addr).ServeHTTP(w, rr)
				if a.dialErr == nil {
					return
				}
				err = fmt.Errorf("forwarding to the leader at %s: %w", addr, a.dialErr)
			}
			if time.Now().After(deadline) || r.Context().Err() != nil {
				writeError(w, http.StatusServiceUnavailable, err.Error())
				return
			}
			select {
			case <-r.Context().Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	})
}

// forwardWait bounds how long a follower holds a request while there is
// no reachable leader; failover takes a few seconds.
const forwardWait = 10 * time.Second

// maxForwardBody bounds a forwarded request's body (it is held in memory
// so that it can be re-sent to the next leader).
const maxForwardBody = 8 << 20

type forwardAttemptKey struct{}

// forwardAttempt records that one try at forwarding failed before the
// request left this server.
type forwardAttempt struct{ dialErr error }

// notSent tells errors where the request cannot have reached the other
// side: the connection was never made.
func notSent(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// leaderMember finds the gossip member of the current raft leader.
func (s *Server) leaderMember() (serf.Member, error) {
	_, id := s.raft.LeaderWithID()
	if id == "" {
		return serf.Member{}, fmt.Errorf("no raft leader yet: %w", ErrNotLeader)
	}
	for _, m := range s.serf.Members() {
		if m.Tags[gossip.TagRole] == "server" && m.Tags[gossip.TagID] == string(id) && m.Status == serf.StatusAlive {
			return m, nil
		}
	}
	return serf.Member{}, fmt.Errorf("the raft leader %s is not an alive gossip member: %w", id, ErrNotLeader)
}

// leaderHTTP is the HTTP API address of the current leader.
func (s *Server) leaderHTTP() (string, error) {
	m, err := s.leaderMember()
	if err != nil {
		return "", err
	}
	return m.Tags[gossip.TagHTTP], nil
}

// leaderClient is a gRPC client of the leader's agent-facing service, for
// followers that forward what agents send them (registrations, kernel
// updates) to where raft takes writes.
func (s *Server) leaderClient() (*rpc.ServerClient, error) {
	m, err := s.leaderMember()
	if err != nil {
		return nil, err
	}
	addr := m.Tags[gossip.TagRPC]
	s.leaderConnMu.Lock()
	defer s.leaderConnMu.Unlock()
	if s.leaderConn != nil && s.leaderConnAddr == addr {
		return rpc.NewServerClient(s.leaderConn), nil
	}
	if s.leaderConn != nil {
		_ = s.leaderConn.Close()
	}
	cc, err := grpc.NewClient(addr, s.serverDialOptions()...)
	if err != nil {
		return nil, err
	}
	s.leaderConn, s.leaderConnAddr = cc, addr
	return rpc.NewServerClient(cc), nil
}

// serverDialOptions are the options of gRPC connections to other servers.
func (s *Server) serverDialOptions() []grpc.DialOption {
	return s.cfg.Security.DialOptions(tlsutil.RoleServer)
}

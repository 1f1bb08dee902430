// Package server is corral's control plane: the raft-replicated state, the
// HTTP API, the agent-facing gRPC service, the scheduler worker and plan
// applier on the leader, and the agent registry fed by serf.
package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	"github.com/hashicorp/serf/serf"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	"github.com/corral-dev/corral/images"
	"github.com/corral-dev/corral/internal/logging"
	"github.com/corral-dev/corral/rpc"
	"github.com/corral-dev/corral/rpc/tlsutil"
	"github.com/corral-dev/corral/server/raftlog"
	"github.com/corral-dev/corral/server/state"
	"github.com/corral-dev/corral/structs"
)

// Config configures a server.
type Config struct {
	// SFTPIdleTimeout ends SFTP system sessions without app traffic for
	// that long (0: DefaultSFTPIdleTimeout; volumes_idle.go).
	SFTPIdleTimeout time.Duration
	// NodeName names this server in gossip; default "<hostname>-server".
	NodeName string
	// DataDir holds raft's log, stable store and snapshots, and the node ID.
	DataDir string
	// HTTPAddr is where the HTTP API listens (default 127.0.0.1:8640).
	HTTPAddr string
	// RPCAddr is where gRPC (agents) and raft (peers) share one port (default 127.0.0.1:8641).
	RPCAddr string
	// SerfAddr is the gossip bind address (default 127.0.0.1:8642).
	SerfAddr string
	// Join lists gossip addresses of existing members to join.
	Join []string
	// BootstrapExpect is the number of servers that form the first quorum; only 1 is supported yet.
	BootstrapExpect int
	// GRPC, when set, is a gRPC server shared with an in-process agent: the
	// server registers its service on it and serves it on its RPC port.
	GRPC *grpc.Server
	// DefaultResources fill in what a session's kernels do not ask for.
	DefaultResources structs.Slots
	// Logger receives structured logs.
	Logger *slog.Logger
	// LogOutput, when set, receives the logs of raft, serf and memberlist
	// in their own formats (tests: io.Discard). By default they log
	// through Logger (internal/logging), in its format.
	LogOutput io.Writer
	// OnBootstrapToken receives the admin token created on the first start
	// of a cluster (default: printed as an export line on stdout).
	OnBootstrapToken func(token string)
	// OnJoinToken receives the join token of agents when automatic TLS
	// creates it, on the first start of a cluster.
	OnJoinToken func(token string)
	// OnServerJoinToken receives, on the first start of the first server
	// of a cluster of several (BootstrapExpect > 1), the token the other
	// servers join with.
	OnServerJoinToken func(token string)
	// ServerJoinToken makes a new server join the cluster of another
	// server with automatic TLS: it fetches the cluster's secrets from
	// EnrollAddr (default: each Join host at port 8641).
	ServerJoinToken string
	// EnrollAddr is the RPC address of a server to join with
	// ServerJoinToken.
	EnrollAddr string
	// FastGossip shortens gossip timers (failure detection under a second); for tests and dev.
	FastGossip bool
	// GossipKey, when set, encrypts gossip (see gossip.Encrypt).
	GossipKey []byte
	// Security protects the RPC port (gRPC and raft) with mutual TLS and
	// guards agent registration with a join token. With any of it set, an
	// agent exists for the scheduler only once it has registered over RPC,
	// not when it first shows up in gossip.
	Security *rpc.Security
	// HTTPTLS serves the HTTP API over TLS with the node certificate of
	// Security.TLS (followers then forward to the leader over https too).
	HTTPTLS bool
	// AgentLostAfter is how long an agent may stay DISCONNECTED (gossip
	// failed and no RPC heartbeat) before it is LOST and its kernels are
	// given up (default DefaultAgentLostAfter).
	AgentLostAfter time.Duration
	// HeartbeatTTL is how long an agent may send no RPC before that signal
	// counts as gone (default DefaultHeartbeatTTL, FastHeartbeatTTL under
	// FastGossip).
	HeartbeatTTL time.Duration
	// GCRetention is how long ended sessions and their kernels stay in
	// the state before the leader collects them (0: DefaultGCRetention;
	// negative: never).
	GCRetention time.Duration
	// Insecure turns automatic TLS off: a single server without -tls-*
	// then serves RPC in plaintext and gossips unencrypted, as a
	// multi-server cluster without -tls-* does (tests, debugging).
	Insecure bool
	// AgentCertValidity is how long agent certificates signed by the
	// cluster CA are valid (default DefaultAgentCertValidity).
	AgentCertValidity time.Duration
	// AllowLoopbackRegistries lets sessions of groups without an
	// allow-list pull from registries on loopback addresses (corral dev,
	// tests); by default only registries at public addresses are allowed.
	AllowLoopbackRegistries bool
	// AllowedRegistries are allowed to the sessions of every group, in
	// addition to the group's own list (host, host:port or *.domain;
	// -allow-registry): e.g. a registry on the cluster's private network.
	AllowedRegistries []string
	// EventRing is how many events of GET /v1/events this server keeps
	// for streams that resume (default 16384; see docs/events.md).
	EventRing int
	// MetricsAnonymous serves GET /v1/metrics without a token (default:
	// an admin token is needed; see docs/metrics.md).
	MetricsAnonymous bool
	// ExtraMetrics, when set, is gathered with the server's own metrics
	// (corral dev: the embedded agent's).
	ExtraMetrics prometheus.Gatherer
}

func (c *Config) setDefaults() error {
	if c.DataDir == "" {
		return errors.New("server: a data dir is required")
	}
	if c.HTTPAddr == "" {
		c.HTTPAddr = "127.0.0.1:8640"
	}
	if c.RPCAddr == "" {
		c.RPCAddr = "127.0.0.1:8641"
	}
	if c.SerfAddr == "" {
		c.SerfAddr = "127.0.0.1:8642"
	}
	if c.HTTPTLS && (c.Security == nil || c.Security.TLS == nil) {
		return errors.New("server: HTTPS for the API needs the server's TLS certificate (-tls-ca, -tls-cert, -tls-key)")
	}
	if c.BootstrapExpect == 0 {
		c.BootstrapExpect = 1
	}
	if c.BootstrapExpect < 1 || c.BootstrapExpect > 9 {
		return fmt.Errorf("server: -bootstrap-expect %d is out of range: use 1 (a single server) or the size of the first quorum, e.g. 3 or 5", c.BootstrapExpect)
	}
	if c.NodeName == "" {
		h, _ := os.Hostname()
		c.NodeName = h + "-server"
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	for i, e := range c.AllowedRegistries {
		n, err := images.CheckRegistryEntry(e)
		if err != nil {
			return fmt.Errorf("server: -allow-registry: %w", err)
		}
		c.AllowedRegistries[i] = n
	}
	if c.DefaultResources == nil {
		c.DefaultResources = structs.Slots{structs.SlotCPU: structs.Whole(1), structs.SlotMem: structs.Whole(256 << 20)}
	}
	return nil
}

// Server is one corral server.
type Server struct {
	cfg    Config
	id     string
	logger *slog.Logger

	state *state.StateStore
	raft  *raft.Raft
	fsm   *fsm
	// needsBootstrap: a new server of a multi-server cluster waits for
	// -bootstrap-expect servers in gossip before it bootstraps raft.
	needsBootstrap bool
	// replayTarget is the last command on disk at start that the restored
	// snapshot does not already hold.
	replayTarget uint64
	trans        *raft.NetworkTransport
	logs         *raftlog.Store

	serf   *serf.Serf
	events chan serf.Event

	// sftpPorts holds SFTP ports picked by creates not yet committed.
	sftpPorts sftpReservations

	mux          *muxListener
	grpc         *grpc.Server
	ownGRPC      bool
	httpSrv      *http.Server
	httpLn       net.Listener
	agents       *agentConns
	activity     activity
	apps         appsState
	leaderMu     sync.Mutex
	leaderCancel context.CancelFunc
	// leaderConn is a follower's connection to the leader, for forwarding.
	leaderConnMu   sync.Mutex
	leaderConn     *grpc.ClientConn
	leaderConnAddr string

	// ready is closed once the FSM has applied every log entry that was on
	// disk at start: reads before that would show a past state.
	ready chan struct{}

	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	shutdown sync.Once

	// rejoinAt limits how often a lost agent is pulled back into gossip.
	rejoinMu sync.Mutex
	rejoinAt map[string]time.Time

	// heartbeats: when each agent last spoke RPC to this leader.
	heartbeats *heartbeats
	// localAgent is the ID of the agent embedded in this process, if any.
	localAgent atomic.Value
	// auto is the automatic TLS state (autotls.go), nil with one's own
	// PKI or none.
	auto *autoTLS
	// eventBroker serves GET /v1/events (events.go); metrics serves
	// GET /v1/metrics (metrics.go).
	eventBroker *eventBroker
	metrics     *serverMetrics
	// router, load and endpoints serve inference endpoints
	// (endpoint_router.go, endpoints.go).
	router    *router
	load      loadTracker
	endpoints endpointState
}

// New starts a server: raft (bootstrapping a single voter on first start),
// gossip, the gRPC service and the HTTP API.
func New(cfg Config) (*Server, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("server: data dir: %w", err)
	}
	id, err := nodeID(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	st, err := state.New()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{cfg: cfg, id: id, logger: cfg.Logger.With("server_id", id), state: st,
		ctx: ctx, cancel: cancel, agents: newAgentConns(cfg.Security.DialOptions(tlsutil.RoleAgent)), ready: make(chan struct{}),
		heartbeats: newHeartbeats(), eventBroker: newEventBroker(cfg.EventRing)}
	st.SetCommitHook(s.eventBroker.publish)
	s.metrics = newServerMetrics(s)
	ok := false
	defer func() {
		if !ok {
			s.Shutdown()
		}
	}()
	if cfg.wantsAutoTLS() {
		if err := s.setupAutoTLS(); err != nil {
			return nil, err
		}
		cfg = s.cfg
		s.agents = newAgentConns(cfg.Security.DialOptions(tlsutil.RoleAgent))
	} else if cfg.Security == nil || cfg.Security.TLS == nil {
		s.logger.Warn("RPC (gRPC and raft) is not encrypted: automatic TLS covers new single-server clusters; several servers, -insecure and clusters created before it need their own PKI (-tls-ca, -tls-cert, -tls-key): see README 'A secured cluster with your own PKI'")
	}

	ln, err := net.Listen("tcp", cfg.RPCAddr)
	if err != nil {
		return nil, fmt.Errorf("server: rpc listen on %s: %w", cfg.RPCAddr, err)
	}
	s.mux = newMux(ln, cfg.Security.ServerTLS(tlsutil.RoleServer))
	if err := s.setupRaft(); err != nil {
		return nil, err
	}
	s.grpc = cfg.GRPC
	if s.grpc == nil {
		s.grpc = grpc.NewServer(s.cfg.Security.ServerOptions(tlsutil.RoleAgent, tlsutil.RoleServer)...)
		s.ownGRPC = true
	}
	rpc.RegisterServerService(s.grpc, &agentEndpoint{srv: s})
	// The HTTP port is bound before gossip starts so that its real address
	// (port 0 in tests) goes into the server's tags.
	if s.httpLn, err = net.Listen("tcp", cfg.HTTPAddr); err != nil {
		return nil, fmt.Errorf("server: http listen on %s: %w", cfg.HTTPAddr, err)
	}
	s.cfg.HTTPAddr = s.httpLn.Addr().String()
	if err := s.setupSerf(); err != nil {
		return nil, err
	}
	s.router = newRouter(s)
	if err := s.setupHTTP(); err != nil {
		return nil, err
	}
	if s.needsBootstrap {
		s.wg.Add(1)
		go func() { defer s.wg.Done(); s.bootstrapWhenExpected() }()
	}
	s.wg.Add(4)
	go func() { defer s.wg.Done(); s.runRouterDuties() }()
	go func() { defer s.wg.Done(); s.waitCaughtUp(s.replayTarget) }()
	go func() { defer s.wg.Done(); s.monitorLeadership() }()
	go func() { defer s.wg.Done(); s.handleSerfEvents() }()
	ok = true
	return s, nil
}

// Serve serves gRPC on the RPC port; call it after every service (an
// in-process agent's too) is registered. It returns when the server stops.
func (s *Server) Serve() error {
	err := s.grpc.Serve(s.mux.grpc)
	if errors.Is(err, net.ErrClosed) || errors.Is(err, grpc.ErrServerStopped) {
		return nil
	}
	return err
}

// ID is the server's node ID.
func (s *Server) ID() string { return s.id }

// HTTPAddr is the address the HTTP API listens on.
func (s *Server) HTTPAddr() string { return s.httpLn.Addr().String() }

// RPCAddr is the address of the gRPC and raft port.
func (s *Server) RPCAddr() string { return s.mux.ln.Addr().String() }

// SerfAddr is the gossip address.
func (s *Server) SerfAddr() string {
	m := s.serf.LocalMember()
	return net.JoinHostPort(m.Addr.String(), fmt.Sprint(m.Port))
}

// SerfMembers lists the gossip pool as this server sees it.
func (s *Server) SerfMembers() []serf.Member { return s.serf.Members() }

// State gives read access to the state store (tests, benchmarks).
func (s *Server) State() *state.StateStore { return s.state }

// IsLeader reports whether this server is the raft leader.
func (s *Server) IsLeader() bool { return s.raft != nil && s.raft.State() == raft.Leader }

// waitCaughtUp closes ready once the FSM applied the log up to last.
func (s *Server) waitCaughtUp(last uint64) {
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for s.fsm.applied.Load() < last {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
	}
	close(s.ready)
}

// waitReady blocks until the state has caught up with the log on disk.
func (s *Server) waitReady(ctx context.Context) error {
	select {
	case <-s.ready:
		return nil
	case <-ctx.Done():
		return ErrNotReady
	}
}

// ErrNotReady is returned while a starting server replays its raft log.
var ErrNotReady = errors.New("the server is starting and still replaying its raft log: retry in a moment")

// WaitForLeader blocks until a leader is known and the state has caught
// up with the log, or ctx ends.
func (s *Server) WaitForLeader(ctx context.Context) error {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		if addr, _ := s.raft.LeaderWithID(); addr != "" && s.waitReady(ctx) == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("no raft leader: %w", ctx.Err())
		case <-t.C:
		}
	}
}

// Shutdown stops the server: HTTP, gRPC, gossip (leaving), raft.
func (s *Server) Shutdown() {
	s.shutdown.Do(func() {
		s.cancel()
		if s.httpSrv != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_ = s.httpSrv.Shutdown(ctx)
			cancel()
		}
		if s.grpc != nil && s.ownGRPC {
			stopGRPC(s.grpc, 2*time.Second)
		}
		if s.serf != nil {
			_ = s.serf.Leave()
			_ = s.serf.Shutdown()
		}
		if s.raft != nil {
			_ = s.raft.Shutdown().Error()
		}
		if s.trans != nil {
			_ = s.trans.Close()
		}
		if s.logs != nil {
			_ = s.logs.Close()
		}
		if s.mux != nil {
			_ = s.mux.Close()
		}
		s.agents.closeAll()
		if s.router != nil {
			s.router.transport.CloseIdleConnections()
		}
		s.leaderConnMu.Lock()
		if s.leaderConn != nil {
			_ = s.leaderConn.Close()
		}
		s.leaderConnMu.Unlock()
		s.wg.Wait()
	})
}

// stopGRPC stops gracefully, then forcibly after timeout (open streams).
func stopGRPC(g *grpc.Server, timeout time.Duration) {
	done := make(chan struct{})
	go func() { g.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(timeout):
		g.Stop()
	}
}

// nodeID reads the node ID from the data dir, creating it on first start.
func nodeID(dir string) (string, error) {
	p := filepath.Join(dir, "node-id")
	if b, err := os.ReadFile(p); err == nil {
		if id := strings.TrimSpace(string(b)); id != "" {
			return id, nil
		}
	}
	id := uuid.NewString()
	if err := os.WriteFile(p, []byte(id+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("write node id: %w", err)
	}
	return id, nil
}

func (s *Server) setupRaft() error {
	dir := filepath.Join(s.cfg.DataDir, "raft")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	hl := logging.HCLog(s.cfg.Logger, "raft")
	if s.cfg.LogOutput != nil {
		hl = hclog.New(&hclog.LoggerOptions{Name: "raft", Output: s.cfg.LogOutput, Level: hclog.Warn})
	}
	conf := raft.DefaultConfig()
	conf.LocalID = raft.ServerID(s.id)
	conf.Logger = hl
	conf.BatchApplyCh = true
	conf.MaxAppendEntries = 256
	conf.SnapshotThreshold = 8192
	if s.cfg.BootstrapExpect == 1 {
		// A single voter needs no long election timeouts.
		conf.HeartbeatTimeout = 200 * time.Millisecond
		conf.ElectionTimeout = 200 * time.Millisecond
		conf.LeaderLeaseTimeout = 100 * time.Millisecond
	}
	logs, stable, err := openRaftStores(dir, s.logger.Info)
	if err != nil {
		return fmt.Errorf("raft log store: %w", err)
	}
	s.logs = logs
	snaps, err := raft.NewFileSnapshotStoreWithLogger(dir, 2, hl)
	if err != nil {
		return fmt.Errorf("raft snapshot store: %w", err)
	}
	adv, err := net.ResolveTCPAddr("tcp", s.mux.ln.Addr().String())
	if err != nil {
		return err
	}
	s.trans = raft.NewNetworkTransportWithLogger(&raftLayer{chanListener: s.mux.raft, advertise: adv, tls: s.cfg.Security.ClientTLS(tlsutil.RoleServer)}, 3, 10*time.Second, hl)
	f := &fsm{state: s.state, logger: s.logger, restored: s.eventBroker.reset}
	s.fsm = f
	has, err := raft.HasExistingState(logs, stable, snaps)
	if err != nil {
		return err
	}
	if !has && s.cfg.BootstrapExpect == 1 {
		boot := raft.Configuration{Servers: []raft.Server{{ID: conf.LocalID, Address: s.trans.LocalAddr()}}}
		if err := raft.BootstrapCluster(conf, logs, stable, snaps, s.trans, boot); err != nil {
			return fmt.Errorf("raft bootstrap: %w", err)
		}
		s.logger.Info("bootstrapped a new cluster", "voters", 1)
	}
	s.needsBootstrap = !has && s.cfg.BootstrapExpect > 1
	s.replayTarget, err = lastCommandIndex(logs)
	if err != nil {
		return err
	}
	if metas, err := snaps.List(); err == nil && len(metas) > 0 && metas[0].Index >= s.replayTarget {
		s.replayTarget = 0 // the snapshot raft restores at start already holds it
	}
	// Recent entries are read from memory (the FSM applies them, followers
	// are sent them); older ones from the segments.
	cached, err := raft.NewLogCache(512, logs)
	if err != nil {
		return err
	}
	r, err := raft.NewRaft(conf, f, cached, stable, snaps, s.trans)
	if err != nil {
		return fmt.Errorf("raft: %w", err)
	}
	s.raft = r
	s.metrics.watchRaft(s.ctx, r)
	return nil
}

// lastCommandIndex finds the newest command entry in the log store.
func lastCommandIndex(logs raft.LogStore) (uint64, error) {
	first, err := logs.FirstIndex()
	if err != nil {
		return 0, err
	}
	last, err := logs.LastIndex()
	if err != nil {
		return 0, err
	}
	for i := last; i >= first && i > 0; i-- {
		var l raft.Log
		if err := logs.GetLog(i, &l); err != nil {
			return 0, fmt.Errorf("reading raft log %d: %w", i, err)
		}
		if l.Type == raft.LogCommand {
			return i, nil
		}
	}
	return 0, nil
}

// ErrNotLeader is returned for writes on a server that is not the leader.
var ErrNotLeader = errors.New("this server is not the raft leader")

// apply submits a request to raft and returns the FSM's response.
func (s *Server) apply(t structs.MessageType, req any) (any, uint64, error) {
	buf, err := encodeCommand(t, req)
	if err != nil {
		return nil, 0, err
	}
	start := time.Now()
	f := s.raft.Apply(buf, 30*time.Second)
	err = f.Error()
	s.metrics.observeApply(t, time.Since(start))
	if err != nil {
		if errors.Is(err, raft.ErrNotLeader) {
			return nil, 0, ErrNotLeader
		}
		return nil, 0, err
	}
	if err, ok := f.Response().(error); ok {
		return nil, f.Index(), err
	}
	return f.Response(), f.Index(), nil
}

// monitorLeadership runs the leader's duties while this server leads.
func (s *Server) monitorLeadership() {
	ch := s.raft.LeaderCh()
	var cancel context.CancelFunc
	var wg sync.WaitGroup
	stop := func() {
		if cancel != nil {
			cancel()
			wg.Wait()
			cancel = nil
		}
	}
	defer stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case isLeader := <-ch:
			if !isLeader {
				s.logger.Info("lost leadership")
				stop()
				continue
			}
			if cancel != nil {
				continue
			}
			ctx, leaderCancel := context.WithCancel(s.ctx)
			cancel = leaderCancel
			wg.Add(1)
			go func() { defer wg.Done(); s.leaderLoop(ctx) }()
		}
	}
}

// leaderLoop establishes leadership (a barrier so the FSM is current), then
// reconciles gossip membership and runs the scheduler until ctx ends.
func (s *Server) leaderLoop(ctx context.Context) {
	if err := s.raft.Barrier(10 * time.Second).Error(); err != nil {
		s.logger.Error("leader barrier failed", "error", err)
		return
	}
	s.logger.Info("acquired leadership")
	s.recordSecrets()
	s.bootstrapAdmin()
	s.reconcileMembers()
	var wg sync.WaitGroup
	wg.Add(7)
	go func() { defer wg.Done(); s.endIdleSFTP(ctx) }()
	go func() { defer wg.Done(); s.manageEndpoints(ctx) }()
	go func() { defer wg.Done(); s.watchLiveness(ctx) }()
	go func() { defer wg.Done(); s.runGC(ctx) }()
	go func() { defer wg.Done(); s.runScheduler(ctx) }()
	go func() { defer wg.Done(); s.enforceLimits(ctx) }()
	go func() {
		defer wg.Done()
		t := time.NewTicker(30 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				s.reconcileMembers()
			}
		}
	}()
	wg.Wait()
}

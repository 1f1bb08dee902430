package agent

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/corral-dev/corral/rpc"
	"github.com/corral-dev/corral/rpc/tlsutil"
	"github.com/corral-dev/corral/structs"
)

// serverConn is the agent's current connection to a server.
type serverConn struct {
	addr   string
	cc     *grpc.ClientConn
	client *rpc.ServerClient
}

// currentConn waits for a server connection or ctx's end.
func (a *Agent) currentConn(ctx context.Context) (*serverConn, error) {
	for {
		a.mu.Lock()
		c := a.conn
		a.mu.Unlock()
		if c != nil {
			return c, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// connectLoop keeps one registered connection with a watch stream open to
// some server, moving to another (or reconnecting) when it breaks.
func (a *Agent) connectLoop() {
	delay := 50 * time.Millisecond
	for a.ctx.Err() == nil {
		servers := a.servers()
		if len(servers) == 0 {
			select {
			case <-a.ctx.Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		addr := servers[rand.IntN(len(servers))]
		err := a.session(addr)
		if a.ctx.Err() != nil {
			return
		}
		if status.Code(err) == codes.FailedPrecondition {
			// A protocol version outside the skew policy needs an upgrade:
			// say which, and knock less often.
			delay = max(delay, 5*time.Second)
			a.logger.Error("protocol version mismatch with the server: see docs/upgrades.md", "server", addr, "agent_protocol", rpc.ProtocolVersion, "error", status.Convert(err).Message(), "retry_in", delay)
		} else if refused(err) {
			// A wrong certificate or join token does not fix itself:
			// say so plainly, and knock less often.
			delay = max(delay, 5*time.Second)
			a.logger.Error("the server refused this agent: check -join-token and the -tls-* files", "server", addr, "error", err, "retry_in", delay)
		} else {
			a.logger.Log(a.ctx, reconnectLevel(err, time.Since(a.started)), "server connection lost, reconnecting", "server", addr, "error", err, "retry_in", delay)
		}
		select {
		case <-a.ctx.Done():
			return
		case <-time.After(delay):
		}
		if delay < 2*time.Second && !refused(err) && status.Code(err) != codes.FailedPrecondition {
			delay *= 2
		}
		if err == nil {
			delay = 50 * time.Millisecond
		}
	}
}

// startupGrace is how long after its start an agent takes a server that
// is not ready (no raft leader elected yet, not listening yet) as normal:
// a cluster starting up (corral dev) elects its leader in a second or two.
const startupGrace = 15 * time.Second

// reconnectLevel is the log level of a lost or refused server connection:
// debug while the servers are still starting (Unavailable within
// startupGrace of the agent's start), a warning after.
func reconnectLevel(err error, sinceStart time.Duration) slog.Level {
	if sinceStart < startupGrace && status.Code(err) == codes.Unavailable {
		return slog.LevelDebug
	}
	return slog.LevelWarn
}

// session registers with one server and follows its kernel stream until it breaks.
func (a *Agent) session(addr string) error {
	cc, err := grpc.NewClient(addr, a.cfg.Security.DialOptions(tlsutil.RoleServer)...)
	if err != nil {
		return err
	}
	defer cc.Close()
	client := rpc.NewServerClient(cc)
	ctx, cancel := context.WithCancel(a.ctx)
	defer cancel()
	a.mu.Lock()
	gen := a.healthGen
	a.mu.Unlock()
	rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
	resp, err := client.Register(rctx, &rpc.RegisterRequest{Agent: a.inventory(), ProtocolVersion: rpc.ProtocolVersion})
	rcancel()
	if err != nil {
		return err
	}
	if err := rpc.CheckServerVersion(resp.ProtocolVersion); err != nil {
		return status.Error(codes.FailedPrecondition, err.Error())
	}
	stream, err := client.WatchKernels(ctx, &rpc.WatchRequest{AgentID: a.id, ProtocolVersion: rpc.ProtocolVersion})
	if err != nil {
		return err
	}
	conn := &serverConn{addr: addr, cc: cc, client: client}
	a.mu.Lock()
	a.conn = conn
	stale := a.healthGen != gen
	a.mu.Unlock()
	if stale {
		// A driver's health changed while we registered.
		a.wg.Add(1) // within connectLoop's count: no race with Shutdown's Wait
		go func() { defer a.wg.Done(); a.advertise() }()
	}
	defer func() {
		a.mu.Lock()
		if a.conn == conn {
			a.conn = nil
		}
		a.mu.Unlock()
	}()
	a.logger.Info("connected to server", "server", addr)
	a.reporter.kick()
	go a.heartbeat(ctx, client)
	for {
		msg, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return errors.New("server closed the stream")
			}
			return err
		}
		a.handleAssignments(msg)
	}
}

// heartbeatInterval is how often the agent tells the servers it is alive
// over RPC; the servers' heartbeat TTL is a few of these.
func (a *Agent) heartbeatInterval() time.Duration {
	if a.cfg.FastGossip {
		return time.Second
	}
	return 3 * time.Second
}

// heartbeat sends an empty status report at every interval while the
// session's ctx lives: the RPC half of the agent's liveness, so that a
// node too busy to answer gossip probes in time is not taken for dead.
func (a *Agent) heartbeat(ctx context.Context, client *rpc.ServerClient) {
	t := time.NewTicker(a.heartbeatInterval())
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		if _, err := client.UpdateKernels(hctx, &structs.KernelUpdateRequest{AgentID: a.id}); err != nil && ctx.Err() == nil {
			a.logger.Debug("heartbeat failed", "error", err)
		}
		cancel()
	}
}

// handleAssignments reconciles local kernels with what the server says.
func (a *Agent) handleAssignments(msg *rpc.WatchResponse) {
	listed := map[string]bool{}
	for _, k := range msg.Kernels {
		listed[k.ID] = true
		a.handleKernel(k)
	}
	if !msg.Full {
		return
	}
	a.maybePruneStarted(time.Now())
	// The server's state wins: a kernel we run that the server no longer
	// lists as live is stopped.
	a.mu.Lock()
	var orphans []*kernelRunner
	for id, r := range a.kernels {
		if !listed[id] && !r.isDone() {
			orphans = append(orphans, r)
		}
	}
	a.mu.Unlock()
	for _, r := range orphans {
		a.logger.Warn("stopping kernel the server no longer knows as live", "kernel_id", r.id)
		r.requestStop("the server no longer lists this kernel as live")
	}
}

func (a *Agent) handleKernel(k *structs.Kernel) {
	a.mu.Lock()
	r, ok := a.kernels[k.ID]
	a.mu.Unlock()
	if ok {
		switch {
		case k.Status == structs.KernelTerminating:
			r.requestStop(k.StatusInfo)
		case k.Status.Terminal():
			if r.isDone() {
				a.mu.Lock()
				delete(a.kernels, k.ID)
				a.mu.Unlock()
			} else {
				r.requestStop("the server marked the kernel " + string(k.Status))
			}
		}
		return
	}
	switch k.Status {
	case structs.KernelScheduled:
		d, ok := a.drivers[k.Driver]
		if !ok {
			a.reporter.report(k.ID, structs.KernelError, "driver "+k.Driver+" is not available on agent "+a.cfg.Name, nil)
			return
		}
		if !a.claimStart(k) {
			return
		}
		r := newKernelRunner(a, k, d)
		a.mu.Lock()
		a.kernels[k.ID] = r
		a.mu.Unlock()
		a.wg.Add(1)
		go func() { defer a.wg.Done(); r.run(a.ctx) }()
	case structs.KernelTerminating:
		a.reporter.report(k.ID, structs.KernelTerminated, "kernel was not running on the agent", nil)
	case structs.KernelPreparing, structs.KernelPulling, structs.KernelCreating, structs.KernelRunning, structs.KernelRestarting:
		if rec, err := a.store.started(k.ID); err == nil && rec != nil {
			a.reportAgain(k.ID, rec)
			return
		}
		a.reporter.report(k.ID, structs.KernelError, "kernel process lost: the agent restarted and has no record of it", nil)
	}
}

// refused tells a refusal (wrong join token, certificate not accepted)
// from a connection that broke.
func refused(err error) bool {
	switch status.Code(err) {
	case codes.Unauthenticated, codes.PermissionDenied:
		return true
	}
	// gRPC reports a TLS handshake that failed (certificate refused on
	// either side) as Unavailable with this phrase.
	return err != nil && strings.Contains(err.Error(), "authentication handshake failed")
}

package server

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/go-memdb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/corral-dev/corral/rpc"
	"github.com/corral-dev/corral/server/state"
	"github.com/corral-dev/corral/structs"
)

// agentEndpoint implements the gRPC service agents call.
type agentEndpoint struct{ srv *Server }

var _ rpc.ServerService = (*agentEndpoint)(nil)

func grpcError(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrNotLeader):
		return status.Error(codes.Unavailable, err.Error())
	case errors.Is(err, state.ErrNotFound):
		return status.Error(codes.NotFound, err.Error())
	}
	return status.Error(codes.Internal, err.Error())
}

// Register records the agent's inventory through raft.
func (e *agentEndpoint) Register(ctx context.Context, req *rpc.RegisterRequest) (*rpc.RegisterResponse, error) {
	if req.Agent == nil || req.Agent.ID == "" {
		return nil, status.Error(codes.InvalidArgument, "register: agent ID is required")
	}
	if err := rpc.CheckAgentVersion(req.ProtocolVersion); err != nil {
		e.srv.logger.Warn("agent refused: protocol version", "agent_id", req.Agent.ID, "name", req.Agent.Name, "error", err)
		return nil, err
	}
	if err := e.srv.waitReady(ctx); err != nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	if err := e.checkIdentity(ctx, req.Agent.ID, req.Agent.Name, false); err != nil {
		return nil, err
	}
	if rpc.PeerAgentID(ctx) != "" {
		if err := e.srv.checkGossip(ctx, req.Agent); err != nil {
			e.srv.logger.Warn("agent registration refused", "agent_id", req.Agent.ID, "name", req.Agent.Name, "error", err)
			return nil, err
		}
	}
	if !e.srv.IsLeader() {
		cl, err := e.srv.leaderClient()
		if err != nil {
			return nil, grpcError(err)
		}
		resp, err := cl.Register(ctx, req)
		if err != nil {
			return nil, err
		}
		// The agent watches this server: it needs this server's version.
		resp.ProtocolVersion = rpc.ProtocolVersion
		return resp, nil
	}
	e.srv.heartbeats.seen(req.Agent.ID)
	a := req.Agent.Copy()
	a.Status = structs.AgentAlive
	a.StatusInfo = "registered"
	_, idx, err := e.srv.apply(structs.AgentUpsertRequestType, &structs.AgentUpsertRequest{Agent: a, Time: time.Now().UTC()})
	if err != nil {
		return nil, grpcError(err)
	}
	e.srv.logger.Info("agent registered", "agent_id", a.ID, "name", a.Name, "capacity", a.Capacity.String(), "drivers", a.Drivers)
	return &rpc.RegisterResponse{ServerName: e.srv.cfg.NodeName, Index: idx, ProtocolVersion: rpc.ProtocolVersion}, nil
}

// UpdateKernels applies a batch of kernel status changes through raft.
func (e *agentEndpoint) UpdateKernels(ctx context.Context, req *structs.KernelUpdateRequest) (*rpc.UpdateKernelsResponse, error) {
	if req.AgentID == "" {
		return nil, status.Error(codes.InvalidArgument, "update: agent ID is required")
	}
	if err := e.checkIdentity(ctx, req.AgentID, "", false); err != nil {
		return nil, err
	}
	if !e.srv.IsLeader() {
		cl, err := e.srv.leaderClient()
		if err != nil {
			return nil, grpcError(err)
		}
		return cl.UpdateKernels(ctx, req)
	}
	e.srv.heartbeats.seen(req.AgentID)
	e.srv.rejoinIfLost(req.AgentID)
	if len(req.Updates) == 0 {
		// A heartbeat: the agent is alive and talks RPC.
		return &rpc.UpdateKernelsResponse{Index: e.srv.raft.AppliedIndex()}, nil
	}
	resp, idx, err := e.srv.apply(structs.KernelUpdateRequestType, req)
	if err != nil {
		return nil, grpcError(err)
	}
	out := &rpc.UpdateKernelsResponse{Index: idx}
	if skipped, ok := resp.(map[string]string); ok && len(skipped) > 0 {
		out.Skipped = skipped
	}
	return out, nil
}

// WatchKernels streams the kernels placed on an agent: first every kernel
// that has not ended, then each kernel again whenever it changes.
func (e *agentEndpoint) WatchKernels(req *rpc.WatchRequest, stream rpc.WatchStream) error {
	if req.AgentID == "" {
		return status.Error(codes.InvalidArgument, "watch: agent ID is required")
	}
	if err := rpc.CheckAgentVersion(req.ProtocolVersion); err != nil {
		return err
	}
	// The stream also ends when the server shuts down, so that a graceful
	// stop does not wait for every agent to hang up.
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	defer context.AfterFunc(e.srv.ctx, cancel)()
	// A full list from a state that has not caught up would make the agent
	// stop kernels the log still knows, or start kernels that already ran:
	// first catch up with what the leader has (a read index).
	if err := e.srv.waitReady(ctx); err != nil {
		return status.Error(codes.Unavailable, err.Error())
	}
	if err := e.srv.waitCaughtUpWithLeader(ctx); err != nil {
		return status.Error(codes.Unavailable, err.Error())
	}
	if err := e.checkIdentity(ctx, req.AgentID, "", true); err != nil {
		return err
	}
	// A revoked certificate ends the stream at once.
	serial := ""
	if cert := rpc.PeerCert(ctx); cert != nil {
		serial = cert.SerialNumber.Text(16)
	}
	sent := map[string]uint64{}
	full := true
	for {
		abandon := e.srv.state.AbandonCh()
		ws := memdb.NewWatchSet()
		snap := e.srv.state.Snapshot()
		if serial != "" {
			if c, err := snap.IssuedCert(ws, serial); err == nil && c != nil && c.Revoked {
				e.srv.logger.Warn("ending the kernel stream of a revoked agent", "agent_id", req.AgentID, "serial", serial)
				return status.Errorf(codes.PermissionDenied, "certificate %s has been revoked (corral node revoke): this node is cut off from the cluster", serial)
			}
		}
		ks, err := snap.KernelsByAgent(ws, req.AgentID)
		if err != nil {
			return grpcError(err)
		}
		msg := &rpc.WatchResponse{Full: full, Index: snap.Index("kernels")}
		for _, k := range ks {
			last, seen := sent[k.ID]
			switch {
			case full && k.Status.Terminal():
				continue
			case seen && last >= k.ModifyIndex:
				continue
			case !full && !seen && k.Status.Terminal():
				continue
			}
			msg.Kernels = append(msg.Kernels, k)
			if k.Status.Terminal() {
				delete(sent, k.ID) // ended kernels are not sent again
			} else {
				sent[k.ID] = k.ModifyIndex
			}
		}
		if full || len(msg.Kernels) > 0 {
			if err := stream.Send(msg); err != nil {
				return err
			}
		}
		full = false
		ws.Add(abandon)
		if err := ws.WatchCtx(ctx); err != nil {
			return nil
		}
		select {
		case <-abandon:
			// A snapshot replaced the state: the next full list too
			// waits until this server has caught up with the leader.
			if err := e.srv.waitCaughtUpWithLeader(ctx); err != nil {
				return status.Error(codes.Unavailable, err.Error())
			}
			full = true
			sent = map[string]uint64{}
		default:
		}
	}
}

// agentConns caches gRPC connections to agents (exec, logs).
type agentConns struct {
	mu    sync.Mutex
	conns map[string]*grpc.ClientConn
	dial  []grpc.DialOption
}

func newAgentConns(dial []grpc.DialOption) *agentConns {
	return &agentConns{conns: map[string]*grpc.ClientConn{}, dial: dial}
}

func (c *agentConns) client(addr string) (*rpc.AgentClient, error) {
	if addr == "" {
		return nil, fmt.Errorf("agent has no RPC address")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	cc, ok := c.conns[addr]
	if !ok {
		var err error
		cc, err = grpc.NewClient(addr, c.dial...)
		if err != nil {
			return nil, err
		}
		c.conns[addr] = cc
	}
	return rpc.NewAgentClient(cc), nil
}

func (c *agentConns) closeAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, cc := range c.conns {
		cc.Close()
		delete(c.conns, k)
	}
}

// checkIdentity holds a caller whose agent certificate is bound to a node
// name (corral tls cert create -agent -node NAME) to that agent: it may
// register only under its own name, and act only for an agent ID recorded
// under that name. must says the agent has to be recorded already (a
// watch must not wait for another agent's kernels). Role-only
// certificates, server certificates (a follower forwarding what it
// checked) and plaintext clusters pass.
func (e *agentEndpoint) checkIdentity(ctx context.Context, agentID, name string, must bool) error {
	// A certificate of the cluster CA names the agent's ID too.
	if id := rpc.PeerAgentID(ctx); id != "" && id != agentID {
		return status.Errorf(codes.PermissionDenied, "this agent's certificate is for agent ID %s; it cannot act as agent %s", id, agentID)
	}
	node, ok := rpc.PeerAgent(ctx)
	if !ok || node == "" {
		return nil
	}
	if name != "" && name != node {
		return status.Errorf(codes.PermissionDenied, "this agent's certificate is for node %q; it cannot register as %q (start the agent with -name %s)", node, name, node)
	}
	a, err := e.srv.state.Snapshot().Agent(nil, agentID)
	switch {
	case err == nil && a.Name != node:
		return status.Errorf(codes.PermissionDenied, "agent %s is %q; a certificate for node %q cannot act for it", agentID, a.Name, node)
	case err != nil && must:
		return status.Errorf(codes.PermissionDenied, "agent %s is not registered: register before watching", agentID)
	}
	return nil
}

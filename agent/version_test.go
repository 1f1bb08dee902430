package agent

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/corral-dev/corral/rpc"
	"github.com/corral-dev/corral/structs"
)

// versionedServer is a server double that announces a given protocol
// version (0: a protocol 1 server, which announces none).
type versionedServer struct {
	version  int
	register chan *rpc.RegisterRequest
	watch    chan *rpc.WatchRequest
}

func (s *versionedServer) Register(ctx context.Context, req *rpc.RegisterRequest) (*rpc.RegisterResponse, error) {
	s.register <- req
	return &rpc.RegisterResponse{ServerName: "double", Index: 1, ProtocolVersion: s.version}, nil
}

func (s *versionedServer) WatchKernels(req *rpc.WatchRequest, stream rpc.WatchStream) error {
	s.watch <- req
	<-stream.Context().Done()
	return nil
}

func (s *versionedServer) UpdateKernels(context.Context, *structs.KernelUpdateRequest) (*rpc.UpdateKernelsResponse, error) {
	return &rpc.UpdateKernelsResponse{}, nil
}

func (s *versionedServer) ReadIndex(context.Context, *rpc.ReadIndexRequest) (*rpc.ReadIndexResponse, error) {
	return &rpc.ReadIndexResponse{}, nil
}

func (s *versionedServer) SignAgent(context.Context, *rpc.SignAgentRequest) (*rpc.SignAgentResponse, error) {
	return nil, errors.New("not in this test")
}

func (s *versionedServer) JoinServer(context.Context, *rpc.JoinServerRequest) (*rpc.JoinServerResponse, error) {
	return nil, errors.New("not in this test")
}

func (s *versionedServer) EndpointStats(context.Context, *rpc.EndpointStatsRequest) (*rpc.EndpointStatsResponse, error) {
	return nil, errors.New("not in this test")
}

func serveDouble(t *testing.T, version int) (*versionedServer, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &versionedServer{version: version, register: make(chan *rpc.RegisterRequest, 1), watch: make(chan *rpc.WatchRequest, 1)}
	g := grpc.NewServer(rpc.ServerOptions()...)
	rpc.RegisterServerService(g, s)
	go func() { _ = g.Serve(ln) }()
	t.Cleanup(g.Stop)
	return s, ln.Addr().String()
}

func versionTestAgent(ctx context.Context) *Agent {
	return &Agent{id: "agent-1", ctx: ctx, logger: slog.New(slog.NewTextHandler(io.Discard, nil)), reporter: &reporter{wake: make(chan struct{}, 1)}}
}

// TestAgentAnnouncesVersionAndAcceptsOlderServer: this agent sends its
// protocol version and works with a server of the previous protocol,
// which announces none.
func TestAgentAnnouncesVersionAndAcceptsOlderServer(t *testing.T) {
	srv, addr := serveDouble(t, 0)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- versionTestAgent(ctx).session(addr) }()
	select {
	case req := <-srv.register:
		if req.ProtocolVersion != rpc.ProtocolVersion {
			t.Fatalf("register announced protocol %d", req.ProtocolVersion)
		}
	case err := <-done:
		t.Fatalf("session ended before registering: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("no register")
	}
	select {
	case req := <-srv.watch:
		if req.ProtocolVersion != rpc.ProtocolVersion || req.AgentID != "agent-1" {
			t.Fatalf("watch request %+v", req)
		}
	case err := <-done:
		t.Fatalf("the agent refused a protocol 1 server: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("no watch")
	}
}

// TestAgentRefusesServerTooNew: a server two protocols ahead is refused
// with a message that says to upgrade the agent.
func TestAgentRefusesServerTooNew(t *testing.T) {
	srv, addr := serveDouble(t, rpc.ProtocolVersion+2)
	err := versionTestAgent(context.Background()).session(addr)
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "upgrade the agent") {
		t.Fatalf("session with a too new server: %v", err)
	}
	select {
	case <-srv.watch:
		t.Fatal("the agent watched a server it refused")
	default:
	}
}

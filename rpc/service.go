package rpc

import (
	"context"
	"io"

	"google.golang.org/grpc"

	"github.com/corral-dev/corral/structs"
)

// MaxMessageSize bounds one gRPC message (logs are the largest).
const MaxMessageSize = 64 << 20

// CallOptions are the options every client of these services must use.
func CallOptions() []grpc.CallOption {
	return []grpc.CallOption{grpc.CallContentSubtype(codecName), grpc.MaxCallRecvMsgSize(MaxMessageSize), grpc.MaxCallSendMsgSize(MaxMessageSize)}
}

// ServerOptions are the options every gRPC server of these services must use.
func ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{grpc.MaxRecvMsgSize(MaxMessageSize), grpc.MaxSendMsgSize(MaxMessageSize)}
}

// ServerService is what servers offer agents.
type ServerService interface {
	Register(ctx context.Context, req *RegisterRequest) (*RegisterResponse, error)
	WatchKernels(req *WatchRequest, stream WatchStream) error
	UpdateKernels(ctx context.Context, req *structs.KernelUpdateRequest) (*UpdateKernelsResponse, error)
	// ReadIndex, on the leader, confirms leadership and returns the index
	// a follower must apply before serving agents (other servers call it).
	ReadIndex(ctx context.Context, req *ReadIndexRequest) (*ReadIndexResponse, error)
	// SignAgent signs an agent certificate for a join secret or for the
	// agent's current certificate (renewal).
	SignAgent(ctx context.Context, req *SignAgentRequest) (*SignAgentResponse, error)
	// JoinServer hands the cluster's secrets to a new server that knows
	// the server join secret.
	JoinServer(ctx context.Context, req *JoinServerRequest) (*JoinServerResponse, error)
	// EndpointStats, on the leader, takes a follower's endpoint router
	// counters for the autoscaler (endpointstats.go).
	EndpointStats(ctx context.Context, req *EndpointStatsRequest) (*EndpointStatsResponse, error)
}

// WatchStream is the server side of WatchKernels.
type WatchStream interface {
	Send(*WatchResponse) error
	Context() context.Context
}

// AgentService is what agents offer servers.
type AgentService interface {
	Exec(req *ExecRequest, stream ExecStream) error
	Logs(ctx context.Context, req *LogsRequest) (*LogsResponse, error)
	ImageList(ctx context.Context, req *ImageListRequest) (*ImageListResponse, error)
	ImagePull(ctx context.Context, req *ImagePullRequest) (*ImagePullResponse, error)
	// ImageRemove removes an image from the cache (agents before it
	// answer Unimplemented).
	ImageRemove(ctx context.Context, req *ImageRemoveRequest) (*ImageRemoveResponse, error)
	Stats(ctx context.Context, req *StatsRequest) (*StatsResponse, error)
	// VolumeUsage measures volume directories (volumes.go).
	VolumeUsage(ctx context.Context, req *VolumeUsageRequest) (*VolumeUsageResponse, error)
}

// ExecStream is the agent side of Exec.
type ExecStream interface {
	Send(*ExecFrame) error
	// Recv returns the next ExecInput the caller sent, or io.EOF.
	Recv() (*ExecInput, error)
	Context() context.Context
}

type execServerStream struct {
	grpc.ServerStream
	noInput bool // Exec, whose caller sends the request only
}

func (s execServerStream) Send(m *ExecFrame) error { return s.ServerStream.SendMsg(m) }

func (s execServerStream) Recv() (*ExecInput, error) {
	if s.noInput {
		return nil, io.EOF
	}
	m := new(ExecInput)
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return nil, err
	}
	return m, nil
}

type sendStream[T any] struct{ grpc.ServerStream }

func (s sendStream[T]) Send(m *T) error { return s.ServerStream.SendMsg(m) }

// unary describes one unary method of service; interceptors see its full
// name, "/service/name", as generated code gives it.
func unary[Req, Resp any](call func(srv any, ctx context.Context, req *Req) (*Resp, error), service, name string) grpc.MethodDesc {
	return grpc.MethodDesc{
		MethodName: name,
		Handler: func(srv any, ctx context.Context, dec func(any) error, icpt grpc.UnaryServerInterceptor) (any, error) {
			req := new(Req)
			if err := dec(req); err != nil {
				return nil, err
			}
			if icpt == nil {
				return call(srv, ctx, req)
			}
			info := &grpc.UnaryServerInfo{Server: srv, FullMethod: "/" + service + "/" + name}
			return icpt(ctx, req, info, func(ctx context.Context, r any) (any, error) {
				return call(srv, ctx, r.(*Req))
			})
		},
	}
}

const (
	serverServiceName = "corral.v1.Server"
	agentServiceName  = "corral.v1.Agent"
)

var serverDesc = grpc.ServiceDesc{
	ServiceName: serverServiceName,
	HandlerType: (*ServerService)(nil),
	Methods: []grpc.MethodDesc{
		unary(func(srv any, ctx context.Context, req *RegisterRequest) (*RegisterResponse, error) {
			return srv.(ServerService).Register(ctx, req)
		}, serverServiceName, "Register"),
		unary(func(srv any, ctx context.Context, req *structs.KernelUpdateRequest) (*UpdateKernelsResponse, error) {
			return srv.(ServerService).UpdateKernels(ctx, req)
		}, serverServiceName, "UpdateKernels"),
		unary(func(srv any, ctx context.Context, req *ReadIndexRequest) (*ReadIndexResponse, error) {
			return srv.(ServerService).ReadIndex(ctx, req)
		}, serverServiceName, "ReadIndex"),
		unary(func(srv any, ctx context.Context, req *SignAgentRequest) (*SignAgentResponse, error) {
			return srv.(ServerService).SignAgent(ctx, req)
		}, serverServiceName, "SignAgent"),
		unary(func(srv any, ctx context.Context, req *JoinServerRequest) (*JoinServerResponse, error) {
			return srv.(ServerService).JoinServer(ctx, req)
		}, serverServiceName, "JoinServer"),
		unary(func(srv any, ctx context.Context, req *EndpointStatsRequest) (*EndpointStatsResponse, error) {
			return srv.(ServerService).EndpointStats(ctx, req)
		}, serverServiceName, "EndpointStats"),
	},
	Streams: []grpc.StreamDesc{{
		StreamName:    "WatchKernels",
		ServerStreams: true,
		Handler: func(srv any, stream grpc.ServerStream) error {
			req := new(WatchRequest)
			if err := stream.RecvMsg(req); err != nil {
				return err
			}
			return srv.(ServerService).WatchKernels(req, sendStream[WatchResponse]{stream})
		},
	}},
}

var agentDesc = grpc.ServiceDesc{
	ServiceName: agentServiceName,
	HandlerType: (*AgentService)(nil),
	Methods: []grpc.MethodDesc{
		unary(func(srv any, ctx context.Context, req *LogsRequest) (*LogsResponse, error) {
			return srv.(AgentService).Logs(ctx, req)
		}, agentServiceName, "Logs"),
		unary(func(srv any, ctx context.Context, req *ImageListRequest) (*ImageListResponse, error) {
			return srv.(AgentService).ImageList(ctx, req)
		}, agentServiceName, "ImageList"),
		unary(func(srv any, ctx context.Context, req *ImagePullRequest) (*ImagePullResponse, error) {
			return srv.(AgentService).ImagePull(ctx, req)
		}, agentServiceName, "ImagePull"),
		unary(func(srv any, ctx context.Context, req *ImageRemoveRequest) (*ImageRemoveResponse, error) {
			return srv.(AgentService).ImageRemove(ctx, req)
		}, agentServiceName, "ImageRemove"),
		unary(func(srv any, ctx context.Context, req *StatsRequest) (*StatsResponse, error) {
			return srv.(AgentService).Stats(ctx, req)
		}, agentServiceName, "Stats"),
		unary(func(srv any, ctx context.Context, req *VolumeUsageRequest) (*VolumeUsageResponse, error) {
			return srv.(AgentService).VolumeUsage(ctx, req)
		}, agentServiceName, "VolumeUsage"),
	},
	Streams: []grpc.StreamDesc{{
		StreamName:    "Exec",
		ServerStreams: true,
		Handler: func(srv any, stream grpc.ServerStream) error {
			req := new(ExecRequest)
			if err := stream.RecvMsg(req); err != nil {
				return err
			}
			// The request is all the caller sends here: no input.
			req.Stdin = false
			return srv.(AgentService).Exec(req, execServerStream{ServerStream: stream, noInput: true})
		},
	}, {
		// ExecInteractive is Exec with ExecInput messages after the
		// request; agents before it answer Unimplemented.
		StreamName:    "ExecInteractive",
		ServerStreams: true,
		ClientStreams: true,
		Handler: func(srv any, stream grpc.ServerStream) error {
			req := new(ExecRequest)
			if err := stream.RecvMsg(req); err != nil {
				return err
			}
			return srv.(AgentService).Exec(req, execServerStream{ServerStream: stream})
		},
	},
		// Tunnel (tunnel.go) carries a TCP connection to a kernel's port.
		tunnelStreamDesc,
	},
}

// RegisterServerService adds the server's agent-facing service to s.
func RegisterServerService(s *grpc.Server, impl ServerService) { s.RegisterService(&serverDesc, impl) }

// RegisterAgentService adds the agent's server-facing service to s.
func RegisterAgentService(s *grpc.Server, impl AgentService) { s.RegisterService(&agentDesc, impl) }

// ServerClient calls the Server service.
type ServerClient struct{ cc grpc.ClientConnInterface }

// NewServerClient returns a client of the Server service over cc.
func NewServerClient(cc grpc.ClientConnInterface) *ServerClient { return &ServerClient{cc: cc} }

// Register sends the agent's inventory.
func (c *ServerClient) Register(ctx context.Context, req *RegisterRequest) (*RegisterResponse, error) {
	out := new(RegisterResponse)
	return out, c.cc.Invoke(ctx, "/"+serverServiceName+"/Register", req, out, CallOptions()...)
}

// UpdateKernels reports a batch of kernel status changes.
func (c *ServerClient) UpdateKernels(ctx context.Context, req *structs.KernelUpdateRequest) (*UpdateKernelsResponse, error) {
	out := new(UpdateKernelsResponse)
	return out, c.cc.Invoke(ctx, "/"+serverServiceName+"/UpdateKernels", req, out, CallOptions()...)
}

// WatchKernels opens the agent's assignment stream.
func (c *ServerClient) WatchKernels(ctx context.Context, req *WatchRequest) (*RecvStream[WatchResponse], error) {
	return openStream[WatchResponse](ctx, c.cc, &serverDesc.Streams[0], "/"+serverServiceName+"/WatchKernels", req)
}

// AgentClient calls the Agent service.
type AgentClient struct{ cc grpc.ClientConnInterface }

// NewAgentClient returns a client of the Agent service over cc.
func NewAgentClient(cc grpc.ClientConnInterface) *AgentClient { return &AgentClient{cc: cc} }

// Logs reads a kernel's logs.
func (c *AgentClient) Logs(ctx context.Context, req *LogsRequest) (*LogsResponse, error) {
	out := new(LogsResponse)
	return out, c.cc.Invoke(ctx, "/"+agentServiceName+"/Logs", req, out, CallOptions()...)
}

// ImageList lists the agent's cached images.
func (c *AgentClient) ImageList(ctx context.Context, req *ImageListRequest) (*ImageListResponse, error) {
	out := new(ImageListResponse)
	return out, c.cc.Invoke(ctx, "/"+agentServiceName+"/ImageList", req, out, CallOptions()...)
}

// ImagePull makes the agent pull an image into its cache.
func (c *AgentClient) ImagePull(ctx context.Context, req *ImagePullRequest) (*ImagePullResponse, error) {
	out := new(ImagePullResponse)
	return out, c.cc.Invoke(ctx, "/"+agentServiceName+"/ImagePull", req, out, CallOptions()...)
}

// ImageRemove makes the agent remove an image from its cache.
func (c *AgentClient) ImageRemove(ctx context.Context, req *ImageRemoveRequest) (*ImageRemoveResponse, error) {
	out := new(ImageRemoveResponse)
	return out, c.cc.Invoke(ctx, "/"+agentServiceName+"/ImageRemove", req, out, CallOptions()...)
}

// Stats samples the resource usage of kernels.
func (c *AgentClient) Stats(ctx context.Context, req *StatsRequest) (*StatsResponse, error) {
	out := new(StatsResponse)
	return out, c.cc.Invoke(ctx, "/"+agentServiceName+"/Stats", req, out, CallOptions()...)
}

// Exec runs a command in a kernel and streams its output; the command
// gets no stdin.
func (c *AgentClient) Exec(ctx context.Context, req *ExecRequest) (*RecvStream[ExecFrame], error) {
	return openStream[ExecFrame](ctx, c.cc, &agentDesc.Streams[0], "/"+agentServiceName+"/Exec", req)
}

// ExecInteractive runs a command in a kernel with stdin or a terminal
// (req.Stdin, req.TTY): the caller sends ExecInput messages with Send,
// one at a time, and reads the output with Recv. An agent from before
// interactive exec fails the first Recv with codes.Unimplemented.
func (c *AgentClient) ExecInteractive(ctx context.Context, req *ExecRequest) (*ExecClientStream, error) {
	cs, err := c.cc.NewStream(ctx, &agentDesc.Streams[1], "/"+agentServiceName+"/ExecInteractive", CallOptions()...)
	if err != nil {
		return nil, err
	}
	if err := cs.SendMsg(req); err != nil {
		return nil, err
	}
	return &ExecClientStream{RecvStream: RecvStream[ExecFrame]{cs: cs}}, nil
}

// ExecClientStream is the caller's side of an interactive Exec.
type ExecClientStream struct {
	RecvStream[ExecFrame]
}

// Send sends one ExecInput; it must not be called concurrently.
func (s *ExecClientStream) Send(m *ExecInput) error { return s.cs.SendMsg(m) }

// CloseSend ends the input; the output still comes.
func (s *ExecClientStream) CloseSend() error { return s.cs.CloseSend() }

// RecvStream is the receiving side of a server-streaming call.
type RecvStream[T any] struct{ cs grpc.ClientStream }

// Recv returns the next message, or io.EOF at the end of the stream.
func (s *RecvStream[T]) Recv() (*T, error) {
	m := new(T)
	if err := s.cs.RecvMsg(m); err != nil {
		return nil, err
	}
	return m, nil
}

func openStream[T any](ctx context.Context, cc grpc.ClientConnInterface, desc *grpc.StreamDesc, method string, req any) (*RecvStream[T], error) {
	cs, err := cc.NewStream(ctx, desc, method, CallOptions()...)
	if err != nil {
		return nil, err
	}
	if err := cs.SendMsg(req); err != nil {
		return nil, err
	}
	if err := cs.CloseSend(); err != nil {
		return nil, err
	}
	return &RecvStream[T]{cs: cs}, nil
}

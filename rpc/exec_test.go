package rpc

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// echoAgent is an AgentService whose Exec echoes the caller's input back
// as stdout and then exits 0 (the other methods are not called).
type echoAgent struct{ AgentService }

func (echoAgent) Exec(req *ExecRequest, stream ExecStream) error {
	if req.Stdin {
		for {
			in, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return err
			}
			if err := stream.Send(&ExecFrame{Stream: "stdout", Data: in.Data}); err != nil {
				return err
			}
		}
	}
	code := 0
	return stream.Send(&ExecFrame{ExitCode: &code})
}

// oldAgentDesc is the Exec of agents before stdin existed: a server
// stream that reads the request only.
var oldAgentDesc = grpc.ServiceDesc{
	ServiceName: agentServiceName,
	HandlerType: (*any)(nil),
	Streams: []grpc.StreamDesc{{
		StreamName:    "Exec",
		ServerStreams: true,
		Handler: func(srv any, stream grpc.ServerStream) error {
			if err := stream.RecvMsg(new(ExecRequest)); err != nil {
				return err
			}
			code := 3
			return stream.SendMsg(&ExecFrame{ExitCode: &code})
		},
	}},
}

func dialAgent(t *testing.T, register func(*grpc.Server)) *AgentClient {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(ServerOptions()...)
	register(g)
	go func() { _ = g.Serve(ln) }()
	t.Cleanup(g.Stop)
	cc, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return NewAgentClient(cc)
}

// TestExecInteractive: input sent after the request reaches the agent in
// order, and a caller that sends none (servers before stdin existed)
// still gets the output and exit code.
func TestExecInteractive(t *testing.T) {
	c := dialAgent(t, func(g *grpc.Server) { RegisterAgentService(g, echoAgent{}) })
	ctx := context.Background()
	s, err := c.ExecInteractive(ctx, &ExecRequest{KernelID: "k", Command: []string{"cat"}, Stdin: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, chunk := range []string{"a", "b"} {
		if err := s.Send(&ExecInput{Data: []byte(chunk)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.CloseSend(); err != nil {
		t.Fatal(err)
	}
	var got string
	for {
		f, err := s.Recv()
		if err != nil {
			t.Fatal(err)
		}
		got += string(f.Data)
		if f.ExitCode != nil {
			break
		}
	}
	if got != "ab" {
		t.Errorf("echoed %q, want ab", got)
	}
	// The request-only call of older servers.
	rs, err := c.Exec(ctx, &ExecRequest{KernelID: "k", Command: []string{"true"}})
	if err != nil {
		t.Fatal(err)
	}
	if f, err := rs.Recv(); err != nil || f.ExitCode == nil || *f.ExitCode != 0 {
		t.Fatalf("non-interactive exec: %+v, %v", f, err)
	}
}

// TestExecInteractiveOldAgent: an agent from before interactive exec
// answers Unimplemented, which the server reports; its Exec, which waits
// for the end of the caller's messages, still works.
func TestExecInteractiveOldAgent(t *testing.T) {
	c := dialAgent(t, func(g *grpc.Server) { g.RegisterService(&oldAgentDesc, struct{}{}) })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, err := c.ExecInteractive(ctx, &ExecRequest{KernelID: "k", Command: []string{"sh"}, Stdin: true, TTY: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recv(); status.Code(err) != codes.Unimplemented {
		t.Fatalf("ExecInteractive on an old agent: %v, want Unimplemented", err)
	}
	rs, err := c.Exec(ctx, &ExecRequest{KernelID: "k", Command: []string{"true"}})
	if err != nil {
		t.Fatal(err)
	}
	if f, err := rs.Recv(); err != nil || f.ExitCode == nil || *f.ExitCode != 3 {
		t.Fatalf("Exec on an old agent: %+v, %v", f, err)
	}
}

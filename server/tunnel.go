package server

import (
	"context"
	"fmt"
	"net"
	"net/http"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/corral-dev/corral/rpc"
	"github.com/corral-dev/corral/structs"
)

// dialKernel opens a TCP connection to a port of a RUNNING kernel through
// its agent's Tunnel stream (the kernel's address is on the agent's
// bridge, which only that agent reaches). App tunnels, the app HTTP proxy
// and the endpoint router all connect to kernels this way. Errors are
// httpErrors: 409 for a kernel that is not running, 502 when the agent
// cannot reach the port, 501 for an agent too old for tunnels.
func (s *Server) dialKernel(ctx context.Context, k *structs.Kernel, port int) (net.Conn, error) {
	if k.Status != structs.KernelRunning {
		return nil, &httpError{code: http.StatusConflict, msg: fmt.Sprintf("kernel %s of session %s is %s: its ports are reachable only while it is RUNNING", k.Hostname, k.SessionID, k.Status)}
	}
	ac, err := s.agentFor(k)
	if err != nil {
		return nil, err
	}
	conn, err := ac.Tunnel(ctx, &rpc.TunnelTarget{KernelID: k.ID, Port: port})
	if status.Code(err) == codes.Unimplemented {
		return nil, &httpError{code: http.StatusNotImplemented, msg: fmt.Sprintf("the agent of kernel %s is too old for tunnels to kernel ports: upgrade it", k.Hostname)}
	}
	if err != nil {
		return nil, &httpError{code: http.StatusBadGateway, msg: fmt.Sprintf("kernel %s port %d: %s", k.Hostname, port, status.Convert(err).Message())}
	}
	return conn, nil
}

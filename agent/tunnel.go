package agent

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/corral-dev/corral/rpc"
)

// tunnelDialTimeout bounds how long the agent tries to reach a kernel's port.
const tunnelDialTimeout = 10 * time.Second

var _ rpc.TunnelService = (*agentService)(nil)

// Tunnel connects a server to a TCP port of a kernel on this agent (app
// tunnels, service ports, endpoint routing): it dials the kernel's
// address on the agent's kernel bridge (127.0.0.1 for a kernel on the
// host's network) and copies bytes both ways until both sides are done.
func (s *agentService) Tunnel(stream rpc.TunnelStream) error {
	t, err := rpc.ReadTunnelOpen(stream)
	if err != nil {
		return err
	}
	fail := func(format string, args ...any) error {
		return stream.SendMsg(&rpc.TunnelFrame{Kind: rpc.TunnelError, Data: []byte(fmt.Sprintf(format, args...))})
	}
	if t.Port < 1 || t.Port > 65535 {
		return fail("port %d is not a TCP port (1-65535)", t.Port)
	}
	addr, err := s.a.kernelDialAddr(t.KernelID)
	if err != nil {
		return fail("%v", err)
	}
	target := net.JoinHostPort(addr.String(), strconv.Itoa(t.Port))
	d := net.Dialer{Timeout: tunnelDialTimeout}
	kc, err := d.DialContext(stream.Context(), "tcp", target)
	if err != nil {
		return fail("kernel %s: nothing answers on port %d: %v", t.KernelID, t.Port, err)
	}
	defer kc.Close()
	if err := stream.SendMsg(&rpc.TunnelFrame{Kind: rpc.TunnelOK}); err != nil {
		return err
	}
	tc := rpc.NewTunnelConn(stream, nil, nil)
	defer tc.Close()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		// server → kernel
		defer wg.Done()
		_, _ = io.Copy(kc, tc)
		if cw, ok := kc.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		} else {
			_ = kc.Close()
		}
	}()
	// kernel → server
	_, err = io.Copy(tc, kc)
	if err != nil {
		_ = tc.SendError(fmt.Sprintf("kernel %s port %d: %v", t.KernelID, t.Port, err))
	} else {
		_ = tc.CloseWrite()
	}
	// The server's half: wait for its end of data or the stream's end.
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-stream.Context().Done():
	}
	return nil
}

// kernelDialAddr is where the agent reaches a running kernel's ports: its
// address on the kernel bridge, or loopback for kernels on the host's
// network (the exec driver, -network host).
func (a *Agent) kernelDialAddr(kernelID string) (netip.Addr, error) {
	a.mu.Lock()
	r, ok := a.kernels[kernelID]
	a.mu.Unlock()
	if !ok || r.isDone() {
		return netip.Addr{}, fmt.Errorf("kernel %s is not running on agent %s", kernelID, a.cfg.Name)
	}
	if addr, ok := a.KernelAddr(kernelID); ok {
		return addr, nil
	}
	if r.driver.Name() == "exec" || r.driver.Name() == "host" || hostNetworked(r.kernel) {
		return netip.AddrFrom4([4]byte{127, 0, 0, 1}), nil
	}
	if noNetwork(r.kernel) {
		return netip.Addr{}, fmt.Errorf("kernel %s has no network (-network none): its ports cannot be reached", kernelID)
	}
	return netip.Addr{}, fmt.Errorf("kernel %s has no address the agent reaches (driver %s, no kernel bridge)", kernelID, r.driver.Name())
}

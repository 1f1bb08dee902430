package rpc

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"

	"google.golang.org/grpc"
)

// tunnelAgent is an AgentService whose Tunnel dials 127.0.0.1:port (the
// kernel ID is ignored), as the agent does for a host-networked kernel.
type tunnelAgent struct{ AgentService }

func (tunnelAgent) Tunnel(stream TunnelStream) error {
	t, err := ReadTunnelOpen(stream)
	if err != nil {
		return err
	}
	kc, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(t.Port)))
	if err != nil {
		return stream.SendMsg(&TunnelFrame{Kind: TunnelError, Data: []byte(fmt.Sprintf("nothing answers on port %d", t.Port))})
	}
	defer kc.Close()
	if err := stream.SendMsg(&TunnelFrame{Kind: TunnelOK}); err != nil {
		return err
	}
	tc := NewTunnelConn(stream, nil, nil)
	done := make(chan struct{})
	go func() {
		_, _ = io.Copy(kc, tc)
		_ = kc.(*net.TCPConn).CloseWrite()
		close(done)
	}()
	_, _ = io.Copy(tc, kc)
	_ = tc.CloseWrite()
	<-done
	return nil
}

// TestTunnel sends 4 MiB through a tunnel to a TCP echo server and reads
// the same bytes back, half closes, and sees a refused port as an error.
func TestTunnel(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				_, _ = io.Copy(c, c)
				_ = c.(*net.TCPConn).CloseWrite()
				c.Close()
			}()
		}
	}()
	ac := dialAgent(t, func(s *grpc.Server) { RegisterAgentService(s, tunnelAgent{}) })
	port := ln.Addr().(*net.TCPAddr).Port
	conn, err := ac.Tunnel(context.Background(), &TunnelTarget{KernelID: "k", Port: port})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	want := make([]byte, 4<<20)
	_, _ = rand.Read(want)
	go func() {
		_, _ = conn.Write(want)
		_ = conn.(*TunnelConn).CloseWrite()
	}()
	got, err := io.ReadAll(conn)
	if err != nil {
		t.Fatalf("reading the echo: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("echo: got %d bytes, want the %d sent", len(got), len(want))
	}

	// A port nobody listens on: the open fails with the agent's reason.
	ln2, _ := net.Listen("tcp", "127.0.0.1:0")
	closed := ln2.Addr().(*net.TCPAddr).Port
	ln2.Close()
	if _, err := ac.Tunnel(context.Background(), &TunnelTarget{KernelID: "k", Port: closed}); err == nil || !strings.Contains(err.Error(), "nothing answers") {
		t.Fatalf("tunnel to a closed port: err = %v, want the agent's reason", err)
	}
}

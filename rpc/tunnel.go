package rpc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
)

// A Tunnel stream carries one TCP connection between a server and a port
// of a kernel: the server sends an open frame (kernel and port), the
// agent dials the kernel and answers ok or an error, then raw bytes flow
// both ways until each side sends end-of-data or the stream ends. Its
// frames use their own codec (tunnelCodecName), not JSON: a byte of kind
// then the payload, so the bytes are not base64-encoded.

// tunnelCodecName is the gRPC content subtype of tunnel frames.
const tunnelCodecName = "corral-tunnel"

// Kinds of tunnel frames.
const (
	TunnelData  byte = 0 // payload: bytes of the connection
	TunnelEOF   byte = 1 // the sender will write no more (half close)
	TunnelOpen  byte = 2 // payload: TunnelTarget as JSON (server to agent, first)
	TunnelOK    byte = 3 // the agent reached the kernel's port
	TunnelError byte = 4 // payload: what went wrong (agent to server, then the end)
)

// TunnelFrame is one message of a Tunnel stream.
type TunnelFrame struct {
	Kind byte
	Data []byte
}

// TunnelTarget is what the open frame asks for: a port of a kernel on the
// agent.
type TunnelTarget struct {
	KernelID string `json:"kernel_id"`
	Port     int    `json:"port"`
}

// tunnelChunk bounds the data of one frame.
const tunnelChunk = 32 << 10

type tunnelCodec struct{}

func (tunnelCodec) Marshal(v any) ([]byte, error) {
	f, ok := v.(*TunnelFrame)
	if !ok {
		return nil, fmt.Errorf("tunnel codec: cannot marshal %T", v)
	}
	out := make([]byte, 1+len(f.Data))
	out[0] = f.Kind
	copy(out[1:], f.Data)
	return out, nil
}

func (tunnelCodec) Unmarshal(data []byte, v any) error {
	f, ok := v.(*TunnelFrame)
	if !ok {
		return fmt.Errorf("tunnel codec: cannot unmarshal into %T", v)
	}
	if len(data) == 0 {
		return errors.New("tunnel codec: empty frame")
	}
	f.Kind = data[0]
	f.Data = append(f.Data[:0], data[1:]...)
	return nil
}

func (tunnelCodec) Name() string { return tunnelCodecName }

func init() { encoding.RegisterCodec(tunnelCodec{}) }

// tunnelCallOptions are the call options of the Tunnel stream.
func tunnelCallOptions() []grpc.CallOption {
	return []grpc.CallOption{grpc.CallContentSubtype(tunnelCodecName), grpc.MaxCallRecvMsgSize(MaxMessageSize), grpc.MaxCallSendMsgSize(MaxMessageSize)}
}

// TunnelStream is either side of a Tunnel stream.
type TunnelStream interface {
	Context() context.Context
	SendMsg(m any) error
	RecvMsg(m any) error
}

// TunnelService is the agent's side of tunnels (part of the Agent
// service; an agent without it answers Unimplemented).
type TunnelService interface {
	Tunnel(stream TunnelStream) error
}

var tunnelStreamDesc = grpc.StreamDesc{
	StreamName:    "Tunnel",
	ServerStreams: true,
	ClientStreams: true,
	Handler: func(srv any, stream grpc.ServerStream) error {
		t, ok := srv.(TunnelService)
		if !ok {
			return errors.New("this agent has no tunnels")
		}
		return t.Tunnel(stream)
	},
}

// ReadTunnelOpen reads the open frame an agent gets first.
func ReadTunnelOpen(stream TunnelStream) (*TunnelTarget, error) {
	var f TunnelFrame
	if err := stream.RecvMsg(&f); err != nil {
		return nil, err
	}
	if f.Kind != TunnelOpen {
		return nil, fmt.Errorf("tunnel: first frame is of kind %d, not open", f.Kind)
	}
	var t TunnelTarget
	if err := json.Unmarshal(f.Data, &t); err != nil {
		return nil, fmt.Errorf("tunnel: malformed open frame: %v", err)
	}
	return &t, nil
}

// Tunnel opens a TCP connection to port t.Port of kernel t.KernelID
// through the agent. It returns once the agent has reached the port (or
// failed to: the error says why); the connection lives until Close or the
// end of ctx.
func (c *AgentClient) Tunnel(ctx context.Context, t *TunnelTarget) (net.Conn, error) {
	ctx, cancel := context.WithCancel(ctx)
	cs, err := c.cc.NewStream(ctx, &agentDesc.Streams[2], "/"+agentServiceName+"/Tunnel", tunnelCallOptions()...)
	if err != nil {
		cancel()
		return nil, err
	}
	b, _ := json.Marshal(t)
	if err := cs.SendMsg(&TunnelFrame{Kind: TunnelOpen, Data: b}); err != nil {
		cancel()
		return nil, err
	}
	var f TunnelFrame
	if err := cs.RecvMsg(&f); err != nil {
		cancel()
		return nil, err
	}
	switch f.Kind {
	case TunnelOK:
	case TunnelError:
		cancel()
		return nil, errors.New(string(f.Data))
	default:
		cancel()
		return nil, fmt.Errorf("tunnel: the agent answered a frame of kind %d", f.Kind)
	}
	addr := tunnelAddr("kernel " + t.KernelID + ":" + strconv.Itoa(t.Port))
	return NewTunnelConn(cs, cancel, addr), nil
}

// tunnelAddr names a tunnel's far end.
type tunnelAddr string

func (a tunnelAddr) Network() string { return "corral-tunnel" }
func (a tunnelAddr) String() string  { return string(a) }

// TunnelConn is a net.Conn over a Tunnel stream (either side): writes
// become data frames, CloseWrite an end-of-data frame, reads return the
// peer's data until its end-of-data (io.EOF) or the stream's end.
type TunnelConn struct {
	stream TunnelStream
	cancel context.CancelFunc
	remote net.Addr

	sendMu sync.Mutex

	mu       sync.Mutex
	buf      []byte
	recvErr  error
	readable chan struct{} // signalled when buf or recvErr change
	drained  chan struct{} // signalled when a read emptied buf
	deadline time.Time
	closed   bool
	done     chan struct{}
	once     sync.Once
}

// NewTunnelConn wraps a stream whose open exchange is done; cancel ends
// the stream (it may be nil on the agent's side, where the handler's
// return ends it).
func NewTunnelConn(stream TunnelStream, cancel context.CancelFunc, remote net.Addr) *TunnelConn {
	c := &TunnelConn{stream: stream, cancel: cancel, remote: remote, readable: make(chan struct{}, 1), drained: make(chan struct{}, 1), done: make(chan struct{})}
	go c.recvLoop()
	return c
}

func (c *TunnelConn) recvLoop() {
	for {
		var f TunnelFrame
		err := c.stream.RecvMsg(&f)
		if err == nil {
			switch f.Kind {
			case TunnelData:
			case TunnelEOF:
				err = io.EOF
			case TunnelError:
				err = errors.New(string(f.Data))
			default:
				continue
			}
		}
		c.mu.Lock()
		if err != nil {
			if c.recvErr == nil {
				c.recvErr = err
			}
		} else {
			c.buf = append(c.buf, f.Data...)
		}
		full := len(c.buf) > 4*tunnelChunk
		c.mu.Unlock()
		select {
		case c.readable <- struct{}{}:
		default:
		}
		if err != nil {
			return
		}
		// Back pressure: stop reading frames (gRPC's flow control then
		// stops the peer) while the reader is behind.
		for full {
			select {
			case <-c.done:
				return
			case <-c.drained:
			}
			c.mu.Lock()
			full = len(c.buf) > 4*tunnelChunk
			c.mu.Unlock()
		}
	}
}

// Read reads the peer's data.
func (c *TunnelConn) Read(p []byte) (int, error) {
	for {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return 0, net.ErrClosed
		}
		if len(c.buf) > 0 {
			n := copy(p, c.buf)
			c.buf = c.buf[n:]
			if len(c.buf) == 0 {
				c.buf = nil
				select {
				case c.drained <- struct{}{}:
				default:
				}
			}
			c.mu.Unlock()
			return n, nil
		}
		if c.recvErr != nil {
			err := c.recvErr
			c.mu.Unlock()
			return 0, err
		}
		dl := c.deadline
		c.mu.Unlock()
		var timeout <-chan time.Time
		var t *time.Timer
		if !dl.IsZero() {
			d := time.Until(dl)
			if d <= 0 {
				return 0, os.ErrDeadlineExceeded
			}
			t = time.NewTimer(d)
			timeout = t.C
		}
		select {
		case <-c.readable:
		case <-c.done:
		case <-timeout:
		}
		if t != nil {
			t.Stop()
		}
	}
}

// Write sends p as data frames.
func (c *TunnelConn) Write(p []byte) (int, error) {
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	n := 0
	for len(p) > 0 {
		chunk := p
		if len(chunk) > tunnelChunk {
			chunk = chunk[:tunnelChunk]
		}
		if err := c.stream.SendMsg(&TunnelFrame{Kind: TunnelData, Data: chunk}); err != nil {
			return n, err
		}
		n += len(chunk)
		p = p[len(chunk):]
	}
	return n, nil
}

// CloseWrite tells the peer that no more data follows.
func (c *TunnelConn) CloseWrite() error {
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	return c.stream.SendMsg(&TunnelFrame{Kind: TunnelEOF})
}

// SendError ends the tunnel with an error for the peer (the agent's side
// uses it when the kernel's connection fails).
func (c *TunnelConn) SendError(msg string) error {
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	return c.stream.SendMsg(&TunnelFrame{Kind: TunnelError, Data: []byte(msg)})
}

// Close ends the tunnel.
func (c *TunnelConn) Close() error {
	c.once.Do(func() {
		c.mu.Lock()
		c.closed = true
		c.mu.Unlock()
		close(c.done)
		if c.cancel != nil {
			c.cancel()
		}
	})
	return nil
}

func (c *TunnelConn) LocalAddr() net.Addr  { return tunnelAddr("corral") }
func (c *TunnelConn) RemoteAddr() net.Addr { return c.remote }

// SetDeadline sets the read deadline; writes have none (gRPC's flow
// control bounds them, and Close ends them).
func (c *TunnelConn) SetDeadline(t time.Time) error { return c.SetReadDeadline(t) }

// SetReadDeadline makes blocked and future reads fail after t.
func (c *TunnelConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	c.deadline = t
	c.mu.Unlock()
	select {
	case c.readable <- struct{}{}:
	default:
	}
	return nil
}

// SetWriteDeadline is accepted and ignored (see SetDeadline).
func (c *TunnelConn) SetWriteDeadline(time.Time) error { return nil }

package server

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// raftMagic is the first byte a raft peer writes on a new connection to the
// RPC port; gRPC connections start with the HTTP/2 preface ("PRI ...").
const raftMagic byte = 0x01

// muxListener splits one RPC listener into gRPC and raft connections by the
// first byte each connection sends.
type muxListener struct {
	ln     net.Listener
	grpc   *chanListener
	raft   *chanListener
	closed chan struct{}
	once   sync.Once
	// raftTLS, when set, wraps raft connections (after the magic byte) in
	// TLS that accepts only server certificates; gRPC does its own TLS.
	raftTLS *tls.Config
}

func newMux(ln net.Listener, raftTLS *tls.Config) *muxListener {
	m := &muxListener{ln: ln, closed: make(chan struct{}), raftTLS: raftTLS}
	m.grpc = &chanListener{addr: ln.Addr(), ch: make(chan net.Conn), closed: m.closed, done: make(chan struct{})}
	m.raft = &chanListener{addr: ln.Addr(), ch: make(chan net.Conn), closed: m.closed, done: make(chan struct{})}
	go m.serve()
	return m
}

func (m *muxListener) serve() {
	for {
		c, err := m.ln.Accept()
		if err != nil {
			select {
			case <-m.closed:
				return
			default:
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			m.Close()
			return
		}
		go m.route(c)
	}
}

func (m *muxListener) route(c net.Conn) {
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	b, err := br.Peek(1)
	if err != nil {
		c.Close()
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	target := m.grpc
	var conn net.Conn = &peekedConn{Conn: c, r: br}
	if b[0] == raftMagic {
		_, _ = br.Discard(1)
		target = m.raft
		if m.raftTLS != nil {
			conn = tls.Server(conn, m.raftTLS)
		}
	}
	select {
	case target.ch <- conn:
	case <-target.done:
		c.Close()
	case <-m.closed:
		c.Close()
	}
}

// Close stops accepting connections on both halves.
func (m *muxListener) Close() error {
	var err error
	m.once.Do(func() {
		close(m.closed)
		err = m.ln.Close()
	})
	return err
}

type peekedConn struct {
	net.Conn
	r *bufio.Reader
}

func (p *peekedConn) Read(b []byte) (int, error) { return p.r.Read(b) }

// chanListener is one half of the mux; closing it stops only that half.
type chanListener struct {
	addr   net.Addr
	ch     chan net.Conn
	closed chan struct{} // the whole mux
	done   chan struct{} // this half
	once   sync.Once
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}
func (l *chanListener) Addr() net.Addr { return l.addr }

// raftLayer is raft's StreamLayer over the muxed RPC port.
type raftLayer struct {
	*chanListener
	advertise net.Addr
	// tls, when set, is the client side of raft's TLS to other servers.
	tls *tls.Config
}

var _ raft.StreamLayer = (*raftLayer)(nil)

func (r *raftLayer) Addr() net.Addr { return r.advertise }

// Dial opens a raft connection to a peer's RPC port.
func (r *raftLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", string(address), timeout)
	if err != nil {
		return nil, err
	}
	if _, err := c.Write([]byte{raftMagic}); err != nil {
		c.Close()
		return nil, fmt.Errorf("raft dial %s: %w", address, err)
	}
	if r.tls == nil {
		return c, nil
	}
	tc := tls.Client(c, r.tls)
	_ = tc.SetDeadline(time.Now().Add(timeout))
	if err := tc.Handshake(); err != nil {
		c.Close()
		return nil, fmt.Errorf("raft dial %s: TLS: %w", address, err)
	}
	_ = tc.SetDeadline(time.Time{})
	return tc, nil
}

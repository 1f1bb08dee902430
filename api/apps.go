package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/corral-dev/corral/structs"
)

// App is one app of a session (a service port of its main1 kernel) as
// GET /v1/sessions/{id}/apps lists it.
type App struct {
	structs.ServicePort
	// ProxyPath is where the HTTP proxy serves an http app (with a
	// token or a signed URL); empty for tcp apps.
	ProxyPath string `json:"proxy_path,omitempty"`
	// TunnelPath is the WebSocket that carries one TCP connection to
	// the app (`corral session app`).
	TunnelPath string `json:"tunnel_path"`
}

// AppsResponse is the answer of GET /v1/sessions/{id}/apps.
type AppsResponse struct {
	SessionID string `json:"session_id"`
	// Kernel is the hostname of the kernel that serves the apps (main1).
	Kernel string `json:"kernel"`
	// KernelStatus is that kernel's status: the apps answer only while it
	// is RUNNING.
	KernelStatus structs.KernelStatus `json:"kernel_status"`
	Apps         []App                `json:"apps"`
}

// AppURLRequest is the body of POST /v1/sessions/{id}/app-url/{name}.
type AppURLRequest struct {
	// TTL is how long the URL opens the app ("15m"; default 1h, at
	// most 24h).
	TTL string `json:"ttl,omitempty"`
}

// AppURLResponse is a signed URL that opens an http app in a browser
// without a token until it expires.
type AppURLResponse struct {
	// URL is absolute, on the server that answered.
	URL string `json:"url"`
	// Path is the same URL without scheme and host.
	Path      string    `json:"path"`
	ExpiresAt time.Time `json:"expires_at"`
}

// AppTokenParam is the query parameter of a signed app URL; AppCookie is
// the cookie the proxy sets from it (scoped to the app's path).
const (
	AppTokenParam = "corral_app_token"
	AppCookie     = "corral_app"
)

// AppTunnelEOF is the text message a side of an app tunnel sends when it
// will write no more (a TCP half close); binary messages carry the bytes.
const AppTunnelEOF = `{"eof":true}`

// AppProxyPath is where the HTTP proxy serves an app of a session.
func AppProxyPath(sessionID, name string) string {
	return sessionPath(sessionID, "/apps/"+url.PathEscape(name)+"/")
}

// AppTunnelPath is the WebSocket of an app's TCP tunnel.
func AppTunnelPath(sessionID, name string) string {
	return sessionPath(sessionID, "/app-tunnel/"+url.PathEscape(name))
}

// ListApps returns a session's apps.
func (c *Client) ListApps(ctx context.Context, ref string) (*AppsResponse, error) {
	var out AppsResponse
	_, err := c.do(ctx, http.MethodGet, sessionPath(ref, "/apps"), nil, nil, &out, DefaultRequestTimeout)
	return &out, err
}

// AppURL asks for a signed URL that opens an http app in a browser.
func (c *Client) AppURL(ctx context.Context, ref, name string, ttl time.Duration) (*AppURLResponse, error) {
	req := &AppURLRequest{}
	if ttl > 0 {
		req.TTL = ttl.String()
	}
	var out AppURLResponse
	_, err := c.do(ctx, http.MethodPost, sessionPath(ref, "/app-url/"+url.PathEscape(name)), nil, req, &out, DefaultRequestTimeout)
	return &out, err
}

// DialApp opens one TCP connection to an app of a session through the
// server and the kernel's agent. The connection lives until Close or the
// end of ctx.
func (c *Client) DialApp(ctx context.Context, ref, name string) (*AppConn, error) {
	u := c.base + AppTunnelPath(ref, name)
	u = "ws" + strings.TrimPrefix(u, "http") // http→ws, https→wss
	h := http.Header{}
	if c.token != "" {
		h.Set("Authorization", "Bearer "+c.token)
	}
	ctx, cancel := context.WithCancel(ctx)
	ws, resp, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPClient: c.http, HTTPHeader: h})
	if err != nil {
		cancel()
		if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols {
			if resp.Body != nil {
				if e := decodeError(resp); e != nil {
					return nil, e
				}
			}
			return nil, fmt.Errorf("app %s: %s answered %s", name, c.base, resp.Status)
		}
		return nil, fmt.Errorf("app %s: connecting to %s: %w", name, c.base, err)
	}
	return NewAppConn(ctx, cancel, ws), nil
}

// AppConn is a byte stream over an app tunnel's WebSocket (either side):
// binary messages carry the bytes, AppTunnelEOF ends one direction.
type AppConn struct {
	ws     *websocket.Conn
	ctx    context.Context
	cancel context.CancelFunc

	rmu  sync.Mutex
	rbuf []byte
	reof bool

	wmu       sync.Mutex
	closeOnce sync.Once
}

// appMessageLimit bounds one message of an app tunnel.
const appMessageLimit = 1 << 20

// appChunk bounds the bytes one message carries.
const appChunk = 32 << 10

// NewAppConn wraps an app tunnel's WebSocket; cancel (may be nil) is
// called on Close.
func NewAppConn(ctx context.Context, cancel context.CancelFunc, ws *websocket.Conn) *AppConn {
	ws.SetReadLimit(appMessageLimit)
	if cancel == nil {
		ctx, cancel = context.WithCancel(ctx)
	}
	return &AppConn{ws: ws, ctx: ctx, cancel: cancel}
}

// Read reads the peer's bytes; io.EOF after its end of data.
func (c *AppConn) Read(p []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	for len(c.rbuf) == 0 {
		if c.reof {
			return 0, io.EOF
		}
		typ, data, err := c.ws.Read(c.ctx)
		if err != nil {
			// A close without an end of data first is an abrupt end:
			// not io.EOF, so that the other direction ends too.
			return 0, appTunnelError(err)
		}
		if typ == websocket.MessageText {
			if strings.TrimSpace(string(data)) == AppTunnelEOF {
				c.reof = true
			}
			continue
		}
		c.rbuf = data
	}
	n := copy(p, c.rbuf)
	c.rbuf = c.rbuf[n:]
	return n, nil
}

// appTunnelError says why a tunnel ended: the peer's close reason when it
// gave one.
func appTunnelError(err error) error {
	var ce websocket.CloseError
	if errors.As(err, &ce) {
		if ce.Reason != "" {
			return fmt.Errorf("app tunnel closed: %s", ce.Reason)
		}
		return fmt.Errorf("app tunnel closed by the peer (%v) before the end of its data", ce.Code)
	}
	return err
}

// Write sends p to the peer.
func (c *AppConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	n := 0
	for len(p) > 0 {
		chunk := p[:min(len(p), appChunk)]
		if err := c.ws.Write(c.ctx, websocket.MessageBinary, chunk); err != nil {
			return n, err
		}
		n += len(chunk)
		p = p[len(chunk):]
	}
	return n, nil
}

// CloseWrite tells the peer that no more bytes follow.
func (c *AppConn) CloseWrite() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.ws.Write(c.ctx, websocket.MessageText, []byte(AppTunnelEOF))
}

// CloseWithError ends the tunnel with a reason for the peer.
func (c *AppConn) CloseWithError(code websocket.StatusCode, reason string) error {
	if len(reason) > 120 {
		reason = reason[:120]
	}
	err := c.ws.Close(code, reason)
	c.closeOnce.Do(c.cancel)
	return err
}

// Close ends the tunnel.
func (c *AppConn) Close() error {
	err := c.ws.Close(websocket.StatusNormalClosure, "")
	c.closeOnce.Do(c.cancel)
	if err != nil {
		c.ws.CloseNow()
	}
	return nil
}

func (c *AppConn) LocalAddr() net.Addr  { return appAddr("local") }
func (c *AppConn) RemoteAddr() net.Addr { return appAddr("corral app tunnel") }

// SetDeadline and its kin are accepted and ignored: an app tunnel ends
// with Close or its context.
func (c *AppConn) SetDeadline(time.Time) error      { return nil }
func (c *AppConn) SetReadDeadline(time.Time) error  { return nil }
func (c *AppConn) SetWriteDeadline(time.Time) error { return nil }

type appAddr string

func (a appAddr) Network() string { return "corral-app" }
func (a appAddr) String() string  { return string(a) }

var _ net.Conn = (*AppConn)(nil)

// ServeApp accepts connections on ln until ctx ends and tunnels each to
// an app of a session (what `corral session app` runs). A connection
// the server refuses is closed, and the error goes to onError (nil:
// dropped). It returns ctx's error or ln's.
func (c *Client) ServeApp(ctx context.Context, ln net.Listener, ref, name string, onError func(error)) error {
	go func() {
		<-ctx.Done()
		_ = ln.Close()
	}()
	for {
		lc, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return err
		}
		go func() {
			defer lc.Close()
			rc, err := c.DialApp(ctx, ref, name)
			if err != nil {
				if onError != nil {
					onError(err)
				}
				return
			}
			defer rc.Close()
			done := make(chan struct{})
			go func() {
				defer close(done)
				if _, err := io.Copy(rc, lc); err == nil {
					_ = rc.CloseWrite()
				} else {
					_ = rc.Close()
				}
			}()
			if _, err := io.Copy(lc, rc); err == nil {
				if tc, ok := lc.(interface{ CloseWrite() error }); ok {
					_ = tc.CloseWrite()
				}
			} else {
				_ = lc.Close()
			}
			<-done
		}()
	}
}

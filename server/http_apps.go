package server

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/structs"
)

// Apps are service ports of a session's main1 kernel (structs.ServicePort)
// that users reach through the servers: a WebSocket carries one TCP
// connection (`corral session app`), and an HTTP reverse proxy serves
// http apps to browsers. Both reach the kernel with dialKernel (the
// agent's Tunnel stream). The API is in docs/apps.md.

// appActivityEvery is how often an open app connection marks its session
// active.
const appActivityEvery = 10 * time.Second

// Bounds of a signed app URL's lifetime.
const (
	appURLDefaultTTL = time.Hour
	appURLMaxTTL     = 24 * time.Hour
)

// appsState is the server's state for apps, made on first use.
type appsState struct {
	keyOnce   sync.Once
	key       []byte // HMAC key of signed app URLs
	proxyOnce sync.Once
	proxy     *httputil.ReverseProxy
}

// registerApps adds the app routes to the API's mux.
func (s *Server) registerApps(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/sessions/{ref}/apps", s.wrap(s.listApps))
	mux.HandleFunc("GET /v1/sessions/{ref}/app-tunnel/{name}", s.appTunnel)
	mux.HandleFunc("POST /v1/sessions/{ref}/app-url/{name}", s.wrap(s.appURL))
	mux.HandleFunc("GET /v1/sessions/{ref}/apps/{name}", func(w http.ResponseWriter, r *http.Request) {
		u := *r.URL
		u.Path += "/"
		u.RawPath = ""
		http.Redirect(w, r, u.String(), http.StatusTemporaryRedirect)
	})
	mux.HandleFunc("/v1/sessions/{ref}/apps/{name}/{path...}", s.appProxy)
}

// checkServicePorts validates the apps of a create request.
func checkServicePorts(ports []structs.ServicePort) ([]structs.ServicePort, error) {
	if len(ports) == 0 {
		return nil, nil
	}
	out := slices.Clone(ports)
	for i := range out {
		out[i].Source = ""
	}
	if err := structs.ValidateServicePorts(out); err != nil {
		return nil, badRequest("service_ports: %v", err)
	}
	return out, nil
}

// sessionApps returns a session's apps: those its request declared, then
// those main1's image declares; and main1.
func sessionApps(d *api.SessionDetail) ([]structs.ServicePort, *structs.Kernel, error) {
	k, err := kernelOf(d, "main1")
	if err != nil {
		return nil, nil, err
	}
	return structs.MergeServicePorts(d.Session.ServicePorts, k.ImagePorts), k, nil
}

func (s *Server) listApps(w http.ResponseWriter, r *http.Request) (any, error) {
	d, err := s.sessionDetail(r.Context(), nil, s.state.Snapshot(), r.PathValue("ref"), nil)
	if err != nil {
		return nil, err
	}
	apps, k, err := sessionApps(d)
	if err != nil {
		return nil, err
	}
	out := &api.AppsResponse{SessionID: d.Session.ID, Kernel: k.Hostname, KernelStatus: k.Status, Apps: []api.App{}}
	for _, a := range apps {
		app := api.App{ServicePort: a, TunnelPath: api.AppTunnelPath(d.Session.ID, a.Name)}
		if a.Protocol == structs.ProtocolHTTP {
			app.ProxyPath = api.AppProxyPath(d.Session.ID, a.Name)
		}
		out.Apps = append(out.Apps, app)
	}
	return out, nil
}

// resolveApp finds an app of a session the caller may see, and the kernel
// that serves it.
func (s *Server) resolveApp(ctx context.Context, ref, name string) (*api.SessionDetail, *structs.Kernel, structs.ServicePort, error) {
	d, err := s.sessionDetail(ctx, nil, s.state.Snapshot(), ref, nil)
	if err != nil {
		return nil, nil, structs.ServicePort{}, err
	}
	apps, k, err := sessionApps(d)
	if err != nil {
		return nil, nil, structs.ServicePort{}, err
	}
	for _, a := range apps {
		if a.Name == name {
			return d, k, a, nil
		}
	}
	names := make([]string, len(apps))
	for i, a := range apps {
		names[i] = a.Name
	}
	known := "it declares none (create it with -port NAME:PORT)"
	if len(names) > 0 {
		known = "its apps are " + strings.Join(names, ", ")
	}
	return nil, nil, structs.ServicePort{}, &httpError{code: http.StatusNotFound, msg: fmt.Sprintf("session %s has no app %q: %s", d.Session.ID, name, known)}
}

// touchWhileOpen marks a session active now and every appActivityEvery
// until the returned function is called.
func (s *Server) touchWhileOpen(sessionID string) func() {
	s.activity.touch(sessionID, time.Now().UTC())
	done := make(chan struct{})
	go func() {
		tick := time.NewTicker(appActivityEvery)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case now := <-tick.C:
				s.activity.touch(sessionID, now.UTC())
			}
		}
	}()
	return func() {
		close(done)
		s.activity.touch(sessionID, time.Now().UTC())
	}
}

// appTunnel carries one TCP connection to an app over a WebSocket: binary
// messages are bytes, api.AppTunnelEOF a half close. Errors before the
// upgrade (unknown app, kernel not running, port closed) are JSON answers.
func (s *Server) appTunnel(w http.ResponseWriter, r *http.Request) {
	idCtx, ok := s.streamIdentity(w, r)
	if !ok {
		return
	}
	ctx, cancel := context.WithCancel(idCtx)
	defer cancel()
	d, k, app, err := s.resolveApp(ctx, r.PathValue("ref"), r.PathValue("name"))
	if err == nil && !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
		err = badRequest("GET %s is a WebSocket (an app tunnel): connect with `corral session app` or a WebSocket client", r.URL.Path)
	}
	if err != nil {
		code, msg := errorStatus(err)
		writeError(w, code, msg)
		return
	}
	kc, err := s.dialKernel(ctx, k, app.Port)
	if err != nil {
		code, msg := errorStatus(err)
		writeError(w, code, msg)
		return
	}
	defer kc.Close()
	ws, err := websocket.Accept(w, r, nil)
	if err != nil {
		return // Accept answered the request
	}
	defer s.touchWhileOpen(d.Session.ID)()
	c := api.NewAppConn(ctx, cancel, ws)
	defer c.Close()
	pumpApp(c, kc)
}

// closeWriter is a connection that can end one direction.
type closeWriter interface{ CloseWrite() error }

// pumpApp copies bytes both ways until both directions ended (or either
// failed).
func pumpApp(client *api.AppConn, kernel net.Conn) {
	var wg sync.WaitGroup
	errc := make(chan error, 2)
	wg.Add(2)
	go func() {
		defer wg.Done()
		_, err := io.Copy(kernel, client)
		if err == nil {
			if cw, ok := kernel.(closeWriter); ok {
				err = cw.CloseWrite()
			}
		}
		errc <- err
	}()
	go func() {
		defer wg.Done()
		_, err := io.Copy(client, kernel)
		if err == nil {
			err = client.CloseWrite()
		}
		errc <- err
	}()
	for range 2 {
		if err := <-errc; err != nil {
			_ = kernel.Close()
			_ = client.CloseWithError(websocket.StatusCode(4502), err.Error())
			break
		}
	}
	wg.Wait()
}

// appToken is what a signed app URL grants: one app of one session, as
// the key that asked for it, until Expires.
type appToken struct {
	Session   string `json:"s"`
	App       string `json:"a"`
	AccessKey string `json:"k"`
	Expires   int64  `json:"e"`
}

// appURLKey is the HMAC key of signed app URLs: derived from the
// cluster CA's key (kept in raft, the same on every server), or a key of
// this process's own when the cluster has no CA (then a URL outlives
// neither a restart nor a change of leader).
func (s *Server) appURLKey() []byte {
	s.apps.keyOnce.Do(func() {
		secret := []byte(nil)
		if sec, err := s.state.Snapshot().ClusterSecrets(); err == nil && sec != nil && sec.CAKey != "" {
			secret = []byte(sec.CAKey)
		} else if s.auto != nil && s.auto.secrets != nil && s.auto.secrets.CAKey != "" {
			secret = []byte(s.auto.secrets.CAKey)
		}
		if secret == nil {
			secret = make([]byte, 32)
			_, _ = rand.Read(secret)
		}
		m := hmac.New(sha256.New, secret)
		m.Write([]byte("corral signed app URLs v1"))
		s.apps.key = m.Sum(nil)
	})
	return s.apps.key
}

func (s *Server) signAppToken(t *appToken) string {
	b, _ := json.Marshal(t)
	m := hmac.New(sha256.New, s.appURLKey())
	m.Write(b)
	enc := base64.RawURLEncoding
	return enc.EncodeToString(b) + "." + enc.EncodeToString(m.Sum(nil))
}

var errBadAppToken = &httpError{code: http.StatusUnauthorized, msg: "invalid or expired app URL: ask for a new one (corral session app -url)"}

// verifyAppToken checks a signed app token's signature and expiry and
// returns the identity of the key that asked for it (which must still be
// valid: revoking the key revokes its URLs).
func (s *Server) verifyAppToken(v string, now time.Time) (*appToken, *identity, error) {
	enc := base64.RawURLEncoding
	p, sig, ok := strings.Cut(v, ".")
	if !ok {
		return nil, nil, errBadAppToken
	}
	b, err1 := enc.DecodeString(p)
	got, err2 := enc.DecodeString(sig)
	if err1 != nil || err2 != nil {
		return nil, nil, errBadAppToken
	}
	m := hmac.New(sha256.New, s.appURLKey())
	m.Write(b)
	if !hmac.Equal(m.Sum(nil), got) {
		return nil, nil, errBadAppToken
	}
	var t appToken
	if json.Unmarshal(b, &t) != nil || now.Unix() >= t.Expires {
		return nil, nil, errBadAppToken
	}
	key, err := s.state.Snapshot().Key(t.AccessKey)
	if err != nil || key.Revoked {
		return nil, nil, errBadAppToken
	}
	return &t, &identity{key: key}, nil
}

func (s *Server) appURL(w http.ResponseWriter, r *http.Request) (any, error) {
	var req api.AppURLRequest
	if r.ContentLength != 0 {
		if err := decodeBody(r, &req); err != nil {
			return nil, err
		}
	}
	ttl := appURLDefaultTTL
	if req.TTL != "" {
		d, err := time.ParseDuration(req.TTL)
		if err != nil || d <= 0 || d > appURLMaxTTL {
			return nil, badRequest("invalid ttl %q: want a duration up to %s, e.g. 15m", req.TTL, appURLMaxTTL)
		}
		ttl = d
	}
	d, _, app, err := s.resolveApp(r.Context(), r.PathValue("ref"), r.PathValue("name"))
	if err != nil {
		return nil, err
	}
	if app.Protocol != structs.ProtocolHTTP {
		return nil, badRequest("app %s is a tcp app: the HTTP proxy serves http apps only; use `corral session app %s %s`", app.Name, d.Session.ID, app.Name)
	}
	exp := time.Now().Add(ttl).Truncate(time.Second).UTC()
	tok := s.signAppToken(&appToken{Session: d.Session.ID, App: app.Name, AccessKey: callerOf(r.Context()).key.AccessKey, Expires: exp.Unix()})
	path := api.AppProxyPath(d.Session.ID, app.Name) + "?" + api.AppTokenParam + "=" + url.QueryEscape(tok)
	scheme := "http"
	if r.TLS != nil || s.cfg.HTTPTLS {
		scheme = "https"
	}
	return &api.AppURLResponse{URL: scheme + "://" + r.Host + path, Path: path, ExpiresAt: exp}, nil
}

// appProxy serves an http app: requests under /v1/sessions/{id}/apps/{name}/
// go to the app's port with the prefix stripped. Callers prove who they
// are with a signed URL (which becomes a cookie scoped to the app's path),
// that cookie, or their token.
func (s *Server) appProxy(w http.ResponseWriter, r *http.Request) {
	if err := s.waitReady(r.Context()); err != nil {
		code, msg := errorStatus(err)
		writeError(w, code, msg)
		return
	}
	ref, name := r.PathValue("ref"), r.PathValue("name")
	now := time.Now()
	var (
		id     *identity
		signed *appToken
		err    error
	)
	if v := r.URL.Query().Get(api.AppTokenParam); v != "" {
		if signed, id, err = s.verifyAppToken(v, now); err == nil && (signed.Session != ref || signed.App != name) {
			err = errBadAppToken
		}
		if err == nil && (r.Method == http.MethodGet || r.Method == http.MethodHead) {
			// Trade the URL for a cookie, and send the browser on without
			// the token (the app never sees it).
			prefix := api.AppProxyPath(signed.Session, signed.App)
			http.SetCookie(w, &http.Cookie{Name: api.AppCookie, Value: v, Path: prefix, Expires: time.Unix(signed.Expires, 0),
				HttpOnly: true, Secure: r.TLS != nil || s.cfg.HTTPTLS, SameSite: http.SameSiteLaxMode})
			q := r.URL.Query()
			q.Del(api.AppTokenParam)
			u := *r.URL
			u.RawQuery = q.Encode()
			http.Redirect(w, r, u.String(), http.StatusSeeOther)
			return
		}
	} else if ck, cerr := r.Cookie(api.AppCookie); cerr == nil {
		if signed, id, err = s.verifyAppToken(ck.Value, now); err == nil && (signed.Session != ref || signed.App != name) {
			err = errBadAppToken
		}
	} else {
		id, err = s.authenticate(r)
	}
	if err != nil {
		code, msg := errorStatus(err)
		writeError(w, code, msg)
		return
	}
	ctx := withIdentity(r.Context(), id)
	d, k, app, err := s.resolveApp(ctx, ref, name)
	if err == nil && app.Protocol != structs.ProtocolHTTP {
		err = badRequest("app %s is a tcp app: the HTTP proxy serves http apps only; use `corral session app %s %s`", app.Name, d.Session.ID, app.Name)
	}
	if err == nil && k.Status != structs.KernelRunning {
		err = &httpError{code: http.StatusConflict, msg: fmt.Sprintf("kernel %s of session %s is %s: its apps answer only while it is RUNNING", k.Hostname, d.Session.ID, k.Status)}
	}
	if err != nil {
		code, msg := errorStatus(err)
		writeError(w, code, msg)
		return
	}
	defer s.touchWhileOpen(d.Session.ID)()
	prefix := strings.TrimSuffix(api.AppProxyPath(ref, name), "/")
	out := r.WithContext(ctx)
	out.URL = new(url.URL)
	*out.URL = *r.URL
	// The kernel's ID as the host: the transport's dial finds the kernel
	// by it, and keeps connections to one app's port in one pool.
	out.URL.Scheme, out.URL.Host = "http", k.ID+":"+strconv.Itoa(app.Port)
	out.URL.Path = "/" + r.PathValue("path")
	out.URL.RawPath = ""
	if rp := r.URL.EscapedPath(); strings.HasPrefix(rp, prefix) {
		out.URL.RawPath = strings.TrimPrefix(rp, prefix)
		if out.URL.RawPath == "" {
			out.URL.RawPath = "/"
		}
	}
	bearer := signed == nil
	s.appProxyHandler().ServeHTTP(w, out.WithContext(context.WithValue(ctx, appProxyKey{}, &appProxyInfo{prefix: prefix, stripAuth: bearer})))
}

type appProxyKey struct{}

// appProxyInfo is what the proxy's Rewrite needs to know of a request.
type appProxyInfo struct {
	prefix    string
	stripAuth bool
}

// appProxyHandler is the reverse proxy of http apps (one per server, with
// one connection pool).
func (s *Server) appProxyHandler() *httputil.ReverseProxy {
	s.apps.proxyOnce.Do(func() {
		transport := &http.Transport{
			DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
				host, portStr, err := net.SplitHostPort(addr)
				if err != nil {
					return nil, err
				}
				port, _ := strconv.Atoi(portStr)
				k, err := s.state.Snapshot().Kernel(host)
				if err != nil {
					return nil, &httpError{code: http.StatusNotFound, msg: fmt.Sprintf("kernel %s is gone", host)}
				}
				return s.dialKernel(ctx, k, port)
			},
			MaxIdleConnsPerHost:   64,
			IdleConnTimeout:       90 * time.Second,
			ResponseHeaderTimeout: 0, // apps may stream (server-sent events, long polls)
		}
		s.apps.proxy = &httputil.ReverseProxy{
			Transport:     transport,
			FlushInterval: -1,
			Rewrite: func(pr *httputil.ProxyRequest) {
				info, _ := pr.In.Context().Value(appProxyKey{}).(*appProxyInfo)
				pr.SetXForwarded()
				if info != nil {
					pr.Out.Header.Set("X-Forwarded-Prefix", info.prefix)
					if info.stripAuth {
						pr.Out.Header.Del("Authorization")
					}
				}
				pr.Out.Host = pr.In.Host
				dropCookie(pr.Out, api.AppCookie)
			},
			ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
				code, msg := http.StatusBadGateway, err.Error()
				var he *httpError
				if errors.As(err, &he) {
					code, msg = he.code, he.msg
				}
				if errors.Is(err, context.Canceled) {
					return // the client went away
				}
				writeError(w, code, "app proxy: "+msg)
			},
		}
	})
	return s.apps.proxy
}

// dropCookie removes one cookie from a request's Cookie header.
func dropCookie(r *http.Request, name string) {
	cs := r.Cookies()
	if !slices.ContainsFunc(cs, func(c *http.Cookie) bool { return c.Name == name }) {
		return
	}
	r.Header.Del("Cookie")
	for _, c := range cs {
		if c.Name != name {
			r.AddCookie(c)
		}
	}
}

package e2e

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/structs"
)

// appWait bounds each wait of the apps e2e; it only keeps a broken
// tunnel from hanging the test.
const appWait = 60 * time.Second

// appImage is busybox plus testdata/appserver (built now) as its command,
// labelled with the apps it serves.
func appImage(t *testing.T) v1.Image {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "appserver")
	build := exec.Command("go", "build", "-o", bin, "./testdata/appserver")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building appserver: %v\n%s", err, b)
	}
	b, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	_ = tw.WriteHeader(&tar.Header{Name: "opt/", Typeflag: tar.TypeDir, Mode: 0o755})
	_ = tw.WriteHeader(&tar.Header{Name: "opt/appserver", Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(b))})
	_, _ = tw.Write(b)
	_ = tw.Close()
	layer, err := tarball.LayerFromReader(bytes.NewReader(buf.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(busyboxImage(t), layer)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cfg = cfg.DeepCopy()
	cfg.Config.Cmd = []string{"/opt/appserver"}
	cfg.Config.Labels = map[string]string{structs.LabelBackendAIServicePort: "web:http:8000,echo:tcp:9000"}
	if img, err = mutate.ConfigFile(img, cfg); err != nil {
		t.Fatal(err)
	}
	return img
}

// appCluster is a server and an agent running sessions of appImage.
type appCluster struct {
	addr  string
	ref   string // the image
	admin *api.Client
	token string
}

func newAppCluster(t *testing.T) *appCluster {
	t.Helper()
	if why := runcUnavailable(); why != "" {
		t.Skip(why)
	}
	ref := startRegistry(t, appImage(t), "corral/apps:1")
	ports := serverPorts{http: freePort(t), rpc: freePort(t), serf: freePort(t)}
	addr := "http://" + ports.http
	regHost := strings.SplitN(ref, "/", 2)[0]
	startServerProc(t, t.TempDir(), ports, "-allow-registry", regHost)
	agentDir := t.TempDir()
	reapKernels(t, agentDir)
	start(t, "agent", append([]string{"agent", "-data-dir", agentDir, "-rpc", freePort(t), "-serf", freePort(t), "-fast-gossip",
		"-allow-registry", regHost}, agentJoin(t, ports)...)...)
	agentAlive(t, addr)
	agentRunsRunc(t, addr)
	tok, _ := apiTokens.Load(addr)
	c, err := api.NewClient(addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetToken(tok.(string))
	return &appCluster{addr: addr, ref: ref, admin: c, token: tok.(string)}
}

// userClient makes a user with a key and returns a client with its token.
func (ac *appCluster) userClient(t *testing.T, name string) (*api.Client, string) {
	t.Helper()
	ctx := context.Background()
	if _, err := ac.admin.CreateUser(ctx, &api.CreateUserRequest{Name: name}); err != nil {
		t.Fatal(err)
	}
	k, err := ac.admin.CreateKey(ctx, &api.CreateKeyRequest{User: name})
	if err != nil {
		t.Fatal(err)
	}
	c, err := api.NewClient(ac.addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetToken(k.Token)
	return c, k.Token
}

// startApps creates an interactive session of appImage with declared
// apps and waits until it runs and its app answers.
func (ac *appCluster) startApps(t *testing.T, c *api.Client, name string) *api.SessionDetail {
	t.Helper()
	ctx := context.Background()
	d, err := c.CreateSession(ctx, &api.CreateSessionRequest{Name: name, Type: structs.SessionTypeInteractive, Driver: "runc", Image: ac.ref,
		Resources:    structs.Slots{structs.SlotCPU: structs.Whole(1) / 2, structs.SlotMem: structs.Whole(64 << 20)},
		ServicePorts: []structs.ServicePort{{Name: "api", Port: 8000}, {Name: "jupyter", Port: 8888, Protocol: "http"}}})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, appWait, "session runs", func() error {
		d, err = c.GetSession(ctx, d.Session.ID)
		if err != nil {
			return err
		}
		if d.Session.Status != structs.SessionRunning {
			return fmt.Errorf("session is %s (%s)", d.Session.Status, d.Session.StatusInfo)
		}
		return nil
	})
	eventually(t, appWait, "the app answers through the proxy", func() error {
		req, _ := http.NewRequest(http.MethodGet, ac.addr+"/v1/sessions/"+d.Session.ID+"/apps/web/ip", nil)
		req.Header.Set("Authorization", "Bearer "+ac.token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			return fmt.Errorf("%s: %s", resp.Status, b)
		}
		return nil
	})
	return d
}

// appGet sends a GET with an optional bearer token and returns the status
// and body.
func appGet(t *testing.T, hc *http.Client, u, token string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// wsEcho sends two messages over a WebSocket at u and checks the echoes.
func wsEcho(t *testing.T, u string, h http.Header, hc *http.Client) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), appWait)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPHeader: h, HTTPClient: hc})
	if err != nil {
		status := ""
		if resp != nil {
			status = resp.Status
		}
		t.Fatalf("WebSocket %s: %v %s", u, err, status)
	}
	defer c.CloseNow()
	for _, m := range []string{"hello", strings.Repeat("x", 100<<10)} {
		if err := c.Write(ctx, websocket.MessageText, []byte(m)); err != nil {
			t.Fatal(err)
		}
		c.SetReadLimit(1 << 20)
		_, got, err := c.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != "echo:"+m {
			t.Fatalf("WebSocket echo of %d bytes: got %d bytes %.40q", len(m), len(got), got)
		}
	}
	_ = c.Close(websocket.StatusNormalClosure, "")
}

// TestApps: a session's apps (declared with the request and by the image's
// labels) reached through `corral session app` (HTTP, a WebSocket, raw
// TCP with a half close, 50 connections at once) and through the HTTP
// proxy with a token and with a signed URL; another user and unknown apps
// are refused.
func TestApps(t *testing.T) {
	ac := newAppCluster(t)
	ctx := context.Background()
	alice, aliceTok := ac.userClient(t, "alice")
	bob, bobTok := ac.userClient(t, "bob")
	d := ac.startApps(t, alice, "nb")
	id := d.Session.ID

	t.Run("listed", func(t *testing.T) {
		apps, err := alice.ListApps(ctx, "nb")
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]api.App{}
		for _, a := range apps.Apps {
			got[a.Name] = a
		}
		want := map[string]structs.ServicePort{
			"api":     {Name: "api", Port: 8000, Protocol: "http"},
			"jupyter": {Name: "jupyter", Port: 8888, Protocol: "http"},
			"web":     {Name: "web", Port: 8000, Protocol: "http", Source: "image"},
			"echo":    {Name: "echo", Port: 9000, Protocol: "tcp", Source: "image"},
		}
		if len(got) != len(want) {
			t.Fatalf("apps %+v, want %+v", apps.Apps, want)
		}
		for n, w := range want {
			if got[n].ServicePort != w {
				t.Errorf("app %s: %+v, want %+v", n, got[n].ServicePort, w)
			}
		}
		if got["echo"].ProxyPath != "" || got["web"].ProxyPath != "/v1/sessions/"+id+"/apps/web/" {
			t.Errorf("proxy paths: echo %q, web %q", got["echo"].ProxyPath, got["web"].ProxyPath)
		}
		st := mustCLI(t, ac.addr, 0, "session", "status", id)
		if !strings.Contains(st.stdout, "Apps") || !strings.Contains(st.stdout, "echo") || !strings.Contains(st.stdout, "jupyter") {
			t.Errorf("session status shows no apps:\n%s", st.stdout)
		}
	})

	t.Run("session app CLI", func(t *testing.T) {
		bind := freePort(t)
		cmd := exec.Command(corralBin, "session", "app", "nb", "web", "-bind", bind)
		cmd.Env = append(os.Environ(), "CORRAL_ADDR="+ac.addr, "CORRAL_TOKEN="+aliceTok, "HOME="+t.TempDir())
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		line, err := bufio.NewReader(out).ReadString('\n')
		if err != nil || !strings.Contains(line, "forwarding "+bind) {
			t.Fatalf("corral session app printed %q, %v; stderr %s", line, err, stderr.String())
		}
		go io.Copy(io.Discard, out)
		code, body := appGet(t, http.DefaultClient, "http://"+bind+"/some/path?q=1", "")
		if code != 200 || !strings.HasPrefix(body, "app method=GET path=/some/path query=q=1") {
			t.Fatalf("through the tunnel: %d %q", code, body)
		}
		wsEcho(t, "ws://"+bind+"/echo", nil, nil)

		// 50 connections at once, each with its own request and answer.
		hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
		var wg sync.WaitGroup
		errs := make(chan error, 50)
		for i := range 50 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				resp, err := hc.Get(fmt.Sprintf("http://%s/conn/%d", bind, i))
				if err != nil {
					errs <- err
					return
				}
				defer resp.Body.Close()
				b, _ := io.ReadAll(resp.Body)
				if want := fmt.Sprintf("path=/conn/%d ", i); !strings.Contains(string(b), want) {
					errs <- fmt.Errorf("connection %d got %q", i, b)
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})

	t.Run("raw tcp with half close", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		sctx, cancel := context.WithCancel(ctx)
		defer cancel()
		go alice.ServeApp(sctx, ln, id, "echo", func(err error) { t.Error(err) })
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(appWait))
		fmt.Fprint(c, "one\ntwo\n")
		_ = c.(*net.TCPConn).CloseWrite()
		b, err := io.ReadAll(c)
		if err != nil || string(b) != "tcp:one\ntcp:two\n" {
			t.Fatalf("echo app: %q, %v", b, err)
		}
		// The Go API's connection as is.
		conn, err := alice.DialApp(ctx, id, "echo")
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprint(conn, "three\n")
		_ = conn.CloseWrite()
		b, err = io.ReadAll(conn)
		conn.Close()
		if err != nil || string(b) != "tcp:three\n" {
			t.Fatalf("DialApp: %q, %v", b, err)
		}
	})

	t.Run("proxy with token", func(t *testing.T) {
		code, body := appGet(t, http.DefaultClient, ac.addr+"/v1/sessions/nb/apps/web/a/b?x=y", aliceTok)
		if code != 200 || !strings.HasPrefix(body, "app method=GET path=/a/b query=x=y prefix=/v1/sessions/nb/apps/web auth=\"\"") {
			t.Fatalf("proxy: %d %q", code, body)
		}
		// The admin sees every session.
		if code, body := appGet(t, http.DefaultClient, ac.addr+"/v1/sessions/"+id+"/apps/api/", ac.token); code != 200 || !strings.Contains(body, "path=/ ") {
			t.Fatalf("proxy as admin: %d %q", code, body)
		}
		// A POST with a body.
		req, _ := http.NewRequest(http.MethodPost, ac.addr+"/v1/sessions/"+id+"/apps/web/form", strings.NewReader("k=v"))
		req.Header.Set("Authorization", "Bearer "+aliceTok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(b), "method=POST path=/form") || !strings.Contains(string(b), "body=k=v") {
			t.Fatalf("POST through the proxy: %d %q", resp.StatusCode, b)
		}
		wsEcho(t, "ws"+strings.TrimPrefix(ac.addr, "http")+"/v1/sessions/"+id+"/apps/web/echo", http.Header{"Authorization": {"Bearer " + aliceTok}}, nil)
		// Without credentials: 401.
		if code, _ := appGet(t, http.DefaultClient, ac.addr+"/v1/sessions/"+id+"/apps/web/", ""); code != 401 {
			t.Errorf("no token: %d, want 401", code)
		}
	})

	t.Run("signed URL", func(t *testing.T) {
		u, err := alice.AppURL(ctx, "nb", "web", 10*time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(u.URL, ac.addr+"/v1/sessions/"+id+"/apps/web/?"+api.AppTokenParam+"=") || time.Until(u.ExpiresAt) > 11*time.Minute {
			t.Fatalf("signed URL %+v", u)
		}
		jar, _ := cookiejar.New(nil)
		browser := &http.Client{Jar: jar}
		code, body := appGet(t, browser, u.URL, "")
		if code != 200 || !strings.Contains(body, "path=/ query= ") || strings.Contains(body, api.AppTokenParam) || strings.Contains(body, api.AppCookie) {
			t.Fatalf("signed URL: %d %q (the app must see neither the token nor the cookie)", code, body)
		}
		// The cookie opens the app's other paths, and only this app's.
		if code, body := appGet(t, browser, ac.addr+"/v1/sessions/"+id+"/apps/web/static/app.js", ""); code != 200 || !strings.Contains(body, "path=/static/app.js") {
			t.Fatalf("asset with the cookie: %d %q", code, body)
		}
		if code, _ := appGet(t, browser, ac.addr+"/v1/sessions/"+id+"/apps/api/", ""); code != 401 {
			t.Errorf("another app with web's cookie: %d, want 401", code)
		}
		wsEcho(t, "ws"+strings.TrimPrefix(ac.addr, "http")+"/v1/sessions/"+id+"/apps/web/echo", nil, browser)
		// A tampered signature is refused.
		bad := u.URL[:len(u.URL)-2] + "AA"
		if strings.HasSuffix(u.URL, "AA") {
			bad = u.URL[:len(u.URL)-2] + "BB"
		}
		if code, body := appGet(t, &http.Client{}, bad, ""); code != 401 || !strings.Contains(body, "invalid or expired app URL") {
			t.Errorf("tampered URL: %d %q", code, body)
		}
		// A URL for a tcp app is refused.
		if _, err := alice.AppURL(ctx, "nb", "echo", 0); !isStatus(err, 400) {
			t.Errorf("signed URL of a tcp app: %v, want 400", err)
		}
	})

	t.Run("another user", func(t *testing.T) {
		if _, err := bob.ListApps(ctx, id); !isStatus(err, 404) {
			t.Errorf("bob lists alice's apps: %v, want 404", err)
		}
		if _, err := bob.DialApp(ctx, id, "web"); !isStatus(err, 404) {
			t.Errorf("bob tunnels to alice's app: %v, want 404", err)
		}
		if code, _ := appGet(t, http.DefaultClient, ac.addr+"/v1/sessions/"+id+"/apps/web/", bobTok); code != 404 {
			t.Errorf("bob through the proxy: %d, want 404", code)
		}
		if _, err := bob.AppURL(ctx, id, "web", 0); !isStatus(err, 404) {
			t.Errorf("bob asks for a signed URL: %v, want 404", err)
		}
	})

	t.Run("unknown app", func(t *testing.T) {
		code, body := appGet(t, http.DefaultClient, ac.addr+"/v1/sessions/"+id+"/apps/nope/", aliceTok)
		var e api.ErrorResponse
		if code != 404 || json.Unmarshal([]byte(body), &e) != nil || !strings.Contains(e.Error, `has no app "nope"`) || !strings.Contains(e.Error, "web") {
			t.Errorf("unknown app: %d %q", code, body)
		}
		if _, err := alice.DialApp(ctx, id, "nope"); !isStatus(err, 404) {
			t.Errorf("tunnel to an unknown app: %v, want 404", err)
		}
		r := mustCLI(t, ac.addr, 1, "session", "app", id, "nope")
		if !strings.Contains(r.stderr, `no app "nope"`) {
			t.Errorf("CLI: %q", r.stderr)
		}
		// A declared app nobody listens on: 502 with the reason.
		code, body = appGet(t, http.DefaultClient, ac.addr+"/v1/sessions/"+id+"/apps/jupyter/", aliceTok)
		if code != 502 || !strings.Contains(body, "8888") {
			t.Errorf("app without a listener: %d %q", code, body)
		}
	})

	t.Run("create validation", func(t *testing.T) {
		for _, c := range []struct {
			ports []structs.ServicePort
			want  string
		}{
			{[]structs.ServicePort{{Name: "a", Port: 80}, {Name: "a", Port: 81}}, "declared twice"},
			{[]structs.ServicePort{{Name: "a", Port: 70000}}, "out of range"},
			{[]structs.ServicePort{{Name: "Bad Name", Port: 80}}, "invalid app name"},
		} {
			_, err := alice.CreateSession(ctx, &api.CreateSessionRequest{Type: structs.SessionTypeInteractive, Driver: "runc", Image: ac.ref, ServicePorts: c.ports})
			if !isStatus(err, 400) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("create with %+v: %v, want 400 %q", c.ports, err, c.want)
			}
		}
		r := mustCLI(t, ac.addr, 2, "session", "create", "-port", "web:0", "--", "true")
		if !strings.Contains(r.stderr, "out of range") {
			t.Errorf("CLI -port web:0: %q", r.stderr)
		}
	})
}

// isStatus reports whether err is an API error with HTTP status code.
func isStatus(err error, code int) bool {
	var e *api.Error
	return errors.As(err, &e) && e.StatusCode == code
}

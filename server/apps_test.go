package server_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/corral-dev/corral/agent"
	"github.com/corral-dev/corral/api"
	execdriver "github.com/corral-dev/corral/drivers/exec"
	"github.com/corral-dev/corral/rpc"
	"github.com/corral-dev/corral/rpc/tlsutil"
	"github.com/corral-dev/corral/rpc/tlsutil/tlstest"
	"github.com/corral-dev/corral/server"
	"github.com/corral-dev/corral/structs"
)

// TestAppsThroughFollower: an app of an exec kernel (busybox httpd on the
// host's loopback) is reached through a follower server, which forwards
// to the leader: the HTTP proxy with a token and with a signed URL, and
// the TCP tunnel (a WebSocket through the follower's forwarding).
func TestAppsThroughFollower(t *testing.T) {
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("needs /bin/busybox (Debian busybox-static) for an HTTP server in a kernel")
	}
	srvs, token := startQuorumCfg(t, 3, func(*server.Config) {})
	follower := followerOf(srvs)
	a := startAgent(t, t.TempDir(), follower.SerfAddr(), structs.Slots{structs.SlotCPU: structs.Whole(2)})
	t.Cleanup(func() { a.StopKernels(5 * time.Second); a.Shutdown() })
	checkAppsThroughFollower(t, follower, a, apiClient(t, follower.HTTPAddr(), token), token, "http://"+follower.HTTPAddr(), http.DefaultClient)
}

// TestAppsThroughTLSFollower is TestAppsThroughFollower over https, with
// the operators' own PKI (no cluster CA key: signed URLs use the
// leader's own key) and Secure cookies.
func TestAppsThroughTLSFollower(t *testing.T) {
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("needs /bin/busybox (Debian busybox-static) for an HTTP server in a kernel")
	}
	p := tlstest.New(t)
	const joinToken = "apps-quorum-token"
	srvs, admin := startQuorumCfg(t, 3, func(c *server.Config) {
		c.Security = &rpc.Security{TLS: p.Node(t, tlsutil.RoleServer, ""), JoinToken: joinToken}
		c.HTTPTLS = true
	})
	follower := followerOf(srvs)
	a := startAgentCfg(t, t.TempDir(), follower.SerfAddr(), nil, execdriver.New(testLogger(t)), func(c *agent.Config) {
		c.Name = "apps-tls-agent"
		c.Security = &rpc.Security{TLS: p.Node(t, tlsutil.RoleAgent, ""), JoinToken: joinToken}
	})
	t.Cleanup(func() { a.StopKernels(5 * time.Second); a.Shutdown() })
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(p.CAPEM)
	tlsConf := &tls.Config{RootCAs: pool}
	fc, err := api.NewClient("https://" + follower.HTTPAddr())
	if err != nil {
		t.Fatal(err)
	}
	fc.SetToken(admin)
	fc.SetTLS(tlsConf)
	checkAppsThroughFollower(t, follower, a, fc, admin, "https://"+follower.HTTPAddr(), &http.Client{Transport: &http.Transport{TLSClientConfig: tlsConf}})
}

// followerOf returns a server of srvs that is not the leader.
func followerOf(srvs []*server.Server) *server.Server {
	for _, s := range srvs {
		if !s.IsLeader() {
			return s
		}
	}
	return nil
}

// checkAppsThroughFollower runs busybox httpd in an exec kernel on agent
// a and reaches it through follower: the proxy with a token, a signed URL
// and its cookie, and the TCP tunnel. hc speaks to base.
func checkAppsThroughFollower(t *testing.T, follower *server.Server, a *agent.Agent, fc *api.Client, token, base string, hc *http.Client) {
	t.Helper()
	c := &cluster{client: fc}
	c.waitAgentAlive(t, a.ID())

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	d := create(t, c, &api.CreateSessionRequest{Type: structs.SessionTypeInteractive, Resources: small,
		Command:      []string{"sh", "-c", fmt.Sprintf("mkdir -p www/sub && echo app-root > www/index.html && echo app-sub > www/sub/index.html && exec /bin/busybox httpd -f -p 127.0.0.1:%d -h www", port)},
		ServicePorts: []structs.ServicePort{{Name: "web", Port: port}}})
	c.waitFor(t, d.Session.ID, func(d *api.SessionDetail) bool { return d.Session.Status == structs.SessionRunning })
	get := func(hc *http.Client, u, tok string) (int, string) {
		req, _ := http.NewRequest(http.MethodGet, u, nil)
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := hc.Do(req)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, body := get(hc, base+"/v1/sessions/"+d.Session.ID+"/apps/web/", token)
		if code == 200 && body == "app-root\n" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the proxy through a follower: %d %q", code, body)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if code, body := get(hc, base+"/v1/sessions/"+d.Session.ID+"/apps/web/sub/", token); code != 200 || body != "app-sub\n" {
		t.Fatalf("sub path: %d %q", code, body)
	}

	u, err := fc.AppURL(context.Background(), d.Session.ID, "web", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	jar, _ := cookiejar.New(nil)
	browser := &http.Client{Jar: jar, Transport: hc.Transport}
	if !strings.HasPrefix(u.URL, base+"/") {
		t.Fatalf("signed URL %s is not on %s", u.URL, base)
	}
	if code, body := get(browser, u.URL, ""); code != 200 || body != "app-root\n" {
		t.Fatalf("signed URL through a follower: %d %q", code, body)
	}
	if code, body := get(browser, base+"/v1/sessions/"+d.Session.ID+"/apps/web/sub/", ""); code != 200 || body != "app-sub\n" {
		t.Fatalf("cookie through a follower: %d %q", code, body)
	}

	conn, err := fc.DialApp(context.Background(), d.Session.ID, "web")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprint(conn, "GET /sub/ HTTP/1.0\r\n\r\n")
	_ = conn.CloseWrite()
	b, err := io.ReadAll(conn)
	if err != nil || !strings.Contains(string(b), " 200 OK") || !strings.HasSuffix(string(b), "app-sub\n") {
		t.Fatalf("tunnel through a follower: %q, %v", b, err)
	}
}

package server_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/corral-dev/corral/api"
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
	var follower *server.Server
	for _, s := range srvs {
		if !s.IsLeader() {
			follower = s
		}
	}
	a := startAgent(t, t.TempDir(), follower.SerfAddr(), structs.Slots{structs.SlotCPU: structs.Whole(2)})
	t.Cleanup(func() { a.StopKernels(5 * time.Second); a.Shutdown() })
	fc := apiClient(t, follower.HTTPAddr(), token)
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
	base := "http://" + follower.HTTPAddr()
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
		code, body := get(http.DefaultClient, base+"/v1/sessions/"+d.Session.ID+"/apps/web/", token)
		if code == 200 && body == "app-root\n" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the proxy through a follower: %d %q", code, body)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if code, body := get(http.DefaultClient, base+"/v1/sessions/"+d.Session.ID+"/apps/web/sub/", token); code != 200 || body != "app-sub\n" {
		t.Fatalf("sub path: %d %q", code, body)
	}

	u, err := fc.AppURL(context.Background(), d.Session.ID, "web", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	jar, _ := cookiejar.New(nil)
	browser := &http.Client{Jar: jar}
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

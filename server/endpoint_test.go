package server_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/server"
	"github.com/corral-dev/corral/structs"
)

// waitUntil retries f until it returns nil or the deadline passes.
func waitUntil(t *testing.T, within time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(within)
	var err error
	for time.Now().Before(deadline) {
		if err = f(); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s: %v", what, err)
}

// TestEndpointRoutedByFollower: an endpoint of one exec replica (busybox
// httpd on loopback) on a three-server cluster is reached through a
// follower's router, which serves it from its own state; the follower's
// request counts reach the leader's autoscaler; bad input is a 4xx; a
// delete ends the replica.
func TestEndpointRoutedByFollower(t *testing.T) {
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("needs /bin/busybox (Debian busybox-static) for the replica's httpd")
	}
	srvs, token := startQuorum(t, 3)
	var leader, follower *server.Server
	for _, s := range srvs {
		if s.IsLeader() {
			leader = s
		} else {
			follower = s
		}
	}
	a := startAgent(t, t.TempDir(), leader.SerfAddr(), nil)
	t.Cleanup(func() { a.StopKernels(5 * time.Second); a.Shutdown() })
	lc := apiClient(t, leader.HTTPAddr(), token)
	fc := apiClient(t, follower.HTTPAddr(), token)
	ctx := context.Background()

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()

	// Bad input: 4xx with what was wrong.
	var apiErr *api.Error
	for _, bad := range []struct {
		req  api.CreateEndpointRequest
		want string
	}{
		{api.CreateEndpointRequest{Name: "ep", Driver: "exec", Command: []string{"true"}}, "port 0"},
		{api.CreateEndpointRequest{Name: "bad name!", Driver: "exec", Command: []string{"true"}, Port: 80}, "invalid endpoint name"},
		{api.CreateEndpointRequest{Name: "ep", Driver: "exec", Command: []string{"true"}, Port: 80, TargetRPS: 5, TargetConcurrency: 2}, "not both"},
		{api.CreateEndpointRequest{Name: "ep", Driver: "nope", Command: []string{"true"}, Port: 80}, "unknown driver"},
		{api.CreateEndpointRequest{Name: "ep", Driver: "exec", Command: []string{"true"}, Port: 80, HealthPath: "healthz"}, "must start with '/'"},
	} {
		_, err := lc.CreateEndpoint(ctx, &bad.req)
		if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusBadRequest || !strings.Contains(apiErr.Message, bad.want) {
			t.Errorf("create %+v: %v, want 400 with %q", bad.req, err, bad.want)
		}
	}

	d, err := fc.CreateEndpoint(ctx, &api.CreateEndpointRequest{
		Name: "ep", Driver: "exec", Port: port, HealthPath: "/healthz", Resources: small,
		// The replica writes its files in its own working directory (an
		// exec kernel has a private /tmp) and serves them.
		Command: []string{"/bin/busybox", "sh", "-c", fmt.Sprintf("mkdir -p www && echo ok > www/healthz && echo hello from the replica > www/hello && "+
			"exec /bin/busybox httpd -f -p 127.0.0.1:%d -h www", port)},
		TargetRPS: 1000, MinReplicas: 1, MaxReplicas: 1,
	})
	if err != nil {
		t.Fatal(err)
	}
	if d.Token == "" || d.Endpoint.TokenHash != "" || d.Endpoint.Replicas != 1 {
		t.Fatalf("create answer: token %q, %+v", d.Token, d.Endpoint)
	}
	if _, err := lc.CreateEndpoint(ctx, &api.CreateEndpointRequest{Name: "ep", Driver: "exec", Command: []string{"true"}, Port: 80}); !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusConflict {
		t.Fatalf("second create of ep: %v", err)
	}

	get := func(base, path, tok string) (int, string, error) {
		req, _ := http.NewRequest(http.MethodGet, "http://"+base+"/v1/endpoints/"+path, nil)
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), nil
	}
	waitUntil(t, 60*time.Second, "the follower routes to the replica", func() error {
		code, body, err := get(follower.HTTPAddr(), "ep/hello", d.Token)
		if err != nil {
			return err
		}
		if code != http.StatusOK || body != "hello from the replica\n" {
			st, _ := fc.GetEndpoint(ctx, "ep")
			logs := ""
			if ss, _ := lc.ListSessions(ctx, ""); len(ss) > 0 {
				if l, err := lc.SessionLogs(ctx, ss[len(ss)-1].ID, ""); err == nil {
					logs = l.Stdout + l.Stderr
				}
			}
			return fmt.Errorf("%d %q (replicas %+v, events %+v, last logs %q)", code, body, st.Replicas, st.Endpoint.Events, logs)
		}
		return nil
	})
	if code, _, _ := get(follower.HTTPAddr(), "ep/hello", ""); code != http.StatusUnauthorized {
		t.Errorf("without a token: %d, want 401", code)
	}
	if code, _, _ := get(follower.HTTPAddr(), "ep/hello", "ep_wrong"); code != http.StatusUnauthorized {
		t.Errorf("with a wrong token: %d, want 401", code)
	}
	if code, _, _ := get(follower.HTTPAddr(), "nope/hello", d.Token); code != http.StatusNotFound {
		t.Errorf("unknown endpoint: %d, want 404", code)
	}

	// Requests to the follower only: the leader's autoscaler sees them.
	for i := 0; i < 50; i++ {
		if code, body, err := get(follower.HTTPAddr(), "ep/hello", d.Token); err != nil || code != http.StatusOK {
			t.Fatalf("request %d through the follower: %d %q %v", i, code, body, err)
		}
	}
	waitUntil(t, 30*time.Second, "the leader sees the follower's requests", func() error {
		d, err := lc.GetEndpoint(ctx, "ep")
		if err != nil {
			return err
		}
		if d.RPS <= 0 {
			return fmt.Errorf("rate %.2f", d.RPS)
		}
		if len(d.Replicas) != 1 || d.Replicas[0].Health != "healthy" {
			return fmt.Errorf("replicas %+v", d.Replicas)
		}
		return nil
	})

	list, err := fc.ListEndpoints(ctx)
	if err != nil || len(list) != 1 || list[0].Endpoint.Name != "ep" {
		t.Fatalf("list: %v %v", list, err)
	}
	if err := fc.DeleteEndpoint(ctx, "ep"); err != nil {
		t.Fatal(err)
	}
	if _, err := lc.GetEndpoint(ctx, "ep"); !api.IsNotFound(err) {
		t.Fatalf("get after delete: %v", err)
	}
	waitUntil(t, 30*time.Second, "the replica ends", func() error {
		ss, err := lc.ListSessions(ctx, "")
		if err != nil {
			return err
		}
		for _, s := range ss {
			if s.Endpoint == "ep" && s.Type == structs.SessionTypeInference && !s.Status.Terminal() {
				return fmt.Errorf("replica %s is %s", s.ID, s.Status)
			}
		}
		return nil
	})
}

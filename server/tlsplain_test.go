package server_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/rpc"
	"github.com/corral-dev/corral/rpc/tlsutil"
	"github.com/corral-dev/corral/rpc/tlsutil/tlstest"
	"github.com/corral-dev/corral/server"
)

// TestPlainHTTPOnHTTPSServer: plain http against a server with https
// gets a 400 that says to use https (not Go's bare "Bad Request"), through
// curl-like clients and the CLI's client alike; https still works.
func TestPlainHTTPOnHTTPSServer(t *testing.T) {
	p := tlstest.New(t)
	dir := t.TempDir()
	srv := startServerCfg(t, dir, func(c *server.Config) {
		c.Security = &rpc.Security{TLS: p.Node(t, tlsutil.RoleServer, ""), JoinToken: "plain-token"}
		c.HTTPTLS = true
	})
	t.Cleanup(srv.Shutdown)
	addr := srv.HTTPAddr()

	resp, err := http.Get("http://" + addr + "/v1/agents")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var e api.ErrorResponse
	if err := json.NewDecoder(resp.Body).Decode(&e); err != nil || resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("plain http: %s, body error %v", resp.Status, err)
	}
	if want := "this server speaks https: use https://" + addr + "/v1/agents"; !strings.Contains(e.Error, want) {
		t.Fatalf("plain http: error %q, want it to contain %q", e.Error, want)
	}

	plain, _ := api.NewClient("http://" + addr)
	plain.SetToken(mustToken(dir))
	_, err = plain.ListAgents(context.Background())
	var apiErr *api.Error
	if !errors.As(err, &apiErr) || !strings.Contains(apiErr.Message, "this server speaks https") {
		t.Fatalf("CLI client over plain http: %v", err)
	}

	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(p.CAPEM)
	hc, _ := api.NewClient("https://" + addr)
	hc.SetToken(mustToken(dir))
	hc.SetTLS(&tls.Config{RootCAs: pool})
	if _, err := hc.ListAgents(context.Background()); err != nil {
		t.Fatalf("https: %v", err)
	}
}

package server_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	grpcstatus "google.golang.org/grpc/status"

	"github.com/corral-dev/corral/agent"
	"github.com/corral-dev/corral/api"
	execdriver "github.com/corral-dev/corral/drivers/exec"
	"github.com/corral-dev/corral/plugins/drivers"
	"github.com/corral-dev/corral/rpc"
	"github.com/corral-dev/corral/rpc/tlsutil"
	"github.com/corral-dev/corral/server"
	"github.com/corral-dev/corral/structs"
)

// TestAutoTLSJoin: a single server secures itself with no configuration;
// an agent joins with the token alone, keeps its key and certificate in
// its data dir (0600) and reuses them after a restart; the secrets are in
// raft and survive a server restart, token included.
func TestAutoTLSJoin(t *testing.T) {
	dir := t.TempDir()
	srv := startServer(t, dir)
	tok := srv.JoinToken()
	hash, secret, err := agent.ParseJoinToken(tok)
	if err != nil || len(secret) < 16 {
		t.Fatalf("join token %q: %v", tok, err)
	}
	sec, err := srv.State().Snapshot().ClusterSecrets()
	if err != nil || sec == nil || sec.JoinSecret != secret || sec.GossipKey == "" {
		t.Fatalf("cluster secrets in raft: %+v %v", sec, err)
	}
	ca, err := tlsutil.ParseCert([]byte(sec.CACert))
	if err != nil || tlsutil.Hash(ca) != hash {
		t.Fatalf("the token's hash is not the CA's: %v", err)
	}
	adir := t.TempDir()
	a := startAgent(t, adir, srv.SerfAddr(), nil)
	c := &cluster{srv: srv, agent: a, client: client(t, srv, dir)}
	c.waitAgentAlive(t, a.ID())
	if got, err := c.client.JoinToken(context.Background()); err != nil || got != tok {
		t.Fatalf("GET /v1/system/join-token: %q %v", got, err)
	}
	for _, f := range []string{"ca.pem", "agent.pem", "agent-key.pem", "gossip.key"} {
		st, err := os.Stat(filepath.Join(adir, "tls", f))
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v", f, st, err)
		}
	}
	leaf := a.Security().TLS.Leaf()
	if tlsutil.IDOf(leaf) != a.ID() || tlsutil.NodeOf(leaf) == "" {
		t.Fatalf("certificate URIs %v: want the agent's ID and name", leaf.URIs)
	}
	serial := a.CertificateSerial()
	a.Shutdown()

	// A restart with the same data dir reuses the certificate.
	a2 := startAgentCfg(t, adir, srv.SerfAddr(), nil, execdriver.New(testLogger(t)), func(cfg *agent.Config) { cfg.Name = tlsutil.NodeOf(leaf) })
	defer a2.Shutdown()
	if a2.CertificateSerial() != serial {
		t.Fatalf("restarted agent got a new certificate %s, want %s", a2.CertificateSerial(), serial)
	}

	// A restarted server keeps its cluster: same token.
	srv.Shutdown()
	srv2 := startServer(t, dir)
	defer srv2.Shutdown()
	if srv2.JoinToken() != tok {
		t.Fatalf("token after a restart %q, want %q", srv2.JoinToken(), tok)
	}
}

// TestJoinTokenRefusals: a token of another CA is refused before the
// secret leaves the node; a wrong secret is refused by the server.
func TestJoinTokenRefusals(t *testing.T) {
	srv := startServer(t, t.TempDir())
	defer srv.Shutdown()
	_, secret, _ := agent.ParseJoinToken(srv.JoinToken())
	for _, tc := range []struct{ token, want string }{
		{strings.Repeat("ab", 32) + ":" + secret, "does not match the join token"},
		{strings.SplitN(srv.JoinToken(), ":", 2)[0] + ":nottheSecret", "wrong join token"},
	} {
		_, err := agent.New(agent.Config{Name: "intruder", DataDir: t.TempDir(), RPCAddr: "127.0.0.1:0", SerfAddr: "127.0.0.1:0",
			Join: []string{srv.SerfAddr()}, Drivers: []drivers.Driver{execdriver.New(testLogger(t))}, JoinToken: tc.token,
			EnrollAddr: srv.RPCAddr(), Logger: testLogger(t), LogOutput: io.Discard})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Fatalf("token %q: agent: %v, want %q", tc.token, err, tc.want)
		}
		if err := tryJoin(t, srv, tc.token); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Fatalf("token %q: %v, want %q", tc.token, err, tc.want)
		}
	}
}

// tryJoin asks srv for a certificate with a token, as an agent does.
func tryJoin(t *testing.T, srv *server.Server, token string) error {
	hash, secret, err := agent.ParseJoinToken(token)
	if err != nil {
		return err
	}
	_, err = signAgent(t, srv, hash, &rpc.SignAgentRequest{AgentID: "intruder-id", Name: "intruder", Secret: secret})
	return err
}

// signAgent sends a SignAgent call over TLS pinned to hash, with a CSR of
// a new key.
func signAgent(t *testing.T, srv *server.Server, hash string, req *rpc.SignAgentRequest) (*rpc.SignAgentResponse, error) {
	t.Helper()
	key, err := tlsutil.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	if req.CSR, err = tlsutil.NewCSR(key); err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient(srv.RPCAddr(), grpc.WithTransportCredentials(credentials.NewTLS(tlsutil.PinnedConfig(hash))))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := rpc.NewServerClient(cc).SignAgent(ctx, req)
	if err == nil {
		keyPEM, _ := tlsutil.EncodeKey(key)
		resp.Cert = append(resp.Cert, keyPEM...) // the caller's pair
	}
	return resp, err
}

// rawCall invokes a method with a JSON body, as any client could.
func rawCall(cc *grpc.ClientConn, method string, stream bool) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	body := json.RawMessage(`{"agent_id":"x","protocol_version":2}`)
	var out json.RawMessage
	if !stream {
		return cc.Invoke(ctx, method, &body, &out, rpc.CallOptions()...)
	}
	cs, err := cc.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, method, rpc.CallOptions()...)
	if err != nil {
		return err
	}
	if err := cs.SendMsg(&body); err != nil {
		return err
	}
	_ = cs.CloseSend()
	return cs.RecvMsg(&out)
}

// TestNoUnauthenticatedPort: neither the server's nor the agent's RPC
// port answers a client without a certificate of the cluster CA: plain
// h2c fails, TLS without a client certificate is refused (at the
// handshake on the agent, at the call on the server, where only
// SignAgent is open), and an agent certificate cannot call another
// agent.
func TestNoUnauthenticatedPort(t *testing.T) {
	c := startCluster(t, nil)
	watch, exec := "/corral.v1.Server/WatchKernels", "/corral.v1.Agent/Exec"
	noCert := credentials.NewTLS(&tls.Config{InsecureSkipVerify: true})
	for _, tc := range []struct {
		name, addr, method string
		creds              grpc.DialOption
		want               []codes.Code
	}{
		{"h2c to server", c.srv.RPCAddr(), watch, grpc.WithTransportCredentials(insecure.NewCredentials()), []codes.Code{codes.Unavailable}},
		{"h2c to agent", c.agent.RPCAddr(), exec, grpc.WithTransportCredentials(insecure.NewCredentials()), []codes.Code{codes.Unavailable}},
		{"TLS without cert to server", c.srv.RPCAddr(), watch, grpc.WithTransportCredentials(noCert), []codes.Code{codes.Unauthenticated}},
		{"TLS without cert to server exec", c.srv.RPCAddr(), exec, grpc.WithTransportCredentials(noCert), []codes.Code{codes.Unauthenticated, codes.Unimplemented}},
		{"TLS without cert to agent", c.agent.RPCAddr(), exec, grpc.WithTransportCredentials(noCert), []codes.Code{codes.Unavailable}},
		{"agent cert to agent", c.agent.RPCAddr(), exec, c.agent.Security().DialOptions(tlsutil.RoleAgent)[0], []codes.Code{codes.Unavailable, codes.PermissionDenied}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cc, err := grpc.NewClient(tc.addr, tc.creds)
			if err != nil {
				t.Fatal(err)
			}
			defer cc.Close()
			err = rawCall(cc, tc.method, true)
			if err == nil {
				t.Fatalf("%s answered", tc.method)
			}
			ok := false
			for _, w := range tc.want {
				ok = ok || grpcstatus.Code(err) == w
			}
			if !ok {
				t.Fatalf("%s: %v, want one of %v", tc.method, err, tc.want)
			}
		})
	}
	// The agent's own certificate does reach the server.
	cc, err := grpc.NewClient(c.srv.RPCAddr(), c.agent.Security().DialOptions(tlsutil.RoleServer)...)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	if err := rawCall(cc, "/corral.v1.Server/UpdateKernels", false); grpcstatus.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "cannot act as agent x") {
		t.Fatalf("another agent's ID with a certificate: %v", err)
	}
}

// TestPhantomAgentRefused: a node with a valid certificate and the token
// cannot register an agent that is not in gossip, nor claim capacity its
// gossip tags do not advertise, nor register another ID with its own
// certificate.
func TestPhantomAgentRefused(t *testing.T) {
	c := startCluster(t, structs.Slots{structs.SlotCPU: structs.Whole(2)})
	ctx := context.Background()
	phantom := &structs.Agent{ID: "phantom-1", Name: "phantom", ResourceGroup: "default", RPCAddr: "127.0.0.1:1",
		Drivers: []string{"exec"}, Capacity: structs.Slots{structs.SlotCPU: structs.Whole(4096)}}

	// 1. The real agent's certificate, another ID.
	cc, err := grpc.NewClient(c.srv.RPCAddr(), c.agent.Security().DialOptions(tlsutil.RoleServer)...)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	_, err = rpc.NewServerClient(cc).Register(ctx, &rpc.RegisterRequest{Agent: phantom, ProtocolVersion: rpc.ProtocolVersion})
	if grpcstatus.Code(err) != codes.PermissionDenied {
		t.Fatalf("another ID with the agent's certificate: %v", err)
	}
	// 2. The real agent's own ID, with more capacity than it gossips.
	self, err := c.client.GetAgent(ctx, c.agent.ID())
	if err != nil {
		t.Fatal(err)
	}
	self.Capacity = structs.Slots{structs.SlotCPU: structs.Whole(4096)}
	_, err = rpc.NewServerClient(cc).Register(ctx, &rpc.RegisterRequest{Agent: self, ProtocolVersion: rpc.ProtocolVersion})
	if grpcstatus.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "gossips") {
		t.Fatalf("inflated capacity: %v", err)
	}
	// 3. A certificate for the phantom's own ID, got with the token: not
	// a gossip member.
	hash, secret, _ := agent.ParseJoinToken(c.srv.JoinToken())
	resp, err := signAgent(t, c.srv, hash, &rpc.SignAgentRequest{AgentID: phantom.ID, Name: phantom.Name, Secret: secret})
	if err != nil {
		t.Fatal(err)
	}
	conf, err := tlsutil.New(resp.CACert, resp.Cert, resp.Cert)
	if err != nil {
		t.Fatal(err)
	}
	pc, err := grpc.NewClient(c.srv.RPCAddr(), (&rpc.Security{TLS: conf}).DialOptions(tlsutil.RoleServer)...)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	_, err = rpc.NewServerClient(pc).Register(ctx, &rpc.RegisterRequest{Agent: phantom, ProtocolVersion: rpc.ProtocolVersion})
	if err == nil || !strings.Contains(err.Error(), "not a live member of the gossip pool") {
		t.Fatalf("phantom agent: %v", err)
	}
	if _, err := c.client.GetAgent(ctx, phantom.ID); err == nil {
		t.Fatal("the phantom agent is in the state")
	}
}

// TestRevokeNode: a revoked agent is cut off at once: its open kernel
// stream ends, its calls and new connections are refused.
func TestRevokeNode(t *testing.T) {
	c := startCluster(t, nil)
	ctx := context.Background()
	cc, err := grpc.NewClient(c.srv.RPCAddr(), c.agent.Security().DialOptions(tlsutil.RoleServer)...)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	sc := rpc.NewServerClient(cc)
	stream, err := sc.WatchKernels(ctx, &rpc.WatchRequest{AgentID: c.agent.ID(), ProtocolVersion: rpc.ProtocolVersion})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil { // the full list
		t.Fatal(err)
	}
	a, err := c.client.GetAgent(ctx, c.agent.ID())
	if err != nil {
		t.Fatal(err)
	}
	res, err := c.client.RevokeNode(ctx, a.Name)
	if err != nil || len(res.Serials) != 1 || res.Serials[0] != c.agent.CertificateSerial() {
		t.Fatalf("revoke: %+v %v (serial %s)", res, err, c.agent.CertificateSerial())
	}
	start := time.Now()
	if _, err := stream.Recv(); grpcstatus.Code(err) != codes.PermissionDenied || time.Since(start) > 2*time.Second {
		t.Fatalf("open stream after the revocation: %v after %s", err, time.Since(start))
	}
	if _, err := sc.UpdateKernels(ctx, &structs.KernelUpdateRequest{AgentID: c.agent.ID()}); grpcstatus.Code(err) != codes.PermissionDenied {
		t.Fatalf("call on an open connection: %v", err)
	}
	fresh, err := grpc.NewClient(c.srv.RPCAddr(), c.agent.Security().DialOptions(tlsutil.RoleServer)...)
	if err != nil {
		t.Fatal(err)
	}
	defer fresh.Close()
	if _, err := rpc.NewServerClient(fresh).UpdateKernels(ctx, &structs.KernelUpdateRequest{AgentID: c.agent.ID()}); err == nil || !strings.Contains(err.Error(), "revoked") {
		t.Fatalf("new connection: %v", err)
	}
	if _, err := c.client.RevokeNode(ctx, a.Name); err == nil {
		t.Fatal("revoking twice found certificates again")
	}
}

// TestAgentRenewsCertificate: with short certificates the agent renews at
// two thirds of the lifetime and stays connected.
func TestAgentRenewsCertificate(t *testing.T) {
	dir := t.TempDir()
	srv := startServerCfg(t, dir, func(c *server.Config) { c.AgentCertValidity = 3 * time.Second })
	defer srv.Shutdown()
	a := startAgent(t, t.TempDir(), srv.SerfAddr(), nil)
	defer a.Shutdown()
	c := &cluster{srv: srv, agent: a, client: client(t, srv, dir)}
	c.waitAgentAlive(t, a.ID())
	first := a.CertificateSerial()
	deadline := time.Now().Add(10 * time.Second)
	for a.CertificateSerial() == first && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if a.CertificateSerial() == first {
		t.Fatal("the agent did not renew its certificate")
	}
	certs, err := srv.State().Snapshot().IssuedCerts(a.ID())
	if err != nil || len(certs) < 2 {
		t.Fatalf("issued certificates: %d %v", len(certs), err)
	}
	// Past the first certificate's end, the agent still works.
	time.Sleep(3 * time.Second)
	d := create(t, c, &api.CreateSessionRequest{Type: "batch", Command: []string{"true"}, Resources: small})
	c.waitFor(t, d.Session.ID, status(structs.SessionTerminated))
}

// TestJoinRoundTrip measures what an agent's join costs: TLS pinned to
// the CA, a CSR signed and recorded through raft (the figure in the
// README).
func TestJoinRoundTrip(t *testing.T) {
	srv := startServer(t, t.TempDir())
	defer srv.Shutdown()
	hash, secret, _ := agent.ParseJoinToken(srv.JoinToken())
	const n = 20
	start := time.Now()
	for i := range n {
		if _, err := signAgent(t, srv, hash, &rpc.SignAgentRequest{AgentID: "bench-" + string(rune('a'+i)), Name: "bench", Secret: secret}); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("join with a token (key, CSR, pinned TLS, sign, raft record): %s per agent over %d joins", time.Since(start)/n, n)
}

// TestAutoTLSQuorum: the first server of three creates the cluster's
// secrets, the others join with the servers' token (raft and gossip then
// run over mutual TLS and encrypted); an agent joins a follower with the
// agents' token; the agents' token does not let a server in.
func TestAutoTLSQuorum(t *testing.T) {
	srvs, _ := startQuorum(t, 3)
	for _, s := range srvs {
		if !s.AutoTLS() || s.JoinToken() != srvs[0].JoinToken() || s.ServerJoinToken() != srvs[0].ServerJoinToken() {
			t.Fatalf("server %s: auto %v, token %q", s.ID(), s.AutoTLS(), s.JoinToken())
		}
	}
	if srvs[0].JoinToken() == srvs[0].ServerJoinToken() {
		t.Fatal("agents and servers share a token")
	}
	follower := srvs[1]
	if follower.IsLeader() {
		follower = srvs[2]
	}
	a := startAgent(t, t.TempDir(), follower.SerfAddr(), nil)
	t.Cleanup(a.Shutdown)
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		if ag, err := follower.State().Snapshot().Agent(nil, a.ID()); err == nil && ag.Status == structs.AgentAlive {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if ag, err := follower.State().Snapshot().Agent(nil, a.ID()); err != nil || ag.Status != structs.AgentAlive {
		t.Fatalf("agent through a follower: %+v %v", ag, err)
	}
	_, err := server.New(server.Config{NodeName: "intruder", DataDir: t.TempDir(), HTTPAddr: "127.0.0.1:0", RPCAddr: "127.0.0.1:0",
		SerfAddr: "127.0.0.1:0", BootstrapExpect: 3, Join: []string{srvs[0].SerfAddr()}, Logger: testLogger(t), LogOutput: io.Discard,
		ServerJoinToken: srvs[0].JoinToken(), EnrollAddr: srvs[0].RPCAddr()})
	if err == nil || !strings.Contains(err.Error(), "wrong server join token") {
		t.Fatalf("a server with the agents' token: %v", err)
	}
}

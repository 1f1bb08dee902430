package server_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/serf/serf"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	grpcstatus "google.golang.org/grpc/status"

	"github.com/corral-dev/corral/agent"
	"github.com/corral-dev/corral/api"
	execdriver "github.com/corral-dev/corral/drivers/exec"
	"github.com/corral-dev/corral/gossip"
	"github.com/corral-dev/corral/rpc"
	"github.com/corral-dev/corral/rpc/tlsutil"
	"github.com/corral-dev/corral/rpc/tlsutil/tlstest"
	"github.com/corral-dev/corral/server"
	"github.com/corral-dev/corral/structs"
)

// TestSecuredCluster runs a server with gossip encryption, mutual TLS and
// a join token, and checks that a properly equipped agent runs work while
// agents without the right certificate or token can neither register nor
// watch for kernels, and a member without the gossip key cannot join.
func TestSecuredCluster(t *testing.T) {
	p, foreign := tlstest.New(t), tlstest.New(t)
	keyB64, err := gossip.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	key, err := gossip.ParseKey(keyB64)
	if err != nil {
		t.Fatal(err)
	}
	const token = "join-me-7f3a"
	serverSec := &rpc.Security{TLS: p.Node(t, tlsutil.RoleServer, ""), JoinToken: token}

	dir := t.TempDir()
	srv := startServerCfg(t, dir, func(c *server.Config) {
		c.NodeName, c.GossipKey, c.Security = "secure-server", key, serverSec
	})
	t.Cleanup(srv.Shutdown)

	startSecAgent := func(name string, sec *rpc.Security) *agent.Agent {
		a := startAgentCfg(t, t.TempDir(), srv.SerfAddr(), small, execdriver.New(testLogger(t)), func(c *agent.Config) {
			c.Name, c.GossipKey, c.Security = name, key, sec
		})
		t.Cleanup(func() { a.StopKernels(5 * time.Second); a.Shutdown() })
		return a
	}
	// The impostors start first, so that they have knocked for a while by
	// the time the good agent is in.
	impostors := map[string]*agent.Agent{
		"no TLS, right token":            startSecAgent("impostor-plain", &rpc.Security{JoinToken: token}),
		"right certificate, no token":    startSecAgent("impostor-notoken", &rpc.Security{TLS: p.Node(t, tlsutil.RoleAgent, "")}),
		"right certificate, wrong token": startSecAgent("impostor-badtoken", &rpc.Security{TLS: p.Node(t, tlsutil.RoleAgent, ""), JoinToken: "guess"}),
		"foreign CA, right token":        startSecAgent("impostor-foreign", &rpc.Security{TLS: foreign.Node(t, tlsutil.RoleAgent, ""), JoinToken: token}),
		"certificate for another node":   startSecAgent("impostor-named", &rpc.Security{TLS: p.Node(t, tlsutil.RoleAgent, "other"), JoinToken: token}),
	}
	// The good agent's certificate is bound to its name.
	good := startSecAgent("good-agent", &rpc.Security{TLS: p.Node(t, tlsutil.RoleAgent, "good-agent"), JoinToken: token})

	c := &cluster{srv: srv, agent: good, client: client(t, srv, dir), addr: "http://" + srv.HTTPAddr(), token: mustToken(dir)}
	c.waitAgentAlive(t, good.ID())

	// Work runs on the good agent, and logs come back over the server's
	// mutual-TLS connection to the agent.
	d := create(t, c, &api.CreateSessionRequest{Type: "batch", Command: []string{"sh", "-c", "echo secured"}, Resources: small})
	d = c.waitFor(t, d.Session.ID, terminal)
	if d.Session.Result != structs.ResultSuccess {
		t.Fatalf("session on the secured agent: %s / %s (%s)", d.Session.Status, d.Session.Result, d.Session.StatusInfo)
	}
	if d.Kernels[0].AgentID != good.ID() {
		t.Fatalf("kernel placed on %s, want the good agent %s", d.Kernels[0].AgentID, good.ID())
	}
	logs, err := c.client.SessionLogs(context.Background(), d.Session.ID, "main1")
	if err != nil || !strings.Contains(logs.Stdout, "secured") {
		t.Fatalf("logs over mTLS: %q, %v", logs.Stdout, err)
	}

	// No impostor ever became an agent of the cluster: gossip alone does
	// not make one, and each registration was refused.
	time.Sleep(time.Second)
	agents, err := c.client.ListAgents(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(agents) != 1 || agents[0].ID != good.ID() {
		var ids []string
		for _, a := range agents {
			ids = append(ids, a.Name)
		}
		t.Fatalf("the server knows agents %v; want only good-agent", ids)
	}
	if n := len(srv.SerfMembers()); n != 2+len(impostors) {
		t.Fatalf("the gossip pool has %d members, want %d: the impostors hold the gossip key, so this test must show the RPC refusing them", n, 2+len(impostors))
	}

	// The same refusals, call by call: Register and WatchKernels.
	for name, sec := range map[string]*rpc.Security{
		"no TLS, right token":              {JoinToken: token},
		"right certificate, no token":      {TLS: p.Node(t, tlsutil.RoleAgent, "")},
		"right certificate, wrong token":   {TLS: p.Node(t, tlsutil.RoleAgent, ""), JoinToken: "guess"},
		"foreign CA, right token":          {TLS: foreign.Node(t, tlsutil.RoleAgent, ""), JoinToken: token},
		"server certificate of another CA": {TLS: foreign.Node(t, tlsutil.RoleServer, ""), JoinToken: token},
		// Bound to node "other": it cannot take over the good agent's ID
		// (registering under its own name) nor watch the good agent's kernels.
		"certificate for another node": {TLS: p.Node(t, tlsutil.RoleAgent, "other"), JoinToken: token},
	} {
		t.Run(name, func(t *testing.T) {
			if impostors[name] == nil && !strings.HasPrefix(name, "server") {
				t.Fatalf("no impostor agent for %q", name)
			}
			cc, err := grpc.NewClient(srv.RPCAddr(), sec.DialOptions(tlsutil.RoleServer)...)
			if err != nil {
				t.Fatal(err)
			}
			defer cc.Close()
			cl := rpc.NewServerClient(cc)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			inv := &structs.Agent{ID: "impostor", Name: "impostor", Capacity: small, Drivers: []string{"exec"}}
			if name == "certificate for another node" {
				inv.ID, inv.Name = good.ID(), "other"
			}
			_, err = cl.Register(ctx, &rpc.RegisterRequest{Agent: inv})
			if err == nil {
				t.Fatal("Register accepted")
			}
			if c := grpcstatus.Code(err); c != codes.Unavailable && c != codes.Unauthenticated && c != codes.PermissionDenied {
				t.Fatalf("Register: unexpected code %v: %v", c, err)
			}
			stream, err := cl.WatchKernels(ctx, &rpc.WatchRequest{AgentID: good.ID()})
			if err == nil {
				_, err = stream.Recv()
			}
			if err == nil {
				t.Fatal("WatchKernels of the good agent's kernels accepted")
			}
			t.Logf("refused: %v", err)
		})
	}

	// A client with a foreign certificate that does not even check the
	// server is refused by the server's side of the handshake.
	skip := foreign.Node(t, tlsutil.RoleAgent, "").ClientConfig(tlsutil.RoleServer)
	skip.InsecureSkipVerify, skip.VerifyConnection = true, nil
	if cc, err := grpc.NewClient(srv.RPCAddr(), grpc.WithTransportCredentials(credentials.NewTLS(skip))); err != nil {
		t.Fatal(err)
	} else {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err = rpc.NewServerClient(cc).Register(ctx, &rpc.RegisterRequest{Agent: &structs.Agent{ID: "impostor"}})
		cancel()
		cc.Close()
		if err == nil {
			t.Fatal("a foreign certificate registered by skipping the server check")
		}
	}

	// Raft shares the RPC port; a good agent certificate does not make a
	// raft peer: the server ends the handshake.
	for _, role := range []tlsutil.Role{tlsutil.RoleAgent, tlsutil.RoleServer} {
		raw, err := net.Dial("tcp", srv.RPCAddr())
		if err != nil {
			t.Fatal(err)
		}
		raw.SetDeadline(time.Now().Add(2 * time.Second))
		raw.Write([]byte{0x01}) // raft's magic byte
		tc := tls.Client(raw, p.Node(t, role, "").ClientConfig(tlsutil.RoleServer))
		err = tc.Handshake()
		if err == nil {
			_, err = tc.Read(make([]byte, 1))
		}
		raw.Close()
		var ne net.Error
		timedOut := errors.As(err, &ne) && ne.Timeout()
		switch {
		case role == tlsutil.RoleAgent && (err == nil || timedOut):
			t.Fatalf("raft connection with an agent certificate: %v (want the server to refuse it)", err)
		case role == tlsutil.RoleServer && !timedOut:
			t.Fatalf("raft connection with a server certificate: %v (want it held open for raft)", err)
		}
	}

	// The agent's own port takes only servers: an agent certificate cannot
	// read another agent's kernel logs.
	cc, err := grpc.NewClient(good.RPCAddr(), (&rpc.Security{TLS: p.Node(t, tlsutil.RoleAgent, "")}).DialOptions(tlsutil.RoleAgent)...)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	lctx, lcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer lcancel()
	if _, err := rpc.NewAgentClient(cc).Logs(lctx, &rpc.LogsRequest{KernelID: d.Kernels[0].ID}); err == nil {
		t.Fatal("an agent certificate read logs from another agent")
	}

	// Gossip: a member with another key, or none, cannot join the pool.
	for _, k := range [][]byte{nil, make([]byte, 32)} {
		conf, err := gossip.NewConfig(fmt.Sprintf("intruder-%d", len(k)), "127.0.0.1:0", map[string]string{gossip.TagRole: "agent"}, true, nil)
		if err != nil {
			t.Fatal(err)
		}
		conf.LogOutput, conf.MemberlistConfig.LogOutput = io.Discard, io.Discard
		if err := gossip.Encrypt(conf, k); err != nil {
			t.Fatal(err)
		}
		sf, err := serf.Create(conf)
		if err != nil {
			t.Fatal(err)
		}
		_, joinErr := sf.Join([]string{srv.SerfAddr()}, true)
		_ = sf.Shutdown()
		if joinErr == nil {
			t.Fatalf("a member with gossip key %v joined the encrypted pool", k != nil)
		}
		for _, m := range srv.SerfMembers() {
			if strings.HasPrefix(m.Name, "intruder") {
				t.Fatalf("the server lists %s in its pool", m.Name)
			}
		}
	}
}

// TestSecuredQuorum: three servers with gossip encryption, mutual TLS on
// raft and gRPC, and a join token bootstrap one quorum; an agent registers
// (through a follower when it picks one, which forwards with the token),
// runs work, and after the leader goes a new leader is elected over TLS
// and work runs again.
func TestSecuredQuorum(t *testing.T) {
	p := tlstest.New(t)
	kb, _ := gossip.GenerateKey()
	key, _ := gossip.ParseKey(kb)
	const token = "quorum-token"
	srvs, admin := startQuorumCfg(t, 3, func(c *server.Config) {
		c.GossipKey = key
		c.Security = &rpc.Security{TLS: p.Node(t, tlsutil.RoleServer, ""), JoinToken: token}
		c.HTTPTLS = true
	})
	var leader *server.Server
	for _, s := range srvs {
		if s.IsLeader() {
			leader = s
		}
	}
	if leader == nil {
		t.Fatal("no leader")
	}
	var follower *server.Server
	for _, s := range srvs {
		if s != leader {
			follower = s
			break
		}
	}
	a := startAgentCfg(t, t.TempDir(), follower.SerfAddr(), small, execdriver.New(testLogger(t)), func(c *agent.Config) {
		c.Name, c.GossipKey = "secure-quorum-agent", key
		c.Security = &rpc.Security{TLS: p.Node(t, tlsutil.RoleAgent, ""), JoinToken: token}
	})
	t.Cleanup(func() { a.StopKernels(5 * time.Second); a.Shutdown() })

	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(p.CAPEM)
	httpsClient := func(addr string) *api.Client {
		c, err := api.NewClient("https://" + addr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetToken(admin)
		c.SetTLS(&tls.Config{RootCAs: pool})
		return c
	}
	// The API speaks https only; a plain-http client gets nowhere.
	if _, err := apiClient(t, follower.HTTPAddr(), admin).ListAgents(context.Background()); err == nil {
		t.Fatal("plain http to an https API worked")
	}
	run := func(via *server.Server) {
		t.Helper()
		// Through a follower: it forwards to the leader over https.
		c := &cluster{srv: via, agent: a, client: httpsClient(via.HTTPAddr()), addr: "https://" + via.HTTPAddr(), token: admin}
		c.waitAgentAlive(t, a.ID())
		d := create(t, c, &api.CreateSessionRequest{Type: "batch", Command: []string{"true"}, Resources: small})
		d = c.waitFor(t, d.Session.ID, terminal)
		if d.Session.Result != structs.ResultSuccess {
			t.Fatalf("session: %s / %s (%s)", d.Session.Status, d.Session.Result, d.Session.StatusInfo)
		}
	}
	run(follower)

	leader.Shutdown()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := follower.WaitForLeader(ctx); err != nil {
		t.Fatal(err)
	}
	for ctx.Err() == nil {
		n := 0
		for _, s := range srvs {
			if s != leader && s.IsLeader() {
				n++
			}
		}
		if n == 1 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if ctx.Err() != nil {
		t.Fatal("no new leader among the two remaining servers")
	}
	run(follower)
}

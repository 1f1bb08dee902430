package server

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hashicorp/serf/serf"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/corral-dev/corral/gossip"
	"github.com/corral-dev/corral/rpc"
	"github.com/corral-dev/corral/rpc/tlsutil"
	"github.com/corral-dev/corral/structs"
)

// Automatic TLS (the default of a single-server cluster).
//
// On the first start of a new cluster the server creates the cluster's
// secrets: a CA (rpc/tlsutil), a join secret and a gossip key. It keeps
// them in its data dir (tls/secrets.json, 0600) so that it can serve TLS
// and gossip before raft has replayed, and the first leader writes them
// into raft once (ClusterSecretsRequest), where snapshots keep them. The
// server signs its own certificate with the CA. Agents join with the
// token "<sha256 of the CA certificate>:<secret>": they pin the CA by its
// hash, send a CSR and the secret to SignAgent, and get a certificate
// bound to their name and ID, the CA and the gossip key. From then on
// every gRPC and raft connection is mutual TLS; only SignAgent may be
// called without a client certificate.

// tlsDir is where a server keeps its automatic TLS material.
const tlsDir = "tls"

// DefaultAgentCertValidity is how long an agent certificate signed by the
// cluster CA is valid; agents renew at two thirds of it.
const DefaultAgentCertValidity = tlsutil.DefaultCertValidity

// autoTLS is the server's automatic TLS state.
type autoTLS struct {
	secrets *structs.ClusterSecrets
	ca      *tlsutil.CA
	conf    *tlsutil.Config
}

// wantsAutoTLS says whether this server secures itself: one that was
// given no PKI of its own, no plaintext join secret and no -insecure, and
// whose data dir does not hold a cluster created without automatic TLS.
func (c *Config) wantsAutoTLS() bool {
	if c.Insecure || legacyPlaintext(c.DataDir) {
		return false
	}
	return c.Security == nil || (c.Security.TLS == nil && c.Security.JoinToken == "")
}

// legacyPlaintext says whether the data dir holds a cluster that was
// created without automatic TLS (before it existed, or with -insecure):
// it keeps running so, since its agents have no token.
func legacyPlaintext(dataDir string) bool {
	_, tlsErr := os.Stat(filepath.Join(dataDir, tlsDir, "secrets.json"))
	return hasRaftState(filepath.Join(dataDir, "raft")) && errors.Is(tlsErr, os.ErrNotExist)
}

// setupAutoTLS loads or creates the cluster secrets and this server's
// certificate, and makes them the server's security.
func (s *Server) setupAutoTLS() error {
	dir := filepath.Join(s.cfg.DataDir, tlsDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("server: tls dir: %w", err)
	}
	secFile := filepath.Join(dir, "secrets.json")
	var sec structs.ClusterSecrets
	b, err := os.ReadFile(secFile)
	switch {
	case err == nil:
		if err := json.Unmarshal(b, &sec); err != nil {
			return fmt.Errorf("server: %s: %w", secFile, err)
		}
	case errors.Is(err, os.ErrNotExist) && s.cfg.ServerJoinToken != "":
		got, err := s.joinServers()
		if err != nil {
			return err
		}
		sec = *got
		b, _ := json.Marshal(&sec)
		if err := tlsutil.WriteSecretFile(secFile, b); err != nil {
			return err
		}
		s.logger.Info("joined the cluster: got its CA, join secrets and gossip key", "dir", dir)
	case errors.Is(err, os.ErrNotExist):
		fresh, err := newClusterSecrets(s.cfg.GossipKey)
		if err != nil {
			return err
		}
		sec = *fresh
		b, _ := json.Marshal(&sec)
		if err := tlsutil.WriteSecretFile(secFile, b); err != nil {
			return err
		}
		s.logger.Info("created the cluster CA, join secrets and gossip key", "dir", dir)
		defer func() {
			if s.auto != nil && s.cfg.BootstrapExpect > 1 && s.cfg.OnServerJoinToken != nil {
				s.cfg.OnServerJoinToken(s.ServerJoinToken())
			}
		}()
	default:
		return fmt.Errorf("server: %w", err)
	}
	ca, err := tlsutil.ParseCA([]byte(sec.CACert), []byte(sec.CAKey))
	if err != nil {
		return fmt.Errorf("server: cluster CA in %s: %w", secFile, err)
	}
	key, err := gossip.ParseKey(sec.GossipKey)
	if err != nil {
		return fmt.Errorf("server: gossip key in %s: %w", secFile, err)
	}
	// A fresh server certificate on every start: the CA is at hand.
	req := tlsutil.CertRequest{Role: tlsutil.RoleServer, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"localhost"}}
	if host, _, err := net.SplitHostPort(s.cfg.RPCAddr); err == nil {
		if ip := net.ParseIP(host); ip != nil && !ip.IsUnspecified() && !ip.IsLoopback() {
			req.IPs = append(req.IPs, ip)
		}
	}
	certPEM, keyPEM, err := ca.Issue(req)
	if err != nil {
		return err
	}
	// The chain carries the CA, so that an agent that pins it by hash
	// finds it.
	conf, err := tlsutil.New([]byte(sec.CACert), append(certPEM, sec.CACert...), keyPEM)
	if err != nil {
		return err
	}
	conf.OptionalClientCert = true
	conf.Revoked = s.certRevoked
	s.auto = &autoTLS{secrets: &sec, ca: ca, conf: conf}
	s.cfg.Security = &rpc.Security{TLS: conf}
	s.cfg.GossipKey = key
	return nil
}

func newClusterSecrets(gossipKey []byte) (*structs.ClusterSecrets, error) {
	caPEM, caKeyPEM, err := tlsutil.NewCA(0)
	if err != nil {
		return nil, err
	}
	secret, serverSecret := make([]byte, 16), make([]byte, 16)
	if _, err := rand.Read(secret); err != nil {
		return nil, err
	}
	if _, err := rand.Read(serverSecret); err != nil {
		return nil, err
	}
	gk, err := gossip.GenerateKey()
	if err != nil {
		return nil, err
	}
	if len(gossipKey) > 0 {
		gk = base64.StdEncoding.EncodeToString(gossipKey)
	}
	return &structs.ClusterSecrets{CACert: string(caPEM), CAKey: string(caKeyPEM), JoinSecret: hex.EncodeToString(secret),
		ServerSecret: hex.EncodeToString(serverSecret), GossipKey: gk, Created: time.Now().UTC()}, nil
}

// recordSecrets, on a new leader, writes the cluster secrets into raft
// once. Secrets already in raft win: a server whose own differ says so.
func (s *Server) recordSecrets() {
	if s.auto == nil {
		return
	}
	have, err := s.state.Snapshot().ClusterSecrets()
	if err != nil {
		s.logger.Error("reading the cluster secrets", "error", err)
		return
	}
	if have != nil {
		if have.CACert != s.auto.secrets.CACert {
			s.logger.Error("this server's tls/secrets.json holds another cluster's CA than raft: its data dir mixes two clusters")
		}
		return
	}
	resp, _, err := s.apply(structs.ClusterSecretsRequestType, &structs.ClusterSecretsRequest{Secrets: s.auto.secrets, Time: time.Now().UTC()})
	if err != nil {
		s.logger.Error("recording the cluster secrets in raft failed", "error", err)
		return
	}
	if set, _ := resp.(bool); set && s.cfg.OnJoinToken != nil {
		s.cfg.OnJoinToken(s.JoinToken())
	}
}

// JoinToken is the token agents join with, "<ca-sha256-hex>:<secret>",
// or "" when the cluster does not use automatic TLS.
func (s *Server) JoinToken() string {
	if s.auto == nil {
		return ""
	}
	return tlsutil.Hash(s.auto.ca.Cert) + ":" + s.auto.secrets.JoinSecret
}

// ServerJoinToken is the token other servers of the cluster join with,
// "<ca-sha256-hex>:<server secret>", or "" without automatic TLS.
func (s *Server) ServerJoinToken() string {
	if s.auto == nil || s.auto.secrets.ServerSecret == "" {
		return ""
	}
	return tlsutil.Hash(s.auto.ca.Cert) + ":" + s.auto.secrets.ServerSecret
}

// joinServers fetches the cluster's secrets for ServerJoinToken from a
// server of the cluster, retrying while none answers (servers of a new
// cluster start together).
func (s *Server) joinServers() (*structs.ClusterSecrets, error) {
	hash, secret, ok := strings.Cut(strings.TrimSpace(s.cfg.ServerJoinToken), ":")
	if !ok || len(hash) != 64 || secret == "" {
		return nil, errors.New("server: the join token is not of the form <ca-sha256-hex>:<secret> (the first server prints the servers' token on its first start)")
	}
	var addrs []string
	if s.cfg.EnrollAddr != "" {
		addrs = []string{s.cfg.EnrollAddr}
	}
	for _, j := range s.cfg.Join {
		if host, _, err := net.SplitHostPort(j); err == nil && s.cfg.EnrollAddr == "" {
			addrs = append(addrs, net.JoinHostPort(host, "8641"))
		}
	}
	if len(addrs) == 0 {
		return nil, errors.New("server: -join-token needs -join (a server of the cluster) to fetch the cluster's secrets from")
	}
	ctx, cancel := context.WithTimeout(s.ctx, 2*time.Minute)
	defer cancel()
	delay := 100 * time.Millisecond
	for i := 0; ; i++ {
		addr := addrs[i%len(addrs)]
		sec, err := s.joinServerOnce(ctx, addr, strings.ToLower(hash), secret)
		if err == nil {
			return sec, nil
		}
		if c := status.Code(err); c == codes.PermissionDenied || c == codes.FailedPrecondition || strings.Contains(err.Error(), "join token") {
			return nil, fmt.Errorf("server: %s refused to let this server join: %s", addr, status.Convert(err).Message())
		}
		s.logger.Debug("joining the cluster's servers failed, retrying", "server", addr, "error", err, "retry_in", delay)
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("server: no server at %s answered the join: %w", strings.Join(addrs, ", "), err)
		case <-time.After(delay):
		}
		delay = min(2*delay, 2*time.Second)
	}
}

func (s *Server) joinServerOnce(ctx context.Context, addr, hash, secret string) (*structs.ClusterSecrets, error) {
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(tlsutil.PinnedConfig(hash))))
	if err != nil {
		return nil, err
	}
	defer cc.Close()
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := rpc.NewServerClient(cc).JoinServer(cctx, &rpc.JoinServerRequest{Name: s.cfg.NodeName, Secret: secret})
	if err != nil {
		return nil, err
	}
	if resp.Secrets == nil {
		return nil, errors.New("the server sent no secrets")
	}
	ca, err := tlsutil.ParseCert([]byte(resp.Secrets.CACert))
	if err != nil || tlsutil.Hash(ca) != hash {
		return nil, errors.New("the server sent a CA that does not match the join token")
	}
	return resp.Secrets, nil
}

// JoinServer hands the cluster's secrets to a new server that holds the
// server join secret (it needs no raft: every server has them locally).
func (e *agentEndpoint) JoinServer(ctx context.Context, req *rpc.JoinServerRequest) (*rpc.JoinServerResponse, error) {
	s := e.srv
	if s.auto == nil || s.auto.secrets.ServerSecret == "" {
		return nil, status.Error(codes.FailedPrecondition, "this cluster does not use automatic TLS: give the new server the cluster's -tls-* files")
	}
	if subtle.ConstantTimeCompare([]byte(req.Secret), []byte(s.auto.secrets.ServerSecret)) != 1 {
		s.logger.Warn("a server was refused: wrong server join secret", "name", req.Name)
		return nil, status.Error(codes.PermissionDenied, "wrong server join token: give the token the first server printed for servers (not the agents' token)")
	}
	s.logger.Info("a server joined the cluster: handed it the cluster's secrets", "name", req.Name)
	sec := *s.auto.secrets
	return &rpc.JoinServerResponse{Secrets: &sec}, nil
}

// AutoTLS reports whether the server secures itself with the cluster CA.
func (s *Server) AutoTLS() bool { return s.auto != nil }

// certRevoked says whether a peer certificate has been revoked.
func (s *Server) certRevoked(cert *x509.Certificate) bool {
	c, err := s.state.Snapshot().IssuedCert(nil, cert.SerialNumber.Text(16))
	return err == nil && c != nil && c.Revoked
}

// RevokeNode revokes every certificate issued to a node (by name or agent
// ID) and returns their serials.
func (s *Server) RevokeNode(node string) ([]string, error) {
	certs, err := s.state.Snapshot().IssuedCerts(node)
	if err != nil {
		return nil, err
	}
	var serials []string
	for _, c := range certs {
		if !c.Revoked {
			serials = append(serials, c.Serial)
		}
	}
	if len(serials) == 0 {
		return nil, nil
	}
	if _, _, err := s.apply(structs.CertRevokeRequestType, &structs.CertRevokeRequest{Serials: serials, Reason: "corral node revoke " + node, Time: time.Now().UTC()}); err != nil {
		return nil, err
	}
	s.logger.Warn("revoked node certificates", "node", node, "serials", serials)
	return serials, nil
}

// validNodeName rejects what cannot go into a certificate URI.
func validNodeName(what, v string) error {
	if v == "" || len(v) > 253 || strings.ContainsAny(v, "/ \t\r\n?#%") {
		return status.Errorf(codes.InvalidArgument, "sign agent: invalid %s %q", what, v)
	}
	return nil
}

// SignAgent signs an agent certificate: for the join secret (a new agent,
// which has no certificate yet) or for the agent's current certificate
// (renewal: same name and ID only).
func (e *agentEndpoint) SignAgent(ctx context.Context, req *rpc.SignAgentRequest) (*rpc.SignAgentResponse, error) {
	s := e.srv
	if s.auto == nil {
		return nil, status.Error(codes.FailedPrecondition, "this cluster uses its own PKI (-tls-*): issue agent certificates with 'corral tls cert create -agent'")
	}
	if err := validNodeName("agent ID", req.AgentID); err != nil {
		return nil, err
	}
	if err := validNodeName("node name", req.Name); err != nil {
		return nil, err
	}
	peer := rpc.PeerCert(ctx)
	var role tlsutil.Role
	if peer != nil {
		role, _ = tlsutil.RoleOf(peer)
	}
	switch {
	case peer == nil:
		if subtle.ConstantTimeCompare([]byte(req.Secret), []byte(s.auto.secrets.JoinSecret)) != 1 {
			s.logger.Warn("agent certificate refused: wrong join secret", "agent_id", req.AgentID, "name", req.Name)
			return nil, status.Error(codes.PermissionDenied, "wrong join token: its secret is not this cluster's (print the right one with 'corral system join-token')")
		}
	case role == tlsutil.RoleAgent:
		if tlsutil.IDOf(peer) != req.AgentID || tlsutil.NodeOf(peer) != req.Name {
			return nil, status.Errorf(codes.PermissionDenied, "renewal refused: this certificate is for agent %s (%q), not %s (%q)", tlsutil.IDOf(peer), tlsutil.NodeOf(peer), req.AgentID, req.Name)
		}
	case role == tlsutil.RoleServer:
		// A follower forwarding what it checked.
	default:
		return nil, status.Error(codes.PermissionDenied, "sign agent: unknown certificate role")
	}
	if err := s.waitReady(ctx); err != nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	if !s.IsLeader() {
		cl, err := s.leaderClient()
		if err != nil {
			return nil, grpcError(err)
		}
		return cl.SignAgent(ctx, req)
	}
	pub, err := tlsutil.ParseCSR(req.CSR)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "sign agent: %v", err)
	}
	certPEM, err := s.auto.ca.IssueFor(tlsutil.CertRequest{Role: tlsutil.RoleAgent, Node: req.Name, ID: req.AgentID, Validity: s.cfg.AgentCertValidity}, pub)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "sign agent: %v", err)
	}
	leaf, err := tlsutil.ParseCert(certPEM)
	if err != nil {
		return nil, grpcError(err)
	}
	now := time.Now().UTC()
	rec := &structs.IssuedCert{Serial: leaf.SerialNumber.Text(16), Role: string(tlsutil.RoleAgent), AgentID: req.AgentID, Node: req.Name,
		NotAfter: leaf.NotAfter.UTC(), Issued: now}
	if _, _, err := s.apply(structs.CertIssueRequestType, &structs.CertIssueRequest{Cert: rec, Time: now}); err != nil {
		return nil, grpcError(err)
	}
	s.logger.Info("signed an agent certificate", "agent_id", req.AgentID, "name", req.Name, "serial", rec.Serial, "renewal", peer != nil, "not_after", rec.NotAfter)
	return &rpc.SignAgentResponse{Cert: certPEM, CACert: []byte(s.auto.secrets.CACert), GossipKey: s.auto.secrets.GossipKey}, nil
}

// gossipWait is how long a registration waits for its agent to show up
// alive in this server's view of the gossip pool: an agent registers
// right after it joined.
const gossipWait = 5 * time.Second

// checkGossip holds a registering agent to what the gossip pool says of
// it: it must be a live member with its ID and name, and advertise the
// capacity it gossips. A certificate alone (a stolen one, or one's own
// reused for a made-up agent) does not make a node.
func (s *Server) checkGossip(ctx context.Context, a *structs.Agent) error {
	ctx, cancel := context.WithTimeout(ctx, gossipWait)
	defer cancel()
	joined := false
	for {
		for _, m := range s.serf.Members() {
			if m.Tags[gossip.TagRole] != "agent" || m.Tags[gossip.TagID] != a.ID || m.Status != serf.StatusAlive {
				continue
			}
			if m.Name != a.Name {
				return status.Errorf(codes.PermissionDenied, "agent %s gossips as node %q, not %q", a.ID, m.Name, a.Name)
			}
			if g := gossip.ParseSlots(m.Tags[gossip.TagSlots]); !g.Equal(a.Capacity) {
				return status.Errorf(codes.PermissionDenied, "agent %s registers capacity %s but gossips %s: the two must match", a.ID, a.Capacity.String(), g.String())
			}
			return nil
		}
		if !joined && a.SerfAddr != "" {
			// A server that restarted has not met the agent again yet:
			// gossip with it at the address it gives (only a member
			// that holds the gossip key answers).
			joined = true
			go func() { _, _ = s.serf.Join([]string{a.SerfAddr}, true) }()
		}
		select {
		case <-ctx.Done():
			return status.Errorf(codes.Unavailable, "agent %s (%q) is not a live member of the gossip pool: an agent must join gossip (with the cluster's gossip key) before it registers", a.ID, a.Name)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// joinTokenResponse answers GET /v1/system/join-token.
type joinTokenResponse struct {
	JoinToken string `json:"join_token"`
}

// joinTokenHTTP answers GET /v1/system/join-token (admins).
func (s *Server) joinTokenHTTP(w http.ResponseWriter, r *http.Request) (any, error) {
	if err := requireAdmin(r); err != nil {
		return nil, err
	}
	tok := s.JoinToken()
	if tok == "" {
		return nil, &httpError{code: http.StatusConflict, msg: "this cluster does not use automatic TLS (it was started with its own PKI, a -join-token, several servers or -insecure): agents join with the -tls-* files and -join-token its operator gave"}
	}
	return joinTokenResponse{JoinToken: tok}, nil
}

// revokeNodeHTTP answers POST /v1/nodes/{node}/revoke (admins).
func (s *Server) revokeNodeHTTP(w http.ResponseWriter, r *http.Request) (any, error) {
	if err := requireAdmin(r); err != nil {
		return nil, err
	}
	node := r.PathValue("node")
	// An agent ID prefix resolves to its name.
	if a, err := s.state.Snapshot().ResolveAgent(node); err == nil {
		node = a.ID
	}
	serials, err := s.RevokeNode(node)
	if err != nil {
		return nil, err
	}
	if len(serials) == 0 {
		return nil, &httpError{code: http.StatusNotFound, msg: fmt.Sprintf("no unrevoked certificate was issued to node %q (give its name or agent ID; 'corral node list' shows them)", r.PathValue("node"))}
	}
	return map[string]any{"node": r.PathValue("node"), "serials": serials}, nil
}

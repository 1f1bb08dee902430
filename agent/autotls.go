package agent

import (
	"context"
	"crypto/ecdsa"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/corral-dev/corral/gossip"
	"github.com/corral-dev/corral/rpc"
	"github.com/corral-dev/corral/rpc/tlsutil"
)

// Joining with a token (automatic TLS; see server/autotls.go).
//
// A new agent parses its join token "<ca-sha256>:<secret>", dials a
// server's RPC port over TLS that accepts only a chain holding a CA with
// that hash, and sends a CSR for a key it made (the key never leaves the
// node) and the secret to SignAgent. It gets a certificate bound to its
// name and ID, the CA and the gossip key, keeps them in DataDir/tls
// (0600) and from then on uses them for every gRPC connection and for
// gossip. A restarted agent reuses them; it renews its certificate (a new
// key and CSR, authenticated by the current certificate) once less than a
// third of its lifetime is left.

// DefaultServerRPCPort is the port of a server's gRPC port that an agent
// enrolls with when it is given only a gossip address to join.
const DefaultServerRPCPort = "8641"

const (
	tlsDir        = "tls"
	caFile        = "ca.pem"
	certFile      = "agent.pem"
	keyFile       = "agent-key.pem"
	gossipKeyFile = "gossip.key"
)

var tokenRE = regexp.MustCompile(`^[0-9a-fA-F]{64}:[^\s:]+$`)

// ParseJoinToken splits a join token into the CA hash and the secret.
func ParseJoinToken(tok string) (caHash, secret string, err error) {
	tok = strings.TrimSpace(tok)
	if !tokenRE.MatchString(tok) {
		return "", "", errors.New("the join token is not of the form <ca-sha256-hex>:<secret> (print it with 'corral system join-token' on a server)")
	}
	h, s, _ := strings.Cut(tok, ":")
	return strings.ToLower(h), s, nil
}

// enrollAddrs are the server RPC addresses a new agent asks for a
// certificate: -server, else each -join host at the default RPC port.
func (a *Agent) enrollAddrs() []string {
	if a.cfg.EnrollAddr != "" {
		return []string{a.cfg.EnrollAddr}
	}
	var out []string
	for _, j := range a.cfg.Join {
		host, _, err := net.SplitHostPort(j)
		if err != nil {
			host = j
		}
		out = append(out, net.JoinHostPort(host, DefaultServerRPCPort))
	}
	return out
}

// setupAutoTLS gives the agent its certificate and gossip key: the ones in
// its data dir, or new ones for its join token. Without a token and with
// nothing stored, or with its own PKI, it changes nothing.
func (a *Agent) setupAutoTLS(ctx context.Context) error {
	if a.cfg.Security != nil && a.cfg.Security.TLS != nil {
		return nil
	}
	var caHash, secret string
	if a.cfg.JoinToken != "" {
		var err error
		if caHash, secret, err = ParseJoinToken(a.cfg.JoinToken); err != nil {
			return fmt.Errorf("agent: -join-token: %w", err)
		}
	}
	dir := filepath.Join(a.cfg.DataDir, tlsDir)
	conf, key, err := a.loadTLS(dir)
	switch {
	case err == nil:
		leaf := conf.Leaf()
		ca, _ := tlsutil.ParseCert(readOrNil(filepath.Join(dir, caFile)))
		if caHash != "" && ca != nil && tlsutil.Hash(ca) != caHash {
			return fmt.Errorf("agent: %s holds the certificate of another cluster (CA sha256 %.12s…) than the -join-token's (%.12s…): use another -data-dir, or remove %s to join this one", dir, tlsutil.Hash(ca), caHash, dir)
		}
		if tlsutil.IDOf(leaf) == a.id && tlsutil.NodeOf(leaf) == a.cfg.Name && time.Now().Before(leaf.NotAfter) {
			a.useTLS(conf, key)
			return nil
		}
		if secret == "" {
			return fmt.Errorf("agent: the certificate in %s is expired or for another node name/ID: start the agent with -join-token to get a new one", dir)
		}
	case !errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("agent: reading %s: %w", dir, err)
	case secret == "":
		return nil // no automatic TLS: plaintext, or -tls-* given elsewhere
	}
	start := time.Now()
	if err := a.enroll(ctx, dir, caHash, secret); err != nil {
		return err
	}
	a.logger.Info("joined the cluster: got a node certificate", "took", time.Since(start).Round(time.Millisecond))
	conf, key, err = a.loadTLS(dir)
	if err != nil {
		return err
	}
	a.useTLS(conf, key)
	return nil
}

// readOrNil reads a file, nil when it cannot.
func readOrNil(p string) []byte {
	b, _ := os.ReadFile(p)
	return b
}

func (a *Agent) loadTLS(dir string) (*tlsutil.Config, []byte, error) {
	for _, f := range []string{caFile, certFile, keyFile, gossipKeyFile} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			return nil, nil, err
		}
	}
	conf, err := tlsutil.Load(filepath.Join(dir, caFile), filepath.Join(dir, certFile), filepath.Join(dir, keyFile))
	if err != nil {
		return nil, nil, err
	}
	key, err := gossip.ParseKey(string(readOrNil(filepath.Join(dir, gossipKeyFile))))
	if err != nil {
		return nil, nil, err
	}
	return conf, key, nil
}

func (a *Agent) useTLS(conf *tlsutil.Config, gossipKey []byte) {
	a.cfg.Security = &rpc.Security{TLS: conf}
	a.cfg.GossipKey = gossipKey
	a.autoTLS = conf
}

// enroll asks a server for a certificate with the join secret, retrying
// while no server answers (they may be starting too).
func (a *Agent) enroll(ctx context.Context, dir, caHash, secret string) error {
	addrs := a.enrollAddrs()
	if len(addrs) == 0 {
		return errors.New("agent: no server address to join with the token: give -join or -server")
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	delay := 100 * time.Millisecond
	for i := 0; ; i++ {
		addr := addrs[i%len(addrs)]
		err := a.signOnce(ctx, addr, dir, caHash, secret)
		if err == nil {
			return nil
		}
		if c := status.Code(err); c == codes.PermissionDenied || c == codes.InvalidArgument || c == codes.FailedPrecondition || strings.Contains(err.Error(), "join token") {
			return fmt.Errorf("agent: server %s refused the join: %s", addr, status.Convert(err).Message())
		}
		lvl := slog.LevelDebug // a server that starts too elects itself first
		if i >= 10 {
			lvl = slog.LevelWarn
		}
		a.logger.Log(ctx, lvl, "joining with the token failed, retrying", "server", addr, "error", err, "retry_in", delay)
		select {
		case <-ctx.Done():
			return fmt.Errorf("agent: no server at %s answered the join: %w", strings.Join(addrs, ", "), err)
		case <-time.After(delay):
		}
		delay = min(2*delay, 2*time.Second)
	}
}

// signOnce makes a key and CSR, asks addr to sign it and stores the result.
func (a *Agent) signOnce(ctx context.Context, addr, dir, caHash, secret string) error {
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(tlsutil.PinnedConfig(caHash))))
	if err != nil {
		return err
	}
	defer cc.Close()
	key, csr, err := newCSR()
	if err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := rpc.NewServerClient(cc).SignAgent(cctx, &rpc.SignAgentRequest{AgentID: a.id, Name: a.cfg.Name, CSR: csr, Secret: secret})
	if err != nil {
		return err
	}
	ca, err := tlsutil.ParseCert(resp.CACert)
	if err != nil || tlsutil.Hash(ca) != caHash {
		return errors.New("agent: the server answered with a CA that does not match the join token")
	}
	return a.storeTLS(dir, resp, key)
}

func newCSR() (*ecdsa.PrivateKey, []byte, error) {
	key, err := tlsutil.NewKey()
	if err != nil {
		return nil, nil, err
	}
	csr, err := tlsutil.NewCSR(key)
	return key, csr, err
}

// storeTLS writes what SignAgent returned, each file 0600.
func (a *Agent) storeTLS(dir string, resp *rpc.SignAgentResponse, key *ecdsa.PrivateKey) error {
	keyPEM, err := tlsutil.EncodeKey(key)
	if err != nil {
		return err
	}
	if _, err := tlsutil.New(resp.CACert, resp.Cert, keyPEM); err != nil {
		return fmt.Errorf("agent: the signed certificate: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for name, b := range map[string][]byte{caFile: resp.CACert, keyFile: keyPEM, certFile: resp.Cert, gossipKeyFile: []byte(resp.GossipKey + "\n")} {
		if err := tlsutil.WriteSecretFile(filepath.Join(dir, name), b); err != nil {
			return err
		}
	}
	return nil
}

// renewLoop renews the certificate when less than a third of its
// lifetime is left.
func (a *Agent) renewLoop() {
	conf := a.autoTLS
	for {
		leaf := conf.Leaf()
		life := leaf.NotAfter.Sub(leaf.NotBefore)
		wait := time.Until(leaf.NotAfter.Add(-life / 3))
		select {
		case <-a.ctx.Done():
			return
		case <-time.After(max(wait, 0)):
		}
		if err := a.renew(); err != nil {
			retry := min(max(life/30, 100*time.Millisecond), time.Minute)
			a.logger.Warn("renewing the node certificate failed, retrying", "error", err, "not_after", leaf.NotAfter, "retry_in", retry)
			select {
			case <-a.ctx.Done():
				return
			case <-time.After(retry):
			}
		}
	}
}

// renew gets a new certificate for a new key, authenticated by the
// current certificate, and puts it in use.
func (a *Agent) renew() error {
	var client *rpc.ServerClient
	a.mu.Lock()
	if a.conn != nil {
		client = a.conn.client
	}
	a.mu.Unlock()
	if client == nil {
		addrs := append(a.servers(), a.enrollAddrs()...)
		if len(addrs) == 0 {
			return errors.New("no server known")
		}
		cc, err := grpc.NewClient(addrs[0], a.cfg.Security.DialOptions(tlsutil.RoleServer)...)
		if err != nil {
			return err
		}
		defer cc.Close()
		client = rpc.NewServerClient(cc)
	}
	key, csr, err := newCSR()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(a.ctx, 10*time.Second)
	defer cancel()
	resp, err := client.SignAgent(ctx, &rpc.SignAgentRequest{AgentID: a.id, Name: a.cfg.Name, CSR: csr})
	if err != nil {
		return err
	}
	dir := filepath.Join(a.cfg.DataDir, tlsDir)
	if err := a.storeTLS(dir, resp, key); err != nil {
		return err
	}
	keyPEM, _ := tlsutil.EncodeKey(key)
	if err := a.autoTLS.SetCertificate(resp.Cert, keyPEM); err != nil {
		return err
	}
	a.logger.Info("renewed the node certificate", "not_after", a.autoTLS.NotAfter())
	return nil
}

// CertificateSerial is the serial (hex) of the agent's certificate from
// the cluster CA, "" without automatic TLS.
func (a *Agent) CertificateSerial() string {
	if a.autoTLS == nil {
		return ""
	}
	return a.autoTLS.Leaf().SerialNumber.Text(16)
}

// Security is what the agent secures its connections with (its
// certificate from the cluster CA after joining with a token).
func (a *Agent) Security() *rpc.Security { return a.cfg.Security }

// Package tlsutil creates corral's certificate authority and node
// certificates, and builds the mutual-TLS configurations that servers and
// agents use between each other. A certificate carries its node's role
// (server or agent) as a URI SAN, corral://server or corral://agent, and a
// DNS SAN, server.corral or agent.corral, which is the name a dialer checks:
// nodes find each other by address through gossip, so certificates need not
// name every host.
package tlsutil

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"time"
)

// Role is what a certificate lets its holder be in the cluster.
type Role string

// The roles of corral certificates.
const (
	RoleServer Role = "server"
	RoleAgent  Role = "agent"
)

// ServerName is the DNS name every certificate of role r carries and that
// a dialer of a node of role r verifies.
func (r Role) ServerName() string { return string(r) + ".corral" }

// uri is the URI SAN that encodes the role.
func (r Role) uri() *url.URL { return &url.URL{Scheme: "corral", Host: string(r)} }

// Default file names, as `corral tls` writes them.
const (
	CAFile    = "corral-ca.pem"
	CAKeyFile = "corral-ca-key.pem"
)

// Default validity periods.
const (
	DefaultCAValidity   = 5 * 365 * 24 * time.Hour
	DefaultCertValidity = 365 * 24 * time.Hour
)

// RoleOf reads the role a certificate was issued for from its corral://
// URI SAN.
func RoleOf(cert *x509.Certificate) (Role, bool) {
	for _, u := range cert.URIs {
		if u.Scheme != "corral" {
			continue
		}
		switch r := Role(u.Host); r {
		case RoleServer, RoleAgent:
			return r, true
		}
	}
	return "", false
}

// NodeOf reads the node name a certificate is bound to, "" when it is
// bound to a role only.
func NodeOf(cert *x509.Certificate) string {
	for _, u := range cert.URIs {
		if u.Scheme == "corral" && (Role(u.Host) == RoleServer || Role(u.Host) == RoleAgent) {
			return strings.TrimPrefix(u.Path, "/")
		}
	}
	return ""
}

// IDOf reads the agent ID a certificate is bound to (its corral://id/ID
// URI SAN), "" when it names none.
func IDOf(cert *x509.Certificate) string {
	for _, u := range cert.URIs {
		if u.Scheme == "corral" && u.Host == "id" {
			return strings.TrimPrefix(u.Path, "/")
		}
	}
	return ""
}

// CA is a certificate authority that signs node certificates.
type CA struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
}

// NewCA creates a self-signed CA and returns its certificate and key as PEM.
func NewCA(validity time.Duration) (certPEM, keyPEM []byte, err error) {
	if validity <= 0 {
		validity = DefaultCAValidity
	}
	key, serial, err := newKeyAndSerial()
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "corral CA " + serial.Text(16)[:8], Organization: []string{"corral"}},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(validity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	return sign(tmpl, tmpl, key, key)
}

// ParseCA reads a CA from its PEM certificate and key.
func ParseCA(certPEM, keyPEM []byte) (*CA, error) {
	cert, err := parseCert(certPEM)
	if err != nil {
		return nil, err
	}
	if !cert.IsCA {
		return nil, errors.New("the certificate is not a CA certificate")
	}
	key, err := parseKey(keyPEM)
	if err != nil {
		return nil, err
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return nil, errors.New("the key does not belong to the CA certificate")
	}
	return &CA{Cert: cert, Key: key}, nil
}

// LoadCA reads a CA from a certificate file and a key file.
func LoadCA(certFile, keyFile string) (*CA, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("reading the CA certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("reading the CA key: %w", err)
	}
	ca, err := ParseCA(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("CA %s / %s: %w", certFile, keyFile, err)
	}
	return ca, nil
}

// CertRequest describes a node certificate to issue.
type CertRequest struct {
	Role Role
	// IPs and DNSNames are extra SANs; a server gets 127.0.0.1 and
	// localhost when both are empty. Role.ServerName() is always added.
	IPs      []net.IP
	DNSNames []string
	// Validity defaults to DefaultCertValidity.
	Validity time.Duration
	// Node, when set, binds the certificate to one node name (the
	// agent's -name): servers then let it register, watch and report
	// only as that agent. It goes into the role URI: corral://agent/NODE.
	Node string
	// ID, when set, binds the certificate to one agent ID as well, in a
	// second URI SAN: corral://id/ID.
	ID string
}

// Issue creates a key and a certificate for a node, signed by the CA.
// Servers and agents both get server and client usage: servers also dial
// agents and other servers, agents also serve exec and logs.
func (ca *CA) Issue(req CertRequest) (certPEM, keyPEM []byte, err error) {
	key, err := NewKey()
	if err != nil {
		return nil, nil, err
	}
	certPEM, err = ca.IssueFor(req, &key.PublicKey)
	if err != nil {
		return nil, nil, err
	}
	keyPEM, err = EncodeKey(key)
	return certPEM, keyPEM, err
}

// IssueFor signs a certificate for a public key that the node keeps
// (from a certificate signing request: see ParseCSR).
func (ca *CA) IssueFor(req CertRequest, pub *ecdsa.PublicKey) (certPEM []byte, err error) {
	if req.Role != RoleServer && req.Role != RoleAgent {
		return nil, fmt.Errorf("unknown certificate role %q: want server or agent", req.Role)
	}
	if req.Validity <= 0 {
		req.Validity = DefaultCertValidity
	}
	uris := []*url.URL{req.Role.uri()}
	if req.Node != "" {
		if strings.ContainsAny(req.Node, "/ \t\r\n?#%") {
			return nil, fmt.Errorf("invalid node name %q", req.Node)
		}
		uris[0].Path = "/" + req.Node
	}
	if req.ID != "" {
		if strings.ContainsAny(req.ID, "/ \t\r\n?#%") {
			return nil, fmt.Errorf("invalid node ID %q", req.ID)
		}
		uris = append(uris, &url.URL{Scheme: "corral", Host: "id", Path: "/" + req.ID})
	}
	ips, dns := slices.Clone(req.IPs), slices.Clone(req.DNSNames)
	if req.Role == RoleServer && len(ips) == 0 && len(dns) == 0 {
		ips, dns = []net.IP{net.IPv4(127, 0, 0, 1)}, []string{"localhost"}
	}
	if !slices.Contains(dns, req.Role.ServerName()) {
		dns = append([]string{req.Role.ServerName()}, dns...)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	notAfter := now.Add(req.Validity)
	if notAfter.After(ca.Cert.NotAfter) {
		notAfter = ca.Cert.NotAfter
	}
	// Backdated for clock skew, by a tenth of short lifetimes at most.
	backdate := min(time.Minute, req.Validity/10)
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: req.Role.ServerName(), Organization: []string{"corral"}, OrganizationalUnit: []string{string(req.Role)}},
		NotBefore:    now.Add(-backdate),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:     dns,
		IPAddresses:  ips,
		URIs:         uris,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.Key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}

// CertPEM is the CA certificate as PEM.
func (ca *CA) CertPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw})
}

// Hash is the hex SHA-256 of a certificate's DER encoding: what a join
// token pins the cluster CA by.
func Hash(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.Raw)
	return hex.EncodeToString(sum[:])
}

// NewKey creates a node's P-256 private key.
func NewKey() (*ecdsa.PrivateKey, error) { return ecdsa.GenerateKey(elliptic.P256(), rand.Reader) }

// NewCSR makes a PEM certificate signing request for key. The CA takes
// only the public key from it: the role, node and ID come from the
// authenticated request that carries it.
func NewCSR(key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "corral node"}}, key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

// ParseCSR reads a PEM certificate signing request, checks its signature
// and returns its P-256 public key.
func ParseCSR(b []byte) (*ecdsa.PublicKey, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE REQUEST" {
		return nil, errors.New("no PEM certificate request found")
	}
	csr, err := x509.ParseCertificateRequest(blk.Bytes)
	if err != nil {
		return nil, err
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("certificate request: %w", err)
	}
	pub, ok := csr.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		return nil, errors.New("certificate request: want a P-256 ECDSA key")
	}
	return pub, nil
}

// ParseCert reads the first certificate of a PEM bundle.
func ParseCert(b []byte) (*x509.Certificate, error) { return parseCert(b) }

// WriteNew writes files (path → content) that must not exist yet; names
// ending in "key.pem" are private (0600). Nothing is written if any exists.
func WriteNew(files map[string][]byte) error {
	paths := make([]string, 0, len(files))
	for p := range files {
		paths = append(paths, p)
	}
	slices.Sort(paths)
	for _, p := range paths {
		if _, err := os.Lstat(p); err == nil {
			return fmt.Errorf("%s already exists: move it away or write to another -dir", p)
		} else if !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	for _, p := range paths {
		mode := os.FileMode(0o644)
		if strings.HasSuffix(filepath.Base(p), "key.pem") {
			mode = 0o600
		}
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
		if err != nil {
			return err
		}
		_, err = f.Write(files[p])
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("writing %s: %w", p, err)
		}
	}
	return nil
}

// Config is a node's TLS material: the CA it trusts and its own
// certificate and key. Build it with Load or New. Its certificate may be
// replaced while it is in use (SetCertificate): connections made after
// that present the new one.
type Config struct {
	pool *x509.CertPool
	role Role
	cur  atomic.Pointer[tls.Certificate]
	// Revoked, when set, is asked about every peer certificate that
	// verified: true cuts the peer off.
	Revoked func(*x509.Certificate) bool
	// OptionalClientCert makes ServerConfig accept connections without a
	// client certificate (a presented one must still verify); the
	// services then decide per call (see rpc.Security).
	OptionalClientCert bool
}

// LoadPool reads a CA certificate file into a pool, for clients of the
// HTTP API (`corral -ca-cert`).
func LoadPool(caFile string) (*x509.CertPool, error) {
	b, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("reading the CA certificate: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("%s holds no PEM certificate", caFile)
	}
	return pool, nil
}

// Load reads a CA certificate and a node's certificate and key, and checks
// that the certificate is a corral certificate signed by that CA.
func Load(caFile, certFile, keyFile string) (*Config, error) {
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("reading the CA certificate: %w", err)
	}
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("reading the certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("reading the key: %w", err)
	}
	c, err := New(caPEM, certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("%s with CA %s: %w", certFile, caFile, err)
	}
	return c, nil
}

// New builds a Config from PEM contents (see Load).
func New(caPEM, certPEM, keyPEM []byte) (*Config, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("the CA file holds no PEM certificate")
	}
	c := &Config{pool: pool}
	if err := c.SetCertificate(certPEM, keyPEM); err != nil {
		return nil, err
	}
	return c, nil
}

// SetCertificate replaces this node's certificate and key, after checking
// that it is a corral certificate of the same role signed by the CA.
func (c *Config) SetCertificate(certPEM, keyPEM []byte) error {
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return fmt.Errorf("certificate and key: %w", err)
	}
	leaf := pair.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			return err
		}
		pair.Leaf = leaf
	}
	role, ok := RoleOf(leaf)
	if !ok {
		return errors.New("not a corral node certificate (no corral://server or corral://agent SAN): create one with 'corral tls cert create'")
	}
	if c.role != "" && role != c.role {
		return fmt.Errorf("the new certificate is for role %s, not %s", role, c.role)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: c.pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return fmt.Errorf("the certificate does not verify against the CA: %w", err)
	}
	c.role = role
	c.cur.Store(&pair)
	return nil
}

// Role is the role of this node's own certificate.
func (c *Config) Role() Role { return c.role }

// Leaf is this node's current certificate.
func (c *Config) Leaf() *x509.Certificate { return c.cur.Load().Leaf }

// NotAfter is when this node's certificate expires.
func (c *Config) NotAfter() time.Time { return c.Leaf().NotAfter }

func (c *Config) getCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return c.cur.Load(), nil
}

func (c *Config) getClientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	return c.cur.Load(), nil
}

// ServerConfig is the TLS configuration of a listener: it presents this
// node's certificate and requires a client certificate signed by the CA
// whose role is one of accept (see OptionalClientCert).
func (c *Config) ServerConfig(accept ...Role) *tls.Config {
	auth := tls.RequireAndVerifyClientCert
	if c.OptionalClientCert {
		auth = tls.VerifyClientCertIfGiven
	}
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: c.getCertificate,
		ClientAuth:     auth,
		ClientCAs:      c.pool,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if c.OptionalClientCert {
				// The services check each call, revocation included, and
				// say why they refuse one.
				if len(cs.PeerCertificates) == 0 {
					return nil
				}
				return checkPeerRole(cs, "client", accept)
			}
			return c.checkPeer(cs, "client", accept)
		},
	}
}

// StrictServerConfig is ServerConfig that always requires a client
// certificate (raft), whatever OptionalClientCert says.
func (c *Config) StrictServerConfig(accept ...Role) *tls.Config {
	conf := c.ServerConfig(accept...)
	conf.ClientAuth = tls.RequireAndVerifyClientCert
	conf.VerifyConnection = func(cs tls.ConnectionState) error { return c.checkPeer(cs, "client", accept) }
	return conf
}

// HTTPSConfig is the TLS configuration of a server's HTTP API: it presents
// this node's certificate and asks clients for none (they authenticate
// with bearer tokens).
func (c *Config) HTTPSConfig() *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: c.getCertificate}
}

// ClientConfig is the TLS configuration of a dialer of a node of role
// peer: it presents this node's certificate and requires the peer's to be
// signed by the CA and issued for peer.
func (c *Config) ClientConfig(peer Role) *tls.Config {
	return &tls.Config{
		MinVersion:           tls.VersionTLS12,
		GetClientCertificate: c.getClientCertificate,
		RootCAs:              c.pool,
		ServerName:           peer.ServerName(),
		VerifyConnection:     func(cs tls.ConnectionState) error { return c.checkPeer(cs, "server", []Role{peer}) },
	}
}

// PinnedConfig is the TLS configuration of a node that has no certificate
// yet and knows the cluster only by the SHA-256 of its CA certificate (a
// join token): the server must present a chain that holds a CA with that
// hash, and a server certificate signed by it. It presents no
// certificate.
func PinnedConfig(caHash string) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: true, // verified below against the pinned CA
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			_, err := VerifyPinned(raw, caHash)
			return err
		},
	}
}

// VerifyPinned checks a presented chain against a pinned CA hash and
// returns the CA.
func VerifyPinned(raw [][]byte, caHash string) (*x509.Certificate, error) {
	var certs []*x509.Certificate
	for _, r := range raw {
		c, err := x509.ParseCertificate(r)
		if err != nil {
			return nil, fmt.Errorf("corral: the server sent a malformed certificate: %w", err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("corral: the server presented no certificate")
	}
	var ca *x509.Certificate
	for _, c := range certs[1:] {
		if c.IsCA && Hash(c) == strings.ToLower(caHash) {
			ca = c
		}
	}
	if ca == nil {
		return nil, fmt.Errorf("corral: the server's CA does not match the join token (want CA sha256 %.12s…): wrong -join-token, or not this cluster's server", caHash)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	if _, err := certs[0].Verify(x509.VerifyOptions{Roots: pool, DNSName: RoleServer.ServerName(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		return nil, fmt.Errorf("corral: the server certificate is not signed by the pinned CA: %w", err)
	}
	if r, _ := RoleOf(certs[0]); r != RoleServer {
		return nil, errors.New("corral: the pinned peer is not a corral server")
	}
	return ca, nil
}

// PeerRole is the role of the verified peer certificate of a connection.
func PeerRole(cs tls.ConnectionState) (Role, bool) {
	if len(cs.PeerCertificates) == 0 {
		return "", false
	}
	return RoleOf(cs.PeerCertificates[0])
}

func (c *Config) checkPeer(cs tls.ConnectionState, side string, accept []Role) error {
	if err := checkPeerRole(cs, side, accept); err != nil {
		return err
	}
	if c.Revoked != nil && c.Revoked(cs.PeerCertificates[0]) {
		return fmt.Errorf("corral: the %s certificate (serial %s) has been revoked", side, cs.PeerCertificates[0].SerialNumber.Text(16))
	}
	return nil
}

func checkPeerRole(cs tls.ConnectionState, side string, accept []Role) error {
	if len(cs.PeerCertificates) == 0 {
		return fmt.Errorf("corral: the %s presented no certificate", side)
	}
	role, ok := RoleOf(cs.PeerCertificates[0])
	if !ok {
		return fmt.Errorf("corral: the %s certificate has no corral role", side)
	}
	if !slices.Contains(accept, role) {
		return fmt.Errorf("corral: a %s certificate of role %s is not accepted here (want %v)", side, role, accept)
	}
	return nil
}

// sign creates the certificate tmpl for key, signed by parent's signer,
// and returns it and key as PEM.
func sign(tmpl, parent *x509.Certificate, key, signer *ecdsa.PrivateKey) (certPEM, keyPEM []byte, err error) {
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, signer)
	if err != nil {
		return nil, nil, err
	}
	keyPEM, err = EncodeKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), keyPEM, nil
}

// newKeyAndSerial makes a P-256 key and a random 127-bit serial number.
func newKeyAndSerial() (*ecdsa.PrivateKey, *big.Int, error) {
	key, err := NewKey()
	if err != nil {
		return nil, nil, err
	}
	serial, err := newSerial()
	return key, serial, err
}

func newSerial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
}

// EncodeKey writes a private key as PKCS#8 PEM.
func EncodeKey(key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

func parseCert(b []byte) (*x509.Certificate, error) {
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return nil, errors.New("no PEM certificate found")
		}
		if blk.Type == "CERTIFICATE" {
			return x509.ParseCertificate(blk.Bytes)
		}
	}
}

func parseKey(b []byte) (*ecdsa.PrivateKey, error) {
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return nil, errors.New("no PEM private key found")
		}
		switch blk.Type {
		case "PRIVATE KEY":
			k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
			if err != nil {
				return nil, err
			}
			ek, ok := k.(*ecdsa.PrivateKey)
			if !ok {
				return nil, errors.New("the key is not an ECDSA key")
			}
			return ek, nil
		case "EC PRIVATE KEY":
			return x509.ParseECPrivateKey(blk.Bytes)
		}
	}
}

// WriteSecretFile replaces path with b, readable by the owner only, through
// a temporary file and a rename: a node's keys, certificates and cluster
// secrets are never seen half written.
func WriteSecretFile(path string, b []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

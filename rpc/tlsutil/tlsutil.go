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
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
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
		if u.Scheme == "corral" {
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
}

// Issue creates a key and a certificate for a node, signed by the CA.
// Servers and agents both get server and client usage: servers also dial
// agents and other servers, agents also serve exec and logs.
func (ca *CA) Issue(req CertRequest) (certPEM, keyPEM []byte, err error) {
	if req.Role != RoleServer && req.Role != RoleAgent {
		return nil, nil, fmt.Errorf("unknown certificate role %q: want server or agent", req.Role)
	}
	if req.Validity <= 0 {
		req.Validity = DefaultCertValidity
	}
	uri := req.Role.uri()
	if req.Node != "" {
		if strings.ContainsAny(req.Node, "/ \t\r\n") {
			return nil, nil, fmt.Errorf("invalid node name %q", req.Node)
		}
		uri.Path = "/" + req.Node
	}
	ips, dns := slices.Clone(req.IPs), slices.Clone(req.DNSNames)
	if req.Role == RoleServer && len(ips) == 0 && len(dns) == 0 {
		ips, dns = []net.IP{net.IPv4(127, 0, 0, 1)}, []string{"localhost"}
	}
	if !slices.Contains(dns, req.Role.ServerName()) {
		dns = append([]string{req.Role.ServerName()}, dns...)
	}
	key, serial, err := newKeyAndSerial()
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	notAfter := now.Add(req.Validity)
	if notAfter.After(ca.Cert.NotAfter) {
		notAfter = ca.Cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: req.Role.ServerName(), Organization: []string{"corral"}, OrganizationalUnit: []string{string(req.Role)}},
		NotBefore:    now.Add(-time.Minute),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:     dns,
		IPAddresses:  ips,
		URIs:         []*url.URL{uri},
	}
	return sign(tmpl, ca.Cert, key, ca.Key)
}

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
// certificate and key. Build it with Load.
type Config struct {
	pool *x509.CertPool
	cert tls.Certificate
	leaf *x509.Certificate
	role Role
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
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("certificate and key: %w", err)
	}
	leaf := pair.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			return nil, err
		}
	}
	role, ok := RoleOf(leaf)
	if !ok {
		return nil, errors.New("not a corral node certificate (no corral://server or corral://agent SAN): create one with 'corral tls cert create'")
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return nil, fmt.Errorf("the certificate does not verify against the CA: %w", err)
	}
	return &Config{pool: pool, cert: pair, leaf: leaf, role: role}, nil
}

// Role is the role of this node's own certificate.
func (c *Config) Role() Role { return c.role }

// NotAfter is when this node's certificate expires.
func (c *Config) NotAfter() time.Time { return c.leaf.NotAfter }

// ServerConfig is the TLS configuration of a listener: it presents this
// node's certificate and requires a client certificate signed by the CA
// whose role is one of accept.
func (c *Config) ServerConfig(accept ...Role) *tls.Config {
	return &tls.Config{
		MinVersion:       tls.VersionTLS12,
		Certificates:     []tls.Certificate{c.cert},
		ClientAuth:       tls.RequireAndVerifyClientCert,
		ClientCAs:        c.pool,
		VerifyConnection: func(cs tls.ConnectionState) error { return checkPeerRole(cs, "client", accept) },
	}
}

// HTTPSConfig is the TLS configuration of a server's HTTP API: it presents
// this node's certificate and asks clients for none (they authenticate
// with bearer tokens).
func (c *Config) HTTPSConfig() *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{c.cert}}
}

// ClientConfig is the TLS configuration of a dialer of a node of role
// peer: it presents this node's certificate and requires the peer's to be
// signed by the CA and issued for peer.
func (c *Config) ClientConfig(peer Role) *tls.Config {
	return &tls.Config{
		MinVersion:       tls.VersionTLS12,
		Certificates:     []tls.Certificate{c.cert},
		RootCAs:          c.pool,
		ServerName:       peer.ServerName(),
		VerifyConnection: func(cs tls.ConnectionState) error { return checkPeerRole(cs, "server", []Role{peer}) },
	}
}

// PeerRole is the role of the verified peer certificate of a connection.
func PeerRole(cs tls.ConnectionState) (Role, bool) {
	if len(cs.PeerCertificates) == 0 {
		return "", false
	}
	return RoleOf(cs.PeerCertificates[0])
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
	keyPEM, err = encodeKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), keyPEM, nil
}

// newKeyAndSerial makes a P-256 key and a random 127-bit serial number.
func newKeyAndSerial() (*ecdsa.PrivateKey, *big.Int, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return key, serial, err
}

func encodeKey(key *ecdsa.PrivateKey) ([]byte, error) {
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

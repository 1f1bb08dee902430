package tlsutil_test

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/corral-dev/corral/rpc/tlsutil"
	"github.com/corral-dev/corral/rpc/tlsutil/tlstest"
)

func parse(t *testing.T, b []byte) *x509.Certificate {
	t.Helper()
	blk, _ := pem.Decode(b)
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestIssuedCertificates(t *testing.T) {
	p := tlstest.New(t)
	if !p.CA.Cert.IsCA || p.CA.Cert.MaxPathLen != 0 || !p.CA.Cert.MaxPathLenZero {
		t.Fatalf("CA constraints: %+v", p.CA.Cert)
	}
	srvPEM, _, err := p.CA.Issue(tlsutil.CertRequest{Role: tlsutil.RoleServer})
	if err != nil {
		t.Fatal(err)
	}
	srv := parse(t, srvPEM)
	if got := strings.Join(srv.DNSNames, ","); got != "server.corral,localhost" {
		t.Fatalf("server DNS SANs %q", got)
	}
	if len(srv.IPAddresses) != 1 || !srv.IPAddresses[0].Equal(net.IPv4(127, 0, 0, 1)) {
		t.Fatalf("server IP SANs %v", srv.IPAddresses)
	}
	if r, ok := tlsutil.RoleOf(srv); !ok || r != tlsutil.RoleServer {
		t.Fatalf("server role %q %v", r, ok)
	}
	if len(srv.ExtKeyUsage) != 2 {
		t.Fatalf("ext key usage %v", srv.ExtKeyUsage)
	}

	agtPEM, _, err := p.CA.Issue(tlsutil.CertRequest{Role: tlsutil.RoleAgent, IPs: []net.IP{net.ParseIP("10.0.0.7")}, DNSNames: []string{"gpu7"}})
	if err != nil {
		t.Fatal(err)
	}
	agt := parse(t, agtPEM)
	if got := strings.Join(agt.DNSNames, ","); got != "agent.corral,gpu7" || len(agt.IPAddresses) != 1 {
		t.Fatalf("agent SANs %q %v", got, agt.IPAddresses)
	}
	if r, _ := tlsutil.RoleOf(agt); r != tlsutil.RoleAgent {
		t.Fatalf("agent role %q", r)
	}
	if _, _, err := p.CA.Issue(tlsutil.CertRequest{Role: "admin"}); err == nil {
		t.Fatal("issued a certificate of an unknown role")
	}
	// A certificate never outlives its CA.
	long, _, err := p.CA.Issue(tlsutil.CertRequest{Role: tlsutil.RoleAgent, Validity: 100 * 365 * 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if parse(t, long).NotAfter.After(p.CA.Cert.NotAfter) {
		t.Fatal("certificate outlives its CA")
	}
}

func TestLoadRejectsForeignCertificates(t *testing.T) {
	p, other := tlstest.New(t), tlstest.New(t)
	certPEM, keyPEM, err := other.CA.Issue(tlsutil.CertRequest{Role: tlsutil.RoleAgent})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tlsutil.New(p.CAPEM, certPEM, keyPEM); err == nil || !strings.Contains(err.Error(), "does not verify against the CA") {
		t.Fatalf("cert of another CA: %v", err)
	}
	_, otherKey, _ := other.CA.Issue(tlsutil.CertRequest{Role: tlsutil.RoleAgent})
	if _, err := tlsutil.New(other.CAPEM, certPEM, otherKey); err == nil {
		t.Fatal("accepted a key that is not the certificate's")
	}
	if _, err := tlsutil.New([]byte("junk"), certPEM, keyPEM); err == nil || !strings.Contains(err.Error(), "no PEM certificate") {
		t.Fatalf("junk CA: %v", err)
	}
}

func TestFilesRoundTripAndNoOverwrite(t *testing.T) {
	dir := t.TempDir()
	certPEM, keyPEM, err := tlsutil.NewCA(time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	caFile, caKey := filepath.Join(dir, tlsutil.CAFile), filepath.Join(dir, tlsutil.CAKeyFile)
	if err := tlsutil.WriteNew(map[string][]byte{caFile: certPEM, caKey: keyPEM}); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(caKey); fi.Mode().Perm() != 0o600 {
		t.Fatalf("key mode %v", fi.Mode())
	}
	if fi, _ := os.Stat(caFile); fi.Mode().Perm() != 0o644 {
		t.Fatalf("cert mode %v", fi.Mode())
	}
	err = tlsutil.WriteNew(map[string][]byte{filepath.Join(dir, "new.pem"): certPEM, caKey: []byte("x")})
	if err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("overwrite: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "new.pem")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("a refused write left a file behind")
	}
	ca, err := tlsutil.LoadCA(caFile, caKey)
	if err != nil {
		t.Fatal(err)
	}
	c, k, err := ca.Issue(tlsutil.CertRequest{Role: tlsutil.RoleServer})
	if err != nil {
		t.Fatal(err)
	}
	cf, kf := filepath.Join(dir, "server-cert.pem"), filepath.Join(dir, "server-key.pem")
	if err := tlsutil.WriteNew(map[string][]byte{cf: c, kf: k}); err != nil {
		t.Fatal(err)
	}
	if _, err := tlsutil.Load(caFile, cf, kf); err != nil {
		t.Fatal(err)
	}
	if _, err := tlsutil.LoadCA(cf, kf); err == nil || !strings.Contains(err.Error(), "not a CA") {
		t.Fatalf("node cert as CA: %v", err)
	}
}

// handshake runs one TLS handshake over loopback TCP (buffered, so that
// both sides may write an alert at once) and returns both sides' errors.
func handshake(srv, cli *tls.Config) (serverErr, clientErr error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err, err
	}
	defer l.Close()
	b, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		return err, err
	}
	a, err := l.Accept()
	if err != nil {
		return err, err
	}
	deadline := time.Now().Add(10 * time.Second)
	a.SetDeadline(deadline)
	b.SetDeadline(deadline)
	done := make(chan error, 1)
	go func() {
		s := tls.Server(a, srv)
		err := s.Handshake()
		if err == nil {
			_, err = io.ReadFull(s, make([]byte, 1))
		}
		a.Close()
		done <- err
	}()
	c := tls.Client(b, cli)
	clientErr = c.Handshake()
	if clientErr == nil {
		_, clientErr = c.Write([]byte{1})
	}
	b.Close()
	return <-done, clientErr
}

func TestMutualTLSRoles(t *testing.T) {
	p, other := tlstest.New(t), tlstest.New(t)
	server, agent := p.Node(t, tlsutil.RoleServer, ""), p.Node(t, tlsutil.RoleAgent, "")
	foreign := other.Node(t, tlsutil.RoleAgent, "")
	for _, tc := range []struct {
		name     string
		srv, cli *tls.Config
		ok       bool
	}{
		{"agent dials server", server.ServerConfig(tlsutil.RoleAgent, tlsutil.RoleServer), agent.ClientConfig(tlsutil.RoleServer), true},
		{"server dials server", server.ServerConfig(tlsutil.RoleAgent, tlsutil.RoleServer), server.ClientConfig(tlsutil.RoleServer), true},
		{"server dials agent", agent.ServerConfig(tlsutil.RoleServer), server.ClientConfig(tlsutil.RoleAgent), true},
		{"agent dials agent", agent.ServerConfig(tlsutil.RoleServer), agent.ClientConfig(tlsutil.RoleAgent), false},
		{"agent poses as server", agent.ServerConfig(tlsutil.RoleAgent), agent.ClientConfig(tlsutil.RoleServer), false},
		{"foreign CA dials server", server.ServerConfig(tlsutil.RoleAgent, tlsutil.RoleServer), foreign.ClientConfig(tlsutil.RoleServer), false},
		{"server of foreign CA", foreign.ServerConfig(tlsutil.RoleServer), server.ClientConfig(tlsutil.RoleAgent), false},
		{"no client certificate", server.ServerConfig(tlsutil.RoleAgent), &tls.Config{RootCAs: server.ClientConfig(tlsutil.RoleServer).RootCAs, ServerName: "server.corral"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			serr, cerr := handshake(tc.srv, tc.cli)
			if tc.ok && (serr != nil || cerr != nil) {
				t.Fatalf("server: %v, client: %v", serr, cerr)
			}
			if !tc.ok && serr == nil && cerr == nil {
				t.Fatal("handshake succeeded")
			}
		})
	}
	if v := server.ServerConfig().MinVersion; v != tls.VersionTLS12 {
		t.Fatalf("min version %x", v)
	}
}

// Package tlstest makes a throwaway corral CA and node TLS configurations
// in memory, for tests.
package tlstest

import (
	"testing"

	"github.com/corral-dev/corral/rpc/tlsutil"
)

// PKI is a CA that issues node configurations.
type PKI struct {
	CAPEM []byte
	CA    *tlsutil.CA
}

// New creates a CA.
func New(t testing.TB) *PKI {
	t.Helper()
	certPEM, keyPEM, err := tlsutil.NewCA(0)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := tlsutil.ParseCA(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return &PKI{CAPEM: certPEM, CA: ca}
}

// Node issues a certificate of role, bound to node when it is not empty,
// and returns the TLS configuration that trusts this CA.
func (p *PKI) Node(t testing.TB, role tlsutil.Role, node string) *tlsutil.Config {
	t.Helper()
	certPEM, keyPEM, err := p.CA.Issue(tlsutil.CertRequest{Role: role, Node: node})
	if err != nil {
		t.Fatal(err)
	}
	c, err := tlsutil.New(p.CAPEM, certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

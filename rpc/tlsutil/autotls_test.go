package tlsutil_test

import (
	"crypto/tls"
	"strings"
	"testing"
	"time"

	"github.com/corral-dev/corral/rpc/tlsutil"
)

// TestCSRAndPinning: a certificate signed from a CSR carries the node and
// ID; a client that pins the CA by hash accepts the server's chain and
// refuses another CA's; a certificate can be swapped while in use.
func TestCSRAndPinning(t *testing.T) {
	caPEM, caKeyPEM, err := tlsutil.NewCA(0)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := tlsutil.ParseCA(caPEM, caKeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := tlsutil.NewKey()
	csr, err := tlsutil.NewCSR(key)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := tlsutil.ParseCSR(csr)
	if err != nil || !pub.Equal(&key.PublicKey) {
		t.Fatalf("CSR: %v", err)
	}
	if _, err := tlsutil.ParseCSR(append([]byte("x"), csr[5:]...)); err == nil {
		t.Fatal("a mangled CSR parsed")
	}
	certPEM, err := ca.IssueFor(tlsutil.CertRequest{Role: tlsutil.RoleAgent, Node: "gpu-01", ID: "1234-abcd", Validity: time.Hour}, pub)
	if err != nil {
		t.Fatal(err)
	}
	leaf := parse(t, certPEM)
	if tlsutil.NodeOf(leaf) != "gpu-01" || tlsutil.IDOf(leaf) != "1234-abcd" {
		t.Fatalf("URIs %v", leaf.URIs)
	}
	if r, _ := tlsutil.RoleOf(leaf); r != tlsutil.RoleAgent {
		t.Fatalf("role %s", r)
	}
	if _, err := ca.IssueFor(tlsutil.CertRequest{Role: tlsutil.RoleAgent, ID: "a/b"}, pub); err == nil {
		t.Fatal("an ID with a slash was signed")
	}

	srvPEM, srvKey, err := ca.Issue(tlsutil.CertRequest{Role: tlsutil.RoleServer})
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(append(srvPEM, caPEM...), srvKey)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tlsutil.VerifyPinned(pair.Certificate, tlsutil.Hash(ca.Cert)); err != nil {
		t.Fatalf("pinned: %v", err)
	}
	if _, err := tlsutil.VerifyPinned(pair.Certificate, strings.Repeat("0", 64)); err == nil || !strings.Contains(err.Error(), "does not match the join token") {
		t.Fatalf("another hash: %v", err)
	}
	if _, err := tlsutil.VerifyPinned(pair.Certificate[:1], tlsutil.Hash(ca.Cert)); err == nil {
		t.Fatal("a chain without the CA was accepted")
	}

	keyPEM, _ := tlsutil.EncodeKey(key)
	conf, err := tlsutil.New(caPEM, certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	key2, _ := tlsutil.NewKey()
	cert2, _ := ca.IssueFor(tlsutil.CertRequest{Role: tlsutil.RoleAgent, Node: "gpu-01", ID: "1234-abcd"}, &key2.PublicKey)
	key2PEM, _ := tlsutil.EncodeKey(key2)
	if err := conf.SetCertificate(cert2, key2PEM); err != nil {
		t.Fatal(err)
	}
	if conf.Leaf().SerialNumber.Cmp(leaf.SerialNumber) == 0 {
		t.Fatal("the certificate was not swapped")
	}
	if err := conf.SetCertificate(srvPEM, srvKey); err == nil {
		t.Fatal("an agent config took a server certificate")
	}
}

package main

import (
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/corral-dev/corral/gossip"
	"github.com/corral-dev/corral/rpc/tlsutil"
)

func TestKeygenAndTLSFiles(t *testing.T) {
	r := mustRun(t, "http://127.0.0.1:1", 0, "keygen")
	if _, err := gossip.ParseKey(r.stdout); err != nil {
		t.Fatalf("keygen printed %q: %v", r.stdout, err)
	}
	dir := t.TempDir()
	mustRun(t, "", 0, "tls", "ca", "create", "-dir", dir)
	ca, key := filepath.Join(dir, tlsutil.CAFile), filepath.Join(dir, tlsutil.CAKeyFile)
	if fi, err := os.Stat(key); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("CA key: %v %v", fi, err)
	}
	// A second CA in the same place is refused, nothing overwritten.
	if r := runCLI(t, "", "tls", "ca", "create", "-dir", dir); r.code != 1 || !strings.Contains(r.stderr, "already exists") {
		t.Fatalf("second CA: %+v", r)
	}
	for i, role := range []string{"server", "server", "agent"} {
		r := mustRun(t, "", 0, "tls", "cert", "create", "-"+role, "-dir", dir, "-ca", ca, "-ca-key", key, "-ip", "10.0.0.1")
		n := map[int]string{0: "0", 1: "1", 2: "0"}[i]
		cf := filepath.Join(dir, "corral-"+role+"-"+n+".pem")
		if !strings.Contains(r.stdout, cf) {
			t.Fatalf("stdout %q, want %s", r.stdout, cf)
		}
		conf, err := tlsutil.Load(ca, cf, strings.TrimSuffix(cf, ".pem")+"-key.pem")
		if err != nil {
			t.Fatal(err)
		}
		if string(conf.Role()) != role {
			t.Fatalf("%s has role %s", cf, conf.Role())
		}
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"tls", "cert", "create", "-dir", dir}, "give exactly one of -server and -agent"},
		{[]string{"tls", "cert", "create", "-server", "-agent"}, "give exactly one of -server and -agent"},
		{[]string{"tls", "cert", "create", "-agent", "-ip", "nope"}, `-ip "nope" is not an IP address`},
		{[]string{"tls", "ca", "create", "-days", "0"}, "-days must be positive"},
		{[]string{"tls", "ca", "make"}, "want 'corral tls ca create'"},
		{[]string{"keygen", "extra"}, `unexpected argument "extra"`},
		{[]string{"tls", "cert", "create", "-server", "-node", "n1"}, "-node binds agent certificates only"},
		{[]string{"session", "list", "-ca-cert", filepath.Join(dir, "nope.pem")}, "-ca-cert: reading the CA certificate"},
	} {
		r := runCLI(t, "", tc.args...)
		if r.code != 2 || !strings.Contains(r.stderr, tc.want) || strings.Count(r.stderr, "\n") != 1 {
			t.Fatalf("%v: exit %d, stderr %q; want 2 and %q", tc.args, r.code, r.stderr, tc.want)
		}
	}
	r = mustRun(t, "", 0, "tls", "cert", "create", "-agent", "-node", "gpu-07", "-dir", dir, "-ca", ca, "-ca-key", key)
	cf := filepath.Join(dir, "corral-agent-1.pem")
	if !strings.Contains(r.stdout, cf) {
		t.Fatalf("stdout %q, want %s", r.stdout, cf)
	}
	b, _ := os.ReadFile(cf)
	blk, _ := pem.Decode(b)
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil || tlsutil.NodeOf(cert) != "gpu-07" {
		t.Fatalf("node of %s: %q, %v", cf, tlsutil.NodeOf(cert), err)
	}
	if r := runCLI(t, "", "tls", "cert", "create", "-agent", "-dir", dir, "-ca", filepath.Join(dir, "missing.pem")); r.code != 1 || !strings.Contains(r.stderr, "missing.pem") {
		t.Fatalf("missing CA: %+v", r)
	}
}

func TestDaemonSecurityFlags(t *testing.T) {
	dir := t.TempDir()
	mustRun(t, "", 0, "tls", "ca", "create", "-dir", dir)
	mustRun(t, "", 0, "tls", "cert", "create", "-agent", "-dir", dir, "-ca", filepath.Join(dir, tlsutil.CAFile), "-ca-key", filepath.Join(dir, tlsutil.CAKeyFile))
	ca, cert, key := filepath.Join(dir, tlsutil.CAFile), filepath.Join(dir, "corral-agent-0.pem"), filepath.Join(dir, "corral-agent-0-key.pem")

	if _, err := parseDaemonFlags("server", []string{"-tls-http"}); err == nil || !strings.Contains(err.Error(), "-tls-http needs") {
		t.Fatalf("-tls-http without TLS: %v", err)
	}
	f, err := parseDaemonFlags("server", []string{"-tls-ca", ca})
	if err == nil || !strings.Contains(err.Error(), "all of -tls-ca, -tls-cert and -tls-key") {
		t.Fatalf("partial TLS flags: %v %v", f, err)
	}
	f, err = parseDaemonFlags("server", []string{"-tls-ca", ca, "-tls-cert", cert, "-tls-key", key, "-encrypt", "c2hvcnQ="})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := f.security("server"); err == nil || !strings.Contains(err.Error(), "-encrypt") {
		t.Fatalf("short gossip key: %v", err)
	}
	f.sec.encrypt = ""
	if _, _, err := f.security("server"); err == nil || !strings.Contains(err.Error(), "was issued for role agent; a server needs one") {
		t.Fatalf("agent cert on a server: %v", err)
	}
	f, err = parseDaemonFlags("agent", []string{"-join", "127.0.0.1:1", "-tls-ca", ca, "-tls-cert", cert, "-tls-key", key, "-join-token", "tok"})
	if err != nil {
		t.Fatal(err)
	}
	_, sec, err := f.security("agent")
	if err != nil || sec.TLS == nil || sec.JoinToken != "tok" {
		t.Fatalf("agent security: %+v %v", sec, err)
	}
}

// TestAutoTLSFlags: a single server makes its own join token; an agent's
// token without -tls-* must be a cluster join token.
func TestAutoTLSFlags(t *testing.T) {
	t.Setenv("CORRAL_JOIN_TOKEN", "")
	if _, err := parseDaemonFlags("server", []string{"-join-token", "secret"}); err == nil || !strings.Contains(err.Error(), "creates its own join token") {
		t.Fatalf("-join-token on a single server: %v", err)
	}
	if _, err := parseDaemonFlags("server", []string{"-join-token", "secret", "-bootstrap-expect", "3", "-join", "127.0.0.1:1"}); err == nil || !strings.Contains(err.Error(), "<ca-sha256-hex>:<secret>") {
		t.Fatalf("a plain secret as a server's join token: %v", err)
	}
	if _, err := parseDaemonFlags("server", []string{"-join-token", strings.Repeat("ab", 32) + ":s", "-bootstrap-expect", "3", "-join", "127.0.0.1:1"}); err != nil {
		t.Fatalf("the servers' token: %v", err)
	}
	if _, err := parseDaemonFlags("server", []string{"-join-token", "secret", "-bootstrap-expect", "3", "-insecure"}); err != nil {
		t.Fatalf("a plaintext cluster's secret: %v", err)
	}
	if _, err := parseDaemonFlags("agent", []string{"-join", "127.0.0.1:1", "-join-token", "tok"}); err == nil || !strings.Contains(err.Error(), "<ca-sha256-hex>:<secret>") {
		t.Fatalf("a malformed join token: %v", err)
	}
	f, err := parseDaemonFlags("agent", []string{"-join", "127.0.0.1:1", "-join-token", strings.Repeat("ab", 32) + ":s3cret", "-server", "10.0.0.1:8641"})
	if err != nil || f.enrollAddr != "10.0.0.1:8641" {
		t.Fatalf("agent with a join token: %+v %v", f, err)
	}
}

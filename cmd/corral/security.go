package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/corral-dev/corral/gossip"
	"github.com/corral-dev/corral/rpc/tlsutil"
)

// keygen prints a new gossip encryption key for -encrypt.
func (c *cli) keygen(_ context.Context, args []string) error {
	f := c.newLocalFlags("keygen", "", "Print a new random 32-byte gossip encryption key (base64) for 'corral server|agent -encrypt'.")
	if err := f.parseNone(args); err != nil {
		return err
	}
	k, err := gossip.GenerateKey()
	if err != nil {
		return err
	}
	fmt.Fprintln(c.stdout, k)
	return nil
}

var tlsCommands = []command{
	{"ca", "create [flags]", "create the cluster's certificate authority (corral-ca.pem, corral-ca-key.pem)", (*cli).tlsCA},
	{"cert", "create -server|-agent [flags]", "issue a server or agent certificate signed by the CA", (*cli).tlsCert},
}

func (c *cli) tlsCA(_ context.Context, args []string) error {
	f := c.newLocalFlags("tls ca create", "[flags]", "Create the cluster's certificate authority in -dir: "+tlsutil.CAFile+" (give it to every node) and "+tlsutil.CAKeyFile+" (keep it safe; only 'tls cert create' needs it).")
	dir := f.String("dir", ".", "directory to write the files to")
	days := f.Int("days", int(tlsutil.DefaultCAValidity/(24*time.Hour)), "validity in days")
	if err := f.parseCreate(args, "corral tls ca create", days); err != nil {
		return err
	}
	certPEM, keyPEM, err := tlsutil.NewCA(time.Duration(*days) * 24 * time.Hour)
	if err != nil {
		return err
	}
	cf, kf := filepath.Join(*dir, tlsutil.CAFile), filepath.Join(*dir, tlsutil.CAKeyFile)
	if err := tlsutil.WriteNew(map[string][]byte{cf: certPEM, kf: keyPEM}); err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "wrote %s and %s\n", cf, kf)
	return nil
}

func (c *cli) tlsCert(_ context.Context, args []string) error {
	f := c.newLocalFlags("tls cert create", "-server|-agent [flags]", "Issue a node certificate signed by the CA. Files go to -dir as corral-ROLE-N.pem and corral-ROLE-N-key.pem, N the first free number.")
	isServer := f.Bool("server", false, "a server certificate")
	isAgent := f.Bool("agent", false, "an agent certificate")
	dir := f.String("dir", ".", "directory to write the files to")
	caFile := f.String("ca", tlsutil.CAFile, "CA certificate")
	caKey := f.String("ca-key", tlsutil.CAKeyFile, "CA key")
	days := f.Int("days", int(tlsutil.DefaultCertValidity/(24*time.Hour)), "validity in days")
	node := f.String("node", "", "agents: bind the certificate to this node name (the agent's -name); it may then act only as that agent")
	var ips, dns listFlag
	f.Var(&ips, "ip", "extra IP address SAN (repeatable; servers default to 127.0.0.1)")
	f.Var(&dns, "dns", "extra DNS name SAN (repeatable; servers default to localhost)")
	if err := f.parseCreate(args, "corral tls cert create -server|-agent", days); err != nil {
		return err
	}
	if *isServer == *isAgent {
		return f.usageErr("give exactly one of -server and -agent")
	}
	req := tlsutil.CertRequest{Role: tlsutil.RoleAgent, DNSNames: dns, Validity: time.Duration(*days) * 24 * time.Hour, Node: *node}
	if *isServer {
		if *node != "" {
			return f.usageErr("-node binds agent certificates only")
		}
		req.Role = tlsutil.RoleServer
	}
	for _, s := range ips {
		ip := net.ParseIP(s)
		if ip == nil {
			return f.usageErr("-ip %q is not an IP address", s)
		}
		req.IPs = append(req.IPs, ip)
	}
	ca, err := tlsutil.LoadCA(*caFile, *caKey)
	if err != nil {
		return err
	}
	certPEM, keyPEM, err := ca.Issue(req)
	if err != nil {
		return err
	}
	for n := 0; ; n++ {
		base := filepath.Join(*dir, fmt.Sprintf("corral-%s-%d", req.Role, n))
		cf, kf := base+".pem", base+"-key.pem"
		if exists(cf) || exists(kf) {
			continue
		}
		if err := tlsutil.WriteNew(map[string][]byte{cf: certPEM, kf: keyPEM}); err != nil {
			return err
		}
		fmt.Fprintf(c.stdout, "wrote %s and %s\n", cf, kf)
		return nil
	}
}

// parseCreate parses a `corral tls ... create` command: its one word
// "create", no other argument, and a positive -days.
func (f *flagSet) parseCreate(args []string, usage string, days *int) error {
	pos, rest, err := f.parse(args, 1)
	if err != nil {
		return err
	}
	if len(pos) == 0 || pos[0] != "create" {
		return f.usageErr("want '%s'", usage)
	}
	if len(rest) > 0 {
		return f.usageErr("unexpected argument %q", rest[0])
	}
	if *days <= 0 {
		return f.usageErr("-days must be positive, got %d", *days)
	}
	return nil
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

// securityFlags are the daemon flags that secure a cluster.
type securityFlags struct {
	encrypt, tlsCA, tlsCert, tlsKey, joinToken string
}

// check validates the combination; each file is read later, once.
func (s *securityFlags) check() error {
	n := 0
	for _, v := range []string{s.tlsCA, s.tlsCert, s.tlsKey} {
		if v != "" {
			n++
		}
	}
	if n != 0 && n != 3 {
		return fmt.Errorf("TLS needs all of -tls-ca, -tls-cert and -tls-key (got %d of 3)", n)
	}
	if strings.ContainsAny(s.joinToken, " \t\r\n") {
		return fmt.Errorf("-join-token must not contain white space")
	}
	return nil
}

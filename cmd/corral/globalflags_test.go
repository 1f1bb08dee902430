package main

import (
	"strings"
	"testing"
)

// TestGlobalFlagsBeforeTheCommand: -token, -address (and -ca-cert) given
// before the command reach it; a flag after the command wins.
func TestGlobalFlagsBeforeTheCommand(t *testing.T) {
	srvs, token := startServers(t, 1)
	addr := "http://" + srvs[0].HTTPAddr()
	// runCLI's environment points nowhere: the address comes from the flag.
	if r := mustRun(t, "http://127.0.0.1:1", 0, "-token", token, "-address", addr, "user", "list"); !strings.Contains(r.stdout, "admin") {
		t.Fatalf("user list: %q", r.stdout)
	}
	mustRun(t, "http://127.0.0.1:1", 0, "-token="+token, "--address="+addr, "server", "members")
	if r := mustRun(t, addr, 1, "user", "list"); !strings.Contains(r.stderr, "invalid credentials") {
		t.Fatalf("no token: %q", r.stderr)
	}
	if r := mustRun(t, addr, 1, "-token", token, "user", "list", "-token", "AKX.bad"); !strings.Contains(r.stderr, "invalid credentials") {
		t.Fatalf("the command's own -token should win: %q", r.stderr)
	}
	if r := mustRun(t, addr, 2, "-token"); !strings.Contains(r.stderr, "flag -token needs a value") {
		t.Fatalf("-token without a value: %q", r.stderr)
	}
}

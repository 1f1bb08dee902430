package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestVersionAndAdminToken: the version set by -ldflags is the one of
// `corral version`, of the agent's registration (node status, /v1/agents);
// `corral server` with stdout not a terminal keeps the first admin token
// in a 0600 file of its data dir and does not print it.
func TestVersionAndAdminToken(t *testing.T) {
	if r := mustCLI(t, "", 0, "version"); strings.TrimSpace(r.stdout) != "corral "+e2eVersion {
		t.Fatalf("corral version: %q, want corral %s", r.stdout, e2eVersion)
	}
	ports := serverPorts{http: freePort(t), rpc: freePort(t), serf: freePort(t)}
	addr := "http://" + ports.http
	dir := t.TempDir()
	srv := startServerProc(t, dir, ports)
	tok, _ := apiTokens.Load(addr)
	if out := srv.output(); strings.Contains(out, tok.(string)) || !strings.Contains(out, filepath.Join(dir, "admin-token")) {
		t.Fatalf("server output (stdout is a pipe) shows the admin token or not its file:\n%s", out)
	}
	fi, err := os.Stat(filepath.Join(dir, "admin-token"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("admin token file: %v, mode %v, want 0600", err, fi.Mode())
	}
	agentDir := t.TempDir()
	reapKernels(t, agentDir)
	start(t, "agent", append([]string{"agent", "-data-dir", agentDir, "-rpc", freePort(t), "-serf", freePort(t), "-fast-gossip"}, agentJoin(t, ports)...)...)
	agentAlive(t, addr)
	a, err := agentStatus(t, addr)
	if err != nil {
		t.Fatal(err)
	}
	if a.Version != e2eVersion {
		t.Fatalf("/v1/agents: agent version %q, want %s", a.Version, e2eVersion)
	}
	if r := mustCLI(t, addr, 0, "node", "status", a.ID); !strings.Contains(r.stdout, e2eVersion) || strings.Contains(r.stdout, "Version:  dev") {
		t.Fatalf("node status does not show version %s:\n%s", e2eVersion, r.stdout)
	}
}

package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/creack/pty"
)

// startLogged starts a daemon with its stderr (the log) kept apart from
// its stdout (the banner and the join commands).
func startLogged(t *testing.T, name string, args ...string) (p *proc, stderr *syncBuffer) {
	t.Helper()
	p = &proc{name: name, log: &syncBuffer{}, done: make(chan struct{})}
	stderr = &syncBuffer{}
	p.cmd = exec.Command(corralBin, args...)
	p.cmd.Stdout, p.cmd.Stderr = p.log, stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.stop(10 * time.Second)
		if t.Failed() {
			t.Logf("--- %s stdout ---\n%s\n--- %s stderr ---\n%s", name, p.log.String(), name, stderr.String())
		}
	})
	return p, stderr
}

var uuidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// TestLogFormatJSON starts a server from a config file that asks for JSON
// logs at debug level, and an agent with a driver plugin and the same
// flags, lets the agent join, and stops both: every line either wrote on
// stderr is one JSON object with time, level and msg, raft's, serf's,
// memberlist's and go-plugin's lines among them (no "[WARN] raft:" or
// "[DEBUG] memberlist:" text), and the server's and agent's IDs are
// logged whole.
func TestLogFormatJSON(t *testing.T) {
	ports := serverPorts{http: freePort(t), rpc: freePort(t), serf: freePort(t)}
	addr := "http://" + ports.http
	dir := t.TempDir()
	conf := filepath.Join(t.TempDir(), "server.hcl")
	if err := os.WriteFile(conf, fmt.Appendf(nil, `# a server of one, logging JSON
data_dir    = %q
http        = %q
rpc         = %q
serf        = %q
fast_gossip = true
log_format  = "json"
log_level   = "debug"
`, dir, ports.http, ports.rpc, ports.serf), 0o600); err != nil {
		t.Fatal(err)
	}
	// -log-level on the command line wins over the file's.
	srv, srvLog := startLogged(t, "server", "server", "-config", conf, "-log-level", "debug")
	eventually(t, 60*time.Second, "server writes the admin token and prints the join token", func() error {
		jt, ok := joinTokenIn(srv.output())
		if !ok {
			return fmt.Errorf("no join token line yet")
		}
		tok, ok := adminTokenIn(dir)
		if !ok {
			return fmt.Errorf("no admin token file yet")
		}
		apiTokens.Store(addr, tok)
		joinTokens.Store(ports.serf, jt)
		return nil
	})

	pluginDir, _ := buildExamplePlugin(t)
	agentDir := t.TempDir()
	reapKernels(t, agentDir)
	agt, agtLog := startLogged(t, "agent", append([]string{"agent", "-data-dir", agentDir, "-rpc", freePort(t), "-serf", freePort(t),
		"-fast-gossip", "-plugin-dir", pluginDir, "-log-format", "json", "-log-level", "debug"}, agentJoin(t, ports)...)...)
	agentAlive(t, addr)
	eventually(t, 60*time.Second, "the agent logs its plugin", func() error {
		if !strings.Contains(agtLog.String(), "loaded driver plugin") {
			return fmt.Errorf("no 'loaded driver plugin' line yet")
		}
		return nil
	})
	agt.stop(30 * time.Second)
	srv.stop(30 * time.Second)

	components := map[string]int{}
	ids := map[string]string{}
	for _, l := range []struct {
		name string
		buf  *syncBuffer
	}{{"server", srvLog}, {"agent", agtLog}} {
		out := l.buf.String()
		if strings.TrimSpace(out) == "" {
			t.Fatalf("%s logged nothing", l.name)
		}
		for i, line := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
			var rec map[string]any
			if err := json.Unmarshal([]byte(line), &rec); err != nil {
				t.Fatalf("%s stderr line %d is not JSON (%v): %s", l.name, i+1, err, line)
			}
			for _, k := range []string{"time", "level", "msg"} {
				if _, ok := rec[k].(string); !ok {
					t.Fatalf("%s stderr line %d has no %s: %s", l.name, i+1, k, line)
				}
			}
			if msg := rec["msg"].(string); regexp.MustCompile(`^\[(TRACE|DEBUG|INFO|WARN|ERR|ERROR)\]`).MatchString(msg) {
				t.Errorf("%s stderr line %d carries a library's raw level: %s", l.name, i+1, line)
			}
			if c, ok := rec["component"].(string); ok {
				components[strings.SplitN(c, ".", 2)[0]]++
			}
			if _, ok := rec["plugin"]; ok && regexp.MustCompile(`waiting for RPC address|using plugin`).MatchString(rec["msg"].(string)) {
				components["go-plugin"]++ // go-plugin's own lines, through the loader's hclog adapter
			}
			for _, k := range []string{"server_id", "agent_id"} {
				if v, ok := rec[k].(string); ok {
					ids[k] = v
					if !uuidRE.MatchString(v) {
						t.Errorf("%s stderr line %d: %s %q is not a whole ID: %s", l.name, i+1, k, v, line)
					}
				}
			}
		}
	}
	for _, c := range []string{"raft", "serf", "memberlist", "go-plugin"} {
		if components[c] == 0 {
			t.Errorf("no JSON line of %s (lines by component: %v)", c, components)
		}
	}
	if ids["server_id"] == "" || ids["agent_id"] == "" {
		t.Errorf("no server_id or agent_id in the logs: %v", ids)
	}
	t.Logf("JSON lines by component: %v", components)
}

// TestAdminTokenOnTerminal: a server whose stdout is a terminal prints
// the first admin key (the one in its 0600 file); with stdout a pipe it
// prints only the file's path (TestVersionEverywhere).
func TestAdminTokenOnTerminal(t *testing.T) {
	ptmx, tty, err := pty.Open()
	if err != nil {
		t.Skip("no pseudo-terminal here:", err)
	}
	defer ptmx.Close()
	ports := serverPorts{http: freePort(t), rpc: freePort(t), serf: freePort(t)}
	dir := t.TempDir()
	p := &proc{name: "server", log: &syncBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(corralBin, "server", "-data-dir", dir, "-http", ports.http, "-rpc", ports.rpc, "-serf", ports.serf, "-fast-gossip")
	stderr := &syncBuffer{}
	p.cmd.Stdout, p.cmd.Stderr = tty, stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	tty.Close()
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	go func() { _, _ = io.Copy(p.log, ptmx) }()
	t.Cleanup(func() {
		p.stop(10 * time.Second)
		if t.Failed() {
			t.Logf("--- server terminal ---\n%s\n--- stderr ---\n%s", p.log.String(), stderr.String())
		}
	})
	var tok string
	eventually(t, 60*time.Second, "the server prints the admin key on its terminal", func() error {
		var ok bool
		if tok, ok = adminTokenIn(dir); !ok {
			return fmt.Errorf("no admin token file yet")
		}
		if !strings.Contains(p.log.String(), "export CORRAL_TOKEN="+tok) {
			return fmt.Errorf("no export line with the file's key yet")
		}
		return nil
	})
	fi, err := os.Stat(filepath.Join(dir, "admin-token"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("admin token file: %v, mode %v, want 0600", err, fi.Mode())
	}
	if strings.Contains(stderr.String(), tok) {
		t.Errorf("the admin key is in the log:\n%s", stderr.String())
	}
}

// Package packaging holds what `make dist` puts into the .deb and the
// tarball: systemd units, example configs, the nfpm config and the
// package's scripts. Its tests check them; the example configs are
// parsed by cmd/corral's TestExampleConfigs.
package packaging

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// directives reads a unit file's Key=Value lines (the last value of each
// key, and every value of repeatable ones joined by "\n").
func directives(t *testing.T, path string) map[string]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, "[") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("%s: not a directive: %q", path, line)
		}
		if out[k] != "" {
			v = out[k] + "\n" + v
		}
		out[k] = v
	}
	return out
}

// TestUnits: the units say what docs/operator.md promises: the server
// sandboxed, the agent leaving its kernels running on stop and without
// a mount namespace of its own; both read the example configs.
func TestUnits(t *testing.T) {
	srv := directives(t, "corral-server.service")
	for k, want := range map[string]string{
		"ExecStart": "/usr/bin/corral server -config /etc/corral/server.hcl", "User": "corral",
		"ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes", "NoNewPrivileges": "yes",
		"CapabilityBoundingSet": "", "LimitNOFILE": "65536", "StateDirectory": "corral/server", "StateDirectoryMode": "0700",
		"EnvironmentFile": "-/etc/default/corral",
	} {
		if got, ok := srv[k]; !ok || got != want {
			t.Errorf("corral-server.service: %s=%q, want %q", k, got, want)
		}
	}
	agt := directives(t, "corral-agent.service")
	for k, want := range map[string]string{
		"ExecStart": "/usr/bin/corral agent -config /etc/corral/agent.hcl", "KillMode": "process",
		"LimitNOFILE": "1048576", "TasksMax": "infinity", "StateDirectory": "corral/agent", "EnvironmentFile": "-/etc/default/corral",
	} {
		if got := agt[k]; got != want {
			t.Errorf("corral-agent.service: %s=%q, want %q", k, got, want)
		}
	}
	// Any of these gives the agent a mount namespace: its kernels' mounts
	// would be lost to the restarted agent.
	for _, k := range []string{"ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices", "ReadOnlyPaths", "ReadWritePaths",
		"InaccessiblePaths", "ProtectKernelTunables", "ProtectKernelModules", "ProtectControlGroups", "MountFlags", "User", "DynamicUser"} {
		if v, ok := agt[k]; ok {
			t.Errorf("corral-agent.service sets %s=%s", k, v)
		}
	}
}

// TestUnitsVerify runs systemd-analyze verify on both units, with
// ExecStart pointing at an executable that exists here.
func TestUnitsVerify(t *testing.T) {
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Skip("no systemd-analyze here (apt install systemd)")
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	var units []string
	for _, u := range []string{"corral-server.service", "corral-agent.service"} {
		b, err := os.ReadFile(u)
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, u)
		if err := os.WriteFile(p, []byte(strings.ReplaceAll(string(b), "/usr/bin/corral", self)), 0o644); err != nil {
			t.Fatal(err)
		}
		units = append(units, p)
	}
	out, err := exec.Command("systemd-analyze", append([]string{"verify"}, units...)...).CombinedOutput()
	// verify exits 0 even for an unknown or bad directive: any line about
	// our files is a finding.
	if err != nil || strings.Contains(string(out), dir) {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// TestNfpmConfig: every file the package takes exists (the binaries come
// from make build), and the package's scripts are valid sh.
func TestNfpmConfig(t *testing.T) {
	b, err := os.ReadFile("nfpm.yaml")
	if err != nil {
		t.Fatal(err)
	}
	srcs := regexp.MustCompile(`(?m)^\s*-?\s*src:\s*(\S+)`).FindAllStringSubmatch(string(b), -1)
	if len(srcs) < 10 {
		t.Fatalf("nfpm.yaml names %d files", len(srcs))
	}
	for _, m := range srcs {
		if strings.HasPrefix(m[1], "bin/") {
			continue
		}
		if _, err := os.Stat(filepath.Join("..", m[1])); err != nil {
			t.Errorf("nfpm.yaml: %v", err)
		}
	}
	scripts := regexp.MustCompile(`(?m)^\s*(?:postinstall|preremove|postremove):\s*(\S+)`).FindAllStringSubmatch(string(b), -1)
	if len(scripts) != 3 {
		t.Fatalf("nfpm.yaml names %d scripts, want 3", len(scripts))
	}
	for _, m := range scripts {
		if out, err := exec.Command("sh", "-n", filepath.Join("..", m[1])).CombinedOutput(); err != nil {
			t.Errorf("%s: %v\n%s", m[1], err, out)
		}
	}
}

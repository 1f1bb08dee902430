package runc

import (
	"os"
	"path/filepath"
	"testing"
)

func TestResolvConf(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	old := resolvedUpstreams
	t.Cleanup(func() { resolvedUpstreams = old })
	resolvedUpstreams = write("upstreams", "nameserver 192.0.2.53\nsearch example.org\n")

	// Loopback servers are dropped, the others kept.
	mixed := write("mixed", "nameserver 127.0.0.1\nnameserver 198.51.100.1\noptions ndots:2\n")
	if got, want := resolvConf(mixed), "nameserver 198.51.100.1\noptions ndots:2\n"; got != want {
		t.Errorf("mixed: %q, want %q", got, want)
	}
	// systemd-resolved's stub alone: its upstreams instead.
	stub := write("stub", "nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch .\n")
	if got, want := resolvConf(stub), "nameserver 192.0.2.53\nsearch example.org\n"; got != want {
		t.Errorf("stub: %q, want %q", got, want)
	}
	// No upstream file: what is left of the host's.
	resolvedUpstreams = filepath.Join(dir, "absent")
	if got, want := resolvConf(stub), "options edns0 trust-ad\nsearch .\n"; got != want {
		t.Errorf("stub without upstreams: %q, want %q", got, want)
	}
}

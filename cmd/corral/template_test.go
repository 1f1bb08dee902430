package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestBadJobAndTemplateFiles: a bad file is refused before anything is
// sent (the address is unreachable), exit 1, naming file, line and field.
func TestBadJobAndTemplateFiles(t *testing.T) {
	dir := t.TempDir()
	write := func(name, src string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	job := write("pipe.hcl", "session \"a\" {\n  command = [\"true\"]\n}\nsession \"b\" {\n  command = [\"true\"]\n  depends_on = [\"a\"]\n  cpu = \"many\"\n}\n")
	r := runCLI(t, "http://127.0.0.1:1", "run", job)
	if r.code != 1 || !strings.Contains(r.stderr, "pipe.hcl:7:9: invalid cpu") {
		t.Fatalf("run: exit %d, stderr %q", r.code, r.stderr)
	}
	r = runCLI(t, "http://127.0.0.1:1", "run", "-dry-run", job)
	if r.code != 1 || !strings.Contains(r.stderr, "pipe.hcl:7:9: invalid cpu") {
		t.Fatalf("run -dry-run: exit %d, stderr %q", r.code, r.stderr)
	}
	tpl := write("t.json", "{\n  \"image\": \"a\",\n  \"role\": {\"ps\": {\"count\": \"two\"}}\n}\n")
	r = runCLI(t, "http://127.0.0.1:1", "template", "create", "t", "-f", tpl)
	if r.code != 1 || !strings.Contains(r.stderr, "t.json:3:28: invalid count") {
		t.Fatalf("template create: exit %d, stderr %q", r.code, r.stderr)
	}
	r = runCLI(t, "http://127.0.0.1:1", "template", "create", "t")
	if r.code != 2 || !strings.Contains(r.stderr, "missing -f FILE") {
		t.Fatalf("template create without -f: exit %d, stderr %q", r.code, r.stderr)
	}
	r = runCLI(t, "http://127.0.0.1:1", "run", filepath.Join(dir, "nope.hcl"))
	if r.code != 1 || !strings.Contains(r.stderr, "nope.hcl") {
		t.Fatalf("missing job file: exit %d, stderr %q", r.code, r.stderr)
	}
}

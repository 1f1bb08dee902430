package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/structs"
)

// startDev runs `corral dev` with its data in dir (HOME apart, so that it
// leaves the CLI's token file of the machine alone) and waits until its
// agent is ALIVE; it returns the API address.
func startDev(t *testing.T, dir string, extra ...string) string {
	t.Helper()
	ports := serverPorts{http: freePort(t), rpc: freePort(t), serf: freePort(t)}
	p := &proc{name: "dev", log: &syncBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(corralBin, append([]string{"dev", "-data-dir", dir, "-http", ports.http, "-rpc", ports.rpc, "-serf", ports.serf}, extra...)...)
	p.cmd.Env = append(os.Environ(), "HOME="+t.TempDir())
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.stop(10 * time.Second)
		if t.Failed() {
			t.Logf("--- dev output ---\n%s", p.log.String())
		}
	})
	addr := "http://" + ports.http
	eventually(t, 60*time.Second, "corral dev writes the admin token", func() error {
		tok, ok := adminTokenIn(filepath.Join(dir, "server"))
		if !ok {
			return fmt.Errorf("no admin token in %s yet", dir)
		}
		apiTokens.Store(addr, tok)
		return nil
	})
	eventually(t, 60*time.Second, "corral dev answers", func() error {
		if r := cli(t, addr, "node", "list"); r.code != 0 {
			return fmt.Errorf("node list: %s", r.stderr)
		}
		return nil
	})
	agentAlive(t, addr)
	return addr
}

// firstStatus is when a session first reached status s (zero if never).
func firstStatus(s *structs.Session, st structs.SessionStatus) time.Time {
	for _, h := range s.History {
		if h.Status == string(st) {
			return h.Time
		}
	}
	return time.Time{}
}

// TestTemplatesRolesAndJobFiles on `corral dev` with runc kernels from a
// loopback registry:
//   - a session from a template, with flags overriding its image and env;
//   - a template's heterogeneous cluster session, main1 and two "ps" role
//     kernels that run another image, reaching each other by hostname
//     over the session's network;
//   - a job file pipeline of three sessions that run in dependency order,
//     and its dry run, which places without submitting;
//   - bad templates and job files refused with their line numbers.
func TestTemplatesRolesAndJobFiles(t *testing.T) {
	if why := runcUnavailable(); why != "" {
		t.Skip(why)
	}
	base := busyboxImage(t)
	mainRef := startRegistry(t, base, "corral/busybox:1")
	psImg := withImageVar(t, base, "ps-image")
	psRef := startRegistry(t, psImg, "corral/ps:1")

	dir := t.TempDir()
	reapKernels(t, filepath.Join(dir, "agent"))
	addr := startDev(t, dir)
	agentRunsRunc(t, addr)
	files := t.TempDir()
	write := func(name, src string) string {
		p := filepath.Join(files, name)
		if err := os.WriteFile(p, []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}

	// A template, and a session from it with two flags overriding it.
	basic := write("basic.hcl", fmt.Sprintf(`driver  = "runc"
image   = %q
cpu     = 0.2
mem     = "64M"
env     = { GREETING = "from-template" }
command = ["sh", "-c", "echo image=$IMAGE_VAR greeting=$GREETING"]
`, mainRef))
	mustCLI(t, addr, 0, "template", "create", "basic", "-f", basic)
	r := mustCLI(t, addr, 0, "session", "create", "-template", "basic", "-wait")
	if !strings.Contains(r.stdout, "image=from-image greeting=from-template") {
		t.Fatalf("session from the template: %q %q", r.stdout, r.stderr)
	}
	r = mustCLI(t, addr, 0, "session", "create", "-template", "basic", "-image", psRef, "-env", "GREETING=from-flag", "-wait")
	if !strings.Contains(r.stdout, "image=ps-image greeting=from-flag") {
		t.Fatalf("session from the template with overrides: %q %q", r.stdout, r.stderr)
	}
	r = mustCLI(t, addr, 0, "template", "list")
	if !strings.Contains(r.stdout, "basic") || !strings.Contains(r.stdout, "owner admin") {
		t.Fatalf("template list:\n%s", r.stdout)
	}

	// Heterogeneous roles: main1 runs one image, ps1 and ps2 another.
	// Each ps reaches main1 by name, then serves its environment; main1
	// asks each ps by name for it.
	hetero := write("hetero.hcl", fmt.Sprintf(`type    = "batch"
driver  = "runc"
image   = %q
cpu     = 0.2
mem     = "64M"
command = ["sh", "-c", <<-EOT
  nc -ll -p 7001 -e /bin/cat &
  for ps in ps1 ps2; do
    ok=
    for i in $(seq 300); do
      r=$(nc -w 1 $ps 7000 </dev/null | grep IMAGE_VAR) && [ -n "$r" ] && ok=1 && break
      sleep 0.2
    done
    [ -n "$ok" ] || { echo "no answer from $ps"; exit 1; }
    echo "main1 ($IMAGE_VAR) got from $ps: $r"
  done
  EOT
]

role "ps" {
  count   = 2
  image   = %q
  command = ["sh", "-c", <<-EOT
    for i in $(seq 300); do
      r=$(echo "hello from $(hostname)" | nc -w 1 main1 7001) && [ -n "$r" ] && echo "$(hostname) reached main1: $r" && break
      sleep 0.2
    done
    exec nc -ll -p 7000 -e /bin/env
    EOT
  ]
}
`, mainRef, psRef))
	mustCLI(t, addr, 0, "template", "create", "hetero", "-f", hetero)
	r = mustCLI(t, addr, 0, "session", "create", "-template", "hetero", "-name", "hetero1", "-wait")
	for _, ps := range []string{"ps1", "ps2"} {
		if !strings.Contains(r.stdout, "main1 (from-image) got from "+ps+": IMAGE_VAR=ps-image") {
			t.Fatalf("main1's output lacks %s's answer: %q %q", ps, r.stdout, r.stderr)
		}
	}
	d, err := sessionDetail(t, addr, "hetero1")
	if err != nil {
		t.Fatal(err)
	}
	images := map[string]string{}
	for _, k := range d.Kernels {
		images[k.Hostname] = k.Image
	}
	if len(images) != 3 || images["main1"] != mainRef || images["ps1"] != psRef || images["ps2"] != psRef {
		t.Fatalf("kernels' images %v", images)
	}
	for _, ps := range []string{"ps1", "ps2"} {
		lr := mustCLI(t, addr, 0, "session", "logs", "hetero1", "-kernel", ps)
		if !strings.Contains(lr.stdout, ps+" reached main1: hello from "+ps) {
			t.Fatalf("%s's output: %q", ps, lr.stdout)
		}
	}

	// A pipeline: transform after extract, load (from the template) after
	// transform.
	pipe := write("pipe.hcl", `session "load" {
  template   = "basic"
  depends_on = ["transform"]
  env        = { GREETING = "load" }
}

session "extract" {
  command = ["sh", "-c", "sleep 1; echo extracted"]
  cpu     = 0.1
  mem     = "32M"
}

session "transform" {
  command    = ["sh", "-c", "echo transformed"]
  cpu        = 0.1
  mem        = "32M"
  depends_on = ["extract"]
}
`)
	before := len(sessionsJSON(t, addr))
	r = mustCLI(t, addr, 0, "run", "-dry-run", pipe)
	for _, want := range []string{
		"session extract\n", "session transform\n", "session load (template basic)\n",
		"waits for: extract (this file)", "waits for: transform (this file)",
		"would be placed now", "main1", "runc", mainRef, "dry run: nothing was submitted (3 sessions)",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Fatalf("dry run lacks %q:\n%s", want, r.stdout)
		}
	}
	if strings.Index(r.stdout, "session extract") > strings.Index(r.stdout, "session transform") ||
		strings.Index(r.stdout, "session transform") > strings.Index(r.stdout, "session load") {
		t.Fatalf("dry run not in dependency order:\n%s", r.stdout)
	}
	if after := len(sessionsJSON(t, addr)); after != before {
		t.Fatalf("the dry run submitted sessions: %d -> %d", before, after)
	}
	big := write("big.hcl", "command = [\"true\"]\ncpu = 4000\n")
	r = mustCLI(t, addr, 0, "run", "-dry-run", big)
	if !strings.Contains(r.stdout, "would stay PENDING") || !strings.Contains(r.stdout, "cpu") {
		t.Fatalf("dry run of a session too big:\n%s", r.stdout)
	}

	r = mustCLI(t, addr, 0, "run", "-wait", pipe)
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 3 || !strings.HasSuffix(lines[0], " extract") || !strings.HasSuffix(lines[1], " transform") || !strings.HasSuffix(lines[2], " load") {
		t.Fatalf("run printed %q", r.stdout)
	}
	var prev *api.SessionDetail
	for _, name := range []string{"extract", "transform", "load"} {
		d, err := sessionDetail(t, addr, name)
		if err != nil {
			t.Fatal(err)
		}
		s := d.Session
		if s.Status != structs.SessionTerminated || s.Result != structs.ResultSuccess {
			t.Fatalf("%s ended %s/%s: %s", name, s.Status, s.Result, s.StatusInfo)
		}
		if prev != nil {
			if len(s.DependsOn) != 1 || s.DependsOn[0] != prev.Session.ID {
				t.Fatalf("%s depends on %v, want %s", name, s.DependsOn, prev.Session.ID)
			}
			sched := firstStatus(s, structs.SessionScheduled)
			if sched.IsZero() || sched.Before(prev.Session.TerminatedAt) {
				t.Fatalf("%s was scheduled at %s, before %s ended at %s", name, sched, prev.Session.Name, prev.Session.TerminatedAt)
			}
		}
		prev = d
	}
	lr := mustCLI(t, addr, 0, "session", "logs", "load")
	if !strings.Contains(lr.stdout, "image=from-image greeting=load") {
		t.Fatalf("load's output %q", lr.stdout)
	}

	// Bad files: refused with the line, nothing stored or submitted.
	bad := write("bad.hcl", "driver = \"runc\"\nimage = \"x\"\n\nrole \"ps\" {\n  count = 2\n  cpus = 1\n}\n")
	r = mustCLI(t, addr, 1, "template", "create", "bad", "-f", bad)
	if !strings.Contains(r.stderr, "bad.hcl:6:3") || !strings.Contains(r.stderr, `Did you mean "cpu"?`) {
		t.Fatalf("bad template: %q", r.stderr)
	}
	badJob := write("badjob.hcl", "session \"a\" {\n  command = [\"true\"]\n  depends_on = [\"b\"]\n}\n\nsession \"b\" {\n  command = [\"true\"]\n  depends_on = [\"a\"]\n}\n")
	r = mustCLI(t, addr, 1, "run", badJob)
	if !strings.Contains(r.stderr, "badjob.hcl:1:1: dependency cycle") {
		t.Fatalf("bad job file: %q", r.stderr)
	}
	// What only the server knows is checked when the template is stored.
	unknown := write("unknown.hcl", "driver = \"warp\"\ncommand = [\"true\"]\n")
	r = mustCLI(t, addr, 1, "template", "create", "unknown", "-f", unknown)
	if !strings.Contains(r.stderr, `unknown driver "warp"`) {
		t.Fatalf("template with an unknown driver: %q", r.stderr)
	}
	if r := mustCLI(t, addr, 0, "template", "list"); strings.Contains(r.stdout, "bad") || strings.Contains(r.stdout, "unknown") {
		t.Fatalf("a refused template was stored:\n%s", r.stdout)
	}
	mustCLI(t, addr, 0, "template", "delete", "basic")
	r = mustCLI(t, addr, 1, "session", "create", "-template", "basic")
	if !strings.Contains(r.stderr, `no template "basic"`) {
		t.Fatalf("deleted template: %q", r.stderr)
	}
}

// withImageVar is img with IMAGE_VAR=value in its environment (busyboxImage
// has IMAGE_VAR=from-image): another image of the same files, for roles.
func withImageVar(t *testing.T, img v1.Image, value string) v1.Image {
	t.Helper()
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cfg = cfg.DeepCopy()
	cfg.Config.Env = []string{"PATH=/bin", "IMAGE_VAR=" + value}
	out, err := mutate.ConfigFile(img, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

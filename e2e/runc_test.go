package e2e

import (
	"archive/tar"
	"bytes"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// busyboxImage builds an OCI image from the host's static busybox: one
// layer with /bin/busybox and its applets as symlinks.
func busyboxImage(t *testing.T) v1.Image {
	t.Helper()
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Skip("runc e2e needs /bin/busybox (Debian busybox-static; make test installs it)")
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, d := range []string{"bin/", "etc/", "tmp/", "proc/", "sys/", "dev/"} {
		_ = tw.WriteHeader(&tar.Header{Name: d, Typeflag: tar.TypeDir, Mode: 0o755})
	}
	_ = tw.WriteHeader(&tar.Header{Name: "bin/busybox", Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(bb))})
	_, _ = tw.Write(bb)
	for _, app := range []string{"sh", "echo", "cat", "hostname", "sleep", "ls", "true", "false", "id", "env", "ps"} {
		_ = tw.WriteHeader(&tar.Header{Name: "bin/" + app, Typeflag: tar.TypeSymlink, Linkname: "busybox", Mode: 0o777})
	}
	passwd := "root:x:0:0:root:/root:/bin/sh\n"
	_ = tw.WriteHeader(&tar.Header{Name: "etc/passwd", Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(passwd))})
	_, _ = tw.Write([]byte(passwd))
	_ = tw.Close()
	layer, err := tarball.LayerFromReader(bytes.NewReader(buf.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := img.ConfigFile()
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", "amd64"
	cfg.Config.Env = []string{"PATH=/bin", "IMAGE_VAR=from-image"}
	cfg.Config.Cmd = []string{"sh", "-c", "echo default command"}
	img, err = mutate.ConfigFile(img, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// startRegistry serves a registry on loopback and pushes img as repo:tag.
func startRegistry(t *testing.T, img v1.Image, repoTag string) string {
	t.Helper()
	reg := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(reg.Close)
	ref := strings.TrimPrefix(reg.URL, "http://") + "/" + repoTag
	tag, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(tag, img); err != nil {
		t.Fatal(err)
	}
	return ref
}

// runcUnavailable says why this machine cannot run the runc e2e, or "".
func runcUnavailable() string {
	if os.Geteuid() != 0 {
		return "runc e2e needs root"
	}
	if _, err := os.Stat("/bin/busybox"); err != nil {
		return "runc e2e needs /bin/busybox (Debian busybox-static; make test installs it)"
	}
	return ""
}

// agentRunsRunc fails the test unless the cluster's agent advertises the
// runc driver.
func agentRunsRunc(t *testing.T, addr string) {
	t.Helper()
	if r := mustCLI(t, addr, 0, "node", "list"); !strings.Contains(r.stdout, "runc") {
		t.Fatalf("agent does not advertise runc:\n%s", r.stdout)
	}
}

// TestRuncSessionsFromARegistry runs container sessions from an image the
// test pushes to a registry on loopback.
func TestRuncSessionsFromARegistry(t *testing.T) {
	if why := runcUnavailable(); why != "" {
		t.Skip(why)
	}
	ref := startRegistry(t, busyboxImage(t), "corral/busybox:1")
	ports := serverPorts{http: freePort(t), rpc: freePort(t), serf: freePort(t)}
	addr := "http://" + ports.http
	// The registry is on loopback: server and agent must both allow it.
	regHost := strings.SplitN(ref, "/", 2)[0]
	startServerProc(t, t.TempDir(), ports, "-allow-registry", regHost)
	agentDir := t.TempDir()
	reapKernels(t, agentDir)
	start(t, "agent", append([]string{"agent", "-data-dir", agentDir, "-rpc", freePort(t), "-serf", freePort(t), "-fast-gossip",
		"-allow-registry", regHost}, agentJoin(t, ports)...)...)
	agentAlive(t, addr)
	agentRunsRunc(t, addr)

	r := mustCLI(t, addr, 0, "session", "create", "-driver", "runc", "-image", ref, "-env", "SESSION_VAR=from-session", "-wait", "--",
		"sh", "-c", "echo host=$(hostname) pid=$$ $IMAGE_VAR $SESSION_VAR $CORRAL_CLUSTER_ROLE")
	if !strings.Contains(r.stdout, "host=main1 pid=1 from-image from-session main") {
		t.Fatalf("container output: %q", r.stdout)
	}
	// No command: the image's.
	r = mustCLI(t, addr, 0, "session", "create", "-driver", "runc", "-image", ref, "-wait")
	if !strings.Contains(r.stdout, "default command") {
		t.Fatalf("image command output: %q", r.stdout)
	}
	mustCLI(t, addr, 0, "session", "create", "-driver", "runc", "-image", ref, "-type", "interactive", "-name", "box", "-cpu", "0.5", "-mem", "64M", "-wait", "--", "sleep", "1000")
	r = mustCLI(t, addr, 3, "session", "exec", "box", "--", "sh", "-c", "cat /etc/hostname; ls /proc/1/exe >/dev/null && echo ok; exit 3")
	if !strings.Contains(r.stdout, "main1") || !strings.Contains(r.stdout, "ok") {
		t.Fatalf("exec in container: %q %q", r.stdout, r.stderr)
	}
	r = mustCLI(t, addr, 0, "session", "status", "box")
	if !strings.Contains(r.stdout, "PULLING") || !strings.Contains(r.stdout, "RUNNING") || !strings.Contains(r.stdout, "Kernel usage") {
		t.Fatalf("status lacks PULLING/RUNNING:\n%s", r.stdout)
	}
	r = mustCLI(t, addr, 0, "image", "list")
	if !strings.Contains(r.stdout, "corral/busybox:1") {
		t.Fatalf("image list:\n%s", r.stdout)
	}
	mustCLI(t, addr, 0, "session", "destroy", "box")
	waitStatus(t, addr, "box", "TERMINATED")

	// A single-node cluster session on a loopback agent: its kernels share a
	// bridge (the VXLAN has no peers) and reach each other by hostname.
	r = mustCLI(t, addr, 0, "session", "create", "-driver", "runc", "-image", ref, "-cluster-size", "2", "-run-on", "all", "-wait", "--", "sh", "-c",
		`if [ "$CORRAL_CLUSTER_ROLE" = sub ]; then exec nc -ll -p 7000 -e /bin/cat; fi
		for i in $(seq 50); do r=$(echo ping | nc -w 1 sub1 7000) && [ "$r" = ping ] && echo "echo from sub1: $r" && exit 0; sleep 0.1; done; exit 1`)
	if !strings.Contains(r.stdout, "echo from sub1: ping") {
		t.Fatalf("single-node cluster session: %q %q", r.stdout, r.stderr)
	}

	// A missing tag: the session errors naming the image and the registry's answer.
	missing := strings.TrimSuffix(ref, ":1") + ":nope"
	r = mustCLI(t, addr, 1, "session", "create", "-driver", "runc", "-image", missing, "-wait", "--", "true")
	if !strings.Contains(r.stderr, "corral/busybox:nope") {
		t.Fatalf("missing tag: %q", r.stderr)
	}
	// A malformed reference is refused at create.
	r = mustCLI(t, addr, 1, "session", "create", "-driver", "runc", "-image", "Bad Ref!", "--", "true")
	if !strings.Contains(r.stderr, "reference") {
		t.Fatalf("malformed ref: %q", r.stderr)
	}
	// runc without an image is refused.
	mustCLI(t, addr, 1, "session", "create", "-driver", "runc", "--", "true")

	// Nothing is left of the containers: processes, shims, roots, cgroups.
	checkNoLeftovers(t, agentDir)
}

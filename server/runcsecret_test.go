package server_test

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/drivers/runc"
	"github.com/corral-dev/corral/plugins/drivers"
	"github.com/corral-dev/corral/structs"
)

// busyboxImage returns an image of the host's static busybox as /bin/sh,
// /bin/cat and /bin/test.
func busyboxImage(t *testing.T) v1.Image {
	t.Helper()
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Skipf("no /bin/busybox for a test image: %v", err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, d := range []string{"bin/", "etc/", "proc/", "sys/", "dev/", "tmp/"} {
		_ = tw.WriteHeader(&tar.Header{Name: d, Typeflag: tar.TypeDir, Mode: 0o755})
	}
	_ = tw.WriteHeader(&tar.Header{Name: "bin/busybox", Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(bb))})
	_, _ = tw.Write(bb)
	for _, l := range []string{"sh", "cat", "test"} {
		_ = tw.WriteHeader(&tar.Header{Name: "bin/" + l, Typeflag: tar.TypeSymlink, Linkname: "busybox", Mode: 0o777})
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	img, err := mutate.Config(imageOfTar(t, buf.Bytes()), v1.Config{Env: []string{"PATH=/bin"}})
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// imageOfTar is an image whose one layer is the tar stream b.
func imageOfTar(t *testing.T, b []byte) v1.Image {
	t.Helper()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// TestRuncKernelCannotReadHostSecret checks that a runc kernel does not
// see a 0600 file holding a token on the host: its host path does not
// exist inside the container.
func TestRuncKernelCannotReadHostSecret(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("runc kernels need root")
	}
	img := busyboxImage(t)
	reg := httptest.NewServer(registry.New())
	defer reg.Close()
	ref := strings.TrimPrefix(reg.URL, "http://") + "/test/busybox:1"
	tag, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(tag, img); err != nil {
		t.Fatal(err)
	}
	secretDir := t.TempDir()
	secret := filepath.Join(secretDir, "token")
	if err := os.WriteFile(secret, []byte("s3cret-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	agentDir := t.TempDir()
	drv := runc.New(testLogger(t), runc.WithStateDir(filepath.Join(agentDir, "runc")))
	if fp, err := drv.Fingerprint(context.Background()); err != nil || fp.Health != drivers.HealthHealthy {
		t.Skipf("runc is unavailable here: %+v %v", fp, err)
	}
	dir := t.TempDir()
	srv := startServer(t, dir)
	a := startAgentWith(t, agentDir, srv.SerfAddr(), drv)
	t.Cleanup(func() { a.StopKernels(5e9); a.Shutdown(); srv.Shutdown() })
	c := client(t, srv, dir)
	cl := &cluster{srv: srv, agent: a, client: c}
	cl.waitAgentAlive(t, a.ID())

	script := `test -x /bin/cat || exit 2; if cat "$0"; then exit 1; fi; test ! -e "$1" || exit 3`
	d := create(t, cl, &api.CreateSessionRequest{Type: "batch", Driver: "runc", Image: ref,
		Command: []string{"/bin/sh", "-c", script, secret, secretDir}, Resources: small})
	d = cl.waitFor(t, d.Session.ID, terminal)
	if d.Session.Result != structs.ResultSuccess {
		t.Fatalf("kernel reading %s: %s/%s (%s); the kernel saw the host's file", secret, d.Session.Status, d.Session.Result, d.Session.StatusInfo)
	}
}

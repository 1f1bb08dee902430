package server_test

import (
	"archive/tar"
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/corral-dev/corral/agent"
	"github.com/corral-dev/corral/api"
	execdriver "github.com/corral-dev/corral/drivers/exec"
	"github.com/corral-dev/corral/server"
	"github.com/corral-dev/corral/structs"
)

func pushImage(t *testing.T, ref string, img v1.Image) {
	t.Helper()
	tag, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(tag, img); err != nil {
		t.Fatal(err)
	}
}

// zeroImage is an image of one file of size zero bytes: its layer
// compresses about 1000 to 1.
func zeroImage(t *testing.T, size int64) v1.Image {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "zeros", Mode: 0o644, Size: size}); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.Write(make([]byte, size)); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return imageOfTar(t, buf.Bytes())
}

func wantAPIError(t *testing.T, what string, err error, code int, says ...string) {
	t.Helper()
	e, ok := err.(*api.Error)
	if !ok || e.StatusCode != code {
		t.Fatalf("%s: got %v, want HTTP %d", what, err, code)
	}
	for _, s := range says {
		if !strings.Contains(e.Message, s) {
			t.Fatalf("%s: error %q does not say %q", what, e.Message, s)
		}
	}
}

// TestImagePullFence: with a server configured as in production (no
// loopback registries), direct pulls are for admins, references follow the
// OCI grammar, sessions pull only from registries their group allows, the
// agent checks again, and an image too large for the agent errors the
// kernel with the reason.
func TestImagePullFence(t *testing.T) {
	reg := httptest.NewServer(registry.New())
	defer reg.Close()
	regHost := strings.TrimPrefix(reg.URL, "http://")
	ref := regHost + "/fence/app:1"
	img, err := random.Image(1<<20, 1)
	if err != nil {
		t.Fatal(err)
	}
	pushImage(t, ref, img)
	bomb := regHost + "/fence/bomb:1"
	pushImage(t, bomb, zeroImage(t, 12<<20))

	drv := &imageDriver{Driver: execdriver.New(testLogger(t)), rootfs: map[string]string{}}
	dir := t.TempDir()
	srv := startServerCfg(t, dir, func(c *server.Config) { c.AllowLoopbackRegistries = false })
	// The agent allows this registry by name only, and images up to 8 MiB.
	a := startAgentCfg(t, t.TempDir(), srv.SerfAddr(), nil, drv, func(c *agent.Config) {
		c.AllowLoopbackRegistries = false
		c.AllowedRegistries = []string{regHost}
		c.MaxImageSize = 8 << 20
	})
	t.Cleanup(func() { a.StopKernels(5e9); a.Shutdown(); srv.Shutdown() })
	admin := client(t, srv, dir)
	cl := &cluster{srv: srv, agent: a, client: admin}
	cl.waitAgentAlive(t, a.ID())
	ctx := context.Background()

	// (c) Direct pulls onto agents are for admins.
	if _, err := admin.CreateUser(ctx, &api.CreateUserRequest{Name: "bob"}); err != nil {
		t.Fatal(err)
	}
	k, err := admin.CreateKey(ctx, &api.CreateKeyRequest{User: "bob"})
	if err != nil {
		t.Fatal(err)
	}
	bob, _ := api.NewClient("http://" + srv.HTTPAddr())
	bob.SetToken(k.Token)
	_, err = bob.PullImage(ctx, &api.ImagePullRequest{Ref: ref, Agent: a.ID()})
	wantAPIError(t, "non-admin pull", err, http.StatusForbidden, "admin")

	// (b) Path tricks are refused before any registry sees them.
	for _, bad := range []string{regHost + "/fence/../../v2/_catalog:1", regHost + "/fence/%2e%2e/x:1", regHost + "/fence//x:1", regHost + "/Fence/x:1"} {
		_, err := admin.CreateSession(ctx, &api.CreateSessionRequest{Type: "batch", Driver: "imgexec", Image: bad, Command: []string{"true"}, Resources: small})
		wantAPIError(t, "session with "+bad, err, http.StatusBadRequest, "invalid image reference")
		_, err = admin.PullImage(ctx, &api.ImagePullRequest{Ref: bad, Agent: a.ID()})
		wantAPIError(t, "pull of "+bad, err, http.StatusBadRequest, "invalid image reference")
	}
	_, err = admin.CreateSession(ctx, &api.CreateSessionRequest{Type: "batch", Driver: "imgexec", Image: regHost + "/fence/../x:1", Command: []string{"true"}, Resources: small})
	wantAPIError(t, "traversal", err, http.StatusBadRequest, `path component ".."`)

	// (d) A registry on loopback: refused by the default group's rule...
	req := &api.CreateSessionRequest{Type: "batch", Driver: "imgexec", Image: ref, Command: []string{"true"}, Resources: small}
	_, err = bob.CreateSession(ctx, req)
	wantAPIError(t, "loopback registry", err, http.StatusForbidden, "resource group default", "loopback address",
		"allowed: public registries", "corral group update default -allow-registry")
	// ... and by an allow-list that names another port...
	if _, err := admin.CreateGroup(ctx, &structs.ResourceGroup{Name: "default", AllowedRegistries: []string{"127.0.0.1:1"}}); err != nil {
		t.Fatal(err)
	}
	_, err = bob.CreateSession(ctx, req)
	wantAPIError(t, "registry outside the list", err, http.StatusForbidden, "not in the allow-list (allowed: 127.0.0.1:1)")
	_, err = admin.CreateGroup(ctx, &structs.ResourceGroup{Name: "default", AllowedRegistries: []string{"http://x/"}})
	wantAPIError(t, "bad allow-list entry", err, http.StatusBadRequest, "allowed_registries")
	// ... allowed once the group names it.
	if _, err := admin.UpdateGroup(ctx, &structs.ResourceGroup{Name: "default", AllowedRegistries: []string{"127.0.0.1:1", regHost}}); err != nil {
		t.Fatal(err)
	}
	d, err := bob.CreateSession(ctx, req)
	if err != nil {
		t.Fatalf("session from an allowed registry: %v", err)
	}
	d = cl.waitFor(t, d.Session.ID, terminal)
	if d.Session.Result != structs.ResultSuccess {
		t.Fatalf("session from an allowed registry: %s/%s (%s)", d.Session.Status, d.Session.Result, d.Session.StatusInfo)
	}

	// The agent checks on its own: "localhost" is not the name it allows.
	_, err = admin.PullImage(ctx, &api.ImagePullRequest{Ref: strings.Replace(ref, "127.0.0.1", "localhost", 1), Agent: a.ID()})
	wantAPIError(t, "agent-side check", err, http.StatusForbidden, "loopback address", "-allow-registry")

	// An image beyond the agent's -max-image-size: the kernel errors saying so.
	if _, err := admin.UpdateGroup(ctx, &structs.ResourceGroup{Name: "default", AllowedRegistries: []string{regHost}}); err != nil {
		t.Fatal(err)
	}
	req.Image = bomb
	d, err = bob.CreateSession(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	d = cl.waitFor(t, d.Session.ID, terminal)
	want := "image " + bomb + " unpacks to more than 8 MiB (agent -max-image-size)"
	if d.Session.Status != structs.SessionError || !strings.Contains(d.Kernels[0].StatusInfo, want) {
		t.Fatalf("bomb session: %s, kernel %q; want ERROR saying %q", d.Session.Status, d.Kernels[0].StatusInfo, want)
	}

	// image list reports both sizes.
	imgs, err := admin.ListImages(ctx)
	if err != nil || len(imgs) != 1 || imgs[0].UnpackedSize < 1<<20 || imgs[0].Size <= 0 {
		t.Fatalf("image list: %+v %v", imgs, err)
	}
}

package server_test

import (
	"context"
	"errors"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/corral-dev/corral/api"
	execdriver "github.com/corral-dev/corral/drivers/exec"
	"github.com/corral-dev/corral/structs"
)

// TestImageRemove: an image a running kernel uses is not removed (409
// naming the session); once the session ended it goes from the agent's
// cache, files included; a second removal is a 404.
func TestImageRemove(t *testing.T) {
	reg := httptest.NewServer(registry.New())
	defer reg.Close()
	ref := strings.TrimPrefix(reg.URL, "http://") + "/demo/rm:1"
	img, err := random.Image(1<<20, 2)
	if err != nil {
		t.Fatal(err)
	}
	tag, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(tag, img); err != nil {
		t.Fatal(err)
	}
	drv := &imageDriver{Driver: execdriver.New(testLogger(t)), rootfs: map[string]string{}}
	dir := t.TempDir()
	srv := startServer(t, dir)
	a := startAgentWith(t, t.TempDir(), srv.SerfAddr(), drv)
	t.Cleanup(func() { a.StopKernels(5e9); a.Shutdown(); srv.Shutdown() })
	c := client(t, srv, dir)
	cl := &cluster{srv: srv, agent: a, client: c}
	cl.waitAgentAlive(t, a.ID())
	ctx := context.Background()

	d := create(t, cl, &api.CreateSessionRequest{Type: "interactive", Driver: "imgexec", Image: ref, Command: []string{"sleep", "600"}, Resources: small})
	d = cl.waitFor(t, d.Session.ID, func(d *api.SessionDetail) bool {
		return d.Session.Status == structs.SessionRunning || d.Session.Status.Terminal()
	})
	if d.Session.Status != structs.SessionRunning {
		t.Fatalf("session %s (%s)", d.Session.Status, d.Session.StatusInfo)
	}
	drv.mu.Lock()
	rootfs := drv.rootfs[d.Kernels[0].ID]
	drv.mu.Unlock()

	_, err = c.RemoveImage(ctx, &api.ImagePullRequest{Ref: ref, Agent: a.ID()})
	var ae *api.Error
	if !errors.As(err, &ae) || ae.StatusCode != 409 || !strings.Contains(ae.Message, d.Session.ID) || !strings.Contains(ae.Message, "in use") {
		t.Fatalf("removing an image in use: %v", err)
	}
	if _, err := os.Stat(rootfs); err != nil {
		t.Fatalf("rootfs after the refused removal: %v", err)
	}
	_, err = c.RemoveImage(ctx, &api.ImagePullRequest{Ref: ref})
	if !errors.As(err, &ae) || ae.StatusCode != 400 || !strings.Contains(ae.Message, "agent is required") {
		t.Fatalf("no agent: %v", err)
	}

	if _, err := c.DestroySession(ctx, d.Session.ID); err != nil {
		t.Fatal(err)
	}
	cl.waitFor(t, d.Session.ID, terminal)
	// The agent may still be tearing the kernel down: it refuses until then.
	var removed *api.AgentImage
	deadline := time.Now().Add(60 * time.Second)
	for {
		removed, err = c.RemoveImage(ctx, &api.ImagePullRequest{Ref: ref, Agent: a.ID()})
		if err == nil || !errors.As(err, &ae) || ae.StatusCode != 409 || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil || removed.Ref != ref || removed.AgentID != a.ID() || removed.Digest == "" {
		t.Fatalf("removing an unused image: %+v %v", removed, err)
	}
	imgs, err := c.ListImages(ctx)
	if err != nil || len(imgs) != 0 {
		t.Fatalf("images after the removal: %+v %v", imgs, err)
	}
	if _, err := os.Stat(rootfs); !os.IsNotExist(err) {
		t.Fatalf("rootfs %s after the removal: %v", rootfs, err)
	}
	_, err = c.RemoveImage(ctx, &api.ImagePullRequest{Ref: ref, Agent: a.ID()})
	if !errors.As(err, &ae) || ae.StatusCode != 404 {
		t.Fatalf("removing it again: %v", err)
	}
}

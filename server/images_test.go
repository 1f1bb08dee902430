package server_test

import (
	"context"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/corral-dev/corral/api"
	execdriver "github.com/corral-dev/corral/drivers/exec"
	"github.com/corral-dev/corral/plugins/drivers"
	"github.com/corral-dev/corral/structs"
)

// imageDriver is the exec driver under another name that records the
// rootfs the agent hands it: enough to test the agent's image path without
// a container runtime.
type imageDriver struct {
	*execdriver.Driver
	mu     sync.Mutex
	rootfs map[string]string
}

func (d *imageDriver) Name() string { return "imgexec" }

func (d *imageDriver) Start(ctx context.Context, cfg *drivers.TaskConfig) (*drivers.TaskHandle, error) {
	d.mu.Lock()
	d.rootfs[cfg.ID] = cfg.RootFS
	d.mu.Unlock()
	c := *cfg
	c.WorkDir = c.TaskDir
	h, err := d.Driver.Start(ctx, &c)
	if h != nil {
		h.Driver = "imgexec"
	}
	return h, err
}

func TestSessionPullsItsImage(t *testing.T) {
	reg := httptest.NewServer(registry.New())
	defer reg.Close()
	ref := strings.TrimPrefix(reg.URL, "http://") + "/demo/app:1"
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

	d := create(t, cl, &api.CreateSessionRequest{Type: "batch", Driver: "imgexec", Image: ref, Command: []string{"true"}, Resources: small})
	d = cl.waitFor(t, d.Session.ID, terminal)
	if d.Session.Result != structs.ResultSuccess {
		t.Fatalf("image session: %s/%s (%s)", d.Session.Status, d.Session.Result, d.Session.StatusInfo)
	}
	var pulled bool
	for _, h := range d.Kernels[0].History {
		pulled = pulled || h.Status == string(structs.KernelPulling)
	}
	if !pulled {
		t.Fatalf("kernel never went through PULLING: %+v", d.Kernels[0].History)
	}
	drv.mu.Lock()
	rootfs := drv.rootfs[d.Kernels[0].ID]
	drv.mu.Unlock()
	if st, err := os.Stat(rootfs); err != nil || !st.IsDir() {
		t.Fatalf("driver got rootfs %q: %v", rootfs, err)
	}
	imgs, err := c.ListImages(context.Background())
	if err != nil || len(imgs) != 1 || imgs[0].AgentID != a.ID() {
		t.Fatalf("image list: %+v %v", imgs, err)
	}

	missing := create(t, cl, &api.CreateSessionRequest{Type: "batch", Driver: "imgexec", Image: strings.TrimSuffix(ref, ":1") + ":nope", Command: []string{"true"}, Resources: small})
	d = cl.waitFor(t, missing.Session.ID, terminal)
	if d.Session.Status != structs.SessionError || !strings.Contains(d.Session.StatusInfo, "demo/app:nope") {
		t.Fatalf("missing tag: %s %q", d.Session.Status, d.Session.StatusInfo)
	}

	_, err = c.CreateSession(context.Background(), &api.CreateSessionRequest{Type: "batch", Driver: "imgexec", Image: "Not A Ref!", Command: []string{"true"}})
	if e, ok := err.(*api.Error); !ok || e.StatusCode != 400 || !strings.Contains(e.Message, "reference") {
		t.Fatalf("malformed reference: %v", err)
	}
	if _, err := c.PullImage(context.Background(), &api.ImagePullRequest{Ref: ref, Agent: a.ID()[:8]}); err != nil {
		t.Fatalf("image pull: %v", err)
	}
}

package server_test

import (
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/corral-dev/corral/api"
	execdriver "github.com/corral-dev/corral/drivers/exec"
	"github.com/corral-dev/corral/plugins/drivers"
	"github.com/corral-dev/corral/structs"
)

// diskDriver is the exec driver named "vm" that records the image and
// rootfs the agent hands it.
type diskDriver struct {
	*execdriver.Driver
	mu   sync.Mutex
	seen map[string][2]string // kernel ID -> image, rootfs
}

func (d *diskDriver) Name() string { return "vm" }

func (d *diskDriver) Start(ctx context.Context, cfg *drivers.TaskConfig) (*drivers.TaskHandle, error) {
	d.mu.Lock()
	d.seen[cfg.ID] = [2]string{cfg.Image, cfg.RootFS}
	d.mu.Unlock()
	h, err := d.Driver.Start(ctx, cfg)
	if h != nil {
		h.Driver = "vm"
	}
	return h, err
}

// TestDiskImagePassesToVMDriver: a disk image (a path or URL) goes through
// server and agent to the vm driver as it is, with no registry check and
// no pull; other drivers refuse it with a 400 and nothing created.
func TestDiskImagePassesToVMDriver(t *testing.T) {
	drv := &diskDriver{Driver: execdriver.New(testLogger(t)), seen: map[string][2]string{}}
	dir := t.TempDir()
	srv := startServer(t, dir)
	a := startAgentWith(t, t.TempDir(), srv.SerfAddr(), drv)
	// A second agent offers driver exec, so that the server knows it.
	a2 := startAgentWith(t, t.TempDir(), srv.SerfAddr(), execdriver.New(testLogger(t)))
	t.Cleanup(func() { a.StopKernels(5e9); a.Shutdown(); a2.Shutdown(); srv.Shutdown() })
	c := client(t, srv, dir)
	cl := &cluster{srv: srv, agent: a, client: c}
	cl.waitAgentAlive(t, a.ID())
	cl.waitAgentAlive(t, a2.ID())

	for _, img := range []string{"/srv/images/root.qcow2", "file:///srv/images/root.raw", "https://images.example.com/root.qcow2"} {
		d := create(t, cl, &api.CreateSessionRequest{Type: "batch", Driver: "vm", Image: img, Command: []string{"true"}, Resources: small})
		d = cl.waitFor(t, d.Session.ID, terminal)
		if d.Session.Result != structs.ResultSuccess {
			t.Fatalf("disk image %s: %s/%s (%s)", img, d.Session.Status, d.Session.Result, d.Session.StatusInfo)
		}
		for _, h := range d.Kernels[0].History {
			if h.Status == string(structs.KernelPulling) {
				t.Errorf("disk image %s: the agent tried to pull it: %+v", img, h)
			}
		}
		drv.mu.Lock()
		got := drv.seen[d.Kernels[0].ID]
		drv.mu.Unlock()
		if got != [2]string{img, ""} {
			t.Errorf("disk image %s: the driver got image %q and rootfs %q", img, got[0], got[1])
		}
	}

	before, err := c.ListSessions(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.CreateSession(context.Background(), &api.CreateSessionRequest{Type: "batch", Driver: "exec", Image: "/srv/images/root.raw", Command: []string{"true"}})
	if e, ok := err.(*api.Error); !ok || e.StatusCode != 400 || !strings.Contains(e.Message, "only driver vm boots") {
		t.Errorf("driver exec with a disk image: err = %v, want 400", err)
	}
	_, err = c.CreateSession(context.Background(), &api.CreateSessionRequest{Type: "batch", Driver: "vm", Command: []string{"true"},
		Roles: []api.RoleSpec{{Role: "main", Driver: "exec", Image: "https://images.example.com/root.raw"}}})
	if e, ok := err.(*api.Error); !ok || e.StatusCode != 400 || !strings.Contains(e.Message, "only driver vm boots") {
		t.Errorf("a role on driver exec with a disk image: err = %v, want 400 saying only driver vm boots it", err)
	}
	_, err = c.CreateSession(context.Background(), &api.CreateSessionRequest{Type: "batch", Driver: "vm", Image: "/srv/root.raw", Command: []string{"true"},
		Roles: []api.RoleSpec{{Role: "main", Driver: "exec"}}})
	if e, ok := err.(*api.Error); !ok || e.StatusCode != 400 || !strings.Contains(e.Message, "only driver vm boots") {
		t.Errorf("a role on driver exec with the session's disk image: err = %v, want 400 saying only driver vm boots it", err)
	}
	// An endpoint's replicas are sessions too: the same check, before
	// anything is stored.
	_, err = c.CreateEndpoint(context.Background(), &api.CreateEndpointRequest{Name: "disk", Driver: "exec", Image: "/srv/root.raw", Command: []string{"true"}, Port: 8000})
	if e, ok := err.(*api.Error); !ok || e.StatusCode != 400 || !strings.Contains(e.Message, "only driver vm boots") {
		t.Errorf("an endpoint on driver exec with a disk image: err = %v, want 400 saying only driver vm boots it", err)
	}
	if eps, err := c.ListEndpoints(context.Background()); err != nil || len(eps) != 0 {
		t.Errorf("endpoints after the refused create: %v, %v; want none", eps, err)
	}
	after, err := c.ListSessions(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != len(before) {
		t.Errorf("refused requests created %d sessions", len(after)-len(before))
	}
}

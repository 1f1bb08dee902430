package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/structs"
)

// ovHeteroTemplate is a multi-node template of main1 and two "ps" kernels
// of another image, one CPU each so that they spread over two agents: each
// ps writes its name and image into the volume and serves its environment;
// main1 asks ps1 and ps2 by name over the overlay and keeps the answers in
// the volume.
const ovHeteroTemplate = `type         = "batch"
driver       = "runc"
image        = %q
cpu          = 1
mem          = "64M"
cluster_mode = "multi-node"
volumes      = ["data:/data"]
command = ["sh", "-c", <<-EOT
  for ps in ps1 ps2; do
    ok=
    for i in $(seq 600); do
      r=$(nc -w 1 $ps 7000 </dev/null | grep IMAGE_VAR) && [ -n "$r" ] && ok=1 && break
      sleep 0.2
    done
    [ -n "$ok" ] || { echo "no answer from $ps"; exit 1; }
    echo "main1 ($IMAGE_VAR) got from $ps: $r"
    echo "$r" > /data/main1-from-$ps
  done
  EOT
]

role "ps" {
  count   = 2
  image   = %q
  command = ["sh", "-c", "echo \"$(hostname) $IMAGE_VAR\" > /data/$(hostname); exec nc -ll -p 7000 -e /bin/env"]
}
`

// TestOverlayVolumesAndRoles runs issue 16's data features on the
// namespace test bed (a server and three agents, each in its own network
// namespace, cluster sessions over VXLAN): agents 1 and 2 reach the volume
// backend "shared" (one directory, as an NFS mount would be on both),
// agent 3 none. A template's heterogeneous multi-node session (main1 and
// ps1, ps2 of another image, on two agents) talks by hostname and writes
// into a volume; a second session on another agent reads what it wrote,
// read-only; a session with a volume waits while the only agents that
// reach its backend are drained, though agent 3 is free, and runs once one
// is eligible again.
func TestOverlayVolumesAndRoles(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("overlay e2e needs root (network namespaces, VXLAN, runc)")
	}
	shared := filepath.Join(t.TempDir(), "shared")
	oc := newOvClusterWith(t, 0, func(i int) []string {
		if i < 2 {
			return []string{"-volume-root", "shared=" + shared}
		}
		return nil
	})
	ctx := context.Background()
	nameOf := map[string]string{} // agent ID -> name
	agents, err := oc.c.ListAgents(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range agents {
		nameOf[a.ID] = a.Name
	}

	base := busyboxImage(t)
	psImg := withImageVar(t, base, "ps-image")
	psRef := ovPush(t, oc.server, strings.SplitN(oc.image, "/", 2)[0], psImg, "corral/ps:1")

	if _, err := oc.c.CreateVolume(ctx, &api.CreateVolumeRequest{Name: "data", Backend: "shared"}); err != nil {
		t.Fatal(err)
	}
	if _, err := oc.c.CreateTemplate(ctx, &api.TemplateRequest{Name: "hetero", Filename: "hetero.hcl", Source: fmt.Sprintf(ovHeteroTemplate, oc.image, psRef)}); err != nil {
		t.Fatal(err)
	}

	// The heterogeneous session, from the template.
	h := oc.create(t, &api.CreateSessionRequest{Name: "hetero", Template: "hetero"})
	hd := oc.wait(t, h.Session.ID, 120*time.Second, "the template's session terminated", ovTerminated)
	logs, err := oc.c.SessionLogs(ctx, h.Session.ID, "main1")
	if err != nil {
		t.Fatal(err)
	}
	if hd.Session.Result != structs.ResultSuccess {
		t.Fatalf("template session: %s (%s)\nmain1 stdout:\n%s\nstderr:\n%s", hd.Session.Result, hd.Session.StatusInfo, logs.Stdout, logs.Stderr)
	}
	for _, ps := range []string{"ps1", "ps2"} {
		if !strings.Contains(logs.Stdout, "main1 (from-image) got from "+ps+": IMAGE_VAR=ps-image") {
			t.Fatalf("main1's output lacks %s's answer:\n%s", ps, logs.Stdout)
		}
	}
	on := map[string]string{} // hostname -> agent name
	used := map[string]bool{}
	for _, k := range hd.Kernels {
		on[k.Hostname] = nameOf[k.AgentID]
		used[nameOf[k.AgentID]] = true
		wantImage := psRef
		if k.Hostname == "main1" {
			wantImage = oc.image
		}
		if k.Image != wantImage {
			t.Errorf("%s ran image %s, want %s", k.Hostname, k.Image, wantImage)
		}
	}
	if len(on) != 3 || used["agent3"] || len(used) != 2 {
		t.Fatalf("kernels on %v: want main1, ps1, ps2 over agent1 and agent2 only (agent3 does not reach the backend)", on)
	}

	// What the kernels wrote is in the backend's directory (owner/name),
	// owned by the kernels' uid, not host root.
	st, err := os.Stat(filepath.Join(shared, "admin", "data", "ps1"))
	if err != nil {
		t.Fatalf("ps1's file in the backend: %v", err)
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); !ok || sys.Uid == 0 {
		t.Errorf("ps1's file in the volume belongs to uid %v (host root)", st.Sys())
	}

	// A reader in another session, read-only, on an agent of the backend.
	reader := `cat /in/ps1 /in/ps2 /in/main1-from-ps1; if echo x > /in/w 2>/dev/null; then echo WROTE; fi`
	r := oc.create(t, &api.CreateSessionRequest{Name: "reader", Type: structs.SessionTypeBatch, Driver: "runc", Image: oc.image,
		Command: []string{"sh", "-c", reader}, Volumes: []string{"data:/in:ro"}})
	rd := oc.wait(t, r.Session.ID, 60*time.Second, "the reader terminated", ovTerminated)
	rl, err := oc.c.SessionLogs(ctx, r.Session.ID, "main1")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"ps1 ps-image", "ps2 ps-image", "IMAGE_VAR=ps-image"} {
		if !strings.Contains(rl.Stdout, want) {
			t.Fatalf("the reader's output lacks %q:\n%s\nstderr:\n%s", want, rl.Stdout, rl.Stderr)
		}
	}
	if strings.Contains(rl.Stdout, "WROTE") {
		t.Fatalf("a read-only mount took a write:\n%s", rl.Stdout)
	}
	if rd.Session.Result != structs.ResultSuccess || nameOf[rd.Kernels[0].AgentID] == "agent3" {
		t.Fatalf("reader: %s on %s", rd.Session.Result, nameOf[rd.Kernels[0].AgentID])
	}

	// Agents 1 and 2 drained: a session with the volume waits although
	// agent3 is free, and the dry run says so; a session without volumes
	// runs on agent3 meanwhile (the scheduler passed over the first).
	idOf := map[string]string{}
	for id, n := range nameOf {
		idOf[n] = id
	}
	for _, n := range []string{"agent1", "agent2"} {
		if _, err := oc.c.DrainAgent(ctx, idOf[n], true, false); err != nil {
			t.Fatal(err)
		}
	}
	volReq := &api.CreateSessionRequest{Name: "waits", Type: structs.SessionTypeBatch, Driver: "runc", Image: oc.image,
		Command: []string{"sh", "-c", "ls /in"}, Volumes: []string{"data:/in:ro"}}
	plan, err := oc.c.PlanSession(ctx, volReq)
	if err != nil {
		t.Fatal(err)
	}
	if plan.Placed {
		t.Fatalf("dry run places a volume session with agent1 and agent2 drained: %+v", plan)
	}
	if !strings.Contains(plan.Reason, `volume backend "shared"`) {
		t.Fatalf("dry run's reason %q does not name the backend", plan.Reason)
	}
	w := oc.create(t, volReq)
	other := oc.create(t, &api.CreateSessionRequest{Name: "other", Type: structs.SessionTypeBatch, Driver: "runc", Image: oc.image,
		Command: []string{"true"}})
	od := oc.wait(t, other.Session.ID, 60*time.Second, "the session without volumes terminated", ovTerminated)
	if nameOf[od.Kernels[0].AgentID] != "agent3" {
		t.Fatalf("the session without volumes ran on %s, want agent3 (the only eligible agent)", nameOf[od.Kernels[0].AgentID])
	}
	wd, err := oc.c.GetSession(ctx, w.Session.ID)
	if err != nil {
		t.Fatal(err)
	}
	if wd.Session.Status != structs.SessionPending {
		t.Fatalf("the volume session is %s on %s with its backend's agents drained; want PENDING", wd.Session.Status, nameOf[wd.Kernels[0].AgentID])
	}
	if why := wd.Session.StatusInfo; !strings.Contains(why, `volume backend "shared"`) || !strings.Contains(why, "drained agents") || !strings.Contains(why, "agent1") || !strings.Contains(why, "agent2") {
		t.Fatalf("PENDING reason %q: want the backend and its drained agents named", why)
	}
	if _, err := oc.c.DrainAgent(ctx, idOf["agent2"], false, false); err != nil {
		t.Fatal(err)
	}
	wd = oc.wait(t, w.Session.ID, 60*time.Second, "the volume session ran once agent2 was eligible", ovTerminated)
	if wd.Session.Result != structs.ResultSuccess || nameOf[wd.Kernels[0].AgentID] != "agent2" {
		t.Fatalf("the volume session: %s on %s, want SUCCESS on agent2", wd.Session.Result, nameOf[wd.Kernels[0].AgentID])
	}
}

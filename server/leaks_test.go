package server_test

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/structs"
)

// TestNoCrossUserLeaks: names and ID prefixes resolve among the caller's
// own sessions only, names are unique per user, a name that reads as an
// ID prefix is refused, an ambiguous prefix names only the caller's
// sessions, and oversized bodies get 413 with the limit.
func TestNoCrossUserLeaks(t *testing.T) {
	c := startCluster(t, structs.Slots{structs.SlotCPU: structs.Whole(2)})
	ctx := context.Background()
	keyFor := func(user string) *api.Client {
		t.Helper()
		if _, err := c.client.CreateUser(ctx, &api.CreateUserRequest{Name: user}); err != nil {
			t.Fatal(err)
		}
		k, err := c.client.CreateKey(ctx, &api.CreateKeyRequest{User: user})
		if err != nil {
			t.Fatal(err)
		}
		cl, _ := api.NewClient(c.addr)
		cl.SetToken(k.Token)
		return cl
	}
	alice, bob := keyFor("alice"), keyFor("bob")
	huge := structs.Slots{structs.SlotCPU: structs.Whole(64)} // never fits: stays PENDING
	create := func(cl *api.Client, name string) *api.SessionDetail {
		t.Helper()
		d, err := cl.CreateSession(ctx, &api.CreateSessionRequest{Name: name, Command: []string{"true"}, Resources: huge})
		if err != nil {
			t.Fatalf("create %q: %v", name, err)
		}
		return d
	}

	// The same name for two users: two sessions, each resolves to its own.
	aj, bj := create(alice, "job"), create(bob, "job")
	for _, tc := range []struct {
		cl   *api.Client
		want string
	}{{alice, aj.Session.ID}, {bob, bj.Session.ID}} {
		if d, err := tc.cl.GetSession(ctx, "job"); err != nil || d.Session.ID != tc.want {
			t.Fatalf("\"job\" resolved to %+v (%v), want %s", d, err, tc.want)
		}
	}
	// A second live "job" of one user is a conflict that names only hers.
	if _, err := alice.CreateSession(ctx, &api.CreateSessionRequest{Name: "job", Command: []string{"true"}, Resources: huge}); apiStatus(err) != http.StatusConflict ||
		strings.Contains(err.Error(), bj.Session.ID) {
		t.Fatalf("second job of alice: %v", err)
	}
	// Another user's short ID is not found, whatever names exist.
	if _, err := bob.GetSession(ctx, aj.Session.ID[:8]); apiStatus(err) != http.StatusNotFound {
		t.Fatalf("bob resolves alice's short ID: %v", err)
	}
	// A name that reads as an ID prefix would shadow one: refused.
	if _, err := bob.CreateSession(ctx, &api.CreateSessionRequest{Name: aj.Session.ID[:8], Command: []string{"true"}, Resources: huge}); apiStatus(err) != http.StatusBadRequest ||
		!strings.Contains(err.Error(), "ID prefix") {
		t.Fatalf("an ID-like name: %v", err)
	}

	// An ambiguous prefix lists only the caller's own sessions: find a
	// first hex digit that two of bob's sessions and one of alice's share.
	mine, theirs := map[byte][]string{}, map[byte][]string{}
	mine[bj.Session.ID[0]] = append(mine[bj.Session.ID[0]], bj.Session.ID)
	theirs[aj.Session.ID[0]] = append(theirs[aj.Session.ID[0]], aj.Session.ID)
	prefix := byte(0)
	for i := 0; i < 60 && prefix == 0; i++ {
		b := create(bob, "").Session.ID
		mine[b[0]] = append(mine[b[0]], b)
		a := create(alice, "").Session.ID
		theirs[a[0]] = append(theirs[a[0]], a)
		for p, ids := range mine {
			if len(ids) >= 2 && len(theirs[p]) >= 1 {
				prefix = p
			}
		}
	}
	if prefix == 0 {
		t.Fatal("no shared first digit in 60 sessions each")
	}
	_, err := bob.GetSession(ctx, string(prefix))
	if apiStatus(err) != http.StatusConflict && apiStatus(err) != http.StatusBadRequest {
		t.Fatalf("ambiguous prefix %q: %v", prefix, err)
	}
	for _, id := range theirs[prefix] {
		if strings.Contains(err.Error(), id) {
			t.Fatalf("bob's ambiguity error names alice's session %s: %v", id, err)
		}
	}

	// Oversized bodies: 413 with the limit, for 2 MB and 20 MB.
	for _, size := range []int{2 << 20, 20 << 20} {
		body := `{"command":["true"],"name":"` + strings.Repeat("x", size) + `"}`
		req, _ := http.NewRequest(http.MethodPost, c.addr+"/v1/sessions", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+c.token)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%d-byte body: no HTTP answer: %v", size, err)
		}
		buf := new(strings.Builder)
		_, _ = io.Copy(buf, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestEntityTooLarge || !strings.Contains(buf.String(), "limit of 1MiB") {
			t.Fatalf("%d-byte body: %d %s", size, resp.StatusCode, buf.String())
		}
	}
}

// TestPolicyDrivers: a policy lists the drivers its keys may use, and the
// admin-only host driver is refused to every other key, with 403 and the
// reason.
func TestPolicyDrivers(t *testing.T) {
	c := startCluster(t, structs.Slots{structs.SlotCPU: structs.Whole(2)})
	ctx := context.Background()
	if p, err := c.client.CreatePolicy(ctx, &api.PolicyRequest{Name: "containers", Drivers: []string{"runc"}}); err != nil || len(p.Drivers) != 1 || p.Drivers[0] != "runc" {
		t.Fatalf("policy: %+v %v", p, err)
	}
	for _, u := range []struct{ user, policy string }{{"carol", "containers"}, {"dave", ""}} {
		if _, err := c.client.CreateUser(ctx, &api.CreateUserRequest{Name: u.user}); err != nil {
			t.Fatal(err)
		}
	}
	keyOf := func(user, policy string) *api.Client {
		k, err := c.client.CreateKey(ctx, &api.CreateKeyRequest{User: user, Policy: policy})
		if err != nil {
			t.Fatal(err)
		}
		cl, _ := api.NewClient(c.addr)
		cl.SetToken(k.Token)
		return cl
	}
	carol, dave := keyOf("carol", "containers"), keyOf("dave", "")
	_, err := carol.CreateSession(ctx, &api.CreateSessionRequest{Driver: "exec", Command: []string{"true"}})
	if apiStatus(err) != http.StatusForbidden || !strings.Contains(err.Error(), `driver "exec" is not allowed by policy containers (allowed: runc)`) {
		t.Fatalf("exec under a runc-only policy: %v", err)
	}
	// Without a policy every driver but the admin-only ones.
	if _, err := dave.CreateSession(ctx, &api.CreateSessionRequest{Driver: "exec", Command: []string{"true"}}); err != nil {
		t.Fatalf("exec without a policy: %v", err)
	}
	if err := structs.DriverAllowed(&structs.AccessKey{User: "dave"}, nil, "host"); err == nil || !strings.Contains(err.Error(), "admin keys only") {
		t.Fatalf("host driver for a user: %v", err)
	}
	if err := structs.DriverAllowed(&structs.AccessKey{User: "root", Admin: true}, &structs.ResourcePolicy{Drivers: []string{"runc"}}, "host"); err != nil {
		t.Fatalf("host driver for an admin: %v", err)
	}
}

// TestKernelLimits: pids and disk are per-kernel limits, not slots: they
// do not need agent capacity, reach the driver (an exec kernel reads its
// own pids.max), are bounded, and a policy caps pids per kernel and sets
// it for kernels that ask for none.
func TestKernelLimits(t *testing.T) {
	c := startCluster(t, structs.Slots{structs.SlotCPU: structs.Whole(2)})
	ctx := context.Background()
	readPidsMax := []string{"sh", "-c", `p=$(grep -E '^[0-9]+:pids:' /proc/self/cgroup | cut -d: -f3); cat /sys/fs/cgroup/pids$p/pids.max`}
	d := create(t, c, &api.CreateSessionRequest{Command: readPidsMax,
		Resources: structs.Slots{structs.LimitPids: structs.Whole(64), structs.LimitDisk: structs.Whole(1 << 30)}})
	k := d.Kernels[0]
	if k.Limits[structs.LimitPids] != structs.Whole(64) || k.Limits[structs.LimitDisk] != structs.Whole(1<<30) || k.Resources[structs.LimitPids] != 0 {
		t.Fatalf("kernel limits %v, resources %v", k.Limits, k.Resources)
	}
	d = c.waitFor(t, d.Session.ID, terminal)
	if d.Session.Result != structs.ResultSuccess {
		t.Fatalf("session with limits: %s/%s %q", d.Session.Status, d.Session.Result, d.Session.StatusInfo)
	}
	if logs, err := c.client.SessionLogs(ctx, d.Session.ID, "main1"); err != nil {
		t.Fatal(err)
	} else if out := strings.TrimSpace(string(logs.StdoutData())); out != "64" {
		t.Skipf("no pids cgroup controller visible to the kernel here (pids.max read %q, stderr %q)", out, logs.StderrData())
	}
	if _, err := c.client.CreateSession(ctx, &api.CreateSessionRequest{Command: []string{"true"}, Resources: structs.Slots{structs.LimitPids: structs.Whole(8)}}); apiStatus(err) != http.StatusBadRequest ||
		!strings.Contains(err.Error(), "limit pids=8 is out of range") {
		t.Fatalf("pids=8: %v", err)
	}
	if _, err := c.client.CreatePolicy(ctx, &api.PolicyRequest{Name: "few", PidsPerKernel: 128}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.client.CreateUser(ctx, &api.CreateUserRequest{Name: "erin"}); err != nil {
		t.Fatal(err)
	}
	key, err := c.client.CreateKey(ctx, &api.CreateKeyRequest{User: "erin", Policy: "few"})
	if err != nil {
		t.Fatal(err)
	}
	erin, _ := api.NewClient(c.addr)
	erin.SetToken(key.Token)
	if _, err := erin.CreateSession(ctx, &api.CreateSessionRequest{Command: []string{"true"}, Resources: structs.Slots{structs.LimitPids: structs.Whole(256)}}); apiStatus(err) != http.StatusForbidden ||
		!strings.Contains(err.Error(), "policy few allows 128 per kernel") {
		t.Fatalf("pids over the policy: %v", err)
	}
	d, err = erin.CreateSession(ctx, &api.CreateSessionRequest{Command: readPidsMax})
	if err != nil || d.Kernels[0].Limits[structs.LimitPids] != structs.Whole(128) {
		t.Fatalf("policy default pids: %+v %v", d, err)
	}
}

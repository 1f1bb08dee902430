package server_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/structs"
)

// TestClusterSessionAPI: a cluster session's job settings default, its
// kernel options are stored normalised, every kernel gets a launch with
// the session's keys, and the API never shows the private key (create,
// get, list of kernels in the raw JSON), while the state the agents are
// served from keeps it. Bad values are 400, options beyond the key's
// policy 403, naming the policy.
func TestClusterSessionAPI(t *testing.T) {
	c := startCluster(t, nil)
	ctx := context.Background()
	d := create(t, c, &api.CreateSessionRequest{Type: "batch", Command: []string{"sleep", "30"}, ClusterSize: 3, Resources: small,
		Shm: "16M", Ulimits: []string{"nofile=1024:4096"}, CapAdd: []string{"ipc_lock"}})
	defer c.client.DestroySession(ctx, d.Session.ID)
	if s := d.Session; s.RunOn != "main" || s.FailOn != "any" || s.StartOrder != "barrier" {
		t.Fatalf("job settings %q/%q/%q, want main/any/barrier", s.RunOn, s.FailOn, s.StartOrder)
	}
	for _, k := range d.Kernels {
		o := k.Options
		if o == nil || o.ShmBytes != 16<<20 || len(o.CapAdd) != 1 || o.CapAdd[0] != "CAP_IPC_LOCK" || len(o.Ulimits) != 1 || o.Ulimits[0] != (structs.Ulimit{Name: "nofile", Soft: 1024, Hard: 4096}) {
			t.Fatalf("%s's options %+v", k.Hostname, o)
		}
		l := k.Launch
		if l == nil || l.NumNodes != 3 || l.NodeRank != map[string]int{"main1": 0, "sub1": 1, "sub2": 2}[k.Hostname] || !l.Barrier || l.Serve != (k.Hostname != "main1") {
			t.Fatalf("%s's launch %+v", k.Hostname, l)
		}
		if l.SSHPrivateKey != "(redacted)" || len(l.AuthorizedKeys) != 1 || !strings.HasPrefix(l.AuthorizedKeys[0], "ssh-ed25519 ") {
			t.Fatalf("%s's keys as the API shows them: %q %q", k.Hostname, l.SSHPrivateKey, l.AuthorizedKeys)
		}
	}
	// The raw answer of GET never carries the key.
	req, _ := http.NewRequest("GET", c.addr+"/v1/sessions/"+d.Session.ID, nil)
	req.Header.Set("Authorization", "Bearer "+c.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if strings.Contains(string(raw), "PRIVATE KEY") || !strings.Contains(string(raw), `"ssh_private_key": "(redacted)"`) {
		t.Fatalf("GET shows the key or no redaction: %s", raw)
	}
	// The state (what agents are served) keeps it, and one per session.
	ks, err := c.srv.State().Snapshot().KernelsBySession(nil, d.Session.ID)
	if err != nil || len(ks) != 3 {
		t.Fatalf("kernels in the state: %v %v", ks, err)
	}
	for _, k := range ks {
		if !strings.HasPrefix(k.Launch.SSHPrivateKey, "-----BEGIN OPENSSH PRIVATE KEY-----") || k.Launch.SSHPrivateKey != ks[0].Launch.SSHPrivateKey {
			t.Fatalf("%s's stored key %.40q", k.Hostname, k.Launch.SSHPrivateKey)
		}
	}
	inter := create(t, c, &api.CreateSessionRequest{Type: "interactive", Command: []string{"sleep", "30"}, ClusterSize: 2, Resources: small, StartOrder: "unordered"})
	defer c.client.DestroySession(ctx, inter.Session.ID)
	if s := inter.Session; s.RunOn != "all" || s.FailOn != "main" || s.StartOrder != "unordered" {
		t.Fatalf("interactive job settings %q/%q/%q, want all/main/unordered", s.RunOn, s.FailOn, s.StartOrder)
	}
	// A role with a command of its own runs it under run_on main too; the
	// other subs only serve.
	roled := create(t, c, &api.CreateSessionRequest{Type: "batch", Command: []string{"sleep", "30"}, ClusterSize: 3, Resources: small,
		Roles: []api.RoleSpec{{Role: "sub", Command: []string{"sh", "-c", "exit 0"}}}})
	defer c.client.DestroySession(ctx, roled.Session.ID)
	for _, k := range roled.Kernels {
		if k.Launch == nil || k.Launch.Serve {
			t.Fatalf("%s of a session whose sub role has a command: launch %+v, want it to run the command", k.Hostname, k.Launch)
		}
	}
	single := create(t, c, &api.CreateSessionRequest{Type: "batch", Command: []string{"true"}, Resources: small})
	if s := single.Session; s.RunOn != "" || single.Kernels[0].Launch != nil || single.Kernels[0].Options != nil {
		t.Fatalf("single kernel: %q %+v %+v", s.RunOn, single.Kernels[0].Launch, single.Kernels[0].Options)
	}

	post := func(t *testing.T, token, path, body string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest("POST", c.addr+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var e api.ErrorResponse
		_ = json.NewDecoder(resp.Body).Decode(&e)
		return resp.StatusCode, e.Error
	}
	for _, tc := range []struct{ name, body, want string }{
		{"run_on", `{"command": ["true"], "cluster_size": 2, "run_on": "sub"}`, `unknown run_on "sub"`},
		{"fail_on", `{"command": ["true"], "cluster_size": 2, "fail_on": "some"}`, `unknown fail_on "some"`},
		{"start_order", `{"command": ["true"], "cluster_size": 2, "start_order": "later"}`, `unknown start_order "later"`},
		{"shm", `{"command": ["true"], "shm": "big"}`, `shm: invalid size "big"`},
		{"ulimit", `{"command": ["true"], "ulimits": ["memlock"]}`, "want name=soft[:hard]"},
		{"cap", `{"command": ["true"], "cap_add": ["CAP_FLY"]}`, `unknown capability "CAP_FLY"`},
		{"network", `{"command": ["true"], "network": "overlay"}`, `unknown network "overlay"`},
		{"policy shm", `{"name": "p", "max_shm": "lots"}`, `invalid max_shm "lots"`},
		{"policy cap", `{"name": "p", "allowed_capabilities": ["FLY"]}`, `allowed_capabilities: unknown capability "FLY"`},
		{"policy ulimit", `{"name": "p", "allowed_ulimits": ["files"]}`, `allowed_ulimits: unknown ulimit "files"`},
	} {
		t.Run("400 "+tc.name, func(t *testing.T) {
			path := "/v1/sessions"
			if strings.HasPrefix(tc.name, "policy") {
				path = "/v1/policies"
			}
			if code, msg := post(t, c.token, path, tc.body); code != 400 || !strings.Contains(msg, tc.want) {
				t.Fatalf("got %d %q, want 400 containing %q", code, msg, tc.want)
			}
		})
	}

	// A user under a fresh policy, then under one that allows more.
	if _, err := c.client.CreatePolicy(ctx, &api.PolicyRequest{Name: "fresh"}); err != nil {
		t.Fatal(err)
	}
	hpc, err := c.client.CreatePolicy(ctx, &api.PolicyRequest{Name: "hpc", MaxShm: "1G", MaxMemlock: "unlimited", AllowedCapabilities: []string{"IPC_LOCK"}, AllowHostNetwork: true})
	if err != nil {
		t.Fatal(err)
	}
	if hpc.MaxShmBytes != 1<<30 || hpc.MaxMemlockBytes != -1 || len(hpc.AllowedCapabilities) != 1 || hpc.AllowedCapabilities[0] != "CAP_IPC_LOCK" || !hpc.AllowHostNetwork || hpc.AllowInfiniBand {
		t.Fatalf("policy hpc %+v", hpc)
	}
	if _, err := c.client.CreateUser(ctx, &api.CreateUserRequest{Name: "carol"}); err != nil {
		t.Fatal(err)
	}
	key, err := c.client.CreateKey(ctx, &api.CreateKeyRequest{User: "carol", Policy: "fresh"})
	if err != nil {
		t.Fatal(err)
	}
	body := `{"command": ["true"], "resources": {"cpu": 0.1, "mem": 33554432}, "shm": "64M", "ulimits": ["memlock=unlimited"], "cap_add": ["IPC_LOCK"], "network": "host"}`
	if code, msg := post(t, key.Token, "/v1/sessions", body); code != 403 || !strings.Contains(msg, "kernel main1: shm of 64MiB is above policy fresh's limit of 32MiB (the kernel's mem)") {
		t.Fatalf("under fresh: %d %q", code, msg)
	}
	if _, err := c.client.ApplyPolicy(ctx, key.Key.AccessKey, "hpc"); err != nil {
		t.Fatal(err)
	}
	if code, msg := post(t, key.Token, "/v1/sessions", body); code != 201 {
		t.Fatalf("under hpc: %d %q", code, msg)
	}
	if code, msg := post(t, key.Token, "/v1/sessions", strings.Replace(body, `"network": "host"`, `"infiniband": true`, 1)); code != 403 || !strings.Contains(msg, "InfiniBand devices are not allowed by policy hpc") {
		t.Fatalf("infiniband under hpc: %d %q", code, msg)
	}
}

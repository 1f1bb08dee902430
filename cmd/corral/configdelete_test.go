package main

import (
	"strings"
	"testing"
)

// TestConfigDeleteCommands: user, policy and group delete against a real
// server are refused with what uses them while in use, and go once not.
func TestConfigDeleteCommands(t *testing.T) {
	srvs, token := startServers(t, 1)
	addr := "http://" + srvs[0].HTTPAddr()
	admin := func(want int, args ...string) cliResult {
		t.Helper()
		return mustRun(t, addr, want, append(args, "-token", token)...)
	}
	admin(0, "policy", "create", "pol", "-max-pending", "5")
	admin(0, "group", "create", "batch")
	admin(0, "user", "create", "dave")
	kr := admin(0, "key", "create", "-user", "dave", "-policy", "pol", "-groups", "default,batch")
	dave := strings.TrimSpace(kr.stdout[strings.Index(kr.stdout, "CORRAL_TOKEN=")+len("CORRAL_TOKEN="):])
	keyID, _, _ := strings.Cut(dave, ".")
	// No agent: the session stays PENDING.
	sr := mustRun(t, addr, 0, "session", "create", "-group", "batch", "-token", dave, "--", "true")
	sid := sessionIDFrom(t, sr.stdout)

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"user", "delete", "dave"}, "user dave is in use: user dave has 1 session that have not ended (" + sid},
		{[]string{"policy", "delete", "pol"}, "policy pol is in use: policy pol is applied to 1 access key (" + keyID + ")"},
		{[]string{"group", "delete", "batch"}, "group batch is in use: group batch has 1 session that have not ended (" + sid},
		{[]string{"user", "delete", "admin"}, "user admin is the user of the key this request uses"},
		{[]string{"user", "delete", "nobody"}, `user "nobody": not found`},
		{[]string{"group", "delete", "nogroup"}, `resource group "nogroup": not found`},
	} {
		r := admin(1, tc.args...)
		if !strings.Contains(r.stderr, tc.want) || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 {
			t.Fatalf("corral %s: stderr %q, want %q", strings.Join(tc.args, " "), r.stderr, tc.want)
		}
	}
	if r := mustRun(t, addr, 1, "policy", "delete", "pol", "-token", dave); !strings.Contains(r.stderr, "admin key") {
		t.Fatalf("delete by a user: %q", r.stderr)
	}
	if r := admin(2, "user", "delete"); !strings.Contains(r.stderr, "missing user name") {
		t.Fatalf("no name: %q", r.stderr)
	}
	// Nothing went: dave still authenticates.
	mustRun(t, addr, 0, "session", "list", "-token", dave)

	// The session ends (cancelled): dave and the group may go; the policy
	// goes once dave's key went with him.
	admin(0, "session", "destroy", sid)
	if r := admin(1, "policy", "delete", "pol"); !strings.Contains(r.stderr, keyID) {
		t.Fatalf("policy of a live key: %q", r.stderr)
	}
	if r := admin(0, "user", "delete", "dave"); !strings.Contains(r.stdout, "user dave deleted with its access keys "+keyID) {
		t.Fatalf("user delete: %q", r.stdout)
	}
	if r := mustRun(t, addr, 1, "session", "list", "-token", dave); !strings.Contains(r.stderr, "invalid credentials") {
		t.Fatalf("dave's key after his delete: %q", r.stderr)
	}
	admin(0, "policy", "delete", "pol")
	admin(0, "group", "delete", "batch")
	if r := admin(0, "group", "list"); strings.Contains(r.stdout, "batch") {
		t.Fatalf("group list after the delete:\n%s", r.stdout)
	}
	if r := admin(0, "policy", "list"); strings.Contains(r.stdout, "pol") {
		t.Fatalf("policy list after the delete:\n%s", r.stdout)
	}
}

// sessionIDFrom reads the ID session create prints first.
func sessionIDFrom(t *testing.T, out string) string {
	t.Helper()
	f := strings.Fields(out)
	if len(f) == 0 {
		t.Fatalf("session create printed nothing")
	}
	return f[0]
}

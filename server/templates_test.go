package server_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/structs"
)

// TestExtraRolesAPI: extra roles add kernels named after the role, with
// their own command, resources and rank after main1 and the subs, and the
// session runs them all.
func TestExtraRolesAPI(t *testing.T) {
	c := startCluster(t, nil)
	ctx := context.Background()
	d := create(t, c, &api.CreateSessionRequest{Type: "batch", Command: []string{"sh", "-c", "sleep 0.2"}, ClusterSize: 3, Resources: small,
		Roles: []api.RoleSpec{
			{Role: "ps", Count: 2, Command: []string{"sh", "-c", "echo ps $CORRAL_CLUSTER_HOST of $CORRAL_CLUSTER_HOSTS; exec sleep 60"},
				Resources: structs.Slots{structs.SlotCPU: 200}},
			{Role: "aux"},
		}})
	if d.Session.ClusterSize != 6 {
		t.Fatalf("cluster size %d, want 6", d.Session.ClusterSize)
	}
	want := map[string]struct {
		role string
		idx  int
		rank int
	}{"main1": {"main", 1, 0}, "sub1": {"sub", 1, 1}, "sub2": {"sub", 2, 2}, "aux1": {"aux", 1, 3}, "ps1": {"ps", 1, 4}, "ps2": {"ps", 2, 5}}
	if len(d.Kernels) != len(want) {
		t.Fatalf("%d kernels", len(d.Kernels))
	}
	for i, k := range d.Kernels {
		w, ok := want[k.Hostname]
		if !ok || k.Role != w.role || k.Idx != w.idx || k.Launch == nil || k.Launch.NodeRank != w.rank || k.Launch.NumNodes != 6 {
			t.Fatalf("kernel %s: role %s idx %d launch %+v", k.Hostname, k.Role, k.Idx, k.Launch)
		}
		if i != w.rank {
			t.Fatalf("kernel %s listed at %d, want %d (main, sub, then extra roles by name)", k.Hostname, i, w.rank)
		}
		if k.Env["CORRAL_CLUSTER_HOSTS"] != "main1,sub1,sub2,aux1,ps1,ps2" || k.Env["CORRAL_CLUSTER_ROLE"] != w.role {
			t.Fatalf("kernel %s env %v", k.Hostname, k.Env)
		}
		switch w.role {
		case "ps":
			if k.Resources[structs.SlotCPU] != 200 || k.Resources[structs.SlotMem] != small[structs.SlotMem] || k.Launch.Serve || !strings.HasPrefix(k.Command[2], "echo ps") {
				t.Fatalf("ps kernel %s: %v %v serve=%v", k.Hostname, k.Resources, k.Command, k.Launch.Serve)
			}
		case "aux", "sub":
			// No command of their own: they serve under run_on main.
			if !k.Launch.Serve || k.Resources[structs.SlotCPU] != small[structs.SlotCPU] {
				t.Fatalf("%s kernel %s: serve=%v %v", w.role, k.Hostname, k.Launch.Serve, k.Resources)
			}
		}
	}
	done := c.waitFor(t, d.Session.ID, terminal)
	if done.Session.Result != structs.ResultSuccess {
		t.Fatalf("session ended %s/%s: %s", done.Session.Status, done.Session.Result, done.Session.StatusInfo)
	}
	// After placement every kernel's peers hold every role, in rank order.
	ks, err := c.srv.State().Snapshot().KernelsBySession(nil, d.Session.ID)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range ks {
		var hosts []string
		for _, p := range k.Launch.Peers {
			hosts = append(hosts, p.Hostname)
		}
		if strings.Join(hosts, ",") != "main1,sub1,sub2,aux1,ps1,ps2" {
			t.Fatalf("%s's peers %v", k.Hostname, hosts)
		}
	}
	logs, err := c.client.SessionLogs(ctx, d.Session.ID, "ps2")
	if err != nil || !strings.Contains(logs.Stdout, "ps ps2 of main1,sub1,sub2,aux1,ps1,ps2") {
		t.Fatalf("ps2 output %+v %v", logs, err)
	}

	for _, tc := range []struct {
		name string
		req  api.CreateSessionRequest
		want string
	}{
		{"role name", api.CreateSessionRequest{Command: []string{"true"}, Roles: []api.RoleSpec{{Role: "ps2"}}}, `invalid role name "ps2"`},
		{"main count", api.CreateSessionRequest{Command: []string{"true"}, Roles: []api.RoleSpec{{Role: "main", Count: 2}}}, "count is for extra roles"},
		{"too many", api.CreateSessionRequest{Command: []string{"true"}, ClusterSize: 40, Roles: []api.RoleSpec{{Role: "ps", Count: 30}}}, "the session has 70 kernels"},
		{"role twice", api.CreateSessionRequest{Command: []string{"true"}, Roles: []api.RoleSpec{{Role: "ps"}, {Role: "ps"}}}, `role "ps" is given twice`},
		{"sub without subs", api.CreateSessionRequest{Command: []string{"true"}, Roles: []api.RoleSpec{{Role: "ps"}, {Role: "sub", Image: "x"}}}, "role sub given for a session without sub kernels"},
		{"role driver", api.CreateSessionRequest{Command: []string{"true"}, Roles: []api.RoleSpec{{Role: "ps", Driver: "warp"}}}, `role ps: unknown driver "warp"`},
	} {
		t.Run("400 "+tc.name, func(t *testing.T) {
			_, err := c.client.CreateSession(ctx, &tc.req)
			var ae *api.Error
			if !errors.As(err, &ae) || ae.StatusCode != http.StatusBadRequest || !strings.Contains(ae.Message, tc.want) {
				t.Fatalf("got %v, want 400 with %q", err, tc.want)
			}
		})
	}
}

const userTemplate = `# carol's template
type    = "batch"
command = ["sh", "-c", "echo from-template $GREETING"]
env     = { GREETING = "hi", KEEP = "kept" }
cpu     = 0.2
mem     = "48M"

# The helper ends at once: it keeps its ssh server up until main1 has
# found it at the start barrier (corral-kernel's check-in), so main1 runs.
role "helper" {
  count   = 1
  command = ["true"]
}
`

// TestTemplatesAPI: users keep templates of their own, admins global
// ones; a create from a template takes its fields with the create's on
// top; bad templates are refused with line numbers; dry runs place
// without submitting.
func TestTemplatesAPI(t *testing.T) {
	c := startCluster(t, nil)
	ctx := context.Background()
	if _, err := c.client.CreateUser(ctx, &api.CreateUserRequest{Name: "carol"}); err != nil {
		t.Fatal(err)
	}
	key, err := c.client.CreateKey(ctx, &api.CreateKeyRequest{User: "carol"})
	if err != nil {
		t.Fatal(err)
	}
	carol, _ := api.NewClient(c.addr)
	carol.SetToken(key.Token)
	status := func(err error) (int, string) {
		var ae *api.Error
		if !errors.As(err, &ae) {
			return 0, ""
		}
		return ae.StatusCode, ae.Message
	}

	if _, err := c.client.CreateTemplate(ctx, &api.TemplateRequest{Name: "base", Global: true, Source: "cpu = 0.1\nmem = \"32M\"\ncommand = [\"sh\", \"-c\", \"echo global\"]\n"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.client.CreateTemplate(ctx, &api.TemplateRequest{Name: "admins", Source: "command = [\"true\"]\n"}); err != nil {
		t.Fatal(err)
	}
	tpl, err := carol.CreateTemplate(ctx, &api.TemplateRequest{Name: "mine", Filename: "mine.hcl", Source: userTemplate})
	if err != nil || tpl.Owner != "carol" || tpl.ID != "carol/mine" {
		t.Fatalf("carol's template: %+v %v", tpl, err)
	}
	// Creating it again is a conflict unless replaced.
	if code, _ := status2(carol.CreateTemplate(ctx, &api.TemplateRequest{Name: "mine", Source: userTemplate})); code != http.StatusConflict {
		t.Fatalf("duplicate template: %d", code)
	}
	if _, err := carol.CreateTemplate(ctx, &api.TemplateRequest{Name: "mine", Filename: "mine.hcl", Source: userTemplate, Replace: true}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		req  api.TemplateRequest
		code int
		want string
	}{
		{"global by a user", api.TemplateRequest{Name: "g2", Global: true, Source: "cpu = 1\n"}, 403, "only admins"},
		{"syntax", api.TemplateRequest{Name: "bad", Filename: "bad.hcl", Source: "cpu = 1\nmem = \n"}, 400, "bad.hcl:2:"},
		{"field", api.TemplateRequest{Name: "bad", Filename: "bad.hcl", Source: "cpu = 1\n\nrole \"ps\" {\n  count = 100\n}\n"}, 400, "bad.hcl:4:11: invalid count"},
		{"unknown field", api.TemplateRequest{Name: "bad", Source: "image = \"a\"\ngpu = 1\n"}, 400, "bad.hcl:2:1: Unsupported argument"},
		{"server check", api.TemplateRequest{Name: "bad", Source: "driver = \"warp\"\n"}, 400, `template bad: unknown driver "warp"`},
		{"name", api.TemplateRequest{Name: "bad name", Source: "cpu = 1\n"}, 400, "invalid template name"},
		{"empty", api.TemplateRequest{Name: "bad", Source: " \n"}, 400, "the source is empty"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := carol.CreateTemplate(ctx, &tc.req)
			if code, msg := status(err); code != tc.code || !strings.Contains(msg, tc.want) {
				t.Fatalf("got %v, want %d with %q", err, tc.code, tc.want)
			}
		})
	}
	list, err := carol.ListTemplates(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, tp := range list {
		ids = append(ids, tp.ID)
	}
	if strings.Join(ids, " ") != "/base carol/mine" {
		t.Fatalf("carol sees %v, want the global one and hers", ids)
	}
	if all, _ := c.client.ListTemplates(ctx); len(all) != 3 {
		t.Fatalf("admin sees %d templates, want 3", len(all))
	}

	// A create from the template with overrides.
	d, err := carol.CreateSession(ctx, &api.CreateSessionRequest{Template: "mine", Env: map[string]string{"GREETING": "override"},
		Resources: structs.Slots{structs.SlotCPU: 300}})
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Kernels) != 2 || d.Kernels[0].Hostname != "main1" || d.Kernels[1].Hostname != "helper1" {
		t.Fatalf("kernels %+v", d.Kernels)
	}
	m := d.Kernels[0]
	if m.Env["GREETING"] != "override" || m.Env["KEEP"] != "kept" || m.Resources[structs.SlotCPU] != 300 || m.Resources[structs.SlotMem] != structs.Whole(48<<20) {
		t.Fatalf("main1 env %v resources %v", m.Env, m.Resources)
	}
	done := c.waitFor(t, d.Session.ID, terminal)
	if done.Session.Result != structs.ResultSuccess {
		t.Fatalf("template session: %s %s", done.Session.Result, done.Session.StatusInfo)
	}
	logs, err := carol.SessionLogs(ctx, d.Session.ID, "main1")
	if err != nil || strings.TrimSpace(logs.Stdout) != "from-template override" {
		t.Fatalf("main1 output %q %v", logs.Stdout, err)
	}
	// A template's volumes are resolved like the create's own: carol has
	// no volume "data", so both a create and a dry run are refused.
	if _, err := carol.CreateTemplate(ctx, &api.TemplateRequest{Name: "vol", Source: "command = [\"true\"]\nvolumes = [\"data:/data:ro\"]\n"}); err != nil {
		t.Fatal(err)
	}
	for what, call := range map[string]func() (any, error){
		"create":  func() (any, error) { return carol.CreateSession(ctx, &api.CreateSessionRequest{Template: "vol"}) },
		"dry run": func() (any, error) { return carol.PlanSession(ctx, &api.CreateSessionRequest{Template: "vol"}) },
	} {
		if _, err := call(); err == nil || !strings.Contains(err.Error(), `no volume "data"`) {
			t.Fatalf("%s from a template with another's volume: %v", what, err)
		}
	}
	// The global template, by any user; another user's is not found.
	if g, err := carol.CreateSession(ctx, &api.CreateSessionRequest{Template: "base"}); err != nil || g.Kernels[0].Command[2] != "echo global" {
		t.Fatalf("global template: %+v %v", g, err)
	}
	if code, msg := status2(carol.CreateSession(ctx, &api.CreateSessionRequest{Template: "admins"})); code != 400 || !strings.Contains(msg, `no template "admins"`) {
		t.Fatalf("another user's template: %d %q", code, msg)
	}

	// Dry run: placed on the agent with every kernel, nothing submitted.
	before, _ := carol.ListSessions(ctx, "")
	p, err := carol.PlanSession(ctx, &api.CreateSessionRequest{Template: "mine", DependsOn: []string{"later"}})
	if err != nil {
		t.Fatal(err)
	}
	if !p.Placed || len(p.Kernels) != 2 || p.Kernels[1].Hostname != "helper1" || p.Kernels[0].AgentID != c.agent.ID() || p.Kernels[1].AgentID != c.agent.ID() || p.QueuePosition < 1 {
		t.Fatalf("plan %+v", p)
	}
	p, err = carol.PlanSession(ctx, &api.CreateSessionRequest{Template: "mine", Resources: structs.Slots{structs.SlotCPU: structs.Whole(4000)}})
	if err != nil || p.Placed || !strings.Contains(p.Reason, "cpu") || p.Kernels[0].AgentID != "" {
		t.Fatalf("plan of too much: %+v %v", p, err)
	}
	if after, _ := carol.ListSessions(ctx, ""); len(after) != len(before) {
		t.Fatalf("a dry run submitted a session: %d -> %d", len(before), len(after))
	}

	// Deletes: carol's own; the global one only by an admin.
	if code, _ := status(carol.DeleteTemplate(ctx, "base", true)); code != 403 {
		t.Fatalf("user deleting a global template: %d", code)
	}
	if code, _ := status(carol.DeleteTemplate(ctx, "base", false)); code != 404 {
		t.Fatalf("user deleting a global template as hers: %d", code)
	}
	for _, name := range []string{"mine", "vol"} {
		if err := carol.DeleteTemplate(ctx, name, false); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.client.DeleteTemplate(ctx, "base", true); err != nil {
		t.Fatal(err)
	}
	if list, _ := carol.ListTemplates(ctx); len(list) != 0 {
		t.Fatalf("after deletes carol sees %+v", list)
	}
}

func status2[T any](_ T, err error) (int, string) {
	var ae *api.Error
	if !errors.As(err, &ae) {
		return 0, ""
	}
	return ae.StatusCode, ae.Message
}

package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/jobspec"
	"github.com/corral-dev/corral/structs"
)

var templateCommands = []command{
	{"create", "NAME -f FILE [-global] [-replace]", "store a session template (HCL or JSON, docs/templates.md)", (*cli).templateCreate},
	{"list", "[flags]", "list your templates and the global ones", (*cli).templateList},
	{"show", "NAME [-global]", "print a template's source", (*cli).templateShow},
	{"delete", "NAME [-global]", "delete one of your templates (a global one with -global: admins)", (*cli).templateDelete},
}

// readSource reads a file, or stdin for "-".
func (c *cli) readSource(path string) ([]byte, error) {
	if path == "-" {
		in := c.stdin
		if in == nil {
			in = os.Stdin
		}
		return io.ReadAll(in)
	}
	return os.ReadFile(path)
}

func (c *cli) templateCreate(ctx context.Context, args []string) error {
	f := c.newFlags("template create", "NAME -f FILE [-global] [-replace]",
		"Store a session template: the defaults of 'session create -template NAME'\n"+
			"(type, image, driver, resources, env, volumes, ports, cluster size and\n"+
			"mode, and extra roles). The file is checked here and by the server;\n"+
			"errors give the file, line, column and field.", true)
	file := f.String("f", "", "template file (HCL, or JSON when it ends in .json; - reads stdin)")
	global := f.Bool("global", false, "make the template everyone's (admins only)")
	replace := f.Bool("replace", false, "replace a template of the same name")
	name, err := f.parseRef(args, "template name")
	if err != nil {
		return err
	}
	if *file == "" {
		return f.usageErr("missing -f FILE: the template to store")
	}
	src, err := c.readSource(*file)
	if err != nil {
		return err
	}
	filename := filepath.Base(*file)
	if *file == "-" {
		filename = name + ".hcl"
	}
	// Checked here first: the same errors, without a round trip.
	if _, err := jobspec.ParseTemplate(filename, src); err != nil {
		return fmt.Errorf("template %s is invalid:\n%v", name, err)
	}
	client, err := f.client()
	if err != nil {
		return err
	}
	t, err := client.CreateTemplate(ctx, &api.TemplateRequest{Name: name, Filename: filename, Source: string(src), Global: *global, Replace: *replace})
	if err != nil {
		return err
	}
	if f.json {
		return printJSON(c.stdout, t)
	}
	fmt.Fprintf(c.stdout, "template %s stored (%s)\n", t.Name, templateScope(t))
	return nil
}

func templateScope(t *structs.Template) string {
	if t.Global() {
		return "global"
	}
	return "owner " + t.Owner
}

func (c *cli) templateList(ctx context.Context, args []string) error {
	f := c.newFlags("template list", "[flags]", "List your templates and the global ones (admins: every user's).", true)
	if err := f.parseNone(args); err != nil {
		return err
	}
	client, err := f.client()
	if err != nil {
		return err
	}
	ts, err := client.ListTemplates(ctx)
	if err != nil {
		return err
	}
	if f.json {
		return printJSON(c.stdout, ts)
	}
	tw := newTable(c.stdout)
	fmt.Fprintln(tw, "NAME\tSCOPE\tSUMMARY\tUPDATED")
	for _, t := range ts {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", t.Name, templateScope(t), templateSummary(t), t.UpdatedAt.Local().Format("2006-01-02 15:04"))
	}
	return tw.Flush()
}

// templateSummary is one line about what a template runs.
func templateSummary(t *structs.Template) string {
	spec, err := jobspec.ParseTemplate(t.Filename, []byte(t.Source))
	if err != nil {
		return "(does not parse: " + oneLine(err.Error()) + ")"
	}
	return requestSummary(&spec.Request)
}

// requestSummary describes a create request in a few words.
func requestSummary(r *api.CreateSessionRequest) string {
	var parts []string
	if r.Type != "" {
		parts = append(parts, string(r.Type))
	}
	driver := r.Driver
	if driver == "" {
		driver = "exec"
	}
	parts = append(parts, driver)
	if r.Image != "" {
		parts = append(parts, r.Image)
	}
	if len(r.Resources) > 0 {
		parts = append(parts, r.Resources.String())
	}
	kernels := []string{"main1"}
	if r.ClusterSize > 1 {
		kernels = append(kernels, fmt.Sprintf("%d sub", r.ClusterSize-1))
	}
	for _, rs := range r.Roles {
		if rs.Count > 0 {
			kernels = append(kernels, fmt.Sprintf("%d %s", rs.Count, rs.Role))
		}
	}
	parts = append(parts, strings.Join(kernels, "+"))
	return strings.Join(parts, " ")
}

func (c *cli) templateShow(ctx context.Context, args []string) error {
	f := c.newFlags("template show", "NAME [-global]", "Print a template's source: yours, else the global one of that name.", true)
	global := f.Bool("global", false, "show the global template of that name")
	name, client, err := f.refClient(args, "template name")
	if err != nil {
		return err
	}
	t, err := client.GetTemplate(ctx, name, *global)
	if err != nil {
		return err
	}
	if f.json {
		return printJSON(c.stdout, t)
	}
	fmt.Fprintf(c.stdout, "# template %s (%s), from %s, updated %s\n", t.Name, templateScope(t), t.Filename, t.UpdatedAt.Local().Format("2006-01-02 15:04:05"))
	fmt.Fprint(c.stdout, t.Source)
	if !strings.HasSuffix(t.Source, "\n") {
		fmt.Fprintln(c.stdout)
	}
	return nil
}

func (c *cli) templateDelete(ctx context.Context, args []string) error {
	f := c.newFlags("template delete", "NAME [-global]", "Delete one of your templates, or a global one (-global, admins).", false)
	global := f.Bool("global", false, "delete the global template of that name")
	name, client, err := f.refClient(args, "template name")
	if err != nil {
		return err
	}
	if err := client.DeleteTemplate(ctx, name, *global); err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "template %s deleted\n", name)
	return nil
}

// runJob is `corral run FILE`: submit the sessions of a job file in
// dependency order, or with -dry-run show where each would go.
func (c *cli) runJob(ctx context.Context, args []string) error {
	f := c.newFlags("run", "FILE [-dry-run] [-wait]",
		"Submit the sessions a job file describes (docs/templates.md): one session,\n"+
			"or several session \"NAME\" { ... } blocks whose depends_on make a pipeline.\n"+
			"Prints each session's ID and name. With -dry-run, submit nothing: show the\n"+
			"kernels of each session and the agent the scheduler would place each on\n"+
			"now, or why the session would wait.", false)
	dry := f.Bool("dry-run", false, "show what would be placed where, and why, without submitting")
	wait := f.Bool("wait", false, "follow the sessions until they end; exit non-zero unless all succeed")
	file, err := f.parseRef(args, "job file")
	if err != nil {
		return err
	}
	src, err := c.readSource(file)
	if err != nil {
		return err
	}
	name := filepath.Base(file)
	if file == "-" {
		name = "stdin.hcl"
	}
	job, err := jobspec.ParseJob(name, src)
	if err != nil {
		return fmt.Errorf("job file %s is invalid:\n%v", file, err)
	}
	client, err := f.client()
	if err != nil {
		return err
	}
	if *dry {
		return c.planJob(ctx, client, job)
	}
	ids := map[string]string{} // session name in the file → ID
	var created []*api.SessionDetail
	for _, spec := range job.Sessions {
		req := spec.Request
		req.DependsOn = nil
		for _, dep := range spec.Request.DependsOn {
			if id, ok := ids[dep]; ok {
				dep = id
			}
			req.DependsOn = append(req.DependsOn, dep)
		}
		d, err := createOnce(ctx, client, &req, c.stderr)
		if err != nil {
			what := "the session"
			if spec.Name != "" {
				what = "session " + spec.Name
			}
			if len(created) > 0 {
				return fmt.Errorf("%s: %w (the %d sessions before it were submitted)", what, err, len(created))
			}
			return fmt.Errorf("%s: %w", what, err)
		}
		if spec.Name != "" {
			ids[spec.Name] = d.Session.ID
		}
		created = append(created, d)
		if d.Session.Name != "" {
			fmt.Fprintf(c.stdout, "%s %s\n", d.Session.ID, d.Session.Name)
		} else {
			fmt.Fprintln(c.stdout, d.Session.ID)
		}
	}
	if !*wait {
		return nil
	}
	failed := 0
	for _, d := range created {
		d, err := followSession(ctx, client, d, func(s *structs.Session) bool { return s.Status.Terminal() }, nil)
		if err != nil {
			return fmt.Errorf("following session %s: %w", shortID(d.Session.ID), err)
		}
		s := d.Session
		fmt.Fprintf(c.stderr, "session %s %s: %s %s%s\n", shortID(s.ID), s.Name, s.Status, s.Result, suffix(s.StatusInfo))
		if s.Result != structs.ResultSuccess {
			failed++
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d sessions did not succeed", failed, len(created))
	}
	return nil
}

// planJob prints the dry run of each session of a job.
func (c *cli) planJob(ctx context.Context, client *api.Client, job *jobspec.Job) error {
	inFile := map[string]bool{}
	for _, s := range job.Sessions {
		inFile[s.Name] = true
	}
	for i, spec := range job.Sessions {
		if i > 0 {
			fmt.Fprintln(c.stdout)
		}
		title := spec.Name
		if title == "" {
			title = "(unnamed)"
		}
		p, err := client.PlanSession(ctx, &spec.Request)
		if err != nil {
			return fmt.Errorf("session %s: %w", title, err)
		}
		fmt.Fprintf(c.stdout, "session %s", title)
		if spec.Request.Template != "" {
			fmt.Fprintf(c.stdout, " (template %s)", spec.Request.Template)
		}
		fmt.Fprintln(c.stdout)
		if deps := spec.Request.DependsOn; len(deps) > 0 {
			var where []string
			for _, d := range deps {
				if inFile[d] {
					where = append(where, d+" (this file)")
				} else {
					where = append(where, d)
				}
			}
			fmt.Fprintf(c.stdout, "  waits for: %s to end with SUCCESS; placed as if they had ended now\n", strings.Join(where, ", "))
		}
		if p.Placed {
			fmt.Fprintf(c.stdout, "  would be placed now: resource group %s, queue position %d\n", p.ResourceGroup, p.QueuePosition)
		} else {
			fmt.Fprintf(c.stdout, "  would stay PENDING: %s\n", p.Reason)
			if p.QueuePosition > 0 {
				fmt.Fprintf(c.stdout, "  resource group %s, queue position %d\n", p.ResourceGroup, p.QueuePosition)
			}
		}
		tw := newTable(c.stdout)
		fmt.Fprintln(tw, "  KERNEL\tROLE\tDRIVER\tIMAGE\tRESOURCES\tAGENT")
		for _, k := range p.Kernels {
			agent := "-"
			if k.AgentName != "" {
				agent = k.AgentName + " (" + shortID(k.AgentID) + ")"
			}
			img := k.Image
			if img == "" {
				img = "-"
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\n", k.Hostname, k.Role, k.Driver, img, k.Resources.String(), agent)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	fmt.Fprintf(c.stdout, "\ndry run: nothing was submitted (%d %s)\n", len(job.Sessions), plural(len(job.Sessions), "session"))
	return nil
}

func plural(n int, word string) string {
	if n == 1 {
		return word
	}
	return word + "s"
}

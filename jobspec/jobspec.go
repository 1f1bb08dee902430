// Package jobspec reads session templates and job files: HCL (or the JSON
// form of HCL) that describes sessions as the API's create requests
// (docs/templates.md). It is pure: it parses bytes and validates what it
// can without the cluster's state; every error names the file, line,
// column and field.
package jobspec

import (
	"fmt"
	"math"
	"path"
	"regexp"
	"slices"
	"sort"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	hcljson "github.com/hashicorp/hcl/v2/json"
	"github.com/zclconf/go-cty/cty"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/structs"
)

// Spec is one session a file describes.
type Spec struct {
	// Name is the session's name: the label of its session block in a job
	// file, or the name attribute.
	Name string
	// Request is the create request the spec stands for. Its DependsOn
	// holds the spec's depends_on as written (names of other sessions of
	// the job file, or of existing sessions); Template the template it
	// starts from.
	Request api.CreateSessionRequest
	// Range is where the spec is in its file.
	Range hcl.Range
}

// Job is a parsed job file: one or more sessions, in submission order
// (every session after the sessions of the file it depends on).
type Job struct {
	Sessions []*Spec
}

// Error is a file's diagnostics: each says file:line:col, the field and
// what is wrong.
type Error struct {
	Diags hcl.Diagnostics
}

func (e *Error) Error() string {
	lines := make([]string, 0, len(e.Diags))
	for _, d := range e.Diags {
		if d.Severity != hcl.DiagError {
			continue
		}
		lines = append(lines, formatDiag(d))
	}
	return strings.Join(lines, "\n")
}

// hintUnknown adds to each "Unsupported argument" diagnostic the closest
// field name, or the list of known ones.
func hintUnknown(diags hcl.Diagnostics, known []string) hcl.Diagnostics {
	for _, d := range diags {
		if d.Summary != "Unsupported argument" {
			continue
		}
		_, rest, ok := strings.Cut(d.Detail, "named \"")
		name, _, ok2 := strings.Cut(rest, "\"")
		if !ok || !ok2 {
			continue
		}
		best, bestDist := "", 3
		for _, k := range known {
			if dist := editDistance(name, k); dist < bestDist {
				best, bestDist = k, dist
			}
		}
		if best != "" {
			d.Detail = strings.TrimSuffix(d.Detail, ".") + fmt.Sprintf(". Did you mean %q?", best)
		} else {
			d.Detail = strings.TrimSuffix(d.Detail, ".") + ". Known fields here: " + strings.Join(known, ", ")
		}
	}
	return diags
}

// editDistance is the Levenshtein distance of a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}

// formatDiag writes one diagnostic as "file:line:col: summary: detail".
func formatDiag(d *hcl.Diagnostic) string {
	msg := d.Summary
	if d.Detail != "" {
		msg += ": " + strings.TrimSuffix(d.Detail, ".")
	}
	if d.Subject == nil {
		return msg
	}
	return fmt.Sprintf("%s:%d:%d: %s", d.Subject.Filename, d.Subject.Start.Line, d.Subject.Start.Column, msg)
}

// Role names: letters and '-' (hostnames are the name and an index).
var roleNameRe = regexp.MustCompile(`^[a-z]([a-z-]{0,30}[a-z])?$`)

// MaxRoleCount bounds one role's kernels (the server bounds the session's).
const MaxRoleCount = 64

// sessionAttrs are the attributes of a session body, templates and job
// files alike.
var sessionAttrs = []string{
	"name", "type", "driver", "image", "command", "env", "group", "priority",
	"cpu", "mem", "gpus", "gpu_model", "gpu_mem", "slots", "pids", "disk",
	"volumes", "ports", "cluster_size", "cluster_mode", "run_on", "fail_on",
	"start_order", "shm", "ulimits", "cap_add", "network", "infiniband",
	"max_retries", "lost_after", "depends_on", "template",
}

// roleAttrs are the attributes of a role block.
var roleAttrs = []string{"count", "image", "driver", "command", "cpu", "mem", "gpus", "gpu_model", "gpu_mem", "slots", "pids", "disk"}

func schemaOf(attrs []string, blocks ...hcl.BlockHeaderSchema) *hcl.BodySchema {
	s := &hcl.BodySchema{Blocks: blocks}
	for _, a := range attrs {
		s.Attributes = append(s.Attributes, hcl.AttributeSchema{Name: a})
	}
	return s
}

var (
	roleBlock    = hcl.BlockHeaderSchema{Type: "role", LabelNames: []string{"name"}}
	sessionBlock = hcl.BlockHeaderSchema{Type: "session", LabelNames: []string{"name"}}
	bodySchema   = schemaOf(sessionAttrs, roleBlock)
	roleSchema   = schemaOf(roleAttrs)
	fileSchema   = schemaOf(sessionAttrs, roleBlock, sessionBlock)
)

// parseFile parses HCL, or JSON when the file name ends in .json or the
// text starts with '{'.
func parseFile(filename string, src []byte) (*hcl.File, hcl.Diagnostics) {
	if strings.HasSuffix(strings.ToLower(filename), ".json") || strings.HasPrefix(strings.TrimSpace(string(src)), "{") {
		return hcljson.Parse(src, filename)
	}
	return hclsyntax.ParseConfig(src, filename, hcl.Pos{Line: 1, Column: 1})
}

// ParseTemplate reads a session template: the attributes and role blocks
// of one session, without name, depends_on or template (a template is
// applied to a create that names its session and dependencies).
func ParseTemplate(filename string, src []byte) (*Spec, error) {
	f, diags := parseFile(filename, src)
	if diags.HasErrors() {
		return nil, &Error{Diags: diags}
	}
	content, diags := f.Body.Content(fileSchema)
	diags = hintUnknown(diags, sessionAttrs)
	for _, b := range content.Blocks {
		if b.Type == "session" {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "session block in a template",
				Detail: "a template describes one session with top-level attributes; session blocks are for job files (corral run)", Subject: b.DefRange.Ptr()})
		}
	}
	for _, name := range []string{"name", "depends_on", "template"} {
		if a := content.Attributes[name]; a != nil {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: fmt.Sprintf("%s in a template", name),
				Detail: fmt.Sprintf("%s belongs to the create that uses the template (session create -template T -name N -depends-on S) or to a job file", name), Subject: a.NameRange.Ptr()})
		}
	}
	if diags.HasErrors() {
		return nil, &Error{Diags: diags}
	}
	spec, d := decodeSession(content, f.Body.MissingItemRange())
	diags = append(diags, d...)
	if diags.HasErrors() {
		return nil, &Error{Diags: diags}
	}
	return spec, nil
}

// ParseJob reads a job file: either the top-level attributes of one
// session, or session "NAME" { ... } blocks, each a session that may
// depend on others (depends_on) and start from a template.
func ParseJob(filename string, src []byte) (*Job, error) {
	f, diags := parseFile(filename, src)
	if diags.HasErrors() {
		return nil, &Error{Diags: diags}
	}
	content, diags := f.Body.Content(fileSchema)
	if diags.HasErrors() {
		return nil, &Error{Diags: hintUnknown(diags, sessionAttrs)}
	}
	var sessions []*hcl.Block
	for _, b := range content.Blocks {
		if b.Type == "session" {
			sessions = append(sessions, b)
		}
	}
	job := &Job{}
	if len(sessions) == 0 {
		spec, d := decodeSession(content, f.Body.MissingItemRange())
		if d.HasErrors() {
			return nil, &Error{Diags: d}
		}
		job.Sessions = []*Spec{spec}
		return job, nil
	}
	for _, a := range sortedAttrs(content.Attributes) {
		diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: fmt.Sprintf("%s outside a session block", a.Name),
			Detail: "a job file with session blocks has every setting inside a session \"NAME\" { ... } block", Subject: a.NameRange.Ptr()})
	}
	for _, b := range content.Blocks {
		if b.Type == "role" {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "role outside a session block",
				Detail: "put role blocks inside the session \"NAME\" { ... } they belong to", Subject: b.DefRange.Ptr()})
		}
	}
	seen := map[string]*hcl.Block{}
	for _, b := range sessions {
		name := b.Labels[0]
		if prev := seen[name]; prev != nil {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "duplicate session",
				Detail: fmt.Sprintf("session %q is also defined at line %d", name, prev.DefRange.Start.Line), Subject: b.LabelRanges[0].Ptr()})
			continue
		}
		seen[name] = b
		c, d := b.Body.Content(bodySchema)
		diags = append(diags, hintUnknown(d, sessionAttrs)...)
		if d.HasErrors() {
			continue
		}
		if a := c.Attributes["name"]; a != nil {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "name inside a session block",
				Detail: "the block's label is the session's name", Subject: a.NameRange.Ptr()})
			continue
		}
		spec, d := decodeSession(c, b.DefRange)
		diags = append(diags, d...)
		if d.HasErrors() {
			continue
		}
		spec.Name, spec.Request.Name, spec.Range = name, name, b.DefRange
		if !structsNameOK(name) {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "invalid session name",
				Detail: fmt.Sprintf("%q: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit, and not only hex digits", name), Subject: b.LabelRanges[0].Ptr()})
			continue
		}
		job.Sessions = append(job.Sessions, spec)
	}
	if diags.HasErrors() {
		return nil, &Error{Diags: diags}
	}
	ordered, d := order(job.Sessions, seen)
	if d.HasErrors() {
		return nil, &Error{Diags: d}
	}
	job.Sessions = ordered
	return job, nil
}

var (
	sessionNameRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)
	idLikeRe      = regexp.MustCompile(`^[0-9a-fA-F-]{4,}$`)
)

// structsNameOK reports whether name is a session name the server takes.
func structsNameOK(name string) bool {
	return sessionNameRe.MatchString(name) && !idLikeRe.MatchString(name)
}

// order sorts the sessions so that each comes after the sessions of the
// file it depends on (file order otherwise), and refuses cycles.
func order(specs []*Spec, blocks map[string]*hcl.Block) ([]*Spec, hcl.Diagnostics) {
	byName := map[string]*Spec{}
	for _, s := range specs {
		byName[s.Name] = s
	}
	var out []*Spec
	state := map[string]int{} // 1 visiting, 2 done
	var diags hcl.Diagnostics
	var visit func(s *Spec, path []string) bool
	visit = func(s *Spec, path []string) bool {
		switch state[s.Name] {
		case 2:
			return true
		case 1:
			cycle := append(path[slices.Index(path, s.Name):], s.Name)
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "dependency cycle",
				Detail: "depends_on makes a cycle: " + strings.Join(cycle, " -> "), Subject: blocks[s.Name].DefRange.Ptr()})
			return false
		}
		state[s.Name] = 1
		for _, dep := range s.Request.DependsOn {
			if d := byName[dep]; d != nil && !visit(d, append(path, s.Name)) {
				return false
			}
		}
		state[s.Name] = 2
		out = append(out, s)
		return true
	}
	for _, s := range specs {
		if !visit(s, nil) {
			return nil, diags
		}
	}
	return out, nil
}

func sortedAttrs(m hcl.Attributes) []*hcl.Attribute {
	out := make([]*hcl.Attribute, 0, len(m))
	for _, a := range m {
		out = append(out, a)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Range.Start.Byte < out[j].Range.Start.Byte })
	return out
}

// decoder decodes attributes into a request, gathering diagnostics.
type decoder struct {
	diags hcl.Diagnostics
}

func (d *decoder) fail(a *hcl.Attribute, format string, args ...any) {
	d.diags = append(d.diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "invalid " + a.Name,
		Detail: fmt.Sprintf(format, args...), Subject: a.Expr.Range().Ptr()})
}

// value evaluates an attribute (no variables or functions: literals only).
func (d *decoder) value(a *hcl.Attribute) (cty.Value, bool) {
	v, diags := a.Expr.Value(nil)
	if diags.HasErrors() {
		d.diags = append(d.diags, diags...)
		return cty.NilVal, false
	}
	if v.IsNull() {
		d.fail(a, "%s is null: give a value or leave it out", a.Name)
		return cty.NilVal, false
	}
	return v, true
}

func (d *decoder) str(a *hcl.Attribute) (string, bool) {
	v, ok := d.value(a)
	if !ok {
		return "", false
	}
	if v.Type() != cty.String {
		d.fail(a, "want a string, got %s", v.Type().FriendlyName())
		return "", false
	}
	return v.AsString(), true
}

func (d *decoder) boolean(a *hcl.Attribute) (bool, bool) {
	v, ok := d.value(a)
	if !ok {
		return false, false
	}
	if v.Type() != cty.Bool {
		d.fail(a, "want true or false, got %s", v.Type().FriendlyName())
		return false, false
	}
	return v.True(), true
}

func (d *decoder) integer(a *hcl.Attribute, lo, hi int) (int, bool) {
	v, ok := d.value(a)
	if !ok {
		return 0, false
	}
	if v.Type() != cty.Number {
		d.fail(a, "want a whole number, got %s", v.Type().FriendlyName())
		return 0, false
	}
	f, _ := v.AsBigFloat().Float64()
	if f != math.Trunc(f) || f < float64(lo) || f > float64(hi) {
		d.fail(a, "want a whole number from %d to %d, got %s", lo, hi, v.AsBigFloat().Text('g', -1))
		return 0, false
	}
	return int(f), true
}

func (d *decoder) strings(a *hcl.Attribute) ([]string, bool) {
	v, ok := d.value(a)
	if !ok {
		return nil, false
	}
	if !v.Type().IsListType() && !v.Type().IsTupleType() {
		d.fail(a, "want a list of strings such as [\"a\", \"b\"], got %s", v.Type().FriendlyName())
		return nil, false
	}
	var out []string
	for it := v.ElementIterator(); it.Next(); {
		_, e := it.Element()
		if e.IsNull() || e.Type() != cty.String {
			d.fail(a, "want a list of strings, element %d is %s", len(out)+1, e.Type().FriendlyName())
			return nil, false
		}
		out = append(out, e.AsString())
	}
	return out, true
}

// quantity reads a number or a string through parse (a number is
// formatted first, so "2" and 2 read alike).
func (d *decoder) quantity(a *hcl.Attribute, what string, parse func(string) (structs.Quantity, error)) (structs.Quantity, bool) {
	v, ok := d.value(a)
	if !ok {
		return 0, false
	}
	return d.quantityOf(a, v, what, parse)
}

func (d *decoder) quantityOf(a *hcl.Attribute, v cty.Value, what string, parse func(string) (structs.Quantity, error)) (structs.Quantity, bool) {
	var s string
	switch v.Type() {
	case cty.Number:
		s = v.AsBigFloat().Text('f', -1)
	case cty.String:
		s = v.AsString()
	default:
		d.fail(a, "want %s, got %s", what, v.Type().FriendlyName())
		return 0, false
	}
	q, err := parse(s)
	if err != nil {
		d.fail(a, "%v: want %s", err, what)
		return 0, false
	}
	if q <= 0 && a.Name != "slots" {
		d.fail(a, "want %s, got %s", what, s)
		return 0, false
	}
	return q, true
}

// decodeResources reads cpu, mem, gpus, slots, pids, disk and gpu_model,
// gpu_mem of a session or role body.
func (d *decoder) decodeResources(attrs hcl.Attributes) (structs.Slots, *structs.GPUConstraint) {
	var res structs.Slots
	set := func(a *hcl.Attribute, name string, q structs.Quantity) {
		if res == nil {
			res = structs.Slots{}
		}
		if _, dup := res[name]; dup {
			d.fail(a, "slot %s is given twice (by %s and by slots)", name, a.Name)
			return
		}
		res[name] = q
	}
	for _, name := range []string{"cpu", "mem", "gpus", "pids", "disk"} {
		a := attrs[name]
		if a == nil {
			continue
		}
		switch name {
		case "cpu":
			if q, ok := d.quantity(a, "a positive number of cores such as 2 or 0.5", structs.ParseQuantity); ok {
				set(a, structs.SlotCPU, q)
			}
		case "mem":
			if q, ok := d.quantity(a, "a size such as \"512M\" or \"2G\"", structs.ParseBytes); ok {
				set(a, structs.SlotMem, q)
			}
		case "gpus":
			if n, ok := d.integer(a, 0, 64); ok && n > 0 {
				set(a, structs.SlotCUDADevice, structs.Whole(int64(n)))
			}
		case "pids":
			if n, ok := d.integer(a, 16, 1<<22); ok {
				set(a, structs.LimitPids, structs.Whole(int64(n)))
			}
		case "disk":
			if q, ok := d.quantity(a, "a size such as \"20G\"", structs.ParseBytes); ok {
				set(a, structs.LimitDisk, q)
			}
		}
	}
	if a := attrs["slots"]; a != nil {
		if v, ok := d.value(a); ok {
			if !v.Type().IsObjectType() && !v.Type().IsMapType() {
				d.fail(a, "want a map of slot names to quantities such as { \"cuda.mig-1g.10gb\" = 1 }, got %s", v.Type().FriendlyName())
			} else {
				m := v.AsValueMap()
				for _, name := range slices.Sorted(mapsKeys(m)) {
					if name == "" {
						d.fail(a, "a slot name is empty")
						continue
					}
					q, ok := d.quantityOf(a, m[name], "a quantity such as 1 or \"0.5\"", structs.ParseQuantity)
					if !ok {
						continue
					}
					if q < 0 {
						d.fail(a, "slot %s is negative", name)
						continue
					}
					set(a, name, q)
				}
			}
		}
	}
	var gc *structs.GPUConstraint
	if a := attrs["gpu_model"]; a != nil {
		if s, ok := d.str(a); ok {
			gc = &structs.GPUConstraint{Model: s}
		}
	}
	if a := attrs["gpu_mem"]; a != nil {
		if q, ok := d.quantity(a, "a size such as \"40G\"", structs.ParseBytes); ok {
			if gc == nil {
				gc = &structs.GPUConstraint{}
			}
			gc.MinMemory = q
		}
	}
	return res, gc
}

func mapsKeys(m map[string]cty.Value) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// oneOf checks an enumerated string attribute.
func (d *decoder) oneOf(a *hcl.Attribute, dst *string, allowed ...string) {
	s, ok := d.str(a)
	if !ok {
		return
	}
	if !slices.Contains(allowed, s) {
		d.fail(a, "unknown value %q: use %s", s, strings.Join(allowed, ", "))
		return
	}
	*dst = s
}

// checkVolume checks "NAME:/path[:ro|rw]".
func checkVolume(v string) error {
	parts := strings.Split(v, ":")
	if len(parts) < 2 || len(parts) > 3 {
		return fmt.Errorf("%q: want NAME:/path or NAME:/path:ro", v)
	}
	if !sessionNameRe.MatchString(parts[0]) {
		return fmt.Errorf("%q: invalid volume name %q", v, parts[0])
	}
	if !strings.HasPrefix(parts[1], "/") || path.Clean(parts[1]) != parts[1] {
		return fmt.Errorf("%q: the mount point %q must be a clean absolute path", v, parts[1])
	}
	if len(parts) == 3 && parts[2] != "ro" && parts[2] != "rw" {
		return fmt.Errorf("%q: the mode %q must be ro or rw", v, parts[2])
	}
	return nil
}

// decodeSession turns one session body into a Spec.
func decodeSession(c *hcl.BodyContent, rng hcl.Range) (*Spec, hcl.Diagnostics) {
	d := &decoder{}
	spec := &Spec{Range: rng}
	r := &spec.Request
	at := c.Attributes
	strField := func(name string, dst *string) {
		if a := at[name]; a != nil {
			if s, ok := d.str(a); ok {
				if s == "" {
					d.fail(a, "%s is empty: give a value or leave it out", name)
					return
				}
				*dst = s
			}
		}
	}
	strField("name", &r.Name)
	if r.Name != "" && !structsNameOK(r.Name) {
		d.fail(at["name"], "%q: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit, and not only hex digits", r.Name)
	}
	spec.Name = r.Name
	if a := at["type"]; a != nil {
		var t string
		d.oneOf(a, &t, string(structs.SessionTypeBatch), string(structs.SessionTypeInteractive), string(structs.SessionTypeSystem))
		r.Type = structs.SessionType(t)
	}
	strField("driver", &r.Driver)
	strField("image", &r.Image)
	strField("group", &r.ResourceGroup)
	strField("template", &r.Template)
	strField("lost_after", &r.LostAfter)
	strField("shm", &r.Shm)
	if a := at["shm"]; a != nil && r.Shm != "" {
		if q, err := structs.ParseBytes(r.Shm); err != nil || q <= 0 {
			d.fail(a, "%q: want a size such as \"8G\"", r.Shm)
		}
	}
	if a := at["command"]; a != nil {
		if cmd, ok := d.strings(a); ok {
			if len(cmd) == 0 || strings.TrimSpace(cmd[0]) == "" {
				d.fail(a, "command is empty: give the program and its arguments, e.g. [\"sh\", \"-c\", \"echo hi\"]")
			}
			r.Command = cmd
		}
	}
	if a := at["env"]; a != nil {
		if v, ok := d.value(a); ok {
			if !v.Type().IsObjectType() && !v.Type().IsMapType() {
				d.fail(a, "want a map such as { KEY = \"value\" }, got %s", v.Type().FriendlyName())
			} else {
				r.Env = map[string]string{}
				for k, e := range v.AsValueMap() {
					if e.IsNull() || e.Type() != cty.String {
						d.fail(a, "env %s: want a string value", k)
						continue
					}
					if !envKeyRe.MatchString(k) {
						d.fail(a, "invalid environment variable name %q", k)
						continue
					}
					r.Env[k] = e.AsString()
				}
			}
		}
	}
	if a := at["priority"]; a != nil {
		r.Priority, _ = d.integer(a, -1000, 1000)
	}
	if a := at["max_retries"]; a != nil {
		r.MaxRetries, _ = d.integer(a, 0, 100)
	}
	if a := at["cluster_size"]; a != nil {
		r.ClusterSize, _ = d.integer(a, 1, 64)
	}
	if a := at["cluster_mode"]; a != nil {
		d.oneOf(a, &r.ClusterMode, structs.ClusterModeSingleNode, structs.ClusterModeMultiNode)
	}
	if a := at["run_on"]; a != nil {
		d.oneOf(a, &r.RunOn, structs.RunOnMain, structs.RunOnAll)
	}
	if a := at["fail_on"]; a != nil {
		d.oneOf(a, &r.FailOn, structs.FailOnAny, structs.FailOnMain)
	}
	if a := at["start_order"]; a != nil {
		d.oneOf(a, &r.StartOrder, structs.StartBarrier, structs.StartUnordered)
	}
	if a := at["network"]; a != nil {
		d.oneOf(a, &r.Network, structs.NetworkHost, structs.NetworkNone)
	}
	if a := at["infiniband"]; a != nil {
		r.InfiniBand, _ = d.boolean(a)
	}
	if a := at["volumes"]; a != nil {
		if vs, ok := d.strings(a); ok {
			for _, v := range vs {
				if err := checkVolume(v); err != nil {
					d.fail(a, "%v", err)
				}
			}
			r.Volumes = vs
		}
	}
	if a := at["ports"]; a != nil {
		if ps, ok := d.strings(a); ok {
			for _, p := range ps {
				sp, err := structs.ParseServicePort(p)
				if err != nil {
					d.fail(a, "%v", err)
					continue
				}
				r.ServicePorts = append(r.ServicePorts, sp)
			}
			if err := structs.ValidateServicePorts(r.ServicePorts); err != nil {
				d.fail(a, "%v", err)
			}
		}
	}
	if a := at["ulimits"]; a != nil {
		if us, ok := d.strings(a); ok {
			for _, u := range us {
				if _, err := structs.ParseUlimit(u); err != nil {
					d.fail(a, "%v", err)
				}
			}
			r.Ulimits = us
		}
	}
	if a := at["cap_add"]; a != nil {
		if cs, ok := d.strings(a); ok {
			for _, c := range cs {
				if _, err := structs.NormalizeCapability(c); err != nil {
					d.fail(a, "%v", err)
				}
			}
			r.CapAdd = cs
		}
	}
	if a := at["depends_on"]; a != nil {
		if deps, ok := d.strings(a); ok {
			for _, dep := range deps {
				if strings.TrimSpace(dep) == "" {
					d.fail(a, "a dependency is empty")
				}
			}
			r.DependsOn = deps
		}
	}
	r.Resources, r.GPUConstraint = d.decodeResources(at)
	d.decodeRoles(c.Blocks, r, at["cluster_size"])
	return spec, d.diags
}

var envKeyRe = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// decodeRoles reads the role blocks into r.Roles: main and sub override
// their kernels (role "sub" { count = N } sets cluster_size to N+1);
// any other name adds count kernels of its own.
func (d *decoder) decodeRoles(blocks hcl.Blocks, r *api.CreateSessionRequest, clusterSize *hcl.Attribute) {
	seen := map[string]*hcl.Block{}
	for _, b := range blocks {
		if b.Type != "role" {
			continue
		}
		name := b.Labels[0]
		subj := b.LabelRanges[0].Ptr()
		if prev := seen[name]; prev != nil {
			d.diags = append(d.diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "duplicate role",
				Detail: fmt.Sprintf("role %q is also defined at line %d", name, prev.DefRange.Start.Line), Subject: subj})
			continue
		}
		seen[name] = b
		if !roleNameRe.MatchString(name) {
			d.diags = append(d.diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "invalid role name",
				Detail: fmt.Sprintf("%q: use 1-32 lowercase letters or '-', starting and ending with a letter (its kernels are named %s1, %s2...)", name, name, name), Subject: subj})
			continue
		}
		c, diags := b.Body.Content(roleSchema)
		d.diags = append(d.diags, hintUnknown(diags, roleAttrs)...)
		if diags.HasErrors() {
			continue
		}
		rs := api.RoleSpec{Role: name}
		at := c.Attributes
		if a := at["count"]; a != nil {
			n, ok := d.integer(a, 1, MaxRoleCount)
			switch {
			case !ok:
			case name == "main":
				d.fail(a, "a session has one main kernel (main1): leave count out of role \"main\"")
			case name == "sub":
				if clusterSize != nil && r.ClusterSize != 0 && r.ClusterSize != n+1 {
					d.fail(a, "role \"sub\" count %d disagrees with cluster_size %d (main1 and %d sub kernels): give one of them", n, r.ClusterSize, r.ClusterSize-1)
				} else {
					r.ClusterSize = n + 1
				}
			default:
				rs.Count = n
			}
		} else if name != "main" && name != "sub" {
			rs.Count = 1
		}
		for _, f := range []struct {
			name string
			dst  *string
		}{{"image", &rs.Image}, {"driver", &rs.Driver}} {
			if a := at[f.name]; a != nil {
				if s, ok := d.str(a); ok {
					if s == "" {
						d.fail(a, "%s is empty: give a value or leave it out", f.name)
					}
					*f.dst = s
				}
			}
		}
		if a := at["command"]; a != nil {
			if cmd, ok := d.strings(a); ok {
				if len(cmd) == 0 || strings.TrimSpace(cmd[0]) == "" {
					d.fail(a, "command is empty: give the program and its arguments")
				}
				rs.Command = cmd
			}
		}
		rs.Resources, rs.GPUConstraint = d.decodeResources(at)
		if name == "sub" && r.ClusterSize < 2 && at["count"] == nil {
			d.diags = append(d.diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "role sub without sub kernels",
				Detail: "set cluster_size to 2 or more, or count in this block", Subject: subj})
			continue
		}
		r.Roles = append(r.Roles, rs)
	}
}

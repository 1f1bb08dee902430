package server

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/jobspec"
	"github.com/corral-dev/corral/server/scheduler"
	"github.com/corral-dev/corral/server/state"
	"github.com/corral-dev/corral/structs"
)

// registerTemplates adds the session template API and the dry-run plan
// (docs/templates.md).
func (s *Server) registerTemplates(mux *http.ServeMux) {
	mux.HandleFunc("POST /v1/templates", s.wrap(s.createTemplate))
	mux.HandleFunc("GET /v1/templates", s.wrap(s.listTemplates))
	mux.HandleFunc("GET /v1/templates/{name}", s.wrap(s.getTemplate))
	mux.HandleFunc("DELETE /v1/templates/{name}", s.wrap(s.deleteTemplate))
	mux.HandleFunc("POST /v1/plan", s.wrap(s.planSession))
}

// maxTemplateSource bounds a template's text (it lives in raft).
const maxTemplateSource = 64 << 10

// callerName is the user of the caller's key ("" for none).
func callerName(ctx context.Context) string {
	if id := callerOf(ctx); id != nil {
		return id.key.User
	}
	return ""
}

// templateFilename is the name a template's errors are reported under.
func templateFilename(req *api.TemplateRequest) string {
	if req.Filename != "" {
		return req.Filename
	}
	return req.Name + ".hcl"
}

func (s *Server) createTemplate(w http.ResponseWriter, r *http.Request) (any, error) {
	var req api.TemplateRequest
	if err := decodeBody(r, &req); err != nil {
		return nil, err
	}
	if !nameRe.MatchString(req.Name) {
		return nil, badRequest("invalid template name %q: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit", req.Name)
	}
	if strings.TrimSpace(req.Source) == "" {
		return nil, badRequest("template %s: the source is empty: give the HCL or JSON of a session (docs/templates.md)", req.Name)
	}
	if len(req.Source) > maxTemplateSource {
		return nil, badRequest("template %s: the source is %d bytes, more than the limit of %d", req.Name, len(req.Source), maxTemplateSource)
	}
	owner := callerName(r.Context())
	if req.Global {
		if err := requireAdmin(r); err != nil {
			return nil, &httpError{code: http.StatusForbidden, msg: "only admins create global templates: leave -global out to create one of your own"}
		}
		owner = ""
	} else if owner == "" {
		return nil, badRequest("your access key has no user to own the template: create a global one (-global)")
	}
	filename := templateFilename(&req)
	spec, err := jobspec.ParseTemplate(filename, []byte(req.Source))
	if err != nil {
		return nil, badRequest("template %s is invalid:\n%v", req.Name, err)
	}
	if err := s.checkTemplate(r.Context(), req.Name, &spec.Request); err != nil {
		return nil, err
	}
	snap := s.state.Snapshot()
	id := structs.TemplateID(owner, req.Name)
	if _, err := snap.Template(id); err == nil && !req.Replace {
		return nil, &httpError{code: http.StatusConflict, msg: fmt.Sprintf("template %s already exists: delete it first, or replace it (template create -replace)", req.Name)}
	}
	t := &structs.Template{ID: id, Name: req.Name, Owner: owner, Filename: filename, Source: req.Source}
	if _, _, err := s.apply(structs.TemplateUpsertRequestType, &structs.TemplateUpsertRequest{Template: t, Time: time.Now().UTC()}); err != nil {
		return nil, err
	}
	return s.state.Snapshot().Template(id)
}

// checkTemplate validates a template's request as a create would, with
// a placeholder command when it has none (the create gives it): what
// only the cluster knows (drivers, slot bounds) is refused now rather
// than at each use.
func (s *Server) checkTemplate(ctx context.Context, name string, tr *api.CreateSessionRequest) error {
	req := jobspec.Merge(tr, &api.CreateSessionRequest{})
	if len(req.Command) == 0 && req.Image == "" {
		req.Command = []string{"true"}
	}
	_, _, err := s.validateCreate(req, s.state.Snapshot(), callerName(ctx), time.Now().UTC())
	if err != nil {
		code, msg := errorStatus(err)
		if code == http.StatusConflict {
			return nil
		}
		return &httpError{code: code, msg: fmt.Sprintf("template %s: %s", name, msg)}
	}
	return nil
}

// templateVisible reports whether the caller may use or see t.
func templateVisible(ctx context.Context, t *structs.Template) bool {
	id := callerOf(ctx)
	return t.Global() || (id != nil && (id.admin() || t.Owner == id.key.User))
}

func (s *Server) listTemplates(w http.ResponseWriter, r *http.Request) (any, error) {
	all, err := s.state.Snapshot().Templates()
	if err != nil {
		return nil, err
	}
	out := []*structs.Template{}
	for _, t := range all {
		if templateVisible(r.Context(), t) {
			out = append(out, t)
		}
	}
	slices.SortFunc(out, func(a, b *structs.Template) int {
		return strings.Compare(a.Name+"\x00"+a.Owner, b.Name+"\x00"+b.Owner)
	})
	return out, nil
}

// resolveTemplate finds the template a caller means by name: their own,
// else the global one (only the global one when global is set).
func resolveTemplate(ctx context.Context, snap *state.Snapshot, name string, global bool) (*structs.Template, error) {
	if !global {
		if user := callerName(ctx); user != "" {
			if t, err := snap.Template(structs.TemplateID(user, name)); err == nil {
				return t, nil
			}
		}
	}
	t, err := snap.Template(structs.TemplateID("", name))
	if err != nil {
		where := "of yours or global"
		if global {
			where = "global"
		}
		return nil, fmt.Errorf("no template %q %s (see corral template list): %w", name, where, state.ErrNotFound)
	}
	return t, nil
}

func (s *Server) getTemplate(w http.ResponseWriter, r *http.Request) (any, error) {
	return resolveTemplate(r.Context(), s.state.Snapshot(), r.PathValue("name"), r.URL.Query().Get("global") != "")
}

func (s *Server) deleteTemplate(w http.ResponseWriter, r *http.Request) (any, error) {
	name := r.PathValue("name")
	global := r.URL.Query().Get("global") != ""
	id := structs.TemplateID(callerName(r.Context()), name)
	if global {
		if err := requireAdmin(r); err != nil {
			return nil, &httpError{code: http.StatusForbidden, msg: "only admins delete global templates"}
		}
		id = structs.TemplateID("", name)
	}
	t, err := s.state.Snapshot().Template(id)
	if err != nil {
		if !global {
			return nil, fmt.Errorf("you have no template %q (a global one is deleted with -global, by an admin): %w", name, state.ErrNotFound)
		}
		return nil, fmt.Errorf("no global template %q: %w", name, state.ErrNotFound)
	}
	if _, _, err := s.apply(structs.TemplateDeleteRequestType, &structs.TemplateDeleteRequest{ID: t.ID, Time: time.Now().UTC()}); err != nil {
		return nil, err
	}
	return t, nil
}

// applyTemplate replaces a create request that names a template with the
// template's request and the create's fields on top (jobspec.Merge).
func applyTemplate(ctx context.Context, snap *state.Snapshot, req *api.CreateSessionRequest) error {
	if req.Template == "" {
		return nil
	}
	t, err := resolveTemplate(ctx, snap, req.Template, false)
	if err != nil {
		return badRequest("template: %v", err)
	}
	spec, err := jobspec.ParseTemplate(t.Filename, []byte(t.Source))
	if err != nil {
		// Stored templates were valid when stored; a newer schema may
		// refuse an old one.
		return badRequest("template %s no longer parses: %v", t.Name, err)
	}
	*req = *jobspec.Merge(&spec.Request, req)
	return nil
}

// planSession answers POST /v1/plan: the session a create request would
// make, and where one scheduling pass on the current state would put its
// kernels (or why it would stay PENDING), without submitting anything.
// Dependencies are not resolved: the answer says where it would go once
// they ended.
func (s *Server) planSession(w http.ResponseWriter, r *http.Request) (any, error) {
	var req api.CreateSessionRequest
	if err := decodeBody(r, &req); err != nil {
		return nil, err
	}
	snap := s.state.Snapshot()
	req.DependsOn = nil
	now := time.Now().UTC()
	sess, kernels, err := s.prepareCreate(r.Context(), snap, &req, now)
	if err != nil {
		return nil, err
	}
	s.sftpPorts.release(kernels) // a dry run holds no port
	in, _, _, err := snap.SchedulerInput(nil, now)
	if err != nil {
		return nil, err
	}
	if ak := sess.AccessKey; ak != "" {
		if _, ok := in.Usage[ak]; !ok {
			in.Usage[ak] = snap.Usage(ak)
			if p := snap.KeyPolicy(ak); p != nil {
				in.Policies[ak] = p
			}
		}
	}
	return planOne(in, sess, kernels), nil
}

// planOne adds sess to a pass's input as the newest pending session, runs
// the pass and reports what became of it.
func planOne(in *scheduler.Input, sess *structs.Session, kernels []*structs.Kernel) *api.PlanResponse {
	sess.CreateIndex = in.Index + 1
	in.Pending = append(in.Pending, &scheduler.PendingSession{Session: sess, Kernels: kernels})
	res := scheduler.Plan(in)
	out := &api.PlanResponse{ResourceGroup: sess.ResourceGroup}
	for i, id := range res.Order[sess.ResourceGroup] {
		if id == sess.ID {
			out.QueuePosition = i + 1
		}
	}
	agentOf := map[string]string{}
	for _, sp := range res.Plan.Placements {
		if sp.SessionID != sess.ID {
			continue
		}
		out.Placed = true
		for _, p := range sp.Placements {
			agentOf[p.KernelID] = p.AgentID
		}
	}
	if !out.Placed {
		out.Reason = res.Plan.Unplaced[sess.ID]
		if why := res.Cancel[sess.ID]; why != "" {
			out.Reason = why
		}
		if out.Reason == "" {
			out.Reason = "the pass did not reach it: sessions ahead of it in the queue wait first"
		}
	}
	names := map[string]string{}
	for _, a := range in.Agents {
		names[a.ID] = a.Name
	}
	sorted := slices.Clone(kernels)
	slices.SortFunc(sorted, structs.CompareKernels)
	for _, k := range sorted {
		pk := api.PlanKernel{Hostname: k.Hostname, Role: k.Role, Driver: k.Driver, Image: k.Image, Command: k.Command, Resources: k.Resources}
		if a := agentOf[k.ID]; a != "" {
			pk.AgentID, pk.AgentName = a, names[a]
		}
		out.Kernels = append(out.Kernels, pk)
	}
	return out
}

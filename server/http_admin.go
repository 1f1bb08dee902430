package server

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/images"
	"github.com/corral-dev/corral/structs"
)

func (s *Server) registerAdmin(mux *http.ServeMux) {
	mux.HandleFunc("POST /v1/users", s.wrap(s.createUser))
	mux.HandleFunc("GET /v1/users", s.wrap(s.listUsers))
	mux.HandleFunc("POST /v1/keys", s.wrap(s.createKey))
	mux.HandleFunc("GET /v1/keys", s.wrap(s.listKeys))
	mux.HandleFunc("DELETE /v1/keys/{key}", s.wrap(s.revokeKey))
	mux.HandleFunc("GET /v1/keys/{key}/status", s.wrap(s.keyStatus))
	mux.HandleFunc("POST /v1/keys/{key}/policy", s.wrap(s.applyPolicy))
	mux.HandleFunc("POST /v1/policies", s.wrap(s.createPolicy))
	mux.HandleFunc("GET /v1/policies", s.wrap(s.listPolicies))
	mux.HandleFunc("POST /v1/groups", s.wrap(s.upsertGroup))
	mux.HandleFunc("PUT /v1/groups/{name}", s.wrap(s.upsertGroup))
	mux.HandleFunc("GET /v1/groups", s.wrap(s.listGroups))
	mux.HandleFunc("DELETE /v1/users/{name}", s.wrap(s.deleteConfig("user")))
	mux.HandleFunc("DELETE /v1/policies/{name}", s.wrap(s.deleteConfig("policy")))
	mux.HandleFunc("DELETE /v1/groups/{name}", s.wrap(s.deleteConfig("group")))
}

func requireAdmin(r *http.Request) error {
	if id := callerOf(r.Context()); id == nil || !id.admin() {
		return errAdminOnly
	}
	return nil
}

// decodeAdmin checks that the caller is an admin, then decodes the body.
func decodeAdmin(r *http.Request, v any) error {
	if err := requireAdmin(r); err != nil {
		return err
	}
	return decodeBody(r, v)
}

func (s *Server) applyConfig(req *structs.ConfigUpsertRequest) error {
	req.Time = time.Now().UTC()
	_, _, err := s.apply(structs.ConfigUpsertRequestType, req)
	return err
}

func (s *Server) createUser(w http.ResponseWriter, r *http.Request) (any, error) {
	var req api.CreateUserRequest
	if err := decodeAdmin(r, &req); err != nil {
		return nil, err
	}
	if !nameRe.MatchString(req.Name) {
		return nil, badRequest("invalid user name %q: use 1-64 letters, digits, '.', '_' or '-'", req.Name)
	}
	if _, err := s.state.Snapshot().User(req.Name); err == nil {
		return nil, &httpError{code: http.StatusConflict, msg: fmt.Sprintf("user %q already exists", req.Name)}
	}
	u := &structs.User{Name: req.Name, Admin: req.Admin}
	if err := s.applyConfig(&structs.ConfigUpsertRequest{Users: []*structs.User{u}}); err != nil {
		return nil, err
	}
	return s.state.Snapshot().User(req.Name)
}

func (s *Server) listUsers(w http.ResponseWriter, r *http.Request) (any, error) {
	if err := requireAdmin(r); err != nil {
		return nil, err
	}
	return orEmpty(s.state.Snapshot().Users())
}

// redact hides the secret hash from API answers.
func redact(k *structs.AccessKey) *structs.AccessKey {
	c := k.Copy()
	c.SecretHash = ""
	return c
}

func (s *Server) createKey(w http.ResponseWriter, r *http.Request) (any, error) {
	var req api.CreateKeyRequest
	if err := decodeAdmin(r, &req); err != nil {
		return nil, err
	}
	snap := s.state.Snapshot()
	u, err := snap.User(req.User)
	if err != nil {
		return nil, badRequest("unknown user %q: create it first with 'corral user create'", req.User)
	}
	if req.Policy != "" {
		if _, err := snap.Policy(req.Policy); err != nil {
			return nil, badRequest("unknown resource policy %q", req.Policy)
		}
	}
	for _, g := range req.AllowedGroups {
		if !nameRe.MatchString(g) {
			return nil, badRequest("invalid resource group name %q", g)
		}
	}
	if req.Admin && !u.Admin {
		return nil, badRequest("user %q is not an admin: an admin key needs an admin user", u.Name)
	}
	ak, secret := NewCredentials()
	k := &structs.AccessKey{AccessKey: ak, SecretHash: HashSecret(secret), User: u.Name, Admin: req.Admin,
		Policy: req.Policy, AllowedGroups: req.AllowedGroups}
	if err := s.applyConfig(&structs.ConfigUpsertRequest{Keys: []*structs.AccessKey{k}}); err != nil {
		return nil, err
	}
	stored, err := s.state.Snapshot().Key(ak)
	if err != nil {
		return nil, err
	}
	return &api.CreateKeyResponse{Key: redact(stored), Token: ak + "." + secret}, nil
}

func (s *Server) listKeys(w http.ResponseWriter, r *http.Request) (any, error) {
	keys, err := s.state.Snapshot().Keys()
	if err != nil {
		return nil, err
	}
	id := callerOf(r.Context())
	out := []*structs.AccessKey{}
	for _, k := range keys {
		if id.admin() || k.User == id.key.User {
			out = append(out, redact(k))
		}
	}
	return out, nil
}

// ownKey finds a key the caller may look at: admins any, users their own.
func (s *Server) ownKey(r *http.Request) (*structs.AccessKey, error) {
	k, err := s.state.Snapshot().Key(r.PathValue("key"))
	id := callerOf(r.Context())
	if err != nil || (!id.admin() && k.User != id.key.User) {
		return nil, &httpError{code: http.StatusNotFound, msg: fmt.Sprintf("no access key %q", r.PathValue("key"))}
	}
	return k, nil
}

func (s *Server) revokeKey(w http.ResponseWriter, r *http.Request) (any, error) {
	if err := requireAdmin(r); err != nil {
		return nil, err
	}
	k, err := s.ownKey(r)
	if err != nil {
		return nil, err
	}
	if k.AccessKey == callerOf(r.Context()).key.AccessKey {
		return nil, badRequest("refusing to revoke the key this request was made with")
	}
	c := k.Copy()
	c.Revoked = true
	if err := s.applyConfig(&structs.ConfigUpsertRequest{Keys: []*structs.AccessKey{c}}); err != nil {
		return nil, err
	}
	stored, err := s.state.Snapshot().Key(k.AccessKey)
	if err != nil {
		return nil, err
	}
	return redact(stored), nil
}

func (s *Server) keyStatus(w http.ResponseWriter, r *http.Request) (any, error) {
	k, err := s.ownKey(r)
	if err != nil {
		return nil, err
	}
	snap := s.state.Snapshot()
	out := &api.KeyStatus{Key: redact(k), Usage: snap.Usage(k.AccessKey)}
	if k.Policy != "" {
		out.Policy, _ = snap.Policy(k.Policy)
	}
	return out, nil
}

func (s *Server) applyPolicy(w http.ResponseWriter, r *http.Request) (any, error) {
	if err := requireAdmin(r); err != nil {
		return nil, err
	}
	k, err := s.ownKey(r)
	if err != nil {
		return nil, err
	}
	var req api.ApplyPolicyRequest
	if err := decodeBody(r, &req); err != nil {
		return nil, err
	}
	if req.Policy != "" {
		if _, err := s.state.Snapshot().Policy(req.Policy); err != nil {
			return nil, badRequest("unknown resource policy %q", req.Policy)
		}
	}
	c := k.Copy()
	c.Policy = req.Policy
	if err := s.applyConfig(&structs.ConfigUpsertRequest{Keys: []*structs.AccessKey{c}}); err != nil {
		return nil, err
	}
	stored, err := s.state.Snapshot().Key(k.AccessKey)
	if err != nil {
		return nil, err
	}
	return redact(stored), nil
}

func parseLimitDuration(field, v string) (time.Duration, error) {
	if v == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		return 0, badRequest("invalid %s %q: want a duration such as 2h or 30m", field, v)
	}
	return d, nil
}

func (s *Server) createPolicy(w http.ResponseWriter, r *http.Request) (any, error) {
	var req api.PolicyRequest
	if err := decodeAdmin(r, &req); err != nil {
		return nil, err
	}
	if !nameRe.MatchString(req.Name) {
		return nil, badRequest("invalid policy name %q", req.Name)
	}
	if req.MaxConcurrentSessions < 0 || req.MaxPendingSessions < 0 || req.MaxKernelsPerSession < 0 {
		return nil, badRequest("policy limits must not be negative (0 means unlimited)")
	}
	if err := checkSlotLimits(req.TotalResourceSlots, false); err != nil {
		return nil, err
	}
	life, err := parseLimitDuration("max_session_lifetime", req.MaxSessionLifetime)
	if err != nil {
		return nil, err
	}
	idle, err := parseLimitDuration("idle_timeout", req.IdleTimeout)
	if err != nil {
		return nil, err
	}
	if req.IdleCPUThreshold < 0 || req.IdleCPUThreshold > 100 {
		return nil, badRequest("idle_cpu_threshold %g: want a percentage of the kernel's CPU allocation between 0 (the default, 5) and 100", req.IdleCPUThreshold)
	}
	for _, d := range req.Drivers {
		if !nameRe.MatchString(d) {
			return nil, badRequest("invalid driver name %q in drivers", d)
		}
	}
	if req.PidsPerKernel < 0 || (req.PidsPerKernel > 0 && req.PidsPerKernel < 16) {
		return nil, badRequest("pids_per_kernel %d: want 0 (the agents' default) or at least 16", req.PidsPerKernel)
	}
	p := &structs.ResourcePolicy{Name: req.Name, MaxConcurrentSessions: req.MaxConcurrentSessions, MaxPendingSessions: req.MaxPendingSessions,
		TotalResourceSlots: req.TotalResourceSlots, MaxKernelsPerSession: req.MaxKernelsPerSession, MaxSessionLifetime: life, IdleTimeout: idle, IdleCPUThreshold: req.IdleCPUThreshold,
		Drivers: req.Drivers, PidsPerKernel: req.PidsPerKernel, AllowHostNetwork: req.AllowHostNetwork, AllowInfiniBand: req.AllowInfiniBand}
	if err := policyOptions(&req, p); err != nil {
		return nil, err
	}
	if err := s.applyConfig(&structs.ConfigUpsertRequest{Policies: []*structs.ResourcePolicy{p}}); err != nil {
		return nil, err
	}
	return s.state.Snapshot().Policy(req.Name)
}

func (s *Server) listPolicies(w http.ResponseWriter, r *http.Request) (any, error) {
	return orEmpty(s.state.Snapshot().Policies())
}

var (
	sessionSelectors = map[string]bool{structs.SelectorFIFO: true, structs.SelectorLIFO: true, structs.SelectorDRF: true}
	agentSelectors   = map[string]bool{structs.AgentSelectorConcentrated: true, structs.AgentSelectorDispersed: true, structs.AgentSelectorRoundRobin: true}
)

func (s *Server) upsertGroup(w http.ResponseWriter, r *http.Request) (any, error) {
	var g structs.ResourceGroup
	if err := decodeAdmin(r, &g); err != nil {
		return nil, err
	}
	if name := r.PathValue("name"); name != "" {
		if g.Name != "" && g.Name != name {
			return nil, badRequest("group name in the body (%q) differs from the path (%q)", g.Name, name)
		}
		g.Name = name
		if _, err := s.state.Snapshot().Group(name); err != nil {
			return nil, &httpError{code: http.StatusNotFound, msg: fmt.Sprintf("no resource group %q: create it with POST /v1/groups", name)}
		}
	}
	if !nameRe.MatchString(g.Name) {
		return nil, badRequest("invalid resource group name %q", g.Name)
	}
	if g.SessionSelector == "" {
		g.SessionSelector = structs.SelectorFIFO
	}
	if !sessionSelectors[g.SessionSelector] {
		return nil, badRequest("unknown session selector %q: use fifo, lifo or drf", g.SessionSelector)
	}
	if g.AgentSelector == "" {
		g.AgentSelector = structs.AgentSelectorDispersed
	}
	if !agentSelectors[g.AgentSelector] {
		return nil, badRequest("unknown agent selector %q: use concentrated, dispersed or roundrobin", g.AgentSelector)
	}
	if g.NumRetriesToSkip < 0 {
		return nil, badRequest("num_retries_to_skip must not be negative")
	}
	if err := checkSlotLimits(g.TotalResourceSlots, true); err != nil {
		return nil, err
	}
	for i, e := range g.AllowedRegistries {
		n, err := images.CheckRegistryEntry(e)
		if err != nil {
			return nil, badRequest("allowed_registries: %v", err)
		}
		g.AllowedRegistries[i] = n
	}
	if err := s.applyConfig(&structs.ConfigUpsertRequest{Groups: []*structs.ResourceGroup{&g}}); err != nil {
		return nil, err
	}
	return s.state.Snapshot().Group(g.Name)
}

func (s *Server) listGroups(w http.ResponseWriter, r *http.Request) (any, error) {
	return orEmpty(s.state.Snapshot().Groups())
}

// checkSlotLimits validates total_resource_slots of a policy (each limit
// positive) or a group (zero allowed: nothing of that slot).
func checkSlotLimits(slots structs.Slots, zeroOK bool) error {
	for name, q := range slots {
		if name == structs.SlotCUDAMem {
			return badRequest("total_resource_slots: cuda.mem cannot be limited: it is counted from the GPUs kernels get; limit cuda.device instead")
		}
		_, mig := structs.IsMIGSlot(name)
		if _, ok := slotBounds[name]; !ok && !mig {
			return badRequest("total_resource_slots: unknown resource slot %q: known slots are cpu, mem, cuda.device, cuda.mig-<profile>", name)
		}
		if q < 0 || (q == 0 && !zeroOK) {
			want := "positive"
			if zeroOK {
				want = "zero or more"
			}
			return badRequest("total_resource_slots: %s must be %s, got %s", name, want, q)
		}
	}
	return nil
}

// orEmpty makes a nil list an empty one, so that JSON says [] not null.
func orEmpty[T any](out []T, err error) ([]T, error) {
	if out == nil {
		out = []T{}
	}
	return out, err
}

// policyOptions validates a policy request's caps on kernel options and
// sets them on p.
func policyOptions(req *api.PolicyRequest, p *structs.ResourcePolicy) error {
	size := func(field, v string, unlimitedOK bool) (int64, error) {
		if v == "" {
			return 0, nil
		}
		if unlimitedOK && (v == "unlimited" || v == "-1") {
			return -1, nil
		}
		q, err := structs.ParseBytes(v)
		if err != nil || q <= 0 {
			want := "a positive size such as 8G"
			if unlimitedOK {
				want += ` or "unlimited"`
			}
			return 0, badRequest("invalid %s %q: want %s (absent: the kernel's mem)", field, v, want)
		}
		return int64(q / structs.QuantityScale), nil
	}
	var err error
	if p.MaxShmBytes, err = size("max_shm", req.MaxShm, false); err != nil {
		return err
	}
	if p.MaxMemlockBytes, err = size("max_memlock", req.MaxMemlock, true); err != nil {
		return err
	}
	for _, c := range req.AllowedCapabilities {
		n, err := structs.NormalizeCapability(c)
		if err != nil {
			return badRequest("allowed_capabilities: %v", err)
		}
		if !slices.Contains(p.AllowedCapabilities, n) {
			p.AllowedCapabilities = append(p.AllowedCapabilities, n)
		}
	}
	for _, u := range req.AllowedUlimits {
		if !slices.Contains(structs.UlimitNames, u) {
			return badRequest("allowed_ulimits: unknown ulimit %q: known are %s", u, strings.Join(structs.UlimitNames, ", "))
		}
		if !slices.Contains(p.AllowedUlimits, u) {
			p.AllowedUlimits = append(p.AllowedUlimits, u)
		}
	}
	return nil
}

// deleteConfig deletes one user (with its access keys), policy or group,
// refused (409, with what uses it) while it is in use.
func (s *Server) deleteConfig(kind string) handler {
	return func(w http.ResponseWriter, r *http.Request) (any, error) {
		if err := requireAdmin(r); err != nil {
			return nil, err
		}
		name := r.PathValue("name")
		req := &structs.ConfigDeleteRequest{Time: time.Now().UTC()}
		snap := s.state.Snapshot()
		var err error
		switch kind {
		case "user":
			if callerOf(r.Context()).key.User == name {
				return nil, &httpError{code: http.StatusConflict, msg: fmt.Sprintf("user %s is the user of the key this request uses: delete it with another admin's key", name)}
			}
			req.Users = []string{name}
			_, err = snap.User(name)
		case "policy":
			req.Policies = []string{name}
			_, err = snap.Policy(name)
		case "group":
			req.Groups = []string{name}
			_, err = snap.Group(name)
		}
		if err != nil {
			return nil, err
		}
		why, err := snap.ConfigUse(req)
		if err != nil {
			return nil, err
		}
		if len(why) > 0 {
			return nil, &httpError{code: http.StatusConflict, msg: fmt.Sprintf("%s %s is in use: %s", kind, name, strings.Join(why, "; "))}
		}
		var keys []string
		if kind == "user" {
			all, err := snap.Keys()
			if err != nil {
				return nil, err
			}
			for _, k := range all {
				if k.User == name {
					keys = append(keys, k.AccessKey)
				}
			}
		}
		if _, _, err := s.apply(structs.ConfigDeleteRequestType, req); err != nil {
			return nil, err
		}
		return &api.DeleteConfigResponse{Kind: kind, Name: name, Keys: keys}, nil
	}
}

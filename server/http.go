package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/hashicorp/go-memdb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/images"
	"github.com/corral-dev/corral/rpc"
	"github.com/corral-dev/corral/server/scheduler"
	"github.com/corral-dev/corral/server/state"
	"github.com/corral-dev/corral/structs"
	"github.com/corral-dev/corral/ui"
)

// httpError is an error with the HTTP status it should be answered with.
type httpError struct {
	code int
	msg  string
}

func (e *httpError) Error() string { return e.msg }

func badRequest(format string, args ...any) error {
	return &httpError{code: http.StatusBadRequest, msg: fmt.Sprintf(format, args...)}
}

func (s *Server) setupHTTP() error {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/sessions", s.wrap(s.createSession))
	mux.HandleFunc("GET /v1/sessions", s.wrap(s.listSessions))
	mux.HandleFunc("GET /v1/sessions/{ref}", s.wrap(s.getSession))
	mux.HandleFunc("DELETE /v1/sessions/{ref}", s.wrap(s.destroySession))
	mux.HandleFunc("GET /v1/sessions/{ref}/logs", s.wrap(s.sessionLogs))
	mux.HandleFunc("POST /v1/sessions/{ref}/exec", s.execSession)
	mux.HandleFunc("GET /v1/sessions/{ref}/exec/ws", s.execSessionWS)
	mux.HandleFunc("POST /v1/sessions/{ref}/execute", s.executeSession)
	mux.HandleFunc("GET /v1/sessions/{ref}/stats", s.wrap(s.sessionStats))
	mux.HandleFunc("GET /v1/agents", s.wrap(s.listAgents))
	mux.HandleFunc("GET /v1/agents/{id}", s.wrap(s.getAgent))
	mux.HandleFunc("POST /v1/agents/{id}/drain", s.wrap(s.drainAgent))
	mux.HandleFunc("POST /v1/agents/{id}/eligible", s.wrap(s.drainAgent))
	mux.HandleFunc("POST /v1/agents/{id}/leave", s.wrap(s.leaveAgent))
	mux.HandleFunc("GET /v1/status/leader", s.wrap(s.leader))
	mux.HandleFunc("GET /v1/queue", s.wrap(s.queue))
	mux.HandleFunc("GET /v1/images", s.wrap(s.listImages))
	mux.HandleFunc("POST /v1/images/pull", s.wrap(s.pullImage))
	mux.HandleFunc("POST /v1/images/remove", s.wrap(s.removeImage))
	mux.HandleFunc("POST /v1/system/gc", s.wrap(s.systemGC))
	mux.HandleFunc("GET /v1/system/stats", s.wrap(s.systemStats))
	mux.HandleFunc("GET /v1/system/join-token", s.wrap(s.joinTokenHTTP))
	mux.HandleFunc("POST /v1/nodes/{node}/revoke", s.wrap(s.revokeNodeHTTP))
	s.registerAdmin(mux)
	s.registerApps(mux)
	s.registerEndpointAPI(mux)
	s.registerOperator(mux)
	s.registerVolumes(mux)
	s.registerTemplates(mux)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no such endpoint: %s %s", r.Method, r.URL.Path))
	})
	ln := s.httpLn
	if s.cfg.HTTPTLS {
		ln = httpsListener{Listener: ln, cfg: s.cfg.Security.TLS.HTTPSConfig()}
	}
	s.httpSrv = &http.Server{Handler: ui.Wrap(s.serveEndpointsOrAPI(s.localRoutes(s.forwardToLeader(mux)))), ReadHeaderTimeout: 10 * time.Second,
		// TLS handshake failures of stray clients are not worth a warning.
		ErrorLog: slog.NewLogLogger(s.logger.Handler(), slog.LevelDebug)}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := s.httpSrv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.logger.Error("http server stopped", "error", err)
		}
	}()
	return nil
}

type handler func(w http.ResponseWriter, r *http.Request) (any, error)

// wrap turns a handler's result into JSON and its error into a 4xx/5xx
// answer with {"error": "..."}.
func (s *Server) wrap(h handler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 15*time.Second)
		err := s.waitReady(ctx)
		cancel()
		var out any
		var id *identity
		if err == nil {
			id, err = s.authenticate(r)
		}
		if err == nil {
			r = r.WithContext(withIdentity(r.Context(), id))
			if r.Body != nil {
				r.Body = http.MaxBytesReader(w, r.Body, maxBody)
			}
			out, err = h(w, r)
		}
		if err != nil {
			code, msg := errorStatus(err)
			if code >= 500 {
				s.logger.Error("http request failed", "method", r.Method, "path", r.URL.Path, "error", err)
			}
			writeError(w, code, msg)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		code := http.StatusOK
		if r.Method == http.MethodPost {
			code = http.StatusCreated
		}
		w.WriteHeader(code)
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(out)
	}
}

func errorStatus(err error) (int, string) {
	var he *httpError
	switch {
	case errors.As(err, &he):
		return he.code, he.msg
	case errors.Is(err, state.ErrNotFound):
		return http.StatusNotFound, err.Error()
	case errors.Is(err, state.ErrAmbiguous):
		return http.StatusBadRequest, err.Error()
	case errors.Is(err, state.ErrForbidden):
		return http.StatusForbidden, err.Error()
	case errors.Is(err, state.ErrInUse):
		return http.StatusConflict, strings.TrimSuffix(err.Error(), ": "+state.ErrInUse.Error())
	case errors.Is(err, scheduler.ErrPendingLimit):
		return http.StatusTooManyRequests, err.Error()
	case errors.Is(err, ErrNotLeader), errors.Is(err, ErrNotReady):
		return http.StatusServiceUnavailable, err.Error()
	}
	return http.StatusInternalServerError, err.Error()
}

func writeError(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(api.ErrorResponse{Error: msg})
}

// maxBody bounds a request body of the API (wrap enforces it): 413 past it.
const maxBody = 1 << 20

// decodeBody reads a JSON body strictly: one object, no unknown fields.
func decodeBody(r *http.Request, v any) error {
	if r.Body == nil {
		return badRequest("request body is required")
	}
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if tooLarge := (*http.MaxBytesError)(nil); errors.As(err, &tooLarge) {
			return &httpError{code: http.StatusRequestEntityTooLarge, msg: fmt.Sprintf("request body is larger than the limit of %s", structs.FormatBytes(structs.Whole(tooLarge.Limit)))}
		}
		if errors.Is(err, io.EOF) {
			return badRequest("request body is empty: want a JSON object")
		}
		return badRequest("malformed JSON body: %v", err)
	}
	if dec.More() {
		return badRequest("malformed JSON body: unexpected data after the object")
	}
	return nil
}

var (
	nameRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)
	// idLikeRe: names that read as a session ID prefix (4 or more hex
	// digits or '-'; the CLI shows 8) would shadow one.
	idLikeRe = regexp.MustCompile(`^[0-9a-fA-F-]{4,}$`)
	envKeyRe = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
)

// Bounds on what a kernel may ask for; anything beyond is a typo, not a request.
var slotBounds = map[string]struct{ min, max structs.Quantity }{
	structs.SlotCPU:        {min: 1, max: structs.Whole(4096)},
	structs.SlotMem:        {min: structs.Whole(1 << 20), max: structs.Whole(64 << 40)},
	structs.SlotCUDADevice: {min: structs.Whole(1), max: structs.Whole(64)},
}

// maxMIGInstances bounds one kernel's request of a MIG profile (7 per
// GPU, 8 GPUs a node, with room).
const maxMIGInstances = 64

// migProfileRe is what a MIG profile looks like: 1g.10gb, 1g.18gb+me,
// 1c.2g.20gb...
var migProfileRe = regexp.MustCompile(`^[0-9A-Za-z][0-9A-Za-z.+_-]{0,31}$`)

// knownSlots names the slots a request may ask for, for error messages.
const knownSlots = "cpu, mem, cuda.device, cuda.mig-<profile> and the per-kernel limits pids, disk"

// checkSlot validates one slot of a kernel's request (prefix starts the
// error, e.g. "role sub: "): a known slot within its bounds; device slots
// whole numbers. It reports whether the slot is kept (device slots of 0
// ask for nothing).
func checkSlot(prefix, name string, q structs.Quantity) (bool, error) {
	if name == structs.SlotCUDAMem {
		return false, badRequest("%scuda.mem is counted from the GPUs a kernel gets: ask for -gpu N and -gpu-mem SIZE "+
			"(resources cuda.device and gpu_constraint.min_memory)", prefix)
	}
	profile, mig := structs.IsMIGSlot(name)
	if name == structs.SlotCUDADevice || mig {
		if mig && !migProfileRe.MatchString(profile) {
			return false, badRequest("%sinvalid MIG slot %q: want cuda.mig-<profile>, e.g. cuda.mig-1g.10gb", prefix, name)
		}
		if q < 0 || q%structs.QuantityScale != 0 {
			return false, badRequest("%sresource %s=%s must be a whole number of devices, zero or more", prefix, name, q)
		}
		if q > structs.Whole(maxMIGInstances) {
			return false, badRequest("%sresource %s=%s is out of range [0, %d]", prefix, name, q, maxMIGInstances)
		}
		return q > 0, nil
	}
	b, ok := slotBounds[name]
	if !ok {
		return false, badRequest("%sunknown resource slot %q: known slots are %s", prefix, name, knownSlots)
	}
	if q <= 0 {
		return false, badRequest("%sresource %s must be positive, got %s", prefix, name, q)
	}
	if q < b.min || q > b.max {
		lo, hi := b.min.String(), b.max.String()
		if name == structs.SlotMem {
			lo, hi = structs.FormatBytes(b.min), structs.FormatBytes(b.max)
		}
		return false, badRequest("%sresource %s=%s is out of range [%s, %s]", prefix, name, q, lo, hi)
	}
	return true, nil
}

// checkGPUConstraint validates a GPU constraint (nil: none).
func checkGPUConstraint(prefix string, c *structs.GPUConstraint) error {
	if c == nil {
		return nil
	}
	if c.MinMemory < 0 {
		return badRequest("%sgpu_constraint.min_memory must be zero or more, got %s", prefix, c.MinMemory)
	}
	if c.Model != "" {
		if err := scheduler.ValidateGPUModel(c.Model); err != nil {
			return badRequest("%sgpu_constraint: %v", prefix, err)
		}
	}
	return nil
}

// hasGPUSlot reports whether a request asks for some GPU device.
func hasGPUSlot(res structs.Slots) bool {
	for name, q := range res {
		if _, mig := structs.IsMIGSlot(name); (mig || name == structs.SlotCUDADevice) && q > 0 {
			return true
		}
	}
	return false
}

// limitBounds are the per-kernel limits a request may carry among its
// resources: the drivers enforce them, the scheduler does not count them.
var limitBounds = map[string]struct{ min, max structs.Quantity }{
	structs.LimitPids: {min: structs.Whole(16), max: structs.Whole(1 << 22)},
	structs.LimitDisk: {min: structs.Whole(1 << 20), max: structs.Whole(64 << 40)},
}

// takeLimits returns the per-kernel limits among res, checked.
func takeLimits(res structs.Slots, prefix string) (structs.Slots, error) {
	out := structs.Slots{}
	for name, q := range res {
		b, ok := limitBounds[name]
		if !ok {
			continue
		}
		if q < b.min || q > b.max {
			lo, hi := b.min.String(), b.max.String()
			if name == structs.LimitDisk {
				lo, hi = structs.FormatBytes(b.min), structs.FormatBytes(b.max)
			}
			return nil, badRequest("%slimit %s=%s is out of range [%s, %s]", prefix, name, q, lo, hi)
		}
		out[name] = q
	}
	return out, nil
}

// builtinDrivers are the drivers every agent has.
var builtinDrivers = []string{"exec"}

func (s *Server) knownDrivers(snap *state.Snapshot) []string {
	seen := map[string]bool{}
	var out []string
	add := func(d string) {
		if !seen[d] {
			seen[d] = true
			out = append(out, d)
		}
	}
	for _, d := range builtinDrivers {
		add(d)
	}
	agents, _ := snap.Agents(nil)
	for _, a := range agents {
		for _, d := range a.Drivers {
			add(d)
		}
	}
	return out
}

// admit applies the caller's key to a new session: ownership, the resource
// groups the key may use, and the policy limits checked at creation.
func (s *Server) admit(ctx context.Context, snap *state.Snapshot, sess *structs.Session, kernels []*structs.Kernel) error {
	id := callerOf(ctx)
	sess.AccessKey, sess.Owner = id.key.AccessKey, id.key.User
	if !id.key.MayUseGroup(sess.ResourceGroup) {
		return &httpError{code: http.StatusForbidden, msg: fmt.Sprintf("access key %s may not use resource group %q", id.key.AccessKey, sess.ResourceGroup)}
	}
	var pol *structs.ResourcePolicy
	if id.key.Policy != "" {
		pol, _ = snap.Policy(id.key.Policy) // a policy deleted after it was applied limits nothing
	}
	for _, k := range kernels {
		if err := structs.DriverAllowed(id.key, pol, k.Driver); err != nil {
			return &httpError{code: http.StatusForbidden, msg: fmt.Sprintf("access key %s: %v", id.key.AccessKey, err)}
		}
		if err := checkOptionsPolicy(id.key, pol, k); err != nil {
			return err
		}
	}
	if pol == nil {
		return nil
	}
	if pol.PidsPerKernel > 0 {
		for _, k := range kernels {
			want := k.Limits[structs.LimitPids]
			if want > structs.Whole(pol.PidsPerKernel) {
				return &httpError{code: http.StatusForbidden, msg: fmt.Sprintf("kernel %s asks for a pids limit of %s; policy %s allows %d per kernel", k.Hostname, want, pol.Name, pol.PidsPerKernel)}
			}
			if want == 0 {
				if k.Limits == nil {
					k.Limits = structs.Slots{}
				}
				k.Limits[structs.LimitPids] = structs.Whole(pol.PidsPerKernel)
			}
		}
	}
	if pol.MaxKernelsPerSession > 0 && len(kernels) > pol.MaxKernelsPerSession {
		return badRequest("session has %d kernels; policy %s allows %d per session", len(kernels), pol.Name, pol.MaxKernelsPerSession)
	}
	// max_pending_sessions is checked by the FSM, where concurrent creates
	// are serialized (scheduler.CheckPendingLimit): 429 below.
	return nil
}

// validateCreate checks a create request and builds the session and its kernels.
func (s *Server) validateCreate(req *api.CreateSessionRequest, snap *state.Snapshot, owner string, now time.Time) (*structs.Session, []*structs.Kernel, error) {
	if req.Type == "" {
		req.Type = structs.SessionTypeBatch
	}
	switch req.Type {
	case structs.SessionTypeBatch, structs.SessionTypeInteractive, structs.SessionTypeSystem:
	case structs.SessionTypeInference:
		return nil, nil, badRequest("session type %q is made by endpoints (corral endpoint create): use batch, interactive or system", req.Type)
	default:
		return nil, nil, badRequest("unknown session type %q: use batch, interactive or system", req.Type)
	}
	if req.Driver == "" {
		req.Driver = "exec"
	}
	drivers := s.knownDrivers(snap)
	found := false
	for _, d := range drivers {
		found = found || d == req.Driver
	}
	if !found {
		return nil, nil, badRequest("unknown driver %q: known drivers are %s", req.Driver, strings.Join(drivers, ", "))
	}
	if req.Image != "" {
		if err := checkImageRef(req.Driver, req.Image); err != nil {
			return nil, nil, err
		}
		if req.Driver == "exec" {
			return nil, nil, badRequest("driver exec runs host processes and takes no image: use -driver runc for %q", req.Image)
		}
	} else if req.Driver == "runc" {
		return nil, nil, badRequest("driver runc needs an image: give one with -image REF")
	}
	if req.Image == "" && (len(req.Command) == 0 || strings.TrimSpace(req.Command[0]) == "") {
		return nil, nil, badRequest("command is empty: give the program to run, e.g. [\"sh\", \"-c\", \"echo hi\"]")
	}
	for _, a := range req.Command {
		if strings.ContainsRune(a, 0) {
			return nil, nil, badRequest("command contains a NUL byte")
		}
	}
	if req.Name != "" {
		if !nameRe.MatchString(req.Name) {
			return nil, nil, badRequest("invalid session name %q: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit", req.Name)
		}
		if idLikeRe.MatchString(req.Name) {
			return nil, nil, badRequest("invalid session name %q: it reads as a session ID prefix (4 or more hex digits and '-'); add a letter g-z, a '.' or a '_'", req.Name)
		}
		// Names are the owner's: unique among their live sessions, and
		// another user's names are neither seen nor taken.
		if existing, err := snap.ResolveSessionOf(nil, req.Name, owner); err == nil && existing.Name == req.Name && !existing.Status.Terminal() {
			return nil, nil, &httpError{code: http.StatusConflict, msg: fmt.Sprintf("you already have a session named %q (%s, %s): destroy it or pick another name", req.Name, existing.ID, existing.Status)}
		}
	}
	for k := range req.Env {
		if !envKeyRe.MatchString(k) {
			return nil, nil, badRequest("invalid environment variable name %q", k)
		}
	}
	group := req.ResourceGroup
	if group == "" {
		group = structs.DefaultResourceGroup
	} else if !nameRe.MatchString(group) {
		return nil, nil, badRequest("invalid resource group name %q", group)
	}
	res := s.cfg.DefaultResources.Copy()
	limits, err := takeLimits(req.Resources, "")
	if err != nil {
		return nil, nil, err
	}
	for _, name := range req.Resources.Names() {
		q := req.Resources[name]
		if _, isLimit := limitBounds[name]; isLimit {
			continue
		}
		keep, err := checkSlot("", name, q)
		if err != nil {
			return nil, nil, err
		}
		if keep {
			res[name] = q
		} else {
			delete(res, name)
		}
	}
	if err := checkGPUConstraint("", req.GPUConstraint); err != nil {
		return nil, nil, err
	}
	if req.Priority < -1000 || req.Priority > 1000 {
		return nil, nil, badRequest("priority %d is out of range [-1000, 1000]", req.Priority)
	}
	if req.MaxRetries < 0 || req.MaxRetries > 100 {
		return nil, nil, badRequest("max_retries %d is out of range [0, 100]", req.MaxRetries)
	}
	if req.MaxRetries > 0 && req.Type != structs.SessionTypeBatch {
		return nil, nil, badRequest("max_retries is for batch sessions")
	}
	var lostAfter time.Duration
	if req.LostAfter != "" {
		d, err := time.ParseDuration(req.LostAfter)
		if err != nil || d <= 0 {
			return nil, nil, badRequest("lost_after %q: want a positive Go duration such as 30s or 2m", req.LostAfter)
		}
		lostAfter = d
	}
	if req.ClusterSize < 0 || req.ClusterSize > maxClusterSize {
		return nil, nil, badRequest("cluster_size %d is out of range [1, %d]", req.ClusterSize, maxClusterSize)
	}
	extra, err := extraRoles(req)
	if err != nil {
		return nil, nil, err
	}
	total := max(req.ClusterSize, 1)
	for _, rs := range extra {
		total += rs.Count
	}
	if total > maxClusterSize {
		return nil, nil, badRequest("the session has %d kernels (main1, %d sub and %d of extra roles); at most %d", total, max(req.ClusterSize, 1)-1, total-max(req.ClusterSize, 1), maxClusterSize)
	}
	switch req.ClusterMode {
	case "":
		req.ClusterMode = structs.ClusterModeSingleNode
	case structs.ClusterModeSingleNode, structs.ClusterModeMultiNode:
	default:
		return nil, nil, badRequest("unknown cluster_mode %q: use single-node or multi-node", req.ClusterMode)
	}
	if !req.StartsAt.IsZero() && req.Type != structs.SessionTypeBatch {
		return nil, nil, badRequest("starts_at is for batch sessions (reservations)")
	}
	runOn, failOn, startOrder, err := jobSettings(req, total >= 2)
	if err != nil {
		return nil, nil, err
	}
	opts, err := kernelOptions(req)
	if err != nil {
		return nil, nil, err
	}
	sess := &structs.Session{
		ID: uuid.NewString(), Name: req.Name, Type: req.Type, ResourceGroup: group,
		Status: structs.SessionPending, Result: structs.ResultUndefined, CreatedAt: now,
		Priority: req.Priority, StartsAt: req.StartsAt.UTC(),
		ClusterMode: req.ClusterMode, ClusterSize: total, MaxRetries: req.MaxRetries,
		LostAfter: lostAfter, RunOn: runOn, FailOn: failOn, StartOrder: startOrder,
	}
	if req.StartsAt.IsZero() {
		sess.StartsAt = time.Time{}
	}
	if sess.ServicePorts, err = checkServicePorts(req.ServicePorts); err != nil {
		return nil, nil, err
	}
	kernels := clusterKernels(sess, req, extra, res, now)
	for _, k := range kernels {
		if len(limits) > 0 {
			k.Limits = limits.Copy()
		}
		if !req.GPUConstraint.Empty() {
			k.GPUConstraint = req.GPUConstraint.Copy()
		}
		k.Options = opts.Copy()
	}
	if err := s.applyRoles(req, kernels, drivers); err != nil {
		return nil, nil, err
	}
	if err := clusterLaunch(sess, kernels, rolesWithCommand(req)); err != nil {
		return nil, nil, err
	}
	// A constraint narrows GPU slots: without one it would constrain
	// nothing, which is surely a mistake.
	for _, k := range kernels {
		if !k.GPUConstraint.Empty() && !hasGPUSlot(k.Resources) {
			return nil, nil, badRequest("kernel %s: a GPU model or memory constraint needs GPUs: ask for -gpu N (resources cuda.device) "+
				"or a MIG slot (-slot cuda.mig-<profile>=N)", k.Hostname)
		}
	}
	return sess, kernels, nil
}

// applyRoles applies the request's per-role overrides to the kernels of
// each role, with the same checks as the session-wide fields.
func (s *Server) applyRoles(req *api.CreateSessionRequest, kernels []*structs.Kernel, drivers []string) error {
	seen := map[string]bool{}
	for _, rs := range req.Roles {
		if seen[rs.Role] {
			return badRequest("role %q is given twice", rs.Role)
		}
		seen[rs.Role] = true
		if rs.Role == "sub" && max(req.ClusterSize, 1) < 2 {
			return badRequest("role sub given for a session without sub kernels: set cluster_size to 2 or more")
		}
		driver := req.Driver
		if rs.Driver != "" {
			if !slices.Contains(drivers, rs.Driver) {
				return badRequest("role %s: unknown driver %q: known drivers are %s", rs.Role, rs.Driver, strings.Join(drivers, ", "))
			}
			driver = rs.Driver
		}
		img := rs.Image
		if img == "" {
			img = req.Image
		}
		if img != "" {
			if err := checkImageRef(driver, img); err != nil {
				return badRequest("role %s: %v", rs.Role, err)
			}
		}
		roleLimits, err := takeLimits(rs.Resources, "role "+rs.Role+": ")
		if err != nil {
			return err
		}
		for _, name := range rs.Resources.Names() {
			if _, isLimit := limitBounds[name]; isLimit {
				continue
			}
			if _, err := checkSlot("role "+rs.Role+": ", name, rs.Resources[name]); err != nil {
				return err
			}
		}
		if err := checkGPUConstraint("role "+rs.Role+": ", rs.GPUConstraint); err != nil {
			return err
		}
		for _, k := range kernels {
			if k.Role != rs.Role {
				continue
			}
			k.Driver = driver
			if rs.Image != "" {
				k.Image = rs.Image
			}
			if len(rs.Command) > 0 {
				k.Command = append([]string(nil), rs.Command...)
			}
			for name, q := range rs.Resources {
				if _, isLimit := limitBounds[name]; isLimit {
					continue
				}
				if q == 0 {
					delete(k.Resources, name) // a device slot of 0: none
					continue
				}
				k.Resources[name] = q
			}
			if rs.GPUConstraint != nil {
				k.GPUConstraint = nil
				if !rs.GPUConstraint.Empty() {
					k.GPUConstraint = rs.GPUConstraint.Copy()
				}
			}
			for name, q := range roleLimits {
				if k.Limits == nil {
					k.Limits = structs.Slots{}
				}
				k.Limits[name] = q
			}
			if k.Driver == "exec" && k.Image != "" {
				return badRequest("role %s: driver exec takes no image", rs.Role)
			}
			if k.Driver == "runc" && k.Image == "" {
				return badRequest("role %s: driver runc needs an image", rs.Role)
			}
		}
	}
	return nil
}

// maxClusterSize bounds the kernels of one session.
const maxClusterSize = 64

// roleNameRe is what an extra role's name looks like: letters and '-',
// so that its kernels' hostnames (the name and an index: ps1) are unique.
var roleNameRe = regexp.MustCompile(`^[a-z]([a-z-]{0,30}[a-z])?$`)

// extraRoles returns the request's roles other than main and sub, checked,
// with their counts defaulted to 1, sorted by name (the kernels' order).
func extraRoles(req *api.CreateSessionRequest) ([]api.RoleSpec, error) {
	var out []api.RoleSpec
	for _, rs := range req.Roles {
		switch rs.Role {
		case "main", "sub":
			if rs.Count != 0 {
				return nil, badRequest("role %s: count is for extra roles; main is one kernel and cluster_size counts main1 and the sub kernels", rs.Role)
			}
			continue
		}
		if !roleNameRe.MatchString(rs.Role) {
			return nil, badRequest("invalid role name %q: use main, sub, or 1-32 lowercase letters or '-' starting and ending with a letter (its kernels are named after it: ps1, ps2)", rs.Role)
		}
		if rs.Count < 0 || rs.Count > maxClusterSize {
			return nil, badRequest("role %s: count %d is out of range [1, %d]", rs.Role, rs.Count, maxClusterSize)
		}
		rs.Count = max(rs.Count, 1)
		out = append(out, rs)
	}
	slices.SortFunc(out, func(a, b api.RoleSpec) int { return strings.Compare(a.Role, b.Role) })
	return out, nil
}

// clusterKernels builds the session's kernels, main1 and sub1..subN-1,
// then the kernels of the extra roles (ps1, ps2...), each with the
// cluster's environment (as Backend.AI's cluster sessions have).
func clusterKernels(sess *structs.Session, req *api.CreateSessionRequest, extra []api.RoleSpec, res structs.Slots, now time.Time) []*structs.Kernel {
	type slot struct {
		role string
		idx  int
	}
	slots := []slot{{"main", 1}}
	for i := 1; i < max(req.ClusterSize, 1); i++ {
		slots = append(slots, slot{"sub", i})
	}
	for _, rs := range extra {
		for i := 1; i <= rs.Count; i++ {
			slots = append(slots, slot{rs.Role, i})
		}
	}
	n := len(slots)
	hosts := make([]string, n)
	for i, sl := range slots {
		hosts[i] = fmt.Sprintf("%s%d", sl.role, sl.idx)
	}
	ks := make([]*structs.Kernel, n)
	for i := range ks {
		role, idx := slots[i].role, slots[i].idx
		k := &structs.Kernel{
			ID: uuid.NewString(), SessionID: sess.ID, Role: role, Idx: idx, Hostname: hosts[i],
			Driver: req.Driver, Image: req.Image, Command: req.Command,
			Resources: res.Copy(), Status: structs.KernelPending, CreatedAt: now,
			Env: map[string]string{},
		}
		maps.Copy(k.Env, req.Env)
		k.Env["CORRAL_SESSION_ID"] = sess.ID
		k.Env["CORRAL_KERNEL_ID"] = k.ID
		k.Env["CORRAL_CLUSTER_ROLE"] = role
		// CORRAL_CLUSTER_IDX is the index within the role (main1 and sub1
		// are both 1); the node's rank in the job (main1 0, subN N) is
		// CORRAL_NODE_RANK, which the agent sets from the kernel's Launch.
		k.Env["CORRAL_CLUSTER_IDX"] = strconv.Itoa(idx)
		k.Env["CORRAL_CLUSTER_HOST"] = hosts[i]
		k.Env["CORRAL_CLUSTER_HOSTS"] = strings.Join(hosts, ",")
		k.Env["CORRAL_CLUSTER_SIZE"] = strconv.Itoa(n)
		ks[i] = k
	}
	return ks
}

// prepareCreate turns a create request into the session and kernels it
// would enqueue, for the caller of ctx: the template applied, the request
// validated and admitted against the caller's limits, volumes resolved and
// the images' registries checked. createSession and planSession share it,
// so a dry run refuses exactly what a submission would.
func (s *Server) prepareCreate(ctx context.Context, snap *state.Snapshot, req *api.CreateSessionRequest, now time.Time) (*structs.Session, []*structs.Kernel, error) {
	if err := applyTemplate(ctx, snap, req); err != nil {
		return nil, nil, err
	}
	if err := prepareVolumeCreate(req); err != nil {
		return nil, nil, err
	}
	sess, kernels, err := s.validateCreate(req, snap, callerName(ctx), now)
	if err != nil {
		return nil, nil, err
	}
	if err := s.admit(ctx, snap, sess, kernels); err != nil {
		return nil, nil, err
	}
	if err := s.attachVolumes(snap, req, sess, kernels); err != nil {
		return nil, nil, err
	}
	if err := s.checkRegistries(ctx, snap, sess.ResourceGroup, kernels); err != nil {
		s.sftpPorts.release(kernels)
		return nil, nil, err
	}
	return sess, kernels, nil
}

func (s *Server) createSession(w http.ResponseWriter, r *http.Request) (any, error) {
	var req api.CreateSessionRequest
	if err := decodeBody(r, &req); err != nil {
		return nil, err
	}
	key, hash, err := idempotencyOf(r, &req)
	if err != nil {
		return nil, err
	}
	if d, err := s.replayedCreate(r.Context(), w, key, hash, ""); d != nil || err != nil {
		return d, err
	}
	now := time.Now().UTC()
	snap := s.state.Snapshot()
	sess, kernels, err := s.prepareCreate(r.Context(), snap, &req, now)
	if err != nil {
		return nil, err
	}
	defer s.sftpPorts.release(kernels) // committed or failed: the state says from here
	for _, ref := range req.DependsOn {
		dep, err := resolveSession(r.Context(), nil, snap, ref)
		if err != nil {
			return nil, badRequest("depends_on: %v", err)
		}
		sess.DependsOn = append(sess.DependsOn, dep.ID)
	}
	enq := &structs.SessionEnqueueRequest{Session: sess, Kernels: kernels, Time: now, IdempotencyKey: key, RequestHash: hash}
	if _, _, err := s.apply(structs.SessionEnqueueRequestType, enq); err != nil {
		if errors.Is(err, state.ErrIdempotencyConflict) {
			return nil, &httpError{code: http.StatusUnprocessableEntity, msg: err.Error()}
		}
		return nil, err
	}
	if d, err := s.replayedCreate(r.Context(), w, key, hash, sess.ID); d != nil || err != nil {
		return d, err // a create with this key was committed meanwhile
	}
	s.logger.Debug("session enqueued", "session_id", sess.ID, "name", sess.Name)
	return s.sessionDetail(r.Context(), nil, s.state.Snapshot(), sess.ID, w)
}

// visible reports whether the caller may see a session: admins see all,
// users their own; another user's session is answered 404, as if absent.
func visible(ctx context.Context, sess *structs.Session) bool {
	id := callerOf(ctx)
	return id != nil && (id.admin() || (sess.Owner != "" && sess.Owner == id.key.User))
}

// callerUser is the user of the caller's key, "" for an admin (who sees
// every session) or an anonymous caller.
func callerUser(ctx context.Context) string {
	if id := callerOf(ctx); id != nil && !id.admin() {
		return id.key.User
	}
	return ""
}

// resolveSession finds a session the caller may see by ID, prefix or
// name: a user's names and prefixes resolve among their own sessions only.
func resolveSession(ctx context.Context, ws memdb.WatchSet, snap *state.Snapshot, ref string) (*structs.Session, error) {
	sess, err := snap.ResolveSessionOf(ws, ref, callerUser(ctx))
	if err != nil {
		return nil, err
	}
	if !visible(ctx, sess) {
		return nil, fmt.Errorf("no session with ID, ID prefix or name %q: %w", ref, state.ErrNotFound)
	}
	return sess, nil
}

func (s *Server) sessionDetail(ctx context.Context, ws memdb.WatchSet, snap *state.Snapshot, ref string, w http.ResponseWriter) (*api.SessionDetail, error) {
	sess, err := resolveSession(ctx, ws, snap, ref)
	if err != nil {
		return nil, err
	}
	ks, err := snap.KernelsBySession(nil, sess.ID)
	if err != nil {
		return nil, err
	}
	if w != nil {
		w.Header().Set(api.IndexHeader, strconv.FormatUint(sess.ModifyIndex, 10))
	}
	// The session's ssh private key stays between the server and its
	// agents: the API shows each launch redacted.
	d := &api.SessionDetail{Session: sess, Kernels: redactKernels(ks)}
	now := time.Now()
	for _, k := range ks {
		if !k.HoldsSlots() {
			continue
		}
		a, err := snap.Agent(ws, k.AgentID)
		if err != nil || a.Status != structs.AgentDisconnected {
			continue
		}
		if d.Unknown == nil {
			d.Unknown = map[string]string{}
		}
		d.Unknown[k.ID] = fmt.Sprintf("UNKNOWN: agent %s disconnected %s ago; last reported %s",
			a.Name, now.Sub(a.DisconnectedAt).Round(time.Second), k.Status)
	}
	return d, nil
}

// blockingParams reads ?index=N&wait=D of a blocking query.
func blockingParams(r *http.Request) (uint64, time.Duration, error) {
	q := r.URL.Query()
	var index uint64
	if v := q.Get("index"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return 0, 0, badRequest("invalid index %q: want a non-negative integer", v)
		}
		index = n
	}
	wait := 5 * time.Minute
	if v := q.Get("wait"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			return 0, 0, badRequest("invalid wait %q: want a duration such as 30s", v)
		}
		wait = min(d, 10*time.Minute)
	}
	return index, wait, nil
}

func (s *Server) getSession(w http.ResponseWriter, r *http.Request) (any, error) {
	index, wait, err := blockingParams(r)
	if err != nil {
		return nil, err
	}
	ref := r.PathValue("ref")
	ctx, cancel := context.WithTimeout(r.Context(), wait)
	defer cancel()
	for {
		abandon := s.state.AbandonCh()
		ws := memdb.NewWatchSet()
		d, err := s.sessionDetail(r.Context(), ws, s.state.Snapshot(), ref, w)
		if err != nil {
			return nil, err
		}
		if index == 0 || d.Session.ModifyIndex > index {
			s.fillLimits(d)
			return d, nil
		}
		ws.Add(abandon)
		if ws.WatchCtx(ctx) != nil {
			s.fillLimits(d)
			return d, nil
		}
	}
}

func (s *Server) destroySession(w http.ResponseWriter, r *http.Request) (any, error) {
	sess, err := resolveSession(r.Context(), nil, s.state.Snapshot(), r.PathValue("ref"))
	if err != nil {
		return nil, err
	}
	reason := "destroyed by user"
	if _, _, err := s.apply(structs.SessionDestroyRequestType, &structs.SessionDestroyRequest{SessionID: sess.ID, Reason: reason, Time: time.Now().UTC()}); err != nil {
		return nil, err
	}
	return s.sessionDetail(r.Context(), nil, s.state.Snapshot(), sess.ID, w)
}

// kernelOf finds a session's kernel by hostname or ID (default main1).
func kernelOf(d *api.SessionDetail, ref string) (*structs.Kernel, error) {
	if ref == "" {
		ref = "main1"
	}
	for _, k := range d.Kernels {
		if k.Hostname == ref || k.ID == ref {
			return k, nil
		}
	}
	return nil, &httpError{code: http.StatusNotFound, msg: fmt.Sprintf("session %s has no kernel %q", d.Session.ID, ref)}
}

// agentFor returns a client for the agent a kernel is on.
func (s *Server) agentFor(k *structs.Kernel) (*rpc.AgentClient, error) {
	if k.AgentID == "" {
		return nil, &httpError{code: http.StatusConflict, msg: fmt.Sprintf("kernel %s is %s and has not been placed on an agent yet", k.Hostname, k.Status)}
	}
	a, err := s.state.Snapshot().Agent(nil, k.AgentID)
	if err != nil {
		return nil, err
	}
	if a.Status != structs.AgentAlive {
		return nil, &httpError{code: http.StatusServiceUnavailable, msg: fmt.Sprintf("agent %s of kernel %s is %s", a.Name, k.Hostname, a.Status)}
	}
	return s.agents.client(a.RPCAddr)
}

func (s *Server) sessionLogs(w http.ResponseWriter, r *http.Request) (any, error) {
	d, err := s.sessionDetail(r.Context(), nil, s.state.Snapshot(), r.PathValue("ref"), nil)
	if err != nil {
		return nil, err
	}
	k, err := kernelOf(d, r.URL.Query().Get("kernel"))
	if err != nil {
		return nil, err
	}
	req, err := logsRequest(r, k)
	if err != nil {
		return nil, err
	}
	c, err := s.agentFor(k)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	lr, err := c.Logs(ctx, req)
	if err != nil {
		return nil, &httpError{code: http.StatusBadGateway, msg: fmt.Sprintf("reading logs of kernel %s from its agent: %s", k.Hostname, status.Convert(err).Message())}
	}
	return &api.LogsResponse{SessionID: d.Session.ID, KernelID: k.ID, Hostname: k.Hostname, Stdout: string(lr.Stdout), Stderr: string(lr.Stderr), StdoutBytes: lr.Stdout, StderrBytes: lr.Stderr,
		StdoutEnd: lr.StdoutEnd, StderrEnd: lr.StderrEnd}, nil
}

// execSession streams a command's output from the kernel's agent as
// newline-delimited JSON frames, ending with the exit code.
func (s *Server) execSession(w http.ResponseWriter, r *http.Request) {
	fail := func(err error) {
		code, msg := errorStatus(err)
		writeError(w, code, msg)
	}
	ctx, ok := s.streamIdentity(w, r)
	if !ok {
		return
	}
	r = r.WithContext(ctx)
	var req api.ExecRequest
	if err := decodeBody(r, &req); err != nil {
		fail(err)
		return
	}
	if req.Stdin || req.TTY {
		fail(badRequest("stdin and tty need the WebSocket of GET /v1/sessions/{id}/exec/ws (docs/api-exec.md)"))
		return
	}
	_, k, c, err := s.execTarget(r.Context(), r.PathValue("ref"), &req)
	if err != nil {
		fail(err)
		return
	}
	stream, err := c.Exec(r.Context(), &rpc.ExecRequest{KernelID: k.ID, Command: req.Command, Env: req.Env})
	if err != nil {
		fail(&httpError{code: http.StatusBadGateway, msg: "exec: " + status.Convert(err).Message()})
		return
	}
	relayExec(w, stream, "exec", nil, func(f *rpc.ExecFrame) any {
		return api.ExecFrame{Stream: f.Stream, Data: f.Data, ExitCode: f.ExitCode, Error: f.Error}
	})
}

// streamIdentity readies and authenticates a handler that writes its own
// answer (exec, execute; wrap does this for the others): the context
// carries the caller's identity, and false means the error is answered.
func (s *Server) streamIdentity(w http.ResponseWriter, r *http.Request) (context.Context, bool) {
	err := s.waitReady(r.Context())
	var id *identity
	if err == nil {
		id, err = s.authenticate(r)
	}
	if err != nil {
		code, msg := errorStatus(err)
		writeError(w, code, msg)
		return nil, false
	}
	return withIdentity(r.Context(), id), true
}

// relayExec answers with an agent's exec frames as newline-delimited JSON
// (wire makes each frame's API form) until the exit code or an error;
// label names the operation in errors, header adds answer headers. It
// reports whether the command ended (exit code or the driver's error)
// rather than the stream breaking. A stream that fails before its first
// frame is a 502 answer.
func relayExec(w http.ResponseWriter, stream *rpc.RecvStream[rpc.ExecFrame], label string, header func(http.Header), wire func(*rpc.ExecFrame) any) bool {
	frame, err := stream.Recv()
	if err != nil {
		writeError(w, http.StatusBadGateway, label+": "+status.Convert(err).Message())
		return false
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	if header != nil {
		header(w.Header())
	}
	w.WriteHeader(http.StatusOK)
	flusher, _ := w.(http.Flusher)
	enc := json.NewEncoder(w)
	for {
		_ = enc.Encode(wire(frame))
		if flusher != nil {
			flusher.Flush()
		}
		if frame.ExitCode != nil || frame.Error != "" {
			return true
		}
		if frame, err = stream.Recv(); err != nil {
			_ = enc.Encode(wire(&rpc.ExecFrame{Error: label + " stream from agent broke: " + status.Convert(err).Message()}))
			return false
		}
	}
}

func (s *Server) listAgents(w http.ResponseWriter, r *http.Request) (any, error) {
	snap := s.state.Snapshot()
	// The index to follow GET /v1/events from (docs/events.md).
	w.Header().Set(api.IndexHeader, strconv.FormatUint(snap.Index("agents"), 10))
	out, err := snap.Agents(nil)
	if err != nil {
		return nil, err
	}
	if out == nil {
		out = []*structs.Agent{}
	}
	return out, nil
}

func (s *Server) getAgent(w http.ResponseWriter, r *http.Request) (any, error) {
	return s.state.Snapshot().ResolveAgent(r.PathValue("id"))
}

// drainAgent serves both drain (stop new placements, -force: terminate
// the agent's kernels) and eligible (take placements again). Admins only.
func (s *Server) drainAgent(w http.ResponseWriter, r *http.Request) (any, error) {
	if err := requireAdmin(r); err != nil {
		return nil, err
	}
	a, err := s.state.Snapshot().ResolveAgent(r.PathValue("id"))
	if err != nil {
		return nil, err
	}
	req := &structs.AgentDrainRequest{AgentID: a.ID, Time: time.Now().UTC()}
	if strings.HasSuffix(r.URL.Path, "/drain") {
		var body api.DrainRequest
		if r.ContentLength != 0 {
			if err := decodeBody(r, &body); err != nil {
				return nil, err
			}
		}
		req.Drain, req.Force = true, body.Force
	}
	if _, _, err := s.apply(structs.AgentDrainRequestType, req); err != nil {
		return nil, err
	}
	return s.state.Snapshot().Agent(nil, a.ID)
}

// leaveAgent gives a node up at once (admins only): the agent is
// TERMINATED, its kernels end, batch sessions with retries are re-queued.
// Stopping an agent never does this; it is how a node is decommissioned.
func (s *Server) leaveAgent(w http.ResponseWriter, r *http.Request) (any, error) {
	if err := requireAdmin(r); err != nil {
		return nil, err
	}
	a, err := s.state.Snapshot().ResolveAgent(r.PathValue("id"))
	if err != nil {
		return nil, err
	}
	req := &structs.AgentStatusRequest{AgentID: a.ID, Status: structs.AgentTerminated, Info: "left: given up by the operator (node leave)", Time: time.Now().UTC()}
	if _, _, err := s.apply(structs.AgentStatusRequestType, req); err != nil {
		return nil, err
	}
	return s.state.Snapshot().Agent(nil, a.ID)
}

func (s *Server) leader(w http.ResponseWriter, r *http.Request) (any, error) {
	addr, id := s.raft.LeaderWithID()
	return map[string]string{"address": string(addr), "id": string(id)}, nil
}

// listImages gathers the image caches of every alive agent.
func (s *Server) listImages(w http.ResponseWriter, r *http.Request) (any, error) {
	agents, err := s.state.Snapshot().Agents(nil)
	if err != nil {
		return nil, err
	}
	out := []*api.AgentImage{}
	for _, a := range agents {
		if a.Status != structs.AgentAlive {
			continue
		}
		c, err := s.agents.client(a.RPCAddr)
		if err != nil {
			return nil, err
		}
		ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
		resp, err := c.ImageList(ctx, &rpc.ImageListRequest{})
		cancel()
		if err != nil {
			return nil, &httpError{code: http.StatusBadGateway, msg: fmt.Sprintf("listing images on agent %s: %s", a.Name, status.Convert(err).Message())}
		}
		for _, img := range resp.Images {
			out = append(out, agentImage(a, img))
		}
	}
	return out, nil
}

// registryPolicy is the registry policy of a resource group's sessions.
func (s *Server) registryPolicy(snap *state.Snapshot, group string) images.RegistryPolicy {
	p := images.RegistryPolicy{
		AllowLoopback: s.cfg.AllowLoopbackRegistries,
		AlsoAllowed:   s.cfg.AllowedRegistries,
		Hint:          fmt.Sprintf("use an image from an allowed registry, or ask an admin to allow it: corral group update %s -allow-registry HOST[:PORT]", group),
	}
	if g, err := snap.Group(group); err == nil {
		p.Allowed = g.AllowedRegistries
	}
	return p
}

// checkRegistries refuses (403) a session whose kernels' images come from
// a registry its resource group does not allow. Agents check again (the
// private-address rule) before they pull, and when they dial.
func (s *Server) checkRegistries(ctx context.Context, snap *state.Snapshot, group string, kernels []*structs.Kernel) error {
	p := s.registryPolicy(snap, group)
	seen := map[string]bool{}
	for _, k := range kernels {
		if k.Image == "" || seen[k.Image] || structs.IsDiskImage(k.Image) {
			continue
		}
		seen[k.Image] = true
		registry, err := images.RegistryOf(k.Image)
		if err != nil {
			return badRequest("%v", err)
		}
		if err := p.Check(ctx, registry); err != nil {
			return &httpError{code: http.StatusForbidden, msg: fmt.Sprintf("image %s: resource group %s: %v", k.Image, group, err)}
		}
	}
	return nil
}

// pullImage makes one agent pull an image into its cache (admins only:
// sessions pull through their group's registry allow-list).
func (s *Server) pullImage(w http.ResponseWriter, r *http.Request) (any, error) {
	var req api.ImagePullRequest
	if err := decodeAdmin(r, &req); err != nil {
		return nil, err
	}
	if _, err := images.ParseReference(req.Ref); err != nil {
		return nil, badRequest("%v", err)
	}
	if req.Agent == "" {
		return nil, badRequest("agent is required: the agent whose cache to warm")
	}
	a, err := s.state.Snapshot().ResolveAgent(req.Agent)
	if err != nil {
		return nil, err
	}
	if a.Status != structs.AgentAlive {
		return nil, &httpError{code: http.StatusServiceUnavailable, msg: fmt.Sprintf("agent %s is %s", a.Name, a.Status)}
	}
	c, err := s.agents.client(a.RPCAddr)
	if err != nil {
		return nil, err
	}
	resp, err := c.ImagePull(r.Context(), &rpc.ImagePullRequest{Ref: req.Ref})
	if err != nil {
		return nil, agentCallError(err, "pulling %s on agent %s", req.Ref, a.Name)
	}
	return agentImage(a, resp.Image), nil
}

// agentCallError turns an agent RPC's error into the API's answer: the
// gRPC code's HTTP equivalent (502 for the agent's own failures), the
// agent's message after what was being done.
func agentCallError(err error, format string, args ...any) error {
	st := status.Convert(err)
	code := http.StatusBadGateway
	switch st.Code() {
	case codes.InvalidArgument:
		code = http.StatusBadRequest
	case codes.NotFound:
		code = http.StatusNotFound
	case codes.PermissionDenied:
		code = http.StatusForbidden
	case codes.FailedPrecondition:
		code = http.StatusConflict
	case codes.ResourceExhausted:
		code = http.StatusUnprocessableEntity
	case codes.Unimplemented:
		code = http.StatusNotImplemented
	}
	return &httpError{code: code, msg: fmt.Sprintf(format, args...) + ": " + st.Message()}
}

// agentImage is an agent's cached image as the API shows it.
func agentImage(a *structs.Agent, img *rpc.ImageInfo) *api.AgentImage {
	return &api.AgentImage{AgentID: a.ID, AgentName: a.Name, Ref: img.Ref, Digest: img.Digest, Size: img.Size, UnpackedSize: img.UnpackedSize, PulledAt: img.PulledAt}
}

// removeImage removes an image from one agent's cache (admin), refused
// while a kernel that has not ended uses it: first by the state (sessions
// the caller can look up), then by the agent itself.
func (s *Server) removeImage(w http.ResponseWriter, r *http.Request) (any, error) {
	var req api.ImagePullRequest
	if err := decodeAdmin(r, &req); err != nil {
		return nil, err
	}
	if _, err := images.ParseReference(req.Ref); err != nil {
		return nil, badRequest("%v", err)
	}
	if req.Agent == "" {
		return nil, badRequest("agent is required: the agent whose cache to remove the image from")
	}
	snap := s.state.Snapshot()
	a, err := snap.ResolveAgent(req.Agent)
	if err != nil {
		return nil, err
	}
	if a.Status != structs.AgentAlive {
		return nil, &httpError{code: http.StatusServiceUnavailable, msg: fmt.Sprintf("agent %s is %s", a.Name, a.Status)}
	}
	kernels, err := snap.KernelsByAgent(nil, a.ID)
	if err != nil {
		return nil, err
	}
	var users []string
	for _, k := range kernels {
		if k.Image == req.Ref && !k.Status.Terminal() {
			users = append(users, fmt.Sprintf("session %s (kernel %s, %s)", k.SessionID, k.ID, k.Status))
		}
	}
	if len(users) > 0 {
		slices.Sort(users)
		return nil, &httpError{code: http.StatusConflict, msg: fmt.Sprintf("image %s on agent %s is in use by %s: destroy those sessions first, or wait for them to end", req.Ref, a.Name, strings.Join(users, ", "))}
	}
	c, err := s.agents.client(a.RPCAddr)
	if err != nil {
		return nil, err
	}
	resp, err := c.ImageRemove(r.Context(), &rpc.ImageRemoveRequest{Ref: req.Ref})
	if err != nil {
		return nil, agentCallError(err, "removing %s on agent %s", req.Ref, a.Name)
	}
	return agentImage(a, resp.Image), nil
}

// sessionStats samples the running kernels of a session on their agents.
func (s *Server) sessionStats(w http.ResponseWriter, r *http.Request) (any, error) {
	d, err := s.sessionDetail(r.Context(), nil, s.state.Snapshot(), r.PathValue("ref"), nil)
	if err != nil {
		return nil, err
	}
	out := []*api.KernelStats{}
	for _, k := range d.Kernels {
		ks := &api.KernelStats{KernelID: k.ID, Hostname: k.Hostname}
		out = append(out, ks)
		if k.Status != structs.KernelRunning {
			ks.Error = "kernel is " + string(k.Status)
			continue
		}
		c, err := s.agentFor(k)
		if err != nil {
			ks.Error = err.Error()
			continue
		}
		ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
		resp, err := c.Stats(ctx, &rpc.StatsRequest{KernelIDs: []string{k.ID}})
		cancel()
		if err != nil {
			ks.Error = status.Convert(err).Message()
			continue
		}
		if len(resp.Kernels) == 1 {
			st := resp.Kernels[0]
			ks.Time, ks.CPUUsageNanos, ks.MemoryRSSBytes, ks.Pids, ks.Error = st.Time, st.CPUUsageNanos, st.MemoryRSSBytes, st.Pids, st.Error
			ks.GPUs, ks.GPUUtilPercent, ks.GPUMemoryUsedBytes = st.GPUs, st.GPUUtilPercent, st.GPUMemoryUsedBytes
		}
	}
	return out, nil
}

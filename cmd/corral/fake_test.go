package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/structs"
)

// fakeCorral is an in-memory stand-in for corral's HTTP API: sessions move
// through scripted statuses, two changes per blocking query.
type fakeCorral struct {
	t        *testing.T
	url      string
	mu       sync.Mutex
	index    uint64
	sessions []*fakeSession
	creates  []api.CreateSessionRequest
	execs    []api.ExecRequest
	agent    *structs.Agent
	// keys records the Idempotency-Key of each create; failCreates makes
	// the next creates fail (an HTTP status, or 0 to drop the connection
	// after the session was made, as a leader that died after commit).
	keys        []string
	failCreates []int
	byKey       map[string]*fakeSession
}

type fakeSession struct {
	d     *api.SessionDetail
	steps []fakeStep
}

// fakeStep is one status change of a session and its kernel.
type fakeStep struct {
	status structs.SessionStatus
	kernel structs.KernelStatus
	info   string
	result structs.SessionResult
	exit   *int
	place  bool
}

func intp(i int) *int { return &i }

func newFakeCorral(t *testing.T) *fakeCorral {
	f := &fakeCorral{t: t, agent: &structs.Agent{
		ID: "a1b2c3d4-0000-0000-0000-000000000000", Name: "node-1", ResourceGroup: "default", Status: structs.AgentAlive,
		Drivers:      []string{"exec"},
		Capacity:     structs.Slots{structs.SlotCPU: structs.Whole(8), structs.SlotMem: structs.Whole(16 << 30)},
		Occupied:     structs.Slots{structs.SlotCPU: 1500, structs.SlotMem: structs.Whole(512 << 20)},
		RegisteredAt: time.Now().Add(-3 * time.Hour), UpdatedAt: time.Now(),
	}}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/sessions", f.create)
	mux.HandleFunc("GET /v1/sessions", f.list)
	mux.HandleFunc("GET /v1/sessions/{ref}", f.get)
	mux.HandleFunc("DELETE /v1/sessions/{ref}", f.destroy)
	mux.HandleFunc("GET /v1/sessions/{ref}/logs", f.logs)
	mux.HandleFunc("POST /v1/sessions/{ref}/exec", f.exec)
	mux.HandleFunc("GET /v1/agents", func(w http.ResponseWriter, r *http.Request) {
		f.reply(w, 200, []*structs.Agent{f.agent})
	})
	mux.HandleFunc("GET /v1/agents/{id}", func(w http.ResponseWriter, r *http.Request) {
		if id := r.PathValue("id"); strings.HasPrefix(f.agent.ID, id) || id == f.agent.Name {
			f.reply(w, 200, f.agent)
			return
		}
		f.reply(w, 404, api.ErrorResponse{Error: fmt.Sprintf("no agent with ID, ID prefix or name %q", r.PathValue("id"))})
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	f.url = srv.URL
	return f
}

func (f *fakeCorral) reply(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func (f *fakeCorral) create(w http.ResponseWriter, r *http.Request) {
	var req api.CreateSessionRequest
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil || len(req.Command) == 0 {
		f.reply(w, 400, api.ErrorResponse{Error: fmt.Sprintf("bad request: %v", err)})
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.creates = append(f.creates, req)
	key := r.Header.Get(api.IdempotencyKeyHeader)
	f.keys = append(f.keys, key)
	if fs, ok := f.byKey[key]; ok && key != "" {
		w.Header().Set(api.IdempotentReplayedHeader, "true")
		f.reply(w, 201, fs.d)
		return
	}
	fail := -1
	if len(f.failCreates) > 0 {
		fail, f.failCreates = f.failCreates[0], f.failCreates[1:]
	}
	if fail > 0 {
		f.reply(w, fail, api.ErrorResponse{Error: "forwarding to the leader: EOF"})
		return
	}
	if req.Name == "taken" {
		f.reply(w, 409, api.ErrorResponse{Error: `a session named "taken" already exists`})
		return
	}
	f.index++
	now := time.Now().UTC()
	n := len(f.sessions) + 1
	id := fmt.Sprintf("%08d-1111-2222-3333-444444444444", n)
	s := &structs.Session{
		ID: id, Name: req.Name, Type: req.Type, ResourceGroup: "default", Status: structs.SessionPending,
		StatusInfo: "waiting to be scheduled", Result: structs.ResultUndefined, CreatedAt: now,
		History:     []structs.StatusChange{{Status: "PENDING", Info: "waiting to be scheduled", Time: now}},
		CreateIndex: f.index, ModifyIndex: f.index, KernelIDs: []string{fmt.Sprintf("k%07d-aaaa", n)},
	}
	k := &structs.Kernel{
		ID: fmt.Sprintf("k%07d-aaaa", n), SessionID: id, Role: "main", Idx: 1, Hostname: "main1", Driver: "exec",
		Command: req.Command, Resources: structs.Slots{structs.SlotCPU: structs.Whole(1)}, Status: structs.KernelPending,
		History: []structs.StatusChange{{Status: "PENDING", Time: now}}, CreatedAt: now,
	}
	cmd := strings.Join(req.Command, " ")
	var steps []fakeStep
	switch {
	case strings.Contains(cmd, "unplaceable"):
		steps = []fakeStep{{status: structs.SessionError, kernel: structs.KernelError, info: "no agent has driver exec", result: structs.ResultFailure}}
	default:
		steps = []fakeStep{
			{status: structs.SessionScheduled, kernel: structs.KernelScheduled, info: "placed on node-1", place: true},
			{status: structs.SessionRunning, kernel: structs.KernelRunning},
		}
		if req.Type == structs.SessionTypeBatch {
			code, result := 0, structs.ResultSuccess
			if strings.Contains(cmd, "exit 3") {
				code, result = 3, structs.ResultFailure
			}
			steps = append(steps, fakeStep{status: structs.SessionTerminated, kernel: structs.KernelTerminated,
				info: fmt.Sprintf("main1 exited with code %d", code), result: result, exit: intp(code)})
		}
	}
	fs := &fakeSession{d: &api.SessionDetail{Session: s, Kernels: []*structs.Kernel{k}}, steps: steps}
	f.sessions = append(f.sessions, fs)
	if key != "" {
		if f.byKey == nil {
			f.byKey = map[string]*fakeSession{}
		}
		f.byKey[key] = fs
	}
	if fail == 0 {
		if hj, ok := w.(http.Hijacker); ok {
			if conn, _, err := hj.Hijack(); err == nil {
				conn.Close()
				return
			}
		}
	}
	w.Header().Set(api.IndexHeader, strconv.FormatUint(s.ModifyIndex, 10))
	f.reply(w, 201, fs.d)
}

// find resolves a ref as the server does: ID, name or unique ID prefix.
func (f *fakeCorral) find(ref string) *fakeSession {
	var found []*fakeSession
	for _, s := range f.sessions {
		if s.d.Session.ID == ref || s.d.Session.Name == ref {
			return s
		}
		if strings.HasPrefix(s.d.Session.ID, ref) {
			found = append(found, s)
		}
	}
	if len(found) == 1 {
		return found[0]
	}
	return nil
}

func (f *fakeCorral) notFound(w http.ResponseWriter, ref string) {
	f.reply(w, 404, api.ErrorResponse{Error: fmt.Sprintf("no session with ID, ID prefix or name %q", ref)})
}

func (f *fakeCorral) apply(fs *fakeSession, st fakeStep) {
	f.index++
	now := time.Now().UTC()
	s, k := fs.d.Session, fs.d.Kernels[0]
	s.Status, s.StatusInfo, s.ModifyIndex = st.status, st.info, f.index
	s.History = append(s.History, structs.StatusChange{Status: string(st.status), Info: st.info, Time: now})
	if st.result != "" {
		s.Result = st.result
	}
	if st.status.Terminal() {
		s.TerminatedAt = now
	}
	k.Status, k.StatusInfo, k.ExitCode = st.kernel, st.info, st.exit
	k.History = append(k.History, structs.StatusChange{Status: string(st.kernel), Info: st.info, Time: now})
	if st.place {
		k.AgentID = f.agent.ID
	}
}

func (f *fakeCorral) get(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	ref := r.PathValue("ref")
	fs := f.find(ref)
	if fs == nil {
		f.notFound(w, ref)
		return
	}
	if v := r.URL.Query().Get("index"); v != "" {
		if _, err := time.ParseDuration(r.URL.Query().Get("wait")); err != nil {
			f.t.Errorf("blocking query without a valid wait: %s", r.URL.RawQuery)
		}
		idx, _ := strconv.ParseUint(v, 10, 64)
		if idx >= fs.d.Session.ModifyIndex {
			for i := 0; i < 2 && len(fs.steps) > 0; i++ {
				f.apply(fs, fs.steps[0])
				fs.steps = fs.steps[1:]
			}
		}
	}
	w.Header().Set(api.IndexHeader, strconv.FormatUint(fs.d.Session.ModifyIndex, 10))
	f.reply(w, 200, fs.d)
}

func (f *fakeCorral) list(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := []*structs.Session{}
	for _, s := range f.sessions {
		if st := r.URL.Query().Get("status"); st == "" || string(s.d.Session.Status) == st {
			out = append(out, s.d.Session)
		}
	}
	f.reply(w, 200, out)
}

func (f *fakeCorral) destroy(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fs := f.find(r.PathValue("ref"))
	if fs == nil {
		f.notFound(w, r.PathValue("ref"))
		return
	}
	fs.steps = nil
	f.apply(fs, fakeStep{status: structs.SessionTerminating, kernel: structs.KernelTerminating, info: "destroyed by user"})
	f.reply(w, 200, fs.d)
}

func (f *fakeCorral) logs(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fs := f.find(r.PathValue("ref"))
	if fs == nil {
		f.notFound(w, r.PathValue("ref"))
		return
	}
	if k := r.URL.Query().Get("kernel"); k != "main1" {
		f.reply(w, 404, api.ErrorResponse{Error: fmt.Sprintf("session has no kernel %q", k)})
		return
	}
	f.reply(w, 200, api.LogsResponse{SessionID: fs.d.Session.ID, Hostname: "main1", Stdout: "hello\n", Stderr: "warn\n"})
}

func (f *fakeCorral) exec(w http.ResponseWriter, r *http.Request) {
	var req api.ExecRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		f.reply(w, 400, api.ErrorResponse{Error: err.Error()})
		return
	}
	f.mu.Lock()
	f.execs = append(f.execs, req)
	fs := f.find(r.PathValue("ref"))
	var status structs.KernelStatus
	if fs != nil {
		status = fs.d.Kernels[0].Status
	}
	f.mu.Unlock()
	if fs == nil {
		f.notFound(w, r.PathValue("ref"))
		return
	}
	if status != structs.KernelRunning {
		f.reply(w, 409, api.ErrorResponse{Error: fmt.Sprintf("kernel main1 is %s: exec needs a RUNNING kernel", status)})
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	enc := json.NewEncoder(w)
	_ = enc.Encode(api.ExecFrame{Stream: "stdout", Data: []byte("from inside\n")})
	_ = enc.Encode(api.ExecFrame{Stream: "stderr", Data: []byte("e\n")})
	_ = enc.Encode(api.ExecFrame{ExitCode: intp(4)})
}

// cliResult is the outcome of one CLI run.
type cliResult struct {
	code           int
	stdout, stderr string
}

// runCLI runs the CLI in-process with CORRAL_ADDR pointing at addr.
func runCLI(t *testing.T, addr string, args ...string) cliResult {
	t.Helper()
	var out, errb bytes.Buffer
	c := &cli{stdout: &out, stderr: &errb, getenv: func(k string) string {
		if k == "CORRAL_ADDR" {
			return addr
		}
		return ""
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	code := c.run(ctx, args)
	return cliResult{code: code, stdout: out.String(), stderr: errb.String()}
}

func mustRun(t *testing.T, addr string, want int, args ...string) cliResult {
	t.Helper()
	r := runCLI(t, addr, args...)
	if r.code != want {
		t.Fatalf("corral %s: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), r.code, want, r.stdout, r.stderr)
	}
	return r
}

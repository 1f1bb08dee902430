package scheduler

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/corral-dev/corral/structs"
)

// More helpers for v2 inputs.

var t0 = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

type sessOpt func(*PendingSession)

func key(k string) sessOpt   { return func(ps *PendingSession) { ps.Session.AccessKey = k } }
func prio(p int) sessOpt     { return func(ps *PendingSession) { ps.Session.Priority = p } }
func attempts(n int) sessOpt { return func(ps *PendingSession) { ps.Session.ScheduleAttempts = n } }
func startsAt(at time.Time) sessOpt {
	return func(ps *PendingSession) { ps.Session.StartsAt = at }
}
func dependsOn(ids ...string) sessOpt {
	return func(ps *PendingSession) { ps.Session.DependsOn = ids }
}

// sess builds a one-kernel PENDING session in the default group.
func sess(id string, createIndex uint64, res structs.Slots, opts ...sessOpt) *PendingSession {
	ps := session(id, createIndex, "", kernel("main1", res))
	for _, o := range opts {
		o(ps)
	}
	return ps
}

func group(sessSel string, retries int, agentSel string, prio ...string) map[string]*structs.ResourceGroup {
	return map[string]*structs.ResourceGroup{"default": {Name: "default", SessionSelector: sessSel,
		NumRetriesToSkip: retries, AgentSelector: agentSel, ResourcePriority: prio}}
}

func usage(k string, occ structs.Slots, sessions ...string) *structs.KeyUsage {
	u := &structs.KeyUsage{AccessKey: k, Sessions: map[string]bool{}, Occupied: occ}
	for _, s := range sessions {
		u.Sessions[s] = true
	}
	return u
}

func placedIDs(p *structs.Plan) []string {
	var out []string
	for _, sp := range p.Placements {
		out = append(out, sp.SessionID)
	}
	return out
}

func TestSessionSelectorOrder(t *testing.T) {
	big := []*structs.Agent{agent("a1", cpu(1000))}
	pending := []*PendingSession{
		sess("s3", 3, cpu(1)), sess("s1", 1, cpu(1)), sess("s4", 4, cpu(1)), sess("s2", 2, cpu(1)),
		sess("s0b", 0, cpu(1)), sess("s0a", 0, cpu(1)),
	}
	tests := []struct {
		sel  string
		want []string
	}{
		{structs.SelectorFIFO, []string{"s0a", "s0b", "s1", "s2", "s3", "s4"}},
		{structs.SelectorLIFO, []string{"s4", "s3", "s2", "s1", "s0b", "s0a"}},
		{"", []string{"s0a", "s0b", "s1", "s2", "s3", "s4"}}, // default fifo
	}
	for _, tt := range tests {
		t.Run("sel="+tt.sel, func(t *testing.T) {
			in := &Input{Pending: pending, Agents: big, Groups: group(tt.sel, 0, "")}
			if got := Queue(in, ""); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Queue = %v, want %v", got, tt.want)
			}
			if got := placedIDs(Schedule(in)); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("placement order = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestPriorityBeforeSelector(t *testing.T) {
	// Room for two sessions; the high-priority ones are the newest, so
	// fifo would otherwise take s1 and s2.
	agents := []*structs.Agent{agent("a1", cpu(2))}
	pending := []*PendingSession{
		sess("s1", 1, cpu(1), key("k1")),
		sess("s2", 2, cpu(1), key("k2")),
		sess("hi1", 3, cpu(1), key("k1"), prio(5)),
		sess("hi2", 4, cpu(1), key("k2"), prio(5)),
		sess("mid", 5, cpu(1), key("k3"), prio(1)),
	}
	want := map[string][]string{
		structs.SelectorFIFO: {"hi1", "hi2", "mid", "s1", "s2"},
		structs.SelectorLIFO: {"hi2", "hi1", "mid", "s2", "s1"},
		structs.SelectorDRF:  {"hi1", "hi2", "mid", "s1", "s2"},
	}
	for sel, order := range want {
		t.Run(sel, func(t *testing.T) {
			in := &Input{Pending: pending, Agents: agents, Groups: group(sel, 0, "")}
			res := Plan(in)
			if got := res.Order["default"]; !reflect.DeepEqual(got, order) {
				t.Errorf("order = %v, want %v", got, order)
			}
			if got := placedIDs(res.Plan); !reflect.DeepEqual(got, order[:2]) {
				t.Errorf("placed %v, want %v", got, order[:2])
			}
		})
	}
}

func TestNumRetriesToSkip(t *testing.T) {
	agents := []*structs.Agent{agent("a1", cpu(4))}
	// head asks more than the group has free; small ones fit.
	build := func(headAttempts int, headOpts ...sessOpt) []*PendingSession {
		return []*PendingSession{
			sess("head", 1, cpu(8), append([]sessOpt{attempts(headAttempts)}, headOpts...)...),
			sess("small1", 2, cpu(1), attempts(4)),
			sess("small2", 3, cpu(1), prio(-1)), // lower priority: behind head too
		}
	}
	headReason := `no agent in resource group "default" has enough free cpu (kernel main1 needs cpu=8, best free cpu=4 on agent a1)`
	blocked := func(failed int) string {
		return `waiting behind session head, the head of the queue of resource group "default" ` +
			`(fifo: a head blocks the sessions behind it until it has failed 3 passes; it has failed ` + string(rune('0'+failed)) + `)`
	}
	tests := []struct {
		name     string
		sel      string
		retries  int
		pending  []*PendingSession
		placed   []string
		unplaced map[string]string
		attempts map[string]int
	}{
		{
			name: "0 never blocks", sel: structs.SelectorFIFO, retries: 0, pending: build(0),
			placed: []string{"small1", "small2"}, unplaced: map[string]string{"head": headReason},
			attempts: map[string]int{"head": 1},
		},
		{
			name: "first failure blocks", sel: structs.SelectorFIFO, retries: 3, pending: build(0),
			unplaced: map[string]string{"head": headReason, "small1": blocked(1), "small2": blocked(1)},
			attempts: map[string]int{"head": 1},
		},
		{
			name: "third failure still blocks", sel: structs.SelectorFIFO, retries: 3, pending: build(2),
			unplaced: map[string]string{"head": headReason, "small1": blocked(3), "small2": blocked(3)},
			attempts: map[string]int{"head": 3},
		},
		{
			name: "after 3 failures the head is skipped", sel: structs.SelectorFIFO, retries: 3, pending: build(3),
			placed: []string{"small1", "small2"}, unplaced: map[string]string{"head": headReason},
			attempts: map[string]int{"head": 4},
		},
		{
			// lifo takes small1 (newest) before head.
			name: "lifo never blocks", sel: structs.SelectorLIFO, retries: 3, pending: build(0),
			placed:   []string{"small1", "small2"},
			unplaced: map[string]string{"head": strings.Replace(headReason, "best free cpu=4", "best free cpu=3", 1)},
			attempts: map[string]int{"head": 1},
		},
		{
			name: "drf never blocks", sel: structs.SelectorDRF, retries: 3, pending: build(0),
			placed: []string{"small1", "small2"}, unplaced: map[string]string{"head": headReason},
			attempts: map[string]int{"head": 1},
		},
		{
			name: "a head waiting for its start time does not block", sel: structs.SelectorFIFO, retries: 3,
			pending:  build(0, startsAt(t0.Add(time.Hour))),
			placed:   []string{"small1", "small2"},
			unplaced: map[string]string{"head": "starts_at: reserved to start at 2030-01-02T04:04:05Z"},
			attempts: map[string]int{},
		},
		{
			name: "a head held by its key's limit does not block", sel: structs.SelectorFIFO, retries: 3,
			pending: build(0, key("k1")),
			placed:  []string{"small1", "small2"},
			unplaced: map[string]string{"head": "max_concurrent_sessions: access key k1 already has 1 sessions holding resources; " +
				"policy one allows 1 at once (the session starts when one of them ends)"},
			attempts: map[string]int{"head": 1},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := &Input{Pending: tt.pending, Agents: agents, Groups: group(tt.sel, tt.retries, ""), Now: t0,
				Policies: map[string]*structs.ResourcePolicy{"k1": {Name: "one", MaxConcurrentSessions: 1}},
				Usage:    map[string]*structs.KeyUsage{"k1": usage("k1", nil, "running")},
			}
			res := Plan(in)
			if got := placedIDs(res.Plan); !reflect.DeepEqual(got, tt.placed) {
				t.Errorf("placed %v, want %v", got, tt.placed)
			}
			if tt.unplaced == nil {
				tt.unplaced = map[string]string{}
			}
			for id, want := range tt.unplaced {
				if got := res.Plan.Unplaced[id]; got != want {
					t.Errorf("unplaced[%s] =\n  %s\nwant\n  %s", id, got, want)
				}
			}
			if len(res.Plan.Unplaced) != len(tt.unplaced) {
				t.Errorf("unplaced = %v", res.Plan.Unplaced)
			}
			if !reflect.DeepEqual(res.Attempts, tt.attempts) {
				t.Errorf("attempts = %v, want %v", res.Attempts, tt.attempts)
			}
		})
	}
}

func TestDRF(t *testing.T) {
	// Group capacity: cpu 100, mem 100GiB, 10 GPUs.
	agents := []*structs.Agent{
		agent("a1", slots("cpu", structs.Whole(50), "mem", gib(50), "cuda.device", structs.Whole(5))),
		agent("a2", slots("cpu", structs.Whole(50), "mem", gib(50), "cuda.device", structs.Whole(5))),
	}
	t.Run("lowest dominant share first, ties by FIFO", func(t *testing.T) {
		// Shares before the pass: A holds 4 GPUs (dominant 0.4), B 30 cpu
		// (0.3), C nothing (0).
		in := &Input{
			Agents: agents, Groups: group(structs.SelectorDRF, 0, ""),
			Usage: map[string]*structs.KeyUsage{
				"A": usage("A", slots("cuda.device", structs.Whole(4), "cpu", structs.Whole(4)), "a-old"),
				"B": usage("B", slots("cpu", structs.Whole(30), "mem", gib(10)), "b-old"),
			},
			Pending: []*PendingSession{
				sess("a1", 1, slots("cpu", structs.Whole(1), "cuda.device", structs.Whole(1)), key("A")),
				sess("a2", 2, slots("cpu", structs.Whole(1), "cuda.device", structs.Whole(1)), key("A")),
				sess("b1", 3, cpu(10), key("B")),
				sess("b2", 4, cpu(10), key("B")),
				sess("c1", 5, cpu(20), key("C")),
				sess("c2", 6, cpu(20), key("C")),
				sess("c3", 7, cpu(20), key("C")),
			},
		}
		// c1: C 0 -> 0.2; C 0.2 < B 0.3 -> c2: C 0.4; B 0.3 -> b1: B 0.4;
		// A 0.4, B 0.4, C 0.4: tie, oldest head first: a1 (A 0.5), b2 (B 0.5),
		// c3 (C 0.6), a2 (A 0.6).
		want := []string{"c1", "c2", "b1", "a1", "b2", "c3", "a2"}
		if got := Queue(in, "default"); !reflect.DeepEqual(got, want) {
			t.Errorf("drf order = %v, want %v", got, want)
		}
	})
	t.Run("a failed session does not change its key's share", func(t *testing.T) {
		in := &Input{
			Agents: agents, Groups: group(structs.SelectorDRF, 0, ""),
			Pending: []*PendingSession{
				sess("x-huge", 1, cpu(500), key("X")),
				sess("x-small", 2, cpu(10), key("X")),
				sess("y1", 3, cpu(10), key("Y")),
				sess("y2", 4, cpu(10), key("Y")),
			},
		}
		// X and Y at 0: x-huge (oldest head) fails, X stays at 0; x-small:
		// X 0.1; y1: Y 0.1; tie: y2's head (4) vs none left for X.
		res := Plan(in)
		if got, want := res.Order["default"], []string{"x-huge", "x-small", "y1", "y2"}; !reflect.DeepEqual(got, want) {
			t.Errorf("drf order = %v, want %v", got, want)
		}
		if got, want := placedIDs(res.Plan), []string{"x-small", "y1", "y2"}; !reflect.DeepEqual(got, want) {
			t.Errorf("placed %v, want %v", got, want)
		}
	})
	t.Run("dominantShare", func(t *testing.T) {
		capacity := slots("cpu", structs.Whole(100), "mem", gib(100), "cuda.device", structs.Whole(10))
		for _, tt := range []struct {
			occ, pass structs.Slots
			want      float64
		}{
			{nil, nil, 0},
			{slots("cpu", structs.Whole(25)), nil, 0.25},
			{slots("cpu", structs.Whole(25)), slots("mem", gib(50)), 0.5},
			{slots("cuda.device", structs.Whole(3), "cpu", structs.Whole(10)), slots("cuda.device", structs.Whole(1)), 0.4},
			{slots("tpu", structs.Whole(8)), nil, 0}, // a slot the group lacks never counts
		} {
			if got := dominantShare(capacity, tt.occ, tt.pass); got != tt.want {
				t.Errorf("dominantShare(%v + %v) = %v, want %v", tt.occ, tt.pass, got, tt.want)
			}
		}
	})
}

func TestAgentSelectors(t *testing.T) {
	agents := func() []*structs.Agent {
		return []*structs.Agent{
			agent("a1", cpu(8), occupied(cpu(2))), // 6 free
			agent("a2", cpu(8), occupied(cpu(6))), // 2 free
			agent("a3", cpu(8)),                   // 8 free
			agent("a4", cpu(8), occupied(cpu(5))), // 3 free
		}
	}
	pending := []*PendingSession{
		sess("s1", 1, cpu(2)),
		sess("s2", 2, cpu(2)),
		sess("s3", 3, cpu(3)),
		multiNode(session("gang", 4, "", kernel("main1", cpu(1)), kernel("sub1", cpu(1)))),
	}
	tests := []struct {
		sel    string
		cursor string
		want   map[string]string
		next   string // cursor after the pass
	}{
		// Least free that fits: s1 a2 (2), s2 a4 (3->1), s3 a1 (6->3), gang a4 (1->0), a1 (3->2).
		{structs.AgentSelectorConcentrated, "", map[string]string{"s1": "main1@a2", "s2": "main1@a4", "s3": "main1@a1", "gang": "main1@a4 sub1@a1"}, ""},
		// Most free: s1 a3 (8->6), s2 a1 (6 tie a3 6: lower ID) -> 4, s3 a3 (6->3), gang a1 (4->3) a1 (3 tie a3 3 -> a1).
		{structs.AgentSelectorDispersed, "", map[string]string{"s1": "main1@a3", "s2": "main1@a1", "s3": "main1@a3", "gang": "main1@a1 sub1@a1"}, ""},
		// After the cursor, by ID: s1 a1, s2 a2, s3 a3, gang a4 then wraps to a1.
		{structs.AgentSelectorRoundRobin, "", map[string]string{"s1": "main1@a1", "s2": "main1@a2", "s3": "main1@a3", "gang": "main1@a4 sub1@a1"}, "a1"},
		// From cursor a3: s1 a4 (3->1), s2 wraps to a1, s3 a3 (skips a2: 2 free), gang a4, a1.
		{structs.AgentSelectorRoundRobin, "a3", map[string]string{"s1": "main1@a4", "s2": "main1@a1", "s3": "main1@a3", "gang": "main1@a4 sub1@a1"}, "a1"},
		// A cursor on an agent that is gone still orders by ID.
		{structs.AgentSelectorRoundRobin, "a25", map[string]string{"s1": "main1@a3", "s2": "main1@a4", "s3": "main1@a1", "gang": "main1@a2 sub1@a3"}, "a3"},
	}
	for _, tt := range tests {
		t.Run(tt.sel+"/"+tt.cursor, func(t *testing.T) {
			in := &Input{Pending: pending, Agents: agents(), Groups: group("", 0, tt.sel),
				RoundRobin: map[string]string{"default": tt.cursor, "other": "x9"}}
			res := Plan(in)
			if got := placedMap(res.Plan); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("placements = %v, want %v", got, tt.want)
			}
			wantRR := map[string]string{"default": tt.cursor, "other": "x9"}
			if tt.next != "" {
				wantRR["default"] = tt.next
			}
			if !reflect.DeepEqual(res.RoundRobin, wantRR) {
				t.Errorf("RoundRobin = %v, want %v", res.RoundRobin, wantRR)
			}
			checkPlan(t, in, res.Plan)
		})
	}
	t.Run("roundrobin cursor stays when a gang fails", func(t *testing.T) {
		in := &Input{
			Agents: []*structs.Agent{agent("a1", cpu(4)), agent("a2", cpu(1))},
			Pending: []*PendingSession{
				multiNode(session("gang", 1, "", kernel("main1", cpu(2)), kernel("sub1", cpu(3)))),
			},
			Groups: group("", 0, structs.AgentSelectorRoundRobin), RoundRobin: map[string]string{"default": "a2"},
		}
		res := Plan(in)
		if len(res.Plan.Placements) != 0 || res.RoundRobin["default"] != "a2" {
			t.Errorf("placements %v, cursor %q; want none and a2", placedMap(res.Plan), res.RoundRobin["default"])
		}
	})
}

func TestResourcePriority(t *testing.T) {
	// g1 has more free GPUs, c1 more free cpu.
	agents := []*structs.Agent{
		agent("c1", slots("cpu", structs.Whole(32), "cuda.device", structs.Whole(2))),
		agent("g1", slots("cpu", structs.Whole(8), "cuda.device", structs.Whole(8))),
		agent("plain", slots("cpu", structs.Whole(16))),
	}
	gpuKernel := slots("cpu", structs.Whole(1), "cuda.device", structs.Whole(1))
	tests := []struct {
		name     string
		agentSel string
		prio     []string
		res      structs.Slots
		want     string
	}{
		{"dispersed GPU first (default)", structs.AgentSelectorDispersed, nil, gpuKernel, "g1"},
		{"dispersed cpu first", structs.AgentSelectorDispersed, []string{"cpu", "cuda.device"}, gpuKernel, "c1"},
		{"concentrated GPU first (default)", structs.AgentSelectorConcentrated, nil, gpuKernel, "c1"},
		{"concentrated cpu first", structs.AgentSelectorConcentrated, []string{"cpu"}, gpuKernel, "g1"},
		// A CPU-only kernel avoids agents with free GPUs (unutilized slots)
		// even when dispersing: plain has no GPU.
		{"dispersed cpu kernel avoids GPU agents", structs.AgentSelectorDispersed, nil, cpu(1), "plain"},
		{"concentrated cpu kernel avoids GPU agents", structs.AgentSelectorConcentrated, []string{"cpu"}, cpu(1), "plain"},
		// Too big for plain: the GPU agents are the only ones left.
		{"cpu kernel on a GPU agent when it must", structs.AgentSelectorConcentrated, nil, cpu(30), "c1"},
		{"too big for all", structs.AgentSelectorDispersed, nil, cpu(33), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := &Input{Pending: []*PendingSession{sess("s", 1, tt.res)}, Agents: agents, Groups: group("", 0, tt.agentSel, tt.prio...)}
			got := strings.TrimPrefix(placedMap(Schedule(in))["s"], "main1@")
			if got != tt.want {
				t.Errorf("placed on %q, want %q", got, tt.want)
			}
		})
	}
}

func TestPredicates(t *testing.T) {
	pol := &structs.ResourcePolicy{Name: "basic", MaxConcurrentSessions: 2, MaxKernelsPerSession: 2,
		TotalResourceSlots: slots("cpu", structs.Whole(8), "cuda.device", structs.Whole(2))}
	lookup := func(id string) *structs.Session {
		m := map[string]*structs.Session{
			"ok":      {ID: "ok", Status: structs.SessionTerminated, Result: structs.ResultSuccess},
			"failed":  {ID: "failed", Status: structs.SessionTerminated, Result: structs.ResultFailure},
			"undef":   {ID: "undef", Status: structs.SessionTerminated},
			"errored": {ID: "errored", Status: structs.SessionError, Result: structs.ResultFailure},
			"gone":    {ID: "gone", Status: structs.SessionCancelled, Result: structs.ResultUndefined},
			"running": {ID: "running", Status: structs.SessionRunning, Result: structs.ResultUndefined},
			"queued":  {ID: "queued", Status: structs.SessionPending},
		}
		return m[id]
	}
	base := func() *SessionCheck {
		return &SessionCheck{
			Session: &structs.Session{ID: "s", AccessKey: "ak"},
			Kernels: []*structs.Kernel{kernel("main1", cpu(2))},
			Request: cpu(2), Now: t0, Lookup: lookup,
		}
	}
	tests := []struct {
		name string
		pred Predicate
		mod  func(c *SessionCheck)
		want Verdict
	}{
		{"deps: none", CheckDependencies, func(c *SessionCheck) {}, Verdict{}},
		{"deps: all succeeded", CheckDependencies, func(c *SessionCheck) { c.Session.DependsOn = []string{"ok", "ok"} }, Verdict{}},
		{"deps: running", CheckDependencies, func(c *SessionCheck) { c.Session.DependsOn = []string{"ok", "running", "queued"} },
			Verdict{Reason: "waiting for dependency running (RUNNING)", Wait: true}},
		{"deps: pending", CheckDependencies, func(c *SessionCheck) { c.Session.DependsOn = []string{"queued"} },
			Verdict{Reason: "waiting for dependency queued (PENDING)", Wait: true}},
		{"deps: failure", CheckDependencies, func(c *SessionCheck) { c.Session.DependsOn = []string{"failed"} },
			Verdict{Reason: "dependency failed ended TERMINATED/FAILURE", Cancel: true}},
		{"deps: failure beats waiting", CheckDependencies, func(c *SessionCheck) { c.Session.DependsOn = []string{"running", "errored"} },
			Verdict{Reason: "dependency errored ended ERROR/FAILURE", Cancel: true}},
		{"deps: cancelled", CheckDependencies, func(c *SessionCheck) { c.Session.DependsOn = []string{"gone"} },
			Verdict{Reason: "dependency gone ended CANCELLED/UNDEFINED", Cancel: true}},
		{"deps: terminated without result", CheckDependencies, func(c *SessionCheck) { c.Session.DependsOn = []string{"undef"} },
			Verdict{Reason: "dependency undef ended TERMINATED/UNDEFINED", Cancel: true}},
		{"deps: unknown", CheckDependencies, func(c *SessionCheck) { c.Session.DependsOn = []string{"nope"} },
			Verdict{Reason: "dependency nope not found", Cancel: true}},
		{"deps: itself", CheckDependencies, func(c *SessionCheck) { c.Session.DependsOn = []string{"s"} },
			Verdict{Reason: "session depends on itself", Cancel: true}},
		{"deps: no lookup", CheckDependencies, func(c *SessionCheck) { c.Session.DependsOn = []string{"ok"}; c.Lookup = nil },
			Verdict{Reason: "dependency ok not found", Cancel: true}},

		{"starts_at: none", CheckStartsAt, func(c *SessionCheck) {}, Verdict{}},
		{"starts_at: passed", CheckStartsAt, func(c *SessionCheck) { c.Session.StartsAt = t0.Add(-time.Second) }, Verdict{}},
		{"starts_at: now", CheckStartsAt, func(c *SessionCheck) { c.Session.StartsAt = t0 }, Verdict{}},
		{"starts_at: later", CheckStartsAt, func(c *SessionCheck) { c.Session.StartsAt = t0.Add(90 * time.Minute) },
			Verdict{Reason: "starts_at: reserved to start at 2030-01-02T04:34:05Z", Wait: true}},
		{"starts_at: other zone", CheckStartsAt, func(c *SessionCheck) {
			c.Session.StartsAt = t0.Add(time.Hour).In(time.FixedZone("X", 3600))
		}, Verdict{Reason: "starts_at: reserved to start at 2030-01-02T04:04:05Z", Wait: true}},
		{"starts_at: no clock", CheckStartsAt, func(c *SessionCheck) { c.Session.StartsAt = t0; c.Now = time.Time{} },
			Verdict{Reason: "starts_at: reserved to start at 2030-01-02T03:04:05Z", Wait: true}},

		{"max kernels: unlimited", CheckMaxKernels, func(c *SessionCheck) {
			c.Kernels = make([]*structs.Kernel, 9)
		}, Verdict{}},
		{"max kernels: at limit", CheckMaxKernels, func(c *SessionCheck) {
			c.Policy = pol
			c.Kernels = make([]*structs.Kernel, 2)
		}, Verdict{}},
		{"max kernels: over", CheckMaxKernels, func(c *SessionCheck) {
			c.Policy = pol
			c.Kernels = make([]*structs.Kernel, 3)
		}, Verdict{Reason: "max_kernels_per_session: the session has 3 kernels; policy basic allows 2 (recreate it with fewer kernels, or ask an admin to raise the limit)"}},

		{"concurrency: unlimited", CheckConcurrency, func(c *SessionCheck) { c.Usage = usage("ak", nil, "x", "y", "z") }, Verdict{}},
		{"concurrency: room", CheckConcurrency, func(c *SessionCheck) { c.Policy = pol; c.Usage = usage("ak", nil, "x") }, Verdict{}},
		{"concurrency: full", CheckConcurrency, func(c *SessionCheck) { c.Policy = pol; c.Usage = usage("ak", nil, "x", "y") },
			Verdict{Reason: "max_concurrent_sessions: access key ak already has 2 sessions holding resources; policy basic allows 2 at once (the session starts when one of them ends)"}},
		{"concurrency: full with the pass", CheckConcurrency, func(c *SessionCheck) {
			c.Policy = pol
			c.Usage = usage("ak", nil, "x")
			c.PassSessions = 1
		}, Verdict{Reason: "max_concurrent_sessions: access key ak already has 2 sessions holding resources; policy basic allows 2 at once (the session starts when one of them ends)"}},
		{"concurrency: already in the set", CheckConcurrency, func(c *SessionCheck) { c.Policy = pol; c.Usage = usage("ak", nil, "x", "s") }, Verdict{}},
		{"concurrency: no usage", CheckConcurrency, func(c *SessionCheck) { c.Policy = pol; c.PassSessions = 1 }, Verdict{}},

		{"slots: unlimited", CheckResourceSlots, func(c *SessionCheck) { c.Request = cpu(1000) }, Verdict{}},
		{"slots: exactly at the limit", CheckResourceSlots, func(c *SessionCheck) {
			c.Policy = pol
			c.Usage = usage("ak", cpu(4))
			c.PassOccupied = cpu(2)
		}, Verdict{}},
		{"slots: over with the pass", CheckResourceSlots, func(c *SessionCheck) {
			c.Policy = pol
			c.Usage = usage("ak", cpu(4))
			c.PassOccupied = cpu(3)
		}, Verdict{Reason: "total_resource_slots: access key ak would hold more cpu than policy basic allows " +
			"(holds cpu=7, the session needs cpu=2, limit cpu=8; the session starts when the key's other sessions free enough)"}},
		{"slots: a slot the policy does not name", CheckResourceSlots, func(c *SessionCheck) {
			c.Policy = pol
			c.Request = slots("mem", gib(1000))
		}, Verdict{}},
		{"slots: alone over the limit", CheckResourceSlots, func(c *SessionCheck) {
			c.Policy = pol
			c.Request = slots("cpu", structs.Whole(1), "cuda.device", structs.Whole(3))
		}, Verdict{Reason: "total_resource_slots: access key ak would hold more cuda.device than policy basic allows " +
			"(holds cuda.device=0, the session needs cuda.device=3, limit cuda.device=2; the session alone asks for more than the limit: recreate it smaller, or ask an admin to raise the limit)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := base()
			tt.mod(c)
			if got := tt.pred(c); got != tt.want {
				t.Errorf("verdict\n  %+v\nwant\n  %+v", got, tt.want)
			}
		})
	}
}

func TestKeyLimitsInAPass(t *testing.T) {
	agents := []*structs.Agent{agent("a1", cpu(100))}
	in := &Input{
		Agents: agents,
		Policies: map[string]*structs.ResourcePolicy{
			"k1": {Name: "two", MaxConcurrentSessions: 2},
			"k2": {Name: "cpu5", TotalResourceSlots: cpu(5)},
			"k3": {Name: "one-kernel", MaxKernelsPerSession: 1},
		},
		Usage: map[string]*structs.KeyUsage{
			"k1": usage("k1", cpu(1), "k1-running", "k1-requeued"), // a re-queued session is in the set already
			"k2": usage("k2", cpu(1), "k2-running"),
		},
		Pending: []*PendingSession{
			sess("k1-requeued", 1, cpu(1), key("k1")),
			sess("k1-new", 2, cpu(1), key("k1")),
			sess("k2-a", 3, cpu(2), key("k2")),
			sess("k2-b", 4, cpu(2), key("k2")),
			sess("k2-c", 5, cpu(1), key("k2")),
			session("k3-gang", 6, "", kernel("main1", cpu(1)), kernel("sub1", cpu(1))),
			sess("free", 7, cpu(50), key("nobody")),
		},
	}
	in.Pending[5].Session.AccessKey = "k3"
	res := Plan(in)
	want := []string{"k1-requeued", "k2-a", "k2-b", "free"}
	if got := placedIDs(res.Plan); !reflect.DeepEqual(got, want) {
		t.Errorf("placed %v, want %v", got, want)
	}
	wantUnplaced := map[string]string{
		"k1-new": "max_concurrent_sessions: access key k1 already has 2 sessions holding resources; policy two allows 2 at once (the session starts when one of them ends)",
		"k2-c": "total_resource_slots: access key k2 would hold more cpu than policy cpu5 allows " +
			"(holds cpu=5, the session needs cpu=1, limit cpu=5; the session starts when the key's other sessions free enough)",
		"k3-gang": "max_kernels_per_session: the session has 2 kernels; policy one-kernel allows 1 (recreate it with fewer kernels, or ask an admin to raise the limit)",
	}
	if !reflect.DeepEqual(res.Plan.Unplaced, wantUnplaced) {
		t.Errorf("unplaced = %v\nwant %v", res.Plan.Unplaced, wantUnplaced)
	}
	if want := map[string]int{"k1-new": 1, "k2-c": 1, "k3-gang": 1}; !reflect.DeepEqual(res.Attempts, want) {
		t.Errorf("attempts = %v, want %v", res.Attempts, want)
	}
}

func TestDependenciesAndStartsAt(t *testing.T) {
	agents := []*structs.Agent{agent("a1", cpu(100))}
	done := map[string]*structs.Session{
		"ok":      {ID: "ok", Status: structs.SessionTerminated, Result: structs.ResultSuccess},
		"failed":  {ID: "failed", Status: structs.SessionTerminated, Result: structs.ResultFailure},
		"errored": {ID: "errored", Status: structs.SessionError},
	}
	in := &Input{
		Agents: agents, Now: t0, Sessions: done,
		LookupSession: func(id string) *structs.Session {
			if id == "running" {
				return &structs.Session{ID: id, Status: structs.SessionRunning}
			}
			return nil
		},
		Pending: []*PendingSession{
			sess("after-ok", 1, cpu(1), dependsOn("ok")),
			sess("after-failed", 2, cpu(1), dependsOn("ok", "failed")),
			sess("after-errored", 3, cpu(1), dependsOn("errored")),
			sess("after-running", 4, cpu(1), dependsOn("running")),
			sess("after-pending", 5, cpu(1), dependsOn("after-running")), // a pending one of the same pass
			sess("after-unknown", 6, cpu(1), dependsOn("nope")),
			sess("later", 7, cpu(1), startsAt(t0.Add(time.Minute))),
			sess("due", 8, cpu(1), startsAt(t0)),
			sess("later-after-failed", 9, cpu(1), startsAt(t0.Add(time.Hour)), dependsOn("failed")),
		},
	}
	res := Plan(in)
	if got, want := placedIDs(res.Plan), []string{"after-ok", "due"}; !reflect.DeepEqual(got, want) {
		t.Errorf("placed %v, want %v", got, want)
	}
	wantCancel := map[string]string{
		"after-failed":       "dependency failed ended TERMINATED/FAILURE",
		"after-errored":      "dependency errored ended ERROR/UNDEFINED",
		"after-unknown":      "dependency nope not found",
		"later-after-failed": "dependency failed ended TERMINATED/FAILURE",
	}
	if !reflect.DeepEqual(res.Cancel, wantCancel) {
		t.Errorf("cancel = %v\nwant %v", res.Cancel, wantCancel)
	}
	wantUnplaced := map[string]string{
		"after-running": "waiting for dependency running (RUNNING)",
		"after-pending": "waiting for dependency after-running (PENDING)",
		"later":         "starts_at: reserved to start at 2030-01-02T03:05:05Z",
	}
	if !reflect.DeepEqual(res.Plan.Unplaced, wantUnplaced) {
		t.Errorf("unplaced = %v\nwant %v", res.Plan.Unplaced, wantUnplaced)
	}
	if len(res.Attempts) != 0 {
		t.Errorf("waiting and cancelled sessions counted attempts: %v", res.Attempts)
	}
	// Once the clock passes, the reservation starts.
	in.Now = t0.Add(time.Minute)
	if got := placedMap(Schedule(in)); got["later"] == "" {
		t.Errorf("later not placed at its start time: %v", got)
	}
}

func TestCheckKeyLimits(t *testing.T) {
	pol := &structs.ResourcePolicy{Name: "p", MaxConcurrentSessions: 1, TotalResourceSlots: cpu(4)}
	tests := []struct {
		name   string
		policy *structs.ResourcePolicy
		usage  *structs.KeyUsage
		id     string
		req    structs.Slots
		kind   error
		msg    string
	}{
		{name: "unlimited", policy: nil, usage: usage("k", cpu(100), "a", "b"), id: "s", req: cpu(100)},
		{name: "fits", policy: pol, usage: usage("k", nil), id: "s", req: cpu(4)},
		{name: "nil usage", policy: pol, usage: nil, id: "s", req: cpu(4)},
		{name: "same session again", policy: pol, usage: usage("k", cpu(2), "s"), id: "s", req: cpu(2)},
		{name: "concurrency", policy: pol, usage: usage("k", cpu(1), "other"), id: "s", req: cpu(1), kind: ErrConcurrencyLimit,
			msg: "max_concurrent_sessions: access key k already has 1 sessions holding resources; policy p allows 1 at once (the session starts when one of them ends)"},
		{name: "slots", policy: pol, usage: usage("k", cpu(3), "s"), id: "s", req: cpu(2), kind: ErrSlotLimit,
			msg: "total_resource_slots: access key k would hold more cpu than policy p allows (holds cpu=3, the session needs cpu=2, limit cpu=4; the session starts when the key's other sessions free enough)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckKeyLimits(tt.policy, tt.usage, tt.id, tt.req)
			if tt.kind == nil {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if !errors.Is(err, tt.kind) || err.Error() != tt.msg {
				t.Errorf("got %v, want %v: %s", err, tt.kind, tt.msg)
			}
		})
	}
}

func TestCheckPendingLimit(t *testing.T) {
	pol := &structs.ResourcePolicy{Name: "p", MaxPendingSessions: 2}
	if err := CheckPendingLimit(nil, 100); err != nil {
		t.Errorf("nil policy: %v", err)
	}
	if err := CheckPendingLimit(&structs.ResourcePolicy{}, 100); err != nil {
		t.Errorf("unlimited: %v", err)
	}
	if err := CheckPendingLimit(pol, 1); err != nil {
		t.Errorf("1 of 2: %v", err)
	}
	err := CheckPendingLimit(pol, 2)
	if !errors.Is(err, ErrPendingLimit) || err.Error() != "max_pending_sessions: the access key already has 2 pending sessions; policy p allows 2 (wait for some to start, or cancel some)" {
		t.Errorf("2 of 2: %v", err)
	}
}

func TestGroupConfig(t *testing.T) {
	agents := []*structs.Agent{agent("a1", cpu(4))}
	pending := []*PendingSession{sess("s1", 1, cpu(1))}
	for _, tt := range []struct {
		rg   *structs.ResourceGroup
		want string
	}{
		{&structs.ResourceGroup{SessionSelector: "random"}, `resource group "default" has an unknown session selector "random" (an admin must set fifo, lifo or drf)`},
		{&structs.ResourceGroup{AgentSelector: "best"}, `resource group "default" has an unknown agent selector "best" (an admin must set concentrated, dispersed or roundrobin)`},
	} {
		res := Plan(&Input{Pending: pending, Agents: agents, Groups: map[string]*structs.ResourceGroup{"default": tt.rg}})
		if got := res.Plan.Unplaced["s1"]; got != tt.want || len(res.Attempts) != 0 {
			t.Errorf("reason %q, attempts %v; want %q", got, res.Attempts, tt.want)
		}
	}
	c := resolveGroup("x", nil)
	if c.sessionSelector != structs.SelectorFIFO || c.agentSelector != structs.AgentSelectorDispersed || c.numRetriesToSkip != 0 ||
		!reflect.DeepEqual(c.priority, structs.DefaultResourcePriority) || c.invalid != "" {
		t.Errorf("defaults: %+v", c)
	}
	if c := resolveGroup("x", &structs.ResourceGroup{NumRetriesToSkip: -3}); c.numRetriesToSkip != 0 {
		t.Errorf("negative retries: %+v", c)
	}
}

func TestGangWithSelectors(t *testing.T) {
	for _, sel := range []string{structs.AgentSelectorConcentrated, structs.AgentSelectorDispersed, structs.AgentSelectorRoundRobin} {
		t.Run(sel, func(t *testing.T) {
			in := &Input{
				Agents: []*structs.Agent{agent("a1", cpu(4)), agent("a2", cpu(2))},
				Pending: []*PendingSession{
					multiNode(session("s1", 1, "", kernel("main1", cpu(3)), kernel("sub1", cpu(3)))),
					multiNode(session("s2", 2, "", kernel("main1", cpu(2)), kernel("sub1", cpu(2)), kernel("sub2", cpu(2)))),
				},
				Groups: group("", 0, sel),
			}
			res := Plan(in)
			want := map[string]map[string]string{
				structs.AgentSelectorConcentrated: {"s2": "main1@a2 sub1@a1 sub2@a1"},
				structs.AgentSelectorDispersed:    {"s2": "main1@a1 sub1@a1 sub2@a2"},
				structs.AgentSelectorRoundRobin:   {"s2": "main1@a1 sub1@a2 sub2@a1"},
			}[sel]
			if got := placedMap(res.Plan); !reflect.DeepEqual(got, want) {
				t.Errorf("placements = %v, want %v", got, want)
			}
			if _, ok := res.Plan.Unplaced["s1"]; !ok {
				t.Errorf("s1 placed without room for both kernels")
			}
			checkPlan(t, in, res.Plan)
		})
	}
}

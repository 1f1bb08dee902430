package scheduler

import (
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/corral-dev/corral/structs"
)

// sim is a cluster state that the scheduler's results are applied to the
// way the FSM applies them, to check what holds after every pass.
type sim struct {
	t        *testing.T
	r        *rand.Rand
	now      time.Time
	agents   map[string]*structs.Agent
	sessions map[string]*structs.Session
	kernels  map[string][]*structs.Kernel // by session
	policies map[string]*structs.ResourcePolicy
	usage    map[string]*structs.KeyUsage
	groups   map[string]*structs.ResourceGroup
	rr       map[string]string
	next     int
	keys     []string
	placedAt map[string]time.Time // session -> when it was placed
	// together counts the placed single-node sessions of several kernels.
	together int
}

func newSim(t *testing.T, seed uint64) *sim {
	r := rand.New(rand.NewPCG(seed, 77))
	s := &sim{
		t: t, r: r, now: t0,
		agents: map[string]*structs.Agent{}, sessions: map[string]*structs.Session{}, kernels: map[string][]*structs.Kernel{},
		policies: map[string]*structs.ResourcePolicy{}, usage: map[string]*structs.KeyUsage{},
		groups: map[string]*structs.ResourceGroup{}, rr: map[string]string{}, placedAt: map[string]time.Time{},
	}
	sessSels := []string{structs.SelectorFIFO, structs.SelectorLIFO, structs.SelectorDRF}
	agentSels := []string{structs.AgentSelectorConcentrated, structs.AgentSelectorDispersed, structs.AgentSelectorRoundRobin}
	for _, g := range []string{"default", "gpu"} {
		s.groups[g] = &structs.ResourceGroup{Name: g, SessionSelector: sessSels[r.IntN(3)], AgentSelector: agentSels[r.IntN(3)],
			NumRetriesToSkip: r.IntN(3)}
		if r.IntN(2) == 0 {
			s.groups[g].ResourcePriority = []string{"cpu", "mem"}
		}
	}
	for i := range 5 + r.IntN(25) {
		a := agent(fmt.Sprintf("ag%03d", i), slots("cpu", structs.Whole(int64(4+r.IntN(12))), "mem", gib(int64(8+r.IntN(24)))))
		if r.IntN(3) == 0 {
			a.Capacity["cuda.device"] = structs.Whole(int64(1 + r.IntN(4)))
		}
		if r.IntN(4) == 0 {
			a.ResourceGroup = "gpu"
		}
		if r.IntN(10) == 0 {
			a.Status = structs.AgentLost
		}
		if r.IntN(2) == 0 {
			a.Drivers = []string{"exec", "runc"}
		}
		s.agents[a.ID] = a
	}
	for i := range 6 {
		k := fmt.Sprintf("key%d", i)
		s.keys = append(s.keys, k)
		s.usage[k] = usage(k, structs.Slots{})
		if i%3 != 2 {
			s.policies[k] = &structs.ResourcePolicy{Name: "p" + k, MaxConcurrentSessions: 1 + r.IntN(6),
				MaxKernelsPerSession: 2 + r.IntN(2),
				TotalResourceSlots:   slots("cpu", structs.Whole(int64(6+r.IntN(30))), "cuda.device", structs.Whole(int64(1+r.IntN(3))))}
		}
	}
	return s
}

func (s *sim) addSessions(n int) {
	for range n {
		s.next++
		id := fmt.Sprintf("s%04d", s.next)
		var ks []*structs.Kernel
		for j := range 1 + s.r.IntN(3) {
			host := "main1"
			if j > 0 {
				host = fmt.Sprintf("sub%d", j)
			}
			res := slots("cpu", structs.Quantity(500*(1+s.r.IntN(8))), "mem", gib(int64(1+s.r.IntN(6))))
			if s.r.IntN(5) == 0 {
				res["cuda.device"] = structs.Whole(1)
			}
			k := kernel(host, res)
			if s.r.IntN(4) == 0 {
				k.Driver = "runc"
			}
			ks = append(ks, k)
		}
		group := ""
		if s.r.IntN(4) == 0 {
			group = "gpu"
		}
		ps := session(id, uint64(s.next), group, ks...)
		// The default (single-node), single-node said outright, or multi-node.
		ps.Session.ClusterMode = []string{"", structs.ClusterModeSingleNode, structs.ClusterModeMultiNode}[s.r.IntN(3)]
		ps.Session.AccessKey = s.keys[s.r.IntN(len(s.keys))]
		ps.Session.Priority = s.r.IntN(3) - 1
		if s.r.IntN(6) == 0 {
			ps.Session.StartsAt = s.now.Add(time.Duration(s.r.IntN(5)) * time.Minute)
		}
		if s.r.IntN(5) == 0 && s.next > 1 {
			ps.Session.DependsOn = []string{fmt.Sprintf("s%04d", 1+s.r.IntN(s.next-1))}
			if s.r.IntN(20) == 0 {
				ps.Session.DependsOn = append(ps.Session.DependsOn, "nonexistent")
			}
		}
		s.sessions[id] = ps.Session
		s.kernels[id] = ps.Kernels
	}
}

func (s *sim) input() *Input {
	in := &Input{Now: s.now, Groups: s.groups, Policies: s.policies, Usage: s.usage, Sessions: s.sessions, RoundRobin: s.rr}
	for _, id := range slices.Sorted(maps.Keys(s.agents)) {
		in.Agents = append(in.Agents, s.agents[id])
	}
	for _, id := range slices.Sorted(maps.Keys(s.sessions)) {
		if sess := s.sessions[id]; sess.Status == structs.SessionPending {
			in.Pending = append(in.Pending, &PendingSession{Session: sess, Kernels: s.kernels[id]})
		}
	}
	return in
}

// apply applies a result as the FSM would, re-checking every placement
// against the latest state first; it replaces the state's objects rather
// than modifying them, as the state store does.
func (s *sim) apply(in *Input, res *Result) {
	t := s.t
	for _, sp := range res.Plan.Placements {
		sess := s.sessions[sp.SessionID]
		if sess == nil || sess.Status != structs.SessionPending {
			t.Fatalf("plan places %s, which is not pending", sp.SessionID)
		}
		for _, d := range sess.DependsOn {
			if dep := s.sessions[d]; dep == nil || dep.Status != structs.SessionTerminated || dep.Result != structs.ResultSuccess {
				t.Fatalf("session %s placed before its dependency %s succeeded", sess.ID, d)
			}
		}
		ks := s.kernels[sess.ID]
		if len(sp.Placements) != len(ks) {
			t.Fatalf("session %s: %d placements for %d kernels", sess.ID, len(sp.Placements), len(ks))
		}
		if sess.SingleNode() && len(ks) > 1 {
			for _, p := range sp.Placements {
				if p.AgentID != sp.Placements[0].AgentID {
					t.Fatalf("single-node session %s: kernels on %s and %s", sess.ID, sp.Placements[0].AgentID, p.AgentID)
				}
			}
			s.together++
		}
		var req structs.Slots = structs.Slots{}
		for _, k := range ks {
			req = req.Add(k.Resources)
		}
		if err := CheckKeyLimits(s.policies[sess.AccessKey], s.usage[sess.AccessKey], sess.ID, req); err != nil {
			t.Fatalf("session %s: the FSM would refuse the key's limits: %v", sess.ID, err)
		}
		byID := map[string]*structs.Kernel{}
		for _, k := range ks {
			byID[k.ID] = k
		}
		var newKernels []*structs.Kernel
		for _, p := range sp.Placements {
			k := byID[p.KernelID]
			if k == nil {
				t.Fatalf("session %s: placement of unknown or repeated kernel %s", sess.ID, p.KernelID)
			}
			delete(byID, p.KernelID)
			a := s.agents[p.AgentID].Copy()
			if err := CheckPlacementInGroup(a, sess.ResourceGroup, a.Occupied, k); err != nil {
				t.Fatalf("session %s: the FSM would refuse: %v", sess.ID, err)
			}
			a.Occupied = a.Occupied.Add(k.Resources)
			s.agents[a.ID] = a
			c := k.Copy()
			c.AgentID, c.Status = a.ID, structs.KernelRunning
			newKernels = append(newKernels, c)
		}
		s.kernels[sess.ID] = newKernels
		u := s.usage[sess.AccessKey]
		nu := usage(sess.AccessKey, u.Occupied.Add(req), slices.Collect(maps.Keys(u.Sessions))...)
		nu.Sessions[sess.ID] = true
		s.usage[sess.AccessKey] = nu
		c := sess.Copy()
		c.Status = structs.SessionRunning
		s.sessions[sess.ID] = c
		s.placedAt[sess.ID] = s.now
	}
	for id, why := range res.Cancel {
		sess := s.sessions[id]
		if sess.Status != structs.SessionPending {
			t.Fatalf("cancel of %s, which is %s", id, sess.Status)
		}
		ok := false
		for _, d := range sess.DependsOn {
			dep := s.sessions[d]
			if dep == nil || (dep.Status.Terminal() && !(dep.Status == structs.SessionTerminated && dep.Result == structs.ResultSuccess)) {
				ok = true
			}
		}
		if !ok {
			t.Fatalf("session %s cancelled (%s) though no dependency failed", id, why)
		}
		c := sess.Copy()
		c.Status, c.StatusInfo = structs.SessionCancelled, why
		s.sessions[id] = c
	}
	for id, n := range res.Attempts {
		c := s.sessions[id].Copy()
		if n != c.ScheduleAttempts+1 {
			t.Fatalf("session %s: attempts %d after %d", id, n, c.ScheduleAttempts)
		}
		c.ScheduleAttempts = n
		s.sessions[id] = c
	}
	s.rr = res.RoundRobin
}

// finish ends some running sessions, with a random result, freeing what
// they hold.
func (s *sim) finish(p float64) {
	for _, id := range slices.Sorted(maps.Keys(s.sessions)) {
		sess := s.sessions[id]
		if sess.Status != structs.SessionRunning || s.r.Float64() >= p {
			continue
		}
		var req structs.Slots = structs.Slots{}
		for _, k := range s.kernels[id] {
			a := s.agents[k.AgentID].Copy()
			a.Occupied = a.Occupied.Sub(k.Resources)
			s.agents[a.ID] = a
			req = req.Add(k.Resources)
		}
		u := s.usage[sess.AccessKey]
		nu := usage(sess.AccessKey, u.Occupied.Sub(req), slices.Collect(maps.Keys(u.Sessions))...)
		delete(nu.Sessions, id)
		s.usage[sess.AccessKey] = nu
		c := sess.Copy()
		c.Status, c.Result = structs.SessionTerminated, structs.ResultSuccess
		if s.r.IntN(4) == 0 {
			c.Status, c.Result = structs.SessionError, structs.ResultFailure
		}
		s.sessions[id] = c
	}
}

// check asserts the invariants of the state.
func (s *sim) check(pass int) {
	t := s.t
	occ := map[string]structs.Slots{}
	keyOcc := map[string]structs.Slots{}
	keySessions := map[string]map[string]bool{}
	seenKernel := map[string]string{}
	for id, sess := range s.sessions {
		if sess.Status != structs.SessionRunning {
			continue
		}
		if !sess.StartsAt.IsZero() && s.placedAt[id].Before(sess.StartsAt) {
			t.Fatalf("pass %d: session %s placed at %v before its start %v", pass, id, s.placedAt[id], sess.StartsAt)
		}
		for _, k := range s.kernels[id] {
			if other, dup := seenKernel[k.ID]; dup {
				t.Fatalf("pass %d: kernel %s placed twice (%s, %s)", pass, k.ID, other, k.AgentID)
			}
			seenKernel[k.ID] = k.AgentID
			occ[k.AgentID] = occ[k.AgentID].Add(k.Resources)
			keyOcc[sess.AccessKey] = keyOcc[sess.AccessKey].Add(k.Resources)
		}
		if keySessions[sess.AccessKey] == nil {
			keySessions[sess.AccessKey] = map[string]bool{}
		}
		keySessions[sess.AccessKey][id] = true
	}
	for id, a := range s.agents {
		if !a.Occupied.Equal(occ[id]) {
			t.Fatalf("pass %d: agent %s occupied %v, its kernels hold %v", pass, id, a.Occupied, occ[id])
		}
		if a.Capacity.Sub(a.Occupied).AnyNegative() {
			t.Fatalf("pass %d: agent %s above capacity: %v of %v", pass, id, a.Occupied, a.Capacity)
		}
	}
	for k, u := range s.usage {
		if !u.Occupied.Equal(keyOcc[k]) || !reflect.DeepEqual(u.Sessions, keySessions[k]) && len(u.Sessions)+len(keySessions[k]) > 0 {
			t.Fatalf("pass %d: key %s usage %v %v, its sessions hold %v %v", pass, k, u.Occupied, u.Sessions, keyOcc[k], keySessions[k])
		}
		p := s.policies[k]
		if p == nil {
			continue
		}
		if len(u.Sessions) > p.MaxConcurrentSessions {
			t.Fatalf("pass %d: key %s holds %d sessions, limit %d", pass, k, len(u.Sessions), p.MaxConcurrentSessions)
		}
		for name, limit := range p.TotalResourceSlots {
			if u.Occupied[name] > limit {
				t.Fatalf("pass %d: key %s holds %s of %s, limit %s", pass, k, u.Occupied[name], name, limit)
			}
		}
	}
}

func TestPropertyPasses(t *testing.T) {
	placed, cancelled, together := 0, 0, 0
	for seed := range uint64(25) {
		s := newSim(t, seed)
		s.addSessions(40)
		for pass := range 12 {
			in := s.input()
			before, err := json.Marshal(in)
			if err != nil {
				t.Fatal(err)
			}
			res := Plan(in)
			if after, _ := json.Marshal(in); string(after) != string(before) {
				t.Fatalf("seed %d pass %d: Plan modified its input", seed, pass)
			}
			// Everything pending is accounted for exactly once.
			for _, ps := range in.Pending {
				id := ps.Session.ID
				_, un := res.Plan.Unplaced[id]
				_, ca := res.Cancel[id]
				pl := slices.ContainsFunc(res.Plan.Placements, func(sp structs.SessionPlacement) bool { return sp.SessionID == id })
				if n := btoi(un) + btoi(ca) + btoi(pl); n != 1 {
					t.Fatalf("seed %d pass %d: session %s placed=%v unplaced=%v cancelled=%v", seed, pass, id, pl, un, ca)
				}
			}
			placed += len(res.Plan.Placements)
			cancelled += len(res.Cancel)
			s.apply(in, res)
			s.check(pass)
			s.finish(0.3)
			s.check(pass)
			s.addSessions(s.r.IntN(15))
			s.now = s.now.Add(time.Minute)
		}
		together += s.together
	}
	t.Logf("%d placements (%d single-node sessions of several kernels), %d cancellations over 25 clusters x 12 passes",
		placed, together, cancelled)
	if placed == 0 || cancelled == 0 || together == 0 {
		t.Fatal("the property test placed or cancelled nothing, or placed no single-node session of several kernels")
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

func TestPlanDeterministic(t *testing.T) {
	for _, sel := range []string{structs.SelectorFIFO, structs.SelectorLIFO, structs.SelectorDRF} {
		for _, asel := range []string{structs.AgentSelectorConcentrated, structs.AgentSelectorDispersed, structs.AgentSelectorRoundRobin} {
			in := benchInput(5, 80, 700, asel, sel)
			in.Groups["default"].NumRetriesToSkip = 1
			in.RoundRobin = map[string]string{"default": "agent-00040"}
			want := Plan(in)
			wantJSON, _ := json.Marshal(want)
			r := rand.New(rand.NewPCG(1, 2))
			for i := range 3 {
				shuffled := *in
				shuffled.Agents = slices.Clone(in.Agents)
				shuffled.Pending = nil
				for _, ps := range in.Pending {
					ks := slices.Clone(ps.Kernels)
					r.Shuffle(len(ks), func(i, j int) { ks[i], ks[j] = ks[j], ks[i] })
					shuffled.Pending = append(shuffled.Pending, &PendingSession{Session: ps.Session, Kernels: ks})
				}
				r.Shuffle(len(shuffled.Agents), func(i, j int) { shuffled.Agents[i], shuffled.Agents[j] = shuffled.Agents[j], shuffled.Agents[i] })
				r.Shuffle(len(shuffled.Pending), func(i, j int) { shuffled.Pending[i], shuffled.Pending[j] = shuffled.Pending[j], shuffled.Pending[i] })
				got := Plan(&shuffled)
				if !reflect.DeepEqual(got, want) {
					gotJSON, _ := json.Marshal(got)
					t.Fatalf("%s/%s shuffle %d: result differs\n got %.2000s\nwant %.2000s", sel, asel, i, gotJSON, wantJSON)
				}
			}
		}
	}
}

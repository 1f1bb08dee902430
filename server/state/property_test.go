package state_test

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/corral-dev/corral/server/scheduler"
	"github.com/corral-dev/corral/server/state"
	"github.com/corral-dev/corral/structs"
)

// store serializes applies the way raft does and checks the invariants
// after every one.
type store struct {
	t   *testing.T
	mu  sync.Mutex
	s   *state.StateStore
	idx uint64
	// placedOn remembers the first agent of every kernel ever placed.
	placedOn map[string]string
	applies  int
}

func (st *store) apply(what string, fn func(index uint64) error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.t.Failed() {
		return // report the first broken invariant, not its echoes
	}
	st.idx++
	if err := fn(st.idx); err != nil {
		st.t.Errorf("%s at %d: %v", what, st.idx, err)
	}
	st.applies++
	st.check(what)
}

// check asserts, on the state after an apply: no agent above capacity;
// agent occupancy equal to the sum of the kernels holding it; every key's
// usage equal to its holding kernels and sessions and within its policy;
// no kernel placed twice or moved.
func (st *store) check(what string) {
	t := st.t
	snap := st.s.Snapshot()
	agents, _ := snap.Agents(nil)
	kernels, _ := snap.Kernels()
	sessions, _ := snap.Sessions(nil, "")
	byAgent := map[string]structs.Slots{}
	byKey := map[string]structs.Slots{}
	keySessions := map[string]map[string]bool{}
	sess := map[string]*structs.Session{}
	for _, s := range sessions {
		sess[s.ID] = s
	}
	for _, k := range kernels {
		scheduled := 0
		for _, h := range k.History {
			if h.Status == string(structs.KernelScheduled) {
				scheduled++
			}
		}
		if scheduled > 1 {
			t.Errorf("after %s: kernel %s was placed %d times", what, k.ID, scheduled)
			return
		}
		if k.AgentID != "" {
			if first, ok := st.placedOn[k.ID]; ok && first != k.AgentID {
				t.Errorf("after %s: kernel %s moved from %s to %s", what, k.ID, first, k.AgentID)
				return
			}
			st.placedOn[k.ID] = k.AgentID
		}
		if !k.HoldsSlots() {
			continue
		}
		byAgent[k.AgentID] = byAgent[k.AgentID].Add(k.Resources)
		s := sess[k.SessionID]
		byKey[s.AccessKey] = byKey[s.AccessKey].Add(k.Resources)
		if !s.Status.Terminal() {
			if keySessions[s.AccessKey] == nil {
				keySessions[s.AccessKey] = map[string]bool{}
			}
			keySessions[s.AccessKey][s.ID] = true
		}
	}
	// Overlays: exactly the live placed cluster sessions hold one, never two
	// the same VNI or subnet, and their kernels carry its addresses.
	nets, _ := snap.Networks()
	held := map[string]bool{}
	seen := map[string]bool{}
	for _, nw := range nets {
		s := sess[nw.SessionID]
		if s == nil || s.Status.Terminal() || s.Network == nil || s.Network.VNI != nw.VNI {
			t.Errorf("after %s: network %+v held for session %+v", what, nw, s)
			return
		}
		if seen[nw.Subnet] || seen[fmt.Sprint(nw.VNI)] {
			t.Errorf("after %s: network %+v given twice", what, nw)
			return
		}
		seen[nw.Subnet], seen[fmt.Sprint(nw.VNI)], held[nw.SessionID] = true, true, true
	}
	for _, k := range kernels {
		s := sess[k.SessionID]
		if base, _, ok := strings.Cut(k.SessionID, "~attempt"); sess[base] == nil {
			t.Errorf("after %s: kernel %s of session %s outlived it (attempt kernel: %v)", what, k.ID, k.SessionID, ok)
			return
		}
		if s == nil {
			if k.HoldsSlots() {
				t.Errorf("after %s: kernel %s of no session holds slots", what, k.ID)
				return
			}
			continue // a kernel of an earlier attempt of a re-queued session
		}
		if k.AgentID == "" || s.Status.Terminal() || len(s.KernelIDs) < 2 {
			continue
		}
		if !held[s.ID] || k.Network == nil || k.Network.VNI != s.Network.VNI {
			t.Errorf("after %s: placed cluster kernel %s without its session's network (%+v)", what, k.ID, k.Network)
			return
		}
	}
	var groupHeld structs.Slots
	for _, h := range byAgent {
		groupHeld = groupHeld.Add(h)
	}
	if gu := snap.GroupUsage("default"); !gu.Equal(groupHeld) || gu[structs.SlotCPU] > structs.Whole(12) {
		t.Errorf("after %s: group usage %v, its kernels hold %v, cap cpu=12", what, gu, groupHeld)
		return
	}
	for _, a := range agents {
		if !a.Occupied.Equal(byAgent[a.ID]) {
			t.Errorf("after %s: agent %s occupied %v, its kernels hold %v", what, a.ID, a.Occupied, byAgent[a.ID])
			return
		}
		if a.Capacity.Sub(a.Occupied).AnyNegative() {
			t.Errorf("after %s: agent %s occupied %v over capacity %v", what, a.ID, a.Occupied, a.Capacity)
			return
		}
	}
	for _, k := range []string{"AK0", "AK1", "AK2", "AK3"} {
		u := snap.Usage(k)
		if !u.Occupied.Equal(byKey[k]) {
			t.Errorf("after %s: key %s usage %v, its kernels hold %v", what, k, u.Occupied, byKey[k])
			return
		}
		for id := range keySessions[k] {
			if !u.Sessions[id] {
				t.Errorf("after %s: key %s's concurrency set %v lacks live session %s", what, k, u.Sessions, id)
				return
			}
		}
		for id := range u.Sessions {
			if s := sess[id]; s == nil || s.Status.Terminal() {
				t.Errorf("after %s: key %s's concurrency set holds ended session %s", what, k, id)
				return
			}
		}
		p := snap.KeyPolicy(k)
		if p == nil {
			continue
		}
		if p.MaxConcurrentSessions > 0 && len(u.Sessions) > p.MaxConcurrentSessions {
			t.Errorf("after %s: key %s holds %d sessions, policy allows %d", what, k, len(u.Sessions), p.MaxConcurrentSessions)
			return
		}
		for name, limit := range p.TotalResourceSlots {
			if u.Occupied[name] > limit {
				t.Errorf("after %s: key %s holds %s=%v, policy allows %v", what, k, name, u.Occupied[name], limit)
				return
			}
		}
	}
}

func cpuMem(cpu int64, memGiB int64) structs.Slots {
	return structs.Slots{structs.SlotCPU: structs.Whole(cpu), structs.SlotMem: structs.Whole(memGiB << 30)}
}

// TestPropertyConcurrentWorkers runs several scheduler workers against one
// store, each planning on its own (soon stale) snapshot, while sessions
// arrive, kernels run and end, sessions are destroyed and agents come and
// go; the FSM's re-check must keep every invariant after every apply.
func TestPropertyConcurrentWorkers(t *testing.T) {
	for seed := range uint64(4) {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) { runConcurrentWorkers(t, seed) })
	}
}

func runConcurrentWorkers(t *testing.T, seed uint64) {
	s, err := state.New()
	if err != nil {
		t.Fatal(err)
	}
	st := &store{t: t, s: s, placedOn: map[string]string{}}
	r := rand.New(rand.NewPCG(seed, 1))
	t0 := time.Date(2026, 11, 22, 8, 0, 0, 0, time.UTC)
	st.apply("config", func(i uint64) error {
		return s.UpsertConfig(i, &structs.ConfigUpsertRequest{
			Groups: []*structs.ResourceGroup{
				{Name: "default", SessionSelector: []string{"fifo", "lifo", "drf"}[seed%3], NumRetriesToSkip: int(seed % 2), AgentSelector: []string{"concentrated", "dispersed", "roundrobin"}[seed%3],
					TotalResourceSlots: structs.Slots{structs.SlotCPU: structs.Whole(12)}},
			},
			Policies: []*structs.ResourcePolicy{
				{Name: "few", MaxConcurrentSessions: 2},
				{Name: "small", TotalResourceSlots: cpuMem(5, 64)},
				{Name: "both", MaxConcurrentSessions: 3, TotalResourceSlots: structs.Slots{structs.SlotCPU: structs.Whole(4)}},
			},
			Keys: []*structs.AccessKey{
				{AccessKey: "AK0", SecretHash: "h", User: "u0"},
				{AccessKey: "AK1", SecretHash: "h", User: "u1", Policy: "few"},
				{AccessKey: "AK2", SecretHash: "h", User: "u2", Policy: "small"},
				{AccessKey: "AK3", SecretHash: "h", User: "u3", Policy: "both"},
			},
			Time: t0,
		})
	})
	nAgents := 3 + r.IntN(5)
	for i := range nAgents {
		a := &structs.Agent{ID: fmt.Sprintf("ag%d", i), Name: fmt.Sprintf("ag%d", i), Status: structs.AgentAlive,
			ResourceGroup: "default", Drivers: []string{"exec"}, Capacity: cpuMem(int64(2+r.IntN(6)), int64(4+r.IntN(12)))}
		st.apply("agent upsert", func(i uint64) error { return s.UpsertAgent(i, &structs.AgentUpsertRequest{Agent: a, Time: t0}) })
	}

	var wg sync.WaitGroup
	stop := make(chan struct{})
	// Scheduler workers: plan on a snapshot, then apply (maybe much later).
	for w := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				in, _, _, err := s.Snapshot().SchedulerInput(nil, t0.Add(time.Hour))
				if err != nil {
					t.Error(err)
					return
				}
				if len(in.Pending) == 0 {
					time.Sleep(time.Millisecond)
					continue
				}
				res := scheduler.Plan(in)
				res.Plan.Attempts, res.Plan.Cancel = res.Attempts, res.Cancel
				// Workers take their time between snapshot and apply, so
				// their plans are stale and overlap.
				time.Sleep(time.Duration(r2(seed, w, len(in.Pending))) * time.Microsecond)
				st.apply("plan", func(i uint64) error {
					_, err := s.ApplyPlan(i, &structs.PlanApplyRequest{Plan: res.Plan, Time: t0})
					return err
				})
			}
		}()
	}

	// The world: sessions arrive, kernels run and end, sessions are
	// destroyed, agents are lost and come back.
	n, collected := 0, 0
	for step := 0; step < 600 && !t.Failed(); step++ {
		switch op := r.IntN(10); {
		case op < 4:
			n++
			id := fmt.Sprintf("s%d", n)
			key := fmt.Sprintf("AK%d", r.IntN(4))
			size := 1 + r.IntN(3)
			mode := structs.ClusterModeSingleNode
			if r.IntN(2) == 0 {
				mode = structs.ClusterModeMultiNode
			}
			sess := &structs.Session{ID: id, Type: structs.SessionTypeBatch, ResourceGroup: "default", AccessKey: key,
				Priority: r.IntN(3) - 1, ClusterMode: mode, ClusterSize: size, MaxRetries: r.IntN(2)}
			if r.IntN(8) == 0 && n > 1 {
				sess.DependsOn = []string{fmt.Sprintf("s%d", 1+r.IntN(n-1))}
			}
			var ks []*structs.Kernel
			for j := range size {
				role, idx, host := "main", 1, "main1"
				if j > 0 {
					role, idx, host = "sub", j, fmt.Sprintf("sub%d", j)
				}
				ks = append(ks, &structs.Kernel{ID: fmt.Sprintf("%s-%s", id, host), SessionID: id, Role: role, Idx: idx, Hostname: host,
					Driver: "exec", Command: []string{"true"}, Resources: cpuMem(int64(1+r.IntN(2)), int64(1+r.IntN(3)))})
			}
			st.apply("enqueue", func(i uint64) error {
				return s.EnqueueSession(i, &structs.SessionEnqueueRequest{Session: sess, Kernels: ks, Time: t0})
			})
		case op < 8:
			// An agent reports a step of one of its kernels.
			kernels, _ := s.Snapshot().Kernels()
			var live []*structs.Kernel
			for _, k := range kernels {
				if k.HoldsSlots() {
					live = append(live, k)
				}
			}
			if len(live) == 0 {
				continue
			}
			k := live[r.IntN(len(live))]
			next := map[structs.KernelStatus]structs.KernelStatus{
				structs.KernelScheduled: structs.KernelPreparing, structs.KernelPreparing: structs.KernelRunning,
				structs.KernelRunning: structs.KernelTerminated, structs.KernelTerminating: structs.KernelTerminated,
			}[k.Status]
			if next == "" {
				continue
			}
			code := r.IntN(2)
			st.apply("kernel update", func(i uint64) error {
				_, err := s.UpdateKernels(i, &structs.KernelUpdateRequest{AgentID: k.AgentID,
					Updates: []*structs.KernelUpdate{{KernelID: k.ID, Status: next, ExitCode: &code, Time: t0}}})
				return err
			})
		case op < 9:
			if n == 0 {
				continue
			}
			id := fmt.Sprintf("s%d", 1+r.IntN(n))
			st.apply("destroy", func(i uint64) error {
				err := s.DestroySession(i, &structs.SessionDestroyRequest{SessionID: id, Reason: "destroyed", Time: t0})
				if errors.Is(err, state.ErrNotFound) {
					return nil // collected
				}
				return err
			})
		default:
			id := fmt.Sprintf("ag%d", r.IntN(nAgents))
			to := structs.AgentAlive
			if r.IntN(2) == 0 {
				to = structs.AgentLost
			}
			st.apply("agent status", func(i uint64) error {
				return s.SetAgentStatus(i, &structs.AgentStatusRequest{AgentID: id, Status: to, Info: "test", Time: t0})
			})
		}
		if step%5 == 0 {
			time.Sleep(300 * time.Microsecond) // let the workers interleave
		}
		if step%40 == 39 {
			st.apply("gc", func(i uint64) error {
				res, err := s.GCSessions(i, &structs.SessionsGCRequest{Cutoff: t0.Add(time.Second), Limit: 1 + r.IntN(20)})
				if err == nil {
					collected += res.Sessions
				}
				return err
			})
		}
	}
	close(stop)
	wg.Wait()
	placed := 0
	for range st.placedOn {
		placed++
	}
	if placed == 0 {
		t.Fatalf("no kernel was ever placed in %d applies", st.applies)
	}
	if collected == 0 {
		t.Fatalf("gc collected no session in %d applies", st.applies)
	}
	t.Logf("seed %d: %d applies, %d sessions, %d kernels placed, %d sessions collected", seed, st.applies, n, placed, collected)
}

func r2(seed uint64, w, n int) int { return int(seed*7+uint64(w)*131+uint64(n)*37) % 1500 }

package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/e2e/testbed"
	"github.com/corral-dev/corral/structs"
)

// Fixed ports: every host of the bed has its own network namespace.
const (
	fltHTTPPort      = "8640"
	fltServerRPCPort = "8641"
	fltServerSerf    = "8642"
	fltAgentSerf     = "8643"
	fltAgentRPCPort  = "8644"
)

// fltNode is a server or an agent of the fault cluster, with what it takes
// to start it again on the same data dir.
type fltNode struct {
	idx  int
	name string
	host *testbed.Host
	dir  string
	p    *proc
	c    *api.Client  // servers: a client of this server's API
	hc   *http.Client // servers: dials from inside the server's host
	id   string       // agents: the agent's ID
}

func (n *fltNode) running() bool {
	if n.p == nil {
		return false
	}
	select {
	case <-n.p.done:
		return false
	default:
		return true
	}
}

func (n *fltNode) ip() string { return n.host.IP.String() }

// fltCluster is three servers (one raft quorum) and three agents on a bed
// of six hosts.
type fltCluster struct {
	t       *testing.T
	bed     *testbed.Bed
	servers []*fltNode
	agents  []*fltNode
	token   string
	// gossipFlag is -fast-gossip=true or =false for every daemon.
	gossipFlag string
	// The cluster secures itself, as production would by default: the
	// first server creates the cluster CA, join secrets and gossip key;
	// the other servers join with serverToken, agents with agentToken.
	serverToken, agentToken string

	mu    sync.Mutex
	marks int
	acked []string // sessions whose create returned 2xx, in order
}

// fltLostAfter is the servers' -agent-lost-after on the fault bed: short,
// so that a killed agent's kernels are given up within the test.
const fltLostAfter = 2 * time.Second

// fltMarkRE finds the markers that the sessions' commands carry.
var fltMarkRE = regexp.MustCompile(`fltmark-[0-9a-f]+-[0-9]+`)

func newFltCluster(t *testing.T, agents bool) *fltCluster {
	t.Helper()
	return newFltClusterGossip(t, agents, true)
}

// newFltClusterGossip is newFltCluster with the daemons' -fast-gossip set
// to fast (false: memberlist's LAN defaults, as in production).
func newFltClusterGossip(t *testing.T, agents, fast bool) *fltCluster {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("fault e2e needs root (network namespaces)")
	}
	n := 3
	if agents {
		n = 6
	}
	b := testbed.New(t, n)
	fc := &fltCluster{t: t, bed: b, gossipFlag: fmt.Sprintf("-fast-gossip=%v", fast)}
	for i := range 3 {
		h := b.Hosts[i]
		fc.servers = append(fc.servers, &fltNode{idx: i, name: fmt.Sprintf("server%d", i+1), host: h,
			dir: filepath.Join(b.Dir(), fmt.Sprintf("server%d", i+1)), hc: h.HTTPClient()})
	}
	fc.startServer(0, false)
	eventually(t, 30*time.Second, "the first server prints the servers' join token", func() error {
		for _, line := range strings.Split(fc.servers[0].p.output(), "\n") {
			if _, tok, ok := strings.Cut(line, "corral server -bootstrap-expect 3 "); ok {
				if _, tok, ok = strings.Cut(tok, "-join-token "); ok {
					fc.serverToken = strings.TrimSpace(tok)
					return nil
				}
			}
		}
		return errors.New("no servers' token line yet")
	})
	for i := 1; i < 3; i++ {
		fc.startServer(i, false)
	}
	eventually(t, 30*time.Second, "a server writes the admin token", func() error {
		for _, s := range fc.servers {
			if tok, ok := adminTokenIn(s.dir); ok {
				fc.token = tok
				return nil
			}
		}
		return errors.New("no admin token file yet")
	})
	eventually(t, 30*time.Second, "the leader prints the agents' join token", func() error {
		for _, s := range fc.servers {
			if tok, ok := joinTokenIn(s.p.output()); ok {
				fc.agentToken = tok
				return nil
			}
		}
		return errors.New("no agents' token line yet")
	})
	for _, s := range fc.servers {
		c, err := api.NewClient("http://" + net.JoinHostPort(s.ip(), fltHTTPPort))
		if err != nil {
			t.Fatal(err)
		}
		c.SetToken(fc.token)
		c.SetHTTPClient(s.hc)
		s.c = c
	}
	for i := range fc.servers {
		fc.waitServerBack(i, 30*time.Second)
	}
	if !agents {
		return fc
	}
	for i := range 3 {
		h := b.Hosts[3+i]
		a := &fltNode{idx: i, name: fmt.Sprintf("agent%d", i+1), host: h, dir: filepath.Join(b.Dir(), fmt.Sprintf("agent%d", i+1))}
		// Runs after the agent stops (agents leave kernels running).
		reapKernels(t, a.dir)
		fc.agents = append(fc.agents, a)
		fc.startAgent(i)
	}
	fc.waitAgents(30*time.Second, "3 agents ALIVE", map[int]structs.AgentStatus{0: structs.AgentAlive, 1: structs.AgentAlive, 2: structs.AgentAlive})
	return fc
}

// startServer starts server i: the first time, servers 2 and 3 join
// server 1's gossip; a restart joins the other two (gossip keeps no
// snapshot, so a restarted server must be told where the pool is).
func (fc *fltCluster) startServer(i int, restart bool) {
	fc.t.Helper()
	s := fc.servers[i]
	args := []string{"server", "-name", s.name, "-data-dir", s.dir, "-bootstrap-expect", "3", fc.gossipFlag,
		"-http", net.JoinHostPort(s.ip(), fltHTTPPort), "-rpc", net.JoinHostPort(s.ip(), fltServerRPCPort),
		"-serf", net.JoinHostPort(s.ip(), fltServerSerf), "-agent-lost-after", fltLostAfter.String()}
	for j, o := range fc.servers {
		if (restart && j != i) || (!restart && i > 0 && j == 0) {
			args = append(args, "-join", net.JoinHostPort(o.ip(), fltServerSerf))
		}
	}
	if i > 0 && !restart {
		// A new server joins the first one's cluster with its token (a
		// restarted one has the cluster's secrets in its data dir).
		args = append(args, "-join-token", fc.serverToken)
	}
	pname := s.name
	if restart {
		pname += "-restarted"
	}
	s.p = ovStart(fc.t, s.host, pname, args...)
}

// startAgent starts agent i (again) on its data dir; it may join through
// any server.
func (fc *fltCluster) startAgent(i int) {
	fc.t.Helper()
	a := fc.agents[i]
	args := []string{"agent", "-name", a.name, "-data-dir", a.dir, "-cpu", "2", "-mem", "1G", fc.gossipFlag,
		"-join-token", fc.agentToken, "-rpc", net.JoinHostPort(a.ip(), fltAgentRPCPort), "-serf", net.JoinHostPort(a.ip(), fltAgentSerf)}
	for _, s := range fc.servers {
		args = append(args, "-join", net.JoinHostPort(s.ip(), fltServerSerf))
	}
	pname := a.name
	if a.p != nil {
		pname += "-restarted"
	}
	a.p = ovStart(fc.t, a.host, pname, args...)
}

type fltLeader struct {
	Address string `json:"address"`
	ID      string `json:"id"`
}

// leaderVia asks server i (which forwards to the leader it knows) who leads.
func (fc *fltCluster) leaderVia(i int, timeout time.Duration) (fltLeader, error) {
	s := fc.servers[i]
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+net.JoinHostPort(s.ip(), fltHTTPPort)+"/v1/status/leader", nil)
	if err != nil {
		return fltLeader{}, err
	}
	req.Header.Set("Authorization", "Bearer "+fc.token)
	resp, err := s.hc.Do(req)
	if err != nil {
		return fltLeader{}, err
	}
	defer resp.Body.Close()
	var l fltLeader
	if resp.StatusCode != http.StatusOK {
		var e api.ErrorResponse
		_ = json.NewDecoder(resp.Body).Decode(&e)
		return l, fmt.Errorf("%s: HTTP %d %s", s.name, resp.StatusCode, e.Error)
	}
	if err := json.NewDecoder(resp.Body).Decode(&l); err != nil {
		return l, err
	}
	if l.Address == "" {
		return l, fmt.Errorf("%s: no leader", s.name)
	}
	return l, nil
}

// serverOf returns the index of the server whose raft address is addr.
func (fc *fltCluster) serverOf(addr string) int {
	host, _, _ := net.SplitHostPort(addr)
	for i, s := range fc.servers {
		if s.ip() == host {
			return i
		}
	}
	return -1
}

// leader returns the index of the current leader, asked through any
// running server.
func (fc *fltCluster) leader() int {
	fc.t.Helper()
	var idx int
	eventually(fc.t, 20*time.Second, "a leader", func() error {
		var errs []error
		for i, s := range fc.servers {
			if !s.running() {
				continue
			}
			l, err := fc.leaderVia(i, 2*time.Second)
			if err == nil {
				if idx = fc.serverOf(l.Address); idx >= 0 {
					return nil
				}
				err = fmt.Errorf("leader at unknown address %s", l.Address)
			}
			errs = append(errs, err)
		}
		return errors.Join(errs...)
	})
	return idx
}

// waitServerBack waits until server i knows a leader itself (it answers
// through its own API): it is in the leader's raft configuration and
// receives its log.
func (fc *fltCluster) waitServerBack(i int, timeout time.Duration) {
	fc.t.Helper()
	eventually(fc.t, timeout, fc.servers[i].name+" back with a leader", func() error {
		_, err := fc.leaderVia(i, 2*time.Second)
		return err
	})
}

// try runs f against each running server until one succeeds.
func (fc *fltCluster) try(f func(c *api.Client) error) error {
	var errs []error
	for _, s := range fc.servers {
		if !s.running() {
			continue
		}
		err := f(s.c)
		if err == nil {
			return nil
		}
		errs = append(errs, fmt.Errorf("via %s: %w", s.name, err))
	}
	if len(errs) == 0 {
		return errors.New("no server running")
	}
	return errors.Join(errs...)
}

func (fc *fltCluster) listAgents() ([]*structs.Agent, error) {
	var out []*structs.Agent
	err := fc.try(func(c *api.Client) (err error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		out, err = c.ListAgents(ctx)
		return err
	})
	return out, err
}

func (fc *fltCluster) getSession(id string) (*api.SessionDetail, error) {
	var out *api.SessionDetail
	err := fc.try(func(c *api.Client) (err error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		out, err = c.GetSession(ctx, id)
		return err
	})
	return out, err
}

// waitAgents waits until each agent (by index) has the wanted status, and
// records the agents' IDs.
func (fc *fltCluster) waitAgents(timeout time.Duration, what string, want map[int]structs.AgentStatus) {
	fc.t.Helper()
	eventually(fc.t, timeout, what, func() error {
		agents, err := fc.listAgents()
		if err != nil {
			return err
		}
		byName := map[string]*structs.Agent{}
		for _, a := range agents {
			byName[a.Name] = a
		}
		for i, st := range want {
			n := fc.agents[i]
			a := byName[n.name]
			if a == nil {
				return fmt.Errorf("%s not registered", n.name)
			}
			n.id = a.ID
			if a.Status != st {
				return fmt.Errorf("%s is %s (%s), want %s", n.name, a.Status, a.StatusInfo, st)
			}
			if st == structs.AgentAlive && !a.HasDriver("exec") {
				return fmt.Errorf("%s has no exec driver yet: %v", n.name, a.Drivers)
			}
		}
		return nil
	})
}

func (fc *fltCluster) agentByID(id string) *fltNode {
	for _, a := range fc.agents {
		if a.id == id {
			return a
		}
	}
	return nil
}

// fltSmall is what a kernel of the fault tests asks for: 8 fit on an agent.
var fltSmall = structs.Slots{structs.SlotCPU: 250, structs.SlotMem: structs.Whole(32 << 20)}

// request builds an exec session whose command carries a unique marker.
func (fc *fltCluster) request(typ structs.SessionType, sleep string, retries int) (*api.CreateSessionRequest, string) {
	fc.mu.Lock()
	fc.marks++
	mark := fmt.Sprintf("fltmark-%s-%d", fc.bed.RunID(), fc.marks)
	fc.mu.Unlock()
	return &api.CreateSessionRequest{
		Type: typ, Driver: "exec", Command: []string{"sh", "-c", "sleep " + sleep + " # " + mark},
		Resources: fltSmall.Copy(), MaxRetries: retries,
	}, mark
}

func (fc *fltCluster) ack(id string) {
	fc.mu.Lock()
	fc.acked = append(fc.acked, id)
	fc.mu.Unlock()
}

func (fc *fltCluster) ackedIDs() []string {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	return slices.Clone(fc.acked)
}

// create submits a session through any server and fails the test if none
// takes it.
func (fc *fltCluster) create(req *api.CreateSessionRequest) *api.SessionDetail {
	fc.t.Helper()
	var d *api.SessionDetail
	err := fc.try(func(c *api.Client) (err error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		d, err = c.CreateSession(ctx, req)
		return err
	})
	if err != nil {
		fc.t.Fatalf("create session: %v", err)
	}
	fc.ack(d.Session.ID)
	return d
}

// wait polls a session until cond holds.
func (fc *fltCluster) wait(id string, timeout time.Duration, what string, cond func(*api.SessionDetail) error) *api.SessionDetail {
	fc.t.Helper()
	var d *api.SessionDetail
	eventually(fc.t, timeout, what, func() (err error) {
		if d, err = fc.getSession(id); err != nil {
			return err
		}
		return cond(d)
	})
	return d
}

func fltRunning(d *api.SessionDetail) error {
	if d.Session.Status.Terminal() {
		return fmt.Errorf("session ended: %s (%s)", d.Session.Status, d.Session.StatusInfo)
	}
	for _, k := range d.Kernels {
		if k.Status != structs.KernelRunning {
			return fmt.Errorf("%s is %s (%s)", k.Hostname, k.Status, k.StatusInfo)
		}
	}
	if d.Session.Status != structs.SessionRunning {
		return fmt.Errorf("session is %s", d.Session.Status)
	}
	return nil
}

// placeOn creates a session and makes it run on agent target: the other
// agents are drained meanwhile, and eligible again before it returns.
func (fc *fltCluster) placeOn(target *fltNode, req *api.CreateSessionRequest) *api.SessionDetail {
	fc.t.Helper()
	var others []*fltNode
	for _, a := range fc.agents {
		if a != target {
			others = append(others, a)
		}
	}
	setDrain := func(drain bool) {
		for _, a := range others {
			err := fc.try(func(c *api.Client) error {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				_, err := c.DrainAgent(ctx, a.id, drain, false)
				return err
			})
			if err != nil {
				fc.t.Fatalf("drain=%v %s: %v", drain, a.name, err)
			}
		}
	}
	setDrain(true)
	d := fc.create(req)
	d = fc.wait(d.Session.ID, 20*time.Second, "session running on "+target.name, fltRunning)
	setDrain(false)
	for _, k := range d.Kernels {
		if k.AgentID != target.id {
			fc.t.Fatalf("session %s: kernel %s on %s, want %s", d.Session.ID, k.Hostname, k.AgentID, target.name)
		}
	}
	return d
}

// markCounts counts, across the machine, the processes whose command line
// carries each marker.
func markCounts() map[string]int {
	out := map[string]int{}
	eachProc("cmdline", func(pid int, cmdline []byte) {
		seen := map[string]bool{}
		for _, m := range fltMarkRE.FindAllString(string(cmdline), -1) {
			if !seen[m] {
				seen[m] = true
				out[m]++
			}
		}
	})
	return out
}

func markOf(d *api.SessionDetail) string {
	for _, k := range d.Kernels {
		if m := fltMarkRE.FindString(strings.Join(k.Command, " ")); m != "" {
			return m
		}
	}
	return ""
}

// fltSlotsEqual compares slots, a missing slot counting as zero.
func fltSlotsEqual(a, b structs.Slots) bool {
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	for k, v := range b {
		if a[k] != v {
			return false
		}
	}
	return true
}

func fltNonZero(s structs.Slots) structs.Slots {
	out := structs.Slots{}
	for k, v := range s {
		if v != 0 {
			out[k] = v
		}
	}
	return out
}

// invariants checks the cluster once; see checkCluster.
func (fc *fltCluster) invariants() (string, error) {
	var sessions []*structs.Session
	var details []*api.SessionDetail
	var agents []*structs.Agent
	// One server answers all of it: every read is served by the leader.
	err := fc.try(func(c *api.Client) error {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		var err error
		if sessions, err = c.ListSessions(ctx, ""); err != nil {
			return err
		}
		details = details[:0]
		for _, s := range sessions {
			d, err := c.GetSession(ctx, s.ID)
			if err != nil {
				return err
			}
			details = append(details, d)
		}
		agents, err = c.ListAgents(ctx)
		return err
	})
	if err != nil {
		return "", err
	}
	counts := markCounts()
	var errs []string
	byID := map[string]bool{}
	for _, s := range sessions {
		byID[s.ID] = true
	}
	for _, id := range fc.ackedIDs() {
		if !byID[id] {
			errs = append(errs, fmt.Sprintf("acknowledged session %s is gone", id))
		}
	}
	want := map[string]structs.Slots{}
	statuses := map[string]int{}
	var ended []string
	for _, d := range details {
		s := d.Session
		statuses[string(s.Status)]++
		if !s.Status.Valid() {
			errs = append(errs, fmt.Sprintf("session %s has status %q", s.ID, s.Status))
		}
		if s.StatusInfo == "" {
			errs = append(errs, fmt.Sprintf("session %s (%s) has no status_info", s.ID, s.Status))
		}
		live, running := 0, 0
		for _, k := range d.Kernels {
			if k.HoldsSlots() {
				if want[k.AgentID] == nil {
					want[k.AgentID] = structs.Slots{}
				}
				want[k.AgentID] = want[k.AgentID].Add(k.Resources)
			}
			if !k.Status.Terminal() {
				live++
			} else {
				ended = append(ended, k.ID)
			}
			if k.Status == structs.KernelRunning {
				running++
			}
			if s.Status.Terminal() && !k.Status.Terminal() {
				errs = append(errs, fmt.Sprintf("session %s is %s but its kernel %s is %s", s.ID, s.Status, k.ID, k.Status))
			}
		}
		mark := markOf(d)
		if mark == "" {
			continue
		}
		n := counts[mark]
		switch {
		case s.Status.Terminal() && n != 0:
			errs = append(errs, fmt.Sprintf("session %s is %s (%s) but %d processes of it (%s) run", s.ID, s.Status, s.StatusInfo, n, mark))
		case n > live:
			errs = append(errs, fmt.Sprintf("session %s (%s): %d processes of it (%s) run for %d live kernels", s.ID, s.Status, n, mark, live))
		case s.Status == structs.SessionRunning && running == len(d.Kernels) && n != running:
			errs = append(errs, fmt.Sprintf("session %s is RUNNING with %d RUNNING kernels, but %d processes of it (%s) run", s.ID, running, n, mark))
		}
	}
	for id, pids := range kernelProcs(ended) {
		errs = append(errs, fmt.Sprintf("kernel %s has ended but its processes %v run", id, pids))
	}
	var occ []string
	for _, a := range agents {
		got, exp := fltNonZero(a.Occupied), fltNonZero(want[a.ID])
		if !fltSlotsEqual(got, exp) {
			errs = append(errs, fmt.Sprintf("agent %s (%s): occupied %v, its live kernels hold %v", a.Name, a.Status, got, exp))
		}
		occ = append(occ, fmt.Sprintf("%s=%s[%v]", a.Name, a.Status, got))
		delete(want, a.ID)
	}
	for id, s := range want {
		errs = append(errs, fmt.Sprintf("live kernels on unknown agent %s hold %v", id, s))
	}
	sort.Strings(occ)
	var st []string
	for k, v := range statuses {
		st = append(st, fmt.Sprintf("%s=%d", k, v))
	}
	sort.Strings(st)
	summary := fmt.Sprintf("%d sessions (%s), %d acknowledged; agents %s", len(sessions), strings.Join(st, " "), len(fc.ackedIDs()), strings.Join(occ, " "))
	if len(errs) > 0 {
		sort.Strings(errs)
		return summary, errors.New(strings.Join(errs, "\n  "))
	}
	return summary, nil
}

// checkCluster checks, allowing the cluster some seconds to settle (a
// kernel that just ended, a report on its way), that every acknowledged
// session exists; every session has a valid status and a status_info; no
// session has more processes than live kernels (never on two agents) and a
// RUNNING one has exactly one per RUNNING kernel, an ended one none; and
// each agent's occupied slots are the sum of its live kernels' resources.
func checkCluster(t *testing.T, fc *fltCluster, phase string) {
	t.Helper()
	var summary string
	eventually(t, 20*time.Second, phase+": cluster invariants", func() (err error) {
		summary, err = fc.invariants()
		return err
	})
	t.Logf("%s: invariants hold: %s", phase, summary)
}

func fltHistoryTime(hist []structs.StatusChange, status, infoPart string) (time.Time, bool) {
	for _, h := range hist {
		if h.Status == status && strings.Contains(h.Info, infoPart) {
			return h.Time, true
		}
	}
	return time.Time{}, false
}

// measureFailover polls the servers other than the old leader until one
// answers with a new leader; it returns the time from kill and the new one.
func (fc *fltCluster) measureFailover(killed time.Time, old int) (time.Duration, int) {
	fc.t.Helper()
	deadline := killed.Add(20 * time.Second)
	var last error
	for time.Now().Before(deadline) {
		for i, s := range fc.servers {
			if i == old || !s.running() {
				continue
			}
			l, err := fc.leaderVia(i, 500*time.Millisecond)
			if err != nil {
				last = err
				continue
			}
			if n := fc.serverOf(l.Address); n >= 0 && n != old {
				return time.Since(killed), n
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	fc.t.Fatalf("no new leader within 20 s of the kill: %v", last)
	return 0, -1
}

type fltBurst struct {
	n   int
	id  string
	err error
}

// TestFaults runs three servers and three agents on a bed of six hosts and
// injects faults: the leader killed under a burst of submissions, an agent
// killed, an agent cut off the network and healed, every server restarted
// in turn. After each, checkCluster's invariants must hold.
func TestFaults(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("fault e2e needs root (network namespaces)")
	}
	began := time.Now()
	fc := newFltCluster(t, true)
	t.Logf("bed, 3 servers and 3 agents ready in %v", time.Since(began).Round(time.Millisecond))
	checkCluster(t, fc, "start")

	// 1. The leader dies while a follower takes a burst of submissions.
	old := fc.leader()
	follower := (old + 1) % 3
	t.Logf("phase 1: leader %s, submitting through %s", fc.servers[old].name, fc.servers[follower].name)
	const burstN = 40
	results := make([]fltBurst, burstN)
	tenth := make(chan struct{})
	burstDone := make(chan struct{})
	go func() {
		defer close(burstDone)
		for n := range burstN {
			req, _ := fc.request(structs.SessionTypeBatch, "1", 0)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			d, err := fc.servers[follower].c.CreateSession(ctx, req)
			cancel()
			results[n] = fltBurst{n: n, err: err}
			if err == nil {
				results[n].id = d.Session.ID
				fc.ack(d.Session.ID)
			}
			if n == 9 {
				close(tenth)
			}
			time.Sleep(120 * time.Millisecond)
		}
	}()
	<-tenth
	killed := time.Now()
	fc.servers[old].p.kill9()
	failover, newLeader := fc.measureFailover(killed, old)
	t.Logf("FIGURE failover: SIGKILL of leader %s -> %s answers as the new leader: %v", fc.servers[old].name, fc.servers[newLeader].name, failover.Round(time.Millisecond))
	<-burstDone
	var acked []string
	var failed []string
	for _, r := range results {
		if r.err == nil {
			acked = append(acked, r.id)
		} else {
			failed = append(failed, fmt.Sprintf("#%d: %v", r.n, r.err))
		}
	}
	t.Logf("phase 1: %d of %d creates acknowledged; failed: %v", len(acked), burstN, failed)
	if len(acked) < 10 {
		t.Fatalf("only %d creates acknowledged", len(acked))
	}
	fc.startServer(old, true)
	fc.waitServerBack(old, 30*time.Second)
	for _, id := range acked {
		fc.wait(id, 60*time.Second, "acknowledged burst session "+id+" SUCCESS", func(d *api.SessionDetail) error {
			if d.Session.Status.Terminal() {
				if d.Session.Status != structs.SessionTerminated || d.Session.Result != structs.ResultSuccess {
					t.Fatalf("acknowledged burst session %s ended %s/%s (%s)", d.Session.ID, d.Session.Status, d.Session.Result, d.Session.StatusInfo)
				}
				return nil
			}
			return fmt.Errorf("%s (%s)", d.Session.Status, d.Session.StatusInfo)
		})
	}
	fc.waitAgents(30*time.Second, "agents ALIVE after the failover", map[int]structs.AgentStatus{0: structs.AgentAlive, 1: structs.AgentAlive, 2: structs.AgentAlive})
	checkCluster(t, fc, "phase 1 (leader killed)")

	// 2. An agent dies with an interactive kernel and a batch kernel with a retry.
	req, _ := fc.request(structs.SessionTypeInteractive, "600", 0)
	i2 := fc.create(req)
	i2 = fc.wait(i2.Session.ID, 20*time.Second, "interactive session running", fltRunning)
	victim := fc.agentByID(i2.Kernels[0].AgentID)
	if victim == nil {
		t.Fatalf("interactive kernel on unknown agent %s", i2.Kernels[0].AgentID)
	}
	req, _ = fc.request(structs.SessionTypeBatch, "5", 1)
	b2 := fc.placeOn(victim, req)
	killed = time.Now()
	victim.p.kill9()
	var lostAfter time.Duration
	i2 = fc.wait(i2.Session.ID, 30*time.Second, "interactive kernel ERROR after agent death", func(d *api.SessionDetail) error {
		k := d.Kernels[0]
		if k.Status != structs.KernelError || !strings.Contains(k.StatusInfo, "agent lost") {
			return fmt.Errorf("kernel %s (%s)", k.Status, k.StatusInfo)
		}
		lostAfter = time.Since(killed)
		return nil
	})
	if at, ok := fltHistoryTime(i2.Kernels[0].History, string(structs.KernelError), "agent lost"); ok {
		t.Logf("FIGURE agent death: SIGKILL of %s -> kernel ERROR %q: %v (server's record), %v (seen by polling)",
			victim.name, i2.Kernels[0].StatusInfo, at.Sub(killed).Round(time.Millisecond), lostAfter.Round(time.Millisecond))
	} else {
		t.Logf("FIGURE agent death: SIGKILL of %s -> kernel ERROR: %v (seen by polling)", victim.name, lostAfter.Round(time.Millisecond))
	}
	if i2.Session.Status != structs.SessionError {
		t.Errorf("interactive session on the dead agent is %s (%s), want ERROR", i2.Session.Status, i2.Session.StatusInfo)
	}
	b2 = fc.wait(b2.Session.ID, 40*time.Second, "batch session with a retry SUCCESS", func(d *api.SessionDetail) error {
		if !d.Session.Status.Terminal() {
			return fmt.Errorf("%s (%s), retries %d", d.Session.Status, d.Session.StatusInfo, d.Session.Retries)
		}
		return nil
	})
	if b2.Session.Result != structs.ResultSuccess || b2.Session.Retries != 1 || b2.Kernels[0].AgentID == victim.id {
		t.Fatalf("batch session with a retry: %s/%s retries %d on %s (%s)", b2.Session.Status, b2.Session.Result, b2.Session.Retries, b2.Kernels[0].AgentID, b2.Session.StatusInfo)
	}
	if _, ok := fltHistoryTime(b2.Session.History, string(structs.SessionPending), "re-queued (retry 1 of 1): agent lost"); !ok {
		t.Errorf("no re-queue in the batch session's history: %+v", b2.Session.History)
	}
	t.Logf("phase 2: batch session re-queued and ended SUCCESS on %s", fc.agentByID(b2.Kernels[0].AgentID).name)
	fc.startAgent(victim.idx)
	fc.waitAgents(30*time.Second, victim.name+" ALIVE again", map[int]structs.AgentStatus{victim.idx: structs.AgentAlive})
	checkCluster(t, fc, "phase 2 (agent killed)")

	// 3. An agent is cut off the network with an interactive kernel on it.
	cut := fc.agents[(victim.idx+1)%3]
	req, mark3 := fc.request(structs.SessionTypeInteractive, "600", 0)
	i3 := fc.placeOn(cut, req)
	if n := markCounts()[mark3]; n != 1 {
		t.Fatalf("interactive kernel on %s: %d processes of it", cut.name, n)
	}
	cutAt := time.Now()
	if err := cut.host.Cut(); err != nil {
		t.Fatal(err)
	}
	healed := false
	t.Cleanup(func() {
		if !healed {
			_ = cut.host.Heal()
		}
	})
	fc.waitAgents(30*time.Second, cut.name+" LOST", map[int]structs.AgentStatus{cut.idx: structs.AgentLost})
	i3 = fc.wait(i3.Session.ID, 30*time.Second, "kernel on the cut agent ERROR", func(d *api.SessionDetail) error {
		k := d.Kernels[0]
		if k.Status != structs.KernelError || !strings.Contains(k.StatusInfo, "agent lost") {
			return fmt.Errorf("kernel %s (%s)", k.Status, k.StatusInfo)
		}
		return nil
	})
	t.Logf("phase 3: %s cut; LOST and its kernel ERROR after %v", cut.name, time.Since(cutAt).Round(time.Millisecond))
	if n := markCounts()[mark3]; n != 1 {
		t.Errorf("while cut off, %d processes of the kernel on %s run, want 1 (still running there)", n, cut.name)
	}
	if err := cut.host.Heal(); err != nil {
		t.Fatal(err)
	}
	healed = true
	healAt := time.Now()
	// Both at once: the agent must kill the kernel the server gave up on
	// (within 15 s of the heal) and come back ALIVE.
	var goneAfter, aliveAfter time.Duration
	var lastErr error
	for deadline := healAt.Add(60 * time.Second); time.Now().Before(deadline) && (goneAfter == 0 || aliveAfter == 0); {
		if goneAfter == 0 && markCounts()[mark3] == 0 {
			goneAfter = time.Since(healAt)
		}
		if aliveAfter == 0 {
			agents, err := fc.listAgents()
			lastErr = err
			for _, a := range agents {
				if a.ID == cut.id && a.Status == structs.AgentAlive {
					aliveAfter = time.Since(healAt)
				} else if a.ID == cut.id {
					lastErr = fmt.Errorf("%s is %s (%s)", cut.name, a.Status, a.StatusInfo)
				}
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("FIGURE partition heal: %s's orphaned kernel gone %v after the heal, the agent ALIVE again %v after the heal",
		cut.name, goneAfter.Round(time.Millisecond), aliveAfter.Round(time.Millisecond))
	if goneAfter == 0 || goneAfter > 15*time.Second {
		t.Errorf("the healed agent did not kill the kernel the server gave up on within 15 s (%d processes of it after %v)", markCounts()[mark3], time.Since(healAt).Round(time.Millisecond))
	}
	if aliveAfter == 0 {
		t.Fatalf("%s not ALIVE within 60 s of the heal: %v", cut.name, lastErr)
	}
	checkCluster(t, fc, "phase 3 (agent partitioned)")

	// 4. Rolling restart of every server while sessions run.
	var keep []*api.SessionDetail
	keepMarks := map[string]string{}
	for range 2 {
		req, mark := fc.request(structs.SessionTypeInteractive, "600", 0)
		d := fc.create(req)
		keep = append(keep, d)
		keepMarks[d.Session.ID] = mark
	}
	req, _ = fc.request(structs.SessionTypeBatch, "6", 0)
	b4 := fc.create(req)
	for _, d := range keep {
		fc.wait(d.Session.ID, 20*time.Second, "interactive session running", fltRunning)
	}
	fc.wait(b4.Session.ID, 20*time.Second, "batch session running", fltRunning)
	before := map[string]*structs.Session{}
	for _, id := range fc.ackedIDs() {
		d, err := fc.getSession(id)
		if err != nil {
			t.Fatal(err)
		}
		before[id] = d.Session
	}
	for i, s := range fc.servers {
		wasLeader := fc.leader() == i
		t0 := time.Now()
		s.p.stop(15 * time.Second)
		stopped := time.Since(t0)
		fc.startServer(i, true)
		fc.waitServerBack(i, 30*time.Second)
		l := fc.leader()
		fc.waitAgents(30*time.Second, "agents ALIVE after restarting "+s.name, map[int]structs.AgentStatus{0: structs.AgentAlive, 1: structs.AgentAlive, 2: structs.AgentAlive})
		t.Logf("phase 4: %s (leader: %v) stopped in %v, back with leader %s %v after the SIGTERM",
			s.name, wasLeader, stopped.Round(time.Millisecond), fc.servers[l].name, time.Since(t0).Round(time.Millisecond))
	}
	counts := markCounts()
	for _, d := range keep {
		got := fc.wait(d.Session.ID, 10*time.Second, "interactive session still running", fltRunning)
		if got.Kernels[0].ID != d.Kernels[0].ID {
			t.Errorf("session %s has a new kernel %s", d.Session.ID, got.Kernels[0].ID)
		}
		if n := counts[keepMarks[d.Session.ID]]; n != 1 {
			t.Errorf("session %s: %d processes after the rolling restart, want 1", d.Session.ID, n)
		}
	}
	b4d := fc.wait(b4.Session.ID, 30*time.Second, "batch session across the restarts ended", func(d *api.SessionDetail) error {
		if !d.Session.Status.Terminal() {
			return fmt.Errorf("%s (%s)", d.Session.Status, d.Session.StatusInfo)
		}
		return nil
	})
	if b4d.Session.Result != structs.ResultSuccess {
		t.Errorf("batch session across the restarts: %s/%s (%s)", b4d.Session.Status, b4d.Session.Result, b4d.Session.StatusInfo)
	}
	for id, b := range before {
		d, err := fc.getSession(id)
		if err != nil {
			t.Errorf("session %s after the rolling restart: %v", id, err)
			continue
		}
		a := d.Session
		if b.Status.Terminal() && (a.Status != b.Status || a.Result != b.Result || a.Retries != b.Retries) {
			t.Errorf("ended session %s changed across the rolling restart: %s/%s -> %s/%s", id, b.Status, b.Result, a.Status, a.Result)
		}
	}
	req, _ = fc.request(structs.SessionTypeBatch, "1", 0)
	nd := fc.create(req)
	nd = fc.wait(nd.Session.ID, 30*time.Second, "new session after the rolling restart ended", func(d *api.SessionDetail) error {
		if !d.Session.Status.Terminal() {
			return fmt.Errorf("%s (%s)", d.Session.Status, d.Session.StatusInfo)
		}
		return nil
	})
	if nd.Session.Result != structs.ResultSuccess {
		t.Errorf("new session after the rolling restart: %s/%s (%s)", nd.Session.Status, nd.Session.Result, nd.Session.StatusInfo)
	}
	checkCluster(t, fc, "phase 4 (rolling restart)")
	t.Logf("test body took %v", time.Since(began).Round(time.Millisecond))
}

// TestFailoverMedian kills the leader of a three-server quorum five times
// (restarting it each time) and logs the median time to a new leader.
func TestFailoverMedian(t *testing.T) {
	if testing.Short() {
		t.Skip("repeats the failover five times")
	}
	fc := newFltCluster(t, false)
	var times []time.Duration
	for range 5 {
		old := fc.leader()
		killed := time.Now()
		fc.servers[old].p.kill9()
		d, n := fc.measureFailover(killed, old)
		t.Logf("failover: %s killed, %s leads after %v", fc.servers[old].name, fc.servers[n].name, d.Round(time.Millisecond))
		times = append(times, d)
		fc.startServer(old, true)
		fc.waitServerBack(old, 30*time.Second)
	}
	slices.Sort(times)
	var s []string
	for _, d := range times {
		s = append(s, d.Round(time.Millisecond).String())
	}
	t.Logf("FIGURE failover over 5 leader kills: median %v (sorted: %s)", times[2].Round(time.Millisecond), strings.Join(s, " "))
}

// TestAgentDeathMedian kills an agent that runs a kernel five times with
// the tuned gossip timers (-fast-gossip) and five times with memberlist's
// LAN defaults, and logs the median time from the SIGKILL to the kernel's
// ERROR "agent lost" in the server's record: the agent is DISCONNECTED once
// gossip failed it and its RPC heartbeats stopped, and LOST fltLostAfter
// later (servers run with that short grace period here).
func TestAgentDeathMedian(t *testing.T) {
	if testing.Short() {
		t.Skip("kills agents ten times")
	}
	for _, fast := range []bool{true, false} {
		name := map[bool]string{true: "tuned", false: "default"}[fast]
		t.Run(name, func(t *testing.T) {
			fc := newFltClusterGossip(t, true, fast)
			var times []time.Duration
			for n := range 5 {
				victim := fc.agents[n%3]
				req, _ := fc.request(structs.SessionTypeInteractive, "600", 0)
				d := fc.placeOn(victim, req)
				killed := time.Now()
				victim.p.kill9()
				d = fc.wait(d.Session.ID, 90*time.Second, "kernel ERROR after the agent's death", func(d *api.SessionDetail) error {
					if k := d.Kernels[0]; k.Status != structs.KernelError || !strings.Contains(k.StatusInfo, "agent lost") {
						return fmt.Errorf("kernel %s (%s)", k.Status, k.StatusInfo)
					}
					return nil
				})
				at, ok := fltHistoryTime(d.Kernels[0].History, string(structs.KernelError), "agent lost")
				if !ok {
					t.Fatalf("no ERROR in the kernel's history: %+v", d.Kernels[0].History)
				}
				times = append(times, at.Sub(killed))
				disc := "?"
				if ag, err := fc.servers[0].c.GetAgent(context.Background(), d.Kernels[0].AgentID); err == nil && !ag.DisconnectedAt.IsZero() {
					disc = ag.DisconnectedAt.Sub(killed).Round(time.Millisecond).String()
				}
				t.Logf("%s gossip: %s killed, DISCONNECTED after %s, kernel ERROR after %v (grace %s)", name, victim.name, disc, at.Sub(killed).Round(time.Millisecond), fltLostAfter)
				fc.startAgent(victim.idx)
				fc.waitAgents(90*time.Second, victim.name+" ALIVE again", map[int]structs.AgentStatus{victim.idx: structs.AgentAlive})
			}
			slices.Sort(times)
			var s []string
			for _, d := range times {
				s = append(s, d.Round(time.Millisecond).String())
			}
			t.Logf("FIGURE agent death -> kernels ERROR (grace %s), %s gossip, 5 kills: median %v (sorted: %s)", fltLostAfter, name, times[2].Round(time.Millisecond), strings.Join(s, " "))
			checkCluster(t, fc, name+" gossip agent deaths")
		})
	}
}

package gossip

// Convergence measurements for the serf pool built by NewConfig: real serf
// instances on 127.0.0.1 (ephemeral ports) in one process.
//
// The benchmark builds a fresh pool per iteration (setup is heavy), so run
// it with a fixed count of one:
//
//	go test -run XXX -bench Convergence -benchtime 1x ./gossip
//
// Each iteration
//
//  1. starts N members (in batches, each joining through the first member
//     and one random earlier member) and waits until every member's
//     Members() lists N alive and no failure-detector noise (below) has
//     occurred for 2 s: the pool has settled (ms-setup, quiet window
//     included). If it does not settle within 90 s the iteration reports
//     settled=0 and its noise, and stops;
//  2. starts one more member, joins it through a random member, and
//     measures from the Join call until every one of the N others has
//     received the EventMemberJoin for it on its event channel
//     (ms-join-converge; ms-join-p50 is the median observer);
//  3. kills one original member abruptly (serf Shutdown without Leave, which
//     shuts memberlist down without a leave broadcast, so the others see a
//     failure) and measures until every remaining member has received the
//     EventMemberFailed for it (ms-failure-converge; ms-failure-first is
//     the first observer to declare it failed, ms-failure-p50 the median).
//
// Events are timestamped by a goroutine per member draining its event
// channel, so the polling of the waiter does not add to the figures.
//
// It also counts failure-detector noise about members that were never
// killed, from the memberlist logs and serf events of every member:
// false-suspicions (a member's own probe of a live peer failed: "Suspect X
// has failed"), false-dead-marks (a member's suspicion timer of a live peer
// expired: "Marking X as failed"), false-failures (EventMemberFailed
// events about live members, summed over observers), refutes (a live member
// refuted a suspicion or death about itself) and flaps (an observer saw a
// live member fail and then rejoin). None of this is asserted on; the
// benchmark reports false-suspicions, false-failures and flaps as metrics
// (the rest in its log) and the figures are only meaningful next to them.
// Failure figures are for one victim, so they vary from run to run by about
// a probe round (the time until some member happens to probe the victim).
//
// The ns/op figure covers steps 2 and 3 only (setup and teardown run with
// the timer stopped); the custom metrics are the ones to read.

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"net"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/serf/serf"
)

// TestConvergenceSmall runs the benchmark's scenario at 10 members with the
// tuned timers and checks only that everyone sees the join and the failure
// (generous limits; no timing assertions).
func TestConvergenceSmall(t *testing.T) {
	r := runConvergence(t, convergenceOpts{
		members:      10,
		fast:         true,
		setupTimeout: 30 * time.Second,
		joinTimeout:  30 * time.Second,
		failTimeout:  30 * time.Second,
		strict:       true,
	})
	t.Logf("10 members, tuned: setup %v, join converged in %v (p50 %v), failure first seen %v, converged in %v (p50 %v); "+
		"false suspicions %d, false dead marks %d, false failures %d, refutes %d, flaps %d",
		r.setup, r.joinAll, r.joinP50, r.failFirst, r.failAll, r.failP50,
		r.noise.suspicions, r.noise.deadMarks, r.noise.failedEvents, r.noise.refutes, r.noise.flaps)
}

// BenchmarkConvergence measures join and failure convergence of a 100-member
// pool with memberlist's DefaultLANConfig (fast=false) and with corral's
// tuned timers (fast=true). Use -benchtime 1x; -convergence.members changes
// the pool sizes (comma-separated).
//
// config=tuned-nocompress is a diagnostic variant, not a configuration corral
// runs: the tuned config with memberlist's EnableCompression off. Packing
// 100 members into one process on a small machine makes the tuned timers
// CPU-bound (every packet is LZW-compressed, and the tuned config sends 4x
// the gossip), and a saturated CPU turns into false suspicions; this variant
// separates what the timers do from what the co-location costs.
//
// When a pool never settles (every member listing all N alive) within the
// setup limit, the iteration reports settled=0 and the noise it counted, and
// measures nothing: join and failure times in a flapping pool mean nothing.
func BenchmarkConvergence(b *testing.B) {
	if testing.Short() {
		b.Skip("starts 100 serf members; skipped in -short mode")
	}
	sizes, err := parseSizes(*convergenceMembers)
	if err != nil {
		b.Fatal(err)
	}
	for _, n := range sizes {
		for _, cfg := range []struct {
			name       string
			fast       bool
			noCompress bool
		}{
			{"default-lan", false, false},
			{"tuned", true, false},
			{"tuned-nocompress", true, true},
		} {
			b.Run(fmt.Sprintf("members=%d/config=%s", n, cfg.name), func(b *testing.B) {
				var sum convergenceResult
				settled := 0
				for i := 0; i < b.N; i++ {
					r := runConvergence(b, convergenceOpts{
						members:      n,
						fast:         cfg.fast,
						noCompress:   cfg.noCompress,
						setupTimeout: 90 * time.Second,
						joinTimeout:  time.Minute,
						failTimeout:  3 * time.Minute,
						timer:        b,
					})
					if !r.settled {
						b.Logf("iteration %d: pool never settled in %v (the worst member saw %d of %d alive at the end); "+
							"false suspicions %d, false dead marks %d, false failures %d, refutes %d (dead %d), flaps %d; not measured",
							i, r.setup, r.worstAlive, n, r.noise.suspicions, r.noise.deadMarks, r.noise.failedEvents,
							r.noise.refutes, r.noise.deadRefutes, r.noise.flaps)
					} else {
						settled++
						b.Logf("iteration %d: setup %v, join %v (p50 %v), failure first %v, all %v (p50 %v) [victim %s]; "+
							"false suspicions %d, false dead marks %d, false failures %d, refutes %d (dead %d), flaps %d; "+
							"by phase (setup/join/failure): false suspicions %v, false failures %v",
							i, r.setup, r.joinAll, r.joinP50, r.failFirst, r.failAll, r.failP50, r.victim,
							r.noise.suspicions, r.noise.deadMarks, r.noise.failedEvents, r.noise.refutes, r.noise.deadRefutes,
							r.noise.flaps, r.phaseSuspicions, r.phaseFailedEvents)
					}
					sum.add(r)
				}
				nf := float64(b.N)
				if settled > 0 {
					ns := float64(settled)
					b.ReportMetric(ms(sum.joinAll)/ns, "ms-join-converge")
					b.ReportMetric(ms(sum.joinP50)/ns, "ms-join-p50")
					b.ReportMetric(ms(sum.failAll)/ns, "ms-failure-converge")
					b.ReportMetric(ms(sum.failFirst)/ns, "ms-failure-first")
					b.ReportMetric(ms(sum.failP50)/ns, "ms-failure-p50")
				}
				b.ReportMetric(float64(settled)/nf, "settled")
				b.ReportMetric(ms(sum.setup)/nf, "ms-setup")
				b.ReportMetric(float64(sum.noise.suspicions)/nf, "false-suspicions")
				b.ReportMetric(float64(sum.noise.failedEvents)/nf, "false-failures")
				b.ReportMetric(float64(sum.noise.flaps)/nf, "flaps")
			})
		}
	}
}

var convergenceMembers = flag.String("convergence.members", "100",
	"pool sizes for BenchmarkConvergence, comma-separated")

func parseSizes(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 3 {
			return nil, fmt.Errorf("-convergence.members: bad size %q (want integers >= 3)", f)
		}
		out = append(out, n)
	}
	return out, nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// phaseTimer is the part of *testing.B the scenario uses to keep setup and
// teardown out of ns/op.
type phaseTimer interface {
	StartTimer()
	StopTimer()
}

type convergenceOpts struct {
	members      int
	fast         bool
	noCompress   bool // diagnostic: memberlist EnableCompression off
	setupTimeout time.Duration
	joinTimeout  time.Duration
	failTimeout  time.Duration
	// strict fails the run when the pool does not settle, or when a
	// member's Members() disagrees with the events after convergence;
	// otherwise the first returns an unsettled result and the second is
	// logged.
	strict bool
	timer  phaseTimer // nil outside benchmarks
}

type noiseCounts struct {
	suspicions   int // "Suspect X has failed" about a live X
	deadMarks    int // "Marking X as failed" about a live X
	refutes      int // "Refuting a suspect message"
	deadRefutes  int // "Refuting a dead message"
	failedEvents int // EventMemberFailed about a live member, summed over observers
	flaps        int // EventMemberJoin after EventMemberFailed, same observer and member
	leaves       int // EventMemberLeave (nobody leaves here)
}

func (n *noiseCounts) add(o noiseCounts) {
	n.suspicions += o.suspicions
	n.deadMarks += o.deadMarks
	n.refutes += o.refutes
	n.deadRefutes += o.deadRefutes
	n.failedEvents += o.failedEvents
	n.flaps += o.flaps
	n.leaves += o.leaves
}

type convergenceResult struct {
	settled            bool
	worstAlive         int // unsettled: the lowest alive count any member had at the end
	victim             string
	setup              time.Duration
	joinAll, joinP50   time.Duration
	failFirst, failAll time.Duration
	failP50            time.Duration
	noise              noiseCounts
	phaseSuspicions    [3]int // setup, join, failure
	phaseFailedEvents  [3]int
	viewMismatches     int
}

func (r *convergenceResult) add(o convergenceResult) {
	r.setup += o.setup
	r.joinAll += o.joinAll
	r.joinP50 += o.joinP50
	r.failFirst += o.failFirst
	r.failAll += o.failAll
	r.failP50 += o.failP50
	r.noise.add(o.noise)
	r.viewMismatches += o.viewMismatches
}

func runConvergence(tb testing.TB, o convergenceOpts) convergenceResult {
	tb.Helper()
	if o.timer != nil {
		o.timer.StopTimer()
	}
	// Per member: a UDP socket, a TCP listener, transient push/pull and
	// fallback-probe streams.
	ensureFDLimit(tb, uint64(o.members)*8+256)

	var r convergenceResult
	p := newTestPool(tb, o.fast)
	p.noCompress = o.noCompress
	defer p.close()

	// 1. Build the pool.
	start := time.Now()
	if err := p.grow(o.members, 10); err != nil {
		p.dumpLogs()
		tb.Fatalf("starting %d members: %v", o.members, err)
	}
	if worst, err := p.waitSettled(p.members, o.members, o.setupTimeout); err != nil {
		if o.strict {
			p.dumpLogs()
			tb.Fatalf("pool of %d did not settle in %v: %v", o.members, o.setupTimeout, err)
		}
		p.freeze()
		r.setup, r.worstAlive, r.noise = time.Since(start), worst, p.noise()
		r.phaseSuspicions[0], r.phaseFailedEvents[0] = r.noise.suspicions, r.noise.failedEvents
		p.close()
		return r
	}
	r.settled = true
	r.setup = time.Since(start)
	snapSetup := p.noise()

	// 2. A new member joins.
	seed := p.members[rand.IntN(len(p.members))]
	if o.timer != nil {
		o.timer.StartTimer()
	}
	joiner, err := p.start("joiner", nil)
	if err != nil {
		tb.Fatalf("starting the joiner: %v", err)
	}
	t0 := time.Now()
	if _, err := joiner.serf.Join([]string{seed.addr}, true); err != nil {
		tb.Fatalf("joiner joining through %s: %v", seed.name, err)
	}
	lat, err := p.tr.waitFor(evJoin, joiner.name, names(p.members), t0, o.joinTimeout)
	if err != nil {
		p.dumpLogs()
		tb.Fatalf("join of %s: %v", joiner.name, err)
	}
	r.joinAll, r.joinP50 = lat[len(lat)-1], lat[len(lat)/2]
	if o.timer != nil {
		o.timer.StopTimer()
	}
	r.viewMismatches += p.checkView(tb, o.strict, joiner.name, serf.StatusAlive, p.members)
	snapJoin := p.noise()

	// 3. One original member dies without leaving. Pick one that every
	// member (joiner included) currently sees alive, so that an earlier
	// false failure cannot stand in for the real one.
	survivors := append(append([]*poolMember(nil), p.members...), joiner)
	victim := p.pickVictim(survivors)
	if victim == nil {
		p.dumpLogs()
		tb.Fatalf("no member is seen alive by everyone (flapping?)")
	}
	for i, m := range survivors {
		if m == victim {
			survivors = append(survivors[:i], survivors[i+1:]...)
			break
		}
	}
	r.victim = victim.name
	p.expectFailure(victim.name)
	if o.timer != nil {
		o.timer.StartTimer()
	}
	t0 = time.Now()
	if err := victim.serf.Shutdown(); err != nil { // no Leave: a failure, not a leave
		tb.Fatalf("killing %s: %v", victim.name, err)
	}
	lat, err = p.tr.waitFor(evFailed, victim.name, names(survivors), t0, o.failTimeout)
	if err != nil {
		p.dumpLogs()
		tb.Fatalf("failure of %s: %v", victim.name, err)
	}
	r.failFirst, r.failAll, r.failP50 = lat[0], lat[len(lat)-1], lat[len(lat)/2]
	if o.timer != nil {
		o.timer.StopTimer()
	}
	r.viewMismatches += p.checkView(tb, o.strict, victim.name, serf.StatusFailed, survivors)

	// Freeze the counters before the teardown makes everyone fail.
	p.freeze()
	r.noise = p.noise()
	r.phaseSuspicions = [3]int{snapSetup.suspicions, snapJoin.suspicions - snapSetup.suspicions, r.noise.suspicions - snapJoin.suspicions}
	r.phaseFailedEvents = [3]int{snapSetup.failedEvents, snapJoin.failedEvents - snapSetup.failedEvents, r.noise.failedEvents - snapJoin.failedEvents}

	p.close()
	for _, m := range p.allMembers() {
		if st := m.serf.State(); st != serf.SerfShutdown {
			tb.Errorf("member %s still %v after close", m.name, st)
		}
	}
	return r
}

// ---- pool ----

type poolMember struct {
	name   string
	addr   string
	serf   *serf.Serf
	events chan serf.Event
}

type testPool struct {
	tb         testing.TB
	fast       bool
	noCompress bool
	tr         *eventTracker
	logs       *logScanner
	members    []*poolMember // the original N, by index

	mu     sync.Mutex
	all    []*poolMember // everything started, joiner included
	stop   chan struct{}
	drains sync.WaitGroup
	once   sync.Once
}

func newTestPool(tb testing.TB, fast bool) *testPool {
	expected := &expectedFailures{names: map[string]bool{}}
	p := &testPool{
		tb:   tb,
		fast: fast,
		tr:   newEventTracker(expected),
		logs: newLogScanner(expected),
		stop: make(chan struct{}),
	}
	tb.Cleanup(p.close)
	return p
}

// start creates a member on an ephemeral loopback port and, with seeds,
// joins it through them.
func (p *testPool) start(name string, seeds []string) (*poolMember, error) {
	events := make(chan serf.Event, 4096)
	tags := map[string]string{TagRole: "agent", TagID: name, TagGroup: "bench", TagVersion: "test"}
	conf, err := NewConfig(name, "127.0.0.1:0", tags, p.fast, events)
	if err != nil {
		return nil, err
	}
	conf.LogOutput = p.logs
	conf.MemberlistConfig.LogOutput = p.logs
	if p.noCompress {
		conf.MemberlistConfig.EnableCompression = false
	}
	s, err := serf.Create(conf)
	if err != nil {
		return nil, fmt.Errorf("serf.Create %s: %w", name, err)
	}
	local := s.LocalMember()
	m := &poolMember{
		name:   name,
		addr:   net.JoinHostPort(local.Addr.String(), strconv.Itoa(int(local.Port))),
		serf:   s,
		events: events,
	}
	p.mu.Lock()
	p.all = append(p.all, m)
	p.mu.Unlock()
	p.drains.Add(1)
	go p.drain(m)
	if len(seeds) > 0 {
		if _, err := s.Join(seeds, true); err != nil {
			return m, fmt.Errorf("%s joining %v: %w", name, seeds, err)
		}
	}
	return m, nil
}

// drain timestamps m's member events as they arrive; serf blocks on a
// full event channel, so it must never stall.
func (p *testPool) drain(m *poolMember) {
	defer p.drains.Done()
	for {
		select {
		case <-p.stop:
			return
		case e := <-m.events:
			if me, ok := e.(serf.MemberEvent); ok {
				p.tr.record(m.name, me, time.Now())
			}
		}
	}
}

// grow starts n members, batch at a time; each joins through the first
// member and a random earlier one.
func (p *testPool) grow(n, batch int) error {
	p.members = make([]*poolMember, n)
	first, err := p.start(memberName(0), nil)
	if err != nil {
		return err
	}
	p.members[0] = first
	for lo := 1; lo < n; lo += batch {
		hi := min(lo+batch, n)
		errs := make([]error, hi-lo)
		var wg sync.WaitGroup
		for i := lo; i < hi; i++ {
			seeds := []string{first.addr}
			if lo > 1 {
				seeds = append(seeds, p.members[1+rand.IntN(lo-1)].addr)
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				p.members[i], errs[i-lo] = p.start(memberName(i), seeds)
			}()
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			return err
		}
	}
	return nil
}

func memberName(i int) string { return fmt.Sprintf("node-%03d", i) }

func names(ms []*poolMember) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.name
	}
	return out
}

// settleQuiet is how long a pool must go without failure-detector noise
// (suspicions, refutations, failures of live members), with every member
// listing all alive, before it counts as settled: right after the startup
// burst the broadcast queues are still draining and suspicions raised during
// it are still running.
const settleQuiet = 2 * time.Second

// waitSettled polls Members() of each of ms until all list want alive and
// the pool has been quiet for settleQuiet; on timeout it returns the lowest
// alive count it last saw.
func (p *testPool) waitSettled(ms []*poolMember, want int, timeout time.Duration) (int, error) {
	deadline := time.Now().Add(timeout)
	last, lastChange := p.noise(), time.Now()
	for {
		if n := p.noise(); n != last {
			last, lastChange = n, time.Now()
		}
		worst, worstName := want, ""
		for _, m := range ms {
			if c := aliveCount(m.serf); c < worst {
				worst, worstName = c, m.name
			}
		}
		if worstName == "" && time.Since(lastChange) >= settleQuiet {
			return worst, nil
		}
		if time.Now().After(deadline) {
			if worstName == "" {
				return worst, fmt.Errorf("all alive, but failure-detector noise went on (last %v ago)",
					time.Since(lastChange).Round(time.Millisecond))
			}
			return worst, fmt.Errorf("%s sees only %d of %d alive", worstName, worst, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func aliveCount(s *serf.Serf) int {
	n := 0
	for _, m := range s.Members() {
		if m.Status == serf.StatusAlive {
			n++
		}
	}
	return n
}

func statusOf(s *serf.Serf, name string) serf.MemberStatus {
	for _, m := range s.Members() {
		if m.Name == name {
			return m.Status
		}
	}
	return serf.StatusNone
}

// checkView cross-checks the event-based result against Members().
func (p *testPool) checkView(tb testing.TB, strict bool, target string, want serf.MemberStatus, observers []*poolMember) int {
	bad := 0
	for _, m := range observers {
		if got := statusOf(m.serf, target); got != want {
			bad++
			msg := fmt.Sprintf("%s's Members() has %s %v after its event said %v", m.name, target, got, want)
			if strict {
				tb.Error(msg)
			} else {
				tb.Log(msg)
			}
		}
	}
	return bad
}

// pickVictim returns a random non-seed original member that every
// candidate sees alive.
func (p *testPool) pickVictim(observers []*poolMember) *poolMember {
	for _, i := range rand.Perm(len(p.members) - 1) {
		v := p.members[i+1]
		ok := true
		for _, m := range observers {
			if m != v && statusOf(m.serf, v.name) != serf.StatusAlive {
				ok = false
				break
			}
		}
		if ok {
			return v
		}
	}
	return nil
}

func (p *testPool) expectFailure(name string) { p.tr.expected.add(name) }

func (p *testPool) freeze() {
	p.tr.freeze()
	p.logs.freeze()
}

func (p *testPool) noise() noiseCounts {
	n := p.logs.counts()
	t := p.tr.counts()
	n.failedEvents, n.flaps, n.leaves = t.failedEvents, t.flaps, t.leaves
	return n
}

func (p *testPool) allMembers() []*poolMember {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]*poolMember(nil), p.all...)
}

// close shuts every member down (no Leave: that would take a broadcast
// round per member) and stops the drainers. Idempotent.
func (p *testPool) close() {
	p.once.Do(func() {
		p.freeze()
		ms := p.allMembers()
		var wg sync.WaitGroup
		sem := make(chan struct{}, runtime.GOMAXPROCS(0)*4)
		for _, m := range ms {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				if err := m.serf.Shutdown(); err != nil {
					p.tb.Errorf("shutting down %s: %v", m.name, err)
				}
			}()
		}
		wg.Wait()
		close(p.stop)
		p.drains.Wait()
	})
}

func (p *testPool) dumpLogs() {
	for _, l := range p.logs.tail() {
		p.tb.Log(l)
	}
}

// ---- event tracking ----

type evKind int

const (
	evJoin evKind = iota
	evFailed
)

type obsKey struct{ target, observer string }

type expectedFailures struct {
	mu    sync.Mutex
	names map[string]bool
}

func (e *expectedFailures) add(name string) {
	e.mu.Lock()
	e.names[name] = true
	e.mu.Unlock()
}

func (e *expectedFailures) has(name string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.names[name]
}

type eventTracker struct {
	expected *expectedFailures

	noiseBox
	joined   map[obsKey]time.Time // first EventMemberJoin
	failed   map[obsKey]time.Time // latest EventMemberFailed
	isFailed map[obsKey]bool
}

func newEventTracker(expected *expectedFailures) *eventTracker {
	return &eventTracker{
		expected: expected,
		joined:   map[obsKey]time.Time{},
		failed:   map[obsKey]time.Time{},
		isFailed: map[obsKey]bool{},
	}
}

func (t *eventTracker) record(observer string, e serf.MemberEvent, at time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.frozen {
		return
	}
	for _, m := range e.Members {
		k := obsKey{m.Name, observer}
		switch e.Type {
		case serf.EventMemberJoin:
			if _, ok := t.joined[k]; !ok {
				t.joined[k] = at
			}
			if t.isFailed[k] {
				t.c.flaps++
				t.isFailed[k] = false
			}
		case serf.EventMemberFailed:
			t.failed[k] = at
			t.isFailed[k] = true
			if !t.expected.has(m.Name) {
				t.c.failedEvents++
			}
		case serf.EventMemberLeave:
			t.c.leaves++
		}
	}
}

// waitFor waits until each observer has had a kind event about target at
// or after since, and returns the latencies from since, sorted.
func (t *eventTracker) waitFor(kind evKind, target string, observers []string, since time.Time, timeout time.Duration) ([]time.Duration, error) {
	deadline := time.Now().Add(timeout)
	for {
		lat := make([]time.Duration, 0, len(observers))
		var missing []string
		t.mu.Lock()
		for _, o := range observers {
			var at time.Time
			var ok bool
			if kind == evJoin {
				at, ok = t.joined[obsKey{target, o}]
			} else {
				at, ok = t.failed[obsKey{target, o}]
			}
			if ok && !at.Before(since) {
				lat = append(lat, at.Sub(since))
			} else {
				missing = append(missing, o)
			}
		}
		t.mu.Unlock()
		if len(missing) == 0 {
			sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
			return lat, nil
		}
		if time.Now().After(deadline) {
			if len(missing) > 10 {
				missing = append(missing[:10], "...")
			}
			return nil, fmt.Errorf("after %v, %d of %d members have not seen it: %s",
				timeout, len(observers)-len(lat), len(observers), strings.Join(missing, ", "))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// ---- log scanning ----

// logScanner is every member's log output: it counts failure-detector
// noise about live members and keeps the last lines for failure reports.
// noiseBox holds noise counts behind a mutex until it is frozen; the
// event tracker and the log scanner both count into one.
type noiseBox struct {
	mu     sync.Mutex
	frozen bool
	c      noiseCounts
}

func (b *noiseBox) freeze() {
	b.mu.Lock()
	b.frozen = true
	b.mu.Unlock()
}

func (b *noiseBox) counts() noiseCounts {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.c
}

type logScanner struct {
	expected *expectedFailures

	noiseBox
	ring []string
	next int
}

const logTail = 200

func newLogScanner(expected *expectedFailures) *logScanner {
	return &logScanner{expected: expected, ring: make([]string, 0, logTail)}
}

var (
	logSuspect     = []byte("memberlist: Suspect ")
	logSuspectEnd  = []byte(" has failed")
	logMarking     = []byte("memberlist: Marking ")
	logMarkingEnd  = []byte(" as failed")
	logRefute      = []byte("Refuting a suspect message")
	logRefuteDead  = []byte("Refuting a dead message")
	logDebugPrefix = []byte("[DEBUG]")
)

// between returns what lies in line between start and end.
func between(line, start, end []byte) (string, bool) {
	i := bytes.Index(line, start)
	if i < 0 {
		return "", false
	}
	rest := line[i+len(start):]
	j := bytes.Index(rest, end)
	if j < 0 {
		return "", false
	}
	return string(rest[:j]), true
}

func (l *logScanner) Write(b []byte) (int, error) {
	// log.Logger writes one line per call.
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.frozen {
		return len(b), nil
	}
	if name, ok := between(b, logSuspect, logSuspectEnd); ok && !l.expected.has(name) {
		l.c.suspicions++
	} else if name, ok := between(b, logMarking, logMarkingEnd); ok && !l.expected.has(name) {
		l.c.deadMarks++
	} else if bytes.Contains(b, logRefute) {
		l.c.refutes++
	} else if bytes.Contains(b, logRefuteDead) {
		l.c.deadRefutes++
	}
	if !bytes.Contains(b, logDebugPrefix) {
		line := strings.TrimRight(string(b), "\n")
		if len(l.ring) < logTail {
			l.ring = append(l.ring, line)
		} else {
			l.ring[l.next] = line
			l.next = (l.next + 1) % logTail
		}
	}
	return len(b), nil
}

func (l *logScanner) tail() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append(append([]string(nil), l.ring[l.next:]...), l.ring[:l.next]...)
}

package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/structs"
)

// bench measures a running corral through its API: throughput of many
// concurrent batch sessions, then latencies of sessions run one at a time.
func (c *cli) bench(ctx context.Context, args []string) error {
	f := c.newFlags("bench", "[flags]",
		"Measure a running corral (e.g. `corral dev`): submit -n batch sessions running `true`\n"+
			"from -concurrency submitters and wait until all have ended; then run -latency-runs\n"+
			"sessions one at a time and report submit->RUNNING and submit->TERMINATED latencies.", false)
	n := f.Int("n", 200, "number of sessions of the throughput run")
	runs := f.Int("latency-runs", 20, "number of sessions of the latency run")
	conc := f.Int("concurrency", 32, "concurrent submitters (and followers) of the throughput run")
	cpu := f.String("cpu", "0.05", "CPU cores per session")
	mem := f.String("mem", "16M", "memory per session")
	driver := f.String("driver", "", "driver of the sessions' kernels (the server's default when empty)")
	pid := f.Int("pid", 0, "PID of the corral server process, to report its resident memory")
	cliProcs := f.Int("cli", 0, "also submit the -n sessions through this many parallel `corral session create -wait`\n"+
		"processes (the CLI's own path: process start, create, follow) and report that rate")
	waves := f.Int("waves", 1, "soak: run the throughput phase this many times; after each wave force a GC of ended\n"+
		"sessions (corral system gc -older-than 0) and report the server's state size and memory (admin key)")
	timeout := f.Duration("timeout", 10*time.Minute, "give up after this long")
	if err := f.parseNone(args); err != nil {
		return err
	}
	if *n < 0 || *runs < 0 || *conc < 1 {
		return f.usageErr("-n and -latency-runs must be >= 0 and -concurrency >= 1")
	}
	if *waves < 1 || *cliProcs < 0 {
		return f.usageErr("-waves must be >= 1 and -cli >= 0")
	}
	cpuQ, err := structs.ParseQuantity(*cpu)
	if err != nil || cpuQ <= 0 {
		return f.usageErr("invalid -cpu %q: want a positive number of cores", *cpu)
	}
	memQ, err := structs.ParseBytes(*mem)
	if err != nil || memQ <= 0 {
		return f.usageErr("invalid -mem %q: want a size such as 16M", *mem)
	}
	client, err := f.client()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()

	res := structs.Slots{structs.SlotCPU: cpuQ, structs.SlotMem: memQ}
	newReq := func() *api.CreateSessionRequest {
		return &api.CreateSessionRequest{Type: structs.SessionTypeBatch, Driver: *driver, Command: []string{"true"}, Resources: res.Copy()}
	}
	agents, err := client.ListAgents(ctx)
	if err != nil {
		return err
	}
	alive := 0
	for _, a := range agents {
		if a.Status == structs.AgentAlive {
			alive++
		}
	}
	if alive == 0 {
		return fmt.Errorf("no ALIVE agent at %s to run sessions on: start `corral dev` (or an agent) first", client.Address())
	}
	timedOut := func(err error) error {
		if ctx.Err() == context.DeadlineExceeded {
			return fmt.Errorf("gave up after -timeout %s", *timeout)
		}
		return err
	}
	fmt.Fprintf(c.stdout, "corral bench against %s (%d ALIVE agents): batch sessions running `true` with %s\n", client.Address(), alive, res)

	failed := 0
	var first *api.SystemStats
	for wave := 1; *n > 0 && wave <= *waves; wave++ {
		t, err := benchThroughput(ctx, client, newReq, *n, *conc)
		if err != nil {
			return timedOut(err)
		}
		label := "throughput"
		if *waves > 1 {
			label = fmt.Sprintf("wave %d/%d", wave, *waves)
		}
		fmt.Fprintf(c.stdout, "%s: %d sessions from %d submitters: submitted in %s (%.1f/s), all ended after %s: %.1f sessions/s; %s\n",
			label, *n, *conc, formatDuration(t.submit), rate(t.submitted, t.submit), formatDuration(t.total), rate(t.submitted, t.total), t.summary())
		failed += *n - t.results["SUCCESS"]
		if *waves > 1 {
			st, err := benchCollect(ctx, client)
			if err != nil {
				return timedOut(err)
			}
			if first == nil {
				first = st
			}
			mib := func(b uint64) string { return structs.FormatBytes(structs.Whole(int64(b))) }
			fmt.Fprintf(c.stdout, "  after GC: %d sessions, %d kernels in the state; snapshot %s (%.2fx wave 1), heap %s, RSS %s (%.2fx), anonymous RSS %s (%.2fx wave 1)\n",
				st.Sessions, st.Kernels, structs.FormatBytes(structs.Whole(st.SnapshotBytes)), ratio(st.SnapshotBytes, first.SnapshotBytes),
				mib(st.HeapBytes), mib(st.RSSBytes), ratio(int64(st.RSSBytes), int64(first.RSSBytes)), mib(st.AnonRSSBytes), ratio(int64(st.AnonRSSBytes), int64(first.AnonRSSBytes)))
		}
	}
	if *cliProcs > 0 && *n > 0 {
		took, bad, err := benchCLI(ctx, f.address, *cpu, *mem, *n, *cliProcs)
		if err != nil {
			return timedOut(err)
		}
		fmt.Fprintf(c.stdout, "cli: %d sessions through %d parallel `corral session create -wait` processes: all ended after %s: %.1f sessions/s; %d failed\n",
			*n, *cliProcs, formatDuration(took), rate(*n, took), bad)
		failed += bad
	}
	if *runs > 0 {
		l, err := benchLatency(ctx, client, newReq, *runs)
		if err != nil {
			return timedOut(err)
		}
		fmt.Fprintf(c.stdout, "latency: %d sessions one at a time; %s\n", *runs, l.summary())
		fmt.Fprintf(c.stdout, "  submit -> RUNNING     %s\n", percentiles(l.running))
		fmt.Fprintf(c.stdout, "  submit -> TERMINATED  %s\n", percentiles(l.terminated))
		failed += *runs - l.results["SUCCESS"]
	}
	if *pid > 0 {
		rss, err := readRSS(*pid)
		if err != nil {
			fmt.Fprintf(c.stderr, "Warning: %v\n", err)
		} else {
			fmt.Fprintf(c.stdout, "server RSS: %s (pid %d)\n", structs.FormatBytes(structs.Whole(rss)), *pid)
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d sessions did not end in SUCCESS", failed, *n+*runs)
	}
	return nil
}

// benchResults counts sessions by outcome: "SUCCESS", or status/result,
// or "submit failed".
type benchResults struct {
	results  map[string]int
	firstErr error
}

func (r *benchResults) add(key string, err error) {
	if r.results == nil {
		r.results = map[string]int{}
	}
	r.results[key]++
	if err != nil && r.firstErr == nil {
		r.firstErr = err
	}
}

func (r *benchResults) addSession(s *structs.Session) {
	if s.Result == structs.ResultSuccess {
		r.add("SUCCESS", nil)
		return
	}
	r.add(string(s.Status)+"/"+string(s.Result), nil)
}

// summary is "200 SUCCESS" or "198 SUCCESS, 2 ERROR/FAILURE (first error: ...)".
func (r *benchResults) summary() string {
	keys := make([]string, 0, len(r.results))
	for k := range r.results {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		return r.results[keys[i]] > r.results[keys[j]] || (r.results[keys[i]] == r.results[keys[j]] && keys[i] < keys[j])
	})
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%d %s", r.results[k], k)
	}
	s := strings.Join(parts, ", ")
	if r.firstErr != nil {
		s += fmt.Sprintf(" (first error: %s)", oneLine(r.firstErr.Error()))
	}
	return s
}

type throughput struct {
	benchResults
	submitted     int
	submit, total time.Duration
}

// benchThroughput submits n sessions from conc goroutines while as many
// followers wait for each to end; it returns when all have ended.
func benchThroughput(ctx context.Context, client *api.Client, newReq func() *api.CreateSessionRequest, n, conc int) (*throughput, error) {
	t := &throughput{}
	var mu sync.Mutex
	jobs := make(chan struct{}, n)
	for range n {
		jobs <- struct{}{}
	}
	close(jobs)
	created := make(chan *api.SessionDetail, n)
	start := time.Now()

	var submitters sync.WaitGroup
	for range conc {
		submitters.Go(func() {
			for range jobs {
				d, err := client.CreateSession(ctx, newReq())
				mu.Lock()
				if err != nil {
					t.add("submit failed", err)
				} else {
					t.submitted++
				}
				mu.Unlock()
				if err == nil {
					created <- d
				}
			}
		})
	}
	var followers sync.WaitGroup
	for range conc {
		followers.Go(func() {
			for d := range created {
				d, err := followSession(ctx, client, d, func(s *structs.Session) bool { return s.Status.Terminal() }, nil)
				mu.Lock()
				if err != nil {
					t.add("follow failed", err)
				} else {
					t.addSession(d.Session)
				}
				mu.Unlock()
			}
		})
	}
	submitters.Wait()
	t.submit = time.Since(start)
	close(created)
	followers.Wait()
	t.total = time.Since(start)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if t.submitted == 0 && t.firstErr != nil {
		return nil, t.firstErr
	}
	return t, nil
}

type latency struct {
	benchResults
	running, terminated []time.Duration
}

// benchLatency runs sessions one at a time and measures, from the start of
// each submission, when the server recorded main1 RUNNING and the session
// TERMINATED (same machine, so the server's clock is the client's).
func benchLatency(ctx context.Context, client *api.Client, newReq func() *api.CreateSessionRequest, runs int) (*latency, error) {
	l := &latency{}
	for range runs {
		start := time.Now()
		d, err := client.CreateSession(ctx, newReq())
		if err != nil {
			return nil, err
		}
		d, err = followSession(ctx, client, d, func(s *structs.Session) bool { return s.Status.Terminal() }, nil)
		if err != nil {
			return nil, err
		}
		s := d.Session
		l.addSession(s)
		if t, ok := runningAt(d); ok {
			l.running = append(l.running, t.Sub(start))
		}
		if s.Status == structs.SessionTerminated && !s.TerminatedAt.IsZero() {
			l.terminated = append(l.terminated, s.TerminatedAt.Sub(start))
		}
	}
	return l, nil
}

// runningAt is when main1 started: its kernel's RUNNING entry, or the
// session's (a short session may go from PREPARING to TERMINATED in one
// batch of kernel updates, with no RUNNING of its own).
func runningAt(d *api.SessionDetail) (time.Time, bool) {
	histories := [][]structs.StatusChange{}
	for _, k := range d.Kernels {
		if k.Hostname == "main1" {
			histories = append(histories, k.History)
		}
	}
	histories = append(histories, d.Session.History)
	for _, h := range histories {
		for _, ch := range h {
			if ch.Status == string(structs.KernelRunning) {
				return ch.Time, true
			}
		}
	}
	return time.Time{}, false
}

// benchCLI runs n batch sessions through procs parallel CLI processes of
// this binary (`session create -type batch -wait -- true`) and counts the
// ones that did not exit 0.
func benchCLI(ctx context.Context, addr, cpu, mem string, n, procs int) (time.Duration, int, error) {
	self, err := os.Executable()
	if err != nil {
		return 0, 0, fmt.Errorf("finding this binary to run it as the CLI: %w", err)
	}
	jobs := make(chan struct{}, n)
	for range n {
		jobs <- struct{}{}
	}
	close(jobs)
	var mu sync.Mutex
	bad := 0
	var firstErr error
	start := time.Now()
	var wg sync.WaitGroup
	for range procs {
		wg.Go(func() {
			for range jobs {
				cmd := exec.CommandContext(ctx, self, "session", "create", "-address", addr, "-type", "batch", "-cpu", cpu, "-mem", mem, "-wait", "--", "true")
				out, err := cmd.CombinedOutput()
				if err != nil {
					mu.Lock()
					bad++
					if firstErr == nil {
						firstErr = fmt.Errorf("%v: %s", err, oneLine(string(out)))
					}
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return 0, 0, err
	}
	if bad == n {
		return 0, bad, firstErr
	}
	return time.Since(start), bad, nil
}

// benchCollect forces a GC of every ended session and measures the server.
func benchCollect(ctx context.Context, client *api.Client) (*api.SystemStats, error) {
	if _, err := client.SystemGC(ctx, 0); err != nil {
		return nil, fmt.Errorf("forcing a GC (needs an admin key): %w", err)
	}
	return client.SystemStats(ctx)
}

func ratio(a, b int64) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}

func rate(count int, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(count) / d.Seconds()
}

// percentiles formats p50, p95 and max (nearest rank) of ds.
func percentiles(ds []time.Duration) string {
	if len(ds) == 0 {
		return "no samples"
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	at := func(q float64) time.Duration {
		return s[max(0, int(math.Ceil(q*float64(len(s))))-1)]
	}
	return fmt.Sprintf("p50 %-9s p95 %-9s max %s", formatDuration(at(0.50)), formatDuration(at(0.95)), formatDuration(s[len(s)-1]))
}

// readRSS returns the resident memory of a process in bytes (Linux).
func readRSS(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("cannot read the RSS of pid %d: %w", pid, err)
	}
	defer f.Close()
	rss, err := parseVmRSS(f)
	if err != nil {
		return 0, fmt.Errorf("pid %d: %w", pid, err)
	}
	return rss, nil
}

// parseVmRSS reads the VmRSS line ("VmRSS:   123456 kB") of /proc/PID/status.
func parseVmRSS(r io.Reader) (int64, error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 3 && fields[0] == "VmRSS:" && fields[2] == "kB" {
			kb, err := strconv.ParseInt(fields[1], 10, 64)
			if err != nil {
				return 0, fmt.Errorf("bad VmRSS line %q", sc.Text())
			}
			return kb * 1024, nil
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("no VmRSS in /proc status (a kernel thread or a zombie?)")
}

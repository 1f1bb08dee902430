package agent

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/corral-dev/corral/plugins/drivers"
	"github.com/corral-dev/corral/rpc"
	"github.com/corral-dev/corral/structs"
)

// countingDriver is a driver whose tasks exit 0 at once; it counts starts.
type countingDriver struct {
	drivers.Driver // nil: only the methods below are called
	starts         atomic.Int32
	mu             sync.Mutex
	exits          map[string]chan *drivers.ExitResult
}

func (d *countingDriver) Name() string { return "fake" }

func (d *countingDriver) Start(ctx context.Context, cfg *drivers.TaskConfig) (*drivers.TaskHandle, error) {
	d.starts.Add(1)
	d.mu.Lock()
	defer d.mu.Unlock()
	ch := make(chan *drivers.ExitResult, 1)
	ch <- &drivers.ExitResult{ExitCode: 0}
	d.exits[cfg.ID] = ch
	return &drivers.TaskHandle{Driver: "fake"}, nil
}

func (d *countingDriver) Wait(ctx context.Context, id string) (<-chan *drivers.ExitResult, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.exits[id], nil
}

func (d *countingDriver) Destroy(ctx context.Context, id string, force bool) error { return nil }

func (d *countingDriver) Recover(ctx context.Context, h *drivers.TaskHandle) error {
	return drivers.ErrTaskNotFound
}

// testAgent builds an agent around a data dir and a driver, without
// gossip or a server: the test hands it watch messages and reads the
// reports it queues.
func testAgent(t *testing.T, dir string, d drivers.Driver) *Agent {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	a := &Agent{cfg: Config{Name: "test", DataDir: dir}, id: "agent-1", logger: slog.New(slog.DiscardHandler),
		drivers: map[string]drivers.Driver{d.Name(): d}, kernels: map[string]*kernelRunner{}, ctx: ctx, cancel: cancel}
	a.reporter = newReporter(a)
	a.overlays = &overlays{a: a}
	var err error
	if a.store, err = openLocalStore(dir); err != nil {
		t.Fatal(err)
	}
	a.recoverKernels()
	return a
}

func (a *Agent) stopForTest() {
	a.cancel()
	a.wg.Wait()
	_ = a.store.close()
}

// deliverAll plays a server that accepts every queued report; it returns them.
func (a *Agent) deliverAll() []*structs.KernelUpdate {
	a.reporter.mu.Lock()
	batch := a.reporter.pending
	a.reporter.pending = nil
	a.reporter.mu.Unlock()
	var out []*structs.KernelUpdate
	for _, q := range batch {
		out = append(out, q.update)
		if q.delivered != nil {
			q.delivered()
		}
	}
	return out
}

func waitDone(t *testing.T, a *Agent, id string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		a.mu.Lock()
		r := a.kernels[id]
		a.mu.Unlock()
		if r != nil && r.isDone() {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("kernel %s did not finish", id)
}

func lastStatus(ups []*structs.KernelUpdate, id string) *structs.KernelUpdate {
	var last *structs.KernelUpdate
	for _, u := range ups {
		if u.KernelID == id {
			last = u
		}
	}
	return last
}

func TestKernelNeverStartedTwice(t *testing.T) {
	dir := t.TempDir()
	d := &countingDriver{exits: map[string]chan *drivers.ExitResult{}}
	k := &structs.Kernel{ID: "k1", SessionID: "s1", Driver: "fake", Status: structs.KernelScheduled}
	stale := func() *rpc.WatchResponse {
		return &rpc.WatchResponse{Full: true, Kernels: []*structs.Kernel{k.Copy()}}
	}

	a := testAgent(t, dir, d)
	a.handleAssignments(stale())
	waitDone(t, a, "k1")
	ups := a.deliverAll()
	if u := lastStatus(ups, "k1"); u == nil || u.Status != structs.KernelTerminated || u.ExitCode == nil || *u.ExitCode != 0 {
		t.Fatalf("first run: final report %+v, want TERMINATED with exit code 0", u)
	}
	// The server saw it end; then a server with an old state lists the
	// kernel as SCHEDULED again.
	ended := k.Copy()
	ended.Status = structs.KernelTerminated
	a.handleAssignments(&rpc.WatchResponse{Kernels: []*structs.Kernel{ended}})
	a.handleAssignments(stale())
	if n := d.starts.Load(); n != 1 {
		t.Fatalf("driver started the kernel %d times, want 1", n)
	}
	u := lastStatus(a.deliverAll(), "k1")
	if u == nil || u.Status != structs.KernelTerminated || u.ExitCode == nil || *u.ExitCode != 0 {
		t.Fatalf("relisted kernel: report %+v, want the recorded TERMINATED, exit code 0", u)
	}
	a.stopForTest()

	// After an agent restart with the same data dir, still not twice.
	a = testAgent(t, dir, d)
	defer a.stopForTest()
	a.deliverAll()
	a.handleAssignments(stale())
	running := k.Copy()
	running.Status = structs.KernelRunning
	a.handleAssignments(&rpc.WatchResponse{Full: true, Kernels: []*structs.Kernel{running}})
	if n := d.starts.Load(); n != 1 {
		t.Fatalf("after restart the driver started the kernel %d times in all, want 1", n)
	}
	ups = a.deliverAll()
	if len(ups) != 2 {
		t.Fatalf("after restart: %d reports, want 2: %+v", len(ups), ups)
	}
	for _, u := range ups {
		if u.Status != structs.KernelTerminated || u.ExitCode == nil || *u.ExitCode != 0 {
			t.Errorf("after restart: report %+v, want the recorded TERMINATED, exit code 0", u)
		}
	}

	// A kernel whose start was recorded but not its end gets an ERROR.
	if _, err := a.store.markStarted("k2", time.Now()); err != nil {
		t.Fatal(err)
	}
	k2 := &structs.Kernel{ID: "k2", SessionID: "s2", Driver: "fake", Status: structs.KernelScheduled}
	a.handleAssignments(&rpc.WatchResponse{Full: true, Kernels: []*structs.Kernel{k2}})
	if u := lastStatus(a.deliverAll(), "k2"); u == nil || u.Status != structs.KernelError || u.Info != errAlreadyRan {
		t.Fatalf("k2: report %+v, want ERROR %q", u, errAlreadyRan)
	}
	if n := d.starts.Load(); n != 1 {
		t.Fatalf("driver started %d kernels in all, want 1", n)
	}
}

func TestPruneStarted(t *testing.T) {
	s, err := openLocalStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	now := time.Now()
	if _, err := s.markStarted("old", now.Add(-8*24*time.Hour)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.markStarted("new", now); err != nil {
		t.Fatal(err)
	}
	if n, err := s.pruneStarted(now.Add(-startedRetention)); err != nil || n != 1 {
		t.Fatalf("pruneStarted = %d, %v; want 1 record pruned", n, err)
	}
	if rec, _ := s.started("old"); rec != nil {
		t.Error("old record survived pruning")
	}
	if rec, _ := s.started("new"); rec == nil {
		t.Error("new record was pruned")
	}
}

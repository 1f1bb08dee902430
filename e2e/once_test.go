package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/structs"
)

// onceRounds is how many times TestExactlyOnceAcrossFailovers restarts a
// follower and kills the leader.
const onceRounds = 10

// TestExactlyOnceAcrossFailovers: a follower is SIGKILLed in a burst of
// submissions and stays down while the log grows and the batch sessions
// end; it restarts far behind, and the leader
// is SIGKILLed at once (agents reconnect, some to the follower still
// catching up) while more sessions are submitted (each with an
// idempotency key, retried on errors as the CLI does); onceRounds times
// in a row. Every kernel leaves one file per start in a shared
// directory: no kernel may have started twice, and no submission may have
// made two sessions.
func TestExactlyOnceAcrossFailovers(t *testing.T) {
	if testing.Short() {
		t.Skip("ten rounds of follower restarts and leader kills")
	}
	if os.Geteuid() != 0 {
		t.Skip("fault e2e needs root (network namespaces)")
	}
	began := time.Now()
	fc := newFltCluster(t, true)
	starts := filepath.Join(fc.bed.Dir(), "starts")
	if err := os.Mkdir(starts, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(starts, 0o1777); err != nil { // kernels may run as any user
		t.Fatal(err)
	}
	t.Logf("bed ready in %v", time.Since(began).Round(time.Millisecond))

	var mu sync.Mutex
	marks := map[string]string{} // mark -> session ID acknowledged
	var failed []string
	submit := func(n int, gap time.Duration) {
		for range n {
			req, mark := fc.request(structs.SessionTypeBatch, "1", 0)
			req.Command = []string{"sh", "-c", fmt.Sprintf(`touch %s/"$CORRAL_KERNEL_ID.$$"; sleep 1 # %s`, starts, mark)}
			key := "once-" + mark
			var d *api.SessionDetail
			var err error
			for attempt := range 20 {
				var live []*fltNode
				for _, s := range fc.servers {
					if s.running() {
						live = append(live, s)
					}
				}
				if len(live) == 0 {
					time.Sleep(200 * time.Millisecond)
					continue
				}
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				d, err = live[rand.IntN(len(live))].c.CreateSessionWithKey(ctx, req, key)
				cancel()
				if err == nil {
					break
				}
				time.Sleep(time.Duration(100*(attempt+1)) * time.Millisecond)
			}
			mu.Lock()
			if err != nil {
				failed = append(failed, fmt.Sprintf("%s: %v", mark, err))
			} else {
				marks[mark] = d.Session.ID
				fc.ack(d.Session.ID)
			}
			mu.Unlock()
			time.Sleep(gap)
		}
	}

	waitEnded := func(ids []string) {
		for _, id := range ids {
			fc.wait(id, 60*time.Second, "session "+id+" ended", func(d *api.SessionDetail) error {
				if !d.Session.Status.Terminal() {
					return fmt.Errorf("%s (%s)", d.Session.Status, d.Session.StatusInfo)
				}
				return nil
			})
		}
	}
	for round := 1; round <= onceRounds; round++ {
		// A follower dies in a burst of submissions, some of its kernels
		// just SCHEDULED, and stays down while the log grows by more than
		// a replication batch and the kernels end.
		leader := fc.leader()
		follower := (leader + 1 + rand.IntN(2)) % 3
		before := len(fc.ackedIDs())
		burst := make(chan struct{})
		go func() { defer close(burst); submit(8, 30*time.Millisecond) }()
		time.Sleep(time.Duration(100+rand.IntN(200)) * time.Millisecond)
		fc.servers[follower].p.kill9()
		<-burst
		for i := range 80 {
			err := fc.try(func(c *api.Client) error {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				_, err := c.DrainAgent(ctx, fc.agents[i%3].id, false, false)
				return err
			})
			if err != nil {
				t.Fatalf("eligible: %v", err)
			}
		}
		waitEnded(fc.ackedIDs()[before:])
		// It comes back far behind; the leader dies at once, so agents
		// reconnect, some of them to the server still catching up, while
		// more sessions are submitted.
		done := make(chan struct{})
		go func() { defer close(done); submit(6, 150*time.Millisecond) }()
		fc.startServer(follower, true)
		time.Sleep(300 * time.Millisecond)
		killed := time.Now()
		fc.servers[leader].p.kill9()
		took, next := fc.measureFailover(killed, leader)
		fc.startServer(leader, true)
		fc.waitServerBack(follower, 30*time.Second)
		fc.waitServerBack(leader, 30*time.Second)
		<-done
		t.Logf("round %d: %s down and back, leader %s killed, %s leads after %v", round,
			fc.servers[follower].name, fc.servers[leader].name, fc.servers[next].name, took.Round(time.Millisecond))
	}
	if len(failed) > 0 {
		t.Errorf("%d submissions failed after 20 tries: %s", len(failed), strings.Join(failed, "; "))
	}

	// Every acknowledged session ends; count its sessions and kernel starts.
	waitEnded(fc.ackedIDs())
	var sessions []*structs.Session
	if err := fc.try(func(c *api.Client) (err error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		sessions, err = c.ListSessions(ctx, "")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	perMark := map[string]int{}
	for _, s := range sessions {
		d, err := fc.getSession(s.ID)
		if err != nil {
			t.Fatal(err)
		}
		if m := markOf(d); m != "" {
			perMark[m]++
		}
	}
	for m := range marks {
		if perMark[m] != 1 {
			t.Errorf("submission %s made %d sessions, want 1", m, perMark[m])
		}
	}
	files, err := os.ReadDir(starts)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatalf("no kernel left a start file in %s", starts)
	}
	perKernel := map[string]int{}
	for _, f := range files {
		id, _, _ := strings.Cut(f.Name(), ".")
		perKernel[id]++
	}
	twice := 0
	for id, n := range perKernel {
		if n > 1 {
			twice++
			t.Errorf("kernel %s started %d times", id, n)
		}
	}
	t.Logf("%d submissions, %d sessions, %d kernel starts, %d kernels started twice", len(marks), len(sessions), len(files), twice)
	checkCluster(t, fc, "after the failovers")
	t.Logf("test body took %v", time.Since(began).Round(time.Millisecond))
}

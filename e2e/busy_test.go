package e2e

import (
	"context"
	"fmt"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/structs"
)

// TestBusyNodeLosesNothing saturates every core of the machine (the
// agent's host) with busy loops for 10 s while 100 batch sessions run on
// an agent with the most trigger-happy settings there are: tuned gossip
// (100 ms probe timeouts) and a grace period of 2 s. Gossip may well
// suspect or fail the busy agent; its RPC heartbeats still reach the
// server, so it is never DISCONNECTED, let alone LOST, and every session
// ends SUCCESS.
func TestBusyNodeLosesNothing(t *testing.T) {
	ports := serverPorts{http: freePort(t), rpc: freePort(t), serf: freePort(t)}
	addr := "http://" + ports.http
	srv := startServerProc(t, t.TempDir(), ports, "-agent-lost-after", "2s")
	agentDir := t.TempDir()
	reapKernels(t, agentDir)
	agent := start(t, "agent", append([]string{"agent", "-data-dir", agentDir, "-rpc", freePort(t), "-serf", freePort(t), "-fast-gossip"}, agentJoin(t, ports)...)...)
	agentAlive(t, addr)
	tok, _ := apiTokens.Load(addr)
	c, err := api.NewClient(addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetToken(tok.(string))

	// Busy loops: twice as many as there are cores, for 10 s.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var busy []*exec.Cmd
	for range 2 * runtime.NumCPU() {
		cmd := exec.CommandContext(ctx, "sh", "-c", "while :; do :; done")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		busy = append(busy, cmd)
	}
	t.Cleanup(func() {
		for _, b := range busy {
			_ = b.Process.Kill()
			_ = b.Wait()
		}
	})
	busyFrom := time.Now()

	// 100 sessions from 8 submitters while the machine is saturated.
	const n = 100
	ids := make(chan string, n)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var createErrs []string
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 8 {
				d, err := c.CreateSession(context.Background(), &api.CreateSessionRequest{Type: structs.SessionTypeBatch,
					Command: []string{"sh", "-c", "sleep 0.5"}, Resources: structs.Slots{structs.SlotCPU: structs.Quantity(10), structs.SlotMem: structs.Whole(8 << 20)}})
				if err != nil {
					mu.Lock()
					createErrs = append(createErrs, err.Error())
					mu.Unlock()
					continue
				}
				ids <- d.Session.ID
			}
		}()
	}
	wg.Wait()
	close(ids)
	if len(createErrs) > 0 {
		t.Fatalf("%d creates failed under load: %v", len(createErrs), createErrs)
	}
	<-ctx.Done()
	t.Logf("submitted %d sessions; busy for %v", n, time.Since(busyFrom).Round(time.Millisecond))

	results := map[string]int{}
	var bad []string
	for id := range ids {
		var d *api.SessionDetail
		eventually(t, 60*time.Second, "session "+id+" ends", func() error {
			var err error
			if d, err = c.GetSession(context.Background(), id); err != nil {
				return err
			}
			if !d.Session.Status.Terminal() {
				return fmt.Errorf("%s is %s", id, d.Session.Status)
			}
			return nil
		})
		key := fmt.Sprintf("%s/%s", d.Session.Status, d.Session.Result)
		results[key]++
		if d.Session.Result != structs.ResultSuccess {
			bad = append(bad, fmt.Sprintf("%s: %s (%s)", id[:8], key, d.Session.StatusInfo))
		}
	}
	out := srv.output()
	disconnects := strings.Count(out, "to=DISCONNECTED")
	failed := strings.Count(out, "gossip failed an agent")
	t.Logf("FIGURE busy node: %v; agent failed by gossip %d times, DISCONNECTED %d times", results, failed, disconnects)
	if len(bad) > 0 {
		t.Fatalf("%d of %d sessions did not succeed on a busy node: %v", len(bad), n, bad)
	}
	if disconnects > 0 {
		t.Fatalf("the busy agent was taken for DISCONNECTED %d times:\n%s", disconnects, out)
	}
	_ = agent
}

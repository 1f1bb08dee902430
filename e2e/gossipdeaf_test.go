package e2e

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/structs"
)

// TestGossipDeafAgentKeepsSessions makes one agent of the secured fault
// bed deaf to gossip (its host drops every packet from or for the gossip
// ports) while its RPC port works: gossip fails it, its heartbeats still
// reach the servers, so it stays ALIVE, its sessions run on and it even
// takes new ones, far past the heartbeat TTL and the (2 s) grace period.
// Once gossip hears it again it is a member again; nothing was restarted.
func TestGossipDeafAgentKeepsSessions(t *testing.T) {
	fc := newFltCluster(t, true)
	victim := fc.agents[0]
	req, mark := fc.request(structs.SessionTypeInteractive, "600", 0)
	inter := fc.placeOn(victim, req)
	breq, bmark := fc.request(structs.SessionTypeBatch, "12", 0)
	batch := fc.placeOn(victim, breq)
	before := markCounts()
	if before[mark] != 1 || before[bmark] != 1 {
		t.Fatalf("processes before: %v", before)
	}

	ports := []uint16{}
	for _, p := range []string{fltAgentSerf, fltServerSerf} {
		n, _ := strconv.Atoi(p)
		ports = append(ports, uint16(n))
	}
	if err := victim.host.DropPorts(ports...); err != nil {
		t.Skipf("cannot filter packets on this machine (iptables; make deps installs it): %v", err)
	}
	deafAt := time.Now()
	allowed := false
	allow := func() {
		if !allowed {
			allowed = true
			if err := victim.host.AllowPorts(); err != nil {
				t.Error(err)
			}
		}
	}
	t.Cleanup(allow)
	eventually(t, 30*time.Second, "gossip fails "+victim.name, func() error {
		for _, s := range fc.servers {
			if strings.Contains(s.p.output(), "gossip failed an agent") && strings.Contains(s.p.output(), victim.id) {
				return nil
			}
		}
		return fmt.Errorf("no server has seen gossip fail %s yet", victim.name)
	})
	failedAfter := time.Since(deafAt)
	// Past the heartbeat TTL (3 s) and the grace period (2 s), twice over.
	time.Sleep(10 * time.Second)
	agents, err := fc.listAgents()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range agents {
		if a.ID == victim.id && a.Status != structs.AgentAlive {
			t.Fatalf("%s, deaf to gossip but talking RPC, is %s (%s)", victim.name, a.Status, a.StatusInfo)
		}
	}
	fc.wait(inter.Session.ID, 5*time.Second, "interactive session still running", fltRunning)
	// New work still lands on it and runs.
	nreq, nmark := fc.request(structs.SessionTypeInteractive, "600", 0)
	fresh := fc.placeOn(victim, nreq)
	t.Logf("gossip failed %s after %v; 10 s later it is ALIVE, its sessions run and it took a new one", victim.name, failedAfter.Round(time.Millisecond))

	allow()
	// The batch session ends on its own with exit 0, reported over RPC.
	d := fc.wait(batch.Session.ID, 30*time.Second, "batch session ends", func(d *api.SessionDetail) error {
		if !d.Session.Status.Terminal() {
			return fmt.Errorf("%s", d.Session.Status)
		}
		return nil
	})
	if d.Session.Result != structs.ResultSuccess {
		t.Fatalf("batch session on the gossip-deaf agent: %s/%s (%s)", d.Session.Status, d.Session.Result, d.Session.StatusInfo)
	}
	after := markCounts()
	if after[mark] != 1 || after[nmark] != 1 {
		t.Fatalf("processes after: interactive %d, new %d (want 1 each: nothing restarted, nothing killed)", after[mark], after[nmark])
	}
	for _, id := range []string{inter.Session.ID, fresh.Session.ID} {
		err := fc.try(func(c *api.Client) error {
			_, err := c.DestroySession(context.Background(), id)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	checkCluster(t, fc, "gossip-deaf agent")
}

package agent

import (
	"log/slog"
	"net/netip"
	"slices"
	"testing"

	"github.com/corral-dev/corral/netns"
)

func TestEgressConfig(t *testing.T) {
	agent := func(cfg Config) *overlays {
		a := &Agent{cfg: cfg, logger: slog.New(slog.DiscardHandler)}
		o := &overlays{a: a}
		t.Cleanup(o.close)
		return o
	}
	o1 := agent(Config{RPCAddr: "10.0.0.5:9644", SerfAddr: "10.0.0.5:9643", Join: []string{"10.0.0.1:9642"},
		KernelEgressAllow: []string{"198.51.100.0/24"}})
	e1, err := o1.egressConfig()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []netns.Port{{Proto: "tcp", Port: 9644}, {Proto: "udp", Port: 9643}, {Proto: "tcp", Port: 9642},
		{Proto: "tcp", Port: 8640}, {Proto: "udp", Port: 8642}, {Proto: "udp", Port: 4789}} {
		if !slices.Contains(e1.DenyPorts, p) {
			t.Errorf("deny ports %v lack %v", e1.DenyPorts, p)
		}
	}
	if len(e1.Allow) == 0 || e1.Allow[0] != netip.MustParsePrefix("198.51.100.0/24") {
		t.Errorf("allow %v", e1.Allow)
	}
	// A second agent in the same network namespace gets the next bridge,
	// subnet and table; the first one's going frees its slot.
	o2 := agent(Config{KernelSubnet: "10.88.0.0/16"})
	e2, err := o2.egressConfig()
	if err != nil {
		t.Fatal(err)
	}
	if e1.Bridge == e2.Bridge || e1.Subnet == e2.Subnet || e1.Table == e2.Table {
		t.Errorf("two agents share a bridge: %+v and %+v", e1, e2)
	}
	if e1.Bridge == "corral0" && (e2.Bridge != "corral1" || e2.Subnet != netip.MustParsePrefix("10.89.0.0/16") || e2.Table != "corral1") {
		t.Errorf("second agent: %s %v %s, want corral1 10.89.0.0/16 corral1", e2.Bridge, e2.Subnet, e2.Table)
	}
	o1.close()
	o3 := agent(Config{})
	if e3, err := o3.egressConfig(); err != nil || e3.Bridge != e1.Bridge {
		t.Errorf("after the first agent closed: %+v %v, want %s", e3, err, e1.Bridge)
	}
	if _, err := agent(Config{KernelSubnet: "fd00::/64"}).egressConfig(); err == nil {
		t.Error("an IPv6 kernel subnet was accepted")
	}
}

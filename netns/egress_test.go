package netns_test

import (
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/corral-dev/corral/e2e/testbed"
	"github.com/corral-dev/corral/netns"
	"github.com/vishvananda/netlink"
)

// nftList returns `nft list table inet corral` inside h, or "" when the
// table does not exist.
func nftList(t *testing.T, h *testbed.Host) string {
	t.Helper()
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("nft(8) is not installed: cannot read the rules back")
	}
	out, err := exec.Command("ip", "netns", "exec", h.NS, "nft", "list", "table", "inet", netns.EgressTable).CombinedOutput()
	if err != nil {
		return ""
	}
	return string(out)
}

// TestEgress builds the egress of host h0 and checks, with real packets,
// what its kernels reach: a server on another host (h1, which has no route
// back to the kernels' subnet: only masquerading gets replies back), not a
// denied port on a third host (h2), not each other, not h0 itself.
func TestEgress(t *testing.T) {
	bed := testbed.New(t, 3)
	h0, h1, h2 := bed.Hosts[0], bed.Hosts[1], bed.Hosts[2]
	m := manager(t, bed, h0)
	e := netns.Egress{Subnet: netip.MustParsePrefix("10.77.0.0/16"),
		DenyPorts: []netns.Port{{Proto: "tcp", Port: 8641}, {Proto: "udp", Port: 4789}}}
	if err := m.EnsureEgress(e); err != nil {
		t.Fatal(err)
	}
	// Twice: rewriting the rules and the bridge is harmless.
	if err := m.EnsureEgress(e); err != nil {
		t.Fatal(err)
	}
	rules := nftList(t, h0)
	for _, want := range []string{
		`iifname "corral0" ct state established,related accept`,
		`iifname "corral0" drop`,
		`iifname "corral0" oifname "corral0" drop`,
		`dport 8641 drop`,
		`dport 4789 drop`,
		`ip saddr 10.77.0.0/16 oifname != "corral0" masquerade`,
	} {
		if !strings.Contains(rules, want) {
			t.Errorf("rules lack %q:\n%s", want, rules)
		}
	}

	ks := map[string]string{}
	for i, name := range []string{"eg-a", "eg-b"} {
		p, err := m.Create(name)
		if err != nil {
			t.Fatal(err)
		}
		addr := netip.AddrFrom4([4]byte{10, 77, 0, byte(2 + i)})
		if err := m.AttachEgress(e, p, "eth0", addr); err != nil {
			t.Fatal(err)
		}
		// Again: harmless.
		if err := m.AttachEgress(e, p, "eth0", addr); err != nil {
			t.Fatal(err)
		}
		if got, err := netns.EgressAddr(p, "eth0"); err != nil || got != addr {
			t.Errorf("EgressAddr(%s) = %v, %v; want %v", name, got, err, addr)
		}
		ks[name] = p
	}
	withHandle(t, h0.Path(), func(h *netlink.Handle) {
		l, err := h.LinkByName(netns.EgressVethName(ks["eg-a"], "eth0"))
		if err != nil {
			t.Fatal(err)
		}
		pi := l.(*netlink.Veth).Attrs().Protinfo
		if pi == nil {
			if ls, err := h.LinkGetProtinfo(l); err == nil {
				pi = &ls
			}
		}
		if pi == nil || !pi.Isolated {
			t.Errorf("bridge port %s is not isolated: %+v", l.Attrs().Name, pi)
		}
	})

	echoServer(t, h1.Path(), h1.AddrPort(8000))
	echoServer(t, h2.Path(), h2.AddrPort(8641))
	echoServer(t, h2.Path(), h2.AddrPort(8000))
	echoServer(t, h0.Path(), h0.AddrPort(8000))
	echoServer(t, ks["eg-b"], netip.MustParseAddrPort("10.77.0.3:8000"))
	echoServer(t, ks["eg-b"], netip.MustParseAddrPort("127.0.0.1:8001"))

	mustEcho(t, ks["eg-a"], h1.AddrPort(8000))
	mustEcho(t, ks["eg-a"], h2.AddrPort(8000))
	mustNotEcho(t, ks["eg-a"], h2.AddrPort(8641))
	mustNotEcho(t, ks["eg-a"], netip.MustParseAddrPort("10.77.0.3:8000"))
	mustNotEcho(t, ks["eg-a"], h0.AddrPort(8000))
	mustNotEcho(t, ks["eg-a"], netip.AddrPortFrom(e.Gateway(), 8000))
	mustEcho(t, ks["eg-b"], h1.AddrPort(8000))
	// The host may open connections to a kernel (app tunnels).
	mustEcho(t, h0.Path(), netip.MustParseAddrPort("10.77.0.3:8000"))

	// A restarted agent keeps eg-b: eg-a's veth goes, the rest stays.
	keep := map[string]bool{netns.EgressVethName(ks["eg-b"], "eth0"): true}
	if err := m.ReconcileEgress(e, keep); err != nil {
		t.Fatal(err)
	}
	links := mustLinks(t, h0)
	if slices.Contains(links, netns.EgressVethName(ks["eg-a"], "eth0")) || !slices.Contains(links, netns.EgressVethName(ks["eg-b"], "eth0")) {
		t.Errorf("after reconcile keeping eg-b: links %v", links)
	}
	mustEcho(t, ks["eg-b"], h1.AddrPort(8000))

	// The last kernel goes: nothing is left.
	if err := m.DetachEgress(ks["eg-b"], "eth0"); err != nil {
		t.Fatal(err)
	}
	if err := m.ReconcileEgress(e, nil); err != nil {
		t.Fatal(err)
	}
	for _, l := range mustLinks(t, h0) {
		if l == "corral0" || strings.HasPrefix(l, netns.EgressVethPrefix) {
			t.Errorf("link %s left behind", l)
		}
	}
	if r := nftList(t, h0); r != "" {
		t.Errorf("table left behind:\n%s", r)
	}
	// Deleting again is not an error.
	if err := m.DeleteEgress(e); err != nil {
		t.Error(err)
	}
}

// TestEgressAllow: with allowed networks, kernels reach those and nothing
// else.
func TestEgressAllow(t *testing.T) {
	bed := testbed.New(t, 3)
	h0, h1, h2 := bed.Hosts[0], bed.Hosts[1], bed.Hosts[2]
	m := manager(t, bed, h0)
	e := netns.Egress{Allow: []netip.Prefix{netip.PrefixFrom(h1.IP, 32)}}
	if err := m.EnsureEgress(e); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.DeleteEgress(e) })
	p, err := m.Create("allow-a")
	if err != nil {
		t.Fatal(err)
	}
	if err := m.AttachEgress(e, p, "eth0", netip.MustParseAddr("10.88.0.2")); err != nil {
		t.Fatal(err)
	}
	echoServer(t, h1.Path(), h1.AddrPort(8000))
	echoServer(t, h2.Path(), h2.AddrPort(8000))
	mustEcho(t, p, h1.AddrPort(8000))
	mustNotEcho(t, p, h2.AddrPort(8000))
}

func TestEgressConfig(t *testing.T) {
	if g := (netns.Egress{}).Gateway(); g != netip.MustParseAddr("10.88.0.1") {
		t.Errorf("default gateway %v", g)
	}
	if g := (netns.Egress{Subnet: netip.MustParsePrefix("172.30.5.9/24")}).Gateway(); g != netip.MustParseAddr("172.30.5.1") {
		t.Errorf("gateway of 172.30.5.9/24: %v", g)
	}
	if a, b := netns.EgressVethName("/x/k-1", "eth0"), netns.EgressVethName("/x/k-2", "eth0"); a == b || len(a) != 15 || !strings.HasPrefix(a, "cre") {
		t.Errorf("veth names %q %q", a, b)
	}
}

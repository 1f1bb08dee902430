package netns

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/google/nftables/expr"
)

// TestEgressRules checks the rules' order and content: the accepts come
// after every drop they would otherwise bypass.
func TestEgressRules(t *testing.T) {
	e, err := Egress{Subnet: netip.MustParsePrefix("10.90.0.0/16"),
		DenyPorts: []Port{{"tcp", 8641}, {"udp", 4789}}}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range egressRules(e) {
		got = append(got, r.chain+": "+r.text)
		last := r.exprs[len(r.exprs)-1]
		switch last.(type) {
		case *expr.Verdict, *expr.Masq:
		default:
			t.Errorf("%s: ends with %T, not a verdict", r.text, last)
		}
	}
	want := []string{
		`input: iifname "corral0" ct state established,related accept`,
		`input: iifname "corral0" drop`,
		`forward: iifname "corral0" oifname "corral0" drop`,
		`forward: iifname "corral0" tcp dport 8641 drop`,
		`forward: iifname "corral0" udp dport 4789 drop`,
		`forward: iifname "corral0" accept`,
		`forward: oifname "corral0" ct state established,related accept`,
		`forward: oifname "corral0" drop`,
		`postrouting: ip saddr 10.90.0.0/16 oifname != "corral0" masquerade`,
	}
	if !slices.Equal(got, want) {
		t.Errorf("rules:\n%q\nwant\n%q", got, want)
	}

	// With allowed networks: those after the port drops, then a drop.
	e.Allow = []netip.Prefix{netip.MustParsePrefix("192.0.2.7/24")}
	if e, err = e.withDefaults(); err != nil {
		t.Fatal(err)
	}
	got = got[:0]
	for _, r := range egressRules(e) {
		got = append(got, r.chain+": "+r.text)
	}
	want = slices.Insert(slices.Clone(want), 5,
		`forward: iifname "corral0" ip daddr 192.0.2.0/24 accept`,
		`forward: iifname "corral0" drop`)
	if !slices.Equal(got, want) {
		t.Errorf("rules with allowed networks:\n%q\nwant\n%q", got, want)
	}

	for _, bad := range []Egress{
		{Allow: []netip.Prefix{netip.MustParsePrefix("2001:db8::/32")}},
		{Subnet: netip.MustParsePrefix("fd00::/64")},
		{Subnet: netip.MustParsePrefix("10.0.0.0/31")},
		{Bridge: "a-bridge-name-too-long"},
		{DenyPorts: []Port{{"sctp", 1}}},
		{DenyPorts: []Port{{"tcp", 0}}},
	} {
		if _, err := bad.withDefaults(); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
}

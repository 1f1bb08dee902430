package netns_test

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/corral-dev/corral/netns"
)

func TestHostsFile(t *testing.T) {
	const header = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
	a := netip.MustParseAddr
	tests := []struct {
		name    string
		hosts   map[string]netip.Addr
		want    string
		wantErr string
	}{
		{name: "empty", hosts: nil, want: header},
		{
			name:  "ordered by address then name",
			hosts: map[string]netip.Addr{"sub2": a("10.0.0.4"), "main1": a("10.0.0.2"), "sub1": a("10.0.0.3"), "alias": a("10.0.0.3")},
			want:  header + "10.0.0.2\tmain1\n10.0.0.3\talias\n10.0.0.3\tsub1\n10.0.0.4\tsub2\n",
		},
		{name: "mapped address unmapped", hosts: map[string]netip.Addr{"main1": a("::ffff:10.0.0.2")}, want: header + "10.0.0.2\tmain1\n"},
		{name: "ipv6", hosts: map[string]netip.Addr{"main1": a("fd00::2")}, want: header + "fd00::2\tmain1\n"},
		{name: "space in name", hosts: map[string]netip.Addr{"main 1": a("10.0.0.2")}, wantErr: "invalid host name"},
		{name: "leading dash", hosts: map[string]netip.Addr{"-x": a("10.0.0.2")}, wantErr: "invalid host name"},
		{name: "empty name", hosts: map[string]netip.Addr{"": a("10.0.0.2")}, wantErr: "invalid host name"},
		{name: "invalid address", hosts: map[string]netip.Addr{"main1": {}}, wantErr: "invalid address"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := netns.HostsFile(tt.hosts)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("HostsFile() error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("HostsFile() =\n%s\nwant\n%s", got, tt.want)
			}
		})
	}
}

func TestNames(t *testing.T) {
	if got := netns.BridgeName(netns.MaxVNI); got != "crb16777215" {
		t.Errorf("BridgeName(MaxVNI) = %q", got)
	}
	if got := netns.VXLANName(42); got != "crx42" {
		t.Errorf("VXLANName(42) = %q", got)
	}
	seen := map[string]bool{}
	for _, in := range []struct {
		vni     uint32
		ns, if_ string
	}{
		{1, "/run/corral/netns/a", "eth1"},
		{2, "/run/corral/netns/a", "eth1"},
		{1, "/run/corral/netns/b", "eth1"},
		{1, "/run/corral/netns/a", "eth2"},
	} {
		n := netns.VethName(in.vni, in.ns, in.if_)
		if len(n) != 15 || !strings.HasPrefix(n, netns.VethPrefix) {
			t.Errorf("VethName%v = %q: want %s + 12 hex digits", in, n, netns.VethPrefix)
		}
		if n != netns.VethName(in.vni, in.ns, in.if_) {
			t.Errorf("VethName%v not deterministic", in)
		}
		if seen[n] {
			t.Errorf("VethName%v = %q collides", in, n)
		}
		seen[n] = true
	}
}

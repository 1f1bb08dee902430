package netns

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// HostsFile returns the content of an /etc/hosts for a cluster kernel: the
// usual localhost lines, then one line per host name, ordered by address and
// then by name. It rejects names that are not valid host names and invalid
// addresses.
func HostsFile(hosts map[string]netip.Addr) (string, error) {
	type entry struct {
		name string
		addr netip.Addr
	}
	es := make([]entry, 0, len(hosts))
	for name, addr := range hosts {
		if !validHostname(name) {
			return "", fmt.Errorf("netns: invalid host name %q: use letters, digits, '-' and '.'", name)
		}
		if !addr.IsValid() || addr.Zone() != "" {
			return "", fmt.Errorf("netns: invalid address %v for host %q", addr, name)
		}
		es = append(es, entry{name, addr.Unmap()})
	}
	slices.SortFunc(es, func(a, b entry) int {
		return cmp.Or(a.addr.Compare(b.addr), cmp.Compare(a.name, b.name))
	})
	var b strings.Builder
	b.WriteString("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
	for _, e := range es {
		fmt.Fprintf(&b, "%s\t%s\n", e.addr, e.name)
	}
	return b.String(), nil
}

// validHostname reports whether s is an RFC 1123 host name.
func validHostname(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

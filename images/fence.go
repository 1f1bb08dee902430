package images

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"time"
)

// ErrRegistryNotAllowed means a registry (or an address it resolves to, or
// redirects to) is outside the registry policy: not in the allow-list, or
// a loopback, private, link-local, unspecified or multicast address that
// nobody allowed.
var ErrRegistryNotAllowed = errors.New("registry not allowed")

// AddrClass names the kind of an IP address for the registry policy.
type AddrClass string

// Address classes; every class but AddrPublic is refused by default.
const (
	AddrPublic      AddrClass = "public"
	AddrLoopback    AddrClass = "loopback"
	AddrPrivate     AddrClass = "private"
	AddrLinkLocal   AddrClass = "link-local"
	AddrUnspecified AddrClass = "unspecified"
	AddrMulticast   AddrClass = "multicast"
	AddrReserved    AddrClass = "reserved"
)

// Ranges that are not public without being caught by netip's predicates.
var reservedPrefixes = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),       // "this network"
	netip.MustParsePrefix("100.64.0.0/10"),   // carrier-grade NAT
	netip.MustParsePrefix("192.0.0.0/24"),    // IETF protocol assignments
	netip.MustParsePrefix("198.18.0.0/15"),   // benchmarking
	netip.MustParsePrefix("240.0.0.0/4"),     // reserved, and broadcast
	netip.MustParsePrefix("64:ff9b:1::/48"),  // local-use NAT64
	netip.MustParsePrefix("2001:db8::/32"),   // documentation
	netip.MustParsePrefix("fec0::/10"),       // deprecated site-local
	netip.MustParsePrefix("192.0.2.0/24"),    // documentation
	netip.MustParsePrefix("198.51.100.0/24"), // documentation
	netip.MustParsePrefix("203.0.113.0/24"),  // documentation
}

var nat64 = netip.MustParsePrefix("64:ff9b::/96")

// ClassifyAddr tells which kind of address ip is. IPv4-mapped IPv6
// and NAT64 (64:ff9b::/96) addresses are classified as the IPv4 address
// they carry.
func ClassifyAddr(ip netip.Addr) AddrClass {
	ip = ip.Unmap()
	if nat64.Contains(ip) {
		// The well-known NAT64 prefix reaches the IPv4 address it embeds.
		b := ip.As16()
		ip = netip.AddrFrom4([4]byte(b[12:]))
	}
	switch {
	case !ip.IsValid(), ip.IsUnspecified():
		return AddrUnspecified
	case ip.IsLoopback():
		return AddrLoopback
	case ip.IsPrivate(): // 10/8, 172.16/12, 192.168/16, fc00::/7
		return AddrPrivate
	case ip.IsLinkLocalUnicast(): // 169.254/16, fe80::/10
		return AddrLinkLocal
	case ip.IsMulticast(), ip.IsLinkLocalMulticast(), ip.IsInterfaceLocalMulticast():
		return AddrMulticast
	}
	for _, p := range reservedPrefixes {
		if p.Contains(ip) {
			return AddrReserved
		}
	}
	return AddrPublic
}

// RegistryPolicy says which registries images may be pulled from.
type RegistryPolicy struct {
	// Allowed lists registries as host, host:port or *.domain (any host
	// below domain, on any port). Empty: any registry whose addresses are
	// all public. A registry named exactly (not by a wildcard) is allowed
	// whatever its addresses; a wildcard match must still be public.
	Allowed []string
	// AlsoAllowed lists registries allowed in addition to Allowed (or to
	// public registries when Allowed is empty), in the same forms: e.g.
	// the ones an operator allows on a whole server or agent.
	AlsoAllowed []string
	// AllowLoopback also allows loopback addresses (corral dev and tests,
	// where a registry runs on 127.0.0.1).
	AllowLoopback bool
	// Hint is appended to refusals: what to do to allow the registry.
	Hint string
}

// CheckRegistryEntry validates one allow-list entry and returns it in
// normal form (lower case).
func CheckRegistryEntry(e string) (string, error) {
	e = strings.ToLower(strings.TrimSpace(e))
	host := strings.TrimPrefix(e, "*.")
	if e == "" || strings.Contains(host, "*") || !hostRe.MatchString(host) {
		return "", fmt.Errorf("registry %q is invalid: want a host name, an IP address, host:port or *.domain", e)
	}
	return e, nil
}

// splitRegistry splits a registry (host or host:port) into its lower-case
// host, without IPv6 brackets, and port ("" when absent).
func splitRegistry(registry string) (host, port string) {
	registry = strings.ToLower(registry)
	if h, p, err := net.SplitHostPort(registry); err == nil {
		return h, p
	}
	return strings.Trim(registry, "[]"), ""
}

// match reports whether registry is allowed by the lists, and whether it
// is named exactly (so exempt from the address rule).
func (p *RegistryPolicy) match(registry string) (allowed, exact bool) {
	host, port := splitRegistry(registry)
	names := []string{host}
	if host == "index.docker.io" || host == "registry-1.docker.io" {
		names = append(names, "docker.io") // the name users write
	}
	for _, e := range append(slices.Clip(p.Allowed), p.AlsoAllowed...) {
		e = strings.ToLower(e)
		if suffix, ok := strings.CutPrefix(e, "*."); ok {
			for _, n := range names {
				if strings.HasSuffix(n, "."+suffix) {
					allowed = true
				}
			}
			continue
		}
		eh, ep := splitRegistry(e)
		for _, n := range names {
			if eh == n && (ep == "" || ep == port) {
				return true, true
			}
		}
	}
	return allowed || len(p.Allowed) == 0, false
}

// addrAllowed reports whether the policy lets a registry that is not named
// exactly be reached at ip, and says why not.
func (p *RegistryPolicy) addrAllowed(ip netip.Addr) (AddrClass, bool) {
	c := ClassifyAddr(ip)
	return c, c == AddrPublic || (c == AddrLoopback && p.AllowLoopback)
}

func (p *RegistryPolicy) hint() string {
	if p.Hint != "" {
		return "; " + p.Hint
	}
	return ""
}

// listed says what the policy allows, for errors.
func (p *RegistryPolicy) listed() string {
	what := strings.Join(p.Allowed, ", ")
	if len(p.Allowed) == 0 {
		what = "public registries"
		if p.AllowLoopback {
			what += " and loopback"
		}
	}
	if len(p.AlsoAllowed) > 0 {
		what += "; also " + strings.Join(p.AlsoAllowed, ", ")
	}
	return "allowed: " + what
}

// Check tells whether images may be pulled from registry (host or
// host:port): it must be in the allow-list, and unless named exactly there,
// every address its host resolves to must be public. A host that cannot be
// resolved passes here; it is checked again when dialled. The error wraps
// ErrRegistryNotAllowed and says what to do.
func (p *RegistryPolicy) Check(ctx context.Context, registry string) error {
	allowed, exact := p.match(registry)
	if !allowed {
		return fmt.Errorf("%w: registry %s is not in the allow-list (%s)%s", ErrRegistryNotAllowed, registry, p.listed(), p.hint())
	}
	if exact {
		return nil
	}
	host, _ := splitRegistry(registry)
	var addrs []netip.Addr
	if ip, err := netip.ParseAddr(host); err == nil {
		addrs = []netip.Addr{ip}
	} else {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		addrs, err = net.DefaultResolver.LookupNetIP(ctx, "ip", host)
		if err != nil {
			return nil // the dial fails too, or is checked then
		}
	}
	for _, ip := range addrs {
		if c, ok := p.addrAllowed(ip); !ok {
			return fmt.Errorf("%w: registry %s resolves to %s, a %s address; only registries at public addresses are allowed (%s)%s",
				ErrRegistryNotAllowed, registry, ip, c, p.listed(), p.hint())
		}
	}
	return nil
}

// policyKey carries a RegistryPolicy in a context.
type policyKey struct{}

// WithRegistryPolicy returns a context whose pulls follow p instead of the
// store's own policy (see WithDefaultRegistryPolicy): e.g. the allow-list
// of the resource group a kernel runs in.
//
// The store's AllowLoopback, AlsoAllowed and Hint apply as well.
func WithRegistryPolicy(ctx context.Context, p RegistryPolicy) context.Context {
	return context.WithValue(ctx, policyKey{}, &p)
}

// policyFor returns the policy for a pull under ctx: the context's, with
// loopback allowed as well if the store allows it.
func (s *Store) policyFor(ctx context.Context) *RegistryPolicy {
	p, ok := ctx.Value(policyKey{}).(*RegistryPolicy)
	if !ok {
		return &s.opts.policy
	}
	q := *p
	q.AllowLoopback = q.AllowLoopback || s.opts.policy.AllowLoopback
	q.AlsoAllowed = append(slices.Clip(q.AlsoAllowed), s.opts.policy.AlsoAllowed...)
	if q.Hint == "" {
		q.Hint = s.opts.policy.Hint
	}
	return &q
}

// dialContext dials registries (and whatever they redirect to): a host
// the policy names exactly is dialled as is; any other connection is
// checked, address by address, as it is made, so that a name that
// resolves to a public address at Check and to a private one at the dial
// (DNS rebinding) is still refused.
func (s *Store) dialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	p := s.policyFor(ctx)
	if _, exact := p.match(addr); exact {
		return (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext(ctx, network, addr)
	}
	d := &net.Dialer{
		Timeout:   30 * time.Second,
		KeepAlive: 30 * time.Second,
		Control: func(_, address string, _ syscall.RawConn) error {
			ap, err := netip.ParseAddrPort(address)
			if err != nil {
				return fmt.Errorf("%w: cannot parse address %q", ErrRegistryNotAllowed, address)
			}
			if c, ok := p.addrAllowed(ap.Addr()); !ok {
				return fmt.Errorf("%w: %s resolves to %s, a %s address; only registries at public addresses are allowed (%s)%s",
					ErrRegistryNotAllowed, addr, ap.Addr(), c, p.listed(), p.hint())
			}
			return nil
		},
	}
	return d.DialContext(ctx, network, addr)
}

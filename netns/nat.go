package netns

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// nftRule is one rule of the egress table: its chain, how nft(8) would
// write it (for tests and logs) and its expressions.
type nftRule struct {
	chain string
	text  string
	exprs []expr.Any
}

// Chains of the egress table.
const (
	chainInput   = "input"   // hook input, filter priority
	chainForward = "forward" // hook forward, filter priority
	chainPost    = "postrouting"
)

// egressRules are the rules of the egress table for e (defaults filled in):
//
//	input:       kernels reach nothing on this host but replies to
//	             connections the host opened (the agent's app tunnels);
//	forward:     nothing from one kernel to another (isolated ports stop
//	             layer 2, this stops routing through the gateway), no
//	             DenyPorts (control ports, VXLAN) anywhere, the rest out;
//	             into the bridge only replies;
//	postrouting: the subnet leaving through another link is masqueraded.
//
// The checks use the input or output interface, which a kernel cannot
// forge, not the source address, which it can.
func egressRules(e Egress) []nftRule {
	br := e.Bridge
	iif := func() []expr.Any { return ifname(expr.MetaKeyIIFNAME, expr.CmpOpEq, br) }
	oif := func(op expr.CmpOp) []expr.Any { return ifname(expr.MetaKeyOIFNAME, op, br) }
	accept := &expr.Verdict{Kind: expr.VerdictAccept}
	drop := &expr.Verdict{Kind: expr.VerdictDrop}
	cat := func(parts ...[]expr.Any) []expr.Any {
		var out []expr.Any
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	v := func(x expr.Any) []expr.Any { return []expr.Any{x} }
	q := fmt.Sprintf("%q", br)
	rules := []nftRule{
		{chainInput, "iifname " + q + " ct state established,related accept", cat(iif(), ctReplies(), v(accept))},
		{chainInput, "iifname " + q + " drop", cat(iif(), v(drop))},
		{chainForward, "iifname " + q + " oifname " + q + " drop", cat(iif(), oif(expr.CmpOpEq), v(drop))},
	}
	for _, p := range e.DenyPorts {
		rules = append(rules, nftRule{chainForward, fmt.Sprintf("iifname %s %s dport %d drop", q, p.Proto, p.Port),
			cat(iif(), dport(p), v(drop))})
	}
	if len(e.Allow) > 0 {
		for _, p := range e.Allow {
			rules = append(rules, nftRule{chainForward, fmt.Sprintf("iifname %s ip daddr %v accept", q, p),
				cat(iif(), addr4(16, p), v(accept))})
		}
		rules = append(rules, nftRule{chainForward, "iifname " + q + " drop", cat(iif(), v(drop))})
	}
	rules = append(rules,
		nftRule{chainForward, "iifname " + q + " accept", cat(iif(), v(accept))},
		nftRule{chainForward, "oifname " + q + " ct state established,related accept", cat(oif(expr.CmpOpEq), ctReplies(), v(accept))},
		nftRule{chainForward, "oifname " + q + " drop", cat(oif(expr.CmpOpEq), v(drop))},
		nftRule{chainPost, fmt.Sprintf("ip saddr %v oifname != %s masquerade", e.Subnet, q),
			cat(addr4(12, e.Subnet), oif(expr.CmpOpNeq), v(&expr.Masq{}))},
	)
	return rules
}

// ifname matches the input or output interface name.
func ifname(key expr.MetaKey, op expr.CmpOp, name string) []expr.Any {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: op, Register: 1, Data: b},
	}
}

// ctReplies matches packets of connections in state established or related.
func ctReplies() []expr.Any {
	mask := make([]byte, 4)
	binary.NativeEndian.PutUint32(mask, expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED)
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
	}
}

// dport matches a transport protocol and destination port.
func dport(p Port) []expr.Any {
	proto := byte(unix.IPPROTO_TCP)
	if p.Proto == "udp" {
		proto = unix.IPPROTO_UDP
	}
	port := make([]byte, 2)
	binary.BigEndian.PutUint16(port, p.Port)
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: port},
	}
}

// addr4 matches IPv4 packets whose source (offset 12) or destination
// (offset 16) address is in p.
func addr4(offset uint32, p netip.Prefix) []expr.Any {
	mask := make([]byte, 4)
	binary.BigEndian.PutUint32(mask, ^uint32(0)<<(32-p.Bits()))
	net4 := p.Masked().Addr().As4()
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: net4[:]},
	}
}

// nftConn is a netlink connection to nftables in the host namespace.
func (m *Manager) nftConn() (*nftables.Conn, error) {
	c, err := nftables.New(nftables.WithNetNSFd(int(m.hostNS)))
	if err != nil {
		return nil, fmt.Errorf("netns: nftables: %w", err)
	}
	return c, nil
}

// writeEgressRules replaces the egress table with egressRules(e), in one
// transaction: the table is never seen half written.
func (m *Manager) writeEgressRules(e Egress) error {
	c, err := m.nftConn()
	if err != nil {
		return err
	}
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: e.Table}
	if old, err := c.ListTableOfFamily(e.Table, nftables.TableFamilyINet); err == nil && old != nil {
		c.DelTable(t)
	}
	c.AddTable(t)
	accept := nftables.ChainPolicyAccept
	chains := map[string]*nftables.Chain{
		chainInput: c.AddChain(&nftables.Chain{Name: chainInput, Table: t, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &accept}),
		chainForward: c.AddChain(&nftables.Chain{Name: chainForward, Table: t, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept}),
		chainPost: c.AddChain(&nftables.Chain{Name: chainPost, Table: t, Type: nftables.ChainTypeNAT,
			Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource, Policy: &accept}),
	}
	for _, r := range egressRules(e) {
		c.AddRule(&nftables.Rule{Table: t, Chain: chains[r.chain], Exprs: r.exprs})
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("netns: write nftables table inet %s: %w", e.Table, err)
	}
	m.log.Debug("wrote egress rules", "table", e.Table, "bridge", e.Bridge, "subnet", e.Subnet)
	return nil
}

// deleteEgressRules removes the named egress table if it exists.
func (m *Manager) deleteEgressRules(table string) error {
	c, err := m.nftConn()
	if err != nil {
		return err
	}
	if _, err := c.ListTableOfFamily(table, nftables.TableFamilyINet); err != nil {
		if errors.Is(err, os.ErrNotExist) || strings.Contains(err.Error(), "no such file") {
			return nil
		}
	}
	c.DelTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: table})
	if err := c.Flush(); err != nil && !errors.Is(err, unix.ENOENT) && !strings.Contains(err.Error(), "no such file") {
		return fmt.Errorf("netns: delete nftables table inet %s: %w", table, err)
	}
	return nil
}

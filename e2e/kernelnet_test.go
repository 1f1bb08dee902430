package e2e

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/corral-dev/corral/api"
	"github.com/corral-dev/corral/netns"
	"github.com/corral-dev/corral/structs"
	"github.com/vishvananda/netlink"
)

// knEgressAddr returns the IPv4 address of ifName in the namespace at path.
func knEgressAddr(t *testing.T, path, ifName string) netip.Addr {
	t.Helper()
	a, err := netns.EgressAddr(path, ifName)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// knLinks lists the link names in the namespace at path.
func knLinks(t *testing.T, path string) []string {
	t.Helper()
	var links []string
	err := netns.Do(path, func() error {
		ls, err := netlink.LinkList()
		for _, l := range ls {
			links = append(links, l.Attrs().Name)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(links)
	return links
}

// knDial reports whether a TCP connection to addr opens from the namespace
// at path.
func knDial(path, addr string) error {
	return netns.Do(path, func() error {
		c, err := net.DialTimeout("tcp", addr, 1500*time.Millisecond)
		if err == nil {
			c.Close()
		}
		return err
	})
}

// knVXLAN is a VXLAN packet (the UDP payload) with vni, carrying a
// broadcast Ethernet frame with an IPv4/UDP datagram to dst:port holding
// payload.
func knVXLAN(vni uint32, dst netip.Addr, port uint16, payload string) []byte {
	udp := make([]byte, 8+len(payload))
	binary.BigEndian.PutUint16(udp[0:], 40000)
	binary.BigEndian.PutUint16(udp[2:], port)
	binary.BigEndian.PutUint16(udp[4:], uint16(len(udp)))
	copy(udp[8:], payload) // checksum 0: none
	ip := make([]byte, 20, 20+len(udp))
	ip[0], ip[8], ip[9] = 0x45, 64, 17
	binary.BigEndian.PutUint16(ip[2:], uint16(20+len(udp)))
	src := dst.As4()
	src[3] = 250 // a made-up sender in the target's subnet
	d := dst.As4()
	copy(ip[12:], src[:])
	copy(ip[16:], d[:])
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(ip[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(ip[10:], ^uint16(sum))
	ip = append(ip, udp...)
	eth := append([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0, 0, 0, 0xbe, 0xef, 0x08, 0x00}, ip...)
	vx := make([]byte, 8)
	vx[0] = 0x08
	binary.BigEndian.PutUint32(vx[4:], vni<<8)
	return append(vx, eth...)
}

// knSendUDP sends b to addr from the namespace at path.
func knSendUDP(path, addr string, b []byte) error {
	return netns.Do(path, func() error {
		c, err := net.Dial("udp", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write(b)
		return err
	})
}

// TestKernelNetwork: container kernels reach "the internet" (a host outside
// the cluster) through their agent's NAT, and nothing they must not: not
// each other across sessions, not the agents' or the server's control
// ports, not another session's overlay through a forged VXLAN packet.
// -network none leaves a kernel only loopback. Nothing is left afterwards.
func TestKernelNetwork(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("kernel network e2e needs root (network namespaces, nftables, runc)")
	}
	oc := newOvClusterExtra(t, 1)
	inet := oc.bed.Hosts[4]
	before := oc.links(t)

	// "The internet": a web server on a host outside the cluster, which
	// has no route to any kernel subnet: only masquerading lets replies in.
	ln, err := inet.Listen("tcp", net.JoinHostPort(inet.IP.String(), "8080"))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "file from the internet for %s\n", r.RemoteAddr)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	inetURL := "http://" + net.JoinHostPort(inet.IP.String(), "8080") + "/file"

	small := structs.Slots{structs.SlotCPU: structs.Whole(1) / 10, structs.SlotMem: structs.Whole(32 << 20)}
	single := func(name, network string) *api.SessionDetail {
		return oc.create(t, &api.CreateSessionRequest{Name: name, Type: structs.SessionTypeInteractive, Driver: "runc",
			Image: oc.image, Command: []string{"sleep", "1000"}, Resources: small, Network: network})
	}
	// Four single-kernel sessions on three agents: two share one.
	var singles []*api.SessionDetail
	for i := range 4 {
		singles = append(singles, single(fmt.Sprintf("kn-%d", i), ""))
	}
	none := single("kn-none", structs.NetworkNone)
	cl := oc.create(t, &api.CreateSessionRequest{Name: "kn-cluster", Type: structs.SessionTypeInteractive, Driver: "runc",
		Image: oc.image, Command: []string{"sleep", "1000"}, Resources: small,
		ClusterSize: 2, ClusterMode: structs.ClusterModeMultiNode})

	running := func(d *api.SessionDetail) error {
		if d.Session.Status != structs.SessionRunning {
			return fmt.Errorf("session is %s (%s)", d.Session.Status, d.Session.StatusInfo)
		}
		for _, k := range d.Kernels {
			if k.Status != structs.KernelRunning {
				return fmt.Errorf("%s is %s", k.Hostname, k.Status)
			}
		}
		return nil
	}
	type kern struct {
		k    *structs.Kernel
		path string
		addr netip.Addr // on the kernel bridge
	}
	nsOf := func(k *structs.Kernel) string {
		var p string
		eventually(t, 10*time.Second, "namespace of "+k.ID, func() (err error) {
			p, err = ovKernelNetns(oc.bed, k.ID)
			return err
		})
		return p
	}
	var ks []kern
	for _, d := range singles {
		d = oc.wait(t, d.Session.ID, 60*time.Second, d.Session.Name+" running", running)
		k := d.Kernels[0]
		p := nsOf(k)
		if l := knLinks(t, p); !slices.Equal(l, []string{"eth0", "lo"}) {
			t.Errorf("%s: links %v, want [eth0 lo]", d.Session.Name, l)
		}
		ks = append(ks, kern{k, p, knEgressAddr(t, p, "eth0")})
	}
	nd := oc.wait(t, none.Session.ID, 60*time.Second, "kn-none running", running)
	if l := knLinks(t, nsOf(nd.Kernels[0])); !slices.Equal(l, []string{"lo"}) {
		t.Errorf("-network none: links %v, want [lo]", l)
	}
	cd := oc.wait(t, cl.Session.ID, 60*time.Second, "kn-cluster running", ovRunning)
	cMain := ovKernel(t, cd, "main1")
	cPath := nsOf(cMain)
	if l := knLinks(t, cPath); !slices.Equal(l, []string{"eth0", "eth1", "lo"}) {
		t.Errorf("cluster main1: links %v, want [eth0 eth1 lo]", l)
	}
	if err := knDial(cPath, net.JoinHostPort(inet.IP.String(), "8080")); err != nil {
		t.Errorf("cluster main1 -> the internet through eth1: %v", err)
	}

	// Every kernel fetches a file from the internet with busybox wget.
	for _, k := range ks {
		code, out, errOut := oc.exec(t, k.k.SessionID, "main1", 30*time.Second, "busybox", "wget", "-q", "-O", "-", inetURL)
		agentIP := oc.hostOf[k.k.AgentID].IP.String()
		if code != 0 || !strings.HasPrefix(out, "file from the internet for "+agentIP+":") {
			t.Errorf("kernel %s (%v) wget %s: exit %d, %q %q (want the file, fetched from its agent's address %s)", k.k.ID, k.addr, inetURL, code, out, errOut, agentIP)
		}
	}
	// DNS: the host's name servers but loopback ones, reached through the NAT.
	if host, err := os.ReadFile("/etc/resolv.conf"); err == nil {
		_, conf, _ := oc.exec(t, ks[0].k.SessionID, "main1", 30*time.Second, "cat", "/etc/resolv.conf")
		for _, line := range strings.Split(string(host), "\n") {
			f := strings.Fields(line)
			if len(f) < 2 || f[0] != "nameserver" {
				continue
			}
			a, err := netip.ParseAddr(f[1])
			if err != nil {
				continue
			}
			if has := strings.Contains(conf, "nameserver "+f[1]+"\n"); has == a.IsLoopback() {
				t.Errorf("kernel's resolv.conf %q vs the host's nameserver %s (loopback: %v)", conf, f[1], a.IsLoopback())
			}
		}
	}
	// -network none: no way out.
	if code, out, _ := oc.exec(t, none.Session.ID, "main1", 30*time.Second, "busybox", "wget", "-q", "-T", "2", "-O", "-", inetURL); code == 0 {
		t.Errorf("-network none kernel fetched %q", out)
	}

	// Two kernels of different sessions on one agent do not reach each
	// other; their agent does reach them (app tunnels).
	var a, b *kern
	for i := range ks {
		for j := range i {
			if ks[i].k.AgentID == ks[j].k.AgentID {
				a, b = &ks[i], &ks[j]
			}
		}
	}
	if a == nil {
		t.Fatal("no two single kernels on one agent")
	}
	var bln net.Listener
	if err := netns.Do(b.path, func() (err error) { bln, err = net.Listen("tcp", ":7100"); return err }); err != nil {
		t.Fatal(err)
	}
	defer bln.Close()
	go func() {
		for {
			c, err := bln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	bAddr := net.JoinHostPort(b.addr.String(), "7100")
	if err := knDial(oc.hostOf[b.k.AgentID].Path(), bAddr); err != nil {
		t.Fatalf("control: agent host -> kernel %s: %v", bAddr, err)
	}
	if err := knDial(a.path, bAddr); err == nil {
		t.Errorf("kernel %v reached kernel %s of another session on the same agent", a.addr, bAddr)
	}

	// Control ports: open from the internet host, closed from a kernel.
	aHost := oc.hostOf[a.k.AgentID]
	var other string
	for _, h := range oc.agents {
		if h != aHost {
			other = h.IP.String()
		}
	}
	gw := netns.Egress{}.Gateway().String() // each agent's bridge is 10.88.0.1 in its namespace
	targets := []string{
		net.JoinHostPort(oc.server.IP.String(), ovHTTPPort),
		net.JoinHostPort(oc.server.IP.String(), ovServerRPCPort),
		net.JoinHostPort(aHost.IP.String(), ovAgentRPCPort),
		net.JoinHostPort(aHost.IP.String(), ovAgentSerf),
		net.JoinHostPort(other, ovAgentRPCPort),
		net.JoinHostPort(other, ovAgentSerf),
	}
	for _, tg := range targets {
		if err := knDial(inet.Path(), tg); err != nil {
			t.Fatalf("control: %s not reachable from the internet host: %v", tg, err)
		}
	}
	targets = append(targets, net.JoinHostPort(gw, ovAgentRPCPort), net.JoinHostPort(gw, ovAgentSerf))
	for _, tg := range targets {
		if err := knDial(a.path, tg); err == nil {
			t.Errorf("kernel %v reached control port %s", a.addr, tg)
		} else {
			t.Logf("kernel -> %s: %v", tg, err)
		}
	}

	// A forged VXLAN packet with the cluster session's VNI, from a single
	// kernel to every agent's port 4789, never lands in main1's overlay;
	// the same packet sent from an agent's host namespace does (so it is a
	// well-formed packet the overlay would take).
	vni := cd.Session.Network.VNI
	mainIP := netip.MustParsePrefix(cMain.Network.Address).Addr()
	var uc net.PacketConn
	if err := netns.Do(cPath, func() (err error) { uc, err = net.ListenPacket("udp4", ":7200"); return err }); err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	for _, k := range ks {
		for _, h := range oc.agents {
			pkt := knVXLAN(vni, mainIP, 7200, "forged-by-kernel-"+k.k.ID)
			if err := knSendUDP(k.path, net.JoinHostPort(h.IP.String(), "4789"), pkt); err != nil {
				t.Logf("kernel %s -> %s:4789: %v", k.k.ID, h.IP, err)
			}
		}
	}
	var got []string
	var mu sync.Mutex
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			n, _, err := uc.ReadFrom(buf)
			if err != nil {
				return
			}
			mu.Lock()
			got = append(got, string(buf[:n]))
			mu.Unlock()
			if string(buf[:n]) == "control" {
				return
			}
		}
	}()
	// The control goes from another agent's host (the path a peer's
	// packets take); resent until it arrives, as UDP may be lost.
	src := oc.agents[0]
	if src == oc.hostOf[cMain.AgentID] {
		src = oc.agents[1]
	}
	eventually(t, 20*time.Second, "control VXLAN packet delivered to main1", func() error {
		pkt := knVXLAN(vni, mainIP, 7200, "control")
		if err := knSendUDP(src.Path(), net.JoinHostPort(oc.hostOf[cMain.AgentID].IP.String(), "4789"), pkt); err != nil {
			return err
		}
		select {
		case <-done:
			return nil
		case <-time.After(200 * time.Millisecond):
			return fmt.Errorf("not yet")
		}
	})
	mu.Lock()
	for _, g := range got {
		if g != "control" {
			t.Errorf("a forged VXLAN packet from a kernel reached another session's overlay: %q", g)
		}
	}
	mu.Unlock()

	// The agent of kernels a and b is killed and started again: it
	// reattaches, keeps their interfaces and addresses, and writes its
	// rules again.
	ai := slices.Index(oc.agents, aHost)
	linksBefore, err := aHost.Links()
	if err != nil {
		t.Fatal(err)
	}
	oc.agentProcs[ai].kill9()
	oc.agentProcs[ai] = ovStart(t, aHost, "agent-restarted", oc.agentArgs[ai]...)
	eventually(t, 30*time.Second, "kernel a's agent reattached and serving exec", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		var out strings.Builder
		code, err := oc.c.Exec(ctx, a.k.SessionID, &api.ExecRequest{Kernel: "main1", Command: []string{"true"}}, &out, &out)
		if err != nil || code != 0 {
			return fmt.Errorf("exec: %d %v %s", code, err, out.String())
		}
		return nil
	})
	if got, _ := aHost.Links(); !slices.Equal(got, linksBefore) {
		t.Errorf("agent restart changed %s's links: %v, before %v", aHost.Name, got, linksBefore)
	}
	if code, out, errOut := oc.exec(t, a.k.SessionID, "main1", 30*time.Second, "busybox", "wget", "-q", "-O", "-", inetURL); code != 0 || !strings.HasPrefix(out, "file from the internet") {
		t.Errorf("after the agent restart, kernel %v: wget exit %d %q %q", a.addr, code, out, errOut)
	}
	if err := knDial(a.path, bAddr); err == nil {
		t.Errorf("after the agent restart, kernel %v reached kernel %s", a.addr, bAddr)
	}
	if err := knDial(a.path, net.JoinHostPort(aHost.IP.String(), ovAgentRPCPort)); err == nil {
		t.Errorf("after the agent restart, kernel %v reached its agent's RPC port", a.addr)
	}

	// The rules exist while kernels run, and nothing is left afterwards.
	for _, h := range oc.agents {
		if out, err := exec.Command("ip", "netns", "exec", h.NS, "nft", "list", "tables").CombinedOutput(); err == nil && !strings.Contains(string(out), "inet "+netns.EgressTable) {
			t.Errorf("%s: no nftables table %s while kernels run: %s", h.Name, netns.EgressTable, out)
		}
	}
	for _, d := range append(append([]*api.SessionDetail{}, singles...), none, cl) {
		if _, err := oc.c.DestroySession(context.Background(), d.Session.ID); err != nil {
			t.Fatalf("destroy %s: %v", d.Session.Name, err)
		}
	}
	for _, d := range append(append([]*api.SessionDetail{}, singles...), none, cl) {
		oc.wait(t, d.Session.ID, 30*time.Second, d.Session.Name+" terminated", ovTerminated)
	}
	eventually(t, 10*time.Second, "hosts' links as before the sessions", func() error {
		after := oc.links(t)
		for h, ls := range before {
			if !slices.Equal(ls, after[h]) {
				return fmt.Errorf("%s: before %v, now %v", h, ls, after[h])
			}
		}
		return nil
	})
	for _, h := range oc.agents {
		if out, err := exec.Command("ip", "netns", "exec", h.NS, "nft", "list", "tables").CombinedOutput(); err == nil && strings.Contains(string(out), "inet "+netns.EgressTable) {
			t.Errorf("%s: nftables table %s left behind: %s", h.Name, netns.EgressTable, out)
		}
	}
}

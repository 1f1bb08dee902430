package netns_test

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/corral-dev/corral/e2e/testbed"
	"github.com/corral-dev/corral/netns"
	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// manager returns a Manager whose host namespace is h's and whose kernel
// namespaces live in the bed's directory (removed with the bed).
func manager(t *testing.T, bed *testbed.Bed, h *testbed.Host) *netns.Manager {
	t.Helper()
	m, err := netns.New(netns.Config{
		NetnsDir:  filepath.Join(bed.Dir(), h.Name+"-kernels"),
		HostNetns: h.Path(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func mustLinks(t *testing.T, h *testbed.Host) []string {
	t.Helper()
	ls, err := h.Links()
	if err != nil {
		t.Fatal(err)
	}
	return ls
}

// withHandle runs fn with a netlink handle inside the namespace at path.
func withHandle(t *testing.T, path string, fn func(h *netlink.Handle)) {
	t.Helper()
	ns, err := vnetns.GetFromPath(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	fn(h)
}

// echoServer serves a TCP echo inside the namespace at nsPath.
func echoServer(t *testing.T, nsPath string, addr netip.AddrPort) {
	t.Helper()
	var ln net.Listener
	err := netns.Do(nsPath, func() (err error) {
		ln, err = net.Listen("tcp", addr.String())
		return err
	})
	if err != nil {
		t.Fatalf("listen on %s in %s: %v", addr, nsPath, err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
}

// echo dials addr from inside the namespace at nsPath and checks that a line
// comes back.
func echo(nsPath string, addr netip.AddrPort, timeout time.Duration) error {
	var c net.Conn
	err := netns.Do(nsPath, func() (err error) {
		c, err = net.DialTimeout("tcp", addr.String(), timeout)
		return err
	})
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	msg := fmt.Sprintf("hello from %s\n", filepath.Base(nsPath))
	if _, err := io.WriteString(c, msg); err != nil {
		return err
	}
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if got != msg {
		return fmt.Errorf("echo returned %q, want %q", got, msg)
	}
	return nil
}

func mustEcho(t *testing.T, from string, to netip.AddrPort) {
	t.Helper()
	if err := echo(from, to, 3*time.Second); err != nil {
		t.Errorf("%s -> %s: %v", filepath.Base(from), to, err)
	}
}

func mustNotEcho(t *testing.T, from string, to netip.AddrPort) {
	t.Helper()
	if err := echo(from, to, 500*time.Millisecond); err == nil {
		t.Errorf("%s -> %s: connected, want no connection", filepath.Base(from), to)
	}
}

func TestCreateDelete(t *testing.T) {
	bed := testbed.New(t, 1)
	m := manager(t, bed, bed.Hosts[0])

	p, err := m.Create("k1")
	if err != nil {
		t.Fatal(err)
	}
	if p != m.Path("k1") || filepath.Dir(p) != m.NetnsDir() {
		t.Errorf("Create returned %q, want %q", p, m.Path("k1"))
	}
	var st1 unix.Stat_t
	if err := unix.Stat(p, &st1); err != nil {
		t.Fatal(err)
	}
	p2, err := m.Create("k1")
	if err != nil {
		t.Fatalf("second Create: %v", err)
	}
	var st2 unix.Stat_t
	if err := unix.Stat(p2, &st2); err != nil {
		t.Fatal(err)
	}
	if st1.Ino != st2.Ino {
		t.Errorf("second Create made a new namespace (inode %d, was %d)", st2.Ino, st1.Ino)
	}
	withHandle(t, p, func(h *netlink.Handle) {
		ls, err := h.LinkList()
		if err != nil {
			t.Fatal(err)
		}
		if len(ls) != 1 || ls[0].Attrs().Name != "lo" || ls[0].Attrs().Flags&net.FlagUp == 0 {
			t.Errorf("new namespace links = %v, want only lo, up", ls)
		}
	})
	// Do runs in the namespace and returns fn's error.
	sentinel := errors.New("sentinel")
	err = netns.Do(p, func() error {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		ln.Close()
		ifs, err := net.Interfaces()
		if err != nil {
			return err
		}
		if len(ifs) != 1 || ifs[0].Name != "lo" {
			return fmt.Errorf("interfaces inside = %v, want only lo", ifs)
		}
		return sentinel
	})
	if !errors.Is(err, sentinel) {
		t.Errorf("Do = %v, want fn's error", err)
	}

	if _, err := m.Create("../x"); err == nil {
		t.Error(`Create("../x") succeeded`)
	}
	if err := m.Delete("k1"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after Delete: stat %s: %v", p, err)
	}
	if err := m.Delete("k1"); err != nil {
		t.Errorf("second Delete: %v", err)
	}
}

// kernel creates a kernel namespace on m and attaches it to vni.
func kernel(t *testing.T, m *netns.Manager, name string, vni uint32, addr string) string {
	t.Helper()
	p, err := m.Create(name)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.AttachKernel(vni, p, "eth1", netip.MustParsePrefix(addr)); err != nil {
		t.Fatal(err)
	}
	return p
}

func ensure(t *testing.T, m *netns.Manager, vni uint32, local *testbed.Host, peers ...*testbed.Host) {
	t.Helper()
	o := netns.Overlay{VNI: vni, Local: local.IP}
	for _, p := range peers {
		o.Peers = append(o.Peers, p.IP)
	}
	if err := m.EnsureOverlay(o); err != nil {
		t.Fatal(err)
	}
	got, err := m.Peers(vni)
	if err != nil {
		t.Fatal(err)
	}
	want := slices.Clone(o.Peers)
	slices.SortFunc(want, netip.Addr.Compare)
	if !slices.Equal(got, want) {
		t.Errorf("%s: Peers(%d) = %v, want %v", local.Name, vni, got, want)
	}
}

func TestOverlay(t *testing.T) {
	bed := testbed.New(t, 3)
	h1, h2, h3 := bed.Hosts[0], bed.Hosts[1], bed.Hosts[2]
	before := map[string][]string{}
	for _, h := range bed.Hosts {
		before[h.Name] = mustLinks(t, h)
	}
	m1, m2 := manager(t, bed, h1), manager(t, bed, h2)
	const vniA, vniB = 100, 200

	ensure(t, m1, vniA, h1, h2)
	ensure(t, m2, vniA, h2, h1)
	ensure(t, m1, vniA, h1, h2) // again: nothing changes
	k1a := kernel(t, m1, "k1a", vniA, "10.77.1.2/24")
	k2a := kernel(t, m2, "k2a", vniA, "10.77.1.3/24")
	a2 := netip.MustParseAddrPort("10.77.1.3:7000")
	a1 := netip.MustParseAddrPort("10.77.1.2:7000")
	echoServer(t, k2a, a2)
	echoServer(t, k1a, a1)

	t.Run("devices", func(t *testing.T) {
		withHandle(t, h1.Path(), func(h *netlink.Handle) {
			br, err := h.LinkByName(netns.BridgeName(vniA))
			if err != nil {
				t.Fatal(err)
			}
			l, err := h.LinkByName(netns.VXLANName(vniA))
			if err != nil {
				t.Fatal(err)
			}
			vx, ok := l.(*netlink.Vxlan)
			if !ok {
				t.Fatalf("%s is a %s", l.Attrs().Name, l.Type())
			}
			eth, _ := h.LinkByName(testbed.UnderlayLink)
			if vx.VxlanId != vniA || vx.Learning || vx.Port != netns.DefaultVXLANPort ||
				!vx.SrcAddr.Equal(net.IP(h1.IP.AsSlice())) || vx.VtepDevIndex != eth.Attrs().Index ||
				vx.MasterIndex != br.Attrs().Index || vx.MTU != 1450 || br.Attrs().MTU != 1450 {
				t.Errorf("vxlan = id %d learning %v port %d local %v dev %d master %d mtu %d, bridge mtu %d",
					vx.VxlanId, vx.Learning, vx.Port, vx.SrcAddr, vx.VtepDevIndex, vx.MasterIndex, vx.MTU, br.Attrs().MTU)
			}
			veth, err := h.LinkByName(netns.VethName(vniA, k1a, "eth1"))
			if err != nil {
				t.Fatal(err)
			}
			if veth.Attrs().MasterIndex != br.Attrs().Index {
				t.Errorf("veth not a port of %s", br.Attrs().Name)
			}
			// No address on the host side of the overlay: kernels cannot
			// reach the host through it, not even over IPv6 link-local.
			for _, l := range []netlink.Link{br, vx, veth} {
				addrs, err := h.AddrList(l, netlink.FAMILY_ALL)
				if err != nil {
					t.Fatal(err)
				}
				if len(addrs) != 0 {
					t.Errorf("%s has addresses %v", l.Attrs().Name, addrs)
				}
			}
		})
		withHandle(t, k1a, func(h *netlink.Handle) {
			routes, err := h.RouteList(nil, netlink.FAMILY_V4)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range routes {
				if r.Dst == nil || r.Dst.String() != "10.77.1.0/24" {
					t.Errorf("kernel has route %v, want only 10.77.1.0/24", r)
				}
			}
			eth1, err := h.LinkByName("eth1")
			if err != nil {
				t.Fatal(err)
			}
			if eth1.Attrs().MTU != 1450 {
				t.Errorf("kernel eth1 MTU = %d, want 1450", eth1.Attrs().MTU)
			}
		})
	})

	t.Run("across hosts", func(t *testing.T) {
		mustEcho(t, k1a, a2)
		mustEcho(t, k2a, a1)
	})

	// Attaching again changes nothing and breaks nothing.
	if err := m1.AttachKernel(vniA, k1a, "eth1", netip.MustParsePrefix("10.77.1.2/24")); err != nil {
		t.Fatalf("second AttachKernel: %v", err)
	}
	mustEcho(t, k1a, a2)

	// A second session, same subnet, same hosts.
	ensure(t, m1, vniB, h1, h2)
	ensure(t, m2, vniB, h2, h1)
	k1b := kernel(t, m1, "k1b", vniB, "10.77.1.4/24")
	k2b := kernel(t, m2, "k2b", vniB, "10.77.1.5/24")
	b2 := netip.MustParseAddrPort("10.77.1.5:7000")
	echoServer(t, k2b, b2)

	t.Run("sessions isolated", func(t *testing.T) {
		mustEcho(t, k1b, b2)
		mustNotEcho(t, k1b, a2) // other host, other VNI
		mustNotEcho(t, k1b, a1) // same host, other VNI
		mustNotEcho(t, k1a, b2)
	})

	t.Run("no route to underlay", func(t *testing.T) {
		u2 := h2.AddrPort(7100)
		echoServer(t, h2.Path(), netip.AddrPortFrom(netip.IPv4Unspecified(), 7100))
		mustEcho(t, h1.Path(), u2) // the underlay works
		err := echo(k1a, u2, 500*time.Millisecond)
		if err == nil {
			t.Fatalf("kernel reached underlay %s", u2)
		}
		if !errors.Is(err, unix.ENETUNREACH) {
			t.Logf("kernel -> underlay: %v (want network unreachable)", err)
		}
	})

	t.Run("peers reconciled", func(t *testing.T) {
		ensure(t, m1, vniA, h1, h2, h3)
		mustEcho(t, k1a, a2)
		ensure(t, m1, vniA, h1, h3) // h2 dropped: h1 stops sending to it
		mustNotEcho(t, k1a, a2)
		ensure(t, m1, vniA, h1, h2)
		mustEcho(t, k1a, a2)
	})

	t.Run("teardown", func(t *testing.T) {
		for _, k := range []struct {
			m    *netns.Manager
			vni  uint32
			name string
		}{{m1, vniA, "k1a"}, {m2, vniA, "k2a"}, {m1, vniB, "k1b"}, {m2, vniB, "k2b"}} {
			for range 2 {
				if err := k.m.DetachKernel(k.vni, k.m.Path(k.name), "eth1"); err != nil {
					t.Errorf("DetachKernel %s: %v", k.name, err)
				}
			}
			withHandle(t, k.m.Path(k.name), func(h *netlink.Handle) {
				if _, err := h.LinkByName("eth1"); err == nil {
					t.Errorf("%s still has eth1 after DetachKernel", k.name)
				}
			})
			if err := k.m.Delete(k.name); err != nil {
				t.Error(err)
			}
		}
		for _, m := range []*netns.Manager{m1, m2} {
			for _, vni := range []uint32{vniA, vniB, vniA} {
				if err := m.DeleteOverlay(vni); err != nil {
					t.Errorf("DeleteOverlay(%d): %v", vni, err)
				}
			}
		}
		for _, h := range bed.Hosts {
			if got := mustLinks(t, h); !slices.Equal(got, before[h.Name]) {
				t.Errorf("%s links after teardown = %v, want %v", h.Name, got, before[h.Name])
			}
		}
		for _, m := range []*netns.Manager{m1, m2} {
			ents, _ := os.ReadDir(m.NetnsDir())
			if len(ents) != 0 {
				t.Errorf("%s not empty after Delete: %v", m.NetnsDir(), ents)
			}
		}
	})
}

func TestDeleteOverlayRemovesVeths(t *testing.T) {
	bed := testbed.New(t, 1)
	h1 := bed.Hosts[0]
	before := mustLinks(t, h1)
	m := manager(t, bed, h1)
	ensure(t, m, 7, h1)
	k := kernel(t, m, "k", 7, "10.77.7.2/24")
	if err := m.AttachKernel(8, k, "eth2", netip.MustParsePrefix("10.77.8.2/24")); !errors.Is(err, netns.ErrNoOverlay) {
		t.Errorf("AttachKernel without overlay = %v, want ErrNoOverlay", err)
	}
	if err := m.EnsureOverlay(netns.Overlay{VNI: 9, Local: netip.MustParseAddr("192.0.2.99")}); !errors.Is(err, netns.ErrNoUnderlay) {
		t.Errorf("EnsureOverlay with a foreign local address = %v, want ErrNoUnderlay", err)
	}
	if err := m.DeleteOverlay(7); err != nil {
		t.Fatal(err)
	}
	if got := mustLinks(t, h1); !slices.Equal(got, before) {
		t.Errorf("links after DeleteOverlay = %v, want %v", got, before)
	}
	withHandle(t, k, func(h *netlink.Handle) {
		if _, err := h.LinkByName("eth1"); err == nil {
			t.Error("kernel still has eth1 after DeleteOverlay")
		}
	})
}

func TestReconcile(t *testing.T) {
	bed := testbed.New(t, 1)
	h1 := bed.Hosts[0]
	m := manager(t, bed, h1)
	peer := bed.Subnet.Addr().Next().Next().Next().Next() // no such host: fine for FDB entries
	for _, vni := range []uint32{10, 11, 12} {
		if err := m.EnsureOverlay(netns.Overlay{VNI: vni, Local: h1.IP, Peers: []netip.Addr{peer}}); err != nil {
			t.Fatal(err)
		}
	}
	k10 := kernel(t, m, "k10", 10, "10.77.10.2/24")
	kernel(t, m, "k11", 11, "10.77.11.2/24")
	if _, err := m.Create("stale"); err != nil {
		t.Fatal(err)
	}
	// Look-alikes that are not ours stay: wrong type or not a name we make.
	lookalikes := []string{"crx99", "crv000000000000", "crb012", "other0"}
	withHandle(t, h1.Path(), func(h *netlink.Handle) {
		for _, name := range lookalikes {
			attrs := netlink.NewLinkAttrs()
			attrs.Name = name
			if err := h.LinkAdd(&netlink.Bridge{LinkAttrs: attrs}); err != nil {
				t.Fatal(err)
			}
		}
	})

	if err := m.Reconcile(map[uint32]bool{10: true}, map[string]bool{"k10": true}); err != nil {
		t.Fatal(err)
	}
	got := mustLinks(t, h1)
	want := append([]string{"crb10", "crx10", netns.VethName(10, k10, "eth1"), "eth0", "lo"}, lookalikes...)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("links after Reconcile = %v, want %v", got, want)
	}
	var names []string
	ents, _ := os.ReadDir(m.NetnsDir())
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if !slices.Equal(names, []string{"k10"}) {
		t.Errorf("namespaces after Reconcile = %v, want [k10]", names)
	}
	if ps, err := m.Peers(10); err != nil || !slices.Equal(ps, []netip.Addr{peer}) {
		t.Errorf("Peers(10) after Reconcile = %v, %v", ps, err)
	}
	// Nothing kept: everything of ours goes.
	if err := m.Reconcile(nil, nil); err != nil {
		t.Fatal(err)
	}
	got = mustLinks(t, h1)
	want = append([]string{"eth0", "lo"}, lookalikes...)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("links after Reconcile(nil, nil) = %v, want %v", got, want)
	}
	if ents, _ := os.ReadDir(m.NetnsDir()); len(ents) != 0 {
		t.Errorf("namespaces left after Reconcile(nil, nil): %v", ents)
	}
}

// TestAttachKernelReady checks that a kernel's network works as soon as
// AttachKernel returns: a first SYN sent before the kernel activates the
// veth is dropped, and TCP only retries a second later.
func TestAttachKernelReady(t *testing.T) {
	bed := testbed.New(t, 2)
	h1, h2 := bed.Hosts[0], bed.Hosts[1]
	m1, m2 := manager(t, bed, h1), manager(t, bed, h2)
	for i := 1; i <= 4; i++ {
		vni := uint32(300 + i)
		ensure(t, m1, vni, h1, h2)
		ensure(t, m2, vni, h2, h1)
		k1 := kernel(t, m1, fmt.Sprintf("r1-%d", i), vni, fmt.Sprintf("10.88.%d.2/24", i))
		k2 := kernel(t, m2, fmt.Sprintf("r2-%d", i), vni, fmt.Sprintf("10.88.%d.3/24", i))
		a := netip.MustParseAddrPort(fmt.Sprintf("10.88.%d.3:7000", i))
		echoServer(t, k2, a)
		start := time.Now()
		if err := echo(k1, a, 900*time.Millisecond); err != nil {
			t.Errorf("VNI %d: first connection after AttachKernel: %v after %v", vni, err, time.Since(start))
		}
	}
}

package vm

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strconv"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/corral-dev/corral/drivers/vm/guestproto"
)

// nicState is one of a VM's network interfaces as the handle keeps it, to
// undo it in Destroy: the kernel's interface Link, enslaved with the tap
// device Tap to the bridge Bridge, all in the kernel's network namespace.
type nicState struct {
	Link    string `json:"link"`
	Tap     string `json:"tap"`
	Bridge  string `json:"bridge"`
	MAC     string `json:"mac"` // the link's, given to the guest
	Gateway string `json:"gateway,omitempty"`
}

// inNetNS runs f on a thread in the network namespace at path.
func inNetNS(path string, f func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return err
	}
	defer orig.Close()
	target, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("network namespace %s: %w", path, err)
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		return fmt.Errorf("entering network namespace %s: %w", path, err)
	}
	defer func() {
		if err := netns.Set(orig); err != nil {
			// This thread is in the wrong namespace: never reuse it.
			runtime.Goexit()
		}
	}()
	return f()
}

// plugNetwork connects the VM to the kernel's network: for each interface
// with an IPv4 address in the namespace at nsPath (the agent's egress veth,
// a cluster kernel's overlay veth), a bridge joins it and a tap device for
// qemu. The guest takes over the interface's MAC and addresses (the veth
// keeps its addresses, which the agent reads, and gets a MAC of its own),
// so the agent's plumbing, port publishing and overlays work unchanged.
func plugNetwork(nsPath string) ([]nicState, []guestproto.NIC, error) {
	var nics []nicState
	var guest []guestproto.NIC
	err := inNetNS(nsPath, func() error {
		// The namespace keeps the addresses that the guest took over:
		// it must not answer ARP for them, or the peers' traffic for
		// the guest goes to the bridge, which answers ping itself and
		// refuses or drops TCP. arp_ignore 8 answers no request.
		if err := os.WriteFile("/proc/sys/net/ipv4/conf/all/arp_ignore", []byte("8"), 0o644); err != nil {
			return fmt.Errorf("arp_ignore: %w", err)
		}
		links, err := netlink.LinkList()
		if err != nil {
			return err
		}
		for _, l := range links {
			a := l.Attrs()
			if a.Flags&net.FlagLoopback != 0 || a.MasterIndex != 0 {
				continue
			}
			addrs, err := netlink.AddrList(l, netlink.FAMILY_V4)
			if err != nil || len(addrs) == 0 {
				continue
			}
			n := nicState{
				Link: a.Name, MAC: a.HardwareAddr.String(),
				Tap: "vmtap" + strconv.Itoa(len(nics)), Bridge: "vmbr" + strconv.Itoa(len(nics)),
			}
			g := guestproto.NIC{MAC: n.MAC}
			for _, ad := range addrs {
				g.Addresses = append(g.Addresses, ad.IPNet.String())
			}
			routes, _ := netlink.RouteList(l, netlink.FAMILY_V4)
			for _, r := range routes {
				if r.Dst == nil || r.Dst.String() == "0.0.0.0/0" {
					if r.Gw != nil {
						n.Gateway, g.Gateway = r.Gw.String(), r.Gw.String()
					}
				}
			}
			if err := plugOne(l, n); err != nil {
				return fmt.Errorf("connecting %s to the VM: %w", a.Name, err)
			}
			nics = append(nics, n)
			guest = append(guest, g)
		}
		return nil
	})
	if err != nil {
		_ = unplugNetwork(nsPath, nics)
		return nil, nil, err
	}
	return nics, guest, nil
}

func plugOne(l netlink.Link, n nicState) error {
	mac := make(net.HardwareAddr, 6)
	if _, err := rand.Read(mac); err != nil {
		return err
	}
	mac[0] = (mac[0] | 0x02) &^ 0x01 // locally administered, unicast
	if err := netlink.LinkSetDown(l); err != nil {
		return err
	}
	if err := netlink.LinkSetHardwareAddr(l, mac); err != nil {
		return err
	}
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: n.Bridge}}
	if err := netlink.LinkAdd(br); err != nil {
		return fmt.Errorf("bridge %s: %w", n.Bridge, err)
	}
	tap := &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: n.Tap}, Mode: netlink.TUNTAP_MODE_TAP,
		Flags: netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR | netlink.TUNTAP_ONE_QUEUE}
	if err := netlink.LinkAdd(tap); err != nil {
		return fmt.Errorf("tap %s: %w", n.Tap, err)
	}
	for _, dev := range []netlink.Link{l, tap} {
		if err := netlink.LinkSetMaster(dev, br); err != nil {
			return err
		}
	}
	for _, dev := range []netlink.Link{br, tap, l} {
		if err := netlink.LinkSetUp(dev); err != nil {
			return err
		}
	}
	return nil
}

// unplugNetwork removes the VM's taps and bridges and gives each interface
// its MAC and default route back. A namespace that is gone already is
// not an error.
func unplugNetwork(nsPath string, nics []nicState) error {
	if nsPath == "" || len(nics) == 0 {
		return nil
	}
	if _, err := os.Stat(nsPath); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return inNetNS(nsPath, func() error {
		var errs []error
		for _, n := range nics {
			for _, name := range []string{n.Tap, n.Bridge} {
				if l, err := netlink.LinkByName(name); err == nil {
					if err := netlink.LinkDel(l); err != nil {
						errs = append(errs, fmt.Errorf("removing %s: %w", name, err))
					}
				}
			}
			l, err := netlink.LinkByName(n.Link)
			if err != nil {
				continue
			}
			if mac, err := net.ParseMAC(n.MAC); err == nil {
				_ = netlink.LinkSetDown(l)
				_ = netlink.LinkSetHardwareAddr(l, mac)
			}
			_ = netlink.LinkSetUp(l)
			if gw := net.ParseIP(n.Gateway); gw != nil {
				_ = netlink.RouteReplace(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: gw})
			}
		}
		return errors.Join(errs...)
	})
}

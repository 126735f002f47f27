package kubelet

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/directlb/directlb/internal/namedns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// PodGateway is the pod's link-local default gateway, answered by a static
// neighbour entry for the node-side veth (as the AWS VPC CNI does).
var PodGateway = netip.MustParseAddr("169.254.1.1")

// NetnsDialer dials from inside the named network namespace.
func NetnsDialer(name string) Dialer { return namedns.Dialer(name) }

func handleAt(name string) (*netlink.Handle, netns.NsHandle, error) {
	ns, err := namedns.Open(name)
	if err != nil {
		return nil, 0, err
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		ns.Close()
		return nil, 0, fmt.Errorf("netlink handle in %s: %w", name, err)
	}
	return h, ns, nil
}

// PodNetwork is what a pod's sandbox is on the network.
type PodNetwork struct {
	NodeNetNS string     // node namespace name
	PodNetNS  string     // pod namespace name
	HostVeth  string     // node-side veth
	ENIDevice string     // the ENI that answers ARP for the address
	Addr      netip.Addr // the pod's address
}

// setupPodNetwork builds the pod's namespace and wiring; it is idempotent
// (an existing veth is recreated).
func setupPodNetwork(n PodNetwork) error {
	if err := namedns.Ensure(n.PodNetNS); err != nil {
		return err
	}
	nodeH, nodeNs, err := handleAt(n.NodeNetNS)
	if err != nil {
		return err
	}
	defer nodeNs.Close()
	defer nodeH.Close()
	podH, podNs, err := handleAt(n.PodNetNS)
	if err != nil {
		return err
	}
	defer podNs.Close()
	defer podH.Close()

	if old, err := nodeH.LinkByName(n.HostVeth); err == nil {
		if err := nodeH.LinkDel(old); err != nil {
			return fmt.Errorf("delete old veth %s: %w", n.HostVeth, err)
		}
	}
	if old, err := podH.LinkByName("eth0"); err == nil {
		_ = podH.LinkDel(old)
	}
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: n.HostVeth},
		PeerName:      "eth0",
		PeerNamespace: netlink.NsFd(int(podNs)),
	}
	if err := nodeH.LinkAdd(veth); err != nil {
		return fmt.Errorf("add veth %s: %w", n.HostVeth, err)
	}
	host, err := nodeH.LinkByName(n.HostVeth)
	if err != nil {
		return fmt.Errorf("find veth %s: %w", n.HostVeth, err)
	}
	if err := nodeH.LinkSetUp(host); err != nil {
		return fmt.Errorf("up veth %s: %w", n.HostVeth, err)
	}

	// Pod side: lo, eth0 with the /32, gateway 169.254.1.1 = the host veth's MAC.
	lo, err := podH.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find pod lo: %w", err)
	}
	if err := podH.LinkSetUp(lo); err != nil {
		return fmt.Errorf("up pod lo: %w", err)
	}
	eth0, err := podH.LinkByName("eth0")
	if err != nil {
		return fmt.Errorf("find pod eth0: %w", err)
	}
	if err := podH.LinkSetUp(eth0); err != nil {
		return fmt.Errorf("up pod eth0: %w", err)
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: n.Addr.AsSlice(), Mask: net.CIDRMask(32, 32)}}
	if err := podH.AddrReplace(eth0, addr); err != nil {
		return fmt.Errorf("address %s on pod eth0: %w", n.Addr, err)
	}
	gw := net.IP(PodGateway.AsSlice())
	if err := podH.NeighSet(&netlink.Neigh{LinkIndex: eth0.Attrs().Index, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT, IP: gw, HardwareAddr: host.Attrs().HardwareAddr}); err != nil {
		return fmt.Errorf("gateway neighbour in pod: %w", err)
	}
	if err := podH.RouteReplace(&netlink.Route{LinkIndex: eth0.Attrs().Index, Scope: netlink.SCOPE_LINK, Dst: &net.IPNet{IP: gw, Mask: net.CIDRMask(32, 32)}}); err != nil {
		return fmt.Errorf("gateway route in pod: %w", err)
	}
	if err := podH.RouteReplace(&netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: gw, Dst: &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}}); err != nil {
		return fmt.Errorf("default route in pod: %w", err)
	}

	// Node side: /32 route to the pod, proxy ARP on the ENI.
	if err := nodeH.RouteReplace(&netlink.Route{LinkIndex: host.Attrs().Index, Scope: netlink.SCOPE_LINK, Dst: &net.IPNet{IP: n.Addr.AsSlice(), Mask: net.CIDRMask(32, 32)}}); err != nil {
		return fmt.Errorf("route to pod %s: %w", n.Addr, err)
	}
	eni, err := nodeH.LinkByName(n.ENIDevice)
	if err != nil {
		return fmt.Errorf("find ENI %s: %w", n.ENIDevice, err)
	}
	if err := nodeH.NeighSet(&netlink.Neigh{LinkIndex: eni.Attrs().Index, Family: netlink.FAMILY_V4, Flags: netlink.NTF_PROXY, IP: n.Addr.AsSlice()}); err != nil {
		return fmt.Errorf("proxy neighbour %s on %s: %w", n.Addr, n.ENIDevice, err)
	}
	return nil
}

// prepareNode sets what proxy ARP for pods needs in the node namespace:
// forwarding on and no proxy delay on the ENIs (the kernel answers a proxied
// ARP request only when forwarding is on and the route to the address goes
// through another device, i.e. the pod's veth).
func prepareNode(nodeNetNS string, eniDevices []string) error {
	return namedns.Do(nodeNetNS, func() error {
		writes := map[string]string{"/proc/sys/net/ipv4/ip_forward": "1"}
		for _, d := range eniDevices {
			writes["/proc/sys/net/ipv4/neigh/"+d+"/proxy_delay"] = "0"
			writes["/proc/sys/net/ipv4/conf/"+d+"/forwarding"] = "1"
		}
		for p, v := range writes {
			if err := os.WriteFile(p, []byte(v), 0o644); err != nil {
				return fmt.Errorf("sysctl %s: %w", p, err)
			}
		}
		return nil
	})
}

// teardownPodNetwork removes the proxy entry, the veth (and with it the
// route) and the pod namespace. Missing pieces are success.
func teardownPodNetwork(n PodNetwork) error {
	var errs []error
	nodeH, nodeNs, err := handleAt(n.NodeNetNS)
	if err == nil {
		defer nodeNs.Close()
		defer nodeH.Close()
		if n.Addr.IsValid() && n.ENIDevice != "" {
			if eni, err := nodeH.LinkByName(n.ENIDevice); err == nil {
				err := nodeH.NeighDel(&netlink.Neigh{LinkIndex: eni.Attrs().Index, Family: netlink.FAMILY_V4, Flags: netlink.NTF_PROXY, IP: n.Addr.AsSlice()})
				if err != nil && !errors.Is(err, unix.ENOENT) {
					errs = append(errs, fmt.Errorf("delete proxy neighbour %s: %w", n.Addr, err))
				}
			}
		}
		if l, err := nodeH.LinkByName(n.HostVeth); err == nil {
			if err := nodeH.LinkDel(l); err != nil {
				errs = append(errs, fmt.Errorf("delete veth %s: %w", n.HostVeth, err))
			}
		}
	} else if !errors.Is(err, os.ErrNotExist) && !strings.Contains(err.Error(), "no such file") {
		errs = append(errs, err)
	}
	if n.PodNetNS != "" && n.PodNetNS != n.NodeNetNS {
		if err := namedns.Delete(n.PodNetNS); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

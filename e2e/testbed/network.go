package testbed

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/directlb/directlb/internal/namedns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// routeProto marks the routes the test bed adds on the host, so 'down'
// finds them (iproute2 shows it as "proto 209").
const routeProto netlink.RouteProtocol = 209

// guardMetric is the metric of the host's unreachable routes for the test
// bed's ranges: worse than the real routes through dlb-host, better than the
// default route, so no packet for these ranges ever leaves the machine, even
// when dlb-host is gone.
const guardMetric = 4242

// guardedRanges never leave the host through its own interfaces.
var guardedRanges = []netip.Prefix{VPCCIDR, LoadBalancerCIDR, ServiceCIDR}

// nsSysctls are set in every namespace the test bed makes before any
// interface is added (so "default" applies to them too).
var nsSysctls = map[string]string{
	"net.ipv4.ip_forward":             "1",
	"net.ipv4.conf.all.rp_filter":     "0",
	"net.ipv4.conf.default.rp_filter": "0",
	// Each ENI answers ARP only for its own addresses (and the pod
	// addresses it proxies), as a cloud fabric would.
	"net.ipv4.conf.all.arp_ignore":   "1",
	"net.ipv4.conf.all.arp_announce": "2",
	// No IPv6 chatter on the VPC.
	"net.ipv6.conf.all.disable_ipv6":     "1",
	"net.ipv6.conf.default.disable_ipv6": "1",
}

// setupNetwork builds the VPC, the host's port, the cloud namespace and the
// nodes' namespaces with their ENIs.
func setupNetwork(t *Topology) error {
	// The guard routes go first: from here on nothing for the test bed's
	// ranges can take the host's default route.
	if err := addGuardRoutes(); err != nil {
		return err
	}
	if err := createNetNS(t.VPCNetNS); err != nil {
		return err
	}
	if err := setSysctls(t.VPCNetNS, nsSysctls); err != nil {
		return err
	}
	vpc, err := namedns.Handle(t.VPCNetNS)
	if err != nil {
		return err
	}
	defer vpc.Close()

	brLink, err := addVPCBridge(vpc, t)
	if err != nil {
		return err
	}

	// The host's port: dlb-host on the host, "host" on the bridge.
	if err := setupHostPort(vpc, brLink, t); err != nil {
		return err
	}

	// The cloud.
	if err := setupPortNS(vpc, brLink, t.CloudNetNS, "cloud", "eth0", vpcMAC(0, 3), netip.PrefixFrom(t.CloudAddr, t.VPC.Bits()), t.Gateway); err != nil {
		return err
	}

	// The nodes.
	for i, n := range t.Nodes {
		if err := setupNodeNS(vpc, brLink, i, n); err != nil {
			return err
		}
	}
	return nil
}

// addVPCBridge adds the VPC's bridge with the VPC router's address and the
// route to the load balancers through the cloud.
func addVPCBridge(vpc *netlink.Handle, t *Topology) (netlink.Link, error) {
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: BridgeName, HardwareAddr: mustMAC(vpcMAC(0, 1))}}
	if err := vpc.LinkAdd(br); err != nil {
		return nil, fmt.Errorf("vpc: add bridge: %w", err)
	}
	brLink, err := vpc.LinkByName(BridgeName)
	if err != nil {
		return nil, fmt.Errorf("vpc: bridge: %w", err)
	}
	if err := addrUp(vpc, brLink, netip.PrefixFrom(t.Gateway, t.VPC.Bits())); err != nil {
		return nil, fmt.Errorf("vpc: %w", err)
	}
	if err := vpc.RouteAdd(&netlink.Route{Dst: ipNet(t.LoadBalancerCIDR), Gw: t.CloudAddr.AsSlice(), LinkIndex: brLink.Attrs().Index}); err != nil {
		return nil, fmt.Errorf("vpc: route %s via %s: %w", t.LoadBalancerCIDR, t.CloudAddr, err)
	}
	return brLink, nil
}

// setupHostPort connects the host to the VPC (dlb-host on the host, "host"
// on the bridge) with its address and its routes to the load balancers and
// the Services.
func setupHostPort(vpc *netlink.Handle, brLink netlink.Link, t *Topology) error {
	if err := addVPCPort(vpc, brLink, "host", netns.None(), HostLink, vpcMAC(0, 2)); err != nil {
		return err
	}
	host, err := netlink.LinkByName(HostLink)
	if err != nil {
		return fmt.Errorf("host: %s: %w", HostLink, err)
	}
	// No IPv6 chatter from the host onto the VPC.
	if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+HostLink+"/disable_ipv6", []byte("1"), 0o644); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("host: disable IPv6 on %s: %w", HostLink, err)
	}
	if err := addrUp(nil, host, netip.PrefixFrom(t.HostAddr, t.VPC.Bits())); err != nil {
		return fmt.Errorf("host: %w", err)
	}
	for _, r := range []netlink.Route{
		{Dst: ipNet(t.LoadBalancerCIDR), Gw: t.CloudAddr.AsSlice(), LinkIndex: host.Attrs().Index, Protocol: routeProto},
		// Service addresses go to the VPC router, which has no route for
		// them: a connect without a load balancer fails fast, yet DNAT on
		// the host's OUTPUT path (kube-proxy) still works.
		{Dst: ipNet(t.ServiceCIDR), Gw: t.Gateway.AsSlice(), LinkIndex: host.Attrs().Index, Protocol: routeProto, Priority: 1000},
	} {
		if err := netlink.RouteReplace(&r); err != nil {
			return fmt.Errorf("host: route %s: %w", r.Dst, err)
		}
	}
	return nil
}

// setupNodeNS makes the namespace of node n (the i-th, from 0) with its ENIs
// on the VPC bridge and a default route through its first ENI's gateway.
func setupNodeNS(vpc *netlink.Handle, brLink netlink.Link, i int, n Node) error {
	if err := createNetNS(n.NetNS); err != nil {
		return err
	}
	if err := setSysctls(n.NetNS, nsSysctls); err != nil {
		return err
	}
	for _, e := range n.ENIs {
		if err := addENI(vpc, brLink, n.NetNS, vpcPortName(i+1, e.DeviceIdx), e); err != nil {
			return fmt.Errorf("node %s: %w", n.Name, err)
		}
	}
	h, err := namedns.Handle(n.NetNS)
	if err != nil {
		return err
	}
	eth0, err := h.LinkByName(n.ENIs[0].Device)
	if err == nil {
		err = h.RouteAdd(&netlink.Route{Dst: ipNet(netip.MustParsePrefix("0.0.0.0/0")), Gw: n.ENIs[0].Gateway.AsSlice(), LinkIndex: eth0.Attrs().Index})
	}
	h.Close()
	if err != nil {
		return fmt.Errorf("node %s: default route: %w", n.Name, err)
	}
	return nil
}

// setupPortNS makes a namespace with one interface on the VPC bridge and a
// default route through the VPC router.
func setupPortNS(vpc *netlink.Handle, br netlink.Link, nsName, port, dev, mac string, addr netip.Prefix, gw netip.Addr) error {
	if err := createNetNS(nsName); err != nil {
		return err
	}
	if err := setSysctls(nsName, nsSysctls); err != nil {
		return err
	}
	ns, err := namedns.Open(nsName)
	if err != nil {
		return err
	}
	defer ns.Close()
	if err := addVPCPort(vpc, br, port, ns, dev, mac); err != nil {
		return err
	}
	h, err := namedns.Handle(nsName)
	if err != nil {
		return err
	}
	defer h.Close()
	l, err := h.LinkByName(dev)
	if err != nil {
		return fmt.Errorf("netns %s: %s: %w", nsName, dev, err)
	}
	if err := addrUp(h, l, addr); err != nil {
		return fmt.Errorf("netns %s: %w", nsName, err)
	}
	if err := h.RouteAdd(&netlink.Route{Dst: ipNet(netip.MustParsePrefix("0.0.0.0/0")), Gw: gw.AsSlice(), LinkIndex: l.Attrs().Index}); err != nil {
		return fmt.Errorf("netns %s: default route: %w", nsName, err)
	}
	return nil
}

// addENI puts a node's ENI on the bridge: port <port> in the VPC namespace,
// device e.Device with e.MAC and e.Addr in the node's namespace.
func addENI(vpc *netlink.Handle, br netlink.Link, nodeNS, port string, e ENI) error {
	ns, err := namedns.Open(nodeNS)
	if err != nil {
		return err
	}
	defer ns.Close()
	if err := addVPCPort(vpc, br, port, ns, e.Device, e.MAC); err != nil {
		return fmt.Errorf("eni %s: %w", e.ID, err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("eni %s: netlink: %w", e.ID, err)
	}
	defer h.Close()
	l, err := h.LinkByName(e.Device)
	if err != nil {
		return fmt.Errorf("eni %s: %w", e.ID, err)
	}
	if err := addrUp(h, l, e.Addr); err != nil {
		return fmt.Errorf("eni %s: %w", e.ID, err)
	}
	return nil
}

// addVPCPort creates a veth whose end <port> is a port of the bridge in the
// VPC namespace and whose other end <peer> (with MAC peerMAC) lives in
// peerNS (the host's namespace when peerNS is netns.None()).
func addVPCPort(vpc *netlink.Handle, br netlink.Link, port string, peerNS netns.NsHandle, peer, peerMAC string) error {
	v := &netlink.Veth{
		LinkAttrs:        netlink.LinkAttrs{Name: port, MasterIndex: br.Attrs().Index},
		PeerName:         peer,
		PeerHardwareAddr: mustMAC(peerMAC),
	}
	if peerNS.IsOpen() {
		v.PeerNamespace = netlink.NsFd(int(peerNS))
	} else {
		v.PeerNamespace = netlink.NsPid(unix.Getpid())
	}
	if err := vpc.LinkAdd(v); err != nil {
		return fmt.Errorf("vpc: add port %s (peer %s): %w", port, peer, err)
	}
	l, err := vpc.LinkByName(port)
	if err != nil {
		return fmt.Errorf("vpc: port %s: %w", port, err)
	}
	if err := vpc.LinkSetUp(l); err != nil {
		return fmt.Errorf("vpc: port %s up: %w", port, err)
	}
	return nil
}

// addrUp gives link its address and brings it up; h nil means the host.
func addrUp(h *netlink.Handle, l netlink.Link, p netip.Prefix) error {
	addrAdd, linkUp := netlink.AddrAdd, netlink.LinkSetUp
	if h != nil {
		addrAdd, linkUp = h.AddrAdd, h.LinkSetUp
	}
	a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
	if err := addrAdd(l, a); err != nil {
		return fmt.Errorf("address %s on %s: %w", p, l.Attrs().Name, err)
	}
	if err := linkUp(l); err != nil {
		return fmt.Errorf("%s up: %w", l.Attrs().Name, err)
	}
	return nil
}

// addGuardRoutes adds the host's unreachable routes for the test bed's ranges.
func addGuardRoutes() error {
	for _, p := range guardedRanges {
		r := &netlink.Route{Dst: ipNet(p), Type: unix.RTN_UNREACHABLE, Priority: guardMetric, Protocol: routeProto}
		if err := netlink.RouteReplace(r); err != nil {
			return fmt.Errorf("host: unreachable route %s: %w", p, err)
		}
	}
	return nil
}

// deleteHostRoutes removes every host route the test bed added.
func deleteHostRoutes() error {
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: routeProto, Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	if err != nil {
		return fmt.Errorf("list host routes: %w", err)
	}
	var errs []error
	for _, r := range routes {
		if err := netlink.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("delete host route %s: %w", r.Dst, err))
		}
	}
	return errors.Join(errs...)
}

func ipNet(p netip.Prefix) *net.IPNet {
	p = p.Masked()
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func mustMAC(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(fmt.Sprintf("bad MAC %q: %v", s, err))
	}
	return m
}

package podnet

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Verify checks that the attachment is wired as Setup wires it: the pod's
// interface with the /32 and its gateway neighbour and routes, the node's
// veth up with the route to the pod, and the ENI's proxy entry. It reports
// every piece that is missing.
func Verify(a Attachment) error {
	node, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("netlink handle: %w", err)
	}
	defer node.Close()
	host, err := node.LinkByName(a.HostVeth)
	if err != nil {
		return fmt.Errorf("node veth %s: %w", a.HostVeth, err)
	}
	pod, err := openPod(a.Netns)
	if err != nil {
		return err
	}
	defer pod.Close()
	return errors.Join(verifyPod(pod, a, host.Attrs().HardwareAddr), verifyNode(node, host, a))
}

func verifyPod(pod *podNS, a Attachment, hostMAC net.HardwareAddr) error {
	link, err := pod.LinkByName(a.IfName)
	if err != nil {
		return fmt.Errorf("pod interface %s: %w", a.IfName, err)
	}
	var errs []error
	addrs, err := pod.AddrList(link, unix.AF_INET)
	if err != nil {
		return fmt.Errorf("addresses of pod %s: %w", a.IfName, err)
	}
	if !slices.ContainsFunc(addrs, func(x netlink.Addr) bool { return x.IPNet.String() == host32(a.IP).String() }) {
		errs = append(errs, fmt.Errorf("pod %s lacks address %s/32", a.IfName, a.IP))
	}
	routes, err := pod.RouteList(link, unix.AF_INET)
	if err != nil {
		return fmt.Errorf("routes of pod %s: %w", a.IfName, err)
	}
	if !slices.ContainsFunc(routes, func(r netlink.Route) bool { return isRouteTo(r, Gateway) && r.Scope == netlink.SCOPE_LINK }) {
		errs = append(errs, fmt.Errorf("pod lacks route %s dev %s scope link", Gateway, a.IfName))
	}
	if !slices.ContainsFunc(routes, func(r netlink.Route) bool { return isDefault(r) && r.Gw.Equal(Gateway.AsSlice()) }) {
		errs = append(errs, fmt.Errorf("pod lacks route default via %s", Gateway))
	}
	neighs, err := pod.NeighList(link.Attrs().Index, unix.AF_INET)
	if err != nil {
		return fmt.Errorf("neighbours of pod %s: %w", a.IfName, err)
	}
	if !slices.ContainsFunc(neighs, func(n netlink.Neigh) bool {
		return n.IP.Equal(Gateway.AsSlice()) && n.State&netlink.NUD_PERMANENT != 0 && n.HardwareAddr.String() == hostMAC.String()
	}) {
		errs = append(errs, fmt.Errorf("pod lacks permanent neighbour %s lladdr %s", Gateway, hostMAC))
	}
	return errors.Join(errs...)
}

func verifyNode(node *netlink.Handle, host netlink.Link, a Attachment) error {
	var errs []error
	if host.Attrs().Flags&net.FlagUp == 0 {
		errs = append(errs, fmt.Errorf("node veth %s is down", a.HostVeth))
	}
	routes, err := node.RouteList(host, unix.AF_INET)
	if err != nil {
		return fmt.Errorf("routes of %s: %w", a.HostVeth, err)
	}
	if !slices.ContainsFunc(routes, func(r netlink.Route) bool { return isRouteTo(r, a.IP) && r.Scope == netlink.SCOPE_LINK }) {
		errs = append(errs, fmt.Errorf("node lacks route %s dev %s scope link", a.IP, a.HostVeth))
	}
	eni, err := node.LinkByName(a.ENIDevice)
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("ENI device %s: %w", a.ENIDevice, err))...)
	}
	proxies, err := node.NeighProxyList(eni.Attrs().Index, unix.AF_INET)
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("proxy neighbours on %s: %w", a.ENIDevice, err))...)
	}
	if !slices.ContainsFunc(proxies, func(n netlink.Neigh) bool { return n.LinkIndex == eni.Attrs().Index && n.IP.Equal(a.IP.AsSlice()) }) {
		errs = append(errs, fmt.Errorf("node lacks proxy neighbour %s dev %s", a.IP, a.ENIDevice))
	}
	return errors.Join(errs...)
}

func isRouteTo(r netlink.Route, ip netip.Addr) bool {
	return r.Dst != nil && r.Dst.String() == host32(ip).String()
}

func isDefault(r netlink.Route) bool {
	if r.Dst == nil {
		return true
	}
	ones, _ := r.Dst.Mask.Size()
	return ones == 0
}

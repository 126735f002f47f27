// Package podnet is directlb-cni's datapath: the pod's veth, its /32
// address and routes, and the proxy neighbour entry on the ENI that owns
// the address, the way the AWS VPC CNI wires a pod. Every function runs in
// the node's network namespace (where the runtime runs the plugin) and
// reaches into the pod's namespace by path.
//
// In the pod: eth0 with <ip>/32, `169.254.1.1 dev eth0 scope link`,
// `default via 169.254.1.1`, and a permanent neighbour entry 169.254.1.1 →
// the node-side veth's MAC, so the pod never ARPs for its gateway. In the
// node: `<ip>/32 dev dlb<8 hex> scope link`, `ip neigh add proxy <ip> dev
// <ENI device>` so the ENI answers ARP for the address on the subnet, and
// the sysctls proxy ARP needs (ip_forward, the ENI's forwarding, no proxy
// delay).
package podnet

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"strings"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/utils/sysctl"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Gateway is the pod's link-local default gateway, answered by a permanent
// neighbour entry for the node-side veth.
var Gateway = netip.MustParseAddr("169.254.1.1")

// vethName matches the node-side veths HostVeth names.
var vethName = regexp.MustCompile(`^dlb[0-9a-f]{8}$`)

// HostVeth is the node-side veth of a container's interface: "dlb" and the
// first 8 hex digits of the SHA-256 of the container ID, or, for an
// interface other than eth0, of "<container ID>/<interface>".
func HostVeth(containerID, ifName string) string {
	key := containerID
	if ifName != "eth0" {
		key += "/" + ifName
	}
	sum := sha256.Sum256([]byte(key))
	return "dlb" + hex.EncodeToString(sum[:4])
}

// Attachment is one pod interface as the datapath wires it.
type Attachment struct {
	// Netns is the path of the pod's network namespace (CNI_NETNS).
	Netns string
	// IfName is the pod's interface (CNI_IFNAME).
	IfName string
	// HostVeth is the node side (see HostVeth).
	HostVeth string
	// ENIDevice is the node's device of the ENI that owns IP.
	ENIDevice string
	IP        netip.Addr
}

// Links are the MACs and MTU Setup gave the attachment.
type Links struct {
	HostMAC string
	PodMAC  string
	MTU     int
}

func host32(a netip.Addr) *net.IPNet {
	return &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(32, 32)}
}

var defaultDst = &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}

func isNotFound(err error) bool {
	var lnf netlink.LinkNotFoundError
	return errors.As(err, &lnf) || errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH) || errors.Is(err, unix.ENODEV)
}

// podNS is the pod's network namespace and a netlink handle in it.
type podNS struct {
	ns ns.NetNS
	*netlink.Handle
}

// openPod opens the pod's namespace by path. A path that does not exist
// is an ns.NSPathNotExistErr.
func openPod(path string) (*podNS, error) {
	pns, err := ns.GetNS(path)
	if err != nil {
		return nil, fmt.Errorf("open pod network namespace: %w", err)
	}
	h, err := netlink.NewHandleAt(netns.NsHandle(int(pns.Fd())))
	if err != nil {
		pns.Close()
		return nil, fmt.Errorf("netlink handle in %s: %w", path, err)
	}
	return &podNS{ns: pns, Handle: h}, nil
}

func (p *podNS) Close() {
	p.Handle.Close()
	p.ns.Close()
}

// Setup wires the attachment; a veth of the same name, and a pod
// interface of the same name, are replaced. On failure it removes what it
// made.
func Setup(a Attachment) (Links, error) {
	node, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return Links{}, fmt.Errorf("netlink handle: %w", err)
	}
	defer node.Close()
	pod, err := openPod(a.Netns)
	if err != nil {
		return Links{}, err
	}
	defer pod.Close()
	eni, err := node.LinkByName(a.ENIDevice)
	if err != nil {
		return Links{}, fmt.Errorf("find ENI device %s: %w", a.ENIDevice, err)
	}
	if err := PrepareNode(a.ENIDevice); err != nil {
		return Links{}, err
	}
	host, podLink, err := addVeth(node, pod, a, eni.Attrs().MTU)
	if err != nil {
		return Links{}, err
	}
	links := Links{HostMAC: host.Attrs().HardwareAddr.String(), PodMAC: podLink.Attrs().HardwareAddr.String(), MTU: eni.Attrs().MTU}
	if err := wirePod(pod, podLink, a.IP, host.Attrs().HardwareAddr); err != nil {
		_ = node.LinkDel(host)
		return Links{}, err
	}
	if err := wireNode(node, host, eni, a.IP); err != nil {
		_ = node.LinkDel(host)
		_ = node.NeighDel(proxyNeigh(eni.Attrs().Index, a.IP))
		return Links{}, err
	}
	return links, nil
}

// addVeth replaces any old veth and pod interface of these names with a
// new pair, the host side up; it returns both ends.
func addVeth(node *netlink.Handle, pod *podNS, a Attachment, mtu int) (netlink.Link, netlink.Link, error) {
	if old, err := node.LinkByName(a.HostVeth); err == nil {
		if err := node.LinkDel(old); err != nil {
			return nil, nil, fmt.Errorf("delete old veth %s: %w", a.HostVeth, err)
		}
	}
	if old, err := pod.LinkByName(a.IfName); err == nil {
		if err := pod.LinkDel(old); err != nil {
			return nil, nil, fmt.Errorf("delete old pod interface %s: %w", a.IfName, err)
		}
	}
	attrs := netlink.NewLinkAttrs() // kernel defaults (queue length) for what is not set
	attrs.Name, attrs.MTU = a.HostVeth, mtu
	veth := &netlink.Veth{
		LinkAttrs:     attrs,
		PeerName:      a.IfName,
		PeerNamespace: netlink.NsFd(int(pod.ns.Fd())),
		PeerTxQLen:    -1,
	}
	if err := node.LinkAdd(veth); err != nil {
		return nil, nil, fmt.Errorf("add veth %s: %w", a.HostVeth, err)
	}
	host, err := node.LinkByName(a.HostVeth)
	if err == nil {
		err = node.LinkSetUp(host)
	}
	var podLink netlink.Link
	if err == nil {
		podLink, err = pod.LinkByName(a.IfName)
	}
	if err != nil {
		_ = node.LinkDel(veth)
		return nil, nil, fmt.Errorf("bring up veth %s: %w", a.HostVeth, err)
	}
	return host, podLink, nil
}

// wirePod sets up lo and the pod's interface: address, gateway neighbour
// and routes.
func wirePod(pod *podNS, link netlink.Link, ip netip.Addr, hostMAC net.HardwareAddr) error {
	if lo, err := pod.LinkByName("lo"); err == nil {
		if err := pod.LinkSetUp(lo); err != nil {
			return fmt.Errorf("bring up pod lo: %w", err)
		}
	}
	name := link.Attrs().Name
	if err := pod.LinkSetUp(link); err != nil {
		return fmt.Errorf("bring up pod %s: %w", name, err)
	}
	if err := pod.AddrReplace(link, &netlink.Addr{IPNet: host32(ip)}); err != nil {
		return fmt.Errorf("address %s on pod %s: %w", ip, name, err)
	}
	idx := link.Attrs().Index
	gw := net.IP(Gateway.AsSlice())
	if err := pod.NeighSet(&netlink.Neigh{LinkIndex: idx, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT, IP: gw, HardwareAddr: hostMAC}); err != nil {
		return fmt.Errorf("gateway neighbour in pod: %w", err)
	}
	if err := pod.RouteReplace(&netlink.Route{LinkIndex: idx, Scope: netlink.SCOPE_LINK, Dst: host32(Gateway)}); err != nil {
		return fmt.Errorf("gateway route in pod: %w", err)
	}
	if err := pod.RouteReplace(&netlink.Route{LinkIndex: idx, Gw: gw, Dst: defaultDst}); err != nil {
		return fmt.Errorf("default route in pod: %w", err)
	}
	return nil
}

func proxyNeigh(linkIndex int, ip netip.Addr) *netlink.Neigh {
	return &netlink.Neigh{LinkIndex: linkIndex, Family: netlink.FAMILY_V4, Flags: netlink.NTF_PROXY, IP: ip.AsSlice()}
}

// wireNode adds the node's route to the pod and the ENI's proxy entry.
func wireNode(node *netlink.Handle, host, eni netlink.Link, ip netip.Addr) error {
	if err := node.RouteReplace(&netlink.Route{LinkIndex: host.Attrs().Index, Scope: netlink.SCOPE_LINK, Dst: host32(ip)}); err != nil {
		return fmt.Errorf("route to pod %s: %w", ip, err)
	}
	if err := node.NeighSet(proxyNeigh(eni.Attrs().Index, ip)); err != nil {
		return fmt.Errorf("proxy neighbour %s on %s: %w", ip, eni.Attrs().Name, err)
	}
	return nil
}

// PrepareNode sets what proxy ARP for pods needs: forwarding on, and no
// proxy delay on the ENI device (Linux answers a proxied ARP request only
// with forwarding on and the route to the address through another device,
// the pod's veth, and otherwise waits up to 0.8 s before it does).
func PrepareNode(eniDevice string) error {
	for _, s := range [][2]string{
		{"net/ipv4/ip_forward", "1"},
		{"net/ipv4/conf/" + eniDevice + "/forwarding", "1"},
		{"net/ipv4/neigh/" + eniDevice + "/proxy_delay", "0"},
	} {
		if cur, err := sysctl.Sysctl(s[0]); err == nil && strings.TrimSpace(cur) == s[1] {
			continue
		}
		if _, err := sysctl.Sysctl(s[0], s[1]); err != nil {
			return fmt.Errorf("sysctl %s=%s: %w", s[0], s[1], err)
		}
	}
	return nil
}

// Teardown removes the ENI's proxy entry (when IP and ENIDevice are set)
// and the node-side veth, which takes the pod side and the route with it.
// Pieces already gone, and a pod namespace that is gone, are success.
func Teardown(a Attachment) error {
	node, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("netlink handle: %w", err)
	}
	defer node.Close()
	var errs []error
	if a.IP.IsValid() && a.ENIDevice != "" {
		if eni, err := node.LinkByName(a.ENIDevice); err == nil {
			if err := node.NeighDel(proxyNeigh(eni.Attrs().Index, a.IP)); err != nil && !isNotFound(err) {
				errs = append(errs, fmt.Errorf("delete proxy neighbour %s on %s: %w", a.IP, a.ENIDevice, err))
			}
		} else if !isNotFound(err) {
			errs = append(errs, fmt.Errorf("find ENI device %s: %w", a.ENIDevice, err))
		}
	}
	if l, err := node.LinkByName(a.HostVeth); err == nil {
		if err := node.LinkDel(l); err != nil && !isNotFound(err) {
			errs = append(errs, fmt.Errorf("delete veth %s: %w", a.HostVeth, err))
		}
	} else if !isNotFound(err) {
		errs = append(errs, fmt.Errorf("find veth %s: %w", a.HostVeth, err))
	}
	return errors.Join(errs...)
}

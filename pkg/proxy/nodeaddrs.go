package proxy

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	v1 "k8s.io/api/core/v1"

	"github.com/directlb/directlb/pkg/datapath"
)

// NodePortAddressPrimary is kube-proxy's keyword for a node's primary
// address (the first InternalIP of its Node, per family).
const NodePortAddressPrimary = "primary"

// NodePortAddresses selects the node addresses NodePorts are served on, as
// kube-proxy's nodePortAddresses does: the nodes' primary addresses, and
// the addresses within CIDRs.
type NodePortAddresses struct {
	Primary bool
	CIDRs   []netip.Prefix
}

// ParseNodePortAddresses reads --nodeport-addresses: CIDRs and the keyword
// "primary"; none at all means primary (kube-proxy's nftables default).
// IPv6 CIDRs are accepted and select nothing yet (no IPv6 NodePorts).
func ParseNodePortAddresses(vals []string) (NodePortAddresses, error) {
	var out NodePortAddresses
	for _, v := range vals {
		v = strings.TrimSpace(v)
		if v == "" {
			continue
		}
		if v == NodePortAddressPrimary {
			out.Primary = true
			continue
		}
		p, err := netip.ParsePrefix(v)
		if err != nil {
			return NodePortAddresses{}, fmt.Errorf("%q: want a CIDR or %q: %w", v, NodePortAddressPrimary, err)
		}
		out.CIDRs = append(out.CIDRs, p.Masked())
	}
	if len(out.CIDRs) == 0 {
		out.Primary = true
	}
	return out, nil
}

func (n NodePortAddresses) contains(a netip.Addr) bool {
	for _, p := range n.CIDRs {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// nodeAddresses are a Node's IPv4 addresses in its status order, internal
// ones first; the first is its primary address.
func nodeAddresses(n *v1.Node) []netip.Addr {
	var out []netip.Addr
	for _, typ := range []v1.NodeAddressType{v1.NodeInternalIP, v1.NodeExternalIP} {
		for _, na := range n.Status.Addresses {
			if na.Type != typ {
				continue
			}
			if a, err := netip.ParseAddr(na.Address); err == nil && a.Is4() {
				out = append(out, a)
			}
		}
	}
	return out
}

// usableNodeAddress leaves out what no NodePort is served on: loopback
// (as kube-proxy's nftables mode), unspecified, multicast and broadcast.
func usableNodeAddress(a netip.Addr) bool {
	return a.Is4() && !a.IsLoopback() && !a.IsUnspecified() && !a.IsMulticast() && a != netip.AddrFrom4([4]byte{255, 255, 255, 255})
}

// DesiredNodeAddresses returns the node addresses whose NodePorts this
// node's sockets translate: with Primary, every node's primary address
// (its first IPv4 InternalIP, else ExternalIP); with CIDRs, this node's
// own addresses (local: its interfaces' addresses) and the other nodes'
// Node addresses within them. Pods reaching another node's address at a
// NodePort are translated here, at the socket, as if they had reached
// that node (see docs/node-agent.md).
func DesiredNodeAddresses(nodes map[string][]netip.Addr, self string, sel NodePortAddresses, local []netip.Addr) map[netip.Addr]datapath.NodeAddressFlags {
	out := map[netip.Addr]datapath.NodeAddressFlags{}
	add := func(a netip.Addr, f datapath.NodeAddressFlags) {
		if !usableNodeAddress(a) {
			return
		}
		if old, ok := out[a]; ok && old&datapath.NodeAddressLocal != 0 {
			return // an address of this node and (stale) another's: ours
		}
		out[a] = f
	}
	flag := func(name string) datapath.NodeAddressFlags {
		if name == self {
			return datapath.NodeAddressLocal
		}
		return datapath.NodeAddressRemote
	}
	// This node first, so a stale claim by another node does not win.
	order := make([]string, 0, len(nodes))
	if _, ok := nodes[self]; ok {
		order = append(order, self)
	}
	for name := range nodes {
		if name != self {
			order = append(order, name)
		}
	}
	for _, name := range order {
		addrs := nodes[name]
		if sel.Primary && len(addrs) > 0 {
			add(addrs[0], flag(name))
		}
		for _, a := range addrs {
			if sel.contains(a) {
				add(a, flag(name))
			}
		}
	}
	for _, a := range local {
		if sel.contains(a) && usableNodeAddress(a) {
			out[a] = datapath.NodeAddressLocal
		}
	}
	return out
}

// matchAll reports whether the CIDRs select every IPv4 address (0.0.0.0/0):
// kube-proxy then listens for health checks on the unspecified address.
func (n NodePortAddresses) matchAll() bool {
	for _, p := range n.CIDRs {
		if p.Addr().Is4() && p.Bits() == 0 {
			return true
		}
	}
	return false
}

// healthCheckAddresses are this node's addresses among the desired node
// addresses (NodeAddressLocal), sorted: where kube-proxy listens for
// healthCheckNodePorts when nodePortAddresses does not match all.
func healthCheckAddresses(nodeAddrs map[netip.Addr]datapath.NodeAddressFlags) []netip.Addr {
	var out []netip.Addr
	for a, f := range nodeAddrs {
		if f&datapath.NodeAddressLocal != 0 {
			out = append(out, a)
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

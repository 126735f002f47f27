package proxy

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/directlb/directlb/pkg/datapath"
)

func node(name string, addrs ...v1.NodeAddress) *v1.Node {
	return &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Status: v1.NodeStatus{Addresses: addrs}}
}

func internal(a string) v1.NodeAddress { return v1.NodeAddress{Type: v1.NodeInternalIP, Address: a} }
func external(a string) v1.NodeAddress { return v1.NodeAddress{Type: v1.NodeExternalIP, Address: a} }

func TestParseNodePortAddresses(t *testing.T) {
	cases := []struct {
		in      []string
		want    NodePortAddresses
		wantErr bool
	}{
		{in: nil, want: NodePortAddresses{Primary: true}},
		{in: []string{"primary"}, want: NodePortAddresses{Primary: true}},
		{in: []string{"10.0.0.0/8", " 192.0.2.1/24 "}, want: NodePortAddresses{CIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.0.2.0/24")}}},
		{in: []string{"primary", "10.0.0.0/8"}, want: NodePortAddresses{Primary: true, CIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}},
		{in: []string{"10.0.0.1"}, wantErr: true},
	}
	for _, c := range cases {
		got, err := ParseNodePortAddresses(c.in)
		if (err != nil) != c.wantErr {
			t.Errorf("%q: error %v, want error %v", c.in, err, c.wantErr)
			continue
		}
		if diff := cmp.Diff(c.want, got, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
			t.Errorf("%q (-want +got):\n%s", c.in, diff)
		}
	}
}

func TestDesiredNodeAddresses(t *testing.T) {
	local, remote := datapath.NodeAddressLocal, datapath.NodeAddressRemote
	a := netip.MustParseAddr
	nodes := map[string][]netip.Addr{}
	for _, n := range []*v1.Node{
		node(thisNode, internal("10.0.0.11"), internal("10.0.1.11"), external("203.0.113.11")),
		node("node-2", external("203.0.113.12"), internal("10.0.0.12"), internal("fd00::12")),
		node("node-3", external("203.0.113.13")),
		node("node-4"),
		node("node-5", internal("127.0.0.1")),
	} {
		nodes[n.Name] = nodeAddresses(n)
	}
	cidrs := func(s ...string) NodePortAddresses {
		var out NodePortAddresses
		for _, p := range s {
			out.CIDRs = append(out.CIDRs, netip.MustParsePrefix(p))
		}
		return out
	}
	cases := []struct {
		name  string
		sel   NodePortAddresses
		local []netip.Addr
		want  map[netip.Addr]datapath.NodeAddressFlags
	}{
		{
			name: "primary: each node's first IPv4 InternalIP, else ExternalIP; loopback never",
			sel:  NodePortAddresses{Primary: true},
			want: map[netip.Addr]datapath.NodeAddressFlags{a("10.0.0.11"): local, a("10.0.0.12"): remote, a("203.0.113.13"): remote},
		},
		{
			name:  "CIDRs: this node's interface addresses and the Nodes' addresses within them",
			sel:   cidrs("10.0.1.0/24", "203.0.113.0/24"),
			local: []netip.Addr{a("10.0.1.11"), a("10.0.1.99"), a("10.0.0.11"), a("127.0.0.1")},
			want: map[netip.Addr]datapath.NodeAddressFlags{
				a("10.0.1.11"): local, a("10.0.1.99"): local,
				a("203.0.113.11"): local, a("203.0.113.12"): remote, a("203.0.113.13"): remote,
			},
		},
		{
			name:  "0.0.0.0/0 with primary: everything but loopback",
			sel:   NodePortAddresses{Primary: true, CIDRs: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}},
			local: []netip.Addr{a("10.0.0.11"), a("127.0.0.1"), a("169.254.1.1")},
			want: map[netip.Addr]datapath.NodeAddressFlags{
				a("10.0.0.11"): local, a("10.0.1.11"): local, a("203.0.113.11"): local, a("169.254.1.1"): local,
				a("10.0.0.12"): remote, a("203.0.113.12"): remote, a("203.0.113.13"): remote,
			},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := DesiredNodeAddresses(nodes, thisNode, c.sel, c.local)
			if diff := cmp.Diff(c.want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

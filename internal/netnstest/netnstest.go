// Package netnstest gives a privileged test a named network namespace of
// its own (made and removed through namedns) and a netlink handle in it.
package netnstest

import (
	"net"
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/directlb/directlb/internal/namedns"
)

// New creates the network namespace /run/netns/<name> (replacing one a
// crashed run left), deletes it when the test ends, and returns a netlink
// handle in it.
func New(t testing.TB, name string) *netlink.Handle {
	t.Helper()
	if err := namedns.Replace(name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := namedns.Delete(name); err != nil {
			t.Errorf("%v", err)
		}
	})
	h, err := namedns.Handle(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

// Veth adds a veth pair, name in a's namespace and peer in the namespace
// bNS (b is a handle in it), sets both up and returns them.
func Veth(t testing.TB, a *netlink.Handle, name string, b *netlink.Handle, bNS, peer string) (netlink.Link, netlink.Link) {
	t.Helper()
	bns, err := namedns.Open(bNS)
	if err != nil {
		t.Fatal(err)
	}
	defer bns.Close()
	if err := a.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: peer, PeerNamespace: netlink.NsFd(int(bns))}); err != nil {
		t.Fatalf("veth %s/%s: %v", name, peer, err)
	}
	la, err := a.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	lb, err := b.LinkByName(peer)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.LinkSetUp(la); err != nil {
		t.Fatal(err)
	}
	if err := b.LinkSetUp(lb); err != nil {
		t.Fatal(err)
	}
	return la, lb
}

// AddAddr adds the IPv4 address prefix (such as "10.0.0.1/24") to l.
func AddAddr(t testing.TB, h *netlink.Handle, l netlink.Link, prefix string) {
	t.Helper()
	p := netip.MustParsePrefix(prefix)
	ipn := &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), 32)}
	if err := h.AddrAdd(l, &netlink.Addr{IPNet: ipn}); err != nil {
		t.Fatalf("address %s: %v", prefix, err)
	}
}

// Package netnstest gives a privileged test a named network namespace of
// its own (made and removed through namedns) and a netlink handle in it.
package netnstest

import (
	"testing"

	"github.com/directlb/directlb/internal/namedns"
	"github.com/vishvananda/netlink"
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

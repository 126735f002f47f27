// Package netnstest makes named network namespaces for privileged tests
// and runs code inside them.
package netnstest

import (
	"fmt"
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// New creates the network namespace /run/netns/<name> (replacing one a
// crashed run left), deletes it when the test ends, and returns a netlink
// handle in it.
func New(t testing.TB, name string) *netlink.Handle {
	t.Helper()
	err := onThread(func() error {
		_ = netns.DeleteNamed(name)
		ns, err := netns.NewNamed(name) // also moves the thread into it
		if err == nil {
			ns.Close()
		}
		return err
	})
	if err != nil {
		t.Fatalf("create netns %s: %v", name, err)
	}
	t.Cleanup(func() {
		if err := netns.DeleteNamed(name); err != nil {
			t.Errorf("delete netns %s: %v", name, err)
		}
	})
	ns, err := netns.GetFromName(name)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

// Do runs fn on a locked thread inside the named namespace.
func Do(name string, fn func() error) error {
	ns, err := netns.GetFromName(name)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", name, err)
	}
	defer ns.Close()
	return onThread(func() error {
		if err := netns.Set(ns); err != nil {
			return err
		}
		return fn()
	})
}

// onThread runs fn on a fresh locked OS thread and puts the thread back in
// its original namespace afterwards; if that fails the thread stays locked
// and dies with its goroutine, so no other code runs in the wrong one.
func onThread(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		err = fn()
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

package testbed

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NetNSDir is where named network namespaces are bind-mounted (as iproute2
// does).
const NetNSDir = "/run/netns"

// createNetNS makes the named network namespace and brings its loopback up.
// The calling goroutine's namespace is not changed.
func createNetNS(name string) error {
	if err := os.MkdirAll(NetNSDir, 0o755); err != nil {
		return fmt.Errorf("create netns %s: %w", name, err)
	}
	err := onFreshThread(func() error {
		ns, err := netns.NewNamed(name) // switches this thread into it; onFreshThread switches back
		if err != nil {
			return err
		}
		return ns.Close()
	})
	if err != nil {
		return fmt.Errorf("create netns %s: %w", name, err)
	}
	h, err := netnsHandle(name)
	if err != nil {
		return err
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("netns %s: loopback: %w", name, err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		return fmt.Errorf("netns %s: loopback up: %w", name, err)
	}
	return nil
}

// deleteNetNS removes a named network namespace; a missing one is success.
func deleteNetNS(name string) error {
	p := filepath.Join(NetNSDir, name)
	if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("delete netns %s: unmount: %w", name, err)
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("delete netns %s: %w", name, err)
	}
	return nil
}

// listNetNS returns the names of the named network namespaces with prefix.
func listNetNS(prefix string) ([]string, error) {
	ents, err := os.ReadDir(NetNSDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list netns: %w", err)
	}
	var names []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix) {
			names = append(names, e.Name())
		}
	}
	return names, nil
}

// netnsHandle returns a netlink handle that works inside the named namespace.
func netnsHandle(name string) (*netlink.Handle, error) {
	ns, err := netns.GetFromName(name)
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", name, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, fmt.Errorf("netlink in netns %s: %w", name, err)
	}
	return h, nil
}

// InNetNS runs fn on an OS thread that is inside the named network
// namespace. Sockets fn opens stay in that namespace. The thread returns to
// its namespace afterwards (or is thrown away), so no other goroutine ever
// runs in the namespace.
func InNetNS(name string, fn func() error) error {
	ns, err := netns.GetFromName(name)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", name, err)
	}
	defer ns.Close()
	return onFreshThread(func() error {
		if err := netns.Set(ns); err != nil {
			return fmt.Errorf("enter netns %s: %w", name, err)
		}
		return fn()
	})
}

// onFreshThread runs fn on a locked OS thread and puts the thread back into
// its original network namespace afterwards. If that fails the thread stays
// locked and dies with the goroutine. (The goroutine may land on the main
// thread, which Go never lets die; so restoring is required, not optional:
// /proc/<pid>/ns/net is the main thread's namespace.)
func onFreshThread(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- fmt.Errorf("current netns: %w", err)
			return
		}
		defer orig.Close()
		err = fn()
		if rerr := netns.Set(orig); rerr != nil {
			errc <- errors.Join(err, fmt.Errorf("restore netns: %w", rerr))
			return // still locked: the thread is thrown away
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	return <-errc
}

// setSysctls writes net sysctls (paths under /proc/sys) inside a namespace.
func setSysctls(nsName string, kv map[string]string) error {
	return InNetNS(nsName, func() error {
		for k, v := range kv {
			p := filepath.Join("/proc/sys", strings.ReplaceAll(k, ".", "/"))
			if err := os.WriteFile(p, []byte(v), 0o644); err != nil {
				return fmt.Errorf("netns %s: sysctl %s=%s: %w", nsName, k, v, err)
			}
		}
		return nil
	})
}

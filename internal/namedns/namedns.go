// Package namedns creates, opens and deletes named network namespaces under
// /run/netns the way iproute2 does, so that this project's Go code and
// `ip netns` can be mixed in any order and from parallel processes.
//
// iproute2's order is: make /run/netns a mount point (a bind mount of itself)
// and mark it shared, then bind-mount each namespace onto a file in it. Code
// that skips the first step leaves its namespace mounts on the plain
// directory; a later `ip netns add` anywhere then bind-mounts the directory
// over them, and from then on they can be neither unmounted nor removed by
// path (EBUSY). Every create here goes through EnsureDir first, and Delete
// repairs that covered state when it finds it (see Repair).
package namedns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Dir is where named network namespaces are bind-mounted; iproute2 fixes it.
const Dir = "/run/netns"

// lockFile serializes this project's processes while they turn Dir into a
// mount point: two that both find it a plain directory would otherwise stack
// two bind mounts. (iproute2 takes no lock; its window is the same one.)
const lockFile = "/run/netns.directlb.lock"

// Path is the file a named namespace is mounted on.
func Path(name string) string { return filepath.Join(Dir, name) }

// EnsureDir makes Dir exist, be a mount point and be shared, as `ip netns
// add` does before it mounts anything there. It is cheap when that is
// already so.
func EnsureDir() error {
	if err := os.MkdirAll(Dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", Dir, err)
	}
	unlock, err := lock()
	if err != nil {
		return err
	}
	defer unlock()
	return makeShared()
}

// makeShared marks Dir shared, first binding it onto itself when it is not
// yet a mount point (mount(2) says EINVAL then), as iproute2 does.
func makeShared() error {
	err := unix.Mount("", Dir, "none", unix.MS_SHARED|unix.MS_REC, "")
	if errors.Is(err, unix.EINVAL) {
		if err := unix.Mount(Dir, Dir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind %s onto itself: %w", Dir, err)
		}
		err = unix.Mount("", Dir, "none", unix.MS_SHARED|unix.MS_REC, "")
	}
	if err != nil {
		return fmt.Errorf("make %s a shared mount: %w", Dir, err)
	}
	return nil
}

func lock() (func(), error) {
	f, err := os.OpenFile(lockFile, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", lockFile, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", lockFile, err)
	}
	return func() { f.Close() }, nil
}

// Create makes the named namespace. It fails with an error wrapping
// os.ErrExist when the name is taken (as `ip netns add` does); Ensure is the
// idempotent form. The caller's thread and namespace are not changed.
func Create(name string) error {
	if err := validName(name); err != nil {
		return err
	}
	if err := os.MkdirAll(Dir, 0o755); err != nil {
		return fmt.Errorf("create netns %s: %w", name, err)
	}
	// Held from making Dir a mount point until the namespace is mounted
	// in it, so a Repair in another process cannot slip in between.
	unlock, err := lock()
	if err != nil {
		return err
	}
	defer unlock()
	if err := makeShared(); err != nil {
		return fmt.Errorf("create netns %s: %w", name, err)
	}
	p := Path(name)
	f, err := os.OpenFile(p, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0)
	if err != nil {
		return fmt.Errorf("create netns %s: %w", name, err)
	}
	f.Close()
	err = onThread(func() error {
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("unshare: %w", err)
		}
		self := fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid())
		if err := unix.Mount(self, p, "none", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind %s: %w", self, err)
		}
		return nil
	})
	if err != nil {
		_ = os.Remove(p)
		return fmt.Errorf("create netns %s: %w", name, err)
	}
	return nil
}

// Ensure makes the named namespace unless a namespace is already mounted
// under that name. A file of that name with no namespace on it (a crash
// between create and mount) is replaced.
func Ensure(name string) error {
	ns, err := Open(name)
	switch {
	case err == nil:
		ns.Close()
		return nil
	case errors.Is(err, errNotMounted):
		if err := Delete(name); err != nil {
			return err
		}
	case !errors.Is(err, os.ErrNotExist):
		return err // the name may be in use: never replace it on a read error
	}
	return Create(name)
}

// Replace deletes the named namespace if it exists and makes a new one: a
// test's fresh start after a crashed run.
func Replace(name string) error {
	if err := Delete(name); err != nil {
		return err
	}
	return Create(name)
}

// Delete unmounts and removes the named namespace; a missing one is
// success. If the mount is covered (the state the package comment
// describes), it repairs Dir and tries again.
func Delete(name string) error {
	if err := validName(name); err != nil {
		return err
	}
	unlock, err := lock()
	if err != nil {
		return err
	}
	defer unlock()
	err = deleteOnce(name)
	if errors.Is(err, unix.EBUSY) {
		if rerr := repairLocked(); rerr != nil {
			return fmt.Errorf("delete netns %s: %w (repair: %w)", name, err, rerr)
		}
		err = deleteOnce(name)
	}
	if err != nil {
		return fmt.Errorf("delete netns %s: %w", name, err)
	}
	return nil
}

func deleteOnce(name string) error {
	p := Path(name)
	if err := unmountAll(p); err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// List returns the names under Dir that start with prefix.
func List(prefix string) ([]string, error) {
	ents, err := os.ReadDir(Dir)
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

// Open returns a handle on the named namespace; the caller closes it. A
// file with no namespace mounted on it is an error.
func Open(name string) (netns.NsHandle, error) {
	ns, err := netns.GetFromPath(Path(name))
	if err != nil {
		return ns, fmt.Errorf("open netns %s: %w", name, err)
	}
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(ns), &st); err != nil || st.Type != unix.NSFS_MAGIC {
		ns.Close()
		return netns.None(), fmt.Errorf("open netns %s: %s: %w", name, Path(name), errNotMounted)
	}
	return ns, nil
}

// errNotMounted: a file under Dir with no namespace mounted on it.
var errNotMounted = errors.New("not a mounted namespace")

// Handle returns a netlink handle that works inside the named namespace.
func Handle(name string) (*netlink.Handle, error) {
	ns, err := Open(name)
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, fmt.Errorf("netlink in netns %s: %w", name, err)
	}
	return h, nil
}

// Do runs fn on an OS thread inside the named namespace. Sockets fn opens
// stay in that namespace; no other goroutine ever runs there.
func Do(name string, fn func() error) error {
	ns, err := Open(name)
	if err != nil {
		return err
	}
	defer ns.Close()
	return onThread(func() error {
		if err := netns.Set(ns); err != nil {
			return fmt.Errorf("enter netns %s: %w", name, err)
		}
		return fn()
	})
}

// Dialer dials from inside the named namespace: the socket is made on a
// thread switched into it, and stays there. (A plain dial inside Do would
// not do for net/http, whose transport dials on goroutines of its own.)
func Dialer(name string) func(ctx context.Context, network, address string) (net.Conn, error) {
	return func(ctx context.Context, network, address string) (net.Conn, error) {
		var c net.Conn
		err := Do(name, func() error {
			var d net.Dialer
			var err error
			c, err = d.DialContext(ctx, network, address)
			return err
		})
		return c, err
	}
}

// onThread runs fn on a locked OS thread and puts the thread back into its
// original network namespace afterwards. If that fails the thread stays
// locked and dies with its goroutine. (Restoring is required, not optional:
// the goroutine may run on the main thread, which Go never lets die.)
func onThread(fn func() error) error {
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

func validName(name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsRune(name, '/') {
		return fmt.Errorf("invalid netns name %q", name)
	}
	return nil
}

package testbed

import (
	"github.com/moby/sys/mountinfo"

	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/directlb/directlb/internal/namedns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Down removes everything a test bed made, found by convention rather than
// by a record, so it works after a crash of 'up' or of a test: every process
// in the cgroup tree, the cgroups, every network namespace and host link
// named dlb-*, the host routes, bpffs pins under /sys/fs/bpf/directlb*,
// mounts under the state dir and the state dir. It is idempotent: when
// nothing is left it does nothing and succeeds.
func Down(ctx context.Context, stateDir string) error {
	return down(ctx, stateDir, isTestbedName)
}

// isTestbedName matches every namespace and host link name a test bed (and
// its tests) may make.
func isTestbedName(name string) bool { return strings.HasPrefix(name, NamePrefix) }

// down is Down with the namespace and link names it removes narrowed to
// those ours matches (tests use this so as not to touch other packages'
// test namespaces that share the prefix while 'go test' runs packages in
// parallel).
func down(ctx context.Context, stateDir string, ours func(string) bool) error {
	if stateDir == "" || stateDir == "/" {
		return fmt.Errorf("down: refusing state dir %q", stateDir)
	}
	var errs []error
	add := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	// Processes first: nothing may recreate what is removed below.
	wait := 15 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		wait = min(wait, time.Until(dl))
	}
	add(killCgroupTree(CgroupRoot, wait))
	add(removeCgroupTree(CgroupRoot))
	// The kubelets' cgroupRoots in the v1 hierarchies: their tasks were
	// in the v2 tree too (runc puts a container in both) and are gone.
	add(removeV1Cgroups(cgroupRel(CgroupRoot)))
	// libcni's result cache for the bed's network (named "directlb").
	cached, _ := filepath.Glob("/var/lib/cni/results/directlb-*")
	for _, p := range cached {
		add(os.Remove(p))
	}

	// A machine where namespaces were mounted on a plain /run/netns and
	// then covered by a mount of it (see namedns) is repaired first.
	add(namedns.Repair())
	names, err := namedns.List(NamePrefix)
	add(err)
	for _, n := range names {
		if ours(n) {
			add(namedns.Delete(n))
		}
	}
	links, err := netlink.LinkList()
	if err != nil {
		add(fmt.Errorf("list host links: %w", err))
	}
	for _, l := range links {
		if ours(l.Attrs().Name) {
			if err := netlink.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
				add(fmt.Errorf("delete host link %s: %w", l.Attrs().Name, err))
			}
		}
	}
	add(deleteHostRoutes())

	pins, _ := filepath.Glob(BPFPinPrefix + "*")
	for _, p := range pins {
		if err := os.RemoveAll(p); err != nil {
			add(fmt.Errorf("remove bpf pin %s: %w", p, err))
		}
	}

	abs, err := filepath.Abs(stateDir)
	if err != nil {
		add(fmt.Errorf("state dir %s: %w", stateDir, err))
	} else {
		add(unmountUnder(abs))
		if err := os.RemoveAll(abs); err != nil && !errors.Is(err, fs.ErrNotExist) {
			add(fmt.Errorf("remove state dir %s: %w", abs, err))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("down: %w", errors.Join(errs...))
	}
	return nil
}

// unmountUnder detaches every mount at or below dir, deepest first.
func unmountUnder(dir string) error {
	ms, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
	if err != nil {
		return fmt.Errorf("read mounts: %w", err)
	}
	sort.Slice(ms, func(i, j int) bool { return len(ms[i].Mountpoint) > len(ms[j].Mountpoint) })
	var errs []error
	for _, m := range ms {
		if err := unix.Unmount(m.Mountpoint, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", m.Mountpoint, err))
		}
	}
	return errors.Join(errs...)
}

// Leftovers lists what a test bed may leave behind, by the same conventions
// Down uses: namespaces and host links named dlb-*, host routes with the
// test bed's protocol, the cgroup tree, bpffs pins and the state dir. Empty
// means clean.
func Leftovers(stateDir string) ([]string, error) {
	return leftovers(stateDir, isTestbedName)
}

func leftovers(stateDir string, ours func(string) bool) ([]string, error) {
	var out []string
	names, err := namedns.List(NamePrefix)
	if err != nil {
		return nil, err
	}
	for _, n := range names {
		if ours(n) {
			out = append(out, "netns "+n)
		}
	}
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list host links: %w", err)
	}
	for _, l := range links {
		if ours(l.Attrs().Name) {
			out = append(out, "link "+l.Attrs().Name)
		}
	}
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: routeProto}, netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		return nil, fmt.Errorf("list host routes: %w", err)
	}
	for _, r := range routes {
		out = append(out, "route "+r.String())
	}
	hs, err := v1Hierarchies()
	if err != nil {
		return nil, err
	}
	paths := []string{CgroupRoot, stateDir}
	for _, h := range hs {
		paths = append(paths, filepath.Join(h, cgroupRel(CgroupRoot)))
	}
	for _, p := range paths {
		if _, err := os.Stat(p); !errors.Is(err, fs.ErrNotExist) {
			out = append(out, "path "+p)
		}
	}
	pins, _ := filepath.Glob(BPFPinPrefix + "*")
	for _, p := range pins {
		out = append(out, "bpf pin "+p)
	}
	return out, nil
}

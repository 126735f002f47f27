package testbed

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/directlb/directlb/internal/namedns"
	"github.com/vishvananda/netlink"
)

// requireClean skips unless the test runs as root on a machine without a
// test bed: these tests make the real (fixed-name) namespaces, links and
// cgroups, and must not take down a bed someone brought up with 'make up'.
func requireClean(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces, links, cgroups")
	}
	// By default these tests do not wait for a test bed in use; with
	// DLB_TESTBED_WAIT=<duration> they wait that long for the lock and then
	// remove an idle (kept or crashed) test bed.
	var waiting func(string)
	ctx := t.Context()
	if d, err := time.ParseDuration(os.Getenv("DLB_TESTBED_WAIT")); err == nil && d > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
		waiting = func(holder string) { t.Logf("waiting up to %s for process %s to release %s", d, holder, LockFile) }
	}
	unlock, err := Lock(ctx, waiting)
	if errors.Is(err, ErrLocked) {
		t.Skipf("not touching the test bed: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(unlock)
	present, err := Present(DefaultStateDir)
	if err != nil {
		t.Fatal(err)
	}
	if present && waiting != nil {
		// Asked to wait: holding the lock, a present bed is a kept or
		// crashed one, which the e2e TestMain would remove too.
		t.Logf("removing the idle test bed in %s", DefaultStateDir)
		if err := Down(ctx, DefaultStateDir); err != nil {
			t.Fatal(err)
		}
		present = false
	}
	if present {
		t.Skip("a test bed is up on this machine (make down first); not touching it")
	}
}

// plannedName matches the namespaces and host links a test bed makes before
// any pod runs. Tests here remove and check only those: other packages' tests
// may make namespaces with the same prefix while these run.
func plannedName(name string) bool {
	switch {
	case name == VPCNetNS, name == CloudNetNS, name == HostLink:
		return true
	case strings.HasPrefix(name, NamePrefix+"node-"):
		return true
	}
	return false
}

// The VPC's source/destination check drops a frame whose source another ENI
// owns and passes the ENI's own and its pod range's addresses; without the
// check the same spoofed frame gets through (so the drop is the check's).
func TestSourceDestCheck(t *testing.T) {
	requireClean(t)
	cfg := DefaultConfig()
	cfg.StateDir = filepath.Join(t.TempDir(), "state")
	cfg.Nodes = 2
	cfg.SourceDestCheck = true
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	topo := Plan(cfg)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	t.Cleanup(func() {
		if err := down(context.Background(), cfg.StateDir, plannedName); err != nil {
			t.Errorf("down: %v", err)
		}
	})
	if err := setupNetwork(topo); err != nil {
		t.Fatal(err)
	}
	if err := applySourceDestCheck(ctx, topo); err != nil {
		t.Fatal(err)
	}

	// Extra sources on node-1's eth0: one from its own pod range, one from
	// node-2's pod range (spoofed).
	own := netip.MustParseAddr("10.100.1.70")
	spoofed := netip.MustParseAddr("10.100.2.70")
	node := topo.Nodes[0]
	addEth0Sources(t, node.NetNS, own, spoofed)

	ln, err := net.ListenUDP("udp4", &net.UDPAddr{IP: topo.HostAddr.AsSlice()})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	dst := ln.LocalAddr().(*net.UDPAddr)

	primary := node.ENIs[0].Addr.Addr()
	if got, want := sendFrom(t, ln, node.NetNS, dst, primary, own, spoofed), []netip.Addr{primary, own}; !slices.Equal(got, want) {
		t.Errorf("with the check on, the host received from %v, want %v (spoofed %s dropped)", got, want, spoofed)
	}
	if err := nftInNetNS(ctx, topo.VPCNetNS, "delete table bridge "+srcDstTable+"\n"); err != nil {
		t.Fatal(err)
	}
	if got, want := sendFrom(t, ln, node.NetNS, dst, spoofed), []netip.Addr{spoofed}; !slices.Equal(got, want) {
		t.Errorf("with the check off, the host received from %v, want %v", got, want)
	}
}

// addEth0Sources adds the addresses to eth0 in the network namespace
// netns, as extra sources.
func addEth0Sources(t *testing.T, netns string, addrs ...netip.Addr) {
	h, err := namedns.Handle(netns)
	if err != nil {
		t.Fatal(err)
	}
	eth0, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if err := h.AddrAdd(eth0, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(a, 32))}); err != nil {
			t.Fatal(err)
		}
	}
	h.Close()
}

// sendFrom sends one datagram from each source, from inside the network
// namespace netns, to dst, and returns the sources ln received within a
// second.
func sendFrom(t *testing.T, ln *net.UDPConn, netns string, dst *net.UDPAddr, sources ...netip.Addr) []netip.Addr {
	t.Helper()
	for _, src := range sources {
		err := namedns.Do(netns, func() error {
			c, err := net.DialUDP("udp4", &net.UDPAddr{IP: src.AsSlice()}, dst)
			if err != nil {
				return err
			}
			defer c.Close()
			_, err = c.Write([]byte(src.String()))
			return err
		})
		if err != nil {
			t.Fatalf("send from %s: %v", src, err)
		}
	}
	var got []netip.Addr
	buf := make([]byte, 64)
	_ = ln.SetReadDeadline(time.Now().Add(time.Second))
	for len(got) < len(sources) {
		_, from, err := ln.ReadFromUDPAddrPort(buf)
		if err != nil {
			break // deadline: what did not come was dropped
		}
		got = append(got, from.Addr().Unmap())
	}
	slices.SortFunc(got, func(a, b netip.Addr) int { return a.Compare(b) })
	return got
}

// Up brings the control plane and network up; Down then leaves no
// namespace, link, route, cgroup, process or state behind, and a second
// Down succeeds doing nothing.
func TestUpDown(t *testing.T) {
	requireClean(t)
	cfg := DefaultConfig()
	cfg.BinDir = os.Getenv("DLB_BIN_DIR")
	if cfg.BinDir == "" {
		cfg.BinDir = "../../bin"
	}
	cfg.StateDir = filepath.Join(t.TempDir(), "state")
	cfg.Nodes = 2
	cfg.Kubelets = false // nodes run in the e2e tests; this one is about up and down
	cfg.Localcloud = false
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if err := cfg.CheckBinaries(); err != nil {
		t.Skipf("Kubernetes binaries not built (make tools): %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	downed := false
	t.Cleanup(func() {
		if !downed {
			_ = down(context.Background(), cfg.StateDir, plannedName)
		}
	})
	topo, err := Up(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Up(ctx, cfg); !errors.Is(err, ErrAlreadyUp) {
		t.Errorf("second Up = %v, want ErrAlreadyUp", err)
	}
	pids, err := readPIDFiles(cfg.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	if len(pids) != 4 {
		t.Errorf("pid files %v, want etcd and the three Kubernetes daemons", pids)
	}
	for name, pid := range pids {
		if !pidInTestbed(pid) {
			t.Errorf("%s (pid %d) not running in %s", name, pid, CgroupRoot)
		}
	}
	if l := mustLeftovers(t, cfg.StateDir); len(l) == 0 {
		t.Fatal("leftovers found nothing while the test bed is up: the check would prove nothing")
	}
	if _, err := os.Stat(topo.Kubeconfig); err != nil {
		t.Errorf("kubeconfig: %v", err)
	}

	// Down works from names alone: lose the records, as a crash of 'up'
	// before it wrote them would.
	for _, rec := range []string{TopologyFile, "run"} {
		if err := os.RemoveAll(filepath.Join(cfg.StateDir, rec)); err != nil {
			t.Fatal(err)
		}
	}
	downed = true
	if err := down(ctx, cfg.StateDir, plannedName); err != nil {
		t.Fatalf("down: %v", err)
	}
	if l := mustLeftovers(t, cfg.StateDir); len(l) > 0 {
		t.Errorf("left after down:\n  %s", strings.Join(l, "\n  "))
	}
	for name, pid := range pids {
		if _, err := os.Stat(filepath.Join("/proc", itoa(pid))); err == nil && !isZombie(pid) {
			t.Errorf("%s (pid %d) still alive after down", name, pid)
		}
	}
	if err := down(ctx, cfg.StateDir, plannedName); err != nil {
		t.Errorf("second down: %v", err)
	}
}

func mustLeftovers(t *testing.T, stateDir string) []string {
	t.Helper()
	l, err := leftovers(stateDir, plannedName)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func itoa(n int) string { return strconv.Itoa(n) }

// isZombie reports whether pid has exited but is not reaped yet.
func isZombie(pid int) bool {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(b), ')')
	return i > 0 && i+2 < len(b) && b[i+2] == 'Z'
}

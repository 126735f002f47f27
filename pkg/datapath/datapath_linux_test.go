//go:build linux

package datapath

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/directlb/directlb/internal/privileged"
)

// The privileged tests load the real programs, attach them to a child
// cgroup made for the test (never the root: a hook there would touch every
// process on the machine), and run clients in that cgroup as child processes
// of the test binary (helper mode below). Backends listen on 127.0.0.x, and
// the ClusterIPs are 127.96.x.y, so nothing leaves the loopback even if a
// program were missing.

const helperEnv = "DLBT_DP_HELPER"

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		os.Exit(runHelper(mode, os.Args[len(os.Args)-2:]))
	}
	os.Exit(m.Run())
}

// runHelper is a client inside the test cgroup. It prints one line per try:
// "ok <answer> <peer> <micros>" or "err <errno> <micros>".
func runHelper(mode string, args []string) int {
	target := args[0]
	n, err := strconv.Atoi(args[1])
	if err != nil {
		fmt.Println("bad count")
		return 2
	}
	pause := time.Duration(0)
	if v := os.Getenv("DLBT_DP_PAUSE"); v != "" {
		pause, _ = time.ParseDuration(v)
	}
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	for i := range n {
		if i > 0 && pause > 0 {
			out.Flush()
			time.Sleep(pause)
		}
		start := time.Now()
		var answer, peer string
		var err error
		switch mode {
		case "tcp":
			answer, peer, err = tcpOnce(target)
		case "udp":
			answer, peer, err = udpOnce(target)
		case "udp-connected":
			answer, peer, err = udpConnectedOnce(target)
		default:
			fmt.Fprintln(out, "bad mode")
			return 2
		}
		us := time.Since(start).Microseconds()
		if err != nil {
			var errno syscall.Errno
			if errors.As(err, &errno) {
				fmt.Fprintf(out, "err %s %d\n", unix.ErrnoName(errno), us)
			} else {
				fmt.Fprintf(out, "err %q %d\n", err.Error(), us)
			}
			continue
		}
		fmt.Fprintf(out, "ok %s %s %d\n", answer, peer, us)
	}
	return 0
}

func tcpOnce(target string) (string, string, error) {
	c, err := net.DialTimeout("tcp", target, 2*time.Second)
	if err != nil {
		return "", "", err
	}
	defer c.Close()
	// Ask the kernel for the peer: getpeername4 must show the ClusterIP.
	sa, err := unix.Getpeername(fdOf(c.(*net.TCPConn)))
	if err != nil {
		return "", "", err
	}
	in4 := sa.(*unix.SockaddrInet4)
	peer := netip.AddrPortFrom(netip.AddrFrom4(in4.Addr), uint16(in4.Port)).String()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", "", err
	}
	return strings.TrimSpace(line), peer, nil
}

func fdOf(c syscall.Conn) int {
	rc, _ := c.SyscallConn()
	var fd int
	rc.Control(func(f uintptr) { fd = int(f) })
	return fd
}

func udpOnce(target string) (string, string, error) {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return "", "", err
	}
	defer c.Close()
	dst, err := net.ResolveUDPAddr("udp4", target)
	if err != nil {
		return "", "", err
	}
	if _, err := c.WriteToUDP([]byte("ping"), dst); err != nil {
		return "", "", err
	}
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 256)
	n, from, err := c.ReadFromUDPAddrPort(buf)
	if err != nil {
		return "", "", err
	}
	return string(buf[:n]), from.String(), nil
}

// udpConnectedOnce connects a UDP socket (connect4 translates) and reads
// the reply with read(2), as most resolvers do.
func udpConnectedOnce(target string) (string, string, error) {
	c, err := net.DialTimeout("udp4", target, 2*time.Second)
	if err != nil {
		return "", "", err
	}
	defer c.Close()
	sa, err := unix.Getpeername(fdOf(c.(*net.UDPConn)))
	if err != nil {
		return "", "", err
	}
	in4 := sa.(*unix.SockaddrInet4)
	peer := netip.AddrPortFrom(netip.AddrFrom4(in4.Addr), uint16(in4.Port)).String()
	if _, err := c.Write([]byte("ping")); err != nil {
		return "", "", err
	}
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 256)
	n, err := c.Read(buf)
	if err != nil {
		return "", "", err
	}
	return string(buf[:n]), peer, nil
}

type result struct {
	ok     bool
	answer string
	peer   string
	errno  string
	took   time.Duration
}

type bed struct {
	t      *testing.T
	cfg    Config
	dp     *Datapath
	lb     *LoadBalancer
	cgroup *os.File
}

func randSuffix(t *testing.T) string {
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// newBed mounts a private bpffs, makes a child cgroup, loads and attaches.
func newBed(t *testing.T) *bed {
	t.Helper()
	privileged.Require(t, "loads BPF programs, mounts a bpffs and makes a cgroup")
	privileged.RequireKernel(t, CheckKernel)
	const unified = "/sys/fs/cgroup/unified"
	if err := IsCgroup2(unified); err != nil {
		t.Skipf("skipping: no cgroup v2 hierarchy at %s: %v", unified, err)
	}
	bpffs := t.TempDir()
	if err := unix.Mount("bpffs", bpffs, "bpf", 0, "mode=0700"); err != nil {
		t.Fatalf("mount bpffs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(bpffs, unix.MNT_DETACH) })

	cg := filepath.Join(unified, "dlbt-dp-"+randSuffix(t))
	if err := os.Mkdir(cg, 0o755); err != nil {
		t.Fatalf("create cgroup: %v", err)
	}
	t.Cleanup(func() {
		// The helpers have exited by now; retry briefly while the kernel
		// finishes tearing them down.
		for range 50 {
			if err := os.Remove(cg); err == nil || errors.Is(err, os.ErrNotExist) {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Errorf("remove cgroup %s", cg)
	})
	f, err := os.Open(cg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })

	b := &bed{t: t, cfg: Config{BPFRoot: filepath.Join(bpffs, "directlb"), Cgroup: cg}, cgroup: f}
	b.load()
	t.Cleanup(func() {
		if b.dp != nil {
			b.dp.Close()
		}
		if err := Cleanup(b.cfg.BPFRoot); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return b
}

func (b *bed) load() {
	b.t.Helper()
	dp, err := Load(b.cfg)
	if err != nil {
		b.t.Fatalf("load: %v", err)
	}
	if err := dp.Attach(); err != nil {
		dp.Close()
		b.t.Fatalf("attach: %v", err)
	}
	b.dp = dp
	b.lb = NewLoadBalancer(LoadBalancerConfig{Maps: dp.Maps})
	if _, err := b.lb.Restore(); err != nil {
		b.t.Fatalf("restore: %v", err)
	}
}

func (b *bed) apply(svcs ...Service) {
	b.t.Helper()
	if _, err := b.lb.Apply(svcs, nil); err != nil {
		b.t.Fatalf("apply: %v", err)
	}
}

// client starts the helper in the test cgroup; wait collects its results.
func (b *bed) client(mode, target string, n int, pause time.Duration) func() []result {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$", target, strconv.Itoa(n))
	cmd.Env = append(os.Environ(), helperEnv+"="+mode, "DLBT_DP_PAUSE="+pause.String())
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(b.cgroup.Fd())}
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		cancel()
		b.t.Fatalf("start helper: %v", err)
	}
	return func() []result {
		b.t.Helper()
		defer cancel()
		if err := cmd.Wait(); err != nil {
			b.t.Fatalf("helper %s %s: %v\nstderr: %s", mode, target, err, stderr.String())
		}
		var rs []result
		for _, line := range strings.Split(strings.TrimSpace(stdout.String()), "\n") {
			f := strings.Fields(line)
			var r result
			switch {
			case len(f) == 4 && f[0] == "ok":
				us, _ := strconv.Atoi(f[3])
				r = result{ok: true, answer: f[1], peer: f[2], took: time.Duration(us) * time.Microsecond}
			case len(f) >= 3 && f[0] == "err":
				us, _ := strconv.Atoi(f[len(f)-1])
				r = result{errno: strings.Join(f[1:len(f)-1], " "), took: time.Duration(us) * time.Microsecond}
			default:
				b.t.Fatalf("helper printed %q", line)
			}
			rs = append(rs, r)
		}
		if len(rs) != n {
			b.t.Fatalf("helper gave %d results, want %d: %s", len(rs), n, stdout.String())
		}
		return rs
	}
}

func (b *bed) run(mode, target string, n int) []result {
	return b.client(mode, target, n, 0)()
}

// tcpBackends starts n TCP servers on 127.0.0.(2+i) that answer their name.
func tcpBackends(t *testing.T, n int) ([]netip.AddrPort, []string) {
	t.Helper()
	var addrs []netip.AddrPort
	var names []string
	for i := range n {
		ln, err := net.Listen("tcp4", fmt.Sprintf("127.0.0.%d:0", 2+i))
		if err != nil {
			t.Fatal(err)
		}
		name := fmt.Sprintf("be%d", i)
		var wg sync.WaitGroup
		t.Cleanup(func() { ln.Close(); wg.Wait() })
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				fmt.Fprintln(c, name)
				c.Close()
			}
		}()
		addrs = append(addrs, ln.Addr().(*net.TCPAddr).AddrPort())
		names = append(names, name)
	}
	return addrs, names
}

// udpBackends starts n UDP servers on 127.0.0.(2+i) that answer their name.
func udpBackends(t *testing.T, n int) ([]netip.AddrPort, []string) {
	t.Helper()
	var addrs []netip.AddrPort
	var names []string
	for i := range n {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, byte(2+i))})
		if err != nil {
			t.Fatal(err)
		}
		name := fmt.Sprintf("ube%d", i)
		var wg sync.WaitGroup
		t.Cleanup(func() { c.Close(); wg.Wait() })
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 256)
			for {
				_, from, err := c.ReadFromUDPAddrPort(buf)
				if err != nil {
					return
				}
				c.WriteToUDPAddrPort([]byte(name), from)
			}
		}()
		addrs = append(addrs, c.LocalAddr().(*net.UDPAddr).AddrPort())
		names = append(names, name)
	}
	return addrs, names
}

func frontend(last byte, port uint16, proto Protocol) Frontend {
	return Frontend{Addr: netip.AddrFrom4([4]byte{127, 96, 0, last}), Port: port, Proto: proto}
}

func target(fe Frontend) string { return netip.AddrPortFrom(fe.Addr, fe.Port).String() }

func counts(t *testing.T, rs []result) map[string]int {
	t.Helper()
	c := map[string]int{}
	for _, r := range rs {
		if !r.ok {
			t.Fatalf("request failed: %s", r.errno)
		}
		c[r.answer]++
	}
	return c
}

func TestConnectSpreadsOverBackends(t *testing.T) {
	b := newBed(t)
	addrs, names := tcpBackends(t, 3)
	fe := frontend(1, 8080, TCP)
	b.apply(Service{Frontend: fe, Backends: addrs})

	rs := b.run("tcp", target(fe), 60)
	got := counts(t, rs)
	for _, n := range names {
		if got[n] == 0 {
			t.Errorf("backend %s got no connection in 60: %v", n, got)
		}
	}
	for _, r := range rs {
		if r.peer != target(fe) {
			t.Fatalf("getpeername = %s, want the ClusterIP %s", r.peer, target(fe))
		}
	}

	// Shrink to one backend: every connection goes there.
	b.apply(Service{Frontend: fe, Backends: addrs[2:]})
	if diff := cmp.Diff(map[string]int{names[2]: 20}, counts(t, b.run("tcp", target(fe), 20))); diff != "" {
		t.Errorf("after shrinking to %s (-want +got):\n%s", names[2], diff)
	}
}

func TestOtherDestinationsUntouched(t *testing.T) {
	b := newBed(t)
	addrs, names := tcpBackends(t, 2)
	b.apply(Service{Frontend: frontend(1, 8080, TCP), Backends: addrs[:1]})
	// A direct connection to a backend, not a Service, goes where it says.
	if diff := cmp.Diff(map[string]int{names[1]: 5}, counts(t, b.run("tcp", addrs[1].String(), 5))); diff != "" {
		t.Errorf("direct connections (-want +got):\n%s", diff)
	}
}

func TestSessionAffinitySticks(t *testing.T) {
	b := newBed(t)
	addrs, _ := tcpBackends(t, 3)
	fe := frontend(2, 8080, TCP)
	b.apply(Service{Frontend: fe, Backends: addrs, AffinityTimeout: time.Minute})

	for round := range 3 {
		got := counts(t, b.run("tcp", target(fe), 20))
		if len(got) != 1 {
			t.Fatalf("round %d: affinity ClientIP spread over %v, want one backend", round, got)
		}
		// Forget the client's choice: the next round picks again (it may
		// pick the same; the point is that within a round it sticks).
		if err := b.dp.Maps.ClearAffinity(); err != nil {
			t.Fatal(err)
		}
	}

	// Removing the chosen backend moves the client to one that still serves.
	got := counts(t, b.run("tcp", target(fe), 5))
	var chosen string
	for k := range got {
		chosen = k
	}
	idx, _ := strconv.Atoi(strings.TrimPrefix(chosen, "be"))
	var rest []netip.AddrPort
	for i, a := range addrs {
		if i != idx {
			rest = append(rest, a)
		}
	}
	b.apply(Service{Frontend: fe, Backends: rest, AffinityTimeout: time.Minute})
	after := counts(t, b.run("tcp", target(fe), 20))
	if after[chosen] != 0 || len(after) != 1 {
		t.Errorf("after removing %s: %v, want one other backend", chosen, after)
	}
}

func TestServiceWithoutEndpointsRefusedAtOnce(t *testing.T) {
	b := newBed(t)
	fe := frontend(3, 8080, TCP)
	b.apply(Service{Frontend: fe})
	ufe := frontend(3, 5353, UDP)
	b.apply(Service{Frontend: ufe})

	for _, c := range []struct {
		mode string
		fe   Frontend
	}{{"tcp", fe}, {"udp", ufe}} {
		for _, r := range b.run(c.mode, target(c.fe), 5) {
			if r.ok || r.errno != "ECONNREFUSED" {
				t.Errorf("%s to a Service without endpoints: %+v, want ECONNREFUSED", c.mode, r)
			}
			if r.took > 100*time.Millisecond {
				t.Errorf("%s refusal took %v, want it at once", c.mode, r.took)
			}
		}
	}
}

func TestUDPReplyComesFromClusterIP(t *testing.T) {
	b := newBed(t)
	addrs, names := udpBackends(t, 2)
	fe := frontend(4, 5353, UDP)
	b.apply(Service{Frontend: fe, Backends: addrs})

	rs := append(b.run("udp", target(fe), 30), b.run("udp-connected", target(fe), 30)...)
	got := counts(t, rs)
	for _, n := range names {
		if got[n] == 0 {
			t.Errorf("UDP backend %s got nothing in 60: %v", n, got)
		}
	}
	for _, r := range rs {
		if r.peer != target(fe) {
			t.Fatalf("reply came from %s, want the ClusterIP %s", r.peer, target(fe))
		}
	}
}

func TestRestoreFromPinsKeepsIDsAndTraffic(t *testing.T) {
	b := newBed(t)
	addrs, names := tcpBackends(t, 3)
	fe1 := frontend(5, 8080, TCP)
	fe2 := frontend(6, 8080, TCP)
	b.apply(Service{Frontend: fe1, Backends: addrs}, Service{Frontend: fe2, Backends: addrs[:1]})
	before1, _ := b.lb.Programmed(fe1)
	before2, _ := b.lb.Programmed(fe2)

	// Leave a stale slot behind, as a crash in the middle of a shrink would.
	stale := ServiceKey{Frontend: fe2, Slot: 7}
	if err := b.dp.Maps.UpdateServices([]ServiceKey{stale}, []ServiceValue{{BackendID: before1.Backends[1], ServiceID: before2.ID}}); err != nil {
		t.Fatal(err)
	}

	// Clients keep connecting, one every 5 ms, while the agent restarts.
	wait := b.client("tcp", target(fe1), 200, 5*time.Millisecond)
	time.Sleep(100 * time.Millisecond)
	if err := b.dp.Close(); err != nil {
		t.Fatal(err)
	}
	b.dp = nil
	time.Sleep(100 * time.Millisecond)
	b.load()
	rs := wait()
	got := counts(t, rs) // fails on any failed request
	if len(got) != 3 {
		t.Errorf("during the restart connections reached %v, want all of %v", got, names)
	}

	after1, ok1 := b.lb.Programmed(fe1)
	after2, ok2 := b.lb.Programmed(fe2)
	if !ok1 || !ok2 {
		t.Fatalf("restore lost services: %v %v", ok1, ok2)
	}
	if diff := cmp.Diff(before1, after1); diff != "" {
		t.Errorf("service 1 after restore (-before +after):\n%s", diff)
	}
	if diff := cmp.Diff(before2, after2); diff != "" {
		t.Errorf("service 2 after restore (-before +after):\n%s", diff)
	}
	found := false
	b.dp.Maps.DumpServices(func(k ServiceKey, _ ServiceValue) {
		if k == stale {
			found = true
		}
	})
	if found {
		t.Errorf("stale slot %v survived the restore", stale)
	}

	// The restored state is the base for incremental changes: re-applying
	// the same Services writes nothing, and Sync removes the one not wanted.
	st, err := b.lb.Sync([]Service{{Frontend: fe1, Backends: addrs}})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(ApplyStats{ServicesDeleted: 1, Writes: 2}, st); diff != "" {
		t.Errorf("sync after restore (-want +got):\n%s", diff)
	}
	if r := b.run("tcp", target(fe2), 1); r[0].ok {
		t.Errorf("deleted service still translated: %+v", r[0])
	}
}

func TestCleanupRemovesEverything(t *testing.T) {
	b := newBed(t)
	addrs, _ := tcpBackends(t, 1)
	fe := frontend(7, 8080, TCP)
	b.apply(Service{Frontend: fe, Backends: addrs})
	if rs := b.run("tcp", target(fe), 1); !rs[0].ok {
		t.Fatalf("before cleanup: %+v", rs[0])
	}
	b.dp.Close()
	b.dp = nil
	if err := Cleanup(b.cfg.BPFRoot); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(b.cfg.BPFRoot); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("bpf root still there after cleanup: %v", err)
	}
	// No program on the cgroup any more: the ClusterIP is not translated
	// (127.96.0.7:8080 has no listener, so the connect is refused).
	if rs := b.run("tcp", target(fe), 1); rs[0].ok {
		t.Errorf("after cleanup the ClusterIP still reached %s", rs[0].answer)
	}
	out, err := exec.Command("bpftool", "cgroup", "show", b.cfg.Cgroup).CombinedOutput()
	if err == nil && strings.TrimSpace(string(out)) != "" {
		t.Errorf("programs still attached after cleanup:\n%s", out)
	}
}

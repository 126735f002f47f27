//go:build linux

package datapath

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
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
	if mode := os.Getenv(udpHoldEnv); mode != "" {
		os.Exit(runUDPHold(os.Args[len(os.Args)-2:]))
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
	if conc, _ := strconv.Atoi(os.Getenv("DLBT_DP_CONC")); conc > 1 {
		return runConcurrent(out, mode, target, n, conc)
	}
	for i := range n {
		if i > 0 && pause > 0 {
			out.Flush()
			time.Sleep(pause)
		}
		if !tryOnce(out, mode, target) {
			return 2
		}
	}
	return 0
}

// tryOnce makes one request and prints its result line; false for a bad
// mode.
func tryOnce(out io.Writer, mode, target string) bool {
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
	case "udp-socket":
		answer, peer, err = udpSocketOnce(target)
	case "tcp6":
		answer, peer, err = tcp6Once(target)
	case "udp6":
		answer, peer, err = udp6Once(target, false)
	case "udp6-connected":
		answer, peer, err = udp6Once(target, true)
	default:
		fmt.Fprintln(out, "bad mode")
		return false
	}
	us := time.Since(start).Microseconds()
	if err != nil {
		var errno syscall.Errno
		if errors.As(err, &errno) {
			fmt.Fprintf(out, "err %s %d\n", unix.ErrnoName(errno), us)
		} else {
			fmt.Fprintf(out, "err %q %d\n", err.Error(), us)
		}
		return true
	}
	fmt.Fprintf(out, "ok %s %s %d\n", answer, peer, us)
	return true
}

// runConcurrent makes n requests from conc goroutines at once (one client:
// the same network namespace), each result line printed whole.
func runConcurrent(out io.Writer, mode, target string, n, conc int) int {
	var mu sync.Mutex
	var wg sync.WaitGroup
	bad := false
	for g := range conc {
		k := n / conc
		if g < n%conc {
			k++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range k {
				var line strings.Builder
				ok := tryOnce(&line, mode, target)
				mu.Lock()
				bad = bad || !ok
				io.WriteString(out, line.String())
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if bad {
		return 2
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
	peer := peerOf(sa)
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

var udpSocket *net.UDPConn

// udpSocketOnce sends one datagram from the helper's one unconnected
// socket, kept across requests.
func udpSocketOnce(target string) (string, string, error) {
	if udpSocket == nil {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			return "", "", err
		}
		udpSocket = c
	}
	dst, err := net.ResolveUDPAddr("udp4", target)
	if err != nil {
		return "", "", err
	}
	if _, err := udpSocket.WriteToUDP([]byte("ping"), dst); err != nil {
		return "", "", err
	}
	udpSocket.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 256)
	n, from, err := udpSocket.ReadFromUDPAddrPort(buf)
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

// The AF_INET6 clients use raw sockets: Go's net package dials a
// v4-mapped address with an AF_INET socket, and the point here is the
// IPv6 hooks that a dual-stack runtime (the JVM, for one) goes through.

// mapped is target (an IPv4 host:port) as an IPv6 socket address
// ::ffff:a.b.c.d.
func mapped(target string) (*unix.SockaddrInet6, error) {
	ap, err := netip.ParseAddrPort(target)
	if err != nil {
		return nil, err
	}
	return &unix.SockaddrInet6{Addr: netip.AddrFrom16(ap.Addr().As16()).As16(), Port: int(ap.Port())}, nil
}

func peerOf(sa unix.Sockaddr) string {
	switch a := sa.(type) {
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr), uint16(a.Port)).String()
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port)).String()
	}
	return fmt.Sprintf("%T", sa)
}

// socket6 is a dual-stack AF_INET6 socket with a 2 s receive timeout.
func socket6(typ int) (int, error) {
	fd, err := unix.Socket(unix.AF_INET6, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0); err != nil {
		unix.Close(fd)
		return -1, err
	}
	tv := unix.NsecToTimeval((2 * time.Second).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// tcp6Once connects an AF_INET6 socket to ::ffff:<target> and reads a line.
func tcp6Once(target string) (string, string, error) {
	sa, err := mapped(target)
	if err != nil {
		return "", "", err
	}
	fd, err := socket6(unix.SOCK_STREAM)
	if err != nil {
		return "", "", err
	}
	defer unix.Close(fd)
	if err := unix.Connect(fd, sa); err != nil {
		return "", "", err
	}
	p, err := unix.Getpeername(fd)
	if err != nil {
		return "", "", err
	}
	buf := make([]byte, 256)
	n, err := unix.Read(fd, buf)
	if err != nil {
		return "", "", err
	}
	return strings.TrimSpace(string(buf[:n])), peerOf(p), nil
}

// udp6Once sends one datagram from an AF_INET6 socket to ::ffff:<target>,
// connected (connect, getpeername, send, read) or not (sendto, recvfrom),
// and returns the answer and the peer the kernel reported.
func udp6Once(target string, connected bool) (string, string, error) {
	sa, err := mapped(target)
	if err != nil {
		return "", "", err
	}
	fd, err := socket6(unix.SOCK_DGRAM)
	if err != nil {
		return "", "", err
	}
	defer unix.Close(fd)
	buf := make([]byte, 256)
	if connected {
		if err := unix.Connect(fd, sa); err != nil {
			return "", "", err
		}
		p, err := unix.Getpeername(fd)
		if err != nil {
			return "", "", err
		}
		if _, err := unix.Write(fd, []byte("ping")); err != nil {
			return "", "", err
		}
		n, err := unix.Read(fd, buf)
		if err != nil {
			return "", "", err
		}
		return string(buf[:n]), peerOf(p), nil
	}
	if err := unix.Sendto(fd, []byte("ping"), 0, sa); err != nil {
		return "", "", err
	}
	n, from, err := unix.Recvfrom(fd, buf, 0)
	if err != nil {
		return "", "", err
	}
	return string(buf[:n]), peerOf(from), nil
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
func (b *bed) client(mode, target string, n int, pause time.Duration, env ...string) func() []result {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$", target, strconv.Itoa(n))
	cmd.Env = append(append(os.Environ(), helperEnv+"="+mode, "DLBT_DP_PAUSE="+pause.String()), env...)
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
				n, from, err := c.ReadFromUDPAddrPort(buf)
				if err != nil {
					return
				}
				if string(buf[:n]) == "hold" {
					continue // the client waits (TestConnectedUDPFollowsBackends)
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

// mappedTarget is fe as the peer an AF_INET6 socket sees: ::ffff:a.b.c.d.
func mappedTarget(fe Frontend) string {
	return netip.AddrPortFrom(netip.AddrFrom16(fe.Addr.As16()), fe.Port).String()
}

func TestIPv6SocketToIPv4Service(t *testing.T) {
	b := newBed(t)
	taddrs, tnames := tcpBackends(t, 2)
	uaddrs, unames := udpBackends(t, 2)
	tfe := frontend(8, 8080, TCP)
	ufe := frontend(8, 5353, UDP)
	b.apply(Service{Frontend: tfe, Backends: taddrs}, Service{Frontend: ufe, Backends: uaddrs})

	for _, c := range []struct {
		mode  string
		fe    Frontend
		names []string
	}{
		{"tcp6", tfe, tnames},
		{"udp6", ufe, unames},
		{"udp6-connected", ufe, unames},
	} {
		t.Run(c.mode, func(t *testing.T) {
			rs := b.run(c.mode, target(c.fe), 30)
			got := counts(t, rs)
			for _, n := range c.names {
				if got[n] == 0 {
					t.Errorf("backend %s got nothing in 30: %v", n, got)
				}
			}
			for _, r := range rs {
				if r.peer != mappedTarget(c.fe) {
					t.Fatalf("peer = %s, want the ClusterIP %s", r.peer, mappedTarget(c.fe))
				}
			}
		})
	}

	// A Service without endpoints refuses an IPv6 socket too, and a real
	// IPv6 destination is left alone (::1 has a listener here; no v6
	// Services are programmed).
	efe := frontend(9, 8080, TCP)
	b.apply(Service{Frontend: efe})
	for _, r := range b.run("tcp6", target(efe), 3) {
		if r.errno != "ECONNREFUSED" {
			t.Errorf("tcp6 to a Service without endpoints: %+v, want ECONNREFUSED", r)
		}
	}
}

func TestIPv6SocketRealIPv6Untouched(t *testing.T) {
	b := newBed(t)
	taddrs, _ := tcpBackends(t, 1)
	b.apply(Service{Frontend: frontend(10, 8080, TCP), Backends: taddrs})
	ln, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Skipf("skipping: no IPv6 loopback: %v", err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintln(c, "v6")
			c.Close()
		}
	}()
	rs := b.run("tcp", ln.Addr().String(), 3)
	if diff := cmp.Diff(map[string]int{"v6": 3}, counts(t, rs)); diff != "" {
		t.Errorf("IPv6 destination (-want +got):\n%s", diff)
	}
}

// TestSessionAffinityUnderConcurrency is the stress case at a size
// for a 2-core machine: one client (one netns) with many sockets at once
// must reach one backend, from its first request on.
func TestSessionAffinityUnderConcurrency(t *testing.T) {
	b := newBed(t)
	uaddrs, _ := udpBackends(t, 4)
	taddrs, _ := tcpBackends(t, 4)
	ufe := frontend(11, 5353, UDP)
	tfe := frontend(11, 8080, TCP)
	b.apply(Service{Frontend: ufe, Backends: uaddrs, AffinityTimeout: time.Minute},
		Service{Frontend: tfe, Backends: taddrs, AffinityTimeout: time.Minute})
	n, _ := strconv.Atoi(envOr("DLBT_AFFINITY_N", "2000"))
	conc := envOr("DLBT_AFFINITY_CONC", "64")
	for _, c := range []struct {
		mode string
		fe   Frontend
	}{{"udp", ufe}, {"udp6", ufe}, {"tcp", tfe}} {
		for round := range 5 {
			if err := b.dp.Maps.ClearAffinity(); err != nil {
				t.Fatal(err)
			}
			got := counts(t, b.client(c.mode, target(c.fe), n, 0, "DLBT_DP_CONC="+conc)())
			if len(got) != 1 {
				t.Errorf("%s round %d: %s concurrent sockets of one client reached %v, want one backend", c.mode, round, conc, got)
			}
		}
	}
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// TestVerdictsInKernel: a port the ClusterIP does not serve is refused (it
// used to leave untranslated and time out), and a dropped Service
// (internalTrafficPolicy Local without a local endpoint) fails with
// ETIMEDOUT at once, from IPv4 and IPv6 sockets alike.
func TestVerdictsInKernel(t *testing.T) {
	b := newBed(t)
	addrs, names := tcpBackends(t, 1)
	served := frontend(12, 8080, TCP)
	dropped := frontend(12, 8081, TCP)
	b.apply(Service{Frontend: served, Backends: addrs},
		Service{Frontend: dropped, Drop: true},
		Service{Frontend: AddressFrontend(served.Addr)})
	for _, mode := range []string{"tcp", "tcp6"} {
		if diff := cmp.Diff(map[string]int{names[0]: 2}, counts(t, b.run(mode, target(served), 2))); diff != "" {
			t.Errorf("%s to the served port (-want +got):\n%s", mode, diff)
		}
		for _, c := range []struct {
			target, errno string
		}{
			{target(dropped), "ETIMEDOUT"},
			{netip.AddrPortFrom(served.Addr, 9).String(), "ECONNREFUSED"},
		} {
			for _, r := range b.run(mode, c.target, 2) {
				if r.ok || r.errno != c.errno || r.took > 100*time.Millisecond {
					t.Errorf("%s to %s: %+v, want %s at once", mode, c.target, r, c.errno)
				}
			}
		}
	}
	for _, mode := range []string{"udp", "udp6"} {
		for _, r := range b.run(mode, netip.AddrPortFrom(served.Addr, 53).String(), 2) {
			if r.ok || r.errno != "ECONNREFUSED" {
				t.Errorf("%s to a port the ClusterIP does not serve: %+v, want ECONNREFUSED", mode, r)
			}
		}
	}
}

// hostListener answers "host" on a TCP port of addr: what a connect reaches
// when the hooks leave it alone.
func hostListener(t *testing.T, addr netip.Addr) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp4", netip.AddrPortFrom(addr, 0).String())
	if err != nil {
		t.Fatal(err)
	}
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
			fmt.Fprintln(c, "host")
			c.Close()
		}
	}()
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// TestNodePortOnNodeAddresses: a socket in the cgroup reaches a NodePort on
// this node's address and on another node's, over TCP, UDP and connected
// UDP, from IPv4 and IPv6 sockets; its peer is the address it dialled;
// sessionAffinity sticks; a NodePort without endpoints is refused; other
// ports of a node address, and an address that is no longer a node's, are
// left alone.
func TestNodePortOnNodeAddresses(t *testing.T) {
	b := newNodePortBed(t)
	for _, addr := range []netip.Addr{b.self, b.other} {
		b.tcpReachesBackends(t, addr)
		b.udpReachesBackends(t, addr)
	}
	b.restartRestoresNodePort(t)
	b.ownPortIsTheNodes(t)
	b.affinitySticks(t)
	b.noEndpointsRefused(t)
	b.removedNodeAddressIsLeftAlone(t)
}

// nodePortBed is TestNodePortOnNodeAddresses' bed: node addresses self
// (local) and other (remote), a TCP NodePort np to three backends and a
// UDP NodePort unp to two.
type nodePortBed struct {
	*bed
	self, other        netip.Addr
	tcpAddrs, udpAddrs []netip.AddrPort
	tcpNames, udpNames []string
	// hostPort is a host listener on other whose port is np's.
	hostPort netip.AddrPort
	np, unp  Frontend
}

func newNodePortBed(t *testing.T) *nodePortBed {
	b := &nodePortBed{bed: newBed(t),
		self:  netip.MustParseAddr("127.97.0.1"),
		other: netip.MustParseAddr("127.97.0.2")}
	if _, err := b.lb.SetNodeAddresses(map[netip.Addr]NodeAddressFlags{b.self: NodeAddressLocal, b.other: NodeAddressRemote}); err != nil {
		t.Fatal(err)
	}
	b.tcpAddrs, b.tcpNames = tcpBackends(t, 3)
	b.udpAddrs, b.udpNames = udpBackends(t, 2)
	// The NodePort on other: a host listener there, at whatever port the
	// kernel gives, is the NodePort (so that without translation the
	// connect would reach "host").
	b.hostPort = hostListener(t, b.other)
	b.np = NodePortFrontend(b.hostPort.Port(), TCP)
	b.unp = NodePortFrontend(30053, UDP)
	b.apply(Service{Frontend: b.np, Backends: b.tcpAddrs}, Service{Frontend: b.unp, Backends: b.udpAddrs})
	return b
}

// tcpReachesBackends: TCP to np on addr, from IPv4 and IPv6 sockets,
// reaches every backend, and the peer is the node address dialled.
func (b *nodePortBed) tcpReachesBackends(t *testing.T, addr netip.Addr) {
	np := b.np
	tgt := netip.AddrPortFrom(addr, np.Port).String()
	for _, mode := range []string{"tcp", "tcp6"} {
		rs := b.run(mode, tgt, 45)
		got := counts(t, rs)
		for _, n := range b.tcpNames {
			if got[n] == 0 {
				t.Errorf("%s to %s: backend %s got nothing in 45: %v", mode, tgt, n, got)
			}
		}
		want := tgt
		if mode == "tcp6" {
			want = mappedTarget(Frontend{Addr: addr, Port: np.Port})
		}
		for _, r := range rs {
			if r.peer != want {
				t.Fatalf("%s to %s: peer %s, want the node address %s", mode, tgt, r.peer, want)
			}
		}
	}
}

// udpReachesBackends: UDP and connected UDP to unp on addr, from IPv4 and
// IPv6 sockets, reaches every backend, and replies come from the node
// address dialled.
func (b *nodePortBed) udpReachesBackends(t *testing.T, addr netip.Addr) {
	unp := b.unp
	utgt := netip.AddrPortFrom(addr, unp.Port).String()
	for _, mode := range []string{"udp", "udp-connected", "udp6", "udp6-connected"} {
		rs := b.run(mode, utgt, 30)
		got := counts(t, rs)
		for _, n := range b.udpNames {
			if got[n] == 0 {
				t.Errorf("%s to %s: backend %s got nothing in 30: %v", mode, utgt, n, got)
			}
		}
		want := utgt
		if strings.HasPrefix(mode, "udp6") {
			want = mappedTarget(Frontend{Addr: addr, Port: unp.Port})
		}
		for _, r := range rs {
			if r.peer != want {
				t.Fatalf("%s to %s: reply from %s, want the node address %s", mode, utgt, r.peer, want)
			}
		}
	}
}

// restartRestoresNodePort: a restart restores the NodePort with its scope
// and the node addresses from the pins: nothing is rewritten, traffic
// flows.
func (b *nodePortBed) restartRestoresNodePort(t *testing.T) {
	np, self, other := b.np, b.self, b.other
	before, _ := b.lb.Programmed(np)
	if err := b.dp.Close(); err != nil {
		t.Fatal(err)
	}
	b.dp = nil
	b.load()
	if after, ok := b.lb.Programmed(np); !ok || after.ID != before.ID {
		t.Fatalf("after a restart the NodePort is %+v (found %v), want ID %d", after, ok, before.ID)
	}
	if n, err := b.lb.SetNodeAddresses(map[netip.Addr]NodeAddressFlags{self: NodeAddressLocal, other: NodeAddressRemote}); err != nil || n != 0 {
		t.Fatalf("node addresses after a restart: %d writes, %v; want them restored", n, err)
	}
	if got := counts(t, b.run("tcp", netip.AddrPortFrom(other, np.Port).String(), 10)); got["host"] != 0 {
		t.Errorf("after a restart: %v", got)
	}
}

// ownPortIsTheNodes: a port of a node address that is no NodePort is the
// node's own.
func (b *nodePortBed) ownPortIsTheNodes(t *testing.T) {
	own := hostListener(t, b.self)
	if diff := cmp.Diff(map[string]int{"host": 3}, counts(t, b.run("tcp", own.String(), 3))); diff != "" {
		t.Errorf("a node address's own port (-want +got):\n%s", diff)
	}
}

// affinitySticks: sessionAffinity ClientIP on a NodePort sticks, on either
// address.
func (b *nodePortBed) affinitySticks(t *testing.T) {
	np, unp, self, other := b.np, b.unp, b.self, b.other
	b.apply(Service{Frontend: np, Backends: b.tcpAddrs, AffinityTimeout: time.Minute},
		Service{Frontend: unp, Backends: b.udpAddrs, AffinityTimeout: time.Minute})
	for round := range 2 {
		got := counts(t, append(b.run("tcp", netip.AddrPortFrom(self, np.Port).String(), 15),
			b.run("tcp", netip.AddrPortFrom(other, np.Port).String(), 15)...))
		if len(got) != 1 {
			t.Errorf("round %d: TCP NodePort with affinity spread over %v, want one backend", round, got)
		}
		ugot := counts(t, b.run("udp", netip.AddrPortFrom(other, unp.Port).String(), 20))
		if len(ugot) != 1 {
			t.Errorf("round %d: UDP NodePort with affinity spread over %v, want one backend", round, ugot)
		}
		if err := b.dp.Maps.ClearAffinity(); err != nil {
			t.Fatal(err)
		}
	}
}

// noEndpointsRefused: a NodePort without endpoints is refused at once, TCP
// and UDP.
func (b *nodePortBed) noEndpointsRefused(t *testing.T) {
	np, unp := b.np, b.unp
	b.apply(Service{Frontend: np}, Service{Frontend: unp})
	for _, c := range []struct{ mode, target string }{
		{"tcp", netip.AddrPortFrom(b.self, np.Port).String()},
		{"udp", netip.AddrPortFrom(b.other, unp.Port).String()},
	} {
		for _, r := range b.run(c.mode, c.target, 2) {
			if r.ok || r.errno != "ECONNREFUSED" || r.took > 100*time.Millisecond {
				t.Errorf("%s to %s without endpoints: %+v, want ECONNREFUSED at once", c.mode, c.target, r)
			}
		}
	}
}

// removedNodeAddressIsLeftAlone: other is no longer a node's address: its
// port is its own again.
func (b *nodePortBed) removedNodeAddressIsLeftAlone(t *testing.T) {
	if _, err := b.lb.SetNodeAddresses(map[netip.Addr]NodeAddressFlags{b.self: NodeAddressLocal}); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[string]int{"host": 3}, counts(t, b.run("tcp", b.hostPort.String(), 3))); diff != "" {
		t.Errorf("after removing the node address (-want +got):\n%s", diff)
	}
}

//go:build linux

package datapath

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/directlb/directlb/internal/privileged"
)

const udpHoldEnv = "DLBT_DP_UDP_HOLD"

// runUDPHold is a resolver-style client in the test cgroup: one connected
// UDP socket. It asks once ("ok <answer>"), then sends "hold" (the backend
// does not answer) and waits in read until the socket fails ("err
// <errno> <micros>", the time from the test's "go" line), then reconnects
// and asks n more times on the new socket, each answer a line.
//
// With DLBT_DP_UDP_HOLD=netns it runs in a network namespace of its own
// (as a pod does) and first starts the backends there: nsAddrs, answering
// nsbe0, nsbe1.
func runUDPHold(args []string) int {
	target := args[0]
	n, _ := strconv.Atoi(args[1])
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	if os.Getenv(udpHoldEnv) == "netns" && !udpHoldBackends(out) {
		return 2
	}
	c, err := net.Dial("udp4", target)
	if err != nil {
		fmt.Fprintf(out, "fatal %v\n", err)
		return 2
	}
	buf := make([]byte, 256)
	answer, err := udpHoldAsk(c, buf)
	if err != nil {
		fmt.Fprintf(out, "fatal %v\n", err)
		return 2
	}
	if _, err := c.Write([]byte("hold")); err != nil {
		fmt.Fprintf(out, "fatal %v\n", err)
		return 2
	}
	fmt.Fprintf(out, "ok %s\n", answer)
	out.Flush()
	udpHoldWait(out, c, buf)
	c.Close()
	c, err = net.Dial("udp4", target)
	if err != nil {
		fmt.Fprintf(out, "fatal %v\n", err)
		return 2
	}
	defer c.Close()
	for range n {
		answer, err := udpHoldAsk(c, buf)
		if err != nil {
			fmt.Fprintf(out, "fatal %v\n", err)
			return 2
		}
		fmt.Fprintf(out, "ok %s\n", answer)
	}
	return 0
}

// udpHoldBackends, in runUDPHold's own network namespace, brings lo up and
// starts the backends at nsAddrs, nsbe<i> answering its name to all but
// "hold". It reports a failure on out.
func udpHoldBackends(out *bufio.Writer) bool {
	lo, err := netlink.LinkByName("lo")
	if err == nil {
		err = netlink.LinkSetUp(lo)
	}
	if err != nil {
		fmt.Fprintf(out, "fatal lo: %v\n", err)
		return false
	}
	for i, a := range nsAddrs {
		c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(a))
		if err != nil {
			fmt.Fprintf(out, "fatal %v\n", err)
			return false
		}
		name := fmt.Sprintf("nsbe%d", i)
		go func() {
			buf := make([]byte, 256)
			for {
				k, from, err := c.ReadFromUDPAddrPort(buf)
				if err != nil {
					return
				}
				if string(buf[:k]) != "hold" {
					c.WriteToUDPAddrPort([]byte(name), from)
				}
			}
		}()
	}
	return true
}

// udpHoldAsk sends "ping" on c and reads the answer into buf.
func udpHoldAsk(c net.Conn, buf []byte) (string, error) {
	if _, err := c.Write([]byte("ping")); err != nil {
		return "", err
	}
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	k, err := c.Read(buf)
	return string(buf[:k]), err
}

// udpHoldWait waits in read on c until the socket fails and prints
// "err <errno> <micros>", then what a send on it says ("write <errno>").
func udpHoldWait(out *bufio.Writer, c net.Conn, buf []byte) {
	start := time.Now()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := c.Read(buf)
	var errno syscall.Errno
	switch {
	case err == nil:
		fmt.Fprintf(out, "err none %d\n", time.Since(start).Microseconds())
	case errors.As(err, &errno):
		fmt.Fprintf(out, "err %s %d\n", unix.ErrnoName(errno), time.Since(start).Microseconds())
	default:
		fmt.Fprintf(out, "err %q %d\n", err.Error(), time.Since(start).Microseconds())
	}
	// What a send on the destroyed socket says: it is no longer connected.
	if _, err := c.Write([]byte("ping")); errors.As(err, &errno) {
		fmt.Fprintf(out, "write %s\n", unix.ErrnoName(errno))
	} else {
		fmt.Fprintf(out, "write %v\n", err)
	}
}

// TestConnectedUDPFollowsBackends: a connected UDP socket whose backend
// leaves the Service is destroyed; its pending read fails with
// ECONNABORTED at once, and a reconnect reaches a backend that serves.
// A socket connected to the same backend directly (not through the
// Service) is left alone.
func TestConnectedUDPFollowsBackends(t *testing.T) {
	b := newBed(t)
	addrs, names := udpBackends(t, 2)
	fe := frontend(9, 5353, UDP)
	b.apply(Service{Frontend: fe, Backends: addrs})

	// A direct socket to each backend, in the cgroup too.
	direct := make([]func() []result, len(addrs))
	for i, a := range addrs {
		direct[i] = b.client("udp-connected", a.String(), 10, 100*time.Millisecond)
	}
	b.holdClient(fe, addrs, names, "1", 0)
	for i, wait := range direct {
		for _, r := range wait() {
			if !r.ok || r.answer != names[i] {
				t.Errorf("a socket connected to %s directly: %+v, want untouched", names[i], r)
			}
		}
	}
}

// nsAddrs are the backends TestConnectedUDPInPodNetns's client starts in
// its own network namespace.
var nsAddrs = []netip.AddrPort{netip.MustParseAddrPort("127.0.0.2:5301"), netip.MustParseAddrPort("127.0.0.3:5301")}

// TestConnectedUDPInPodNetns: the same from a client in a network
// namespace of its own, as a pod is: the iterator has to run there.
func TestConnectedUDPInPodNetns(t *testing.T) {
	b := newBed(t)
	fe := frontend(11, 5353, UDP)
	b.apply(Service{Frontend: fe, Backends: nsAddrs})
	b.holdClient(fe, nsAddrs, []string{"nsbe0", "nsbe1"}, "netns", syscall.CLONE_NEWNET)
}

// holdClient runs runUDPHold against fe, removes the backend it reached
// first, destroys its sockets and checks that the client's read fails with
// ECONNABORTED and its reconnect reaches the other backend.
func (b *bed) holdClient(fe Frontend, addrs []netip.AddrPort, names []string, mode string, clone uintptr) {
	t := b.t
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$", target(fe), "10")
	cmd.Env = append(os.Environ(), udpHoldEnv+"="+mode)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(b.cgroup.Fd()), Cloneflags: clone}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := bufio.NewScanner(stdout)
	next := func() string {
		t.Helper()
		if !lines.Scan() {
			t.Fatalf("client ended early: %v; stderr: %s", lines.Err(), stderr.String())
		}
		if l := lines.Text(); !strings.HasPrefix(l, "fatal") {
			return l
		}
		t.Fatalf("client: %s", lines.Text())
		return ""
	}
	first := strings.TrimPrefix(next(), "ok ")
	gone, stays := -1, -1
	for i, n := range names {
		if n == first {
			gone, stays = i, 1-i
		}
	}
	if gone < 0 {
		t.Fatalf("first answer %q is no backend's", first)
	}

	// The backend leaves the Service; it still listens, so without the
	// destroy the socket would go on reaching it.
	st, err := b.lb.Apply([]Service{{Frontend: fe, Backends: addrs[stays : stays+1]}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := []LeftBackend{{Service: b.serviceID(fe), Backend: Backend{Addr: addrs[gone].Addr(), Port: addrs[gone].Port(), Proto: UDP}}}
	if fmt.Sprint(st.Left) != fmt.Sprint(want) {
		t.Fatalf("Apply's Left = %v, want %v", st.Left, want)
	}
	start := time.Now()
	ds, err := b.dp.DestroySockets(st.Left)
	if err != nil {
		t.Fatalf("destroy sockets: %v", err)
	}
	t.Logf("destroyed %d socket(s) in %d network namespace(s) in %v", ds.Destroyed, ds.Namespaces, time.Since(start))
	if ds.Destroyed != 1 {
		t.Errorf("destroyed %d sockets, want the one client socket", ds.Destroyed)
	}

	f := strings.Fields(next())
	if len(f) != 3 || f[1] != "ECONNABORTED" {
		t.Fatalf("the waiting read got %v, want ECONNABORTED", f)
	}
	if us, _ := strconv.Atoi(f[2]); time.Duration(us)*time.Microsecond > 2*time.Second {
		t.Errorf("the read failed after %v", time.Duration(us)*time.Microsecond)
	}
	t.Logf("then a send: %s", next())
	for range 10 {
		if got := next(); got != "ok "+names[stays] {
			t.Errorf("after reconnecting: %q, want %s", got, names[stays])
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("client: %v; stderr: %s", err, stderr.String())
	}
}

func (b *bed) serviceID(fe Frontend) ServiceID {
	b.t.Helper()
	p, ok := b.lb.Programmed(fe)
	if !ok {
		b.t.Fatalf("%s not programmed", fe)
	}
	return p.ID
}

// TestUnconnectedUDPSticksPerSocket: datagrams from one unconnected
// socket keep one backend, as conntrack keeps a flow; a new socket may pick
// another; when the backend leaves, the socket moves to one that serves
// and sticks there.
func TestUnconnectedUDPSticksPerSocket(t *testing.T) {
	b := newBed(t)
	addrs, names := udpBackends(t, 3)
	fe := frontend(10, 5353, UDP)
	b.apply(Service{Frontend: fe, Backends: addrs})

	seen := map[string]bool{}
	for round := range 6 {
		got := counts(t, b.run("udp-socket", target(fe), 30))
		if len(got) != 1 {
			t.Fatalf("round %d: one socket's datagrams went to %v, want one backend", round, got)
		}
		for k := range got {
			seen[k] = true
		}
	}
	if len(seen) < 2 {
		t.Logf("6 sockets all picked %v (possible, unlikely)", seen)
	}

	// A socket whose backend leaves moves once and sticks again.
	wait := b.client("udp-socket", target(fe), 40, 20*time.Millisecond)
	time.Sleep(200 * time.Millisecond)
	b.apply(Service{Frontend: fe, Backends: addrs[:1]})
	rs := wait()
	switches := 0
	for i := 1; i < len(rs); i++ {
		if !rs[i].ok {
			t.Fatalf("datagram %d: %+v", i, rs[i])
		}
		if rs[i].answer != rs[i-1].answer {
			switches++
		}
	}
	if last := rs[len(rs)-1].answer; last != names[0] || switches > 1 {
		t.Errorf("after shrinking to %s: last answer %s with %d switches, want %s and at most 1", names[0], last, switches, names[0])
	}
}

// TestMapSizes: Config.MapSizes sets the maps' max entries, and the
// LoadBalancer counts what it wrote.
func TestMapSizes(t *testing.T) {
	privileged.Require(t, "loads BPF programs and mounts a bpffs")
	privileged.RequireKernel(t, CheckKernel)
	bpffs := t.TempDir()
	if err := unix.Mount("bpffs", bpffs, "bpf", 0, "mode=0700"); err != nil {
		t.Fatalf("mount bpffs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(bpffs, unix.MNT_DETACH) })
	root := filepath.Join(bpffs, "directlb")
	dp, err := Load(Config{BPFRoot: root, MapSizes: MapSizes{Services: 1024, Backends: 512, RevNAT: 256, Sticky: 128}})
	if err != nil {
		t.Fatal(err)
	}
	defer Cleanup(root)
	defer dp.Close()
	got := dp.MapCapacities()
	for name, want := range map[string]uint32{"dlb_svc4": 1024, "dlb_backends4": 512, "dlb_affmatch4": 512, "dlb_revnat4": 256, "dlb_sticky4": 128, "dlb_nat4": 262144} {
		if got[name] != want {
			t.Errorf("%s: max entries %d, want %d", name, got[name], want)
		}
	}
	lb := NewLoadBalancer(LoadBalancerConfig{Maps: dp.Maps})
	if _, err := lb.Apply([]Service{{Frontend: frontend(1, 53, UDP), Backends: nsAddrs}}, nil); err != nil {
		t.Fatal(err)
	}
	if e := lb.MapEntries(); e["dlb_svc4"] != 3 || e["dlb_backends4"] != 2 {
		t.Errorf("MapEntries = %v, want 3 service entries and 2 backends", e)
	}
	// A Service of 1,100 backends fits dlb_backends4 (512) no more than
	// dlb_svc4: the error names the full map and the flag that sizes it.
	wide := make([]netip.AddrPort, 1100)
	for i := range wide {
		wide[i] = netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 1, byte(i >> 8), byte(i)}), 80)
	}
	_, err = lb.Apply([]Service{{Frontend: frontend(2, 80, TCP), Backends: wide}}, nil)
	if err == nil || !strings.Contains(err.Error(), "map dlb_backends4 full (512 entries; raise --map-size-backends)") {
		t.Errorf("Apply beyond the maps: %v, want it to name dlb_backends4 and --map-size-backends", err)
	}
}

//go:build linux

package datapath

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/directlb/directlb/internal/namedns"
	"github.com/directlb/directlb/internal/netnstest"
	"github.com/directlb/directlb/internal/privileged"
)

// nsNet is TestNorthSouth's network: a client, a node, a pod on the node
// (behind a veth, as a CNI wires it) and a remote backend standing for a
// pod on another node (behind a second node device, ext1, with no route
// back to the client: its replies reach the client only when the node
// SNATs).
type nsNet struct {
	t                   *testing.T
	cl, node, pod, rem  string
	nodeH               *netlink.Handle
	nodeAddr, ext1Addr  netip.Addr
	clientAddr, podAddr netip.Addr
	remAddr             netip.Addr
}

// nsWire adds a veth, name in a's namespace and peer in bNS's (b), with
// the addresses aAddr and bAddr.
func nsWire(t *testing.T, a *netlink.Handle, name string, b *netlink.Handle, bNS, peer, aAddr, bAddr string) (netlink.Link, netlink.Link) {
	t.Helper()
	la, lb := netnstest.Veth(t, a, name, b, bNS, peer)
	netnstest.AddAddr(t, a, la, aAddr)
	netnstest.AddAddr(t, b, lb, bAddr)
	return la, lb
}

func newNSNet(t *testing.T) *nsNet {
	p := fmt.Sprintf("dlbt-ns%d-", os.Getpid()%100000)
	n := &nsNet{t: t, cl: p + "cl", node: p + "node", pod: p + "pod", rem: p + "rem",
		nodeAddr: netip.MustParseAddr("10.211.0.2"), clientAddr: netip.MustParseAddr("10.211.0.1"),
		ext1Addr: netip.MustParseAddr("10.212.0.1"), remAddr: netip.MustParseAddr("10.212.0.2"),
		podAddr: netip.MustParseAddr("10.213.0.2")}
	cl, pod, rem := netnstest.New(t, n.cl), netnstest.New(t, n.pod), netnstest.New(t, n.rem)
	n.nodeH = netnstest.New(t, n.node)
	nsWire(t, n.nodeH, "ext0", cl, n.cl, "eth0", "10.211.0.2/24", "10.211.0.1/24")
	nsWire(t, n.nodeH, "ext1", rem, n.rem, "eth0", "10.212.0.1/24", "10.212.0.2/24")
	_, podEth := nsWire(t, n.nodeH, "lpod", pod, n.pod, "eth0", "10.213.0.1/24", "10.213.0.2/24")
	if err := pod.RouteAdd(&netlink.Route{LinkIndex: podEth.Attrs().Index, Gw: net.ParseIP("10.213.0.1")}); err != nil {
		t.Fatal(err)
	}
	if err := namedns.Do(n.node, func() error {
		for k, v := range map[string]string{"ipv4/ip_forward": "1", "ipv4/conf/all/rp_filter": "0", "ipv4/conf/default/rp_filter": "0"} {
			if err := os.WriteFile("/proc/sys/net/"+k, []byte(v), 0o644); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return n
}

// serveTCP answers each connection with the client address it sees.
func (n *nsNet) serveTCP(ns string, at netip.AddrPort) {
	var ln net.Listener
	if err := namedns.Do(ns, func() error {
		var err error
		ln, err = net.Listen("tcp4", at.String())
		return err
	}); err != nil {
		n.t.Fatal(err)
	}
	n.t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprint(c, c.RemoteAddr().(*net.TCPAddr).IP.String())
			c.Close()
		}
	}()
}

// serveUDP answers each datagram with the source address it sees.
func (n *nsNet) serveUDP(ns string, at netip.AddrPort) {
	var c *net.UDPConn
	if err := namedns.Do(ns, func() error {
		var err error
		c, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(at))
		return err
	}); err != nil {
		n.t.Fatal(err)
	}
	n.t.Cleanup(func() { c.Close() })
	go func() {
		buf := make([]byte, 64)
		for {
			_, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			c.WriteToUDPAddrPort([]byte(from.Addr().String()), from)
		}
	}()
}

// get asks the node at port from the client and returns the answer, or the
// error's errno name ("timeout" for a deadline).
func (n *nsNet) get(network string, port uint16) string {
	ctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
	defer cancel()
	c, err := namedns.Dialer(n.cl)(ctx, network, netip.AddrPortFrom(n.nodeAddr, port).String())
	if err != nil {
		return errName(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(700 * time.Millisecond))
	if network == "udp4" {
		if _, err := c.Write([]byte("ping")); err != nil {
			return errName(err)
		}
		buf := make([]byte, 64)
		k, err := c.Read(buf)
		if err != nil {
			return errName(err)
		}
		return string(buf[:k])
	}
	b, err := io.ReadAll(c)
	if err != nil {
		return errName(err)
	}
	return string(b)
}

func errName(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return unix.ErrnoName(errno)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "timeout"
	}
	return err.Error()
}

// TestNorthSouth: a client outside the node reaches NodePorts on the
// node's address through the tc programs: externalTrafficPolicy Local to a
// pod on the node keeps the client's address; Cluster to a backend on
// another node is SNATed to the node's address on that side, and the reply
// finds its way back (TCP and UDP); Cluster to a local pod is not SNATed;
// Local without a local endpoint drops; no endpoints at all leaves it to
// the stack, which refuses. Established flows survive a reload of the
// programs (the NAT table is pinned).
func TestNorthSouth(t *testing.T) {
	privileged.Require(t, "loads BPF programs, attaches tcx and creates network namespaces")
	privileged.RequireKernel(t, CheckKernel)
	privileged.RequireKernel(t, CheckNorthSouthKernel)
	n := newNSNet(t)
	n.serveTCP(n.pod, netip.AddrPortFrom(n.podAddr, 8080))
	n.serveUDP(n.rem, netip.AddrPortFrom(n.remAddr, 5353))
	n.serveTCP(n.rem, netip.AddrPortFrom(n.remAddr, 8080))

	ns := newNorthSouth(t, n)
	ns.program(t)
	ns.nodePortsAnswer(t)
	ns.flowSurvivesReload(t)
	if !strings.Contains(NodePortFrontend(1, TCP).External().String(), "external") {
		t.Error("an external frontend's name does not say so")
	}
}

// northSouth is TestNorthSouth's datapath on nsNet's node: loaded from a
// private bpffs, its tc programs on ext0 and ext1.
type northSouth struct {
	*nsNet
	cfg Config
	dp  *Datapath
	lb  *LoadBalancer
}

// newNorthSouth mounts a private bpffs and loads the datapath; the test's
// cleanup closes the last one loaded and removes the pins.
func newNorthSouth(t *testing.T, n *nsNet) *northSouth {
	bpffs := t.TempDir()
	if err := unix.Mount("bpffs", bpffs, "bpf", 0, "mode=0700"); err != nil {
		t.Fatalf("mount bpffs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(bpffs, unix.MNT_DETACH) })
	ns := &northSouth{nsNet: n, cfg: Config{BPFRoot: filepath.Join(bpffs, "directlb")}}
	ns.load(t)
	t.Cleanup(func() {
		ns.dp.Close()
		if err := namedns.Do(n.node, func() error { return Cleanup(ns.cfg.BPFRoot) }); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return ns
}

// load loads the datapath, attaches it to the node's devices and restores
// the load balancer from the pins.
func (ns *northSouth) load(t *testing.T) {
	dp, err := Load(ns.cfg)
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	if err := namedns.Do(ns.node, func() error { return dp.AttachDevices([]string{"ext0", "ext1"}) }); err != nil {
		dp.Close()
		t.Fatalf("attach devices: %v", err)
	}
	lb := NewLoadBalancer(LoadBalancerConfig{Maps: dp.Maps})
	if _, err := lb.Restore(); err != nil {
		t.Fatal(err)
	}
	ns.dp, ns.lb = dp, lb
}

// program sets the node addresses and the external NodePorts the cases of
// nodePortsAnswer ask.
func (ns *northSouth) program(t *testing.T) {
	n, lb := ns.nsNet, ns.lb
	if _, err := lb.SetNodeAddresses(map[netip.Addr]NodeAddressFlags{n.nodeAddr: NodeAddressLocal, n.ext1Addr: NodeAddressLocal}); err != nil {
		t.Fatal(err)
	}
	pod := []netip.AddrPort{netip.AddrPortFrom(n.podAddr, 8080)}
	remote := []netip.AddrPort{netip.AddrPortFrom(n.remAddr, 8080)}
	if _, err := lb.Apply([]Service{
		{Frontend: NodePortFrontend(30080, TCP).External(), Backends: pod},
		{Frontend: NodePortFrontend(30081, TCP).External(), Backends: remote, SNAT: true},
		{Frontend: NodePortFrontend(30053, UDP).External(), Backends: []netip.AddrPort{netip.AddrPortFrom(n.remAddr, 5353)}, SNAT: true},
		{Frontend: NodePortFrontend(30082, TCP).External(), Backends: pod, SNAT: true},
		{Frontend: NodePortFrontend(30083, TCP).External(), Drop: true},
		{Frontend: NodePortFrontend(30084, TCP).External()},
		// The socket-level NodePort is another frontend: it does not
		// answer traffic from outside.
		{Frontend: NodePortFrontend(30085, TCP), Backends: pod},
	}, nil); err != nil {
		t.Fatal(err)
	}
}

// nodePortsAnswer asks each NodePort three times from the client.
func (ns *northSouth) nodePortsAnswer(t *testing.T) {
	n := ns.nsNet
	cases := []struct {
		name    string
		network string
		port    uint16
		want    string
	}{
		{"Local: the pod sees the client", "tcp4", 30080, n.clientAddr.String()},
		{"Cluster, other node: SNAT to the node", "tcp4", 30081, n.ext1Addr.String()},
		{"Cluster, other node, UDP", "udp4", 30053, n.ext1Addr.String()},
		{"Cluster, this node's pod: not SNATed", "tcp4", 30082, n.clientAddr.String()},
		{"Local without a local endpoint: dropped", "tcp4", 30083, "timeout"},
		{"no endpoints: refused by the stack", "tcp4", 30084, "ECONNREFUSED"},
		{"socket-level only: not from outside", "tcp4", 30085, "ECONNREFUSED"},
	}
	for _, c := range cases {
		for i := range 3 {
			if got := n.get(c.network, c.port); got != c.want {
				t.Errorf("%s (try %d): got %q, want %q", c.name, i, got, c.want)
			}
		}
	}
}

// flowSurvivesReload: a connection open across a reload keeps working: the
// NAT table is pinned and the tcx links are updated in place.
func (ns *northSouth) flowSurvivesReload(t *testing.T) {
	n := ns.nsNet
	var conn net.Conn
	err := namedns.Do(n.cl, func() error {
		var err error
		conn, err = net.DialTimeout("udp4", netip.AddrPortFrom(n.nodeAddr, 30053).String(), time.Second)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if got := askUDP(conn); got != n.ext1Addr.String() {
		t.Fatalf("UDP flow before the reload: %q", got)
	}
	entries, _ := ns.dp.Maps.NATEntries()
	ns.dp.Close()
	ns.load(t)
	if got := askUDP(conn); got != n.ext1Addr.String() {
		t.Errorf("UDP flow after the reload: %q", got)
	}
	if after, _ := ns.dp.Maps.NATEntries(); after != entries {
		t.Errorf("NAT entries %d after the reload, %d before: the flow was not kept", after, entries)
	}
	if _, ok := ns.lb.Programmed(NodePortFrontend(30080, TCP).External()); !ok {
		t.Error("external frontend lost in the restore")
	}
}

// askUDP sends "ping" on the connected conn and returns the answer, or the
// error's errno name.
func askUDP(conn net.Conn) string {
	_ = conn.SetDeadline(time.Now().Add(700 * time.Millisecond))
	if _, err := conn.Write([]byte("ping")); err != nil {
		return errName(err)
	}
	buf := make([]byte, 64)
	k, err := conn.Read(buf)
	if err != nil {
		return errName(err)
	}
	return string(buf[:k])
}

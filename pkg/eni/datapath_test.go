package eni

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/directlb/directlb/internal/namedns"
	"github.com/directlb/directlb/internal/netnstest"
	"github.com/directlb/directlb/internal/privileged"
)

func sysctls(t *testing.T, ns string, kv map[string]string) {
	t.Helper()
	if err := namedns.Do(ns, func() error {
		for k, v := range kv {
			if err := os.WriteFile("/proc/sys/net/"+k, []byte(v), 0o644); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatalf("sysctls in %s: %v", ns, err)
	}
}

// TestSourceDestCheckPrivileged builds a small VPC of its own: a bridge
// with a source/destination check (nftables, bridge family: a frame's IPv4
// source must be owned by the port it enters on), a client, and a node with
// two ENIs whose pod sits on the secondary ENI (proxy ARP on eth1, as the
// CNI does). Without ENI routing the pod's replies leave through eth0 and
// the check drops them; with Sync they leave through eth1 and arrive; after
// Cleanup they are dropped again.
func TestSourceDestCheckPrivileged(t *testing.T) {
	privileged.Require(t, "creates network namespaces")
	privileged.RequireTools(t, "nftables is the VPC's source/destination check", "nft")
	v := newSrcDstVPC(t)
	v.servePod()
	if err := v.get(); err == nil {
		t.Fatal("without ENI routing the client reached the pod on eth1: the check did not drop the replies from eth0")
	}
	before := v.eth0Drops()
	if before == 0 {
		t.Fatal("without ENI routing the request failed, but not because the check dropped the replies on eth0")
	}
	enis := []ENI{
		{Index: 0, Device: "eth0", Address: netip.MustParsePrefix("10.210.1.10/16"), Gateway: netip.MustParseAddr("10.210.0.1")},
		{Index: 1, Device: "eth1", Address: netip.MustParsePrefix("10.210.1.11/16"), Gateway: netip.MustParseAddr("10.210.0.1")},
	}
	r, err := New(Config{Handle: v.node, ENIs: enis})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Sync([]Pod{{Name: "pod", IP: v.podIP, ENI: "eth1"}}); err != nil {
		t.Fatal(err)
	}
	var errs []error
	for i := range 5 {
		if err := v.get(); err != nil {
			errs = append(errs, fmt.Errorf("request %d: %w", i, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("with ENI routing: %v", err)
	}
	if n := v.eth0Drops(); n != before {
		t.Errorf("with ENI routing the check dropped %d more frames on eth0", n-before)
	}
	if err := Cleanup(v.node); err != nil {
		t.Fatal(err)
	}
	if err := v.get(); err == nil {
		t.Fatal("after Cleanup the client still reached the pod: the replies did not go back to eth0")
	}
}

// srcDstVPC is TestSourceDestCheckPrivileged's network: namespaces for
// the VPC bridge, the node, its pod and a client.
type srcDstVPC struct {
	t                          *testing.T
	vpcNS, nodeNS, podNS, clNS string
	node                       *netlink.Handle
	podIP                      netip.Addr
}

func newSrcDstVPC(t *testing.T) *srcDstVPC {
	p := fmt.Sprintf("dlbt-eni-d%d-", os.Getpid()%100000)
	v := &srcDstVPC{t: t, vpcNS: p + "vpc", nodeNS: p + "node", podNS: p + "pod", clNS: p + "cl",
		podIP: netip.MustParseAddr("10.210.1.130")}
	vpc, cl := netnstest.New(t, v.vpcNS), netnstest.New(t, v.clNS)
	v.node = netnstest.New(t, v.nodeNS)

	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}
	if err := vpc.LinkAdd(br); err != nil {
		t.Fatal(err)
	}
	brl, _ := vpc.LinkByName("br0")
	if err := vpc.LinkSetUp(brl); err != nil {
		t.Fatal(err)
	}
	netnstest.AddAddr(t, vpc, brl, "10.210.0.1/16")
	sysctls(t, v.nodeNS, map[string]string{"ipv4/ip_forward": "1", "ipv4/conf/all/rp_filter": "0", "ipv4/conf/default/rp_filter": "0"})
	port := func(peerH *netlink.Handle, peerNS, dev, vpcPort, addr string) netlink.Link {
		vp, l := netnstest.Veth(t, vpc, vpcPort, peerH, peerNS, dev)
		if err := vpc.LinkSetMaster(vp, brl); err != nil {
			t.Fatal(err)
		}
		netnstest.AddAddr(t, peerH, l, addr)
		return l
	}
	// eth0 first: without policy routing the node's /16 goes out eth0.
	eth0 := port(v.node, v.nodeNS, "eth0", "pe0", "10.210.1.10/16")
	eth1 := port(v.node, v.nodeNS, "eth1", "pe1", "10.210.1.11/16")
	port(cl, v.clNS, "eth0", "pcl", "10.210.0.5/16")
	if err := v.node.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: net.ParseIP("10.210.0.1")}); err != nil {
		t.Fatal(err)
	}
	sysctls(t, v.nodeNS, map[string]string{
		"ipv4/conf/eth0/rp_filter": "0", "ipv4/conf/eth1/rp_filter": "0",
		"ipv4/neigh/eth1/proxy_delay": "0", "ipv4/conf/eth1/forwarding": "1",
	})
	v.addPod(eth1)
	v.addCheck()
	return v
}

// addPod wires the pod: 10.210.1.130 on the secondary ENI's range, gateway
// 169.254.1.1 = the node-side veth, proxy ARP on eth1.
func (v *srcDstVPC) addPod(eth1 netlink.Link) {
	t := v.t
	pod := netnstest.New(t, v.podNS)
	hostVeth, podEth := netnstest.Veth(t, v.node, "dlbp0", pod, v.podNS, "eth0")
	netnstest.AddAddr(t, pod, podEth, "10.210.1.130/32")
	gw := net.ParseIP("169.254.1.1")
	if err := pod.NeighSet(&netlink.Neigh{LinkIndex: podEth.Attrs().Index, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT, IP: gw, HardwareAddr: hostVeth.Attrs().HardwareAddr}); err != nil {
		t.Fatal(err)
	}
	if err := pod.RouteAdd(&netlink.Route{LinkIndex: podEth.Attrs().Index, Scope: netlink.SCOPE_LINK, Dst: ipNet(netip.MustParsePrefix("169.254.1.1/32"))}); err != nil {
		t.Fatal(err)
	}
	if err := pod.RouteAdd(&netlink.Route{LinkIndex: podEth.Attrs().Index, Gw: gw}); err != nil {
		t.Fatal(err)
	}
	if err := v.node.RouteAdd(&netlink.Route{LinkIndex: hostVeth.Attrs().Index, Scope: netlink.SCOPE_LINK, Dst: ipNet(netip.PrefixFrom(v.podIP, 32))}); err != nil {
		t.Fatal(err)
	}
	if err := v.node.NeighSet(&netlink.Neigh{LinkIndex: eth1.Attrs().Index, Family: netlink.FAMILY_V4, Flags: netlink.NTF_PROXY, IP: v.podIP.AsSlice()}); err != nil {
		t.Fatal(err)
	}
}

// addCheck installs the source/destination check, like the test bed's.
func (v *srcDstVPC) addCheck() {
	script := `table bridge dlbt_srcdst {
	chain prerouting {
		type filter hook prerouting priority -200; policy accept;
		ether type != ip accept
		iifname "pe0" ip saddr { 10.210.1.10, 10.210.1.64/26 } accept
		iifname "pe0" counter drop
		iifname "pe1" ip saddr { 10.210.1.11, 10.210.1.128/26 } accept
		iifname "pe1" counter drop
		iifname "pcl" ip saddr { 10.210.0.5 } accept
		iifname "pcl" counter drop
	}
}
`
	cmd := exec.Command("nsenter", "--net="+namedns.Path(v.vpcNS), "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		v.t.Fatalf("nft: %v: %s", err, out)
	}
}

// servePod runs a TCP server in the pod that writes "pod" and closes,
// until the test ends.
func (v *srcDstVPC) servePod() {
	var ln net.Listener
	if err := namedns.Do(v.podNS, func() error {
		var err error
		ln, err = net.Listen("tcp4", "10.210.1.130:8080")
		return err
	}); err != nil {
		v.t.Fatal(err)
	}
	v.t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte("pod"))
			c.Close()
		}
	}()
}

// get connects from the client (1.5 s bound) and reads the answer.
func (v *srcDstVPC) get() error {
	var c net.Conn
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	if err := namedns.Do(v.clNS, func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, "tcp4", "10.210.1.130:8080")
		return err
	}); err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(1500 * time.Millisecond))
	b, err := io.ReadAll(c)
	if err != nil {
		return err
	}
	if string(b) != "pod" {
		return fmt.Errorf("answer %q, want pod", b)
	}
	return nil
}

// eth0Drops is how many frames the check dropped on eth0's port.
func (v *srcDstVPC) eth0Drops() int {
	out, err := exec.Command("nsenter", "--net="+namedns.Path(v.vpcNS), "nft", "list", "chain", "bridge", "dlbt_srcdst", "prerouting").CombinedOutput()
	if err != nil {
		v.t.Fatalf("nft list: %v: %s", err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		var n int
		if i := strings.Index(line, `iifname "pe0" counter packets `); i >= 0 {
			if _, err := fmt.Sscanf(line[i+len(`iifname "pe0" counter packets `):], "%d", &n); err == nil {
				return n
			}
		}
	}
	v.t.Fatalf("no pe0 drop counter in:\n%s", out)
	return 0
}

package cni_test

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/directlb/directlb/internal/namedns"
	"github.com/directlb/directlb/pkg/cloud"
	"github.com/directlb/directlb/pkg/cni/ipam"
	"github.com/directlb/directlb/pkg/cni/podnet"
)

// TestAddCheckDelPrivileged runs ADD, CHECK and DEL through skel in a node
// namespace and checks each piece of the wiring, that a client on the
// subnet reaches the pod through the ENI's proxy ARP, and that DEL leaves
// nothing behind, in the node or (warmIPTarget 0) in the cloud.
func TestAddCheckDelPrivileged(t *testing.T) {
	n := newNode(t)
	conf := n.conf(0, 1) // firstENI 1: the first pod of a workload goes to eth1
	args := n.pod(t, "web-7c9f8b5d4-x2x7q", "c1")
	veth := podnet.HostVeth("c1", "eth0")

	res, err := n.add(t, args, conf)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	checkResult(t, res, args.Netns, veth)
	n.checkWired(t, args.Netns, veth, "10.0.1.64")
	if got := n.cloud.Secondaries("eni-1"); !slices.Equal(got, []netip.Addr{netip.MustParseAddr("10.0.1.64")}) {
		t.Errorf("eni-1's secondary addresses in the cloud: %v, want [10.0.1.64]", got)
	}
	serveOnce(t, args.Netns, "10.0.1.64")
	if got, err := n.dialFromVPC(t, "10.0.1.64"); err != nil || got != "hello" {
		t.Errorf("from the subnet to the pod: %q, %v", got, err)
	}

	if err := n.check(t, args, conf, res); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	eth1, err := n.h.LinkByName("eth1")
	must(t, err)
	proxy := &netlink.Neigh{LinkIndex: eth1.Attrs().Index, Family: netlink.FAMILY_V4, Flags: netlink.NTF_PROXY, IP: net.ParseIP("10.0.1.64")}
	must(t, n.h.NeighDel(proxy))
	if err := n.check(t, args, conf, res); err == nil || !strings.Contains(err.Error(), "proxy neighbour 10.0.1.64 dev eth1") {
		t.Errorf("CHECK without the proxy entry: %v; want it named", err)
	}
	must(t, n.h.NeighSet(proxy))

	if err := n.del(t, args, conf); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	if got := n.hostVeths(t); len(got) != 0 {
		t.Errorf("veths after DEL: %v", got)
	}
	if got := n.proxied(t, "eth1"); len(got) != 0 {
		t.Errorf("proxy entries on eth1 after DEL: %v", got)
	}
	if routes, _ := n.h.RouteGet(net.ParseIP("10.0.1.64")); len(routes) > 0 && routes[0].LinkIndex != eth1.Attrs().Index {
		t.Errorf("route to the pod's address after DEL: %+v", routes[0])
	}
	if got := n.cloud.Secondaries("eni-1"); len(got) != 0 {
		t.Errorf("eni-1 still holds %v in the cloud after DEL with warmIPTarget 0", got)
	}
}

func checkResult(t *testing.T, res *types100.Result, netnsPath, veth string) {
	t.Helper()
	var got []string
	for _, i := range res.Interfaces {
		got = append(got, fmt.Sprintf("%s sandbox=%q", i.Name, i.Sandbox))
	}
	want := []string{veth + ` sandbox=""`, `eth0 sandbox="` + netnsPath + `"`, `eth1 sandbox=""`}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("result interfaces (-want +got):\n%s", diff)
	}
	if len(res.Interfaces) == 3 && res.Interfaces[2].Mac != mac1.String() {
		t.Errorf("the ENI's interface in the result has MAC %q, want eni-1's %s", res.Interfaces[2].Mac, mac1)
	}
	if len(res.IPs) != 1 || res.IPs[0].Address.String() != "10.0.1.64/32" || res.IPs[0].Gateway.String() != "169.254.1.1" ||
		res.IPs[0].Interface == nil || *res.IPs[0].Interface != 1 {
		t.Errorf("result IPs: %v", res.IPs)
	}
	var routes []string
	for _, r := range res.Routes {
		routes = append(routes, r.String())
	}
	if len(res.Routes) != 2 || res.Routes[1].Dst.String() != "0.0.0.0/0" || res.Routes[1].GW.String() != "169.254.1.1" {
		t.Errorf("result routes: %v", routes)
	}
}

// checkWired checks the node's and the pod's side of an attachment.
func (n *node) checkWired(t *testing.T, netnsPath, veth, ip string) {
	t.Helper()
	host, err := n.h.LinkByName(veth)
	if err != nil {
		t.Fatalf("node veth %s: %v", veth, err)
	}
	routes, err := n.h.RouteList(host, unix.AF_INET)
	must(t, err)
	if len(routes) != 1 || routes[0].Dst.String() != ip+"/32" || routes[0].Scope != netlink.SCOPE_LINK {
		t.Errorf("node routes via %s: %v, want %s/32 scope link", veth, routes, ip)
	}
	if got := n.proxied(t, "eth1"); !slices.Equal(got, []string{ip}) {
		t.Errorf("proxy entries on eth1: %v, want [%s]", got, ip)
	}
	for key, want := range map[string]string{"ipv4/ip_forward": "1", "ipv4/conf/eth1/forwarding": "1", "ipv4/neigh/eth1/proxy_delay": "0"} {
		if got := sysctl(t, n.name, key); got != want {
			t.Errorf("node sysctl %s = %s, want %s", key, got, want)
		}
	}
	pod, err := namedns.Handle(filepath.Base(netnsPath))
	must(t, err)
	defer pod.Close()
	eth0, err := pod.LinkByName("eth0")
	must(t, err)
	addrs, err := pod.AddrList(eth0, unix.AF_INET)
	must(t, err)
	if len(addrs) != 1 || addrs[0].IPNet.String() != ip+"/32" {
		t.Errorf("pod eth0 addresses: %v, want %s/32", addrs, ip)
	}
	var got []string
	proutes, err := pod.RouteList(eth0, unix.AF_INET)
	must(t, err)
	for _, r := range proutes {
		got = append(got, fmt.Sprintf("dst=%v gw=%v scope=%v", r.Dst, r.Gw, r.Scope))
	}
	slices.Sort(got)
	want := []string{"dst=0.0.0.0/0 gw=169.254.1.1 scope=universe", "dst=169.254.1.1/32 gw=<nil> scope=link"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("pod routes (-want +got):\n%s", diff)
	}
	neighs, err := pod.NeighList(eth0.Attrs().Index, unix.AF_INET)
	must(t, err)
	if !slices.ContainsFunc(neighs, func(e netlink.Neigh) bool {
		return e.IP.String() == "169.254.1.1" && e.State == netlink.NUD_PERMANENT && e.HardwareAddr.String() == host.Attrs().HardwareAddr.String()
	}) {
		t.Errorf("pod neighbours %v lack 169.254.1.1 permanent → %s", neighs, host.Attrs().HardwareAddr)
	}
}

// TestDelIdempotentPrivileged: DEL succeeds for a container the plugin
// never saw (no pool file at all), twice in a row, and after the pod's
// namespace is gone.
func TestDelIdempotentPrivileged(t *testing.T) {
	n := newNode(t)
	conf := n.conf(1, 0)
	ghost := n.pod(t, "ghost", "never-added")
	if err := n.del(t, ghost, conf); err != nil {
		t.Errorf("DEL of an unknown container with no pool: %v", err)
	}
	args := n.pod(t, "web-aaaaa", "c1")
	if _, err := n.add(t, args, conf); err != nil {
		t.Fatal(err)
	}
	must(t, namedns.Delete(filepath.Base(args.Netns)))
	for i := range 2 {
		if err := n.del(t, args, conf); err != nil {
			t.Errorf("DEL %d with the pod namespace gone: %v", i+1, err)
		}
	}
	if got := n.hostVeths(t); len(got) != 0 {
		t.Errorf("veths after DEL: %v", got)
	}
	if got := n.proxied(t, "eth0"); len(got) != 0 {
		t.Errorf("proxy entries on eth0 after DEL: %v", got)
	}
	held, err := ipam.New(ipam.Config{Dir: filepath.Join(n.dataDir, "node-1"), InstanceID: "node-1"}).Held(t.Context())
	must(t, err)
	if len(held) != 0 {
		t.Errorf("pool holders after DEL: %v", held)
	}
}

// TestWarmIPTargetOnDelPrivileged: with warmIPTarget 0 the pod's address
// leaves the cloud on DEL; with 1 the ENI keeps one free address, and it
// is not the just-freed one.
func TestWarmIPTargetOnDelPrivileged(t *testing.T) {
	for _, tc := range []struct {
		warm int
		want []string // eni-0's secondary addresses after DEL
	}{
		{warm: 0, want: nil},
		{warm: 1, want: []string{"10.0.0.65"}},
	} {
		t.Run(fmt.Sprint(tc.warm), func(t *testing.T) {
			n := newNode(t)
			conf := n.conf(tc.warm, 0)
			args := n.pod(t, "web-aaaaa", "c1")
			res, err := n.add(t, args, conf)
			if err != nil {
				t.Fatal(err)
			}
			if got := res.IPs[0].Address.IP.String(); got != "10.0.0.64" {
				t.Fatalf("ADD gave %s, want 10.0.0.64", got)
			}
			must(t, n.del(t, args, conf))
			var got []string
			for _, a := range n.cloud.Secondaries("eni-0") {
				got = append(got, a.String())
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("eni-0 in the cloud after DEL (-want +got):\n%s", diff)
			}
		})
	}
}

// TestAddCloudFailurePrivileged: when the cloud refuses the address, ADD
// fails with an error that says what failed, and leaves no veth, pod
// interface or proxy entry; the runtime's retry then succeeds.
func TestAddCloudFailurePrivileged(t *testing.T) {
	n := newNode(t)
	conf := n.conf(1, 0)
	args := n.pod(t, "web-aaaaa", "c1")
	n.cloud.Fail = func(op string) error {
		if op == "AssignPrivateIpAddresses" {
			return &cloud.APIError{Op: op, Code: "UnauthorizedOperation", Message: "not allowed"}
		}
		return nil
	}
	_, err := n.add(t, args, conf)
	for _, want := range []string{"allocate a pod address on instance node-1", "eni-0", "AssignPrivateIpAddresses: UnauthorizedOperation"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ADD error %v; want it to say %q", err, want)
		}
	}
	if got := n.hostVeths(t); len(got) != 0 {
		t.Errorf("veths after a failed ADD: %v", got)
	}
	pod, err := namedns.Handle(filepath.Base(args.Netns))
	must(t, err)
	defer pod.Close()
	if l, err := pod.LinkByName("eth0"); err == nil {
		t.Errorf("pod has %s after a failed ADD", l.Attrs().Name)
	}
	if got := n.proxied(t, "eth0"); len(got) != 0 {
		t.Errorf("proxy entries after a failed ADD: %v", got)
	}
	n.cloud.Fail = nil
	if _, err := n.add(t, args, conf); err != nil {
		t.Errorf("ADD retried after the cloud recovered: %v", err)
	}
}

// TestWorkloadSpreadPrivileged: a workload's pods alternate over the ENIs,
// starting at firstENI, and the result names the ENI's device.
func TestWorkloadSpreadPrivileged(t *testing.T) {
	n := newNode(t)
	conf := n.conf(1, 1)
	var got []string
	for i, name := range []string{"web-7c9f8b5d4-aaaaa", "web-7c9f8b5d4-bbbbb", "web-7c9f8b5d4-ccccc", "db-0"} {
		res, err := n.add(t, n.pod(t, name, fmt.Sprintf("c%d", i)), conf)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, res.Interfaces[2].Name+" "+res.IPs[0].Address.IP.String())
	}
	want := []string{"eth1 10.0.1.64", "eth0 10.0.0.64", "eth1 10.0.1.65", "eth1 10.0.1.66"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("ENI and address per pod (-want +got):\n%s", diff)
	}
}

// TestGCPrivileged: GC frees and unwires every attachment the runtime
// does not list as valid, removes stray veths of the plugin's naming, and
// leaves the valid ones alone.
func TestGCPrivileged(t *testing.T) {
	n := newNode(t)
	conf := n.conf(0, 0)
	keep, drop := n.pod(t, "a", "keep"), n.pod(t, "b", "drop")
	if _, err := n.add(t, keep, conf); err != nil {
		t.Fatal(err)
	}
	if _, err := n.add(t, drop, conf); err != nil {
		t.Fatal(err)
	}
	must(t, n.h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "dlb0000dead"}, PeerName: "stray-peer"}))

	gcConf := strings.TrimSuffix(strings.TrimSpace(string(conf)), "}") +
		`,"cni.dev/valid-attachments":[{"containerID":"keep","ifname":"eth0"}]}`
	err := n.inNode(t, "", func() error {
		for k, v := range map[string]string{"CNI_COMMAND": "GC", "CNI_PATH": "/opt/cni/bin"} {
			os.Setenv(k, v)
			defer os.Unsetenv(k)
		}
		return pluginMain([]byte(gcConf), n.cloud)
	})
	if err != nil {
		t.Fatalf("GC: %v", err)
	}
	want := []string{podnet.HostVeth("keep", "eth0")}
	if diff := cmp.Diff(want, n.hostVeths(t)); diff != "" {
		t.Errorf("veths after GC (-want +got):\n%s", diff)
	}
	if got := n.proxied(t, "eth0"); !slices.Equal(got, []string{"10.0.0.64"}) {
		t.Errorf("proxy entries after GC: %v, want only keep's 10.0.0.64", got)
	}
	if got := n.cloud.Secondaries("eni-0"); len(got) != 1 || got[0] != netip.MustParseAddr("10.0.0.64") {
		t.Errorf("eni-0 in the cloud after GC: %v, want keep's 10.0.0.64 only", got)
	}
	if err := n.check(t, keep, conf, nil); err != nil {
		t.Errorf("CHECK of the kept attachment after GC: %v", err)
	}
	if err := n.check(t, drop, conf, nil); err == nil || !strings.Contains(err.Error(), "records no address") {
		t.Errorf("CHECK of the collected attachment: %v", err)
	}
}

package agent

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	"go.uber.org/zap/zaptest"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/directlb/directlb/internal/netnstest"
	"github.com/directlb/directlb/internal/privileged"
	"github.com/directlb/directlb/pkg/eni"
	"github.com/directlb/directlb/pkg/localcloud/localcloudtest"
)

var addrCmp = cmp.Comparer(func(a, b netip.Addr) bool { return a == b })
var prefixCmp = cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })

func a(s string) netip.Addr   { return netip.MustParseAddr(s) }
func p(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func pod(name, ip string, mod func(*corev1.Pod)) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name},
		Spec:       corev1.PodSpec{NodeName: "node-1"},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip},
	}
	if mod != nil {
		mod(p)
	}
	return p
}

func TestLocalPods(t *testing.T) {
	owners := map[netip.Addr]string{netip.MustParseAddr("10.100.1.130"): "eth1", netip.MustParseAddr("10.100.1.70"): "eth0"}
	pods := []*corev1.Pod{
		pod("a", "10.100.1.130", nil),
		pod("b", "10.100.1.70", nil),
		pod("no-owner", "10.100.1.71", nil),
		pod("pending-no-ip", "", func(p *corev1.Pod) { p.Status.Phase = corev1.PodPending }),
		pod("host", "10.100.1.10", func(p *corev1.Pod) { p.Spec.HostNetwork = true }),
		pod("done", "10.100.1.131", func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded }),
		pod("v6", "fd00::1", nil),
	}
	want := []eni.Pod{
		{Name: "ns/a", IP: netip.MustParseAddr("10.100.1.130"), ENI: "eth1"},
		{Name: "ns/b", IP: netip.MustParseAddr("10.100.1.70"), ENI: "eth0"},
		{Name: "ns/no-owner", IP: netip.MustParseAddr("10.100.1.71")},
	}
	if diff := cmp.Diff(want, LocalPods(pods, owners), cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("LocalPods (-want +got):\n%s", diff)
	}
}

// TestENIRoutingPrivileged runs the pod informer and the router against a
// network namespace of its own with an "ENI" eth1 and proxy neighbours.
func TestENIRoutingPrivileged(t *testing.T) {
	privileged.Require(t, "creates a network namespace")
	h := newTestNetns(t, "dlbt-agent-eni")
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth1"}, PeerName: "peer1"}); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"peer1", "eth1"} {
		l, _ := h.LinkByName(d)
		if err := h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
	eth1, _ := h.LinkByName("eth1")
	if err := h.AddrAdd(eth1, &netlink.Addr{IPNet: &net.IPNet{IP: net.ParseIP("10.100.1.11"), Mask: net.CIDRMask(16, 32)}}); err != nil {
		t.Fatal(err)
	}
	if err := h.NeighSet(&netlink.Neigh{LinkIndex: eth1.Attrs().Index, Family: netlink.FAMILY_V4, Flags: netlink.NTF_PROXY, IP: net.ParseIP("10.100.1.130")}); err != nil {
		t.Fatal(err)
	}
	enis, err := eni.Discover(h, eni.DiscoverConfig{Gateway: netip.MustParseAddr("10.100.0.1")})
	if err != nil {
		t.Fatal(err)
	}
	r, err := eni.New(eni.Config{Handle: h, ENIs: enis})
	if err != nil {
		t.Fatal(err)
	}
	client := fake.NewClientset(pod("a", "10.100.1.130", nil))
	er := &ENIRouting{
		Client: client, NodeName: "node-1", Router: r, Resync: time.Hour, Logger: zaptest.NewLogger(t),
		Owners: func() (map[netip.Addr]string, error) { return eni.ProxyOwners(h, enis) },
	}
	ctx := t.Context()
	defer runENIRouting(t, er, h)()

	waitFromRules(t, h, []string{"from 10.100.1.130/32 lookup 101"})

	// A second pod gets its rule once its proxy neighbour is there and the
	// pod changes; deleting the first removes its rule.
	if err := h.NeighSet(&netlink.Neigh{LinkIndex: eth1.Attrs().Index, Family: netlink.FAMILY_V4, Flags: netlink.NTF_PROXY, IP: net.ParseIP("10.100.1.131")}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.CoreV1().Pods("ns").Create(ctx, pod("b", "10.100.1.131", nil), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFromRules(t, h, []string{"from 10.100.1.130/32 lookup 101", "from 10.100.1.131/32 lookup 101"})
	if err := client.CoreV1().Pods("ns").Delete(ctx, "a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFromRules(t, h, []string{"from 10.100.1.131/32 lookup 101"})
}

// newTestNetns creates network namespace <prefix>-<pid>, deleted at the
// end of the test, and returns a netlink handle in it.
func newTestNetns(t *testing.T, prefix string) *netlink.Handle {
	t.Helper()
	return netnstest.New(t, fmt.Sprintf("%s-%d", prefix, os.Getpid()%100000))
}

// waitFromRules waits up to 10 s for h's `from <pod> lookup <table>` rules
// (priority eni.PriorityFromPod) to be want, sorted.
func waitFromRules(t *testing.T, h *netlink.Handle, want []string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		rules, err := h.RuleList(netlink.FAMILY_V4)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, ru := range rules {
			if ru.Priority == eni.PriorityFromPod && ru.Src != nil {
				got = append(got, fmt.Sprintf("from %s lookup %d", ru.Src, ru.Table))
			}
		}
		slices.Sort(got)
		if slices.Equal(got, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("rules %v, want %v", got, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestInstanceIDFromProviderID(t *testing.T) {
	for in, want := range map[string]string{
		"aws:///us-east-1a/i-0123456789abcdef0": "i-0123456789abcdef0",
		"directlb-testbed:///node-1":            "node-1",
		"":                                      "",
		"plain":                                 "plain",
	} {
		if got := InstanceIDFromProviderID(in); got != want {
			t.Errorf("InstanceIDFromProviderID(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestENIRoutingFromEC2Privileged maps localcloud's ENIs to the links of
// a namespace of its own by MAC, and routes pods by the addresses EC2
// says each ENI holds: moving an address between ENIs in the cloud moves
// the pod's rule.
func TestENIRoutingFromEC2Privileged(t *testing.T) {
	privileged.Require(t, "creates a network namespace")
	ctx := context.Background()
	_, ec2 := localcloudtest.ENICloud(t)
	h := newTestNetns(t, "dlbt-agent-ec2")
	addNode1Links(t, h)
	if _, err := ec2.AssignPrivateIPs(ctx, "eni-node1-1", []netip.Addr{a("10.100.1.130")}, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := ec2.AssignPrivateIPs(ctx, "eni-node1-0", []netip.Addr{a("10.100.1.64")}, 0); err != nil {
		t.Fatal(err)
	}

	src, err := eni.Resolve(ctx, eni.ResolveConfig{Source: eni.SourceAuto, Cloud: ec2, InstanceID: "node-1", Node: eni.Namespace{Handle: h}, Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if src.Source != eni.SourceEC2 {
		t.Fatalf("source %q (%s), want ec2", src.Source, src.Reason)
	}
	wantENIs := []eni.ENI{
		{Index: 0, Device: "eth0", Address: p("10.100.1.10/16"), Gateway: a("10.100.0.1")},
		{Index: 1, Device: "eth1", Address: p("10.100.1.11/16"), Gateway: a("10.100.0.1")},
	}
	if diff := cmp.Diff(wantENIs, src.ENIs, addrCmp, prefixCmp); diff != "" {
		t.Fatalf("ENIs from EC2 and links (-want +got):\n%s", diff)
	}
	r, err := eni.New(eni.Config{Handle: h, ENIs: src.ENIs})
	if err != nil {
		t.Fatal(err)
	}
	client := fake.NewClientset(pod("a", "10.100.1.130", nil), pod("b", "10.100.1.64", nil), pod("not-in-ec2", "10.100.1.140", nil))
	er := &ENIRouting{Client: client, NodeName: "node-1", Router: r, Resync: 100 * time.Millisecond, Logger: zaptest.NewLogger(t), Owners: src.Owners}
	defer runENIRouting(t, er, h)()
	waitFromRules(t, h, []string{"from 10.100.1.130/32 lookup 101", "from 10.100.1.64/32 lookup 100"})

	// The cloud moves 10.100.1.130 to the primary ENI: the next resync
	// follows.
	if _, err := ec2.AssignPrivateIPs(ctx, "eni-node1-0", []netip.Addr{a("10.100.1.140")}, 0); err != nil {
		t.Fatal(err)
	}
	if err := ec2.UnassignPrivateIPs(ctx, "eni-node1-1", []netip.Addr{a("10.100.1.130")}); err != nil {
		t.Fatal(err)
	}
	if _, err := ec2.AssignPrivateIPs(ctx, "eni-node1-0", []netip.Addr{a("10.100.1.130")}, 0); err != nil {
		t.Fatal(err)
	}
	waitFromRules(t, h, []string{"from 10.100.1.130/32 lookup 100", "from 10.100.1.140/32 lookup 100", "from 10.100.1.64/32 lookup 100"})
}

// addNode1Links adds localcloudtest.ENICloud's node-1 ENIs to h's
// namespace: eth0 and eth1 (veths, up) with the ENIs' MACs and primary
// addresses.
func addNode1Links(t *testing.T, h *netlink.Handle) {
	t.Helper()
	for i, mac := range []string{"02:d1:00:00:01:00", "02:d1:00:00:01:01"} {
		hw, _ := net.ParseMAC(mac)
		dev := fmt.Sprintf("eth%d", i)
		if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: dev, HardwareAddr: hw}, PeerName: fmt.Sprintf("peer%d", i)}); err != nil {
			t.Fatal(err)
		}
		for _, d := range []string{dev, fmt.Sprintf("peer%d", i)} {
			l, _ := h.LinkByName(d)
			if err := h.LinkSetUp(l); err != nil {
				t.Fatal(err)
			}
		}
		l, _ := h.LinkByName(dev)
		if err := h.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: net.IPv4(10, 100, 1, byte(10+i)), Mask: net.CIDRMask(16, 32)}}); err != nil {
			t.Fatal(err)
		}
	}
}

// runENIRouting runs er until the returned stop is called; stop checks
// Run's error and cleans h's ENI routing up.
func runENIRouting(t *testing.T, er *ENIRouting, h *netlink.Handle) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- er.Run(ctx) }()
	return func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		if err := eni.Cleanup(h); err != nil {
			t.Errorf("Cleanup: %v", err)
		}
	}
}

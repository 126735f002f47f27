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
)

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
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- er.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		if err := eni.Cleanup(h); err != nil {
			t.Errorf("Cleanup: %v", err)
		}
	}()

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

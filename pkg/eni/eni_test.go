package eni

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync/atomic"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/directlb/directlb/internal/namedns"
	"github.com/directlb/directlb/internal/netnstest"
	"github.com/directlb/directlb/internal/privileged"
)

func TestValidate(t *testing.T) {
	good := ENI{Index: 1, Device: "eth1", Address: netip.MustParsePrefix("10.100.1.11/16"), Gateway: netip.MustParseAddr("10.100.0.1")}
	tests := []struct {
		name    string
		enis    []ENI
		wantErr bool
	}{
		{"ok", []ENI{good}, false},
		{"no device", []ENI{{Index: 1, Address: good.Address, Gateway: good.Gateway}}, true},
		{"gateway outside subnet", []ENI{{Index: 1, Device: "eth1", Address: good.Address, Gateway: netip.MustParseAddr("10.1.0.1")}}, true},
		{"index twice", []ENI{good, {Index: 1, Device: "eth2", Address: good.Address, Gateway: good.Gateway}}, true},
		{"device twice", []ENI{good, {Index: 2, Device: "eth1", Address: good.Address, Gateway: good.Gateway}}, true},
		{"no address", []ENI{{Index: 1, Device: "eth1", Gateway: good.Gateway}}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := Config{ENIs: tc.enis}.Validate()
			if (err != nil) != tc.wantErr {
				t.Fatalf("Validate() = %v, want error %v", err, tc.wantErr)
			}
		})
	}
}

var nsSeq atomic.Int32

// testNS is a network namespace of the test's own, with two "ENIs" (each a
// veth whose peer stays in the namespace) on 10.200.0.0/16 and pod veths.
type testNS struct {
	name string
	h    *netlink.Handle
}

func newTestNS(t *testing.T) *testNS {
	t.Helper()
	privileged.Require(t, "creates a network namespace")
	name := fmt.Sprintf("dlbt-eni-%d-%d", os.Getpid()%100000, nsSeq.Add(1))
	h := netnstest.New(t, name)
	// Route lookups with an input interface need forwarding on.
	if err := namedns.Do(name, func() error {
		return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644)
	}); err != nil {
		t.Fatalf("ip_forward in %s: %v", name, err)
	}
	tn := &testNS{name: name, h: h}
	tn.veth(t, "eth0", "peer0", "10.200.0.10/16")
	tn.veth(t, "eth1", "peer1", "10.200.0.11/16")
	return tn
}

// veth adds a veth pair in the namespace, both ends up, addr (if any) on name.
func (n *testNS) veth(t *testing.T, name, peer, addr string) netlink.Link {
	t.Helper()
	if err := n.h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: peer}); err != nil {
		t.Fatalf("add veth %s: %v", name, err)
	}
	var l netlink.Link
	for _, d := range []string{peer, name} {
		var err error
		if l, err = n.h.LinkByName(d); err != nil {
			t.Fatal(err)
		}
		if err := n.h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
	if addr != "" {
		p := netip.MustParsePrefix(addr)
		if err := n.h.AddrAdd(l, &netlink.Addr{IPNet: ipNet(p)}); err != nil {
			t.Fatalf("address %s on %s: %v", addr, name, err)
		}
	}
	return l
}

var testENIs = []ENI{
	{Index: 0, Device: "eth0", Address: netip.MustParsePrefix("10.200.0.10/16"), Gateway: netip.MustParseAddr("10.200.0.1")},
	{Index: 1, Device: "eth1", Address: netip.MustParsePrefix("10.200.0.11/16"), Gateway: netip.MustParseAddr("10.200.0.1")},
}

// state renders the owned rules and routes (and the main-table /32s) as
// sorted lines, like `ip rule` / `ip route show table all`.
func (n *testNS) state(t *testing.T) []string {
	t.Helper()
	var out []string
	rules, err := ownedRules(n.h)
	if err != nil {
		t.Fatal(err)
	}
	for _, ru := range rules {
		k := ruleKeyOf(ru)
		s := fmt.Sprintf("rule %d", k.prio)
		if k.src.IsValid() {
			s += " from " + k.src.String()
		}
		if k.dst.IsValid() {
			s += " to " + k.dst.String()
		}
		out = append(out, s+fmt.Sprintf(" lookup %d", k.table))
	}
	routes, err := n.h.RouteListFiltered(unix.AF_INET, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	if err != nil {
		t.Fatal(err)
	}
	for _, rt := range routes {
		k := routeKeyOf(&rt)
		if rt.Table == unix.RT_TABLE_LOCAL || (rt.Table == unix.RT_TABLE_MAIN && k.dst.Bits() != 32) {
			continue
		}
		l, err := n.h.LinkByIndex(rt.LinkIndex)
		if err != nil {
			t.Fatal(err)
		}
		s := fmt.Sprintf("route table %d %s", rt.Table, k.dst)
		if k.gw.IsValid() {
			s += " via " + k.gw.String()
		}
		s += " dev " + l.Attrs().Name
		if rt.Protocol == RouteProtocol {
			s += " proto eni"
		}
		out = append(out, s)
	}
	slices.Sort(out)
	return out
}

func baseRoutes() []string {
	return []string{
		"route table 100 0.0.0.0/0 via 10.200.0.1 dev eth0 proto eni",
		"route table 100 10.200.0.0/16 dev eth0 proto eni",
		"route table 101 0.0.0.0/0 via 10.200.0.1 dev eth1 proto eni",
		"route table 101 10.200.0.0/16 dev eth1 proto eni",
	}
}

func sorted(s ...[]string) []string {
	out := slices.Concat(s...)
	slices.Sort(out)
	return out
}

func TestSyncPrivileged(t *testing.T) {
	n := newTestNS(t)
	n.veth(t, "dlbaaaa0001", "pa1", "")
	n.veth(t, "dlbaaaa0002", "pa2", "")
	n.veth(t, "dlbaaaa0003", "pa3", "")
	// The CNI already routed pod 1; pods 2 and 3 have no host route yet.
	v1, _ := n.h.LinkByName("dlbaaaa0001")
	if err := n.h.RouteAdd(&netlink.Route{LinkIndex: v1.Attrs().Index, Scope: netlink.SCOPE_LINK, Dst: ipNet(netip.MustParsePrefix("10.200.1.130/32"))}); err != nil {
		t.Fatal(err)
	}
	pods := []Pod{
		{Name: "p1", IP: netip.MustParseAddr("10.200.1.130"), Veth: "dlbaaaa0001", ENI: "eth1"},
		{Name: "p2", IP: netip.MustParseAddr("10.200.1.131"), Veth: "dlbaaaa0002", ENI: "eth1"},
		{Name: "p3", IP: netip.MustParseAddr("10.200.1.70"), Veth: "dlbaaaa0003", ENI: "eth0"},
		{Name: "unknown ENI", IP: netip.MustParseAddr("10.200.1.200"), Veth: "dlbaaaa0003", ENI: "eth7"},
	}
	r, err := New(Config{Handle: n.h, ENIs: testENIs})
	if err != nil {
		t.Fatal(err)
	}
	res, err := r.Sync(pods)
	if err != nil {
		t.Fatalf("Sync: %v", err)
	}
	if diff := cmp.Diff(Result{RulesAdded: 6, RoutesAdded: 6, Skipped: 1}, res); diff != "" {
		t.Errorf("first Sync result (-want +got):\n%s", diff)
	}
	all := sorted(baseRoutes(), []string{
		"route table 254 10.200.1.130/32 dev dlbaaaa0001",
		"route table 254 10.200.1.131/32 dev dlbaaaa0002 proto eni",
		"route table 254 10.200.1.70/32 dev dlbaaaa0003 proto eni",
		"rule 1000 to 10.200.1.130/32 lookup 254",
		"rule 1000 to 10.200.1.131/32 lookup 254",
		"rule 1000 to 10.200.1.70/32 lookup 254",
		"rule 1001 from 10.200.1.130/32 lookup 101",
		"rule 1001 from 10.200.1.131/32 lookup 101",
		"rule 1001 from 10.200.1.70/32 lookup 100",
	})
	if diff := cmp.Diff(all, n.state(t)); diff != "" {
		t.Fatalf("after Sync (-want +got):\n%s", diff)
	}

	checkPodEgress(t, n)

	// Idempotent: a second Sync changes nothing.
	res, err = r.Sync(pods)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(Result{Skipped: 1}, res); diff != "" {
		t.Errorf("second Sync result (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(all, n.state(t)); diff != "" {
		t.Fatalf("after second Sync (-want +got):\n%s", diff)
	}

	afterRemoval := syncAfterPod2Goes(t, n, r, pods)
	syncAfterRestart(t, n, pods, afterRemoval)
	checkCleanup(t, n)
}

// podEgressCase is one packet TestSyncPrivileged asks the kernel to route.
type podEgressCase struct {
	from, iif, to, wantDev string
}

// podEgressCases are the packets checkPodEgress routes after the first Sync.
var podEgressCases = []podEgressCase{
	{"10.200.1.130", "dlbaaaa0001", "198.51.100.7", "eth1"},
	{"10.200.1.130", "dlbaaaa0001", "10.200.2.140", "eth1"},
	{"10.200.1.70", "dlbaaaa0003", "198.51.100.7", "eth0"},
	{"10.200.1.130", "dlbaaaa0001", "10.200.1.131", "dlbaaaa0002"},
	{"10.200.1.130", "dlbaaaa0001", "10.200.1.70", "dlbaaaa0003"},
}

// checkPodEgress: the kernel sends a pod's traffic out of its ENI: to the
// VPC and beyond through eth1 for pod 1, to a local pod through its veth.
func checkPodEgress(t *testing.T, n *testNS) {
	for _, tc := range podEgressCases {
		rs, err := n.h.RouteGetWithOptions(net.ParseIP(tc.to), &netlink.RouteGetOptions{Iif: tc.iif, SrcAddr: net.ParseIP(tc.from)})
		if err != nil {
			t.Fatalf("route get %s from %s iif %s: %v", tc.to, tc.from, tc.iif, err)
		}
		l, err := n.h.LinkByIndex(rs[0].LinkIndex)
		if err != nil {
			t.Fatal(err)
		}
		if l.Attrs().Name != tc.wantDev {
			t.Errorf("route get %s from %s iif %s: dev %s, want %s", tc.to, tc.from, tc.iif, l.Attrs().Name, tc.wantDev)
		}
	}
}

// syncAfterPod2Goes: pod 2 goes; its rules and the host route we wrote go.
func syncAfterPod2Goes(t *testing.T, n *testNS, r *Router, pods []Pod) []string {
	res, err := r.Sync([]Pod{pods[0], pods[2]})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(Result{RulesDeleted: 2, RoutesDeleted: 1}, res); diff != "" {
		t.Errorf("Sync after removal result (-want +got):\n%s", diff)
	}
	afterRemoval := sorted(baseRoutes(), []string{
		"route table 254 10.200.1.130/32 dev dlbaaaa0001",
		"route table 254 10.200.1.70/32 dev dlbaaaa0003 proto eni",
		"rule 1000 to 10.200.1.130/32 lookup 254",
		"rule 1000 to 10.200.1.70/32 lookup 254",
		"rule 1001 from 10.200.1.130/32 lookup 101",
		"rule 1001 from 10.200.1.70/32 lookup 100",
	})
	if diff := cmp.Diff(afterRemoval, n.state(t)); diff != "" {
		t.Fatalf("after removal (-want +got):\n%s", diff)
	}
	return afterRemoval
}

// syncAfterRestart: a new Router finds a leftover rule of a pod that went
// while it was down and a stale route in its table; it keeps what is right
// and removes the rest. (The kernel refuses exact duplicate rules
// with NLM_F_EXCL, which both netlink and ip(8) send.)
func syncAfterRestart(t *testing.T, n *testNS, pods []Pod, afterRemoval []string) {
	stale := netlink.NewRule()
	stale.Family, stale.Priority, stale.Table, stale.Src = unix.AF_INET, PriorityFromPod, 101, ipNet(netip.MustParsePrefix("10.200.1.150/32"))
	if err := n.h.RuleAdd(stale); err != nil {
		t.Fatal(err)
	}
	eth1, _ := n.h.LinkByName("eth1")
	if err := n.h.RouteAdd(&netlink.Route{Table: 101, LinkIndex: eth1.Attrs().Index, Dst: ipNet(netip.MustParsePrefix("10.9.0.0/16")), Gw: net.ParseIP("10.200.0.1"), Protocol: RouteProtocol}); err != nil {
		t.Fatal(err)
	}
	r2, err := New(Config{Handle: n.h, ENIs: testENIs})
	if err != nil {
		t.Fatal(err)
	}
	res, err := r2.Sync([]Pod{pods[0], pods[2]})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(Result{RulesDeleted: 1, RoutesDeleted: 1}, res); diff != "" {
		t.Errorf("restart Sync result (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(afterRemoval, n.state(t)); diff != "" {
		t.Fatalf("after restart (-want +got):\n%s", diff)
	}
}

// checkCleanup: Cleanup leaves only what it did not write.
func checkCleanup(t *testing.T, n *testNS) {
	if err := Cleanup(n.h); err != nil {
		t.Fatalf("Cleanup: %v", err)
	}
	want := []string{"route table 254 10.200.1.130/32 dev dlbaaaa0001"}
	if diff := cmp.Diff(want, n.state(t)); diff != "" {
		t.Fatalf("after Cleanup (-want +got):\n%s", diff)
	}
	if err := Cleanup(n.h); err != nil {
		t.Fatalf("second Cleanup: %v", err)
	}
}

func TestDiscoverPrivileged(t *testing.T) {
	n := newTestNS(t)
	eth0, _ := n.h.LinkByName("eth0")
	if err := n.h.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: net.ParseIP("10.200.0.1")}); err != nil {
		t.Fatal(err)
	}
	// An eth<N> without an address is not an ENI; a /24 ENI whose subnet
	// does not hold the default gateway gets the subnet's first address.
	n.veth(t, "eth5", "peer5", "")
	n.veth(t, "eth3", "peer3", "10.201.7.20/24")
	got, err := Discover(n.h, DiscoverConfig{})
	if err != nil {
		t.Fatal(err)
	}
	want := sortENIs(append(slices.Clone(testENIs), ENI{Index: 3, Device: "eth3", Address: netip.MustParsePrefix("10.201.7.20/24"), Gateway: netip.MustParseAddr("10.201.7.1")}))
	if diff := cmp.Diff(want, sortENIs(got), cmp.Comparer(func(a, b netip.Addr) bool { return a == b }), cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
		t.Errorf("Discover (-want +got):\n%s", diff)
	}
	if _, err := Discover(n.h, DiscoverConfig{Devices: []string{"eth5"}}); err == nil {
		t.Error("Discover of a listed device without an address: no error")
	}
	got, err = Discover(n.h, DiscoverConfig{Devices: []string{"eth1"}, Gateway: netip.MustParseAddr("10.200.0.254")})
	if err != nil {
		t.Fatal(err)
	}
	if want := []ENI{{Index: 1, Device: "eth1", Address: netip.MustParsePrefix("10.200.0.11/16"), Gateway: netip.MustParseAddr("10.200.0.254")}}; !slices.Equal(want, got) {
		t.Errorf("Discover eth1 with gateway = %v, want %v", got, want)
	}

	// Proxy neighbours say which ENI owns a pod address.
	for ip, dev := range map[string]string{"10.200.1.130": "eth1", "10.200.1.70": "eth0"} {
		l, _ := n.h.LinkByName(dev)
		if err := n.h.NeighSet(&netlink.Neigh{LinkIndex: l.Attrs().Index, Family: netlink.FAMILY_V4, Flags: netlink.NTF_PROXY, IP: net.ParseIP(ip)}); err != nil {
			t.Fatal(err)
		}
	}
	owners, err := ProxyOwners(n.h, testENIs)
	if err != nil {
		t.Fatal(err)
	}
	wantOwners := map[netip.Addr]string{netip.MustParseAddr("10.200.1.130"): "eth1", netip.MustParseAddr("10.200.1.70"): "eth0"}
	if diff := cmp.Diff(wantOwners, owners, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("ProxyOwners (-want +got):\n%s", diff)
	}
}

func sortENIs(e []ENI) []ENI {
	slices.SortFunc(e, func(a, b ENI) int { return a.Index - b.Index })
	return e
}

// TestCleanupKeepsForeignRulesPrivileged: rules someone else put at the
// router's priorities survive Sync and Cleanup; only the router's go.
func TestCleanupKeepsForeignRulesPrivileged(t *testing.T) {
	n := newTestNS(t)
	foreign := []*netlink.Rule{netlink.NewRule(), netlink.NewRule(), netlink.NewRule()}
	foreign[0].Priority, foreign[0].Table, foreign[0].Dst = PriorityToPod, 200, ipNet(netip.MustParsePrefix("10.0.0.0/8"))
	foreign[1].Priority, foreign[1].Table, foreign[1].Mark = PriorityToPod, 201, 0x10
	foreign[2].Priority, foreign[2].Table, foreign[2].Src = PriorityFromPod, 202, ipNet(netip.MustParsePrefix("10.200.1.130/32"))
	foreign[2].Protocol = unix.RTPROT_STATIC
	for _, ru := range foreign {
		ru.Family = unix.AF_INET
		if err := n.h.RuleAdd(ru); err != nil {
			t.Fatalf("add foreign rule %v: %v", ru, err)
		}
	}
	atOurPriorities := func() []string {
		t.Helper()
		all, err := n.h.RuleList(unix.AF_INET)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, ru := range all {
			if ru.Priority == PriorityToPod || ru.Priority == PriorityFromPod {
				k := ruleKeyOf(ru)
				out = append(out, fmt.Sprintf("%d from %v to %v mark %#x lookup %d proto %d", k.prio, k.src, k.dst, ru.Mark, k.table, ru.Protocol))
			}
		}
		slices.Sort(out)
		return out
	}
	foreignWant := []string{
		"1000 from invalid Prefix to 10.0.0.0/8 mark 0x0 lookup 200 proto 0",
		"1000 from invalid Prefix to invalid Prefix mark 0x10 lookup 201 proto 0",
		"1001 from 10.200.1.130/32 to invalid Prefix mark 0x0 lookup 202 proto 4",
	}
	if diff := cmp.Diff(foreignWant, atOurPriorities()); diff != "" {
		t.Fatalf("foreign rules as added (-want +got):\n%s", diff)
	}

	r, err := New(Config{Handle: n.h, ENIs: testENIs})
	if err != nil {
		t.Fatal(err)
	}
	res, err := r.Sync([]Pod{{Name: "p1", IP: netip.MustParseAddr("10.200.1.130"), ENI: "eth1"}})
	if err != nil {
		t.Fatalf("Sync: %v", err)
	}
	if diff := cmp.Diff(Result{RulesAdded: 2, RoutesAdded: 4}, res); diff != "" {
		t.Errorf("Sync result: foreign rules touched? (-want +got):\n%s", diff)
	}
	withOurs := sorted(foreignWant, []string{
		"1000 from invalid Prefix to 10.200.1.130/32 mark 0x0 lookup 254 proto 219",
		"1001 from 10.200.1.130/32 to invalid Prefix mark 0x0 lookup 101 proto 219",
	})
	if diff := cmp.Diff(withOurs, atOurPriorities()); diff != "" {
		t.Fatalf("after Sync (-want +got):\n%s", diff)
	}

	if err := Cleanup(n.h); err != nil {
		t.Fatalf("Cleanup: %v", err)
	}
	if diff := cmp.Diff(foreignWant, atOurPriorities()); diff != "" {
		t.Fatalf("after Cleanup: not exactly the foreign rules (-want +got):\n%s", diff)
	}
}

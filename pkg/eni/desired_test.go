package eni

import (
	"errors"
	"maps"
	"net"
	"net/netip"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

var planCmp = cmp.Options{
	cmp.AllowUnexported(ruleKey{}, routeKey{}, route{}, routedPod{}),
	cmp.Comparer(func(a, b netip.Addr) bool { return a == b }),
	cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }),
}

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func TestRoutable(t *testing.T) {
	enis := map[string]ENI{"eth1": testENIs[1]}
	a := Pod{Name: "a", IP: netip.MustParseAddr("10.200.1.130"), ENI: "eth1"}
	unknown := Pod{Name: "unknown ENI", IP: netip.MustParseAddr("10.200.1.131"), ENI: "eth7"}
	v6 := Pod{Name: "v6", IP: netip.MustParseAddr("fd00::1"), ENI: "eth1"}
	routed, skipped := routable(enis, []Pod{a, unknown, v6})
	if diff := cmp.Diff([]routedPod{{Pod: a, eni: testENIs[1]}}, routed, planCmp); diff != "" {
		t.Errorf("routed (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]Pod{unknown, v6}, skipped, planCmp); diff != "" {
		t.Errorf("skipped (-want +got):\n%s", diff)
	}
}

// routeSet is the routes as desired keys them.
func routeSet(rts ...route) map[routeKey]route {
	out := map[routeKey]route{}
	for _, rt := range rts {
		out[rt.routeKey] = rt
	}
	return out
}

func TestDesired(t *testing.T) {
	eth0, eth1 := testENIs[0], testENIs[1]
	p1 := routedPod{Pod: Pod{Name: "p1", IP: netip.MustParseAddr("10.200.1.130"), Veth: "veth1", ENI: "eth1"}, eni: eth1}
	p2 := routedPod{Pod: Pod{Name: "p2", IP: netip.MustParseAddr("10.200.1.70"), ENI: "eth0"}, eni: eth0}
	links := linkIndexes{index: map[string]int{"eth0": 2, "eth1": 3, "veth1": 10}, err: map[string]error{}}
	eth0Routes := []route{
		{routeKey{table: 100, dst: pfx("10.200.0.0/16"), link: 2}, netlink.SCOPE_LINK},
		{routeKey{table: 100, dst: pfx("0.0.0.0/0"), gw: eth0.Gateway, link: 2}, netlink.SCOPE_UNIVERSE},
	}
	eniRoutes := append(slices.Clone(eth0Routes),
		route{routeKey{table: 101, dst: pfx("10.200.0.0/16"), link: 3}, netlink.SCOPE_LINK},
		route{routeKey{table: 101, dst: pfx("0.0.0.0/0"), gw: eth1.Gateway, link: 3}, netlink.SCOPE_UNIVERSE})
	p1Host := route{routeKey{table: unix.RT_TABLE_MAIN, dst: pfx("10.200.1.130/32"), link: 10}, netlink.SCOPE_LINK}
	p1Rules := map[ruleKey]bool{
		{prio: PriorityToPod, dst: pfx("10.200.1.130/32"), table: unix.RT_TABLE_MAIN}: true,
		{prio: PriorityFromPod, src: pfx("10.200.1.130/32"), table: 101}:              true,
	}
	bothRules := maps.Clone(p1Rules)
	bothRules[ruleKey{prio: PriorityToPod, dst: pfx("10.200.1.70/32"), table: unix.RT_TABLE_MAIN}] = true
	bothRules[ruleKey{prio: PriorityFromPod, src: pfx("10.200.1.70/32"), table: 100}] = true
	cniRoute := netlink.Route{Table: unix.RT_TABLE_MAIN, LinkIndex: 10, Dst: ipNet(pfx("10.200.1.130/32")), Scope: netlink.SCOPE_LINK}
	ourRoute := cniRoute
	ourRoute.Protocol = RouteProtocol
	otherVeth := cniRoute
	otherVeth.LinkIndex = 11
	for _, tc := range []struct {
		name       string
		enis       []ENI
		pods       []routedPod
		links      linkIndexes
		mainRoutes []netlink.Route
		want       wanted
		wantErrs   []string
	}{
		{
			name: "no pods: the ENI tables only",
			enis: testENIs, links: links,
			want: wanted{rules: map[ruleKey]bool{}, routes: routeSet(eniRoutes...)},
		},
		{
			name: "pods: two rules each; a host route for the pod with a veth",
			enis: testENIs, pods: []routedPod{p1, p2}, links: links,
			want: wanted{rules: bothRules, routes: routeSet(append(eniRoutes, p1Host)...)},
		},
		{
			name: "the CNI's host route is kept, no second one",
			enis: testENIs, pods: []routedPod{p1}, links: links, mainRoutes: []netlink.Route{cniRoute},
			want: wanted{rules: p1Rules, routes: routeSet(eniRoutes...)},
		},
		{
			name: "our own host route does not count as the CNI's",
			enis: testENIs, pods: []routedPod{p1}, links: links, mainRoutes: []netlink.Route{ourRoute},
			want: wanted{rules: p1Rules, routes: routeSet(append(eniRoutes, p1Host)...)},
		},
		{
			name: "a /32 through another veth does not count",
			enis: testENIs, pods: []routedPod{p1}, links: links, mainRoutes: []netlink.Route{otherVeth},
			want: wanted{rules: p1Rules, routes: routeSet(append(eniRoutes, p1Host)...)},
		},
		{
			name: "missing links: errors, no routes through them, the rules stay",
			enis: testENIs, pods: []routedPod{p1},
			links: linkIndexes{index: map[string]int{"eth0": 2}, err: map[string]error{
				"eth1": errors.New("find link eth1: not found"), "veth1": errors.New("find link veth1: not found")}},
			want:     wanted{rules: p1Rules, routes: routeSet(eth0Routes...)},
			wantErrs: []string{"ENI eth1: find link eth1: not found", "host route to pod p1: find link veth1: not found"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, errs := desired(tc.enis, tc.pods, tc.links, tc.mainRoutes)
			if diff := cmp.Diff(tc.want, got, planCmp, cmp.AllowUnexported(wanted{})); diff != "" {
				t.Errorf("desired (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.wantErrs, errStrings(errs)); diff != "" {
				t.Errorf("errors (-want +got):\n%s", diff)
			}
		})
	}
}

func errStrings(errs []error) []string {
	var out []string
	for _, err := range errs {
		out = append(out, err.Error())
	}
	return out
}

func TestDiffRoutes(t *testing.T) {
	subnet := route{routeKey{table: 101, dst: pfx("10.200.0.0/16"), link: 3}, netlink.SCOPE_LINK}
	def := route{routeKey{table: 101, dst: pfx("0.0.0.0/0"), gw: netip.MustParseAddr("10.200.0.1"), link: 3}, netlink.SCOPE_UNIVERSE}
	host := route{routeKey{table: unix.RT_TABLE_MAIN, dst: pfx("10.200.1.130/32"), link: 10}, netlink.SCOPE_LINK}
	want := map[routeKey]route{subnet.routeKey: subnet, def.routeKey: def, host.routeKey: host}
	stale := netlink.Route{Table: 101, LinkIndex: 3, Dst: ipNet(pfx("10.9.0.0/16")), Gw: net.ParseIP("10.200.0.1"), Protocol: RouteProtocol}
	for _, tc := range []struct {
		name    string
		have    []netlink.Route
		wantDel []routeKey
		wantAdd []route
	}{
		{name: "nothing there: all added, link scope first", wantAdd: []route{subnet, host, def}},
		{name: "all there: nothing to do", have: []netlink.Route{*def.netlink(), *subnet.netlink(), *host.netlink()}},
		{
			name:    "a duplicate and a stale route go, the missing one comes",
			have:    []netlink.Route{*def.netlink(), *def.netlink(), stale, *host.netlink()},
			wantDel: []routeKey{def.routeKey, routeKeyOf(&stale)},
			wantAdd: []route{subnet},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			del, add := diffRoutes(want, tc.have)
			var gotDel []routeKey
			for _, rt := range del {
				gotDel = append(gotDel, routeKeyOf(&rt))
			}
			if diff := cmp.Diff(tc.wantDel, gotDel, planCmp); diff != "" {
				t.Errorf("delete (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.wantAdd, add, planCmp); diff != "" {
				t.Errorf("add (-want +got):\n%s", diff)
			}
		})
	}
}

func TestDiffRules(t *testing.T) {
	to := ruleKey{prio: PriorityToPod, dst: pfx("10.200.1.130/32"), table: unix.RT_TABLE_MAIN}
	from := ruleKey{prio: PriorityFromPod, src: pfx("10.200.1.130/32"), table: 101}
	moved := ruleKey{prio: PriorityFromPod, src: pfx("10.200.1.130/32"), table: 100}
	gone := ruleKey{prio: PriorityFromPod, src: pfx("10.200.1.150/32"), table: 101}
	want := map[ruleKey]bool{to: true, from: true}
	for _, tc := range []struct {
		name    string
		have    []ruleKey
		wantDel []ruleKey
		wantAdd []ruleKey
	}{
		{name: "nothing there", wantAdd: []ruleKey{to, from}},
		{name: "all there", have: []ruleKey{from, to}},
		{name: "a pod moved to another ENI: old table out, new in", have: []ruleKey{to, moved}, wantDel: []ruleKey{moved}, wantAdd: []ruleKey{from}},
		{name: "a duplicate and a gone pod's rule go", have: []ruleKey{to, to, from, gone}, wantDel: []ruleKey{to, gone}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var have []netlink.Rule
			for _, k := range tc.have {
				have = append(have, *k.netlink())
			}
			del, add := diffRules(want, have)
			var gotDel []ruleKey
			for _, ru := range del {
				gotDel = append(gotDel, ruleKeyOf(ru))
			}
			if diff := cmp.Diff(tc.wantDel, gotDel, planCmp); diff != "" {
				t.Errorf("delete (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.wantAdd, add, planCmp); diff != "" {
				t.Errorf("add (-want +got):\n%s", diff)
			}
		})
	}
}

func TestOwned(t *testing.T) {
	rule := func(prio, table int, src, dst string, mod func(*netlink.Rule)) netlink.Rule {
		ru := netlink.NewRule()
		ru.Priority, ru.Table = prio, table
		if src != "" {
			ru.Src = ipNet(pfx(src))
		}
		if dst != "" {
			ru.Dst = ipNet(pfx(dst))
		}
		if mod != nil {
			mod(ru)
		}
		return *ru
	}
	marked := func(ru *netlink.Rule) { ru.Protocol = uint8(RouteProtocol) }
	for _, tc := range []struct {
		name string
		rule netlink.Rule
		want bool
	}{
		{"ours, marked", rule(PriorityFromPod, 101, "10.200.1.130/32", "", marked), true},
		{"ours, marked, any shape", rule(PriorityToPod, 200, "", "10.0.0.0/8", marked), true},
		{"marked but at another priority", rule(999, 101, "10.200.1.130/32", "", marked), false},
		{"unmarked leftover to a pod", rule(PriorityToPod, unix.RT_TABLE_MAIN, "", "10.200.1.130/32", nil), true},
		{"unmarked leftover from a pod", rule(PriorityFromPod, 101, "10.200.1.130/32", "", nil), true},
		{"foreign: to a pod, another table", rule(PriorityToPod, 200, "", "10.200.1.130/32", nil), false},
		{"foreign: a subnet", rule(PriorityToPod, unix.RT_TABLE_MAIN, "", "10.200.0.0/16", nil), false},
		{"foreign: fwmark", rule(PriorityFromPod, 101, "10.200.1.130/32", "", func(ru *netlink.Rule) { ru.Mark = 0x10 }), false},
		{"foreign: iif", rule(PriorityToPod, unix.RT_TABLE_MAIN, "", "10.200.1.130/32", func(ru *netlink.Rule) { ru.IifName = "eth0" }), false},
		{"foreign: another daemon's protocol", rule(PriorityFromPod, 101, "10.200.1.130/32", "", func(ru *netlink.Rule) { ru.Protocol = unix.RTPROT_STATIC }), false},
		{"foreign: from a pod to a table outside the ENIs'", rule(PriorityFromPod, 50, "10.200.1.130/32", "", nil), false},
	} {
		if got := owned(tc.rule); got != tc.want {
			t.Errorf("%s: owned = %v, want %v", tc.name, got, tc.want)
		}
	}
}

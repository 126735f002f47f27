package eni

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// This file is Sync's pure step: what the rules and routes should be, and
// what to delete and add to get there. It does no I/O; Sync reads the
// kernel before and writes after.

// ruleKey is a policy rule as this package writes it.
type ruleKey struct {
	prio  int
	src   netip.Prefix // invalid when any
	dst   netip.Prefix
	table int
}

// routeKey identifies a route: owned routes with the same key are one.
type routeKey struct {
	table int
	dst   netip.Prefix
	gw    netip.Addr // invalid when none
	link  int
}

// route is a route this package writes: its key and its scope.
type route struct {
	routeKey
	scope netlink.Scope
}

// routedPod is a pod Sync routes, with its ENI.
type routedPod struct {
	Pod
	eni ENI
}

// linkIndexes maps link names to their index, or to the error that
// finding them gave.
type linkIndexes struct {
	index map[string]int
	err   map[string]error
}

// wanted is the routing Sync wants.
type wanted struct {
	rules  map[ruleKey]bool
	routes map[routeKey]route
}

// routable splits pods into those Sync routes (IPv4, ENI known) and the
// skipped rest.
func routable(enis map[string]ENI, pods []Pod) (routed []routedPod, skipped []Pod) {
	for _, p := range pods {
		e, ok := enis[p.ENI]
		if !ok || !p.IP.Is4() {
			skipped = append(skipped, p)
			continue
		}
		routed = append(routed, routedPod{Pod: p, eni: e})
	}
	return routed, skipped
}

// linkNames are the links desired needs: the ENIs' devices and the pods'
// veths.
func linkNames(enis []ENI, pods []routedPod) []string {
	var names []string
	for _, e := range enis {
		names = append(names, e.Device)
	}
	for _, p := range pods {
		if p.Veth != "" {
			names = append(names, p.Veth)
		}
	}
	slices.Sort(names)
	return slices.Compact(names)
}

// desired is the routing for enis and pods: per ENI its table's subnet
// and default routes; per pod its two rules and, when it has a veth, a
// host route unless mainRoutes holds one through that veth already that
// is not ours. A link that was not found yields an error and none of the
// routes through it.
func desired(enis []ENI, pods []routedPod, links linkIndexes, mainRoutes []netlink.Route) (wanted, []error) {
	w := wanted{rules: map[ruleKey]bool{}, routes: map[routeKey]route{}}
	var errs []error
	for _, e := range enis {
		link, ok := links.index[e.Device]
		if !ok {
			errs = append(errs, fmt.Errorf("ENI %s: %w", e.Device, links.err[e.Device]))
			continue
		}
		w.add(route{routeKey{table: e.Table(), dst: e.Address.Masked(), link: link}, netlink.SCOPE_LINK})
		w.add(route{routeKey{table: e.Table(), dst: netip.PrefixFrom(netip.IPv4Unspecified(), 0), gw: e.Gateway, link: link}, netlink.SCOPE_UNIVERSE})
	}
	hostRoutes := map[netip.Addr]Pod{}
	for _, p := range pods {
		host := netip.PrefixFrom(p.IP, 32)
		w.rules[ruleKey{prio: PriorityToPod, dst: host, table: unix.RT_TABLE_MAIN}] = true
		w.rules[ruleKey{prio: PriorityFromPod, src: host, table: p.eni.Table()}] = true
		if p.Veth != "" {
			hostRoutes[p.IP] = p.Pod
		}
	}
	for _, ip := range slices.SortedFunc(maps.Keys(hostRoutes), netip.Addr.Compare) {
		p := hostRoutes[ip]
		link, ok := links.index[p.Veth]
		if !ok {
			errs = append(errs, fmt.Errorf("host route to pod %s: %w", p.Name, links.err[p.Veth]))
			continue
		}
		host := netip.PrefixFrom(ip, 32)
		present := slices.ContainsFunc(mainRoutes, func(m netlink.Route) bool {
			return m.Protocol != RouteProtocol && m.LinkIndex == link && m.Dst != nil && prefixOf(m.Dst) == host
		})
		if !present {
			w.add(route{routeKey{table: unix.RT_TABLE_MAIN, dst: host, link: link}, netlink.SCOPE_LINK})
		}
	}
	return w, errs
}

func (w wanted) add(rt route) { w.routes[rt.routeKey] = rt }

// diffRoutes is what to delete from have (what we own) and what to add
// to get want: each wanted route once. Link-scope routes come first in
// add: a default route's gateway must be reachable in its table.
func diffRoutes(want map[routeKey]route, have []netlink.Route) (del []netlink.Route, add []route) {
	seen := map[routeKey]bool{}
	for _, rt := range have {
		k := routeKeyOf(&rt)
		if _, ok := want[k]; ok && !seen[k] {
			seen[k] = true
			continue
		}
		del = append(del, rt)
	}
	for k, rt := range want {
		if !seen[k] {
			add = append(add, rt)
		}
	}
	slices.SortFunc(add, func(a, b route) int {
		// SCOPE_LINK (253) before SCOPE_UNIVERSE (0).
		return cmp.Or(cmp.Compare(b.scope, a.scope), compareRouteKeys(a.routeKey, b.routeKey))
	})
	return del, add
}

// diffRules is what to delete from have (what we own) and what to add to
// get want: each wanted rule once.
func diffRules(want map[ruleKey]bool, have []netlink.Rule) (del []netlink.Rule, add []ruleKey) {
	seen := map[ruleKey]bool{}
	for _, ru := range have {
		k := ruleKeyOf(ru)
		if want[k] && !seen[k] {
			seen[k] = true
			continue
		}
		del = append(del, ru)
	}
	for k := range want {
		if !seen[k] {
			add = append(add, k)
		}
	}
	slices.SortFunc(add, func(a, b ruleKey) int {
		return cmp.Or(cmp.Compare(a.prio, b.prio), a.src.Addr().Compare(b.src.Addr()), a.dst.Addr().Compare(b.dst.Addr()), cmp.Compare(a.table, b.table))
	})
	return del, add
}

func compareRouteKeys(a, b routeKey) int {
	return cmp.Or(cmp.Compare(a.table, b.table), a.dst.Addr().Compare(b.dst.Addr()), cmp.Compare(a.dst.Bits(), b.dst.Bits()),
		a.gw.Compare(b.gw), cmp.Compare(a.link, b.link))
}

// netlink is the route to write.
func (rt route) netlink() *netlink.Route {
	out := &netlink.Route{Table: rt.table, Dst: ipNet(rt.dst), LinkIndex: rt.link, Scope: rt.scope, Protocol: RouteProtocol}
	if rt.gw.IsValid() {
		out.Gw = rt.gw.AsSlice()
	}
	return out
}

// netlink is the rule to write, marked with RouteProtocol.
func (k ruleKey) netlink() *netlink.Rule {
	ru := netlink.NewRule()
	ru.Family = unix.AF_INET
	ru.Priority = k.prio
	ru.Table = k.table
	ru.Protocol = uint8(RouteProtocol)
	if k.src.IsValid() {
		ru.Src = ipNet(k.src)
	}
	if k.dst.IsValid() {
		ru.Dst = ipNet(k.dst)
	}
	return ru
}

func ruleKeyOf(ru netlink.Rule) ruleKey {
	k := ruleKey{prio: ru.Priority, table: ru.Table}
	if ru.Src != nil {
		k.src = prefixOf(ru.Src)
	}
	if ru.Dst != nil {
		k.dst = prefixOf(ru.Dst)
	}
	return k
}

func routeKeyOf(rt *netlink.Route) routeKey {
	k := routeKey{table: rt.Table, link: rt.LinkIndex}
	if rt.Dst != nil {
		k.dst = prefixOf(rt.Dst)
	} else {
		k.dst = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
	}
	if rt.Gw != nil {
		if a, ok := netip.AddrFromSlice(rt.Gw.To4()); ok {
			k.gw = a
		}
	}
	return k
}

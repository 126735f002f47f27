// Package eni programs the node's ENI policy routing with netlink: a pod
// whose address belongs to an ENI sends its traffic out through that ENI, so
// the VPC's source/destination check accepts it (what AWS VPC CNI does).
//
// For each local pod it keeps:
//
//   - rule PriorityToPod:   to <podIP>/32 lookup main (traffic to a local pod,
//     from any pod, stays on the node);
//   - rule PriorityFromPod: from <podIP>/32 lookup <table of the pod's ENI>;
//   - a main-table /32 route to the pod's host-side veth, only when none is
//     there already (the CNI normally adds it).
//
// For each ENI, table TableBase+Index holds the ENI's subnet (link scope) and
// a default route through the subnet gateway, both on the ENI's device.
//
// What it owns: every IPv4 rule at PriorityToPod or PriorityFromPod, and
// every route with protocol RouteProtocol (in any table). Sync removes the
// ones it does not want (leftovers of a previous run, duplicates); Cleanup
// removes all of them.
package eni

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

const (
	// PriorityToPod is the priority of the `to <podIP> lookup main` rules.
	PriorityToPod = 1000
	// PriorityFromPod is the priority of the `from <podIP> lookup <ENI
	// table>` rules.
	PriorityFromPod = 1001
	// TableBase + ENI index is an ENI's route table (100 for the primary
	// ENI, 101 for the first secondary one, ...).
	TableBase = 100
	// RouteProtocol marks the routes this package writes (rtnetlink
	// protocol number; 186-192 are the routing daemons', 219 is free).
	RouteProtocol netlink.RouteProtocol = 219
)

// ENI is one of the node's network interfaces in the VPC.
type ENI struct {
	// Index is the ENI's device index on the instance (0 = primary).
	Index int
	// Device is the Linux link name (eth0, eth1, ...).
	Device string
	// Address is the ENI's primary address with the subnet's prefix
	// length (e.g. 10.100.1.11/16); its masked prefix is the subnet.
	Address netip.Prefix
	// Gateway is the subnet's router.
	Gateway netip.Addr
}

// Table is the ENI's route table ID.
func (e ENI) Table() int { return TableBase + e.Index }

// Pod is a local pod with a VPC address.
type Pod struct {
	Name string // namespace/name, for logs
	IP   netip.Addr
	// Veth is the node-side veth; empty leaves the host route alone.
	Veth string
	// ENI is the Device of the ENI that owns IP.
	ENI string
}

// Config configures a Router.
type Config struct {
	// Handle is the netlink handle of the node's network namespace; nil
	// uses the current one.
	Handle *netlink.Handle
	ENIs   []ENI
	Logger *zap.Logger
}

// Validate checks the ENIs.
func (c Config) Validate() error {
	seenIdx, seenDev := map[int]bool{}, map[string]bool{}
	for _, e := range c.ENIs {
		switch {
		case e.Device == "":
			return fmt.Errorf("ENI %d: no device", e.Index)
		case e.Index < 0 || e.Index > 1000:
			return fmt.Errorf("ENI %s: index %d out of range", e.Device, e.Index)
		case seenIdx[e.Index]:
			return fmt.Errorf("ENI %s: index %d used twice", e.Device, e.Index)
		case seenDev[e.Device]:
			return fmt.Errorf("ENI %s: device used twice", e.Device)
		case !e.Address.IsValid() || !e.Address.Addr().Is4():
			return fmt.Errorf("ENI %s: address %v is not an IPv4 prefix", e.Device, e.Address)
		case !e.Gateway.Is4() || !e.Address.Masked().Contains(e.Gateway):
			return fmt.Errorf("ENI %s: gateway %v is not in subnet %v", e.Device, e.Gateway, e.Address.Masked())
		}
		seenIdx[e.Index], seenDev[e.Device] = true, true
	}
	return nil
}

// Router reconciles the ENI rules and routes in one network namespace.
// It is not safe for concurrent use.
type Router struct {
	h    *netlink.Handle
	enis map[string]ENI
	log  *zap.Logger
}

// New returns a Router; it changes nothing until Sync.
func New(cfg Config) (*Router, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	h := cfg.Handle
	if h == nil {
		var err error
		if h, err = netlink.NewHandle(unix.NETLINK_ROUTE); err != nil {
			return nil, fmt.Errorf("netlink handle: %w", err)
		}
	}
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	r := &Router{h: h, enis: map[string]ENI{}, log: log}
	for _, e := range cfg.ENIs {
		r.enis[e.Device] = e
	}
	return r, nil
}

// ENIs returns the configured ENIs ordered by index.
func (r *Router) ENIs() []ENI {
	var out []ENI
	for _, e := range r.enis {
		out = append(out, e)
	}
	slices.SortFunc(out, func(a, b ENI) int { return a.Index - b.Index })
	return out
}

type ruleKey struct {
	prio  int
	src   netip.Prefix // invalid when any
	dst   netip.Prefix
	table int
}

type routeKey struct {
	table int
	dst   netip.Prefix
	gw    netip.Addr // invalid when none
	link  int
}

// Result counts what a Sync changed.
type Result struct {
	RulesAdded, RulesDeleted   int
	RoutesAdded, RoutesDeleted int
	// Skipped pods: their ENI is unknown.
	Skipped int
}

// Sync makes the rules and routes match pods exactly: it adds what is
// missing and removes what it owns but no longer wants. Pods whose ENI is
// unknown are skipped (counted in Result.Skipped) rather than failing the
// others.
func (r *Router) Sync(pods []Pod) (Result, error) {
	var res Result
	wantRules := map[ruleKey]bool{}
	wantRoutes := map[routeKey]*netlink.Route{}
	hostRoutes := map[netip.Addr]Pod{}

	links := map[string]netlink.Link{}
	link := func(name string) (netlink.Link, error) {
		if l, ok := links[name]; ok {
			return l, nil
		}
		l, err := r.h.LinkByName(name)
		if err != nil {
			return nil, fmt.Errorf("find link %s: %w", name, err)
		}
		links[name] = l
		return l, nil
	}

	var errs []error
	for _, e := range r.ENIs() {
		l, err := link(e.Device)
		if err != nil {
			errs = append(errs, fmt.Errorf("ENI %s: %w", e.Device, err))
			continue
		}
		subnet := e.Address.Masked()
		lr := &netlink.Route{Table: e.Table(), Dst: ipNet(subnet), LinkIndex: l.Attrs().Index, Scope: netlink.SCOPE_LINK, Protocol: RouteProtocol}
		wantRoutes[routeKeyOf(lr)] = lr
		dr := &netlink.Route{Table: e.Table(), Dst: ipNet(netip.PrefixFrom(netip.IPv4Unspecified(), 0)), Gw: e.Gateway.AsSlice(), LinkIndex: l.Attrs().Index, Scope: netlink.SCOPE_UNIVERSE, Protocol: RouteProtocol}
		wantRoutes[routeKeyOf(dr)] = dr
	}
	for _, p := range pods {
		e, ok := r.enis[p.ENI]
		if !ok || !p.IP.Is4() {
			res.Skipped++
			r.log.Debug("pod skipped: ENI unknown", zap.String("pod", p.Name), zap.String("ip", p.IP.String()), zap.String("eni", p.ENI))
			continue
		}
		host := netip.PrefixFrom(p.IP, 32)
		wantRules[ruleKey{prio: PriorityToPod, dst: host, table: unix.RT_TABLE_MAIN}] = true
		wantRules[ruleKey{prio: PriorityFromPod, src: host, table: e.Table()}] = true
		if p.Veth != "" {
			hostRoutes[p.IP] = p
		}
	}

	// Host routes: keep any existing /32 to the pod through its veth;
	// otherwise write ours.
	mainRoutes, err := r.h.RouteListFiltered(unix.AF_INET, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return res, fmt.Errorf("list main routes: %w", err)
	}
	for ip, p := range hostRoutes {
		l, err := link(p.Veth)
		if err != nil {
			errs = append(errs, fmt.Errorf("host route to pod %s: %w", p.Name, err))
			continue
		}
		rt := &netlink.Route{Table: unix.RT_TABLE_MAIN, Dst: ipNet(netip.PrefixFrom(ip, 32)), LinkIndex: l.Attrs().Index, Scope: netlink.SCOPE_LINK, Protocol: RouteProtocol}
		present := slices.ContainsFunc(mainRoutes, func(m netlink.Route) bool {
			return m.Protocol != RouteProtocol && m.LinkIndex == rt.LinkIndex && m.Dst != nil && prefixOf(m.Dst) == netip.PrefixFrom(ip, 32)
		})
		if !present {
			wantRoutes[routeKeyOf(rt)] = rt
		}
	}

	// Routes.
	have, err := r.ownedRoutes()
	if err != nil {
		return res, err
	}
	seen := map[routeKey]bool{}
	for _, rt := range have {
		k := routeKeyOf(&rt)
		if wantRoutes[k] != nil && !seen[k] {
			seen[k] = true
			continue
		}
		if err := r.h.RouteDel(&rt); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("delete route %v table %d: %w", rt.Dst, rt.Table, err))
			continue
		}
		res.RoutesDeleted++
	}
	// Link-scope routes first: the default route's gateway must be
	// reachable in its table.
	for _, scope := range []netlink.Scope{netlink.SCOPE_LINK, netlink.SCOPE_UNIVERSE} {
		for k, rt := range wantRoutes {
			if seen[k] || rt.Scope != scope {
				continue
			}
			if err := r.h.RouteReplace(rt); err != nil {
				errs = append(errs, fmt.Errorf("add route %v table %d: %w", rt.Dst, rt.Table, err))
				continue
			}
			res.RoutesAdded++
		}
	}

	// Rules: deleted before added, so a rule moving to another table does
	// not meet its old self.
	rules, err := r.ownedRules()
	if err != nil {
		return res, errors.Join(append(errs, err)...)
	}
	seenRules := map[ruleKey]bool{}
	for _, ru := range rules {
		k := ruleKeyOf(ru)
		if wantRules[k] && !seenRules[k] {
			seenRules[k] = true
			continue
		}
		if err := r.h.RuleDel(&ru); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("delete rule %v: %w", ru, err))
			continue
		}
		res.RulesDeleted++
	}
	for k := range wantRules {
		if seenRules[k] {
			continue
		}
		ru := netlink.NewRule()
		ru.Family = unix.AF_INET
		ru.Priority = k.prio
		ru.Table = k.table
		if k.src.IsValid() {
			ru.Src = ipNet(k.src)
		}
		if k.dst.IsValid() {
			ru.Dst = ipNet(k.dst)
		}
		if err := r.h.RuleAdd(ru); err != nil && !errors.Is(err, unix.EEXIST) {
			errs = append(errs, fmt.Errorf("add rule %v: %w", ru, err))
			continue
		}
		res.RulesAdded++
	}
	return res, errors.Join(errs...)
}

// ownedRoutes lists the IPv4 routes with RouteProtocol in every table.
func (r *Router) ownedRoutes() ([]netlink.Route, error) {
	return ownedRoutes(r.h)
}

func ownedRoutes(h *netlink.Handle) ([]netlink.Route, error) {
	rs, err := h.RouteListFiltered(unix.AF_INET, &netlink.Route{Table: unix.RT_TABLE_UNSPEC, Protocol: RouteProtocol}, netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		return nil, fmt.Errorf("list ENI routes: %w", err)
	}
	return rs, nil
}

func (r *Router) ownedRules() ([]netlink.Rule, error) { return ownedRules(r.h) }

func ownedRules(h *netlink.Handle) ([]netlink.Rule, error) {
	all, err := h.RuleList(unix.AF_INET)
	if err != nil {
		return nil, fmt.Errorf("list rules: %w", err)
	}
	var out []netlink.Rule
	for _, ru := range all {
		if ru.Priority == PriorityToPod || ru.Priority == PriorityFromPod {
			out = append(out, ru)
		}
	}
	return out, nil
}

// Cleanup removes every rule and route this package owns in the namespace
// of h (nil: the current one).
func Cleanup(h *netlink.Handle) error {
	if h == nil {
		var err error
		if h, err = netlink.NewHandle(unix.NETLINK_ROUTE); err != nil {
			return fmt.Errorf("netlink handle: %w", err)
		}
		defer h.Close()
	}
	var errs []error
	rules, err := ownedRules(h)
	if err != nil {
		return err
	}
	for _, ru := range rules {
		if err := h.RuleDel(&ru); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("delete rule %v: %w", ru, err))
		}
	}
	routes, err := ownedRoutes(h)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	// Gateway routes before the link routes they depend on.
	slices.SortStableFunc(routes, func(a, b netlink.Route) int { return int(a.Scope) - int(b.Scope) })
	for _, rt := range routes {
		if err := h.RouteDel(&rt); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("delete route %v table %d: %w", rt.Dst, rt.Table, err))
		}
	}
	return errors.Join(errs...)
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

func prefixOf(n *net.IPNet) netip.Prefix {
	a, ok := netip.AddrFromSlice(n.IP.To4())
	if !ok {
		return netip.Prefix{}
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a, ones)
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), 32)}
}

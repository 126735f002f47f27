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
// What it owns: every IPv4 rule and route with protocol RouteProtocol (rules
// only at PriorityToPod or PriorityFromPod, routes in any table), and the
// unmarked rules of the exact shape earlier versions wrote (see owned).
// Sync removes the ones it does not want (leftovers of a previous run,
// duplicates); Cleanup removes all of them and nothing else.
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
	// RouteProtocol marks the routes and rules this package writes
	// (rtnetlink protocol number; 186-192 are the routing daemons', 219 is
	// free).
	RouteProtocol netlink.RouteProtocol = 219
	// maxIndex is the highest ENI index Validate accepts.
	maxIndex = 1000
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
		case e.Index < 0 || e.Index > maxIndex:
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
//
// It reads the kernel (links, the main table, what it owns), computes the
// wanted state and the difference without I/O (desired, diffRoutes,
// diffRules), then writes: routes first, then rules.
func (r *Router) Sync(pods []Pod) (Result, error) {
	var res Result
	routed, skipped := routable(r.enis, pods)
	res.Skipped = len(skipped)
	for _, p := range skipped {
		r.log.Debug("pod skipped: ENI unknown", zap.String("pod", p.Name), zap.String("ip", p.IP.String()), zap.String("eni", p.ENI))
	}
	links := r.lookupLinks(linkNames(r.ENIs(), routed))
	mainRoutes, err := r.h.RouteListFiltered(unix.AF_INET, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return res, fmt.Errorf("list main routes: %w", err)
	}
	haveRoutes, err := r.ownedRoutes()
	if err != nil {
		return res, err
	}
	want, errs := desired(r.ENIs(), routed, links, mainRoutes)

	delRoutes, addRoutes := diffRoutes(want.routes, haveRoutes)
	res.RoutesDeleted, res.RoutesAdded = r.applyRoutes(delRoutes, addRoutes, &errs)

	// Rules: deleted before added, so a rule moving to another table does
	// not meet its old self.
	haveRules, err := r.ownedRules()
	if err != nil {
		return res, errors.Join(append(errs, err)...)
	}
	delRules, addRules := diffRules(want.rules, haveRules)
	res.RulesDeleted, res.RulesAdded = r.applyRules(delRules, addRules, &errs)
	return res, errors.Join(errs...)
}

// lookupLinks finds the index of each named link.
func (r *Router) lookupLinks(names []string) linkIndexes {
	links := linkIndexes{index: map[string]int{}, err: map[string]error{}}
	for _, name := range names {
		l, err := r.h.LinkByName(name)
		if err != nil {
			links.err[name] = fmt.Errorf("find link %s: %w", name, err)
			continue
		}
		links.index[name] = l.Attrs().Index
	}
	return links
}

// applyRoutes deletes del, then adds add in its order; it returns how
// many of each succeeded and appends the failures to errs.
func (r *Router) applyRoutes(del []netlink.Route, add []route, errs *[]error) (deleted, added int) {
	for _, rt := range del {
		if err := r.h.RouteDel(&rt); err != nil && !errors.Is(err, unix.ESRCH) {
			*errs = append(*errs, fmt.Errorf("delete route %v table %d: %w", rt.Dst, rt.Table, err))
			continue
		}
		deleted++
	}
	for _, want := range add {
		rt := want.netlink()
		if err := r.h.RouteReplace(rt); err != nil {
			*errs = append(*errs, fmt.Errorf("add route %v table %d: %w", rt.Dst, rt.Table, err))
			continue
		}
		added++
	}
	return deleted, added
}

// applyRules deletes del, then adds add; it returns how many of each
// succeeded and appends the failures to errs.
func (r *Router) applyRules(del []netlink.Rule, add []ruleKey, errs *[]error) (deleted, added int) {
	for _, ru := range del {
		if err := r.h.RuleDel(&ru); err != nil && !errors.Is(err, unix.ENOENT) {
			*errs = append(*errs, fmt.Errorf("delete rule %v: %w", ru, err))
			continue
		}
		deleted++
	}
	for _, k := range add {
		ru := k.netlink()
		if err := r.h.RuleAdd(ru); err != nil && !errors.Is(err, unix.EEXIST) {
			*errs = append(*errs, fmt.Errorf("add rule %v: %w", ru, err))
			continue
		}
		added++
	}
	return deleted, added
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
		if owned(ru) {
			out = append(out, ru)
		}
	}
	return out, nil
}

// owned says whether this package wrote ru: a rule at one of its
// priorities marked with RouteProtocol, or one of the exact shape it wrote
// before it marked its rules (no protocol, `to <IPv4>/32 lookup main` at
// PriorityToPod, `from <IPv4>/32 lookup <ENI table>` at PriorityFromPod,
// nothing else), so an upgrade still removes its leftovers. Other rules at
// these priorities are someone else's.
func owned(ru netlink.Rule) bool {
	if ru.Priority != PriorityToPod && ru.Priority != PriorityFromPod {
		return false
	}
	if ru.Protocol == uint8(RouteProtocol) {
		return true
	}
	if ru.Protocol != unix.RTPROT_UNSPEC || ru.Mark != 0 || ru.Mask != nil || ru.IifName != "" || ru.OifName != "" || ru.Invert ||
		ru.Tos != 0 || ru.Dport != nil || ru.Sport != nil || ru.IPProto != 0 || ru.UIDRange != nil {
		return false
	}
	host := func(n *net.IPNet) bool { return n != nil && prefixOf(n).IsValid() && prefixOf(n).Bits() == 32 }
	switch ru.Priority {
	case PriorityToPod:
		return ru.Src == nil && host(ru.Dst) && ru.Table == unix.RT_TABLE_MAIN
	default:
		return ru.Dst == nil && host(ru.Src) && ru.Table >= TableBase && ru.Table <= TableBase+maxIndex
	}
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

package eni

import (
	"fmt"
	"net/netip"
	"regexp"
	"strconv"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// DiscoverConfig says how to find the node's ENIs from its links, the
// fallback while the agent does not ask EC2 (DescribeNetworkInterfaces).
type DiscoverConfig struct {
	// Devices lists the ENI devices; empty means every link named
	// eth<N>, N being the ENI's device index.
	Devices []string
	// Gateway overrides the subnet gateway. Unset: the main table's
	// default-route gateway when it is inside the ENI's subnet, else the
	// subnet's first address (the VPC router's address on AWS).
	Gateway netip.Addr
}

var ethN = regexp.MustCompile(`^eth([0-9]+)$`)

// Discover reads the ENIs from the links of h's namespace (nil: the
// current one): device, index (from eth<N>, else the position in
// Devices), first global IPv4 address with its prefix, gateway. A listed
// device that is missing or has no address is an error; an unlisted eth<N>
// without an address is ignored.
func Discover(h *netlink.Handle, cfg DiscoverConfig) ([]ENI, error) {
	if h == nil {
		var err error
		if h, err = netlink.NewHandle(unix.NETLINK_ROUTE); err != nil {
			return nil, fmt.Errorf("netlink handle: %w", err)
		}
		defer h.Close()
	}
	var links []netlink.Link
	if len(cfg.Devices) == 0 {
		all, err := h.LinkList()
		if err != nil {
			return nil, fmt.Errorf("list links: %w", err)
		}
		for _, l := range all {
			if ethN.MatchString(l.Attrs().Name) {
				links = append(links, l)
			}
		}
	} else {
		for _, d := range cfg.Devices {
			l, err := h.LinkByName(d)
			if err != nil {
				return nil, fmt.Errorf("ENI device %s: %w", d, err)
			}
			links = append(links, l)
		}
	}
	defGw := netip.Addr{}
	if rs, err := h.RouteListFiltered(unix.AF_INET, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE); err == nil {
		for _, r := range rs {
			if (r.Dst == nil || prefixOf(r.Dst).Bits() == 0) && r.Gw != nil {
				defGw, _ = netip.AddrFromSlice(r.Gw.To4())
				break
			}
		}
	}
	var out []ENI
	for i, l := range links {
		name := l.Attrs().Name
		idx := i
		if m := ethN.FindStringSubmatch(name); m != nil {
			idx, _ = strconv.Atoi(m[1])
		}
		addrs, err := h.AddrList(l, unix.AF_INET)
		if err != nil {
			return nil, fmt.Errorf("addresses of %s: %w", name, err)
		}
		var addr netip.Prefix
		for _, a := range addrs {
			if a.Scope == unix.RT_SCOPE_UNIVERSE {
				addr = prefixOf(a.IPNet)
				break
			}
		}
		if !addr.IsValid() {
			if len(cfg.Devices) > 0 {
				return nil, fmt.Errorf("ENI device %s has no IPv4 address", name)
			}
			continue
		}
		gw := cfg.Gateway
		if !gw.IsValid() {
			if defGw.IsValid() && addr.Masked().Contains(defGw) {
				gw = defGw
			} else {
				gw = addr.Masked().Addr().Next()
			}
		}
		out = append(out, ENI{Index: idx, Device: name, Address: addr, Gateway: gw})
	}
	return out, nil
}

// ProxyOwners maps each address with a proxy neighbour entry on an ENI's
// device (`ip neigh show proxy`) to that device: the ENI that answers ARP
// for the address owns it.
func ProxyOwners(h *netlink.Handle, enis []ENI) (map[netip.Addr]string, error) {
	out := map[netip.Addr]string{}
	for _, e := range enis {
		l, err := h.LinkByName(e.Device)
		if err != nil {
			return nil, fmt.Errorf("find link %s: %w", e.Device, err)
		}
		ns, err := h.NeighProxyList(l.Attrs().Index, unix.AF_INET)
		if err != nil {
			return nil, fmt.Errorf("proxy neighbours on %s: %w", e.Device, err)
		}
		for _, n := range ns {
			if a, ok := netip.AddrFromSlice(n.IP.To4()); ok && n.LinkIndex == l.Attrs().Index {
				out[a] = e.Device
			}
		}
	}
	return out, nil
}

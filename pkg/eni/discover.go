package eni

import (
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// DiscoverConfig says how to find the node's ENIs from its links, the
// fallback when the agent does not learn them from EC2
// (DescribeNetworkInterfaces).
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

// Link is a network link of the node as the ENI code needs it.
type Link struct {
	Name string
	// MAC is the hardware address, lower case with colons.
	MAC string
	// Addrs are its global-scope IPv4 addresses with their prefix length.
	Addrs []netip.Prefix
}

// Links lists the links of h's namespace (nil: the current one) and the
// main table's default-route gateway (invalid when there is none).
func Links(h *netlink.Handle) ([]Link, netip.Addr, error) {
	if h == nil {
		var err error
		if h, err = netlink.NewHandle(unix.NETLINK_ROUTE); err != nil {
			return nil, netip.Addr{}, fmt.Errorf("netlink handle: %w", err)
		}
		defer h.Close()
	}
	all, err := h.LinkList()
	if err != nil {
		return nil, netip.Addr{}, fmt.Errorf("list links: %w", err)
	}
	var out []Link
	for _, l := range all {
		link := Link{Name: l.Attrs().Name, MAC: strings.ToLower(l.Attrs().HardwareAddr.String())}
		addrs, err := h.AddrList(l, unix.AF_INET)
		if err != nil {
			return nil, netip.Addr{}, fmt.Errorf("addresses of %s: %w", link.Name, err)
		}
		for _, a := range addrs {
			if a.Scope == unix.RT_SCOPE_UNIVERSE {
				link.Addrs = append(link.Addrs, prefixOf(a.IPNet))
			}
		}
		out = append(out, link)
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
	return out, defGw, nil
}

// SubnetGateway is the gateway of the subnet of addr: override when set,
// else defGw when it is inside the subnet, else the subnet's first address.
func SubnetGateway(addr netip.Prefix, override, defGw netip.Addr) netip.Addr {
	switch {
	case override.IsValid():
		return override
	case defGw.IsValid() && addr.Masked().Contains(defGw):
		return defGw
	default:
		return addr.Masked().Addr().Next()
	}
}

// Discover reads the ENIs from the links of h's namespace (nil: the
// current one): device, index (from eth<N>, else the position in
// Devices), first global IPv4 address with its prefix, gateway. A listed
// device that is missing or has no address is an error; an unlisted eth<N>
// without an address is ignored.
func Discover(h *netlink.Handle, cfg DiscoverConfig) ([]ENI, error) {
	links, defGw, err := Links(h)
	if err != nil {
		return nil, err
	}
	return FromLinks(links, defGw, cfg)
}

// FromLinks is Discover on links already read (Links).
func FromLinks(links []Link, defGw netip.Addr, cfg DiscoverConfig) ([]ENI, error) {
	var use []Link
	if len(cfg.Devices) == 0 {
		for _, l := range links {
			if ethN.MatchString(l.Name) {
				use = append(use, l)
			}
		}
	} else {
		for _, d := range cfg.Devices {
			i := slices.IndexFunc(links, func(l Link) bool { return l.Name == d })
			if i < 0 {
				return nil, fmt.Errorf("ENI device %s: link not found", d)
			}
			use = append(use, links[i])
		}
	}
	var out []ENI
	for i, l := range use {
		idx := i
		if m := ethN.FindStringSubmatch(l.Name); m != nil {
			idx, _ = strconv.Atoi(m[1])
		}
		if len(l.Addrs) == 0 {
			if len(cfg.Devices) > 0 {
				return nil, fmt.Errorf("ENI device %s has no IPv4 address", l.Name)
			}
			continue
		}
		out = append(out, ENI{Index: idx, Device: l.Name, Address: l.Addrs[0], Gateway: SubnetGateway(l.Addrs[0], cfg.Gateway, defGw)})
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

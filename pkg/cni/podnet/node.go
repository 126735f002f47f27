package podnet

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// DevicesByMAC maps the MAC (lower case, with colons) of each link in the
// node namespace to its name: an ENI's device is found by its MAC.
func DevicesByMAC() (map[string]string, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	out := map[string]string{}
	for _, l := range links {
		if mac := strings.ToLower(l.Attrs().HardwareAddr.String()); mac != "" && !vethName.MatchString(l.Attrs().Name) {
			out[mac] = l.Attrs().Name
		}
	}
	return out, nil
}

// HostVeths lists the node-side veths this plugin names (dlb<8 hex>).
func HostVeths() ([]string, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	var out []string
	for _, l := range links {
		if vethName.MatchString(l.Attrs().Name) {
			out = append(out, l.Attrs().Name)
		}
	}
	return out, nil
}

// Routed maps each address with a /32 route to one of this plugin's veths
// (a pod's address) to that veth.
func Routed() (map[netip.Addr]string, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	out := map[netip.Addr]string{}
	for _, l := range links {
		if !vethName.MatchString(l.Attrs().Name) {
			continue
		}
		routes, err := netlink.RouteList(l, unix.AF_INET)
		if err != nil {
			return nil, fmt.Errorf("routes of %s: %w", l.Attrs().Name, err)
		}
		for _, r := range routes {
			if r.Dst == nil {
				continue
			}
			if ones, _ := r.Dst.Mask.Size(); ones != 32 {
				continue
			}
			if a, ok := netip.AddrFromSlice(r.Dst.IP.To4()); ok {
				out[a] = l.Attrs().Name
			}
		}
	}
	return out, nil
}

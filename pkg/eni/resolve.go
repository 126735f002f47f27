package eni

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"go.uber.org/zap"

	"github.com/directlb/directlb/pkg/cloud"
)

// Where Resolve learns the ENIs and which pod address each owns.
const (
	// SourceAuto uses EC2 when a cloud is configured and answers with
	// ENIs that match local links, else links.
	SourceAuto = "auto"
	// SourceEC2 uses EC2 (DescribeNetworkInterfaces) and fails when it
	// cannot.
	SourceEC2 = "ec2"
	// SourceLinks uses the eth<N> links and proxy neighbour entries.
	SourceLinks = "links"
)

// Node is the node's network namespace as Resolve reads it.
type Node interface {
	// Links are the links and the main table's default-route gateway
	// (see Links).
	Links() ([]Link, netip.Addr, error)
	// ProxyOwners maps addresses to the ENI that answers ARP for them
	// (see ProxyOwners).
	ProxyOwners(enis []ENI) (map[netip.Addr]string, error)
}

// Namespace is the Node of a network namespace read with netlink.
type Namespace struct {
	// Handle is the namespace's netlink handle; nil: the current one.
	Handle *netlink.Handle
}

// Links is Links on the namespace.
func (n Namespace) Links() ([]Link, netip.Addr, error) { return Links(n.Handle) }

// ProxyOwners is ProxyOwners on the namespace.
func (n Namespace) ProxyOwners(enis []ENI) (map[netip.Addr]string, error) {
	return ProxyOwners(n.Handle, enis)
}

// Mapping is the cloud's ENIs of this instance matched to local links.
type Mapping struct {
	ENIs []ENI
	// Owners maps each secondary address the cloud assigned to an ENI to
	// that ENI's device.
	Owners map[netip.Addr]string
	// Unmatched says, per cloud ENI ID, why it has no local link.
	Unmatched map[string]string
}

// MapCloud matches the cloud's ENIs to links by MAC. An ENI's index is its
// device index, its address the link's address equal to the cloud's
// primary address (with the link's prefix length), its gateway as in
// SubnetGateway. devices, when not empty, limits the links used. An ENI
// without a matching link, or whose link does not carry its primary
// address, is left out and reported in Unmatched.
func MapCloud(nis []cloud.NetworkInterface, links []Link, devices []string, gateway, defGw netip.Addr) Mapping {
	m := Mapping{Owners: map[netip.Addr]string{}, Unmatched: map[string]string{}}
	byMAC := map[string]Link{}
	for _, l := range links {
		if l.MAC == "" || (len(devices) > 0 && !slices.Contains(devices, l.Name)) {
			continue
		}
		byMAC[strings.ToLower(l.MAC)] = l
	}
	for _, ni := range nis {
		l, ok := byMAC[strings.ToLower(ni.MAC)]
		if !ok {
			m.Unmatched[ni.ID] = fmt.Sprintf("no local link with MAC %s", ni.MAC)
			continue
		}
		i := slices.IndexFunc(l.Addrs, func(p netip.Prefix) bool { return p.Addr() == ni.PrivateIP })
		if i < 0 {
			m.Unmatched[ni.ID] = fmt.Sprintf("link %s does not carry the primary address %s", l.Name, ni.PrivateIP)
			continue
		}
		addr := l.Addrs[i]
		m.ENIs = append(m.ENIs, ENI{Index: ni.DeviceIndex, Device: l.Name, Address: addr, Gateway: SubnetGateway(addr, gateway, defGw)})
		for _, ip := range ni.SecondaryIPs {
			m.Owners[ip] = l.Name
		}
	}
	slices.SortFunc(m.ENIs, func(a, b ENI) int { return a.Index - b.Index })
	return m
}

// ResolveConfig is what Resolve needs.
type ResolveConfig struct {
	// Source is SourceAuto, SourceEC2 or SourceLinks.
	Source string
	// Cloud is the EC2 client; nil when no cloud is configured, with
	// NoCloudReason saying why.
	Cloud         cloud.NetworkInterfaces
	NoCloudReason string
	// InstanceID is this node's instance; empty (with NoInstanceReason)
	// when it could not be found.
	InstanceID       string
	NoInstanceReason string
	// Node is the node's namespace: its links, and with SourceLinks its
	// proxy neighbour entries.
	Node Node
	// Devices and Gateway are as in DiscoverConfig.
	Devices []string
	Gateway netip.Addr
	// Timeout bounds the first DescribeNetworkInterfaces (retries
	// included), so auto falls back in time; 0 means 30s.
	Timeout time.Duration
	Logger  *zap.Logger
}

// Resolved is the outcome of Resolve.
type Resolved struct {
	// Source is SourceEC2 or SourceLinks, what is used.
	Source string
	// Reason is why auto fell back to links (empty otherwise).
	Reason string
	ENIs   []ENI
	// Owners returns pod address → ENI device: from EC2's secondary
	// addresses, or from proxy neighbour entries with links.
	Owners func() (map[netip.Addr]string, error)
}

// Resolve decides where the ENIs come from and reads them: EC2 for
// SourceEC2 (an error when it cannot), links for SourceLinks, and for
// SourceAuto EC2 when a cloud and an instance ID are known and EC2 answers
// with at least one ENI of a local link, else links.
func Resolve(ctx context.Context, cfg ResolveConfig) (Resolved, error) {
	links, defGw, err := cfg.Node.Links()
	if err != nil {
		return Resolved{}, err
	}
	fromLinks := func(reason string) (Resolved, error) {
		enis, err := FromLinks(links, defGw, DiscoverConfig{Devices: cfg.Devices, Gateway: cfg.Gateway})
		if err != nil {
			return Resolved{}, fmt.Errorf("discover ENIs from links: %w", err)
		}
		owners := func() (map[netip.Addr]string, error) { return cfg.Node.ProxyOwners(enis) }
		return Resolved{Source: SourceLinks, Reason: reason, ENIs: enis, Owners: owners}, nil
	}
	if cfg.Source == SourceLinks {
		return fromLinks("")
	}
	res, err := fromEC2(ctx, cfg, links, defGw)
	if err == nil {
		return res, nil
	}
	if cfg.Source == SourceEC2 {
		return Resolved{}, err
	}
	return fromLinks(err.Error())
}

func fromEC2(ctx context.Context, cfg ResolveConfig, links []Link, defGw netip.Addr) (Resolved, error) {
	if cfg.Cloud == nil {
		return Resolved{}, fmt.Errorf("no cloud configured: %s", cfg.NoCloudReason)
	}
	if cfg.InstanceID == "" {
		return Resolved{}, fmt.Errorf("no instance ID: %s", cfg.NoInstanceReason)
	}
	timeout := cfg.Timeout
	if timeout == 0 {
		timeout = 30 * time.Second
	}
	tctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	nis, err := cfg.Cloud.InstanceNetworkInterfaces(tctx, cfg.InstanceID)
	if err != nil {
		return Resolved{}, fmt.Errorf("describe network interfaces of instance %s: %w", cfg.InstanceID, err)
	}
	m := MapCloud(nis, links, cfg.Devices, cfg.Gateway, defGw)
	for id, why := range m.Unmatched {
		cfg.Logger.Warn("cloud ENI left out", zap.String("networkInterface", id), zap.String("reason", why))
	}
	if len(m.ENIs) == 0 {
		return Resolved{}, fmt.Errorf("instance %s: EC2 lists %d ENIs, none on a local link", cfg.InstanceID, len(nis))
	}
	o := &cloudOwners{cloud: cfg.Cloud, instance: cfg.InstanceID, links: links, devices: cfg.Devices,
		last: m.Owners, at: time.Now(), log: cfg.Logger}
	return Resolved{Source: SourceEC2, ENIs: m.ENIs, Owners: o.get}, nil
}

// cloudOwners re-reads the instance's ENIs for every sync; when EC2 fails
// it logs and keeps the last answer, so routing does not flap with the API.
type cloudOwners struct {
	cloud    cloud.NetworkInterfaces
	instance string
	links    []Link
	devices  []string
	log      *zap.Logger

	mu   sync.Mutex
	last map[netip.Addr]string
	at   time.Time
}

// ownersRefreshTimeout bounds one refresh (retries included): a sync
// waits no longer than this for EC2 before it uses the last answer.
const ownersRefreshTimeout = 10 * time.Second

func (o *cloudOwners) get() (map[netip.Addr]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), ownersRefreshTimeout)
	defer cancel()
	nis, err := o.cloud.InstanceNetworkInterfaces(ctx, o.instance)
	o.mu.Lock()
	defer o.mu.Unlock()
	if err != nil {
		o.log.Warn("describe network interfaces failed; using the last answer", zap.Error(err),
			zap.Duration("age", time.Since(o.at)))
		return o.last, nil
	}
	o.last = MapCloud(nis, o.links, o.devices, netip.Addr{}, netip.Addr{}).Owners
	o.at = time.Now()
	return o.last, nil
}

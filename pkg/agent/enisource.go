package agent

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/directlb/directlb/pkg/cloud"
	"github.com/directlb/directlb/pkg/eni"
)

// ENIMapping is the cloud's ENIs of this instance matched to local links.
type ENIMapping struct {
	ENIs []eni.ENI
	// Owners maps each secondary address the cloud assigned to an ENI to
	// that ENI's device.
	Owners map[netip.Addr]string
	// Unmatched says, per cloud ENI ID, why it has no local link.
	Unmatched map[string]string
}

// MapCloudENIs matches the cloud's ENIs to links by MAC. An ENI's index is
// its device index, its address the link's address equal to the cloud's
// primary address (with the link's prefix length), its gateway as in
// eni.SubnetGateway. devices, when not empty, limits the links used. An ENI
// without a matching link, or whose link does not carry its primary
// address, is left out and reported in Unmatched.
func MapCloudENIs(nis []cloud.NetworkInterface, links []eni.Link, devices []string, gateway, defGw netip.Addr) ENIMapping {
	m := ENIMapping{Owners: map[netip.Addr]string{}, Unmatched: map[string]string{}}
	byMAC := map[string]eni.Link{}
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
		m.ENIs = append(m.ENIs, eni.ENI{Index: ni.DeviceIndex, Device: l.Name, Address: addr, Gateway: eni.SubnetGateway(addr, gateway, defGw)})
		for _, ip := range ni.SecondaryIPs {
			m.Owners[ip] = l.Name
		}
	}
	slices.SortFunc(m.ENIs, func(a, b eni.ENI) int { return a.Index - b.Index })
	return m
}

// ENISourceConfig is what ResolveENIs needs.
type ENISourceConfig struct {
	// Source is ENISourceAuto, ENISourceEC2 or ENISourceLinks.
	Source string
	// Cloud is the EC2 client; nil when no cloud is configured, with
	// NoCloudReason saying why.
	Cloud         cloud.NetworkInterfaces
	NoCloudReason string
	// InstanceID is this node's instance; empty (with NoInstanceReason)
	// when it could not be found.
	InstanceID       string
	NoInstanceReason string
	// Links and DefaultGateway are the node's links (eni.Links).
	Links          []eni.Link
	DefaultGateway netip.Addr
	// Devices and Gateway are --eni-devices and --eni-gateway.
	Devices []string
	Gateway netip.Addr
	// Timeout bounds the first DescribeNetworkInterfaces (retries
	// included), so auto falls back in time; 0 means 30s.
	Timeout time.Duration
	Logger  *zap.Logger
}

// ENISource is the outcome of ResolveENIs.
type ENISource struct {
	// Source is ENISourceEC2 or ENISourceLinks, what is used.
	Source string
	// Reason is why auto fell back to links (empty otherwise).
	Reason string
	ENIs   []eni.ENI
	// Owners returns pod address → ENI device: from EC2's secondary
	// addresses, or from proxy neighbour entries with links.
	Owners func() (map[netip.Addr]string, error)
}

// ResolveENIs decides where the ENIs come from and reads them: EC2 for
// ENISourceEC2 (an error when it cannot), links for ENISourceLinks, and
// for ENISourceAuto EC2 when a cloud and an instance ID are known and EC2
// answers with at least one ENI of a local link, else links. proxyOwners
// is the links source's ownership (eni.ProxyOwners).
func ResolveENIs(ctx context.Context, cfg ENISourceConfig, proxyOwners func(enis []eni.ENI) func() (map[netip.Addr]string, error)) (ENISource, error) {
	links := func(reason string) (ENISource, error) {
		enis, err := eni.FromLinks(cfg.Links, cfg.DefaultGateway, eni.DiscoverConfig{Devices: cfg.Devices, Gateway: cfg.Gateway})
		if err != nil {
			return ENISource{}, fmt.Errorf("discover ENIs from links: %w", err)
		}
		return ENISource{Source: ENISourceLinks, Reason: reason, ENIs: enis, Owners: proxyOwners(enis)}, nil
	}
	if cfg.Source == ENISourceLinks {
		return links("")
	}
	src, err := fromEC2(ctx, cfg)
	if err == nil {
		return src, nil
	}
	if cfg.Source == ENISourceEC2 {
		return ENISource{}, err
	}
	return links(err.Error())
}

func fromEC2(ctx context.Context, cfg ENISourceConfig) (ENISource, error) {
	if cfg.Cloud == nil {
		return ENISource{}, fmt.Errorf("no cloud configured: %s", cfg.NoCloudReason)
	}
	if cfg.InstanceID == "" {
		return ENISource{}, fmt.Errorf("no instance ID: %s", cfg.NoInstanceReason)
	}
	timeout := cfg.Timeout
	if timeout == 0 {
		timeout = 30 * time.Second
	}
	tctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	nis, err := cfg.Cloud.InstanceNetworkInterfaces(tctx, cfg.InstanceID)
	if err != nil {
		return ENISource{}, fmt.Errorf("describe network interfaces of instance %s: %w", cfg.InstanceID, err)
	}
	m := MapCloudENIs(nis, cfg.Links, cfg.Devices, cfg.Gateway, cfg.DefaultGateway)
	for id, why := range m.Unmatched {
		cfg.Logger.Warn("cloud ENI left out", zap.String("networkInterface", id), zap.String("reason", why))
	}
	if len(m.ENIs) == 0 {
		return ENISource{}, fmt.Errorf("instance %s: EC2 lists %d ENIs, none on a local link", cfg.InstanceID, len(nis))
	}
	o := &cloudOwners{cloud: cfg.Cloud, instance: cfg.InstanceID, links: cfg.Links, devices: cfg.Devices,
		last: m.Owners, at: time.Now(), log: cfg.Logger}
	return ENISource{Source: ENISourceEC2, ENIs: m.ENIs, Owners: o.get}, nil
}

// cloudOwners re-reads the instance's ENIs for every sync; when EC2 fails
// it logs and keeps the last answer, so routing does not flap with the API.
type cloudOwners struct {
	cloud    cloud.NetworkInterfaces
	instance string
	links    []eni.Link
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
	o.last = MapCloudENIs(nis, o.links, o.devices, netip.Addr{}, netip.Addr{}).Owners
	o.at = time.Now()
	return o.last, nil
}

// InstanceIDFromProviderID is the last segment of a Node's spec.providerID
// (aws:///us-east-1a/i-0abc → i-0abc; directlb-testbed:///node-1 → node-1).
func InstanceIDFromProviderID(providerID string) string {
	if providerID == "" {
		return ""
	}
	i := strings.LastIndex(providerID, "/")
	return providerID[i+1:]
}

package ipam

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"go.uber.org/zap"

	"github.com/directlb/directlb/pkg/cloud"
)

// Config configures an IPAM.
type Config struct {
	// Dir holds the pool (see Store); one per instance.
	Dir        string
	InstanceID string
	Cloud      cloud.NetworkInterfaces
	// WarmIPTarget is how many free addresses each ENI that got a pod
	// keeps: ADD tops up to it, DEL gives back what is beyond it.
	WarmIPTarget int
	// FirstENI is the device index that wins ties (see Rank).
	FirstENI int
	// CloudTimeout bounds one cloud call, retries included.
	CloudTimeout time.Duration
	// Routed, called when the pool is built from the cloud, returns the
	// addresses routed to a pod's veth on this node (address → veth):
	// they are recorded as held (see Holder.Veth), not free.
	Routed func() (map[netip.Addr]string, error)
	Logger *zap.Logger
	// Now is the clock; nil: time.Now.
	Now func() time.Time
}

// IPAM hands out and takes back pod addresses from the pool, and keeps the
// pool's addresses assigned in the cloud. Every method holds the pool's
// lock for its whole run, cloud calls included (each bounded by
// CloudTimeout).
type IPAM struct {
	cfg   Config
	store Store
}

// New returns an IPAM.
func New(cfg Config) *IPAM {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	return &IPAM{cfg: cfg, store: Store{Dir: cfg.Dir}}
}

// locked runs fn on the pool under the lock and saves the pool when fn
// says it changed it, also when fn fails.
func (m *IPAM) locked(ctx context.Context, fn func(p *Pool) (bool, error)) error {
	unlock, err := m.store.Lock(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	p, err := m.store.Load()
	if err != nil {
		return err
	}
	if p.InstanceID != "" && p.InstanceID != m.cfg.InstanceID {
		return fmt.Errorf("pool %s is of instance %s, not %s", m.store.Path(), p.InstanceID, m.cfg.InstanceID)
	}
	p.InstanceID = m.cfg.InstanceID
	changed, err := fn(p)
	if changed {
		if serr := m.store.Save(p); serr != nil {
			return errors.Join(err, serr)
		}
	}
	return err
}

// Lookup returns the allocation of the attachment k names.
func (m *IPAM) Lookup(ctx context.Context, k Holder) (Allocation, bool, error) {
	var al Allocation
	var ok bool
	err := m.locked(ctx, func(p *Pool) (bool, error) {
		al, ok = p.Lookup(k)
		return false, nil
	})
	return al, ok, err
}

// Held lists every holder in the pool with its allocation.
func (m *IPAM) Held(ctx context.Context) (map[Holder]Allocation, error) {
	var out map[Holder]Allocation
	err := m.locked(ctx, func(p *Pool) (bool, error) {
		out = p.Held()
		return false, nil
	})
	return out, err
}

// Check reads the pool, for STATUS: the lock can be taken and the file
// decodes.
func (m *IPAM) Check(ctx context.Context) error {
	return m.locked(ctx, func(*Pool) (bool, error) { return false, nil })
}

// Allocate gives h an address on one of the ENIs whose MAC usable accepts
// (those with a device in the node namespace); an attachment that holds
// one gets it again, and one recovered by h.Veth is adopted. The ENIs are
// tried in Rank order; on each a free pooled address is taken, or, when it
// has none, WarmIPTarget+1 are assigned in the cloud (then 1, if the ENI
// cannot take that many). Only "this ENI is full" moves on to the next
// ENI; any other cloud error fails the allocation.
func (m *IPAM) Allocate(ctx context.Context, h Holder, usable func(mac string) bool) (Allocation, error) {
	var al Allocation
	err := m.locked(ctx, func(p *Pool) (bool, error) {
		if got, ok := p.Adopt(h); ok {
			al = got
			return true, nil
		}
		if got, ok := p.Lookup(h); ok {
			al = got
			return false, nil
		}
		changed, err := m.ensureENIs(ctx, p, usable)
		if err != nil {
			return changed, err
		}
		got, err := m.allocate(ctx, p, h, usable)
		al = got
		return true, err
	})
	return al, err
}

func (m *IPAM) allocate(ctx context.Context, p *Pool, h Holder, usable func(string) bool) (Allocation, error) {
	counts := p.GroupPods(Group(h.Namespace, h.Pod))
	var cands []Candidate
	for _, e := range p.ENIs {
		if usable(e.MAC) {
			cands = append(cands, Candidate{ID: e.ID, DeviceIndex: e.DeviceIndex, GroupPods: counts[e.ID]})
		}
	}
	var full []error
	for _, c := range Rank(cands, m.cfg.FirstENI) {
		if al, ok := p.Take(c.ID, h); ok {
			return al, nil
		}
		got, err := m.assign(ctx, c.ID, m.cfg.WarmIPTarget+1)
		p.Add(c.ID, got)
		if err == nil {
			if al, ok := p.Take(c.ID, h); ok {
				return al, nil
			}
			err = errors.New("the cloud assigned no address")
		}
		if !IsENIFull(err) {
			return Allocation{}, fmt.Errorf("assign a private address to %s: %w", c.ID, err)
		}
		full = append(full, fmt.Errorf("%s: %w", c.ID, err))
	}
	return Allocation{}, fmt.Errorf("no ENI of instance %s can take another address: %w", m.cfg.InstanceID, errors.Join(full...))
}

// ensureENIs reads the instance's ENIs from the cloud when the pool has
// none that usable accepts (the first ADD, or an ENI attached since), and
// adds the new ones with their secondary addresses: free, or held by the
// veth they are routed to (Config.Routed).
func (m *IPAM) ensureENIs(ctx context.Context, p *Pool, usable func(string) bool) (bool, error) {
	for _, e := range p.ENIs {
		if usable(e.MAC) {
			return false, nil
		}
	}
	cctx, cancel := context.WithTimeout(ctx, m.cfg.CloudTimeout)
	defer cancel()
	nis, err := m.cfg.Cloud.InstanceNetworkInterfaces(cctx, m.cfg.InstanceID)
	if err != nil {
		return false, fmt.Errorf("describe the network interfaces of instance %s: %w", m.cfg.InstanceID, err)
	}
	routed := map[netip.Addr]string{}
	if m.cfg.Routed != nil {
		if routed, err = m.cfg.Routed(); err != nil {
			return false, fmt.Errorf("read the routes to pods: %w", err)
		}
	}
	var enis []ENI
	var macs []string
	for _, ni := range nis {
		e := ENI{ID: ni.ID, MAC: ni.MAC, DeviceIndex: ni.DeviceIndex}
		for _, ip := range ni.SecondaryIPs {
			a := Address{IP: ip}
			if veth, ok := routed[ip]; ok {
				a.Holder = &Holder{Veth: veth}
			}
			e.Addresses = append(e.Addresses, a)
		}
		enis = append(enis, e)
		macs = append(macs, ni.MAC)
	}
	p.MergeENIs(enis)
	for _, e := range p.ENIs {
		if usable(e.MAC) {
			m.cfg.Logger.Info("pool ENIs read from the cloud", zap.String("instance", m.cfg.InstanceID), zap.Int("enis", len(nis)))
			return true, nil
		}
	}
	return true, fmt.Errorf("instance %s: none of its ENIs (MACs %v) has a device in this network namespace", m.cfg.InstanceID, macs)
}

// assign asks the cloud for n addresses on the ENI, and for 1 when the
// ENI cannot take n.
func (m *IPAM) assign(ctx context.Context, eniID string, n int) ([]netip.Addr, error) {
	cctx, cancel := context.WithTimeout(ctx, m.cfg.CloudTimeout)
	defer cancel()
	got, err := m.cfg.Cloud.AssignPrivateIPs(cctx, eniID, nil, n)
	if err != nil && n > 1 && IsENIFull(err) {
		return m.assign(ctx, eniID, 1)
	}
	return got, err
}

// IsENIFull reports whether err is the cloud saying that the ENI or its
// subnet has no room for another address (EC2's
// PrivateIpAddressLimitExceeded and InsufficientFreeAddressesInSubnet).
func IsENIFull(err error) bool {
	var ae *cloud.APIError
	return errors.As(err, &ae) && (ae.Code == "PrivateIpAddressLimitExceeded" || ae.Code == "InsufficientFreeAddressesInSubnet")
}

// TopUp assigns addresses to the ENI in the cloud until it has
// WarmIPTarget free ones.
func (m *IPAM) TopUp(ctx context.Context, eniID string) error {
	return m.locked(ctx, func(p *Pool) (bool, error) {
		short := m.cfg.WarmIPTarget - p.Free(eniID)
		if short <= 0 || p.eni(eniID) == nil {
			return false, nil
		}
		got, err := m.assign(ctx, eniID, short)
		p.Add(eniID, got)
		if err != nil {
			return len(got) > 0, fmt.Errorf("top up %s to %d free addresses: %w", eniID, m.cfg.WarmIPTarget, err)
		}
		return true, nil
	})
}

// Release frees the addresses the attachments ks hold and gives back to
// the cloud what each ENI then has beyond WarmIPTarget, the just-freed
// addresses first. A cloud failure is logged and the addresses stay in
// the pool, free. Attachments that hold nothing are skipped; it returns
// the allocations freed.
func (m *IPAM) Release(ctx context.Context, ks ...Holder) ([]Allocation, error) {
	var freed []Allocation
	err := m.locked(ctx, func(p *Pool) (bool, error) {
		now := m.cfg.Now()
		byENI := map[string][]netip.Addr{}
		for _, k := range ks {
			if al, ok := p.Release(k, now); ok {
				freed = append(freed, al)
				byENI[al.ENIID] = append(byENI[al.ENIID], al.IP)
			}
		}
		for _, e := range p.ENIs {
			if just, ok := byENI[e.ID]; ok {
				m.unassign(ctx, p, e.ID, just)
			}
		}
		return len(freed) > 0, nil
	})
	return freed, err
}

// unassign gives back the ENI's free addresses beyond WarmIPTarget.
func (m *IPAM) unassign(ctx context.Context, p *Pool, eniID string, just []netip.Addr) {
	extra := p.Excess(eniID, m.cfg.WarmIPTarget, just)
	if len(extra) == 0 {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, m.cfg.CloudTimeout)
	defer cancel()
	if err := m.cfg.Cloud.UnassignPrivateIPs(cctx, eniID, extra); err != nil {
		m.cfg.Logger.Warn("unassign private addresses failed; they stay in the pool, free",
			zap.String("eni", eniID), zap.Stringers("ips", extra), zap.Error(err))
		return
	}
	p.Remove(eniID, extra)
}

package fake

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sort"
	"sync"

	"github.com/directlb/directlb/pkg/cloud"
)

// ENISpec is one ENI of ENIs: what the cloud reports, the range the cloud
// picks addresses from when asked for a count (localcloud's per-ENI pod
// pool), and the most private addresses the ENI holds, primary included.
type ENISpec struct {
	cloud.NetworkInterface
	// Pool is where AssignPrivateIPs with a count takes addresses from,
	// lowest first.
	Pool netip.Prefix
	// Limit is EC2's "IPv4 addresses per interface"; 0: the pool's size + 1.
	Limit int
}

// ENIs is an in-memory cloud.NetworkInterfaces that answers as localcloud's
// EC2 API does: count-assignments come from the ENI's pool, lowest free
// first; an address is on one ENI at most; going over the limit is
// PrivateIpAddressLimitExceeded, an empty pool
// InsufficientFreeAddressesInSubnet; unassigning what the ENI does not hold
// succeeds. It counts calls per operation. Fail, when set, is asked before
// every call and a non-nil answer fails the call before it changes
// anything.
type ENIs struct {
	mu    sync.Mutex
	enis  map[string]*ENISpec
	calls map[string]int
	// Fail injects errors; op is "DescribeNetworkInterfaces",
	// "AssignPrivateIpAddresses" or "UnassignPrivateIpAddresses".
	Fail func(op string) error
}

var _ cloud.NetworkInterfaces = (*ENIs)(nil)

// NewENIs returns a cloud holding specs.
func NewENIs(specs ...ENISpec) *ENIs {
	f := &ENIs{enis: map[string]*ENISpec{}, calls: map[string]int{}}
	for _, s := range specs {
		s.SecondaryIPs = slices.Clone(s.SecondaryIPs)
		if s.Limit == 0 {
			s.Limit = 1<<(32-s.Pool.Bits()) + 1
		}
		f.enis[s.ID] = &s
	}
	return f
}

func (f *ENIs) begin(op string) error {
	f.mu.Lock()
	f.calls[op]++
	fail := f.Fail
	f.mu.Unlock()
	if fail != nil {
		return fail(op)
	}
	return nil
}

// Calls returns how many times each operation was called.
func (f *ENIs) Calls() map[string]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return maps.Clone(f.calls)
}

// Secondaries returns the ENI's secondary addresses, sorted.
func (f *ENIs) Secondaries(eniID string) []netip.Addr {
	f.mu.Lock()
	defer f.mu.Unlock()
	e, ok := f.enis[eniID]
	if !ok {
		return nil
	}
	out := slices.Clone(e.SecondaryIPs)
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

// InstanceNetworkInterfaces implements cloud.NetworkInterfaces.
func (f *ENIs) InstanceNetworkInterfaces(_ context.Context, instanceID string) ([]cloud.NetworkInterface, error) {
	if err := f.begin("DescribeNetworkInterfaces"); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []cloud.NetworkInterface
	for _, e := range f.enis {
		if e.InstanceID == instanceID {
			ni := e.NetworkInterface
			ni.SecondaryIPs = slices.Clone(e.SecondaryIPs)
			out = append(out, ni)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].DeviceIndex < out[j].DeviceIndex })
	return out, nil
}

func (f *ENIs) owner(ip netip.Addr) *ENISpec {
	for _, e := range f.enis {
		if e.PrivateIP == ip || slices.Contains(e.SecondaryIPs, ip) {
			return e
		}
	}
	return nil
}

func ec2Error(op, code, msg string) error {
	return &cloud.APIError{Op: op, Code: code, Message: msg}
}

// AssignPrivateIPs implements cloud.NetworkInterfaces.
func (f *ENIs) AssignPrivateIPs(_ context.Context, eniID string, ips []netip.Addr, count int) ([]netip.Addr, error) {
	const op = "AssignPrivateIpAddresses"
	if err := f.begin(op); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	e, ok := f.enis[eniID]
	if !ok {
		return nil, fmt.Errorf("%w: %w", cloud.ErrNotFound, ec2Error(op, "InvalidNetworkInterfaceID.NotFound", eniID))
	}
	var add []netip.Addr
	if len(ips) > 0 {
		for _, ip := range ips {
			switch o := f.owner(ip); {
			case o == e:
			case o != nil:
				return nil, ec2Error(op, "InvalidIPAddress.InUse", fmt.Sprintf("Address %s is in use.", ip))
			default:
				add = append(add, ip)
			}
		}
	} else {
		for a := e.Pool.Masked().Addr(); e.Pool.Contains(a) && len(add) < count; a = a.Next() {
			if f.owner(a) == nil {
				add = append(add, a)
			}
		}
		if len(add) < count {
			return nil, ec2Error(op, "InsufficientFreeAddressesInSubnet",
				fmt.Sprintf("%s has %d free addresses for %s, %d were asked for", e.Pool, len(add), eniID, count))
		}
	}
	if 1+len(e.SecondaryIPs)+len(add) > e.Limit {
		return nil, ec2Error(op, "PrivateIpAddressLimitExceeded",
			fmt.Sprintf("%s holds %d of %d, %d more were asked for", eniID, 1+len(e.SecondaryIPs), e.Limit, len(add)))
	}
	e.SecondaryIPs = append(e.SecondaryIPs, add...)
	return add, nil
}

// UnassignPrivateIPs implements cloud.NetworkInterfaces.
func (f *ENIs) UnassignPrivateIPs(_ context.Context, eniID string, ips []netip.Addr) error {
	if err := f.begin("UnassignPrivateIpAddresses"); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	e, ok := f.enis[eniID]
	if !ok {
		return nil
	}
	e.SecondaryIPs = slices.DeleteFunc(e.SecondaryIPs, func(a netip.Addr) bool { return slices.Contains(ips, a) })
	return nil
}

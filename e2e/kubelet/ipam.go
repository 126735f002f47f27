package kubelet

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/aws/aws-sdk-go-v2/credentials"
	"go.uber.org/zap"

	"github.com/directlb/directlb/pkg/cloud"
	cloudaws "github.com/directlb/directlb/pkg/cloud/aws"
	"github.com/directlb/directlb/pkg/localcloud"
)

// PodRange is one ENI's range of secondary addresses for pods.
type PodRange struct {
	ENI    int // index into the node's ENIs
	Prefix netip.Prefix
}

// Allocation is an address given to a pod.
type Allocation struct {
	Addr netip.Addr
	ENI  int
}

// Allocator hands out pod addresses from a node's ENI pod ranges and never
// gives out an address that is reserved or allocated.
//
// It spreads each workload (a group: the pods of one controller, e.g. a
// ReplicaSet) over the ENIs: the range holding the fewest of the group's
// pods on this node wins; a tie goes to the node's first range (node i
// starts at range (i-1) mod 2), so the first pods of a workload on
// neighbouring nodes use different ENIs whatever else runs there.
type Allocator struct {
	ranges []PodRange
	first  int
	owner  map[netip.Addr]string
	byOwn  map[string]Allocation
	group  map[string]string // owner → group
}

// NewAllocator returns an allocator over ranges; first is the range that
// wins ties.
func NewAllocator(ranges []PodRange, first int) *Allocator {
	a := &Allocator{ranges: ranges, owner: map[netip.Addr]string{}, byOwn: map[string]Allocation{}, group: map[string]string{}}
	if len(ranges) > 0 {
		a.first = ((first % len(ranges)) + len(ranges)) % len(ranges)
	}
	return a
}

func (a *Allocator) rangeOf(addr netip.Addr) int {
	for i, r := range a.ranges {
		if r.Prefix.Contains(addr) {
			return i
		}
	}
	return -1
}

// Reserve records that owner (of group) holds addr, from persisted state or
// the apiserver. It fails if addr is outside the ranges or held by another
// owner.
func (a *Allocator) Reserve(owner, group string, addr netip.Addr) (Allocation, error) {
	i := a.rangeOf(addr)
	if i < 0 {
		return Allocation{}, fmt.Errorf("address %s is in none of the node's pod ranges", addr)
	}
	if o, ok := a.owner[addr]; ok && o != owner {
		return Allocation{}, fmt.Errorf("address %s is held by %s", addr, o)
	}
	if cur, ok := a.byOwn[owner]; ok && cur.Addr != addr {
		return Allocation{}, fmt.Errorf("owner %s already holds %s", owner, cur.Addr)
	}
	al := Allocation{Addr: addr, ENI: a.ranges[i].ENI}
	a.owner[addr] = owner
	a.byOwn[owner] = al
	a.group[owner] = group
	return al, nil
}

// Allocate gives owner (of group) an address; an owner that has one gets the
// same one again. prefer, if valid and free, is taken first (a pod's
// address from before a restart).
func (a *Allocator) Allocate(owner, group string, prefer netip.Addr) (Allocation, error) {
	if al, ok := a.byOwn[owner]; ok {
		return al, nil
	}
	if prefer.IsValid() {
		if _, held := a.owner[prefer]; !held && a.rangeOf(prefer) >= 0 {
			return a.Reserve(owner, group, prefer)
		}
	}
	if len(a.ranges) == 0 {
		return Allocation{}, fmt.Errorf("no pod ranges")
	}
	count := make([]int, len(a.ranges))
	for o, al := range a.byOwn {
		if a.group[o] == group {
			if i := a.rangeOf(al.Addr); i >= 0 {
				count[i]++
			}
		}
	}
	// Ranges in order of fewest of the group's pods, ties from a.first on.
	order := make([]int, 0, len(a.ranges))
	for k := range a.ranges {
		order = append(order, (a.first+k)%len(a.ranges))
	}
	for x := 1; x < len(order); x++ {
		for y := x; y > 0 && count[order[y]] < count[order[y-1]]; y-- {
			order[y], order[y-1] = order[y-1], order[y]
		}
	}
	for _, i := range order {
		for addr := a.ranges[i].Prefix.Masked().Addr(); a.ranges[i].Prefix.Contains(addr); addr = addr.Next() {
			if _, held := a.owner[addr]; !held {
				return a.Reserve(owner, group, addr)
			}
		}
	}
	return Allocation{}, fmt.Errorf("pod ranges exhausted")
}

// Release frees owner's address.
func (a *Allocator) Release(owner string) {
	if al, ok := a.byOwn[owner]; ok {
		delete(a.owner, al.Addr)
		delete(a.byOwn, owner)
		delete(a.group, owner)
	}
}

// Held returns owner's allocation.
func (a *Allocator) Held(owner string) (Allocation, bool) {
	al, ok := a.byOwn[owner]
	return al, ok
}

// CloudIPAM records the Allocator's choices in the cloud, as VPC CNI's IPAM
// does: the pod's address is assigned to its ENI as a secondary private
// address (AssignPrivateIpAddresses) before the pod's network is set up,
// and unassigned when the pod is torn down. The test bed's fabric does not
// depend on it (proxy neighbours still say which ENI answers for a pod);
// it keeps localcloud's EC2 view true, for the node agent's
// --eni-source=ec2.
type CloudIPAM struct {
	ENIs cloud.NetworkInterfaces
	// Timeout bounds one call, retries included.
	Timeout time.Duration
	Log     *zap.Logger
}

// NewCloudIPAM returns a CloudIPAM on localcloud's EC2 API at endpoint,
// signed with localcloud's default key (the test bed starts it with it).
func NewCloudIPAM(ctx context.Context, endpoint string, log *zap.Logger) (*CloudIPAM, error) {
	lc := localcloud.DefaultConfig()
	ac := cloudaws.DefaultConfig()
	ac.Region, ac.Endpoint = lc.Region, endpoint
	ac.MaxAttempts, ac.MaxBackoff = 5, time.Second
	ac.RateLimits = map[string]cloudaws.Limit{} // pod churn is paced by the test, not by the client
	ac.Credentials = credentials.NewStaticCredentialsProvider(lc.AccessKeyID, lc.SecretAccessKey, "")
	c, err := cloudaws.New(ctx, ac)
	if err != nil {
		return nil, fmt.Errorf("EC2 client for %s: %w", endpoint, err)
	}
	return &CloudIPAM{ENIs: c, Timeout: 10 * time.Second, Log: log}, nil
}

// Assign assigns addr to the ENI; it is a no-op when the ENI holds it.
func (c *CloudIPAM) Assign(ctx context.Context, eniID string, addr netip.Addr) error {
	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	if _, err := c.ENIs.AssignPrivateIPs(ctx, eniID, []netip.Addr{addr}, 0); err != nil {
		return fmt.Errorf("assign %s to %s: %w", addr, eniID, err)
	}
	return nil
}

// Unassign frees addr in the cloud. A failure is logged, not returned: a
// pod's teardown does not wait for the cloud, and the address, which only
// this node's ENI can hold, is assigned again as a no-op when reused.
func (c *CloudIPAM) Unassign(ctx context.Context, eniID string, addr netip.Addr) {
	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	if err := c.ENIs.UnassignPrivateIPs(ctx, eniID, []netip.Addr{addr}); err != nil {
		c.Log.Warn("unassign pod address in the cloud", zap.String("eni", eniID), zap.String("ip", addr.String()), zap.Error(err))
	}
}

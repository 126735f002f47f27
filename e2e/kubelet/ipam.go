package kubelet

import (
	"fmt"
	"net/netip"
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

// Allocator hands out pod addresses from a node's ENI pod ranges. It
// balances the ENIs (fewest addresses in use first; on a tie it rotates) and
// never gives out an address that is reserved or allocated.
type Allocator struct {
	ranges []PodRange
	owner  map[netip.Addr]string
	byOwn  map[string]Allocation
	next   int // range index preferred on a tie
}

// NewAllocator returns an allocator over ranges; first is the range preferred
// on the first tie (vary it per node so that single pods on several nodes use
// both ENIs).
func NewAllocator(ranges []PodRange, first int) *Allocator {
	a := &Allocator{ranges: ranges, owner: map[netip.Addr]string{}, byOwn: map[string]Allocation{}}
	if len(ranges) > 0 {
		a.next = ((first % len(ranges)) + len(ranges)) % len(ranges)
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

// Reserve records that owner holds addr (from persisted state or the
// apiserver). It fails if addr is outside the ranges or held by another owner.
func (a *Allocator) Reserve(owner string, addr netip.Addr) (Allocation, error) {
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
	return al, nil
}

// Allocate gives owner an address; an owner that has one gets the same one
// again. prefer, if valid and free, is taken first (a pod's address from
// before a restart).
func (a *Allocator) Allocate(owner string, prefer netip.Addr) (Allocation, error) {
	if al, ok := a.byOwn[owner]; ok {
		return al, nil
	}
	if prefer.IsValid() {
		if _, held := a.owner[prefer]; !held && a.rangeOf(prefer) >= 0 {
			return a.Reserve(owner, prefer)
		}
	}
	if len(a.ranges) == 0 {
		return Allocation{}, fmt.Errorf("no pod ranges")
	}
	count := make([]int, len(a.ranges))
	for addr := range a.owner {
		if i := a.rangeOf(addr); i >= 0 {
			count[i]++
		}
	}
	// Try ranges in order of fewest in use, ties starting at a.next.
	order := make([]int, 0, len(a.ranges))
	for k := range a.ranges {
		order = append(order, (a.next+k)%len(a.ranges))
	}
	for x := 1; x < len(order); x++ {
		for y := x; y > 0 && count[order[y]] < count[order[y-1]]; y-- {
			order[y], order[y-1] = order[y-1], order[y]
		}
	}
	for _, i := range order {
		for addr := a.ranges[i].Prefix.Masked().Addr(); a.ranges[i].Prefix.Contains(addr); addr = addr.Next() {
			if _, held := a.owner[addr]; held {
				continue
			}
			a.next = (i + 1) % len(a.ranges)
			return a.Reserve(owner, addr)
		}
	}
	return Allocation{}, fmt.Errorf("pod ranges exhausted")
}

// Release frees owner's address.
func (a *Allocator) Release(owner string) {
	if al, ok := a.byOwn[owner]; ok {
		delete(a.owner, al.Addr)
		delete(a.byOwn, owner)
	}
}

// Held returns owner's allocation.
func (a *Allocator) Held(owner string) (Allocation, bool) {
	al, ok := a.byOwn[owner]
	return al, ok
}

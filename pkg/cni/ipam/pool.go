// Package ipam is directlb-cni's address management: a node-local pool of
// the secondary addresses the cloud assigned to this instance's ENIs, and
// which attachment (container and interface) holds which. The pool lives in
// one JSON file under an flock, because the runtime runs the plugin for
// several pods at once; a pod start takes a pooled address, and the cloud
// is called only to fill or trim the pool (see IPAM).
//
// The functions on Pool are pure; IPAM adds the file and the cloud.
package ipam

import (
	"cmp"
	"net/netip"
	"slices"
	"time"
)

// PoolVersion is the version of the pool file format.
const PoolVersion = 1

// Pool is the node's address pool, as stored in pool.json.
type Pool struct {
	Version    int    `json:"version"`
	InstanceID string `json:"instanceID"`
	ENIs       []ENI  `json:"enis"`
}

// ENI is one ENI of the instance and the secondary addresses the cloud
// assigned to it.
type ENI struct {
	ID string `json:"id"`
	// MAC finds the ENI's device in the node namespace.
	MAC         string    `json:"mac"`
	DeviceIndex int       `json:"deviceIndex"`
	Addresses   []Address `json:"addresses"`
}

// Address is a secondary address of an ENI, free or held.
type Address struct {
	IP     netip.Addr `json:"ip"`
	Holder *Holder    `json:"holder,omitempty"`
	// FreedAt is when the address was last freed; zero if never held.
	// The address freed longest ago is handed out first, so a pod's
	// address is not reused while load balancers still drain it.
	FreedAt time.Time `json:"freedAt,omitzero"`
}

// Holder is the attachment holding an address.
type Holder struct {
	ContainerID string `json:"containerID,omitempty"`
	IfName      string `json:"ifName,omitempty"`
	// Namespace and Pod are the pod's (CNI_ARGS K8S_POD_NAMESPACE and
	// K8S_POD_NAME); the pod's workload is spread over the ENIs.
	Namespace string `json:"namespace,omitempty"`
	Pod       string `json:"pod,omitempty"`
	// Veth is the node-side veth. A holder with only a Veth was found
	// routed to that veth when the pool was rebuilt from the cloud; the
	// first ADD or GC that names its container adopts it.
	Veth string `json:"veth,omitempty"`
}

// Recovered reports whether h was found on the node, not recorded by ADD.
func (h Holder) Recovered() bool { return h.ContainerID == "" }

// matches reports whether h is the attachment k names: the same container
// and interface, or, for a recovered h, the same veth.
func (h Holder) matches(k Holder) bool {
	if h.Recovered() {
		return k.Veth != "" && h.Veth == k.Veth
	}
	return h.ContainerID == k.ContainerID && h.IfName == k.IfName
}

// Allocation is an address and the ENI that holds it.
type Allocation struct {
	IP          netip.Addr
	ENIID       string
	MAC         string
	DeviceIndex int
}

func (e *ENI) allocation(ip netip.Addr) Allocation {
	return Allocation{IP: ip, ENIID: e.ID, MAC: e.MAC, DeviceIndex: e.DeviceIndex}
}

func (p *Pool) eni(id string) *ENI {
	for i := range p.ENIs {
		if p.ENIs[i].ID == id {
			return &p.ENIs[i]
		}
	}
	return nil
}

// find returns the address k holds.
func (p *Pool) find(k Holder) (*ENI, *Address) {
	for i := range p.ENIs {
		e := &p.ENIs[i]
		for j := range e.Addresses {
			if h := e.Addresses[j].Holder; h != nil && h.matches(k) {
				return e, &e.Addresses[j]
			}
		}
	}
	return nil, nil
}

// Lookup returns the allocation of the attachment k names (its
// ContainerID and IfName; or its Veth, for a recovered holder).
func (p *Pool) Lookup(k Holder) (Allocation, bool) {
	if e, a := p.find(k); a != nil {
		return e.allocation(a.IP), true
	}
	return Allocation{}, false
}

// Held lists every holder with its allocation.
func (p *Pool) Held() map[Holder]Allocation {
	out := map[Holder]Allocation{}
	for i := range p.ENIs {
		e := &p.ENIs[i]
		for _, a := range e.Addresses {
			if a.Holder != nil {
				out[*a.Holder] = e.allocation(a.IP)
			}
		}
	}
	return out
}

// Free counts the ENI's free addresses.
func (p *Pool) Free(eniID string) int {
	n := 0
	if e := p.eni(eniID); e != nil {
		for _, a := range e.Addresses {
			if a.Holder == nil {
				n++
			}
		}
	}
	return n
}

// Add records addresses the cloud assigned to the ENI, free.
func (p *Pool) Add(eniID string, ips []netip.Addr) {
	e := p.eni(eniID)
	if e == nil {
		return
	}
	for _, ip := range ips {
		if !slices.ContainsFunc(e.Addresses, func(a Address) bool { return a.IP == ip }) {
			e.Addresses = append(e.Addresses, Address{IP: ip})
		}
	}
	slices.SortFunc(e.Addresses, func(a, b Address) int { return a.IP.Compare(b.IP) })
}

// Remove drops addresses the cloud no longer assigns to the ENI.
func (p *Pool) Remove(eniID string, ips []netip.Addr) {
	if e := p.eni(eniID); e != nil {
		e.Addresses = slices.DeleteFunc(e.Addresses, func(a Address) bool { return slices.Contains(ips, a.IP) })
	}
}

// Take gives h a free address of the ENI: the one freed longest ago
// (never held counts as longest), the lowest on a tie.
func (p *Pool) Take(eniID string, h Holder) (Allocation, bool) {
	e := p.eni(eniID)
	if e == nil {
		return Allocation{}, false
	}
	var best *Address
	for i := range e.Addresses {
		a := &e.Addresses[i]
		if a.Holder != nil {
			continue
		}
		if best == nil || a.FreedAt.Before(best.FreedAt) || (a.FreedAt.Equal(best.FreedAt) && a.IP.Less(best.IP)) {
			best = a
		}
	}
	if best == nil {
		return Allocation{}, false
	}
	best.Holder = &h
	return e.allocation(best.IP), true
}

// Adopt makes k the holder of the address a recovered holder with k's
// Veth holds, and returns it.
func (p *Pool) Adopt(k Holder) (Allocation, bool) {
	e, a := p.find(Holder{Veth: k.Veth})
	if a == nil || !a.Holder.Recovered() {
		return Allocation{}, false
	}
	a.Holder = &k
	return e.allocation(a.IP), true
}

// Release frees the address k holds, at now.
func (p *Pool) Release(k Holder, now time.Time) (Allocation, bool) {
	e, a := p.find(k)
	if a == nil {
		return Allocation{}, false
	}
	a.Holder, a.FreedAt = nil, now
	return e.allocation(a.IP), true
}

// Excess returns the free addresses of the ENI beyond warm, to give back
// to the cloud: those in first (just freed) before the others, then the
// most recently freed, then the highest.
func (p *Pool) Excess(eniID string, warm int, first []netip.Addr) []netip.Addr {
	e := p.eni(eniID)
	if e == nil {
		return nil
	}
	var free []Address
	for _, a := range e.Addresses {
		if a.Holder == nil {
			free = append(free, a)
		}
	}
	n := len(free) - warm
	if n <= 0 {
		return nil
	}
	slices.SortFunc(free, func(a, b Address) int {
		fa, fb := slices.Contains(first, a.IP), slices.Contains(first, b.IP)
		if fa != fb {
			if fa {
				return -1
			}
			return 1
		}
		if c := b.FreedAt.Compare(a.FreedAt); c != 0 {
			return c
		}
		return b.IP.Compare(a.IP)
	})
	out := make([]netip.Addr, 0, n)
	for _, a := range free[:n] {
		out = append(out, a.IP)
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

// GroupPods counts, per ENI ID, the holders of group (see Group).
func (p *Pool) GroupPods(group string) map[string]int {
	out := map[string]int{}
	for _, e := range p.ENIs {
		for _, a := range e.Addresses {
			if a.Holder != nil && !a.Holder.Recovered() && Group(a.Holder.Namespace, a.Holder.Pod) == group {
				out[e.ID]++
			}
		}
	}
	return out
}

// MergeENIs adds the ENIs in nis the pool does not have, in device index
// order; existing ENIs keep their addresses.
func (p *Pool) MergeENIs(enis []ENI) {
	for _, e := range enis {
		if p.eni(e.ID) == nil {
			p.ENIs = append(p.ENIs, e)
		}
	}
	slices.SortFunc(p.ENIs, func(a, b ENI) int { return cmp.Compare(a.DeviceIndex, b.DeviceIndex) })
}

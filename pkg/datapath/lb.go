package datapath

import (
	"fmt"
	"maps"
	"math"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// LoadBalancer programs Services into Maps. It keeps what it has programmed
// so that each change writes only the entries that differ, and it orders
// the writes of one batch so that a lookup never sees a half-written
// Service:
//
//  1. new backends, then affinity matches for new (service, backend) pairs;
//  2. changed and new slots;
//  3. masters (new count), then masters of deleted Services;
//  4. slots beyond a Service's new count, slots of deleted Services;
//  5. affinity matches and backends nobody uses any more.
//
// Backends are shared: one (address, port, protocol) has one ID however
// many Services use it.
//
// Node addresses (SetNodeAddresses) are written apart from the Services:
// each entry stands alone, a NodePort frontend without node addresses
// matches nothing and a node address without NodePorts passes.
type LoadBalancer struct {
	mu   sync.Mutex
	maps Maps

	services map[Frontend]*programmed
	svcIDs   map[ServiceID]Frontend
	// nodeAddrs are the node addresses programmed (SetNodeAddresses).
	nodeAddrs map[netip.Addr]NodeAddressFlags

	backendIDs map[Backend]BackendID
	backends   map[BackendID]Backend
	refs       map[BackendID]int

	lastServiceID ServiceID
	lastBackendID BackendID
	maxServiceID  ServiceID
	maxBackendID  BackendID
}

type programmed struct {
	id      ServiceID
	slots   []BackendID // slots[i] is slot i+1
	timeout uint32      // affinity timeout, seconds
	flags   uint8
}

// LoadBalancerConfig configures NewLoadBalancer.
type LoadBalancerConfig struct {
	Maps Maps
	// MaxServiceID and MaxBackendID bound the IDs handed out; zero means
	// the largest the maps can hold.
	MaxServiceID ServiceID
	MaxBackendID BackendID
}

// NewLoadBalancer returns a LoadBalancer that has programmed nothing yet;
// call Restore to pick up what an earlier run left in pinned maps.
func NewLoadBalancer(cfg LoadBalancerConfig) *LoadBalancer {
	lb := &LoadBalancer{
		maps:         cfg.Maps,
		maxServiceID: cfg.MaxServiceID,
		maxBackendID: cfg.MaxBackendID,
	}
	if lb.maxServiceID == 0 {
		lb.maxServiceID = math.MaxUint32
	}
	if lb.maxBackendID == 0 {
		lb.maxBackendID = math.MaxUint32
	}
	lb.reset()
	return lb
}

func (lb *LoadBalancer) reset() {
	lb.services = map[Frontend]*programmed{}
	lb.svcIDs = map[ServiceID]Frontend{}
	lb.backendIDs = map[Backend]BackendID{}
	lb.backends = map[BackendID]Backend{}
	lb.refs = map[BackendID]int{}
	lb.nodeAddrs = map[netip.Addr]NodeAddressFlags{}
}

// RestoreStats says what Restore found in the maps.
type RestoreStats struct {
	Services, Backends int
	// Removed counts entries deleted because nothing consistent used them.
	Removed int
}

// Restore reads the maps (pinned by an earlier run), adopts the Services and
// backends it finds there with their IDs, and deletes entries that are not
// part of a complete Service: orphan slots, unused backends and affinity
// matches. Services the control plane no longer wants are removed later by
// Sync.
func (lb *LoadBalancer) Restore() (RestoreStats, error) {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	return lb.restoreLocked()
}

func (lb *LoadBalancer) restoreLocked() (RestoreStats, error) {
	lb.reset()
	var st RestoreStats
	d, err := lb.dumpPinned()
	if err != nil {
		return st, err
	}
	var left leftovers
	left.masters, left.slots = lb.adoptServices(d.masters, d.slots, d.backends)
	left.backends = lb.adoptBackends(d.backends)
	left.matches = lb.staleAffinityMatches(d.matches)
	if err := lb.deleteLeftovers(left); err != nil {
		return st, err
	}
	st.Services = len(lb.services)
	st.Backends = len(lb.backends)
	st.Removed = len(left.masters) + len(left.slots) + len(left.matches) + len(left.backends)
	return st, nil
}

// pinned is what restore reads from the pinned maps.
type pinned struct {
	masters  map[Frontend]ServiceValue
	slots    map[Frontend]map[uint16]ServiceValue
	backends map[BackendID]Backend
	matches  []AffinityMatchKey
}

// leftovers are the entries restore found incomplete, orphaned or unused.
type leftovers struct {
	masters, slots []ServiceKey
	backends       []BackendID
	matches        []AffinityMatchKey
}

// dumpPinned reads the services (masters and slots apart), backends and
// affinity matches from the maps.
func (lb *LoadBalancer) dumpPinned() (pinned, error) {
	d := pinned{masters: map[Frontend]ServiceValue{}, slots: map[Frontend]map[uint16]ServiceValue{}, backends: map[BackendID]Backend{}}
	if err := lb.maps.DumpServices(func(k ServiceKey, v ServiceValue) {
		if k.Slot == 0 {
			d.masters[k.Frontend] = v
			return
		}
		if d.slots[k.Frontend] == nil {
			d.slots[k.Frontend] = map[uint16]ServiceValue{}
		}
		d.slots[k.Frontend][k.Slot] = v
	}); err != nil {
		return d, fmt.Errorf("dump services: %w", err)
	}
	if err := lb.maps.DumpBackends(func(id BackendID, b Backend) { d.backends[id] = b }); err != nil {
		return d, fmt.Errorf("dump backends: %w", err)
	}
	if err := lb.maps.DumpAffinityMatches(func(k AffinityMatchKey) { d.matches = append(d.matches, k) }); err != nil {
		return d, fmt.Errorf("dump affinity matches: %w", err)
	}
	// Node addresses need no checking: each entry stands alone.
	if err := lb.maps.DumpNodeAddresses(func(a netip.Addr, f NodeAddressFlags) { lb.nodeAddrs[a] = f }); err != nil {
		return d, fmt.Errorf("dump node addresses: %w", err)
	}
	return d, nil
}

// adoptServices takes over every complete service: a master with a
// unique non-zero ID whose slots 1..Count all exist and point at dumped
// backends. It returns the masters of the others and the slots no adopted
// service uses.
func (lb *LoadBalancer) adoptServices(masters map[Frontend]ServiceValue, slots map[Frontend]map[uint16]ServiceValue, backends map[BackendID]Backend) (delMasters, delSlots []ServiceKey) {
	for fe, m := range masters {
		p := &programmed{id: m.ServiceID, timeout: m.AffinityTimeout, flags: m.Flags}
		ok := m.ServiceID != 0
		if _, dup := lb.svcIDs[m.ServiceID]; dup {
			ok = false
		}
		for s := uint16(1); ok && s <= m.Count; s++ {
			v, found := slots[fe][s]
			if _, known := backends[v.BackendID]; !found || !known {
				ok = false
				break
			}
			p.slots = append(p.slots, v.BackendID)
		}
		if !ok {
			delMasters = append(delMasters, ServiceKey{Frontend: fe})
			continue
		}
		lb.services[fe] = p
		lb.svcIDs[p.id] = fe
		lb.lastServiceID = max(lb.lastServiceID, p.id)
		for _, id := range p.slots {
			lb.refs[id]++
		}
	}
	for fe, ss := range slots {
		p := lb.services[fe]
		for s := range ss {
			if p == nil || int(s) > len(p.slots) {
				delSlots = append(delSlots, ServiceKey{Frontend: fe, Slot: s})
			}
		}
	}
	return delMasters, delSlots
}

// adoptBackends takes over the backends adopted services use and returns
// the IDs of the rest.
func (lb *LoadBalancer) adoptBackends(backends map[BackendID]Backend) (unused []BackendID) {
	for id, b := range backends {
		lb.lastBackendID = max(lb.lastBackendID, id)
		if lb.refs[id] == 0 {
			unused = append(unused, id)
			continue
		}
		if _, dup := lb.backendIDs[b]; dup {
			// Two IDs for one backend: keep both working, but new
			// Services get the first one.
			lb.backends[id] = b
			continue
		}
		lb.backendIDs[b] = id
		lb.backends[id] = b
	}
	return unused
}

// staleAffinityMatches are the matches of no adopted affinity service's
// backend.
func (lb *LoadBalancer) staleAffinityMatches(matches []AffinityMatchKey) (stale []AffinityMatchKey) {
	for _, k := range matches {
		fe, ok := lb.svcIDs[k.ServiceID]
		if !ok || lb.services[fe].flags&FlagAffinity == 0 || !slices.Contains(lb.services[fe].slots, k.BackendID) {
			stale = append(stale, k)
		}
	}
	return stale
}

// deleteLeftovers removes what restore did not adopt: services first, then
// affinity matches, then the backends nothing points at any more.
func (lb *LoadBalancer) deleteLeftovers(left leftovers) error {
	if err := lb.maps.DeleteServices(left.masters); err != nil {
		return fmt.Errorf("delete incomplete services: %w", err)
	}
	if err := lb.maps.DeleteServices(left.slots); err != nil {
		return fmt.Errorf("delete orphan slots: %w", err)
	}
	if err := lb.maps.DeleteAffinityMatches(left.matches); err != nil {
		return fmt.Errorf("delete stale affinity matches: %w", err)
	}
	if err := lb.maps.DeleteBackends(left.backends); err != nil {
		return fmt.Errorf("delete unused backends: %w", err)
	}
	return nil
}

// plan is one batch of writes in the order they must happen.
type plan struct {
	newBackendIDs []BackendID
	newBackends   []Backend
	matchAdds     []AffinityMatchKey
	slotKeys      []ServiceKey
	slotVals      []ServiceValue
	masterKeys    []ServiceKey
	masterVals    []ServiceValue
	masterDeletes []ServiceKey
	slotDeletes   []ServiceKey
	matchDeletes  []AffinityMatchKey
	released      []BackendID
	backendDels   []BackendID
	left          []LeftBackend
}

// ApplyStats counts what one Apply or Sync changed.
type ApplyStats struct {
	ServicesChanged, ServicesDeleted int
	// Writes is the number of map entries written or deleted.
	Writes int
	// Left are the backends that left a UDP socket frontend (removed from
	// it, or the frontend deleted): connected UDP sockets translated to
	// them are stale (DestroySockets). A failed Apply reports them too,
	// since some of its writes may have been made.
	Left []LeftBackend
}

// LeftBackend is a backend that no longer serves a Service it served: a
// socket the hooks translated from that Service to it is stale.
type LeftBackend struct {
	Service ServiceID
	Backend Backend
}

// socketUDP reports whether fe is reached by UDP sockets through the
// socket hooks (not the tc programs' external frontends).
func socketUDP(fe Frontend) bool {
	return fe.Proto == UDP && fe.Scope&ScopeExternal == 0
}

// planLeft records in p the backends of old that are not in want (nil:
// none are) for a UDP socket frontend.
func (lb *LoadBalancer) planLeft(p *plan, fe Frontend, old *programmed, want *set[BackendID]) {
	if old == nil || !socketUDP(fe) {
		return
	}
	for _, id := range old.slots {
		if want == nil || !want.has(id) {
			p.left = append(p.left, LeftBackend{Service: old.id, Backend: lb.backends[id]})
		}
	}
}

// Apply programs the given Services (adding or changing them) and deletes
// the given frontends. Services whose programmed state already matches cost
// nothing. If a map write fails, the LoadBalancer re-reads the maps so that
// a later Apply or Sync starts from the truth.
func (lb *LoadBalancer) Apply(upserts []Service, deletes []Frontend) (ApplyStats, error) {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	return lb.applyLocked(upserts, deletes)
}

// Sync makes the programmed Services exactly the desired ones: it applies
// every desired Service and deletes every programmed frontend not among them.
func (lb *LoadBalancer) Sync(desired []Service) (ApplyStats, error) {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	want := make(map[Frontend]bool, len(desired))
	for _, s := range desired {
		want[s.Frontend] = true
	}
	var deletes []Frontend
	for fe := range lb.services {
		if !want[fe] {
			deletes = append(deletes, fe)
		}
	}
	return lb.applyLocked(desired, deletes)
}

func (lb *LoadBalancer) applyLocked(upserts []Service, deletes []Frontend) (ApplyStats, error) {
	var st ApplyStats
	nb := 0
	for _, s := range upserts {
		nb += len(s.Backends)
	}
	p := plan{
		slotKeys:   make([]ServiceKey, 0, nb),
		slotVals:   make([]ServiceValue, 0, nb),
		masterKeys: make([]ServiceKey, 0, len(upserts)),
		masterVals: make([]ServiceValue, 0, len(upserts)),
	}
	if len(lb.services) == 0 && len(upserts) > 64 {
		// Programming from scratch: size the indexes once.
		lb.services = make(map[Frontend]*programmed, len(upserts))
		lb.svcIDs = make(map[ServiceID]Frontend, len(upserts))
		if len(lb.backends) == 0 {
			lb.backendIDs = make(map[Backend]BackendID, nb)
			lb.backends = make(map[BackendID]Backend, nb)
			lb.refs = make(map[BackendID]int, nb)
			p.newBackendIDs = make([]BackendID, 0, nb)
			p.newBackends = make([]Backend, 0, nb)
		}
	}
	for _, s := range upserts {
		changed, err := lb.planUpsert(&p, s)
		if err != nil {
			return st, err
		}
		if changed {
			st.ServicesChanged++
		}
	}
	upserted := make(map[Frontend]bool, len(upserts))
	for _, s := range upserts {
		upserted[s.Frontend] = true
	}
	for _, fe := range deletes {
		if upserted[fe] {
			continue // deleted by one owner and wanted by another
		}
		if lb.planDelete(&p, fe) {
			st.ServicesDeleted++
		}
	}
	for _, id := range p.released {
		lb.refs[id]--
		if lb.refs[id] <= 0 {
			delete(lb.refs, id)
			b := lb.backends[id]
			delete(lb.backends, id)
			if lb.backendIDs[b] == id {
				delete(lb.backendIDs, b)
			}
			p.backendDels = append(p.backendDels, id)
		}
	}
	st.Writes = len(p.newBackendIDs) + len(p.matchAdds) + len(p.slotKeys) + len(p.masterKeys) +
		len(p.masterDeletes) + len(p.slotDeletes) + len(p.matchDeletes) + len(p.backendDels)
	st.Left = p.left
	if err := lb.execute(&p); err != nil {
		if _, rerr := lb.restoreLocked(); rerr != nil {
			return st, fmt.Errorf("%w (and re-reading the maps failed: %w)", err, rerr)
		}
		return st, err
	}
	return st, nil
}

func (lb *LoadBalancer) execute(p *plan) error {
	if err := lb.maps.UpdateBackends(p.newBackendIDs, p.newBackends); err != nil {
		return fmt.Errorf("add backends: %w", err)
	}
	if err := lb.maps.UpdateAffinityMatches(p.matchAdds); err != nil {
		return fmt.Errorf("add affinity matches: %w", err)
	}
	if err := lb.maps.UpdateServices(p.slotKeys, p.slotVals); err != nil {
		return fmt.Errorf("write service slots: %w", err)
	}
	if err := lb.maps.UpdateServices(p.masterKeys, p.masterVals); err != nil {
		return fmt.Errorf("write service masters: %w", err)
	}
	if err := lb.maps.DeleteServices(p.masterDeletes); err != nil {
		return fmt.Errorf("delete service masters: %w", err)
	}
	if err := lb.maps.DeleteServices(p.slotDeletes); err != nil {
		return fmt.Errorf("delete service slots: %w", err)
	}
	if err := lb.maps.DeleteAffinityMatches(p.matchDeletes); err != nil {
		return fmt.Errorf("delete affinity matches: %w", err)
	}
	if err := lb.maps.DeleteBackends(p.backendDels); err != nil {
		return fmt.Errorf("delete backends: %w", err)
	}
	return nil
}

func (lb *LoadBalancer) acquireBackend(p *plan, b Backend) (BackendID, error) {
	if id, ok := lb.backendIDs[b]; ok {
		lb.refs[id]++
		return id, nil
	}
	id, err := lb.allocBackendID()
	if err != nil {
		return 0, err
	}
	lb.backendIDs[b] = id
	lb.backends[id] = b
	lb.refs[id] = 1
	p.newBackendIDs = append(p.newBackendIDs, id)
	p.newBackends = append(p.newBackends, b)
	return id, nil
}

func (lb *LoadBalancer) allocBackendID() (BackendID, error) {
	for range 2 * int(min(lb.maxBackendID, 1<<20)) {
		lb.lastBackendID++
		if lb.lastBackendID == 0 || lb.lastBackendID > lb.maxBackendID {
			lb.lastBackendID = 1
		}
		if _, used := lb.backends[lb.lastBackendID]; !used {
			return lb.lastBackendID, nil
		}
	}
	return 0, fmt.Errorf("allocate backend ID: all %d in use", lb.maxBackendID)
}

func (lb *LoadBalancer) allocServiceID() (ServiceID, error) {
	for range 2 * int(min(lb.maxServiceID, 1<<20)) {
		lb.lastServiceID++
		if lb.lastServiceID == 0 || lb.lastServiceID > lb.maxServiceID {
			lb.lastServiceID = 1
		}
		if _, used := lb.svcIDs[lb.lastServiceID]; !used {
			return lb.lastServiceID, nil
		}
	}
	return 0, fmt.Errorf("allocate service ID: all %d in use", lb.maxServiceID)
}

func affinitySeconds(d time.Duration) uint32 {
	if d <= 0 {
		return 0
	}
	s := (d + time.Second - 1) / time.Second
	return uint32(min(s, math.MaxUint32))
}

func (lb *LoadBalancer) planUpsert(p *plan, s Service) (bool, error) {
	fe := s.Frontend
	if !fe.Addr.Is4() {
		return false, fmt.Errorf("program service %s: only IPv4 frontends are supported", fe)
	}
	switch fe.Scope {
	case ScopeAddress:
	case ScopeExternal:
		if fe.Port == 0 || fe.Proto == 0 {
			return false, fmt.Errorf("program service %s: an external frontend has a port and a protocol", fe)
		}
	case ScopeNodePort, ScopeNodePort | ScopeExternal:
		if fe.Addr != netip.IPv4Unspecified() || fe.Port == 0 || fe.Proto == 0 {
			return false, fmt.Errorf("program service %s: a NodePort frontend has address 0.0.0.0, a port and a protocol", fe)
		}
	default:
		return false, fmt.Errorf("program service %s: unknown scope %d", fe, fe.Scope)
	}
	if s.SNAT && fe.Scope&ScopeExternal == 0 {
		return false, fmt.Errorf("program service %s: SNAT is for external frontends", fe)
	}
	if (fe.Port == 0) != (fe.Proto == 0) || (fe.IsAddress() && (len(s.Backends) > 0 || s.AffinityTimeout > 0 || s.Drop)) {
		return false, fmt.Errorf("program service %s: port 0 and protocol 0 go together, for an address entry without backends", fe)
	}
	if len(s.Backends) > math.MaxUint16 {
		return false, fmt.Errorf("program service %s: %d backends, at most %d", fe, len(s.Backends), math.MaxUint16)
	}
	timeout := affinitySeconds(s.AffinityTimeout)
	var flags uint8
	if timeout > 0 {
		flags |= FlagAffinity
	}
	if s.Drop && len(s.Backends) == 0 {
		flags |= FlagDrop
	}
	if s.SNAT {
		flags |= FlagSNAT
	}
	want, seen, err := wantedBackends(s)
	if err != nil {
		return false, err
	}
	old := lb.services[fe]
	if lb.unchanged(old, timeout, flags, want, seen) {
		return false, nil
	}
	cur, wantIDs, err := lb.program(p, fe, old, timeout, flags, want)
	if err != nil {
		return false, fmt.Errorf("program service %s: %w", fe, err)
	}
	var oldSlots []BackendID
	if old != nil {
		oldSlots = old.slots
	}
	planAffinityMatches(p, old, cur, wantIDs)
	planServiceWrites(p, fe, old, cur)
	lb.planLeft(p, fe, old, wantIDs)
	// Old references are dropped after every acquire of this batch, so a
	// backend that moves between Services keeps its ID.
	p.released = append(p.released, oldSlots...)

	lb.services[fe] = cur
	lb.svcIDs[cur.id] = fe
	return true, nil
}

// wantedBackends are s's backends, deduplicated, in the given order, and
// their set.
func wantedBackends(s Service) ([]Backend, *set[Backend], error) {
	want := make([]Backend, 0, len(s.Backends))
	seen := newSet[Backend](len(s.Backends))
	for _, ap := range s.Backends {
		b := Backend{Addr: ap.Addr().Unmap(), Port: ap.Port(), Proto: s.Frontend.Proto}
		if !b.Addr.Is4() {
			return nil, nil, fmt.Errorf("program service %s: backend %s is not IPv4", s.Frontend, ap)
		}
		if seen.add(b) {
			want = append(want, b)
		}
	}
	return want, seen, nil
}

// unchanged says whether old already programs exactly these settings and
// backends.
func (lb *LoadBalancer) unchanged(old *programmed, timeout uint32, flags uint8, want []Backend, seen *set[Backend]) bool {
	if old == nil || old.timeout != timeout || old.flags != flags || len(old.slots) != len(want) {
		return false
	}
	for _, id := range old.slots {
		if !seen.has(lb.backends[id]) {
			return false
		}
	}
	return true
}

// program is the new state of a Service: old's ID (a new one for a new
// Service), an ID for each wanted backend (acquired in p), and slots that
// keep the backends staying where they were. wantIDs is the set of those
// backend IDs.
func (lb *LoadBalancer) program(p *plan, fe Frontend, old *programmed, timeout uint32, flags uint8, want []Backend) (*programmed, *set[BackendID], error) {
	cur := &programmed{timeout: timeout, flags: flags}
	var oldSlots []BackendID
	if old != nil {
		cur.id = old.id
		oldSlots = old.slots
	} else {
		id, err := lb.allocServiceID()
		if err != nil {
			return nil, nil, err
		}
		cur.id = id
	}
	ids := make([]BackendID, len(want))
	wantIDs := newSet[BackendID](len(want))
	for i, b := range want {
		id, err := lb.acquireBackend(p, b)
		if err != nil {
			return nil, nil, err
		}
		ids[i] = id
		wantIDs.add(id)
	}
	cur.slots = assignSlots(oldSlots, ids, wantIDs)
	return cur, wantIDs, nil
}

// planAffinityMatches adds to p the affinity matches cur needs that old
// did not have, and deletes those of old that cur no longer has.
func planAffinityMatches(p *plan, old, cur *programmed, wantIDs *set[BackendID]) {
	var oldSlots []BackendID
	if old != nil {
		oldSlots = old.slots
	}
	oldIDs := newSet[BackendID](len(oldSlots))
	for _, id := range oldSlots {
		oldIDs.add(id)
	}
	oldAffinity := old != nil && old.flags&FlagAffinity != 0
	if cur.flags&FlagAffinity != 0 {
		for _, id := range cur.slots {
			if !oldAffinity || !oldIDs.has(id) {
				p.matchAdds = append(p.matchAdds, AffinityMatchKey{BackendID: id, ServiceID: cur.id})
			}
		}
	}
	if oldAffinity {
		for _, id := range oldSlots {
			if cur.flags&FlagAffinity == 0 || !wantIDs.has(id) {
				p.matchDeletes = append(p.matchDeletes, AffinityMatchKey{BackendID: id, ServiceID: cur.id})
			}
		}
	}
}

// planServiceWrites adds to p the slot writes that differ from old, the
// master when its settings or count change, and the deletes of the slots
// past cur's count.
func planServiceWrites(p *plan, fe Frontend, old, cur *programmed) {
	var oldSlots []BackendID
	if old != nil {
		oldSlots = old.slots
	}
	for i, id := range cur.slots {
		if i < len(oldSlots) && oldSlots[i] == id {
			continue
		}
		p.slotKeys = append(p.slotKeys, ServiceKey{Frontend: fe, Slot: uint16(i + 1)})
		p.slotVals = append(p.slotVals, ServiceValue{BackendID: id, ServiceID: cur.id})
	}
	if old == nil || old.timeout != cur.timeout || old.flags != cur.flags || len(old.slots) != len(cur.slots) {
		p.masterKeys = append(p.masterKeys, ServiceKey{Frontend: fe})
		p.masterVals = append(p.masterVals, ServiceValue{
			ServiceID:       cur.id,
			AffinityTimeout: cur.timeout,
			Count:           uint16(len(cur.slots)),
			Flags:           cur.flags,
		})
	}
	for i := len(cur.slots); i < len(oldSlots); i++ {
		p.slotDeletes = append(p.slotDeletes, ServiceKey{Frontend: fe, Slot: uint16(i + 1)})
	}
}

// assignSlots keeps every backend that stays in the slot it has, puts new
// backends into freed slots first, and moves backends from the tail into the
// holes left when the Service shrinks.
func assignSlots(old, ids []BackendID, want *set[BackendID]) []BackendID {
	if len(old) == 0 {
		return slices.Clone(ids)
	}
	slots := make([]BackendID, 0, max(len(old), len(ids)))
	placed := newSet[BackendID](len(ids))
	for _, id := range old {
		if want.has(id) && placed.add(id) {
			slots = append(slots, id)
		} else {
			slots = append(slots, 0)
		}
	}
	var fresh []BackendID
	for _, id := range ids {
		if placed.add(id) {
			fresh = append(fresh, id)
		}
	}
	for i := range slots {
		if slots[i] == 0 && len(fresh) > 0 {
			slots[i], fresh = fresh[0], fresh[1:]
		}
	}
	slots = append(slots, fresh...)
	// Fill the remaining holes from the tail.
	for i := 0; i < len(slots); i++ {
		if slots[i] != 0 {
			continue
		}
		for len(slots) > i && slots[len(slots)-1] == 0 {
			slots = slots[:len(slots)-1]
		}
		if len(slots) > i {
			slots[i] = slots[len(slots)-1]
			slots = slots[:len(slots)-1]
		}
	}
	return slots
}

func (lb *LoadBalancer) planDelete(p *plan, fe Frontend) bool {
	old := lb.services[fe]
	if old == nil {
		return false
	}
	p.masterDeletes = append(p.masterDeletes, ServiceKey{Frontend: fe})
	for i, id := range old.slots {
		p.slotDeletes = append(p.slotDeletes, ServiceKey{Frontend: fe, Slot: uint16(i + 1)})
		if old.flags&FlagAffinity != 0 {
			p.matchDeletes = append(p.matchDeletes, AffinityMatchKey{BackendID: id, ServiceID: old.id})
		}
	}
	lb.planLeft(p, fe, old, nil)
	p.released = append(p.released, old.slots...)
	delete(lb.services, fe)
	delete(lb.svcIDs, old.id)
	return true
}

// MapEntries are the entries the LoadBalancer has written to the Service
// maps, by map name: dlb_svc4 (masters, slots and address entries),
// dlb_backends4 and dlb_affmatch4.
func (lb *LoadBalancer) MapEntries() map[string]int {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	svc, matches := 0, 0
	for _, p := range lb.services {
		svc += 1 + len(p.slots)
		if p.flags&FlagAffinity != 0 {
			matches += len(p.slots)
		}
	}
	return map[string]int{"dlb_svc4": svc, "dlb_backends4": len(lb.backends), "dlb_affmatch4": matches}
}

// ProgrammedService is one Service as the LoadBalancer has programmed it.
type ProgrammedService struct {
	ID              ServiceID
	Backends        []BackendID
	AffinityTimeout uint32
}

// Programmed returns what is programmed for a frontend.
func (lb *LoadBalancer) Programmed(fe Frontend) (ProgrammedService, bool) {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	p, ok := lb.services[fe]
	if !ok {
		return ProgrammedService{}, false
	}
	return ProgrammedService{ID: p.id, Backends: slices.Clone(p.slots), AffinityTimeout: p.timeout}, true
}

// Frontends returns every programmed frontend.
func (lb *LoadBalancer) Frontends() []Frontend {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	out := make([]Frontend, 0, len(lb.services))
	for fe := range lb.services {
		out = append(out, fe)
	}
	return out
}

// BackendID returns the ID of a programmed backend.
func (lb *LoadBalancer) BackendID(b Backend) (BackendID, bool) {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	id, ok := lb.backendIDs[b]
	return id, ok
}

// SetNodeAddresses makes the node addresses (whose NodePorts this node's
// sockets reach) exactly want, writing only what differs. Node addresses
// are independent of the Services: a NodePort frontend with no node
// address matches nothing, and an address with no NodePort passes.
func (lb *LoadBalancer) SetNodeAddresses(want map[netip.Addr]NodeAddressFlags) (int, error) {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	var addrs, dels []netip.Addr
	var flags []NodeAddressFlags
	for a, f := range want {
		if !a.Is4() || a.IsUnspecified() {
			return 0, fmt.Errorf("node address %s: want a specific IPv4 address", a)
		}
		if old, ok := lb.nodeAddrs[a]; !ok || old != f {
			addrs = append(addrs, a)
			flags = append(flags, f)
		}
	}
	for a := range lb.nodeAddrs {
		if _, ok := want[a]; !ok {
			dels = append(dels, a)
		}
	}
	err := lb.maps.UpdateNodeAddresses(addrs, flags)
	if err == nil {
		err = lb.maps.DeleteNodeAddresses(dels)
	}
	if err != nil {
		// Start again from what the maps hold.
		clear(lb.nodeAddrs)
		if derr := lb.maps.DumpNodeAddresses(func(a netip.Addr, f NodeAddressFlags) { lb.nodeAddrs[a] = f }); derr != nil {
			return 0, fmt.Errorf("set node addresses: %w (and re-reading them failed: %w)", err, derr)
		}
		return 0, fmt.Errorf("set node addresses: %w", err)
	}
	lb.nodeAddrs = maps.Clone(want)
	if lb.nodeAddrs == nil {
		lb.nodeAddrs = map[netip.Addr]NodeAddressFlags{}
	}
	return len(addrs) + len(dels), nil
}

// NodeAddresses returns the programmed node addresses.
func (lb *LoadBalancer) NodeAddresses() map[netip.Addr]NodeAddressFlags {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	return maps.Clone(lb.nodeAddrs)
}

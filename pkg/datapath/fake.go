package datapath

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"sync"
)

// FakeMaps is an in-memory Maps for unit tests. It can check after every
// single write that a BPF lookup would see only complete Services, and it
// resolves a frontend the way the connect4 program does.
type FakeMaps struct {
	mu       sync.Mutex
	Services map[ServiceKey]ServiceValue
	Backends map[BackendID]Backend
	Matches  map[AffinityMatchKey]bool
	// NodeAddrs are the node addresses whose NodePorts resolve.
	NodeAddrs map[netip.Addr]NodeAddressFlags

	// AfterWrite, if set, runs after each single entry is written or
	// deleted, with the lock held; use Consistent inside it.
	AfterWrite func(*FakeMaps)
	// Writes counts single entries written or deleted.
	Writes int
	// FailAfter, if > 0, makes the write with that number fail.
	FailAfter int
	// MaxServices, if > 0, is the services map's size: adding a key
	// beyond it fails as a full BPF hash map does (E2BIG).
	MaxServices int
}

// ErrMapFull is what a write into a full fake map returns.
var ErrMapFull = errors.New("map full (E2BIG)")

// NewFakeMaps returns empty maps.
func NewFakeMaps() *FakeMaps {
	return &FakeMaps{
		Services:  map[ServiceKey]ServiceValue{},
		Backends:  map[BackendID]Backend{},
		Matches:   map[AffinityMatchKey]bool{},
		NodeAddrs: map[netip.Addr]NodeAddressFlags{},
	}
}

var errInjected = errors.New("injected map failure")

func (f *FakeMaps) wrote() error {
	f.Writes++
	if f.FailAfter > 0 && f.Writes == f.FailAfter {
		return errInjected
	}
	if f.AfterWrite != nil {
		f.AfterWrite(f)
	}
	return nil
}

func (f *FakeMaps) UpdateBackends(ids []BackendID, bs []Backend) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, id := range ids {
		f.Backends[id] = bs[i]
		if err := f.wrote(); err != nil {
			return err
		}
	}
	return nil
}

func (f *FakeMaps) DeleteBackends(ids []BackendID) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, id := range ids {
		delete(f.Backends, id)
		if err := f.wrote(); err != nil {
			return err
		}
	}
	return nil
}

func (f *FakeMaps) UpdateServices(keys []ServiceKey, vals []ServiceValue) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, k := range keys {
		if _, ok := f.Services[k]; !ok && f.MaxServices > 0 && len(f.Services) >= f.MaxServices {
			return fmt.Errorf("update service %s slot %d: %w", k.Frontend, k.Slot, ErrMapFull)
		}
		f.Services[k] = vals[i]
		if err := f.wrote(); err != nil {
			return err
		}
	}
	return nil
}

func (f *FakeMaps) DeleteServices(keys []ServiceKey) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, k := range keys {
		delete(f.Services, k)
		if err := f.wrote(); err != nil {
			return err
		}
	}
	return nil
}

func (f *FakeMaps) UpdateAffinityMatches(keys []AffinityMatchKey) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, k := range keys {
		f.Matches[k] = true
		if err := f.wrote(); err != nil {
			return err
		}
	}
	return nil
}

func (f *FakeMaps) DeleteAffinityMatches(keys []AffinityMatchKey) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, k := range keys {
		delete(f.Matches, k)
		if err := f.wrote(); err != nil {
			return err
		}
	}
	return nil
}

func (f *FakeMaps) UpdateNodeAddresses(addrs []netip.Addr, flags []NodeAddressFlags) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, a := range addrs {
		f.NodeAddrs[a] = flags[i]
		if err := f.wrote(); err != nil {
			return err
		}
	}
	return nil
}

func (f *FakeMaps) DeleteNodeAddresses(addrs []netip.Addr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, a := range addrs {
		delete(f.NodeAddrs, a)
		if err := f.wrote(); err != nil {
			return err
		}
	}
	return nil
}

func (f *FakeMaps) DumpNodeAddresses(fn func(netip.Addr, NodeAddressFlags)) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for a, fl := range f.NodeAddrs {
		fn(a, fl)
	}
	return nil
}

func (f *FakeMaps) DumpServices(fn func(ServiceKey, ServiceValue)) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for k, v := range f.Services {
		fn(k, v)
	}
	return nil
}

func (f *FakeMaps) DumpBackends(fn func(BackendID, Backend)) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for id, b := range f.Backends {
		fn(id, b)
	}
	return nil
}

func (f *FakeMaps) DumpAffinityMatches(fn func(AffinityMatchKey)) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for k := range f.Matches {
		fn(k)
	}
	return nil
}

// ConsistentNow is Consistent under the lock, for a test that checks while
// a sync loop may still be writing.
func (f *FakeMaps) ConsistentNow() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.Consistent()
}

// Consistent reports the first way a BPF lookup could go wrong: a master
// whose slots 1..Count are not all present, or a slot naming a backend that
// is not in the backends map. Call it with the lock held (from AfterWrite)
// or after the writes are done.
func (f *FakeMaps) Consistent() error {
	for k, m := range f.Services {
		if k.Slot != 0 {
			continue
		}
		for s := uint16(1); s <= m.Count; s++ {
			v, ok := f.Services[ServiceKey{Frontend: k.Frontend, Slot: s}]
			if !ok {
				return fmt.Errorf("service %s: master count %d but slot %d missing", k.Frontend, m.Count, s)
			}
			if _, ok := f.Backends[v.BackendID]; !ok {
				return fmt.Errorf("service %s slot %d: backend %d missing", k.Frontend, s, v.BackendID)
			}
		}
	}
	return nil
}

// ErrNoService, ErrRefused and ErrDropped are what Resolve returns where
// connect4 lets the call through untouched, refuses it, or fails it as
// dropped.
var (
	ErrNoService = errors.New("not a service")
	ErrRefused   = errors.New("connection refused")
	// ErrDropped is a Service whose traffic is dropped (FlagDrop).
	ErrDropped = errors.New("dropped")
)

// Resolve picks a backend for a destination as connect4 does (random slot,
// without affinity; a port the address entry's ClusterIP does not serve is
// refused; a node address's NodePort resolves). fe is what the client
// dials: an address, a port and a protocol (its Scope is ignored).
func (f *FakeMaps) Resolve(fe Frontend, rng *rand.Rand) (Backend, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fe.Scope = ScopeAddress
	m, ok := f.Services[ServiceKey{Frontend: fe}]
	if !ok {
		if _, ok := f.Services[ServiceKey{Frontend: AddressFrontend(fe.Addr)}]; ok {
			return Backend{}, fmt.Errorf("port not served by %s: %w", fe.Addr, ErrRefused)
		}
		if _, ok := f.NodeAddrs[fe.Addr]; !ok {
			return Backend{}, ErrNoService
		}
		fe = NodePortFrontend(fe.Port, fe.Proto)
		if m, ok = f.Services[ServiceKey{Frontend: fe}]; !ok {
			return Backend{}, ErrNoService
		}
	}
	if m.Count == 0 {
		if m.Flags&FlagDrop != 0 {
			return Backend{}, ErrDropped
		}
		return Backend{}, ErrRefused
	}
	slot := uint16(rng.IntN(int(m.Count))) + 1
	v, ok := f.Services[ServiceKey{Frontend: fe, Slot: slot}]
	if !ok {
		return Backend{}, fmt.Errorf("slot %d missing: %w", slot, ErrRefused)
	}
	b, ok := f.Backends[v.BackendID]
	if !ok {
		return Backend{}, fmt.Errorf("backend %d missing: %w", v.BackendID, ErrRefused)
	}
	return b, nil
}

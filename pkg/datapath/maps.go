package datapath

import "net/netip"

// Maps is the datapath's storage: the BPF maps in the kernel (BPFMaps) or an
// in-memory fake for unit tests (FakeMaps). Every call takes a batch; a
// batch is applied in order but not atomically, so callers order their
// batches such that each single write leaves a consistent view.
//
// Deletes of keys that do not exist succeed.
type Maps interface {
	UpdateBackends(ids []BackendID, backends []Backend) error
	DeleteBackends(ids []BackendID) error
	UpdateServices(keys []ServiceKey, values []ServiceValue) error
	DeleteServices(keys []ServiceKey) error
	UpdateAffinityMatches(keys []AffinityMatchKey) error
	DeleteAffinityMatches(keys []AffinityMatchKey) error

	UpdateNodeAddresses(addrs []netip.Addr, flags []NodeAddressFlags) error
	DeleteNodeAddresses(addrs []netip.Addr) error

	DumpServices(fn func(ServiceKey, ServiceValue)) error
	DumpBackends(fn func(BackendID, Backend)) error
	DumpAffinityMatches(fn func(AffinityMatchKey)) error
	DumpNodeAddresses(fn func(netip.Addr, NodeAddressFlags)) error
}

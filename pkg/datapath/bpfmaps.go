//go:build linux

package datapath

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// BPFMaps is Maps on the kernel's BPF maps.
type BPFMaps struct {
	svc, backends, affmatch *ebpf.Map
	revnat, affinity        *ebpf.Map
	nodeaddr                *ebpf.Map
	nat, devices            *ebpf.Map
}

// The maps hold addresses and ports in network byte order; the generated
// structs read them as host-order integers, so convert through bytes.

func addrToBPF(a netip.Addr) uint32 {
	b := a.As4()
	return binary.NativeEndian.Uint32(b[:])
}

func addrFromBPF(v uint32) netip.Addr {
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

func portToBPF(p uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], p)
	return binary.NativeEndian.Uint16(b[:])
}

func portFromBPF(v uint16) uint16 {
	var b [2]byte
	binary.NativeEndian.PutUint16(b[:], v)
	return binary.BigEndian.Uint16(b[:])
}

func svcKeyToBPF(k ServiceKey) sockLBSvc4Key {
	return sockLBSvc4Key{
		Addr:  addrToBPF(k.Frontend.Addr),
		Port:  portToBPF(k.Frontend.Port),
		Slot:  k.Slot,
		Proto: uint8(k.Frontend.Proto),
		Scope: uint8(k.Frontend.Scope),
	}
}

func svcKeyFromBPF(k sockLBSvc4Key) ServiceKey {
	return ServiceKey{
		Frontend: Frontend{Addr: addrFromBPF(k.Addr), Port: portFromBPF(k.Port), Proto: Protocol(k.Proto), Scope: Scope(k.Scope)},
		Slot:     k.Slot,
	}
}

func svcValToBPF(v ServiceValue) sockLBSvc4Val {
	return sockLBSvc4Val{
		BackendId:       uint32(v.BackendID),
		SvcId:           uint32(v.ServiceID),
		AffinityTimeout: v.AffinityTimeout,
		Count:           v.Count,
		Flags:           v.Flags,
	}
}

func svcValFromBPF(v sockLBSvc4Val) ServiceValue {
	return ServiceValue{
		BackendID:       BackendID(v.BackendId),
		ServiceID:       ServiceID(v.SvcId),
		AffinityTimeout: v.AffinityTimeout,
		Count:           v.Count,
		Flags:           v.Flags,
	}
}

func backendToBPF(b Backend) sockLBBackend4 {
	return sockLBBackend4{Addr: addrToBPF(b.Addr), Port: portToBPF(b.Port), Proto: uint8(b.Proto)}
}

func backendFromBPF(b sockLBBackend4) Backend {
	return Backend{Addr: addrFromBPF(b.Addr), Port: portFromBPF(b.Port), Proto: Protocol(b.Proto)}
}

// writeBatch writes keys and values with one BatchUpdate where the kernel
// has it, one Put per entry otherwise.
func writeBatch[K, V any](m *ebpf.Map, keys []K, vals []V) error {
	switch len(keys) {
	case 0:
		return nil
	case 1:
		return m.Put(keys[0], vals[0])
	}
	if _, err := m.BatchUpdate(keys, vals, nil); err == nil {
		return nil
	} else if !errors.Is(err, ebpf.ErrNotSupported) {
		return err
	}
	for i := range keys {
		if err := m.Put(keys[i], vals[i]); err != nil {
			return err
		}
	}
	return nil
}

// deleteBatch deletes keys, ignoring those that are already gone.
func deleteBatch[K any](m *ebpf.Map, keys []K) error {
	if len(keys) > 1 {
		if n, err := m.BatchDelete(keys, nil); err == nil {
			return nil
		} else if n > 0 {
			keys = keys[n:]
		}
	}
	for _, k := range keys {
		if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return err
		}
	}
	return nil
}

// full says which map is full and which flag sizes it when err is the
// kernel's "no room" for a hash map (E2BIG); other errors pass unchanged.
func full(m *ebpf.Map, name, flag string, err error) error {
	if !errors.Is(err, unix.E2BIG) {
		return err
	}
	return fmt.Errorf("map %s full (%d entries; raise %s): %w", name, m.MaxEntries(), flag, err)
}

func convert[T, U any](in []T, f func(T) U) []U {
	out := make([]U, len(in))
	for i, v := range in {
		out[i] = f(v)
	}
	return out
}

func (m *BPFMaps) UpdateBackends(ids []BackendID, bs []Backend) error {
	keys := convert(ids, func(id BackendID) uint32 { return uint32(id) })
	if err := writeBatch(m.backends, keys, convert(bs, backendToBPF)); err != nil {
		return fmt.Errorf("update backends map: %w", full(m.backends, "dlb_backends4", "--map-size-backends", err))
	}
	return nil
}

func (m *BPFMaps) DeleteBackends(ids []BackendID) error {
	if err := deleteBatch(m.backends, convert(ids, func(id BackendID) uint32 { return uint32(id) })); err != nil {
		return fmt.Errorf("delete from backends map: %w", err)
	}
	return nil
}

func (m *BPFMaps) UpdateServices(keys []ServiceKey, vals []ServiceValue) error {
	if err := writeBatch(m.svc, convert(keys, svcKeyToBPF), convert(vals, svcValToBPF)); err != nil {
		return fmt.Errorf("update services map: %w", full(m.svc, "dlb_svc4", "--map-size-services", err))
	}
	return nil
}

func (m *BPFMaps) DeleteServices(keys []ServiceKey) error {
	if err := deleteBatch(m.svc, convert(keys, svcKeyToBPF)); err != nil {
		return fmt.Errorf("delete from services map: %w", err)
	}
	return nil
}

func matchToBPF(k AffinityMatchKey) sockLBAffmatchKey {
	return sockLBAffmatchKey{BackendId: uint32(k.BackendID), SvcId: uint32(k.ServiceID)}
}

func (m *BPFMaps) UpdateAffinityMatches(keys []AffinityMatchKey) error {
	one := make([]uint8, len(keys))
	for i := range one {
		one[i] = 1
	}
	if err := writeBatch(m.affmatch, convert(keys, matchToBPF), one); err != nil {
		return fmt.Errorf("update affinity match map: %w", full(m.affmatch, "dlb_affmatch4", "--map-size-backends", err))
	}
	return nil
}

func (m *BPFMaps) DeleteAffinityMatches(keys []AffinityMatchKey) error {
	if err := deleteBatch(m.affmatch, convert(keys, matchToBPF)); err != nil {
		return fmt.Errorf("delete from affinity match map: %w", err)
	}
	return nil
}

func (m *BPFMaps) DumpServices(fn func(ServiceKey, ServiceValue)) error {
	var k sockLBSvc4Key
	var v sockLBSvc4Val
	it := m.svc.Iterate()
	for it.Next(&k, &v) {
		fn(svcKeyFromBPF(k), svcValFromBPF(v))
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("iterate services map: %w", err)
	}
	return nil
}

func (m *BPFMaps) DumpBackends(fn func(BackendID, Backend)) error {
	var k uint32
	var v sockLBBackend4
	it := m.backends.Iterate()
	for it.Next(&k, &v) {
		fn(BackendID(k), backendFromBPF(v))
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("iterate backends map: %w", err)
	}
	return nil
}

func (m *BPFMaps) DumpAffinityMatches(fn func(AffinityMatchKey)) error {
	var k sockLBAffmatchKey
	var v uint8
	it := m.affmatch.Iterate()
	for it.Next(&k, &v) {
		fn(AffinityMatchKey{BackendID: BackendID(k.BackendId), ServiceID: ServiceID(k.SvcId)})
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("iterate affinity match map: %w", err)
	}
	return nil
}

func (m *BPFMaps) UpdateNodeAddresses(addrs []netip.Addr, flags []NodeAddressFlags) error {
	vals := convert(flags, func(f NodeAddressFlags) uint8 { return uint8(f) })
	if err := writeBatch(m.nodeaddr, convert(addrs, addrToBPF), vals); err != nil {
		return fmt.Errorf("update node address map: %w", err)
	}
	return nil
}

func (m *BPFMaps) DeleteNodeAddresses(addrs []netip.Addr) error {
	if err := deleteBatch(m.nodeaddr, convert(addrs, addrToBPF)); err != nil {
		return fmt.Errorf("delete from node address map: %w", err)
	}
	return nil
}

func (m *BPFMaps) DumpNodeAddresses(fn func(netip.Addr, NodeAddressFlags)) error {
	var k uint32
	var v uint8
	it := m.nodeaddr.Iterate()
	for it.Next(&k, &v) {
		fn(addrFromBPF(k), NodeAddressFlags(v))
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("iterate node address map: %w", err)
	}
	return nil
}

// setDevices makes dlb_devices exactly these interface indexes.
func (m *BPFMaps) setDevices(want map[uint32]bool) error {
	var k uint32
	var v uint8
	var stale []uint32
	it := m.devices.Iterate()
	for it.Next(&k, &v) {
		if !want[k] {
			stale = append(stale, k)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("iterate devices map: %w", err)
	}
	for idx := range want {
		if err := m.devices.Put(idx, uint8(1)); err != nil {
			return fmt.Errorf("update devices map: %w", err)
		}
	}
	if err := deleteBatch(m.devices, stale); err != nil {
		return fmt.Errorf("delete from devices map: %w", err)
	}
	return nil
}

// NATEntries counts the north-south NAT entries (both directions).
func (m *BPFMaps) NATEntries() (int, error) {
	var k sockLBNat4Key
	var v sockLBNat4Val
	n := 0
	it := m.nat.Iterate()
	for it.Next(&k, &v) {
		n++
	}
	return n, it.Err()
}

// RevNATEntries counts the socket reverse-NAT entries (for tests and
// debugging).
func (m *BPFMaps) RevNATEntries() (int, error) {
	var k sockLBRevnat4Key
	var v sockLBRevnat4Val
	n := 0
	it := m.revnat.Iterate()
	for it.Next(&k, &v) {
		n++
	}
	return n, it.Err()
}

// ClearAffinity drops every affinity entry.
func (m *BPFMaps) ClearAffinity() error {
	var k sockLBAffinity4Key
	var v sockLBAffinity4Val
	var keys []sockLBAffinity4Key
	it := m.affinity.Iterate()
	for it.Next(&k, &v) {
		keys = append(keys, k)
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("iterate affinity map: %w", err)
	}
	return deleteBatch(m.affinity, keys)
}

//go:build linux

package datapath

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
)

// PinnedMaps are the Service maps an agent pinned under a bpf root,
// opened read-only (BPF_F_RDONLY): for reading what is programmed whether
// or not the agent runs (node-agent service list). They cannot be written.
type PinnedMaps struct {
	maps BPFMaps
}

// OpenPinned opens dlb_svc4, dlb_backends4 and dlb_nodeaddr4 pinned in
// bpfRoot/maps read-only, after checking that their key and value sizes
// are this build's (a pin of another version would read as garbage).
func OpenPinned(bpfRoot string) (*PinnedMaps, error) {
	spec, err := loadSockLB()
	if err != nil {
		return nil, fmt.Errorf("load BPF spec: %w", err)
	}
	p := &PinnedMaps{}
	for _, o := range []struct {
		name string
		dst  **ebpf.Map
	}{{"dlb_svc4", &p.maps.svc}, {"dlb_backends4", &p.maps.backends}, {"dlb_nodeaddr4", &p.maps.nodeaddr}} {
		m, err := openPinnedMap(spec.Maps[o.name], filepath.Join(mapsDir(bpfRoot), o.name))
		if err != nil {
			p.Close()
			return nil, err
		}
		*o.dst = m
	}
	return p, nil
}

func openPinnedMap(ms *ebpf.MapSpec, pin string) (*ebpf.Map, error) {
	m, err := ebpf.LoadPinnedMap(pin, &ebpf.LoadPinOptions{ReadOnly: true})
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("no pinned map %s (has node-agent run with this --bpf-root?): %w", pin, err)
	}
	if err != nil {
		return nil, fmt.Errorf("open pinned map %s: %w", pin, err)
	}
	if m.Type() != ms.Type || m.KeySize() != ms.KeySize || m.ValueSize() != ms.ValueSize {
		m.Close()
		return nil, fmt.Errorf("pinned map %s: %s with %d-byte keys and %d-byte values, this build reads %s with %d and %d (pinned by another version)",
			pin, m.Type(), m.KeySize(), m.ValueSize(), ms.Type, ms.KeySize, ms.ValueSize)
	}
	return m, nil
}

// DumpServices calls fn for each entry of dlb_svc4.
func (p *PinnedMaps) DumpServices(fn func(ServiceKey, ServiceValue)) error {
	return p.maps.DumpServices(fn)
}

// DumpBackends calls fn for each entry of dlb_backends4.
func (p *PinnedMaps) DumpBackends(fn func(BackendID, Backend)) error {
	return p.maps.DumpBackends(fn)
}

// DumpNodeAddresses calls fn for each entry of dlb_nodeaddr4.
func (p *PinnedMaps) DumpNodeAddresses(fn func(netip.Addr, NodeAddressFlags)) error {
	return p.maps.DumpNodeAddresses(fn)
}

// Close closes the maps; the pins stay.
func (p *PinnedMaps) Close() error {
	var errs []error
	for _, m := range []*ebpf.Map{p.maps.svc, p.maps.backends, p.maps.nodeaddr} {
		if m != nil {
			errs = append(errs, m.Close())
		}
	}
	return errors.Join(errs...)
}

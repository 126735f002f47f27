//go:build linux

package datapath

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/directlb/directlb/internal/privileged"
)

// TestDefaultMapSizes: DefaultMapSizes (what the flags' usage states) are
// the sizes in sock_lb.c.
func TestDefaultMapSizes(t *testing.T) {
	spec, err := loadSockLB()
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]uint32{
		"dlb_svc4": DefaultMapSizes.Services, "dlb_backends4": DefaultMapSizes.Backends,
		"dlb_affmatch4": DefaultMapSizes.Backends, "dlb_revnat4": DefaultMapSizes.RevNAT,
		"dlb_sticky4": DefaultMapSizes.Sticky,
	} {
		if got := spec.Maps[name].MaxEntries; got != want {
			t.Errorf("%s: sock_lb.c has %d entries, DefaultMapSizes says %d", name, got, want)
		}
	}
}

// mountBPFFS mounts a private bpffs for the test and returns a root in it.
func mountBPFFS(t *testing.T) string {
	t.Helper()
	bpffs := t.TempDir()
	if err := unix.Mount("bpffs", bpffs, "bpf", 0, "mode=0700"); err != nil {
		t.Fatalf("mount bpffs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(bpffs, unix.MNT_DETACH) })
	return filepath.Join(bpffs, "directlb")
}

// TestMapSizeChangeNeedsCleanup: a pinned map of another size is not
// reused; Load fails saying what to run, and leaves the pinned maps as
// they were (an earlier run's programs keep serving from them); after
// Cleanup the new size loads.
func TestMapSizeChangeNeedsCleanup(t *testing.T) {
	privileged.Require(t, "loads BPF programs and mounts a bpffs")
	privileged.RequireKernel(t, CheckKernel)
	root := mountBPFFS(t)
	defer Cleanup(root)
	dp, err := Load(Config{BPFRoot: root})
	if err != nil {
		t.Fatal(err)
	}
	lb := NewLoadBalancer(LoadBalancerConfig{Maps: dp.Maps})
	if _, err := lb.Apply([]Service{{Frontend: frontend(1, 53, UDP), Backends: nsAddrs}}, nil); err != nil {
		t.Fatal(err)
	}
	dp.Close()

	_, err = Load(Config{BPFRoot: root, MapSizes: MapSizes{Services: 4096}})
	if !errors.Is(err, ebpf.ErrMapIncompatible) {
		t.Fatalf("Load with another size: %v, want ErrMapIncompatible", err)
	}
	t.Logf("refused: %v", err)
	pin := filepath.Join(mapsDir(root), "dlb_svc4")
	for _, want := range []string{pin + " (MaxEntries: 262144 changed to 4096)", "(rm " + pin + ")", "node-agent --cleanup --bpf-root " + root} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if strings.Contains(err.Error(), "dlb_backends4") {
		t.Errorf("error names a map whose size did not change: %v", err)
	}
	pinned, err := ebpf.LoadPinnedMap(pin, &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if info, err := pinned.Info(); err != nil || info.MaxEntries != DefaultMapSizes.Services {
		t.Errorf("pinned dlb_svc4 after the refused Load: %+v %v, want %d entries", info, err, DefaultMapSizes.Services)
	}
	pinned.Close()

	// What the error says: remove that pin. The other maps are reused.
	if err := os.Remove(pin); err != nil {
		t.Fatal(err)
	}
	dp, err = Load(Config{BPFRoot: root, MapSizes: MapSizes{Services: 4096}})
	if err != nil {
		t.Fatalf("Load after removing the pin: %v", err)
	}
	defer dp.Close()
	if got := dp.MapCapacities()["dlb_svc4"]; got != 4096 {
		t.Errorf("dlb_svc4 after removing its pin: %d entries, want 4096", got)
	}
	n := 0
	if err := dp.Maps.DumpBackends(func(BackendID, Backend) { n++ }); err != nil || n != len(nsAddrs) {
		t.Errorf("backends kept in the reused pinned map: %d (%v), want %d", n, err, len(nsAddrs))
	}
}

package ipam_test

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/directlb/directlb/pkg/cni/ipam"
)

var t0 = time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)

func ips(s ...string) []netip.Addr {
	var out []netip.Addr
	for _, a := range s {
		out = append(out, netip.MustParseAddr(a))
	}
	return out
}

func holder(pod string) ipam.Holder {
	return ipam.Holder{ContainerID: "c-" + pod, IfName: "eth0", Namespace: "default", Pod: pod, Veth: "veth-" + pod}
}

// poolOf is a one-ENI pool with addrs, each free ("10.0.0.1"), held
// ("10.0.0.1=pod") or freed at t0 plus some seconds ("10.0.0.1@5").
func poolOf(addrs ...string) *ipam.Pool {
	e := ipam.ENI{ID: "eni-0", MAC: "02:00:00:00:00:00"}
	for _, s := range addrs {
		a := ipam.Address{}
		if ip, pod, ok := strings.Cut(s, "="); ok {
			h := holder(pod)
			a.IP, a.Holder = netip.MustParseAddr(ip), &h
		} else if ip, sec, ok := strings.Cut(s, "@"); ok {
			d, _ := time.ParseDuration(sec + "s")
			a.IP, a.FreedAt = netip.MustParseAddr(ip), t0.Add(d)
		} else {
			a.IP = netip.MustParseAddr(s)
		}
		e.Addresses = append(e.Addresses, a)
	}
	return &ipam.Pool{Version: ipam.PoolVersion, InstanceID: "node-1", ENIs: []ipam.ENI{e}}
}

func TestTake(t *testing.T) {
	for _, tc := range []struct {
		name string
		pool *ipam.Pool
		want string // "" when nothing is free
	}{
		{name: "lowest never-held first", pool: poolOf("10.0.0.3", "10.0.0.1", "10.0.0.2=a"), want: "10.0.0.1"},
		{name: "never held before freed", pool: poolOf("10.0.0.1@1", "10.0.0.9"), want: "10.0.0.9"},
		{name: "freed longest ago first", pool: poolOf("10.0.0.1@9", "10.0.0.2@3", "10.0.0.3@5"), want: "10.0.0.2"},
		{name: "none free", pool: poolOf("10.0.0.1=a"), want: ""},
		{name: "empty", pool: poolOf(), want: ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			al, ok := tc.pool.Take("eni-0", holder("p"))
			got := ""
			if ok {
				got = al.IP.String()
				if back, _ := tc.pool.Lookup(holder("p")); back != al {
					t.Errorf("Lookup after Take = %+v, want %+v", back, al)
				}
			}
			if got != tc.want {
				t.Errorf("Take = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestExcess(t *testing.T) {
	for _, tc := range []struct {
		name  string
		pool  *ipam.Pool
		warm  int
		first []netip.Addr
		want  []netip.Addr
	}{
		{name: "at warm: nothing", pool: poolOf("10.0.0.1", "10.0.0.2=a"), warm: 1},
		{name: "below warm: nothing", pool: poolOf("10.0.0.1=a"), warm: 2},
		{name: "warm 0 gives back all free", pool: poolOf("10.0.0.1", "10.0.0.2=a", "10.0.0.3@1"), warm: 0, want: ips("10.0.0.1", "10.0.0.3")},
		{
			name: "just freed goes first, even if an older one is also beyond warm",
			pool: poolOf("10.0.0.1", "10.0.0.2@1", "10.0.0.3@2"), warm: 2, first: ips("10.0.0.2"),
			want: ips("10.0.0.2"),
		},
		{
			name: "then the most recently freed, never-held kept longest",
			pool: poolOf("10.0.0.1", "10.0.0.2@1", "10.0.0.3@2", "10.0.0.4@3"), warm: 1, first: ips("10.0.0.2"),
			want: ips("10.0.0.2", "10.0.0.3", "10.0.0.4"),
		},
		{name: "ties: the highest first", pool: poolOf("10.0.0.1", "10.0.0.2", "10.0.0.3"), warm: 1, want: ips("10.0.0.2", "10.0.0.3")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.pool.Excess("eni-0", tc.warm, tc.first)
			if diff := cmp.Diff(tc.want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
				t.Errorf("Excess (-want +got):\n%s", diff)
			}
		})
	}
}

func TestReleaseAndAdopt(t *testing.T) {
	p := poolOf("10.0.0.1=a", "10.0.0.2")
	p.ENIs[0].Addresses[1].Holder = &ipam.Holder{Veth: "dlb00000001"} // recovered from the node's routes
	if al, ok := p.Release(holder("nobody"), t0); ok {
		t.Errorf("Release of an unknown holder freed %+v", al)
	}
	// A holder is found by container and interface; a recovered one by veth.
	if _, ok := p.Lookup(ipam.Holder{ContainerID: "c-a", IfName: "eth1"}); ok {
		t.Error("Lookup matched another interface of the container")
	}
	k := ipam.Holder{ContainerID: "c-x", IfName: "eth0", Pod: "x", Veth: "dlb00000001"}
	if al, ok := p.Lookup(k); !ok || al.IP != netip.MustParseAddr("10.0.0.2") {
		t.Errorf("Lookup of the recovered address by veth = %+v %v", al, ok)
	}
	if al, ok := p.Adopt(k); !ok || al.IP != netip.MustParseAddr("10.0.0.2") {
		t.Fatalf("Adopt = %+v %v", al, ok)
	}
	if _, ok := p.Adopt(k); ok {
		t.Error("Adopt twice: the second found a recovered holder")
	}
	al, ok := p.Release(holder("a"), t0)
	if !ok || al.IP != netip.MustParseAddr("10.0.0.1") || p.Free("eni-0") != 1 {
		t.Fatalf("Release = %+v %v, free %d", al, ok, p.Free("eni-0"))
	}
	if got := p.ENIs[0].Addresses[0].FreedAt; !got.Equal(t0) {
		t.Errorf("FreedAt = %v, want %v", got, t0)
	}
}

func TestStore(t *testing.T) {
	s := ipam.Store{Dir: filepath.Join(t.TempDir(), "node-1")}
	p, err := s.Load()
	if err != nil || len(p.ENIs) != 0 || p.Version != ipam.PoolVersion {
		t.Fatalf("Load of a missing pool = %+v, %v; want an empty pool", p, err)
	}
	unlock, err := s.Lock(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	want := poolOf("10.0.0.1=a", "10.0.0.2@3", "10.0.0.3")
	if err := s.Save(want); err != nil {
		t.Fatal(err)
	}
	unlock()
	got, err := s.Load()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("Load after Save (-want +got):\n%s", diff)
	}
	ents, _ := os.ReadDir(s.Dir)
	for _, e := range ents {
		if strings.Contains(e.Name(), ".tmp") {
			t.Errorf("temporary file left: %s", e.Name())
		}
	}
	for name, body := range map[string]string{
		"garbage":       "{",
		"unknown field": `{"version":1,"enis":[],"extra":1}`,
		"other version": `{"version":2,"enis":[]}`,
	} {
		if err := os.WriteFile(s.Path(), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Load(); err == nil || !strings.Contains(err.Error(), s.Path()) {
			t.Errorf("%s: Load = %v; want an error naming the file", name, err)
		}
	}
}

func TestLockWaitsAndGivesUp(t *testing.T) {
	s := ipam.Store{Dir: t.TempDir()}
	unlock, err := s.Lock(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	ctx, cancel := contextWithTimeout(t, 50*time.Millisecond)
	defer cancel()
	if _, err := s.Lock(ctx); err == nil || !strings.Contains(err.Error(), "deadline") {
		t.Errorf("second Lock while held = %v; want it to wait and give up with ctx", err)
	}
}

package datapath

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

func fe(s string, proto Protocol) Frontend {
	a := ap(s)
	return Frontend{Addr: a.Addr(), Port: a.Port(), Proto: proto}
}

// programmedBackends reads the fake maps back into frontend -> sorted
// backend addresses, the way a lookup would see them.
func programmedBackends(t *testing.T, f *FakeMaps) map[Frontend][]string {
	t.Helper()
	out := map[Frontend][]string{}
	for k, v := range f.Services {
		if k.Slot != 0 {
			continue
		}
		bs := []string{}
		for s := uint16(1); s <= v.Count; s++ {
			sv := f.Services[ServiceKey{Frontend: k.Frontend, Slot: s}]
			b := f.Backends[sv.BackendID]
			bs = append(bs, netip.AddrPortFrom(b.Addr, b.Port).String())
		}
		slices.Sort(bs)
		out[k.Frontend] = bs
	}
	return out
}

// transitionA and transitionB are the frontends of
// loadBalancerTransitions.
var (
	transitionA = fe("10.96.0.1:80", TCP)
	transitionB = fe("10.96.0.2:53", UDP)
)

// loadBalancerTransitions are TestLoadBalancerTransitions' steps, applied in
// this order to one LoadBalancer.
var loadBalancerTransitions = []struct {
	name    string
	upserts []Service
	deletes []Frontend
	want    map[Frontend][]string
}{
	{
		name:    "add two services",
		upserts: []Service{{Frontend: transitionA, Backends: []netip.AddrPort{ap("10.0.0.1:8080"), ap("10.0.0.2:8080")}}, {Frontend: transitionB, Backends: []netip.AddrPort{ap("10.0.0.1:53")}}},
		want:    map[Frontend][]string{transitionA: {"10.0.0.1:8080", "10.0.0.2:8080"}, transitionB: {"10.0.0.1:53"}},
	},
	{
		name:    "grow",
		upserts: []Service{{Frontend: transitionA, Backends: []netip.AddrPort{ap("10.0.0.1:8080"), ap("10.0.0.2:8080"), ap("10.0.0.3:8080"), ap("10.0.0.4:8080")}}},
		want:    map[Frontend][]string{transitionA: {"10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080", "10.0.0.4:8080"}, transitionB: {"10.0.0.1:53"}},
	},
	{
		name:    "shrink from the middle",
		upserts: []Service{{Frontend: transitionA, Backends: []netip.AddrPort{ap("10.0.0.1:8080"), ap("10.0.0.4:8080")}}},
		want:    map[Frontend][]string{transitionA: {"10.0.0.1:8080", "10.0.0.4:8080"}, transitionB: {"10.0.0.1:53"}},
	},
	{
		name:    "replace all and dedupe",
		upserts: []Service{{Frontend: transitionA, Backends: []netip.AddrPort{ap("10.0.0.9:8080"), ap("10.0.0.9:8080"), ap("10.0.0.8:8080"), ap("10.0.0.7:8080")}}},
		want:    map[Frontend][]string{transitionA: {"10.0.0.7:8080", "10.0.0.8:8080", "10.0.0.9:8080"}, transitionB: {"10.0.0.1:53"}},
	},
	{
		name:    "scale to zero keeps a refusing master",
		upserts: []Service{{Frontend: transitionA}},
		want:    map[Frontend][]string{transitionA: {}, transitionB: {"10.0.0.1:53"}},
	},
	{
		name:    "affinity on",
		upserts: []Service{{Frontend: transitionA, Backends: []netip.AddrPort{ap("10.0.0.1:8080")}, AffinityTimeout: 3 * time.Hour}},
		want:    map[Frontend][]string{transitionA: {"10.0.0.1:8080"}, transitionB: {"10.0.0.1:53"}},
	},
	{
		name:    "delete",
		deletes: []Frontend{transitionB, fe("10.96.9.9:1", TCP)},
		want:    map[Frontend][]string{transitionA: {"10.0.0.1:8080"}},
	},
}

func TestLoadBalancerTransitions(t *testing.T) {
	maps := NewFakeMaps()
	var inconsistent error
	maps.AfterWrite = func(f *FakeMaps) {
		if err := f.Consistent(); err != nil && inconsistent == nil {
			inconsistent = err
		}
	}
	lb := NewLoadBalancer(LoadBalancerConfig{Maps: maps})
	for _, s := range loadBalancerTransitions {
		if _, err := lb.Apply(s.upserts, s.deletes); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if inconsistent != nil {
			t.Fatalf("%s: a lookup could see a half-written service: %v", s.name, inconsistent)
		}
		if diff := cmp.Diff(s.want, programmedBackends(t, maps)); diff != "" {
			t.Errorf("%s (-want +got):\n%s", s.name, diff)
		}
		// Backends nobody uses are gone.
		used := map[BackendID]bool{}
		for k, v := range maps.Services {
			if k.Slot != 0 {
				used[v.BackendID] = true
			}
		}
		for id := range maps.Backends {
			if !used[id] {
				t.Errorf("%s: backend %d left in the map unused", s.name, id)
			}
		}
	}
	m := maps.Services[ServiceKey{Frontend: transitionA}]
	if diff := cmp.Diff(ServiceValue{ServiceID: m.ServiceID, AffinityTimeout: 3 * 3600, Count: 1, Flags: FlagAffinity}, m); diff != "" {
		t.Errorf("affinity master (-want +got):\n%s", diff)
	}
	if len(maps.Matches) != 1 {
		t.Errorf("affinity matches = %v, want one", maps.Matches)
	}
}

func TestLoadBalancerOneEndpointChangeIsSmall(t *testing.T) {
	maps := NewFakeMaps()
	lb := NewLoadBalancer(LoadBalancerConfig{Maps: maps})
	var svcs []Service
	for i := range 100 {
		s := Service{Frontend: fe(fmt.Sprintf("10.96.1.%d:80", i), TCP)}
		for j := range 10 {
			s.Backends = append(s.Backends, ap(fmt.Sprintf("10.1.%d.%d:8080", i, j)))
		}
		svcs = append(svcs, s)
	}
	if _, err := lb.Sync(svcs); err != nil {
		t.Fatal(err)
	}
	// The same desired state again costs nothing.
	st, err := lb.Sync(svcs)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(ApplyStats{}, st); diff != "" {
		t.Errorf("no-op sync (-want +got):\n%s", diff)
	}
	// Replacing one endpoint: a new backend, one slot, the old backend gone.
	svcs[7].Backends[3] = ap("10.2.0.1:8080")
	st, err = lb.Sync(svcs)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(ApplyStats{ServicesChanged: 1, Writes: 3}, st); diff != "" {
		t.Errorf("one endpoint replaced (-want +got):\n%s", diff)
	}
	// Order in the desired list does not matter.
	slices.Reverse(svcs[8].Backends)
	if st, _ := lb.Sync(svcs); st.Writes != 0 {
		t.Errorf("reordered backends caused %d writes", st.Writes)
	}
}

func TestLoadBalancerSharesBackends(t *testing.T) {
	maps := NewFakeMaps()
	lb := NewLoadBalancer(LoadBalancerConfig{Maps: maps})
	shared := []netip.AddrPort{ap("10.0.0.1:80")}
	a, b := fe("10.96.0.1:80", TCP), fe("10.96.0.2:80", TCP)
	if _, err := lb.Apply([]Service{{Frontend: a, Backends: shared}, {Frontend: b, Backends: shared}}, nil); err != nil {
		t.Fatal(err)
	}
	if len(maps.Backends) != 1 {
		t.Fatalf("backends = %v, want one shared", maps.Backends)
	}
	if _, err := lb.Apply(nil, []Frontend{a}); err != nil {
		t.Fatal(err)
	}
	if len(maps.Backends) != 1 {
		t.Fatalf("deleting one user removed the shared backend: %v", maps.Backends)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	got, err := maps.Resolve(b, rng)
	if err != nil || got.Addr != shared[0].Addr() {
		t.Errorf("resolve %s = %v, %v", b, got, err)
	}
}

func TestLoadBalancerRecoversFromFailedWrite(t *testing.T) {
	for failAt := 1; failAt <= 12; failAt++ {
		t.Run(fmt.Sprint(failAt), func(t *testing.T) {
			maps := NewFakeMaps()
			lb := NewLoadBalancer(LoadBalancerConfig{Maps: maps})
			a := fe("10.96.0.1:80", TCP)
			first := []Service{{Frontend: a, Backends: []netip.AddrPort{ap("10.0.0.1:80"), ap("10.0.0.2:80"), ap("10.0.0.3:80")}}}
			if _, err := lb.Sync(first); err != nil {
				t.Fatal(err)
			}
			want := []Service{{Frontend: a, Backends: []netip.AddrPort{ap("10.0.0.3:80"), ap("10.0.0.4:80")}, AffinityTimeout: time.Second},
				{Frontend: fe("10.96.0.2:80", TCP), Backends: []netip.AddrPort{ap("10.0.0.5:80")}}}
			maps.FailAfter = maps.Writes + failAt
			if _, err := lb.Sync(want); err == nil && maps.Writes >= maps.FailAfter {
				t.Fatal("injected failure not reported")
			}
			if err := maps.Consistent(); err != nil {
				t.Fatalf("after a failed write: %v", err)
			}
			maps.FailAfter = 0
			if _, err := lb.Sync(want); err != nil {
				t.Fatal(err)
			}
			wantMap := map[Frontend][]string{a: {"10.0.0.3:80", "10.0.0.4:80"}, fe("10.96.0.2:80", TCP): {"10.0.0.5:80"}}
			if diff := cmp.Diff(wantMap, programmedBackends(t, maps)); diff != "" {
				t.Errorf("after retry (-want +got):\n%s", diff)
			}
			// A fresh LoadBalancer restoring from these maps agrees.
			lb2 := NewLoadBalancer(LoadBalancerConfig{Maps: maps})
			rs, err := lb2.Restore()
			if err != nil {
				t.Fatal(err)
			}
			if rs.Services != 2 {
				t.Errorf("restored %d services, want 2", rs.Services)
			}
			if st, _ := lb2.Sync(want); st.Writes != 0 {
				t.Errorf("restored state differs: sync wrote %d entries", st.Writes)
			}
		})
	}
}

func TestAssignSlots(t *testing.T) {
	cases := []struct {
		name     string
		old, ids []BackendID
		want     []BackendID
	}{
		{"fresh", nil, []BackendID{1, 2}, []BackendID{1, 2}},
		{"keep positions", []BackendID{1, 2, 3}, []BackendID{3, 2, 1}, []BackendID{1, 2, 3}},
		{"new fills hole", []BackendID{1, 2, 3}, []BackendID{1, 4, 3}, []BackendID{1, 4, 3}},
		{"tail fills hole", []BackendID{1, 2, 3, 4}, []BackendID{1, 3, 4}, []BackendID{1, 4, 3}},
		{"all gone", []BackendID{1, 2}, nil, []BackendID{}},
		{"grow", []BackendID{1}, []BackendID{2, 1, 3}, []BackendID{1, 2, 3}},
	}
	for _, c := range cases {
		want := newSet[BackendID](len(c.ids))
		for _, id := range c.ids {
			want.add(id)
		}
		got := assignSlots(c.old, c.ids, want)
		if diff := cmp.Diff(c.want, got); diff != "" {
			t.Errorf("%s (-want +got):\n%s", c.name, diff)
		}
	}
}

func TestVerdictsWithoutBackends(t *testing.T) {
	f := NewFakeMaps()
	f.AfterWrite = func(f *FakeMaps) {
		if err := f.Consistent(); err != nil {
			t.Fatal(err)
		}
	}
	lb := NewLoadBalancer(LoadBalancerConfig{Maps: f})
	ip := netip.MustParseAddr("10.96.0.1")
	served := Frontend{Addr: ip, Port: 80, Proto: TCP}
	local := Frontend{Addr: ip, Port: 81, Proto: TCP}
	empty := Frontend{Addr: ip, Port: 82, Proto: UDP}
	if _, err := lb.Apply([]Service{
		{Frontend: served, Backends: []netip.AddrPort{ap("10.0.0.1:8080")}},
		{Frontend: local, Drop: true},
		{Frontend: empty},
		{Frontend: AddressFrontend(ip)},
	}, nil); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for _, c := range []struct {
		fe   Frontend
		want error
	}{
		{served, nil},
		{local, ErrDropped},
		{empty, ErrRefused},
		{Frontend{Addr: ip, Port: 80, Proto: UDP}, ErrRefused}, // not a port of the ClusterIP
		{Frontend{Addr: ip, Port: 9999, Proto: TCP}, ErrRefused},
		{Frontend{Addr: netip.MustParseAddr("10.96.0.2"), Port: 80, Proto: TCP}, ErrNoService},
	} {
		if _, err := f.Resolve(c.fe, rng); !errors.Is(err, c.want) {
			t.Errorf("resolve %s: %v, want %v", c.fe, err, c.want)
		}
	}

	// Endpoints arrive on this node: the drop flag goes with them.
	if _, err := lb.Apply([]Service{{Frontend: local, Drop: true, Backends: []netip.AddrPort{ap("10.0.0.2:8080")}}}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Resolve(local, rng); err != nil {
		t.Errorf("resolve %s after endpoints arrived: %v", local, err)
	}
	if m := f.Services[ServiceKey{Frontend: local}]; m.Flags&FlagDrop != 0 {
		t.Errorf("master of %s keeps FlagDrop with a backend: %+v", local, m)
	}

	// Deleting the Service's frontends removes the address entry too.
	if _, err := lb.Sync(nil); err != nil {
		t.Fatal(err)
	}
	if len(f.Services) != 0 || len(f.Backends) != 0 {
		t.Errorf("after Sync(nil): %v %v", f.Services, f.Backends)
	}

	for _, bad := range []Service{
		{Frontend: Frontend{Addr: ip, Port: 0, Proto: TCP}},
		{Frontend: Frontend{Addr: ip, Port: 80}},
		{Frontend: AddressFrontend(ip), Backends: []netip.AddrPort{ap("10.0.0.1:80")}},
	} {
		if _, err := lb.Apply([]Service{bad}, nil); err == nil {
			t.Errorf("apply %+v: no error", bad)
		}
	}
}

// TestNodePortFrontends: a NodePort frontend resolves on every node
// address (and only there), next to a ClusterIP on the same port; its
// scope survives a restore, as do the node addresses; SetNodeAddresses
// writes only what differs.
func TestNodePortFrontends(t *testing.T) {
	maps := NewFakeMaps()
	lb := NewLoadBalancer(LoadBalancerConfig{Maps: maps})
	np := NodePortFrontend(30080, TCP)
	cip := fe("10.96.0.1:30080", TCP)
	if _, err := lb.Apply([]Service{
		{Frontend: np, Backends: []netip.AddrPort{ap("10.0.0.1:8080")}},
		{Frontend: cip, Backends: []netip.AddrPort{ap("10.0.0.2:8080")}},
	}, nil); err != nil {
		t.Fatal(err)
	}
	self, other := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	n, err := lb.SetNodeAddresses(map[netip.Addr]NodeAddressFlags{self: NodeAddressLocal, other: NodeAddressRemote})
	if err != nil || n != 2 {
		t.Fatalf("SetNodeAddresses = %d, %v; want 2 writes", n, err)
	}
	if n, err := lb.SetNodeAddresses(map[netip.Addr]NodeAddressFlags{self: NodeAddressLocal, other: NodeAddressRemote}); err != nil || n != 0 {
		t.Fatalf("SetNodeAddresses again = %d, %v; want no writes", n, err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	resolve := func(addr string) string {
		b, err := maps.Resolve(fe(addr, TCP), rng)
		if err != nil {
			return err.Error()
		}
		return netip.AddrPortFrom(b.Addr, b.Port).String()
	}
	want := map[string]string{
		"192.0.2.1:30080":  "10.0.0.1:8080",
		"192.0.2.2:30080":  "10.0.0.1:8080",
		"192.0.2.1:22":     ErrNoService.Error(),
		"192.0.2.3:30080":  ErrNoService.Error(),
		"10.96.0.1:30080":  "10.0.0.2:8080",
		"0.0.0.0:30080":    ErrNoService.Error(),
		"198.51.100.1:300": ErrNoService.Error(),
	}
	check := func(when string) {
		t.Helper()
		got := map[string]string{}
		for k := range want {
			got[k] = resolve(k)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("%s (-want +got):\n%s", when, diff)
		}
	}
	check("programmed")

	restarted := NewLoadBalancer(LoadBalancerConfig{Maps: maps})
	st, err := restarted.Restore()
	if err != nil || st.Removed != 0 || st.Services != 2 {
		t.Fatalf("restore = %+v, %v; want 2 services, nothing removed", st, err)
	}
	if diff := cmp.Diff(map[netip.Addr]NodeAddressFlags{self: NodeAddressLocal, other: NodeAddressRemote}, restarted.NodeAddresses()); diff != "" {
		t.Errorf("restored node addresses (-want +got):\n%s", diff)
	}
	before, _ := lb.Programmed(np)
	after, ok := restarted.Programmed(np)
	if !ok || after.ID != before.ID {
		t.Errorf("restored NodePort %v (found %v), want ID %d", after, ok, before.ID)
	}
	check("restored")

	if n, err := restarted.SetNodeAddresses(map[netip.Addr]NodeAddressFlags{self: NodeAddressLocal}); err != nil || n != 1 {
		t.Fatalf("SetNodeAddresses(self) = %d, %v; want 1 write", n, err)
	}
	want["192.0.2.2:30080"] = ErrNoService.Error()
	check("other node gone")

	if _, err := restarted.Apply([]Service{{Frontend: Frontend{Addr: self, Port: 1, Proto: TCP, Scope: ScopeNodePort}}}, nil); err == nil {
		t.Error("a NodePort frontend with an address was accepted")
	}
	if _, err := restarted.SetNodeAddresses(map[netip.Addr]NodeAddressFlags{netip.IPv4Unspecified(): NodeAddressLocal}); err == nil {
		t.Error("0.0.0.0 accepted as a node address")
	}
}

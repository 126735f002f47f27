package kubelet

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var twoRanges = []PodRange{
	{ENI: 0, Prefix: netip.MustParsePrefix("10.100.1.64/26")},
	{ENI: 1, Prefix: netip.MustParsePrefix("10.100.1.128/26")},
}

func a(s string) netip.Addr { return netip.MustParseAddr(s) }

func TestAllocatorSpreadsWorkloads(t *testing.T) {
	type req struct{ owner, group string }
	cases := []struct {
		name    string
		first   int
		reserve []req // held before, in order, addresses from allocation
		reqs    []req
		want    []Allocation
	}{
		{
			name: "a workload alternates, starting at the node's first ENI",
			reqs: []req{{"p1", "rs"}, {"p2", "rs"}, {"p3", "rs"}, {"p4", "rs"}},
			want: []Allocation{
				{a("10.100.1.64"), 0}, {a("10.100.1.128"), 1},
				{a("10.100.1.65"), 0}, {a("10.100.1.129"), 1},
			},
		},
		{
			name:  "second node starts on ENI 1",
			first: 1,
			reqs:  []req{{"p1", "rs"}, {"p2", "rs"}},
			want:  []Allocation{{a("10.100.1.128"), 1}, {a("10.100.1.64"), 0}},
		},
		{
			name:    "other workloads do not move a new workload's first pod",
			first:   1,
			reserve: []req{{"o1", "other"}, {"o2", "other"}, {"o3", "other"}},
			reqs:    []req{{"p1", "rs"}, {"p2", "rs"}},
			// other took .128, .64, .129; rs still starts on ENI 1.
			want: []Allocation{{a("10.100.1.130"), 1}, {a("10.100.1.65"), 0}},
		},
		{
			name: "same owner gets the same address",
			reqs: []req{{"p1", ""}, {"p1", ""}},
			want: []Allocation{{a("10.100.1.64"), 0}, {a("10.100.1.64"), 0}},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			al := NewAllocator(twoRanges, c.first)
			for _, r := range c.reserve {
				if _, err := al.Allocate(r.owner, r.group, netip.Addr{}); err != nil {
					t.Fatal(err)
				}
			}
			var got []Allocation
			for _, r := range c.reqs {
				g, err := al.Allocate(r.owner, r.group, netip.Addr{})
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, g)
			}
			if diff := cmp.Diff(c.want, got, cmp.Comparer(func(x, y netip.Addr) bool { return x == y })); diff != "" {
				t.Errorf("allocations (-want +got):\n%s", diff)
			}
		})
	}
}

func TestAllocatorNeverTwice(t *testing.T) {
	al := NewAllocator(twoRanges, 0)
	seen := map[netip.Addr]string{}
	for i := range 128 {
		owner := string(rune('A'+i%26)) + string(rune('a'+i/26))
		g, err := al.Allocate(owner, "", netip.Addr{})
		if err != nil {
			t.Fatalf("allocation %d: %v", i, err)
		}
		if o, dup := seen[g.Addr]; dup {
			t.Fatalf("%s given to %s and %s", g.Addr, o, owner)
		}
		seen[g.Addr] = owner
	}
	if _, err := al.Allocate("one-too-many", "", netip.Addr{}); err == nil {
		t.Error("allocation beyond 2×/26: no error")
	}
	// A released address can be given again, and a preferred one is honoured.
	al.Release("Aa")
	g, err := al.Allocate("new", "", a("10.100.1.64"))
	if err != nil || g.Addr != a("10.100.1.64") {
		t.Errorf("allocate preferred released address: %v %v", g, err)
	}
}

func TestAllocatorReserveConflicts(t *testing.T) {
	al := NewAllocator(twoRanges, 0)
	if _, err := al.Reserve("p1", "", a("10.100.1.70")); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		owner, addr string
		ok          bool
	}{
		{"p1", "10.100.1.70", true},  // idempotent
		{"p2", "10.100.1.70", false}, // held by p1
		{"p1", "10.100.1.71", false}, // p1 holds another
		{"p3", "10.100.2.70", false}, // outside the ranges
		{"p3", "10.100.1.130", true}, // ENI 1
	}
	for _, c := range cases {
		_, err := al.Reserve(c.owner, "", a(c.addr))
		if (err == nil) != c.ok {
			t.Errorf("Reserve(%s, %s) = %v, want ok=%v", c.owner, c.addr, err, c.ok)
		}
	}
	// A preferred address that is held is not given to another owner.
	g, err := al.Allocate("p4", "", a("10.100.1.70"))
	if err != nil || g.Addr == a("10.100.1.70") {
		t.Errorf("Allocate with held preference = %v, %v", g, err)
	}
}

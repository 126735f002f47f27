package datapath

import (
	"sync/atomic"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestTCPCandidates: a new TCP flow is dialled to the one target picked
// (an NLB resets the client if it refuses), or with fallback to the picked
// one first and then every other healthy target; with none healthy, the
// registered ones (fail open).
func TestTCPCandidates(t *testing.T) {
	be := func(addr string) backend { return backend{addr: addr} }
	healthy := &backends{healthy: []backend{be("a"), be("b"), be("c")}, active: []backend{be("a"), be("b"), be("c"), be("d")}}
	none := &backends{active: []backend{be("d"), be("e")}}
	addrs := func(bs []backend) []string {
		var out []string
		for _, b := range bs {
			out = append(out, b.addr)
		}
		return out
	}
	tests := []struct {
		name     string
		set      *backends
		hash     uint32
		fallback bool
		want     []string
	}{
		{"no fallback: the picked target only", healthy, 1, false, []string{"b"}},
		{"fallback: picked, then the others", healthy, 1, true, []string{"b", "c", "a"}},
		{"fail open, no fallback", none, 0, false, []string{"d"}},
		{"fail open, fallback", none, 0, true, []string{"d", "e"}},
		{"no targets", &backends{}, 0, true, nil},
	}
	for _, tt := range tests {
		var rr atomic.Uint64
		got := addrs(tcpCandidates(tt.set.pick(tt.hash, &rr, false), tt.fallback))
		if diff := cmp.Diff(tt.want, got); diff != "" {
			t.Errorf("%s (-want +got):\n%s", tt.name, diff)
		}
	}
}

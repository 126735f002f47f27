package cloud

import (
	"errors"
	"fmt"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestInBatches(t *testing.T) {
	targets := func(n int) []Target {
		out := make([]Target, n)
		for i := range out {
			out[i] = Target{IP: fmt.Sprintf("10.0.0.%d", i), Port: 80}
		}
		return out
	}
	boom := errors.New("boom")
	for _, tc := range []struct {
		name      string
		n, failAt int // failAt: the call that fails, 0 = none
		wantSizes []int
		wantDone  int // -1: no error
	}{
		{name: "none", n: 0, wantDone: -1},
		{name: "one batch", n: 2, wantSizes: []int{2}, wantDone: -1},
		{name: "exactly two", n: 4, wantSizes: []int{2, 2}, wantDone: -1},
		{name: "a short last batch", n: 5, wantSizes: []int{2, 2, 1}, wantDone: -1},
		{name: "second call fails: stop, two done", n: 5, failAt: 2, wantSizes: []int{2, 2}, wantDone: 2},
		{name: "first call fails: none done", n: 5, failAt: 1, wantSizes: []int{2}, wantDone: 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var sizes []int
			all := targets(tc.n)
			var seen []Target
			err := InBatches(all, 2, func(b []Target) error {
				sizes = append(sizes, len(b))
				if len(sizes) == tc.failAt {
					return boom
				}
				seen = append(seen, b...)
				return nil
			})
			if diff := cmp.Diff(tc.wantSizes, sizes); diff != "" {
				t.Errorf("batch sizes (-want +got):\n%s", diff)
			}
			var be *BatchError
			switch {
			case tc.wantDone < 0 && err != nil:
				t.Fatalf("error %v, want none", err)
			case tc.wantDone < 0:
				if diff := cmp.Diff(all, seen); tc.n > 0 && diff != "" {
					t.Errorf("targets (-want +got):\n%s", diff)
				}
			case !errors.As(err, &be) || !errors.Is(err, boom):
				t.Fatalf("error %v, want a *BatchError wrapping boom", err)
			case be.Done != tc.wantDone:
				t.Errorf("Done %d, want %d", be.Done, tc.wantDone)
			}
		})
	}
}

package faults

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestDecide(t *testing.T) {
	now := time.Now()
	for _, tc := range []struct {
		name string
		spec Spec
		n    int
		want []Outcome
	}{
		{"nothing", Spec{}, 3, []Outcome{Pass, Pass, Pass}},
		{"half throttled, first fails", Spec{Rules: map[string]Rule{"A": {Throttle: 0.5}}}, 4, []Outcome{Throttled, Pass, Throttled, Pass}},
		{"a third 5xx", Spec{Rules: map[string]Rule{"A": {ServerError: 1.0 / 3}}}, 6, []Outcome{ServerError, Pass, Pass, ServerError, Pass, Pass}},
		{"wildcard", Spec{Rules: map[string]Rule{Any: {Throttle: 1}}}, 2, []Outcome{Throttled, Throttled}},
		{"own rule beats wildcard", Spec{Rules: map[string]Rule{Any: {Throttle: 1}, "A": {}}}, 2, []Outcome{Pass, Pass}},
		{"bucket of 2, no refill in the instant", Spec{Limits: map[string]Limit{"A": {Rate: 0.001, Burst: 2}}}, 3, []Outcome{Pass, Pass, RateLimited}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := New(tc.spec)
			var got []Outcome
			for range tc.n {
				o, _ := in.Decide("A", now)
				got = append(got, o)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("outcomes (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseAndValidate(t *testing.T) {
	rules, err := ParseRules(map[string]string{"A": "0.25"}, map[string]string{"*": "0.1"}, map[string]string{"A": "150ms"})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]Rule{"A": {Throttle: 0.25, Latency: Duration(150 * time.Millisecond)}, "*": {ServerError: 0.1}}
	if diff := cmp.Diff(want, rules); diff != "" {
		t.Errorf("rules (-want +got):\n%s", diff)
	}
	limits, err := ParseLimits(map[string]string{"RegisterTargets": "4:20"})
	if err != nil || limits["RegisterTargets"] != (Limit{Rate: 4, Burst: 20}) {
		t.Errorf("limits %v %v", limits, err)
	}
	for _, bad := range []Spec{
		{Rules: map[string]Rule{"A": {Throttle: 0.7, ServerError: 0.7}}},
		{Rules: map[string]Rule{"A": {Throttle: -1}}},
		{Limits: map[string]Limit{"A": {Rate: 0, Burst: 1}}},
	} {
		if bad.Validate() == nil {
			t.Errorf("%+v: valid, want an error", bad)
		}
	}
	if _, err := ParseLimits(map[string]string{"A": "4"}); err == nil {
		t.Error(`"4": no error, want rate:burst`)
	}
}

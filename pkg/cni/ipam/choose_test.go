package ipam_test

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/directlb/directlb/pkg/cni/ipam"
)

func TestGroup(t *testing.T) {
	for _, tc := range []struct{ ns, pod, want string }{
		{"default", "web-7c9f8b5d4-x2x7q", "default/web-7c9f8b5d4"}, // Deployment → ReplicaSet
		{"default", "web-7c9f8b5d4-q8m2n", "default/web-7c9f8b5d4"},
		{"kube-system", "agent-x2x7q", "kube-system/agent"}, // DaemonSet
		{"db", "db-0", "db/db"},                             // StatefulSet
		{"db", "db-12", "db/db"},
		{"other", "web-7c9f8b5d4-x2x7q", "other/web-7c9f8b5d4"}, // the namespace counts
		{"default", "echo", "default/echo"},                     // no '-': its own group
		{"default", "-x", "default/-x"},
		{"", "", "/"}, // no CNI_ARGS: one group
	} {
		if got := ipam.Group(tc.ns, tc.pod); got != tc.want {
			t.Errorf("Group(%q, %q) = %q, want %q", tc.ns, tc.pod, got, tc.want)
		}
	}
}

func TestRank(t *testing.T) {
	two := func(a, b int) []ipam.Candidate {
		return []ipam.Candidate{{ID: "eni-0", DeviceIndex: 0, GroupPods: a}, {ID: "eni-1", DeviceIndex: 1, GroupPods: b}}
	}
	for _, tc := range []struct {
		name  string
		cands []ipam.Candidate
		first int
		want  []string
	}{
		{name: "empty", want: nil},
		{name: "tie goes to device 0 with firstENI 0", cands: two(0, 0), first: 0, want: []string{"eni-0", "eni-1"}},
		{name: "tie goes to device 1 with firstENI 1", cands: two(0, 0), first: 1, want: []string{"eni-1", "eni-0"}},
		{name: "fewest of the group wins over firstENI", cands: two(1, 0), first: 0, want: []string{"eni-1", "eni-0"}},
		{name: "fewest of the group wins, firstENI 1", cands: two(0, 1), first: 1, want: []string{"eni-0", "eni-1"}},
		{name: "equal counts above zero tie too", cands: two(3, 3), first: 1, want: []string{"eni-1", "eni-0"}},
		{name: "firstENI not present: lowest device index", cands: two(0, 0), first: 5, want: []string{"eni-0", "eni-1"}},
		{
			name: "three ENIs: firstENI, then lowest index",
			cands: []ipam.Candidate{
				{ID: "eni-2", DeviceIndex: 2}, {ID: "eni-0", DeviceIndex: 0}, {ID: "eni-1", DeviceIndex: 1},
			},
			first: 1, want: []string{"eni-1", "eni-0", "eni-2"},
		},
		{
			name: "three ENIs: counts first",
			cands: []ipam.Candidate{
				{ID: "eni-0", DeviceIndex: 0, GroupPods: 2}, {ID: "eni-1", DeviceIndex: 1, GroupPods: 1}, {ID: "eni-2", DeviceIndex: 2, GroupPods: 1},
			},
			first: 2, want: []string{"eni-2", "eni-1", "eni-0"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			for _, c := range ipam.Rank(tc.cands, tc.first) {
				got = append(got, c.ID)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("Rank (-want +got):\n%s", diff)
			}
		})
	}
}

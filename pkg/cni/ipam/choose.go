package ipam

import (
	"cmp"
	"slices"
	"strings"
)

// Group is the workload a pod is counted in when its ENI is chosen: the
// namespace and the pod name without its last "-segment". That is the
// ReplicaSet of a Deployment's pod (web-7c9f8b5d4-x2x7q → web-7c9f8b5d4),
// the DaemonSet or Job of theirs (agent-x2x7q → agent) and the
// StatefulSet of its pods (db-0 → db). A name without "-" is its own group.
func Group(namespace, pod string) string {
	if i := strings.LastIndexByte(pod, '-'); i > 0 {
		pod = pod[:i]
	}
	return namespace + "/" + pod
}

// Candidate is an ENI a pod may get its address on.
type Candidate struct {
	ID          string
	DeviceIndex int
	// GroupPods is how many pods of the pod's group the ENI holds.
	GroupPods int
}

// Rank orders the candidates best first: fewest pods of the group; on a
// tie the ENI whose device index is firstENI, then the lower device index.
// So a workload's pods alternate over the ENIs, and with firstENI set to
// (i-1) mod 2 on node i the first pods of a workload on neighbouring nodes
// use different ENIs, whatever else runs there.
func Rank(cands []Candidate, firstENI int) []Candidate {
	out := slices.Clone(cands)
	slices.SortStableFunc(out, func(a, b Candidate) int {
		if c := cmp.Compare(a.GroupPods, b.GroupPods); c != 0 {
			return c
		}
		if (a.DeviceIndex == firstENI) != (b.DeviceIndex == firstENI) {
			if a.DeviceIndex == firstENI {
				return -1
			}
			return 1
		}
		return cmp.Compare(a.DeviceIndex, b.DeviceIndex)
	})
	return out
}

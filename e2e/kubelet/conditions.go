package kubelet

import (
	"fmt"
	"sort"
	"strings"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Reasons the kubelet uses for pod conditions.
const (
	ReasonContainersNotReady     = "ContainersNotReady"
	ReasonReadinessGatesNotReady = "ReadinessGatesNotReady"
	ReasonPodCompleted           = "PodCompleted"
)

// PodConditions computes the Initialized, ContainersReady and Ready
// conditions as the kubelet does: ContainersReady when every container is
// ready; Ready when the containers are ready AND every spec.readinessGates
// condition in current is True. Times are carried over from current when a
// condition's status does not change. Only these three types are returned;
// other writers' conditions (gates, PodScheduled) are not touched.
func PodConditions(spec *v1.PodSpec, current []v1.PodCondition, phase v1.PodPhase, ready map[string]bool, now metav1.Time) []v1.PodCondition {
	var unready []string
	for _, c := range spec.Containers {
		if !ready[c.Name] {
			unready = append(unready, c.Name)
		}
	}
	sort.Strings(unready)

	initialized := v1.PodCondition{Type: v1.PodInitialized, Status: v1.ConditionTrue}
	if phase == v1.PodSucceeded {
		initialized.Reason = ReasonPodCompleted
	}

	containersReady := v1.PodCondition{Type: v1.ContainersReady, Status: v1.ConditionTrue}
	podReady := v1.PodCondition{Type: v1.PodReady, Status: v1.ConditionTrue}
	switch {
	case phase == v1.PodSucceeded:
		containersReady = v1.PodCondition{Type: v1.ContainersReady, Status: v1.ConditionFalse, Reason: ReasonPodCompleted}
		podReady = v1.PodCondition{Type: v1.PodReady, Status: v1.ConditionFalse, Reason: ReasonPodCompleted}
	case len(unready) > 0:
		msg := fmt.Sprintf("containers with unready status: [%s]", strings.Join(unready, " "))
		containersReady = v1.PodCondition{Type: v1.ContainersReady, Status: v1.ConditionFalse, Reason: ReasonContainersNotReady, Message: msg}
		podReady = v1.PodCondition{Type: v1.PodReady, Status: v1.ConditionFalse, Reason: ReasonContainersNotReady, Message: msg}
	default:
		var msgs []string
		for _, g := range spec.ReadinessGates {
			c := findCondition(current, g.ConditionType)
			switch {
			case c == nil:
				msgs = append(msgs, fmt.Sprintf("corresponding condition of pod readiness gate %q does not exist.", g.ConditionType))
			case c.Status != v1.ConditionTrue:
				msgs = append(msgs, fmt.Sprintf("the status of pod readiness gate %q is not \"True\", but %v", g.ConditionType, c.Status))
			}
		}
		if len(msgs) > 0 {
			podReady = v1.PodCondition{Type: v1.PodReady, Status: v1.ConditionFalse, Reason: ReasonReadinessGatesNotReady, Message: strings.Join(msgs, ", ")}
		}
	}

	out := []v1.PodCondition{initialized, containersReady, podReady}
	for i := range out {
		out[i].LastTransitionTime = now
		if old := findCondition(current, out[i].Type); old != nil && old.Status == out[i].Status {
			out[i].LastTransitionTime = old.LastTransitionTime
		}
	}
	return out
}

func findCondition(cs []v1.PodCondition, t v1.PodConditionType) *v1.PodCondition {
	for i := range cs {
		if cs[i].Type == t {
			return &cs[i]
		}
	}
	return nil
}

// MergeConditions returns current with the conditions of ours replaced or
// added; conditions of other types keep their place and content.
func MergeConditions(current, ours []v1.PodCondition) []v1.PodCondition {
	out := make([]v1.PodCondition, 0, len(current)+len(ours))
	used := map[v1.PodConditionType]bool{}
	for _, c := range current {
		if n := findCondition(ours, c.Type); n != nil {
			out = append(out, *n)
			used[c.Type] = true
			continue
		}
		out = append(out, c)
	}
	for _, n := range ours {
		if !used[n.Type] {
			out = append(out, n)
		}
	}
	return out
}

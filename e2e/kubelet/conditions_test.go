package kubelet

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestPodConditions(t *testing.T) {
	t0 := metav1.NewTime(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	now := metav1.NewTime(t0.Add(time.Minute))
	gate := "target-health.directlb.io/web"
	spec := func(gates ...string) *v1.PodSpec {
		s := &v1.PodSpec{Containers: []v1.Container{{Name: "a"}, {Name: "b"}}}
		for _, g := range gates {
			s.ReadinessGates = append(s.ReadinessGates, v1.PodReadinessGate{ConditionType: v1.PodConditionType(g)})
		}
		return s
	}
	cond := func(typ v1.PodConditionType, st v1.ConditionStatus, reason, msg string, at metav1.Time) v1.PodCondition {
		return v1.PodCondition{Type: typ, Status: st, Reason: reason, Message: msg, LastTransitionTime: at}
	}
	cases := []struct {
		name    string
		spec    *v1.PodSpec
		current []v1.PodCondition
		phase   v1.PodPhase
		ready   map[string]bool
		want    []v1.PodCondition
	}{
		{
			name:  "all ready, no gates",
			spec:  spec(),
			phase: v1.PodRunning,
			ready: map[string]bool{"a": true, "b": true},
			want: []v1.PodCondition{
				cond(v1.PodInitialized, v1.ConditionTrue, "", "", now),
				cond(v1.ContainersReady, v1.ConditionTrue, "", "", now),
				cond(v1.PodReady, v1.ConditionTrue, "", "", now),
			},
		},
		{
			name:  "one container not ready",
			spec:  spec(gate),
			phase: v1.PodRunning,
			ready: map[string]bool{"b": true},
			want: []v1.PodCondition{
				cond(v1.PodInitialized, v1.ConditionTrue, "", "", now),
				cond(v1.ContainersReady, v1.ConditionFalse, ReasonContainersNotReady, "containers with unready status: [a]", now),
				cond(v1.PodReady, v1.ConditionFalse, ReasonContainersNotReady, "containers with unready status: [a]", now),
			},
		},
		{
			name:  "gate condition missing",
			spec:  spec(gate),
			phase: v1.PodRunning,
			ready: map[string]bool{"a": true, "b": true},
			want: []v1.PodCondition{
				cond(v1.PodInitialized, v1.ConditionTrue, "", "", now),
				cond(v1.ContainersReady, v1.ConditionTrue, "", "", now),
				cond(v1.PodReady, v1.ConditionFalse, ReasonReadinessGatesNotReady, `corresponding condition of pod readiness gate "target-health.directlb.io/web" does not exist.`, now),
			},
		},
		{
			name:    "gate condition False",
			spec:    spec(gate),
			current: []v1.PodCondition{cond(v1.PodConditionType(gate), v1.ConditionFalse, "", "", t0)},
			phase:   v1.PodRunning,
			ready:   map[string]bool{"a": true, "b": true},
			want: []v1.PodCondition{
				cond(v1.PodInitialized, v1.ConditionTrue, "", "", now),
				cond(v1.ContainersReady, v1.ConditionTrue, "", "", now),
				cond(v1.PodReady, v1.ConditionFalse, ReasonReadinessGatesNotReady, `the status of pod readiness gate "target-health.directlb.io/web" is not "True", but False`, now),
			},
		},
		{
			name: "gate True keeps transition times of unchanged conditions",
			spec: spec(gate),
			current: []v1.PodCondition{
				cond(v1.PodInitialized, v1.ConditionTrue, "", "", t0),
				cond(v1.ContainersReady, v1.ConditionTrue, "", "", t0),
				cond(v1.PodReady, v1.ConditionFalse, ReasonReadinessGatesNotReady, "x", t0),
				cond(v1.PodConditionType(gate), v1.ConditionTrue, "", "", t0),
			},
			phase: v1.PodRunning,
			ready: map[string]bool{"a": true, "b": true},
			want: []v1.PodCondition{
				cond(v1.PodInitialized, v1.ConditionTrue, "", "", t0),
				cond(v1.ContainersReady, v1.ConditionTrue, "", "", t0),
				cond(v1.PodReady, v1.ConditionTrue, "", "", now),
			},
		},
		{
			name:  "succeeded",
			spec:  spec(),
			phase: v1.PodSucceeded,
			want: []v1.PodCondition{
				cond(v1.PodInitialized, v1.ConditionTrue, ReasonPodCompleted, "", now),
				cond(v1.ContainersReady, v1.ConditionFalse, ReasonPodCompleted, "", now),
				cond(v1.PodReady, v1.ConditionFalse, ReasonPodCompleted, "", now),
			},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := PodConditions(c.spec, c.current, c.phase, c.ready, now)
			if diff := cmp.Diff(c.want, got); diff != "" {
				t.Errorf("conditions (-want +got):\n%s", diff)
			}
		})
	}
}

func TestMergeConditionsKeepsOtherWriters(t *testing.T) {
	gate := v1.PodConditionType("target-health.directlb.io/web")
	current := []v1.PodCondition{
		{Type: v1.PodScheduled, Status: v1.ConditionTrue},
		{Type: gate, Status: v1.ConditionTrue, Reason: "Healthy"},
		{Type: v1.PodReady, Status: v1.ConditionFalse},
	}
	ours := []v1.PodCondition{
		{Type: v1.PodInitialized, Status: v1.ConditionTrue},
		{Type: v1.ContainersReady, Status: v1.ConditionTrue},
		{Type: v1.PodReady, Status: v1.ConditionTrue},
	}
	want := []v1.PodCondition{
		{Type: v1.PodScheduled, Status: v1.ConditionTrue},
		{Type: gate, Status: v1.ConditionTrue, Reason: "Healthy"},
		{Type: v1.PodReady, Status: v1.ConditionTrue},
		{Type: v1.PodInitialized, Status: v1.ConditionTrue},
		{Type: v1.ContainersReady, Status: v1.ConditionTrue},
	}
	if diff := cmp.Diff(want, MergeConditions(current, ours)); diff != "" {
		t.Errorf("merged (-want +got):\n%s", diff)
	}
}

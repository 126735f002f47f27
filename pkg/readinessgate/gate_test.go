package readinessgate

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"

	"github.com/directlb/directlb/pkg/cloud"
)

func th(ip string, port int32, s cloud.TargetState) cloud.TargetHealth {
	return cloud.TargetHealth{Target: cloud.Target{IP: ip, Port: port}, State: s}
}

func TestEvaluate(t *testing.T) {
	const ip = "10.100.1.70"
	tests := []struct {
		name   string
		ip     string
		groups []GroupHealth
		want   Verdict
	}{
		{"no ip", "", []GroupHealth{{Name: "a"}},
			Verdict{corev1.ConditionFalse, ReasonPodIPPending, "the pod has no IP address yet"}},
		{"no target groups", ip, nil,
			Verdict{corev1.ConditionFalse, ReasonLoadBalancerPending, "the Service has no target groups yet"}},
		{"not registered", ip, []GroupHealth{{Name: "a", Targets: []cloud.TargetHealth{th("10.100.1.71", 80, cloud.TargetHealthy)}}},
			Verdict{corev1.ConditionFalse, ReasonRegistering, "a: not registered yet"}},
		{"initial", ip, []GroupHealth{{Name: "a", Targets: []cloud.TargetHealth{th(ip, 80, cloud.TargetInitial)}}},
			Verdict{corev1.ConditionFalse, ReasonRegistering, "a: target 10.100.1.70:80 is initial"}},
		{"healthy", ip, []GroupHealth{{Name: "a", Targets: []cloud.TargetHealth{th(ip, 80, cloud.TargetHealthy)}}},
			Verdict{corev1.ConditionTrue, ReasonHealthy, "healthy in 1 target group(s)"}},
		{"healthy in both groups", ip, []GroupHealth{
			{Name: "a", Targets: []cloud.TargetHealth{th(ip, 80, cloud.TargetHealthy)}},
			{Name: "b", Targets: []cloud.TargetHealth{th(ip, 443, cloud.TargetHealthy)}}},
			Verdict{corev1.ConditionTrue, ReasonHealthy, "healthy in 2 target group(s)"}},
		{"healthy in one group only", ip, []GroupHealth{
			{Name: "a", Targets: []cloud.TargetHealth{th(ip, 80, cloud.TargetHealthy)}},
			{Name: "b", Targets: []cloud.TargetHealth{th(ip, 443, cloud.TargetInitial)}}},
			Verdict{corev1.ConditionFalse, ReasonRegistering, "b: target 10.100.1.70:443 is initial"}},
		{"missing in second group", ip, []GroupHealth{
			{Name: "a", Targets: []cloud.TargetHealth{th(ip, 80, cloud.TargetHealthy)}},
			{Name: "b"}},
			Verdict{corev1.ConditionFalse, ReasonRegistering, "b: not registered yet"}},
		{"unhealthy with reason", ip, []GroupHealth{{Name: "a", Targets: []cloud.TargetHealth{
			{Target: cloud.Target{IP: ip, Port: 80}, State: cloud.TargetUnhealthy, Reason: "Target.FailedHealthChecks"}}}},
			Verdict{corev1.ConditionFalse, ReasonUnhealthy, "a: target 10.100.1.70:80 is unhealthy (Target.FailedHealthChecks)"}},
		{"draining beats unhealthy", ip, []GroupHealth{
			{Name: "a", Targets: []cloud.TargetHealth{th(ip, 80, cloud.TargetUnhealthy)}},
			{Name: "b", Targets: []cloud.TargetHealth{th(ip, 443, cloud.TargetDraining)}}},
			Verdict{corev1.ConditionFalse, ReasonDraining, "a: target 10.100.1.70:80 is unhealthy; b: target 10.100.1.70:443 is draining"}},
		{"unused", ip, []GroupHealth{{Name: "a", Targets: []cloud.TargetHealth{th(ip, 80, cloud.TargetUnused)}}},
			Verdict{corev1.ConditionFalse, ReasonUnused, "a: target 10.100.1.70:80 is unused"}},
		{"unavailable", ip, []GroupHealth{{Name: "a", Targets: []cloud.TargetHealth{th(ip, 80, cloud.TargetUnavailable)}}},
			Verdict{corev1.ConditionFalse, ReasonUnavailable, "a: target 10.100.1.70:80 is unavailable"}},
		{"two ports one unhealthy", ip, []GroupHealth{{Name: "a", Targets: []cloud.TargetHealth{
			th(ip, 80, cloud.TargetHealthy), th(ip, 81, cloud.TargetUnhealthy)}}},
			Verdict{corev1.ConditionFalse, ReasonUnhealthy, "a: target 10.100.1.70:81 is unhealthy"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, Evaluate(tt.ip, tt.groups)); diff != "" {
				t.Errorf("Evaluate (-want +got):\n%s", diff)
			}
		})
	}
}

func TestRegression(t *testing.T) {
	for reason, want := range map[string]bool{
		ReasonUnhealthy: true, ReasonUnavailable: true,
		ReasonRegistering: false, ReasonDraining: false, ReasonUnused: false, ReasonHealthy: false,
	} {
		status := corev1.ConditionFalse
		if reason == ReasonHealthy {
			status = corev1.ConditionTrue
		}
		if got := regression(Verdict{Status: status, Reason: reason}); got != want {
			t.Errorf("regression(%s) = %v, want %v", reason, got, want)
		}
	}
}

// TestRegressionInterval: the slow regression check shares one budget
// among all gated target groups: a small cluster is checked every watch
// interval, a big one slowly, at the same cost.
func TestRegressionInterval(t *testing.T) {
	tests := []struct {
		name      string
		groups    int
		perMinute float64
		want      time.Duration
	}{
		{"off", 100, 0, 0},
		{"test bed: two groups, floor", 2, 20, 10 * time.Second},
		{"no group yet counts as one", 0, 20, 10 * time.Second},
		{"200 groups", 200, 20, 10 * time.Minute},
		{"1,000 groups", 1000, 20, 50 * time.Minute},
		{"a bigger budget", 1000, 100, 10 * time.Minute},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := RegressionInterval(tt.groups, tt.perMinute, 10*time.Second); got != tt.want {
				t.Fatalf("RegressionInterval(%d, %g) = %s, want %s", tt.groups, tt.perMinute, got, tt.want)
			}
		})
	}
}

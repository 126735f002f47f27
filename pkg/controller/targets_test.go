package controller

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/directlb/directlb/pkg/cloud"
	"github.com/directlb/directlb/pkg/cloud/fake"
	"github.com/directlb/directlb/pkg/deploy"
	"github.com/directlb/directlb/pkg/service"
)

func eps(n int, port int32) []endpoint {
	out := make([]endpoint, n)
	for i := range out {
		out[i] = endpoint{ip: fmt.Sprintf("10.%d.%d.%d", i/65536, (i/256)%256, i%256),
			ports: map[portID]int32{{name: "http", protocol: corev1.ProtocolTCP}: port}}
	}
	return out
}

// TestSyncBatchesAndCaches: 450 endpoints are registered in requests of at
// most 200 (the cloud splits the list, the fake as the AWS client does), a
// pass with nothing new makes no call at all (the target list is cached),
// and scaling down deregisters in batches too.
func TestSyncBatchesAndCaches(t *testing.T) {
	ctx := context.Background()
	fc := fake.New()
	created, err := fc.CreateTargetGroup(ctx, cloud.TargetGroupSpec{Name: "tg", Protocol: cloud.ProtocolTCP, Port: 8080})
	if err != nil {
		t.Fatal(err)
	}
	tg := deploy.TargetGroup{ARN: created.ARN, TargetGroup: service.TargetGroup{
		Spec:  created.TargetGroupSpec,
		Ports: []service.Port{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromString("http")}},
	}}
	r := &TargetReconciler{Cloud: fc, RefreshPeriod: time.Hour}

	steps := []struct {
		name      string
		endpoints []endpoint
		wantCalls map[string]int
		wantCount int
	}{
		{"450 new", eps(450, 8080), map[string]int{"DescribeTargetHealth": 1, "RegisterTargets": 3}, 450},
		{"nothing new", eps(450, 8080), map[string]int{}, 450},
		{"down to 10", eps(10, 8080), map[string]int{"DeregisterTargets": 3}, 10},
		{"other port name does not match", []endpoint{{ip: "10.9.9.9", ports: map[portID]int32{{name: "metrics", protocol: corev1.ProtocolTCP}: 9090}}},
			map[string]int{"DeregisterTargets": 1}, 0},
	}
	for _, st := range steps {
		before := fc.Calls()
		if _, err := r.sync(ctx, tg, st.endpoints); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		got := fc.Calls()
		for op, n := range before {
			got[op] -= n
			if got[op] == 0 {
				delete(got, op)
			}
		}
		if diff := cmp.Diff(st.wantCalls, got); diff != "" {
			t.Errorf("%s: calls (-want +got):\n%s", st.name, diff)
		}
		if n := len(fc.Snapshot().Targets["tg"]); n != st.wantCount {
			t.Errorf("%s: %d targets in the cloud, want %d", st.name, n, st.wantCount)
		}
	}
}

func TestWaitsOnlyForDirectlbGates(t *testing.T) {
	cond := func(typ corev1.PodConditionType, ok bool) corev1.PodCondition {
		s := corev1.ConditionFalse
		if ok {
			s = corev1.ConditionTrue
		}
		return corev1.PodCondition{Type: typ, Status: s}
	}
	gate := service.ReadinessGateType("web")
	other := corev1.PodConditionType("example.com/other")
	tests := []struct {
		name  string
		gates []corev1.PodConditionType
		conds []corev1.PodCondition
		del   bool
		want  bool
	}{
		{"containers ready, our gate pending", []corev1.PodConditionType{gate}, []corev1.PodCondition{cond(corev1.ContainersReady, true), cond(corev1.PodReady, false)}, false, true},
		{"two directlb gates pending", []corev1.PodConditionType{gate, service.ReadinessGateType("api")}, []corev1.PodCondition{cond(corev1.ContainersReady, true)}, false, true},
		{"containers not ready", []corev1.PodConditionType{gate}, []corev1.PodCondition{cond(corev1.ContainersReady, false)}, false, false},
		{"another gate pending too", []corev1.PodConditionType{gate, other}, []corev1.PodCondition{cond(corev1.ContainersReady, true), cond(other, false)}, false, false},
		{"other gate met, ours pending", []corev1.PodConditionType{gate, other}, []corev1.PodCondition{cond(corev1.ContainersReady, true), cond(other, true)}, false, true},
		{"no gates", nil, []corev1.PodCondition{cond(corev1.ContainersReady, true)}, false, false},
		{"our gate already true", []corev1.PodConditionType{gate}, []corev1.PodCondition{cond(corev1.ContainersReady, true), cond(gate, true)}, false, false},
		{"terminating", []corev1.PodConditionType{gate}, []corev1.PodCondition{cond(corev1.ContainersReady, true)}, true, false},
	}
	for _, tt := range tests {
		p := &corev1.Pod{Status: corev1.PodStatus{Conditions: tt.conds}}
		for _, g := range tt.gates {
			p.Spec.ReadinessGates = append(p.Spec.ReadinessGates, corev1.PodReadinessGate{ConditionType: g})
		}
		if tt.del {
			now := metav1.Now()
			p.DeletionTimestamp = &now
		}
		if got := WaitsOnlyForDirectlbGates(p); got != tt.want {
			t.Errorf("%s: WaitsOnlyForDirectlbGates = %v, want %v", tt.name, got, tt.want)
		}
		// Eligible as a target: the same, plus a pod whose gates are all
		// True but whose Ready (or EndpointSlice) has not caught up.
		wantEligible := tt.want || tt.name == "no gates" || tt.name == "our gate already true"
		if got := readyButForDirectlbGates(p); got != wantEligible {
			t.Errorf("%s: readyButForDirectlbGates = %v, want %v", tt.name, got, wantEligible)
		}
	}
}

// healthyPort reports the targets on one port healthy, the rest initial.
type healthyPort struct {
	*fake.Cloud
	port int32
}

func (h healthyPort) DescribeTargetHealth(ctx context.Context, arn string) ([]cloud.TargetHealth, error) {
	th, err := h.Cloud.DescribeTargetHealth(ctx, arn)
	for i := range th {
		th[i].State = cloud.TargetInitial
		if th[i].Target.Port == h.port {
			th[i].State = cloud.TargetHealthy
		}
	}
	return th, err
}

// TestSyncTargetPortChange: when a Service's targetPort changes, each pod's
// target on the old port stays registered until its target on the new port
// is healthy, so the pod never leaves the load balancer; then the old one
// is deregistered.
func TestSyncTargetPortChange(t *testing.T) {
	ctx := context.Background()
	fc := fake.New()
	created, err := fc.CreateTargetGroup(ctx, cloud.TargetGroupSpec{Name: "tg", Protocol: cloud.ProtocolTCP, Port: 8080,
		HealthCheck: cloud.HealthCheck{IntervalSeconds: 1}})
	if err != nil {
		t.Fatal(err)
	}
	tg := deploy.TargetGroup{ARN: created.ARN, TargetGroup: service.TargetGroup{
		Spec:  created.TargetGroupSpec,
		Ports: []service.Port{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromString("http")}},
	}}
	hc := healthyPort{Cloud: fc, port: 8080}
	r := &TargetReconciler{Cloud: hc, RefreshPeriod: time.Hour}
	registered := func() []string {
		th, err := fc.DescribeTargetHealth(ctx, tg.ARN)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, x := range th {
			out = append(out, x.Target.String())
		}
		slices.Sort(out)
		return out
	}
	if _, err := r.sync(ctx, tg, eps(2, 8080)); err != nil {
		t.Fatal(err)
	}
	// targetPort 8080 → 9090: the new targets are registered, the old stay.
	wait, err := r.sync(ctx, tg, eps(2, 9090))
	if err != nil {
		t.Fatal(err)
	}
	all := []string{"10.0.0.0:8080", "10.0.0.0:9090", "10.0.0.1:8080", "10.0.0.1:9090"}
	if diff := cmp.Diff(all, registered()); diff != "" {
		t.Fatalf("while the new port warms up (-want +got):\n%s", diff)
	}
	if wait > 2*time.Second {
		t.Errorf("next pass in %s, want about one health check (1s)", wait)
	}
	// Still initial on the new port after a re-read: nothing leaves.
	time.Sleep(wait + 50*time.Millisecond)
	if _, err := r.sync(ctx, tg, eps(2, 9090)); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(all, registered()); diff != "" {
		t.Fatalf("new port not healthy yet (-want +got):\n%s", diff)
	}
	// Healthy on the new port: the old targets go.
	r.Cloud = healthyPort{Cloud: fc, port: 9090}
	r.Health = nil // the shared reader was made over the old Cloud
	time.Sleep(1100 * time.Millisecond)
	if _, err := r.sync(ctx, tg, eps(2, 9090)); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"10.0.0.0:9090", "10.0.0.1:9090"}, registered()); diff != "" {
		t.Fatalf("after the new port turned healthy (-want +got):\n%s", diff)
	}
}

package deploy

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/directlb/directlb/pkg/cloud"
	"github.com/directlb/directlb/pkg/cloud/fake"
	"github.com/directlb/directlb/pkg/cloud/faulty"
	"github.com/directlb/directlb/pkg/service"
)

// shape is the cloud state by names, without ARNs, for comparisons.
type shape struct {
	LoadBalancers []string // name/scheme
	TargetGroups  []string // name protocol port hc-protocol hc-interval delay
	Listeners     []string // lb-name port/protocol -> tg-name
}

func shapeOf(s fake.Snapshot) shape {
	var out shape
	lbName, tgName := map[string]string{}, map[string]string{}
	for _, lb := range s.LoadBalancers {
		lbName[lb.ARN] = lb.Name
		out.LoadBalancers = append(out.LoadBalancers, lb.Name+"/"+lb.Scheme)
	}
	for _, tg := range s.TargetGroups {
		tgName[tg.ARN] = tg.Name
		out.TargetGroups = append(out.TargetGroups, fmt.Sprintf("%s %s %d %s %d %d", tg.Name, tg.Protocol, tg.Port,
			tg.HealthCheck.Protocol, tg.HealthCheck.IntervalSeconds, tg.DeregistrationDelaySeconds))
	}
	for _, l := range s.Listeners {
		out.Listeners = append(out.Listeners, fmt.Sprintf("%s %d/%s -> %s", lbName[l.LoadBalancerARN], l.Port, l.Protocol, tgName[l.TargetGroupARN]))
	}
	sort.Strings(out.Listeners)
	return out
}

func newService(name string, mutate ...func(*corev1.Service)) *corev1.Service {
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name,
			Annotations: map[string]string{service.AnnotationDirectAccess: "true"}},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, Ports: []corev1.ServicePort{
			{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(8080)},
			{Name: "dns", Protocol: corev1.ProtocolUDP, Port: 53, TargetPort: intstr.FromInt32(5353)},
		}},
	}
	for _, m := range mutate {
		m(s)
	}
	return s
}

func build(t *testing.T, s *corev1.Service) service.LoadBalancer {
	t.Helper()
	lb, err := service.Build(s, service.Config{ClusterName: "test", VPCID: "vpc-1"})
	if err != nil {
		t.Fatal(err)
	}
	return lb
}

// expected is the shape one clean Deploy of lb gives on an empty cloud.
func expected(t *testing.T, lbs ...service.LoadBalancer) shape {
	t.Helper()
	c := fake.New()
	d := &Deployer{Cloud: c}
	for _, lb := range lbs {
		if _, err := d.Deploy(context.Background(), lb); err != nil {
			t.Fatal(err)
		}
	}
	return shapeOf(c.Snapshot())
}

func mutating(calls map[string]int) map[string]int {
	out := map[string]int{}
	for op, n := range calls {
		switch op {
		case "ListLoadBalancers", "ListTargetGroups", "ListListeners", "DescribeTargetHealth", "DeregistrationDelay":
		default:
			out[op] = n
		}
	}
	return out
}

// deployChange is one edit in TestDeployChanges: the Service after it, and
// what deploying it over the base Service should do.
type deployChange struct {
	name      string
	next      *corev1.Service
	wantCalls map[string]int
	// sameAs: the cloud ends as a clean deploy of this Service (default
	// next) would leave it.
	sameAs *corev1.Service
}

func TestDeployChanges(t *testing.T) {
	ctx := context.Background()
	base := newService("web")
	tests := []deployChange{
		{name: "no change makes no mutating call", next: base, wantCalls: map[string]int{}},
		{
			name: "health check annotation modifies the target groups in place",
			next: newService("web", func(s *corev1.Service) {
				s.Annotations[service.AnnotationHCInterval] = "30"
			}),
			wantCalls: map[string]int{"ModifyTargetGroup": 2},
		},
		{
			// Listings carry no attributes: the delay is read per group.
			name: "deregistration delay annotation modifies the target groups in place",
			next: newService("web", func(s *corev1.Service) {
				s.Annotations[service.AnnotationDeregistrationDelay] = "7"
			}),
			wantCalls: map[string]int{"ModifyTargetGroup": 2},
		},
		{
			// Targets carry their own port: the listener's group stays, and
			// the target reconciler moves each pod to the new port.
			name:      "new target port keeps the target group",
			next:      newService("web", func(s *corev1.Service) { s.Spec.Ports[0].TargetPort = intstr.FromInt32(9090) }),
			wantCalls: map[string]int{},
			sameAs:    base,
		},
		{
			name:      "port removed: its listener and target group go",
			next:      newService("web", func(s *corev1.Service) { s.Spec.Ports = s.Spec.Ports[:1] }),
			wantCalls: map[string]int{"DeleteListener": 1, "DeleteTargetGroup": 1},
		},
		{
			name: "tcp joins udp on 53: TCP_UDP listener replaces the UDP one",
			next: newService("web", func(s *corev1.Service) {
				s.Spec.Ports = append(s.Spec.Ports, corev1.ServicePort{Name: "dns-tcp", Protocol: corev1.ProtocolTCP, Port: 53, TargetPort: intstr.FromInt32(5353)})
			}),
			wantCalls: map[string]int{"CreateTargetGroup": 1, "DeleteListener": 1, "CreateListener": 1, "DeleteTargetGroup": 1},
		},
		{
			name:      "scheme change recreates the load balancer",
			next:      newService("web", func(s *corev1.Service) { s.Annotations[service.AnnotationScheme] = "internal" }),
			wantCalls: map[string]int{"DeleteLoadBalancer": 1, "CreateLoadBalancer": 1, "CreateListener": 2},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { testDeployChange(t, ctx, base, tt) })
	}
}

// testDeployChange deploys base on an empty cloud, then tt.next over it.
func testDeployChange(t *testing.T, ctx context.Context, base *corev1.Service, tt deployChange) {
	c := fake.New()
	d := &Deployer{Cloud: c}
	if _, err := d.Deploy(ctx, build(t, base)); err != nil {
		t.Fatal(err)
	}
	before := c.Calls()
	res, err := d.Deploy(ctx, build(t, tt.next))
	if err != nil {
		t.Fatal(err)
	}
	got := mutating(c.Calls())
	for op, n := range mutating(before) {
		got[op] -= n
		if got[op] == 0 {
			delete(got, op)
		}
	}
	if diff := cmp.Diff(tt.wantCalls, got); diff != "" {
		t.Errorf("mutating calls (-want +got):\n%s", diff)
	}
	if res.Changed != (len(tt.wantCalls) > 0) {
		t.Errorf("Changed = %v", res.Changed)
	}
	same := tt.next
	if tt.sameAs != nil {
		same = tt.sameAs
	}
	if diff := cmp.Diff(expected(t, build(t, same)), shapeOf(c.Snapshot())); diff != "" {
		t.Errorf("cloud state (-want +got):\n%s", diff)
	}
	if len(res.TargetGroups) != len(build(t, tt.next).TargetGroups) || res.LoadBalancer.ARN == "" {
		t.Errorf("result = %+v", res)
	}
}

// crashStep is one change TestCrashAnywhere cuts short.
type crashStep struct {
	name string
	from *corev1.Service // state before; nil = empty cloud
	to   *corev1.Service // nil = delete
}

// crashMode is how a crashStep is cut short.
type crashMode struct {
	afterApply bool
	// cached: the pass runs through an Inventory and the same
	// Deployer (same process) retries after the failure.
	cached bool
}

// TestCrashAnywhere cuts a pass short at every call in turn (before the
// call reaches the cloud, and after it did but the answer was lost), then
// runs a clean pass: the cloud must end exactly as the same change without
// a crash leaves it — nothing duplicated, nothing leaked.
func TestCrashAnywhere(t *testing.T) {
	ctx := context.Background()
	steps := []crashStep{
		{name: "create", to: newService("web")},
		{name: "update", from: newService("web"), to: newService("web", func(s *corev1.Service) {
			s.Spec.Ports[0].TargetPort = intstr.FromInt32(9090)
			s.Annotations[service.AnnotationScheme] = "internal"
		})},
		{name: "delete", from: newService("web")},
	}
	for _, st := range steps {
		for _, mode := range []crashMode{{false, false}, {true, false}, {false, true}, {true, true}} {
			crashEveryCall(t, ctx, st, mode)
		}
	}
}

// crashEveryCall runs st through a cloud that fails call n, for n = 1, 2, ...
// until the pass needs no more calls, healing each with a clean pass.
func crashEveryCall(t *testing.T, ctx context.Context, st crashStep, mode crashMode) {
	afterApply := mode.afterApply
	n := 1
	for ; ; n++ {
		c := fake.New()
		clean := &Deployer{Cloud: c}
		if st.from != nil {
			if _, err := clean.Deploy(ctx, build(t, st.from)); err != nil {
				t.Fatal(err)
			}
		}
		broken := &Deployer{Cloud: faulty.New(c, faulty.Config{FailCall: n, FailAfterApply: afterApply})}
		if mode.cached {
			broken.Cloud = NewInventory(broken.Cloud, time.Hour)
			if st.from != nil { // warm the inventory, then count calls from here
				if _, err := broken.Cloud.ListLoadBalancers(ctx, cloud.Tags{cloud.TagCluster: "test"}); err != nil {
					continue
				}
			}
			clean = broken
		}
		var err error
		var want shape
		if st.to != nil {
			_, err = broken.Deploy(ctx, build(t, st.to))
			// What the same edit gives without a crash.
			if st.from != nil {
				want = expected(t, build(t, st.from), build(t, st.to))
			} else {
				want = expected(t, build(t, st.to))
			}
		} else {
			_, err = broken.Delete(ctx, build(t, st.from).Spec.Tags)
		}
		if err == nil {
			break // n is past the last call
		}
		if IsPermanent(err) {
			t.Fatalf("%s: crash at call %d gave a permanent error: %v", st.name, n, err)
		}
		if st.to != nil {
			_, err = clean.Deploy(ctx, build(t, st.to))
		} else {
			_, err = clean.Delete(ctx, build(t, st.from).Spec.Tags)
		}
		if err != nil {
			t.Fatalf("%s: crash at call %d (after apply %v, cached %v): next pass: %v", st.name, n, afterApply, mode.cached, err)
		}
		if diff := cmp.Diff(want, shapeOf(c.Snapshot())); diff != "" {
			t.Errorf("%s: crash at call %d (after apply %v, cached %v): cloud (-want +got):\n%s", st.name, n, afterApply, mode.cached, diff)
		}
		if n > 50 {
			t.Fatalf("%s: more than 50 calls in one pass", st.name)
		}
	}
	if n < 5 {
		t.Errorf("%s: only %d calls cut short; the pass is too short to test", st.name, n-1)
	}
	t.Logf("%s (after apply %v, cached %v): cut short at each of %d calls", st.name, afterApply, mode.cached, n-1)
}

// TestFaultyCloudConverges deploys 20 Services through a cloud that
// throttles 30% of calls and fails 10% with 5xx, retrying each Service like
// the reconciler does, then deletes them all the same way.
func TestFaultyCloudConverges(t *testing.T) {
	for _, cached := range []bool{false, true} {
		t.Run(fmt.Sprintf("cached=%v", cached), func(t *testing.T) { testFaultyCloudConverges(t, cached) })
	}
}

func testFaultyCloudConverges(t *testing.T, cached bool) {
	ctx := context.Background()
	c := fake.New()
	fc := faulty.New(c, faulty.Config{ThrottleRate: 0.3, ServerErrorRate: 0.1, Seed: 7})
	d := &Deployer{Cloud: fc}
	if cached {
		d.Cloud = NewInventory(fc, time.Hour)
	}
	var lbs []service.LoadBalancer
	for i := range 20 {
		lbs = append(lbs, build(t, newService(fmt.Sprintf("svc-%d", i))))
	}
	retry := func(what string, f func() error) {
		t.Helper()
		for attempt := 1; ; attempt++ {
			err := f()
			if err == nil {
				return
			}
			if !cloud.IsRetryable(err) || attempt > 100 {
				t.Fatalf("%s: attempt %d: %v", what, attempt, err)
			}
		}
	}
	for _, lb := range lbs {
		retry("deploy "+lb.Spec.Name, func() error { _, err := d.Deploy(ctx, lb); return err })
	}
	if diff := cmp.Diff(expected(t, lbs...), shapeOf(c.Snapshot())); diff != "" {
		t.Errorf("cloud (-want +got):\n%s", diff)
	}
	inj := fc.Injected()
	if inj["Throttling"] == 0 || inj["InternalFailure"] == 0 {
		t.Errorf("injected = %v, want both kinds", inj)
	}
	for _, lb := range lbs {
		retry("delete "+lb.Spec.Name, func() error { _, err := d.Delete(ctx, lb.Spec.Tags); return err })
	}
	if diff := cmp.Diff(shape{}, shapeOf(c.Snapshot())); diff != "" {
		t.Errorf("cloud after delete (-want +got):\n%s", diff)
	}
}

func TestNameTakenIsPermanent(t *testing.T) {
	ctx := context.Background()
	c := fake.New()
	want := build(t, newService("web"))
	if _, err := c.CreateLoadBalancer(ctx, cloud.LoadBalancerSpec{Name: want.Spec.Name, Scheme: "internal"}); err != nil {
		t.Fatal(err)
	}
	_, err := (&Deployer{Cloud: c}).Deploy(ctx, want)
	if !IsPermanent(err) {
		t.Fatalf("err = %v, want a permanent error", err)
	}
	if n := len(c.Snapshot().LoadBalancers); n != 1 {
		t.Errorf("%d load balancers, want the foreign one only", n)
	}
}

func TestDeleteNothingIsSuccess(t *testing.T) {
	found, err := (&Deployer{Cloud: fake.New()}).Delete(context.Background(), cloud.Tags{cloud.TagCluster: "test", cloud.TagService: "ns/none"})
	if err != nil || found {
		t.Fatalf("Delete = %v, %v; want false, nil", found, err)
	}
}

// TestInventoryListsOncePerTTL: 50 Services deployed and deleted through an
// Inventory list the cloud once, not once per Service, and end as without it.
func TestInventoryListsOncePerTTL(t *testing.T) {
	ctx := context.Background()
	c := fake.New()
	d := &Deployer{Cloud: NewInventory(c, time.Hour)}
	var lbs []service.LoadBalancer
	for i := range 50 {
		lbs = append(lbs, build(t, newService(fmt.Sprintf("svc-%d", i))))
	}
	for _, lb := range lbs {
		if _, err := d.Deploy(ctx, lb); err != nil {
			t.Fatal(err)
		}
	}
	// A second pass changes nothing.
	for _, lb := range lbs {
		res, err := d.Deploy(ctx, lb)
		if err != nil || res.Changed {
			t.Fatalf("second pass: changed %v, %v", res.Changed, err)
		}
	}
	if diff := cmp.Diff(expected(t, lbs...), shapeOf(c.Snapshot())); diff != "" {
		t.Errorf("cloud (-want +got):\n%s", diff)
	}
	calls := c.Calls()
	if calls["ListLoadBalancers"] != 1 || calls["ListTargetGroups"] != 1 {
		t.Errorf("list calls %v, want one of each", calls)
	}
	for _, lb := range lbs {
		if _, err := d.Delete(ctx, lb.Spec.Tags); err != nil {
			t.Fatal(err)
		}
	}
	if diff := cmp.Diff(shape{}, shapeOf(c.Snapshot())); diff != "" {
		t.Errorf("cloud after delete (-want +got):\n%s", diff)
	}
	// A resource deleted behind its back is found missing and re-read.
	if _, err := d.Deploy(ctx, lbs[0]); err != nil {
		t.Fatal(err)
	}
	snap := c.Snapshot()
	if err := c.DeleteLoadBalancer(ctx, snap.LoadBalancers[0].ARN); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Deploy(ctx, lbs[0]); err == nil {
		t.Fatal("deploy over a stale inventory: no error")
	}
	if _, err := d.Deploy(ctx, lbs[0]); err != nil {
		t.Fatalf("deploy after the inventory dropped its copy: %v", err)
	}
	if diff := cmp.Diff(expected(t, lbs[0]), shapeOf(c.Snapshot())); diff != "" {
		t.Errorf("cloud (-want +got):\n%s", diff)
	}
}

// A target group that is no longer wanted keeps its targets' flows: its
// targets are deregistered first (they drain), and the group is deleted
// only on a later pass, once the cloud reports it empty.
func TestStaleTargetGroupDrainsBeforeDelete(t *testing.T) {
	ctx := context.Background()
	c := fake.New()
	d := &Deployer{Cloud: c}
	res, err := d.Deploy(ctx, build(t, newService("web")))
	if err != nil {
		t.Fatal(err)
	}
	old := res.TargetGroups[1] // 53/UDP
	if err := c.RegisterTargets(ctx, old.ARN, []cloud.Target{{IP: "10.100.1.70", Port: 5353}}); err != nil {
		t.Fatal(err)
	}
	next := build(t, newService("web", func(s *corev1.Service) { s.Spec.Ports = s.Spec.Ports[:1] }))
	before := c.Calls()
	res, err = d.Deploy(ctx, next)
	if err != nil {
		t.Fatal(err)
	}
	calls := c.Calls()
	if n := calls["DeregisterTargets"] - before["DeregisterTargets"]; n != 1 {
		t.Errorf("DeregisterTargets calls: %d, want 1", n)
	}
	if n := calls["DeleteTargetGroup"] - before["DeleteTargetGroup"]; n != 0 {
		t.Errorf("the old group was deleted with a target in it (%d DeleteTargetGroup)", n)
	}
	if len(res.Pending) != 1 || !strings.Contains(res.Pending[0], old.Spec.Name) {
		t.Errorf("pending %v, want the old group draining", res.Pending)
	}
	// Drained (the fake lets targets go at once): the next pass deletes it.
	res, err = d.Deploy(ctx, next)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Pending) != 0 {
		t.Errorf("pending after the drain: %v", res.Pending)
	}
	if diff := cmp.Diff(expected(t, next), shapeOf(c.Snapshot())); diff != "" {
		t.Errorf("cloud state (-want +got):\n%s", diff)
	}
}

package tests

// The lb-controller, seen the way a user sees it: annotate a Service, get an
// EXTERNAL-IP from the cloud whose targets are the pods themselves, and the
// cloud follows scaling, annotation changes and removal. The cloud is the
// test bed's localcloud, checked through the real SDK.

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/directlb/directlb/e2e/framework"
	"github.com/directlb/directlb/pkg/cloud"
	cloudaws "github.com/directlb/directlb/pkg/cloud/aws"
	"github.com/directlb/directlb/pkg/service"
)

// lbtRun is what the steps of TestLoadBalancerDirectAccess share.
type lbtRun struct {
	b      *framework.Bed
	ns     string
	lc     *cloudaws.Client
	ctx    context.Context
	key    string // the echo Service's namespace/name
	labels map[string]string
	lbIP   string
}

func TestLoadBalancerDirectAccess(t *testing.T) {
	b := requireCloud(t)
	ns := framework.Namespace(t, b, "e2e-lb")
	framework.StartController(t, b)
	lc := framework.Cloud(t, b)
	ctx := t.Context()
	r := &lbtRun{b: b, ns: ns, lc: lc, ctx: ctx, key: ns + "/echo", labels: map[string]string{"app": "echo"}}

	lbtEchoGetsExternalIP(t, r)
	lbtFollow(t, r, 3, 5*time.Second)
	lbtReachesAllPods(t, r)
	lbtScale(t, r, 6)
	lbtFollow(t, r, 6, 5*time.Second)
	lbtScale(t, r, 2)
	lbtFollow(t, r, 2, 5*time.Second)
	lbtHealthCheckEdit(t, r)
	lbtInvalidAnnotation(t, r)
	lbtAnnotationRemoved(t, r)
	lbtServiceDeleted(t, r)
}

// lbtEchoGetsExternalIP creates the echo Deployment and its direct-access
// Service: EXTERNAL-IP within 10 s, from the load-balancer range.
func lbtEchoGetsExternalIP(t *testing.T, r *lbtRun) {
	b, ns, ctx := r.b, r.ns, r.ctx
	dep := framework.EchoDeployment(ns, 3, r.labels, nil)
	dep.Spec.Template.Spec.TerminationGracePeriodSeconds = ptr.To(int64(2))
	dep.Spec.Template.Spec.TopologySpreadConstraints = nil // wherever the scheduler puts them
	if _, err := b.Client.AppsV1().Deployments(ns).Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create deployment: %v", err)
	}
	svc := framework.DirectAccessService(ns, "echo", r.labels, map[string]string{service.AnnotationDeregistrationDelay: "2"})
	created := time.Now()
	if _, err := b.Client.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create service: %v", err)
	}

	lbIP := framework.WaitExternalIP(t, b, ns, "echo", 10*time.Second)
	r.lbIP = lbIP
	t.Logf("EXTERNAL-IP %s after %.1fs", lbIP, time.Since(created).Seconds())
	if a, err := netip.ParseAddr(lbIP); err != nil || !b.Topology.LoadBalancerCIDR.Contains(a) {
		t.Fatalf("EXTERNAL-IP %q is not in %s", lbIP, b.Topology.LoadBalancerCIDR)
	}
	if out := b.MustKubectl(t, "get", "svc", "-n", ns, "echo"); !strings.Contains(out, lbIP) {
		t.Errorf("kubectl get svc does not show %s:\n%s", lbIP, out)
	}
}

// lbtFollow: the targets follow the ready pods (pod IPs and target ports
// only) within limit.
func lbtFollow(t *testing.T, r *lbtRun, replicas int, limit time.Duration) {
	t.Helper()
	var want []string
	framework.Poll(t, 120*time.Second, fmt.Sprintf("%d pods ready and no other pod", replicas), func(ctx context.Context) (bool, string) {
		var n int
		var state string
		want, n, state = framework.PodTargets(ctx, r.b, r.ns)
		return len(want) == replicas && n == replicas, state
	})
	begin := time.Now()
	framework.Poll(t, limit, fmt.Sprintf("targets = the %d pods", replicas), func(ctx context.Context) (bool, string) {
		_, got, states := framework.Targets(ctx, r.lc, r.key)
		return cmp.Equal(want, got), fmt.Sprintf("want %v, cloud has %s", want, states)
	})
	t.Logf("%d replicas: targets followed %.2fs after the pods were ready", replicas, time.Since(begin).Seconds())
}

// lbtReachesAllPods: 300 requests through the load balancer reach all 3
// pods.
func lbtReachesAllPods(t *testing.T, r *lbtRun) {
	lc := r.lc
	framework.Poll(t, 60*time.Second, "every target healthy", func(ctx context.Context) (bool, string) {
		tg, _, states := framework.Targets(ctx, lc, r.key)
		th, err := lc.DescribeTargetHealth(ctx, tg.ARN)
		if err != nil {
			return false, err.Error()
		}
		healthy := 0
		for _, h := range th {
			if h.State == cloud.TargetHealthy {
				healthy++
			}
		}
		return healthy == 3, states
	})
	seen := map[string]int{}
	failed := 0
	for range 300 {
		code, body, err := framework.HTTPGet("http://" + r.lbIP + ":80/")
		if err != nil || code != 200 {
			failed++
			continue
		}
		seen[strings.TrimSpace(body)]++
	}
	t.Logf("300 requests: %d failed, answers per pod %v", failed, seen)
	if failed > 0 || len(seen) != 3 {
		t.Errorf("300 requests: %d failed, %d pods answered (%v); want 0 failed and all 3", failed, len(seen), seen)
	}
}

// lbtScale scales the echo Deployment to n.
func lbtScale(t *testing.T, r *lbtRun, n int32) {
	t.Helper()
	s, err := r.b.Client.AppsV1().Deployments(r.ns).GetScale(r.ctx, "echo", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s.Spec.Replicas = n
	if _, err := r.b.Client.AppsV1().Deployments(r.ns).UpdateScale(r.ctx, "echo", s, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// lbtHealthCheckEdit: a health-check annotation change modifies the target
// group.
func lbtHealthCheckEdit(t *testing.T, r *lbtRun) {
	b, ns, ctx := r.b, r.ns, r.ctx
	svcNow, err := b.Client.CoreV1().Services(ns).Get(ctx, "echo", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	svcNow.Annotations[service.AnnotationHCInterval] = "7"
	if _, err := b.Client.CoreV1().Services(ns).Update(ctx, svcNow, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	framework.Poll(t, 10*time.Second, "health-check interval 7 in the cloud", func(ctx context.Context) (bool, string) {
		tg, _, _ := framework.Targets(ctx, r.lc, r.key)
		return tg.HealthCheck.IntervalSeconds == 7, fmt.Sprintf("%+v", tg.HealthCheck)
	})
}

// lbtInvalidAnnotation: an invalid annotation gets a Warning event, a
// condition, and nothing in the cloud.
func lbtInvalidAnnotation(t *testing.T, r *lbtRun) {
	b, ns, ctx := r.b, r.ns, r.ctx
	bad := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "bad", Namespace: ns, Annotations: map[string]string{
			service.AnnotationDirectAccess: "true", service.AnnotationScheme: "public"}},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, LoadBalancerClass: ptr.To(service.LoadBalancerClass), Selector: r.labels,
			Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}}},
	}
	if _, err := b.Client.CoreV1().Services(ns).Create(ctx, bad, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	framework.Poll(t, 20*time.Second, "InvalidConfiguration event and condition", func(ctx context.Context) (bool, string) {
		evs, err := b.Client.EventsV1().Events(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err.Error()
		}
		event := false
		for _, e := range evs.Items {
			event = event || (e.Regarding.Name == "bad" && e.Reason == "InvalidConfiguration" && e.Type == corev1.EventTypeWarning)
		}
		s, err := b.Client.CoreV1().Services(ns).Get(ctx, "bad", metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		cond := false
		for _, c := range s.Status.Conditions {
			cond = cond || (c.Type == "directlb.io/LoadBalancerReady" && c.Reason == "InvalidConfiguration")
		}
		return event && cond, fmt.Sprintf("event %v condition %v (%+v)", event, cond, s.Status.Conditions)
	})
	if lbs, err := r.lc.ListLoadBalancers(ctx, cloud.Tags{cloud.TagService: ns + "/bad"}); err != nil || len(lbs) != 0 {
		t.Errorf("the invalid Service has %d load balancers (err %v), want none", len(lbs), err)
	}
}

// lbtAnnotationRemoved: removing the annotation removes every cloud
// resource, then the finalizer and the address.
func lbtAnnotationRemoved(t *testing.T, r *lbtRun) {
	b, ns, ctx, lc := r.b, r.ns, r.ctx, r.lc
	svcNow, err := b.Client.CoreV1().Services(ns).Get(ctx, "echo", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	delete(svcNow.Annotations, service.AnnotationDirectAccess)
	if _, err := b.Client.CoreV1().Services(ns).Update(ctx, svcNow, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	framework.Poll(t, 30*time.Second, "cloud empty after the annotation went", func(ctx context.Context) (bool, string) {
		owner := cloud.Tags{cloud.TagCluster: framework.Cluster, cloud.TagService: r.key}
		lbs, err1 := lc.ListLoadBalancers(ctx, owner)
		tgs, err2 := lc.ListTargetGroups(ctx, owner)
		s, err3 := b.Client.CoreV1().Services(ns).Get(ctx, "echo", metav1.GetOptions{})
		if err1 != nil || err2 != nil || err3 != nil {
			return false, fmt.Sprint(err1, err2, err3)
		}
		return len(lbs) == 0 && len(tgs) == 0 && len(s.Finalizers) == 0 && len(s.Status.LoadBalancer.Ingress) == 0,
			fmt.Sprintf("%d load balancers, %d target groups, finalizers %v, ingress %v", len(lbs), len(tgs), s.Finalizers, s.Status.LoadBalancer.Ingress)
	})
}

// lbtServiceDeleted: deleting a direct-access Service removes everything
// too.
func lbtServiceDeleted(t *testing.T, r *lbtRun) {
	b, ns, ctx, lc := r.b, r.ns, r.ctx, r.lc
	if err := b.Client.CoreV1().Services(ns).Delete(ctx, "bad", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	svcNow, err := b.Client.CoreV1().Services(ns).Get(ctx, "echo", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	svcNow.Annotations[service.AnnotationDirectAccess] = "true"
	if _, err := b.Client.CoreV1().Services(ns).Update(ctx, svcNow, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	framework.Poll(t, 20*time.Second, "load balancer back", func(ctx context.Context) (bool, string) {
		lbs, err := lc.ListLoadBalancers(ctx, cloud.Tags{cloud.TagCluster: framework.Cluster, cloud.TagService: r.key})
		return err == nil && len(lbs) == 1, fmt.Sprint(len(lbs), err)
	})
	if err := b.Client.CoreV1().Services(ns).Delete(ctx, "echo", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	framework.Poll(t, 30*time.Second, "Service gone and the cloud empty", func(ctx context.Context) (bool, string) {
		owner := cloud.Tags{cloud.TagCluster: framework.Cluster}
		lbs, err1 := lc.ListLoadBalancers(ctx, owner)
		tgs, err2 := lc.ListTargetGroups(ctx, owner)
		_, err3 := b.Client.CoreV1().Services(ns).Get(ctx, "echo", metav1.GetOptions{})
		if err1 != nil || err2 != nil {
			return false, fmt.Sprint(err1, err2)
		}
		return len(lbs) == 0 && len(tgs) == 0 && err3 != nil,
			fmt.Sprintf("%d load balancers, %d target groups, get service: %v", len(lbs), len(tgs), err3)
	})
}

// TestLoadBalancerControllerKilled: SIGKILL the controller in the middle of
// creating 20 Services, start a new one: every Service converges with one
// load balancer, one target group and one listener, and deleting them
// leaves the cloud empty.
func TestLoadBalancerControllerKilled(t *testing.T) {
	b := requireCloud(t)
	ns := framework.Namespace(t, b, "e2e-lb-kill")
	lc := framework.Cloud(t, b)
	ctx := t.Context()
	kill := framework.StartController(t, b)

	const n = 20
	lbtCreateServices(t, b, ns, n)
	framework.Poll(t, 30*time.Second, "the first Services converge", func(ctx context.Context) (bool, string) {
		k, state := lbtWithIP(ctx, b, ns)
		return k >= 1, state
	})
	kill()
	k, _ := lbtWithIP(ctx, b, ns)
	t.Logf("SIGKILL with %d of %d Services converged", k, n)
	framework.StartController(t, b)
	framework.Poll(t, 60*time.Second, "every Service converged after the restart", func(ctx context.Context) (bool, string) {
		k, state := lbtWithIP(ctx, b, ns)
		return k == n, state
	})

	owner := cloud.Tags{cloud.TagCluster: framework.Cluster}
	lbtOneOfEachPerService(t, lc, owner, ns, n)
	lbtDeleteLeavesNothing(t, b, lc, owner, ns, n)
}

// lbtCreateServices creates n direct-access Services s00, s01, … that
// select no pod.
func lbtCreateServices(t *testing.T, b *framework.Bed, ns string, n int) {
	for i := range n {
		s := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("s%02d", i), Namespace: ns,
				Annotations: map[string]string{service.AnnotationDirectAccess: "true"}},
			Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, LoadBalancerClass: ptr.To(service.LoadBalancerClass), Selector: map[string]string{"app": "none"},
				Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}}},
		}
		if _, err := b.Client.CoreV1().Services(ns).Create(t.Context(), s, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
}

// lbtWithIP counts the Services in ns with an EXTERNAL-IP.
func lbtWithIP(ctx context.Context, b *framework.Bed, ns string) (int, string) {
	l, err := b.Client.CoreV1().Services(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return 0, err.Error()
	}
	k := 0
	for _, s := range l.Items {
		if len(s.Status.LoadBalancer.Ingress) > 0 {
			k++
		}
	}
	return k, fmt.Sprintf("%d of %d with an EXTERNAL-IP", k, len(l.Items))
}

// lbtOneOfEachPerService: each of the n Services in ns has one load
// balancer with one listener, and one target group.
func lbtOneOfEachPerService(t *testing.T, lc *cloudaws.Client, owner cloud.Tags, ns string, n int) {
	ctx := t.Context()
	lbs, err := lc.ListLoadBalancers(ctx, owner)
	if err != nil {
		t.Fatal(err)
	}
	tgs, err := lc.ListTargetGroups(ctx, owner)
	if err != nil {
		t.Fatal(err)
	}
	perService := map[string]int{}
	for _, lb := range lbs {
		if strings.HasPrefix(lb.Tags[cloud.TagService], ns+"/") {
			perService[lb.Tags[cloud.TagService]]++
			ls, err := lc.ListListeners(ctx, lb.ARN)
			if err != nil || len(ls) != 1 {
				t.Errorf("%s: %d listeners (err %v), want 1", lb.Name, len(ls), err)
			}
		}
	}
	tgCount := 0
	for _, tg := range tgs {
		if strings.HasPrefix(tg.Tags[cloud.TagService], ns+"/") {
			tgCount++
		}
	}
	if len(perService) != n || tgCount != n {
		t.Errorf("%d Services with load balancers and %d target groups, want %d each", len(perService), tgCount, n)
	}
	for svc, c := range perService {
		if c != 1 {
			t.Errorf("%s has %d load balancers", svc, c)
		}
	}
}

// lbtDeleteLeavesNothing deletes the n Services and wants nothing of them
// left in the cloud.
func lbtDeleteLeavesNothing(t *testing.T, b *framework.Bed, lc *cloudaws.Client, owner cloud.Tags, ns string, n int) {
	for i := range n {
		if err := b.Client.CoreV1().Services(ns).Delete(t.Context(), fmt.Sprintf("s%02d", i), metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	framework.Poll(t, 60*time.Second, "Services gone and nothing left in the cloud", func(ctx context.Context) (bool, string) {
		l, err := b.Client.CoreV1().Services(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err.Error()
		}
		left := 0
		lbs, err1 := lc.ListLoadBalancers(ctx, owner)
		tgs, err2 := lc.ListTargetGroups(ctx, owner)
		if err1 != nil || err2 != nil {
			return false, fmt.Sprint(err1, err2)
		}
		for _, lb := range lbs {
			if strings.HasPrefix(lb.Tags[cloud.TagService], ns+"/") {
				left++
			}
		}
		for _, tg := range tgs {
			if strings.HasPrefix(tg.Tags[cloud.TagService], ns+"/") {
				left++
			}
		}
		return len(l.Items) == 0 && left == 0, fmt.Sprintf("%d Services, %d cloud resources left", len(l.Items), left)
	})
}

package tests

// Readiness gates, seen the way a user sees them: a pod of a direct-access
// Service gets the gate target-health.directlb.io/<service> at creation and
// is Ready only while the load balancer reports its target healthy; with
// the controller down, pod creation follows the webhook's failure policy.

import (
	"context"
	"fmt"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/directlb/directlb/e2e/framework"
	"github.com/directlb/directlb/pkg/readinessgate"
	"github.com/directlb/directlb/pkg/service"
)

// TestReadinessGateFollowsTargetHealth: a pod whose target fails the load
// balancer's health check keeps its gate False and is never Ready; healthy,
// the gate turns True and latches: unhealthy again, or a health-check path
// typo on the live Service, leave the pod Ready and show a Warning event and
// a condition on the Service.
func TestReadinessGateFollowsTargetHealth(t *testing.T) {
	b := requireCloud(t)
	ns := framework.Namespace(t, b, "e2e-gates")
	framework.StartGateController(t, b, ns)
	framework.DeleteServices(t, b, ns)
	ctx := t.Context()
	labels := map[string]string{"app": "web"}
	if _, err := b.Client.CoreV1().Services(ns).Create(ctx, framework.GateService(ns, "web", labels, nil), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	framework.WaitWebhook(t, b, ns, "web", labels)
	rgCreateUnhealthyPod(t, b, ns, labels)

	p := rgWatchUntil(t, b, ns, 60*time.Second, "gate False/Unhealthy", rgUnhealthy, rgReady)
	// Stays so: several more health-check rounds, never Ready.
	end := time.Now().Add(12 * time.Second)
	for time.Now().Before(end) {
		p = rgWatchUntil(t, b, ns, 5*time.Second, "still unhealthy", rgUnhealthy, rgReady)
		time.Sleep(time.Second)
	}
	ip := p.Status.PodIP

	rgSetHealth(t, ip, 200)
	begin := time.Now()
	rgWatchUntil(t, b, ns, 40*time.Second, "gate True and pod Ready", func(p *corev1.Pod) bool {
		s, r := framework.Gate(p, "web")
		return s == corev1.ConditionTrue && r == readinessgate.ReasonHealthy && rgReady(p)
	}, nil)
	t.Logf("healthy → gate True and Ready in %.1fs", time.Since(begin).Seconds())

	// Once True, the gate latches: health regressions of a Ready pod are
	// reported on the Service, never as a readiness change.
	rgSetHealth(t, ip, 500)
	rgWaitServiceHealth(t, b, ns, "web", metav1.ConditionFalse, 40*time.Second)
	rgWaitServiceEvent(t, b, ns, "web", corev1.EventTypeWarning, readinessgate.EventTargetHealthFailed)
	rgStaysReady(t, b, ns, "target unhealthy", 12*time.Second) // more than two check rounds
	rgSetHealth(t, ip, 200)
	rgWaitServiceHealth(t, b, ns, "web", metav1.ConditionTrue, 40*time.Second)

	// A health-check path typo on the live Service: every check fails, the
	// pod stays Ready, the Service says why.
	svc, err := b.Client.CoreV1().Services(ns).Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	svc.Annotations[service.AnnotationHCPath] = "/healthzz"
	if _, err := b.Client.CoreV1().Services(ns).Update(ctx, svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	begin = time.Now()
	cond := rgWaitServiceHealth(t, b, ns, "web", metav1.ConditionFalse, 60*time.Second)
	t.Logf("health-check path typo → Service condition %s in %.1fs: %s", readinessgate.ConditionTargetsHealthy, time.Since(begin).Seconds(), cond.Message)
	rgStaysReady(t, b, ns, "health-check path typo", 12*time.Second)
}

// rgCreateUnhealthyPod creates web-0, with the gate: the kubelet's
// readiness probe is a TCP check and passes; the load balancer's HTTP
// check of /healthz gets 500.
func rgCreateUnhealthyPod(t *testing.T, b *framework.Bed, ns string, labels map[string]string) {
	ctr := framework.EchoContainer()
	ctr.ReadinessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromString("http")}}, PeriodSeconds: 1}
	ctr.Env = []corev1.EnvVar{{Name: "ECHO_HEALTH_STATUS", Value: "500"}}
	pod, err := b.Client.CoreV1().Pods(ns).Create(t.Context(), &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web-0", Namespace: ns, Labels: labels},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{ctr}, TerminationGracePeriodSeconds: ptrInt64(15)},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !framework.HasGate(pod, "web") {
		t.Fatalf("pod created without the gate: %v", pod.Spec.ReadinessGates)
	}
}

// rgWatchUntil polls web-0 until cond holds, failing at once if never
// does; it returns the last pod seen.
func rgWatchUntil(t *testing.T, b *framework.Bed, ns string, timeout time.Duration, what string, cond func(*corev1.Pod) bool, never func(*corev1.Pod) bool) *corev1.Pod {
	t.Helper()
	var last *corev1.Pod
	framework.Poll(t, timeout, what, func(ctx context.Context) (bool, string) {
		p, err := b.Client.CoreV1().Pods(ns).Get(ctx, "web-0", metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		last = p
		if never != nil && never(p) {
			t.Fatalf("%s: pod became Ready while its target is unhealthy: %+v", what, p.Status.Conditions)
		}
		s, r := framework.Gate(p, "web")
		return cond(p), fmt.Sprintf("gate %s/%s containersReady=%s ready=%s", s, r,
			framework.Condition(p, corev1.ContainersReady), framework.Condition(p, corev1.PodReady))
	})
	return last
}

func rgReady(p *corev1.Pod) bool {
	return framework.Condition(p, corev1.PodReady) == corev1.ConditionTrue
}

// rgUnhealthy: the gate is False for an unhealthy target while the
// containers are ready.
func rgUnhealthy(p *corev1.Pod) bool {
	s, r := framework.Gate(p, "web")
	return s == corev1.ConditionFalse && r == readinessgate.ReasonUnhealthy && framework.Condition(p, corev1.ContainersReady) == corev1.ConditionTrue
}

// rgSetHealth makes the echo pod at ip answer its health check with code.
func rgSetHealth(t *testing.T, ip string, code int) {
	t.Helper()
	if c, _, err := framework.HTTPGet(fmt.Sprintf("http://%s:8080/control/health?status=%d", ip, code)); err != nil || c != 200 {
		t.Fatalf("set health of %s to %d: %d %v", ip, code, c, err)
	}
}

// rgStaysReady samples web-0 every 200 ms for d and wants its gate True
// and the pod Ready throughout.
func rgStaysReady(t *testing.T, b *framework.Bed, ns, what string, d time.Duration) {
	t.Helper()
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
		p, err := b.Client.CoreV1().Pods(ns).Get(t.Context(), "web-0", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if s, r := framework.Gate(p, "web"); s != corev1.ConditionTrue || !rgReady(p) {
			t.Fatalf("%s: gate %s/%s, Ready %s: want the pod to stay Ready", what, s, r, framework.Condition(p, corev1.PodReady))
		}
	}
}

// rgWaitServiceHealth waits for the gate writer's condition on the Service.
func rgWaitServiceHealth(t *testing.T, b *framework.Bed, ns, name string, status metav1.ConditionStatus, timeout time.Duration) *metav1.Condition {
	t.Helper()
	var got *metav1.Condition
	framework.Poll(t, timeout, fmt.Sprintf("Service %s condition %s=%s", name, readinessgate.ConditionTargetsHealthy, status), func(ctx context.Context) (bool, string) {
		svc, err := b.Client.CoreV1().Services(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		got = meta.FindStatusCondition(svc.Status.Conditions, readinessgate.ConditionTargetsHealthy)
		if got == nil {
			return false, "no condition"
		}
		return got.Status == status, fmt.Sprintf("%s %s: %s", got.Status, got.Reason, got.Message)
	})
	return got
}

// rgWaitServiceEvent waits for an event of type and reason about the Service.
func rgWaitServiceEvent(t *testing.T, b *framework.Bed, ns, name, typ, reason string) {
	t.Helper()
	framework.Poll(t, 20*time.Second, "event "+typ+"/"+reason+" on Service "+name, func(ctx context.Context) (bool, string) {
		evs, err := b.Client.EventsV1().Events(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err.Error()
		}
		var seen []string
		for _, e := range evs.Items {
			if e.Regarding.Kind == "Service" && e.Regarding.Name == name && e.Type == typ && e.Reason == reason {
				return true, ""
			}
			seen = append(seen, e.Type+"/"+e.Reason)
		}
		return false, fmt.Sprint(seen)
	})
}

func ptrInt64(v int64) *int64 { return &v }

// TestReadinessGateControllerDown: with the controller down, failurePolicy
// Ignore (the default) lets pods be created, without gates; Fail refuses
// them until the webhook is back.
func TestReadinessGateControllerDown(t *testing.T) {
	b := requireCloud(t)
	ns := framework.Namespace(t, b, "e2e-gates-down")
	ctl := framework.StartGateController(t, b, ns)
	ctx := t.Context()
	labels := map[string]string{"app": "web"}
	// No load balancer needed: a Service the controller does not own (no
	// cloud resources, nothing to clean up) would not be gated, so use a
	// direct-access one and delete it while the controller runs.
	if _, err := b.Client.CoreV1().Services(ns).Create(ctx, framework.GateService(ns, "web", labels, nil), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	framework.WaitWebhook(t, b, ns, "web", labels)
	whc, err := b.Client.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, ctl.WebhookConfig, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if p := whc.Webhooks[0].FailurePolicy; p == nil || *p != admissionregistrationv1.Ignore {
		t.Fatalf("failurePolicy %v, want Ignore (the documented default)", p)
	}

	ctl.Kill()
	pod := func(name string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels},
			Spec: corev1.PodSpec{Containers: []corev1.Container{framework.EchoContainer()}}}
	}
	begin := time.Now()
	got, err := b.Client.CoreV1().Pods(ns).Create(ctx, pod("down-ignore"), metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
	if err != nil {
		t.Fatalf("Ignore, controller down: pod creation failed: %v", err)
	}
	if len(got.Spec.ReadinessGates) != 0 {
		t.Fatalf("Ignore, controller down: pod has gates %v", got.Spec.ReadinessGates)
	}
	t.Logf("Ignore, controller down: pod created without gates in %.2fs", time.Since(begin).Seconds())

	fail := admissionregistrationv1.Fail
	whc.Webhooks[0].FailurePolicy = &fail
	if _, err := b.Client.AdmissionregistrationV1().MutatingWebhookConfigurations().Update(ctx, whc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	framework.Poll(t, 20*time.Second, "Fail, controller down: creation refused", func(ctx context.Context) (bool, string) {
		_, err := b.Client.CoreV1().Pods(ns).Create(ctx, pod("down-fail"), metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		return err != nil && !apierrors.IsAlreadyExists(err), fmt.Sprintf("created (err %v)", err)
	})
	_, err = b.Client.CoreV1().Pods(ns).Create(ctx, pod("down-fail"), metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
	t.Logf("Fail, controller down: %v", err)

	// The Service's finalizer needs a controller: start one again to clean up.
	_ = b.Client.AdmissionregistrationV1().MutatingWebhookConfigurations().Delete(ctx, ctl.WebhookConfig, metav1.DeleteOptions{})
	framework.StartGateController(t, b, ns)
	framework.DeleteServices(t, b, ns)
}

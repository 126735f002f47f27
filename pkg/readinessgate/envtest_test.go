package readinessgate_test

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/directlb/directlb/internal/testenv"
	"github.com/directlb/directlb/pkg/certs"
	"github.com/directlb/directlb/pkg/cloud"
	"github.com/directlb/directlb/pkg/cloud/fake"
	"github.com/directlb/directlb/pkg/deploy"
	"github.com/directlb/directlb/pkg/readinessgate"
	"github.com/directlb/directlb/pkg/service"
)

// These tests run the gate writer and the webhook against a real
// kube-apiserver and etcd (controller-runtime's envtest); the cloud is the
// in-memory fake with target health set by the test.

var (
	restConfig *rest.Config
	skipReason string
	nsCounter  atomic.Int32
)

func TestMain(m *testing.M) {
	flag.Parse() // for -short
	os.Exit(testenv.RunEnvtest(m, "dlbt-readinessgate-assets-", &restConfig, &skipReason))
}

// healthCloud is the fake cloud whose targets report the state the test
// sets per IP (healthy when unset).
type healthCloud struct {
	*fake.Cloud
	mu    sync.Mutex
	state map[string]cloud.TargetState
	calls atomic.Int64 // DescribeTargetHealth calls
}

func (h *healthCloud) set(ip string, s cloud.TargetState) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.state[ip] = s
}

func (h *healthCloud) DescribeTargetHealth(ctx context.Context, arn string) ([]cloud.TargetHealth, error) {
	h.calls.Add(1)
	ts, err := h.Cloud.DescribeTargetHealth(ctx, arn)
	h.mu.Lock()
	defer h.mu.Unlock()
	for i := range ts {
		if s, ok := h.state[ts[i].IP]; ok {
			ts[i].State = s
		}
	}
	return ts, err
}

type staticGroups map[types.NamespacedName][]deploy.TargetGroup

func (s staticGroups) Get(k types.NamespacedName) []deploy.TargetGroup { return s[k] }

func newNamespace(t *testing.T, labels map[string]string) (client.Client, string) {
	t.Helper()
	if skipReason != "" {
		t.Skip("needs a real kube-apiserver and etcd: " + skipReason)
	}
	c, err := client.New(restConfig, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ns := fmt.Sprintf("rg%d", nsCounter.Add(1))
	if err := c.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: labels}}); err != nil {
		t.Fatal(err)
	}
	return c, ns
}

func startManager(t *testing.T, ns string, setup func(context.Context, ctrl.Manager)) {
	t.Helper()
	mgr, err := ctrl.NewManager(restConfig, ctrl.Options{
		Cache:                  cache.Options{DefaultNamespaces: map[string]cache.Config{ns: {}}},
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		// The plain workqueue, as lb-controller runs (controller.QueueOptions).
		Controller: config.Controller{SkipNameValidation: ptr.To(true), UsePriorityQueue: ptr.To(false)},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	setup(ctx, mgr)
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("manager: %v", err)
		}
	})
}

func eventually(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	last := ""
	for time.Now().Before(deadline) {
		ok, why := cond()
		if ok {
			return
		}
		last = why
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s; last: %s", what, last)
}

func directService(ns, name string) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Annotations: map[string]string{service.AnnotationDirectAccess: "true"}},
		Spec: corev1.ServiceSpec{
			Type:     corev1.ServiceTypeLoadBalancer,
			Selector: map[string]string{"app": name},
			Ports:    []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80}},
		},
	}
}

func gateCondition(c client.Client, ns, pod, svc string) (*corev1.PodCondition, error) {
	p := &corev1.Pod{}
	if err := c.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: pod}, p); err != nil {
		return nil, err
	}
	for i := range p.Status.Conditions {
		if p.Status.Conditions[i].Type == service.ReadinessGateType(svc) {
			return &p.Status.Conditions[i], nil
		}
	}
	return nil, nil
}

func waitGate(t *testing.T, c client.Client, ns, pod, svc string, status corev1.ConditionStatus, reason string) {
	t.Helper()
	eventually(t, fmt.Sprintf("gate %s %s", status, reason), func() (bool, string) {
		cond, err := gateCondition(c, ns, pod, svc)
		if err != nil || cond == nil {
			return false, fmt.Sprint("no condition ", err)
		}
		return cond.Status == status && cond.Reason == reason, fmt.Sprintf("%s %s: %s", cond.Status, cond.Reason, cond.Message)
	})
}

// TestGateWriter follows one pod's gate through registration, health,
// failing health checks, recovery, and the Service opting out.
func TestGateWriter(t *testing.T) {
	c, ns := newNamespace(t, nil)
	ctx := context.Background()
	hc := &healthCloud{Cloud: fake.New(), state: map[string]cloud.TargetState{}}
	lb, err := hc.CreateLoadBalancer(ctx, cloud.LoadBalancerSpec{Name: "lb"})
	if err != nil {
		t.Fatal(err)
	}
	tg, err := hc.CreateTargetGroup(ctx, cloud.TargetGroupSpec{Name: "tg-web", Protocol: cloud.ProtocolTCP, Port: 8080})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := hc.CreateListener(ctx, cloud.ListenerSpec{LoadBalancerARN: lb.ARN, Protocol: cloud.ProtocolTCP, Port: 80, TargetGroupARN: tg.ARN}); err != nil {
		t.Fatal(err)
	}
	key := types.NamespacedName{Namespace: ns, Name: "web"}
	groups := staticGroups{key: {{ARN: tg.ARN, TargetGroup: service.TargetGroup{Spec: cloud.TargetGroupSpec{Name: "tg-web"}}}}}

	cfg := readinessgate.DefaultConfig()
	cfg.PollInterval = 100 * time.Millisecond
	cfg.MaxPendingInterval = 300 * time.Millisecond
	cfg.WatchInterval = time.Second
	cfg.ReportPendingAfter = 0 // every verdict at once (TestGateReportsPendingLate has the hold)
	// The slow regression check, made fast: the test watches a regression
	// of a latched gate (TestGateWriterIdle keeps the default).
	cfg.RegressionChecksPerMinute = 600 // one target group: checked every WatchInterval
	startManager(t, ns, func(ctx context.Context, mgr ctrl.Manager) {
		if _, err := readinessgate.Setup(ctx, mgr, readinessgate.Options{
			Config: cfg, Classes: service.ClassFilter{Default: true}, Cloud: hc, TargetGroups: groups,
		}); err != nil {
			t.Fatal(err)
		}
	})

	if err := c.Create(ctx, directService(ns, "web")); err != nil {
		t.Fatal(err)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "web-1", Labels: map[string]string{"app": "web"}},
		Spec: corev1.PodSpec{
			Containers:     []corev1.Container{{Name: "app", Image: "echo"}},
			ReadinessGates: []corev1.PodReadinessGate{{ConditionType: service.ReadinessGateType("web")}},
		},
	}
	if err := c.Create(ctx, pod); err != nil {
		t.Fatal(err)
	}
	waitGate(t, c, ns, "web-1", "web", corev1.ConditionFalse, readinessgate.ReasonPodIPPending)

	const ip = "10.100.1.70"
	setIP(t, c, pod, ip)
	waitGate(t, c, ns, "web-1", "web", corev1.ConditionFalse, readinessgate.ReasonRegistering)

	hc.set(ip, cloud.TargetInitial)
	if err := hc.RegisterTargets(ctx, tg.ARN, []cloud.Target{{IP: ip, Port: 8080}}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	waitGate(t, c, ns, "web-1", "web", corev1.ConditionFalse, readinessgate.ReasonRegistering)

	hc.set(ip, cloud.TargetHealthy)
	waitGate(t, c, ns, "web-1", "web", corev1.ConditionTrue, readinessgate.ReasonHealthy)

	// The gate latches: a target that fails health checks later leaves it
	// True, and the Service says so in a condition and a Warning event.
	hc.set(ip, cloud.TargetUnhealthy)
	waitServiceCondition(t, c, ns, "web", metav1.ConditionFalse, readinessgate.ReasonTargetsUnhealthy)
	waitEvent(t, c, ns, "web", readinessgate.EventTargetHealthFailed)
	stillTrue(t, c, ns, "web-1", "web", readinessgate.ReasonHealthy, 2*cfg.WatchInterval)
	hc.set(ip, cloud.TargetHealthy)
	waitServiceCondition(t, c, ns, "web", metav1.ConditionTrue, readinessgate.ReasonTargetsHealthy)
	waitGate(t, c, ns, "web-1", "web", corev1.ConditionTrue, readinessgate.ReasonHealthy)

	releaseGates(t, ctx, c, key)
}

// releaseGates: the Service stops being direct-access; its gates are released.
func releaseGates(t *testing.T, ctx context.Context, c client.Client, key types.NamespacedName) {
	ns := key.Namespace
	svc := &corev1.Service{}
	if err := c.Get(ctx, key, svc); err != nil {
		t.Fatal(err)
	}
	delete(svc.Annotations, service.AnnotationDirectAccess)
	if err := c.Update(ctx, svc); err != nil {
		t.Fatal(err)
	}
	waitGate(t, c, ns, "web-1", "web", corev1.ConditionTrue, readinessgate.ReasonReleased)
	eventually(t, "the TargetsHealthy condition removed with the release", func() (bool, string) {
		var s corev1.Service
		if err := c.Get(ctx, key, &s); err != nil {
			return false, err.Error()
		}
		cond := meta.FindStatusCondition(s.Status.Conditions, readinessgate.ConditionTargetsHealthy)
		return cond == nil, fmt.Sprintf("%+v", cond)
	})
}

// TestGateWriterServiceDeleted: the gates of a deleted Service are released.
// With every gate True and nothing draining, the writer stops polling:
// over a window with pod updates (which enqueue the Service) it makes no
// DescribeTargetHealth call; a new pod makes it poll again.
// TestGateReportsPendingLate: a waiting pod's gate gets no False "not
// yet" condition before ReportPendingAfter: a target healthy by then costs
// the pod one status patch (True), one still initial gets Registering
// written after it.
func TestGateReportsPendingLate(t *testing.T) {
	c, ns := newNamespace(t, nil)
	ctx := context.Background()
	hc := &healthCloud{Cloud: fake.New(), state: map[string]cloud.TargetState{}}
	lb, _ := hc.CreateLoadBalancer(ctx, cloud.LoadBalancerSpec{Name: "lb-late"})
	tg, err := hc.CreateTargetGroup(ctx, cloud.TargetGroupSpec{Name: "tg-late", Protocol: cloud.ProtocolTCP, Port: 8080})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := hc.CreateListener(ctx, cloud.ListenerSpec{LoadBalancerARN: lb.ARN, Protocol: cloud.ProtocolTCP, Port: 80, TargetGroupARN: tg.ARN}); err != nil {
		t.Fatal(err)
	}
	groups := staticGroups{{Namespace: ns, Name: "web"}: {{ARN: tg.ARN, TargetGroup: service.TargetGroup{Spec: cloud.TargetGroupSpec{Name: "tg-late"}}}}}
	cfg := readinessgate.DefaultConfig()
	cfg.PollInterval = 100 * time.Millisecond
	cfg.MaxPendingInterval = 300 * time.Millisecond
	const hold = 2 * time.Second
	cfg.ReportPendingAfter = hold
	startManager(t, ns, func(ctx context.Context, mgr ctrl.Manager) {
		if _, err := readinessgate.Setup(ctx, mgr, readinessgate.Options{
			Config: cfg, Classes: service.ClassFilter{Default: true}, Cloud: hc, TargetGroups: groups,
		}); err != nil {
			t.Fatal(err)
		}
	})
	if err := c.Create(ctx, directService(ns, "web")); err != nil {
		t.Fatal(err)
	}
	newPod := func(name, ip string, state cloud.TargetState) *corev1.Pod {
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"app": "web"}},
			Spec: corev1.PodSpec{
				Containers:     []corev1.Container{{Name: "app", Image: "echo"}},
				ReadinessGates: []corev1.PodReadinessGate{{ConditionType: service.ReadinessGateType("web")}},
			},
		}
		if err := c.Create(ctx, pod); err != nil {
			t.Fatal(err)
		}
		hc.set(ip, state)
		if err := hc.RegisterTargets(ctx, tg.ARN, []cloud.Target{{IP: ip, Port: 8080}}); err != nil {
			t.Fatal(err)
		}
		setIP(t, c, pod, ip)
		return pod
	}

	// Still initial: no condition during the hold, Registering after it.
	start := time.Now()
	newPod("web-1", "10.100.1.75", cloud.TargetInitial)
	for time.Since(start) < hold*3/4 {
		if cond, err := gateCondition(c, ns, "web-1", "web"); err != nil || cond != nil {
			t.Fatalf("%.1fs after creation: gate condition %+v (err %v), want none during the %s hold", time.Since(start).Seconds(), cond, err, hold)
		}
		time.Sleep(50 * time.Millisecond)
	}
	waitGate(t, c, ns, "web-1", "web", corev1.ConditionFalse, readinessgate.ReasonRegistering)
	if d := time.Since(start); d < hold {
		t.Errorf("Registering written %.1fs after creation, before the %s hold ended", d.Seconds(), hold)
	}

	// Healthy within the hold: True, and never a False condition before.
	newPod("web-2", "10.100.1.76", cloud.TargetInitial)
	time.Sleep(500 * time.Millisecond)
	hc.set("10.100.1.76", cloud.TargetHealthy)
	eventually(t, "web-2's gate True, never False", func() (bool, string) {
		cond, err := gateCondition(c, ns, "web-2", "web")
		if err == nil && cond != nil && cond.Status == corev1.ConditionFalse {
			t.Fatalf("web-2: gate %s %s written during the hold", cond.Status, cond.Reason)
		}
		return err == nil && cond != nil && cond.Status == corev1.ConditionTrue && cond.Reason == readinessgate.ReasonHealthy, fmt.Sprint(cond, err)
	})
}

func TestGateWriterIdle(t *testing.T) {
	c, ns := newNamespace(t, nil)
	ctx := context.Background()
	hc := &healthCloud{Cloud: fake.New(), state: map[string]cloud.TargetState{}}
	lb, _ := hc.CreateLoadBalancer(ctx, cloud.LoadBalancerSpec{Name: "lb-idle"})
	tg, err := hc.CreateTargetGroup(ctx, cloud.TargetGroupSpec{Name: "tg-idle", Protocol: cloud.ProtocolTCP, Port: 8080})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := hc.CreateListener(ctx, cloud.ListenerSpec{LoadBalancerARN: lb.ARN, Protocol: cloud.ProtocolTCP, Port: 80, TargetGroupARN: tg.ARN}); err != nil {
		t.Fatal(err)
	}
	key := types.NamespacedName{Namespace: ns, Name: "web"}
	groups := staticGroups{key: {{ARN: tg.ARN, TargetGroup: service.TargetGroup{Spec: cloud.TargetGroupSpec{Name: "tg-idle"}}}}}
	cfg := readinessgate.DefaultConfig()
	// A big cluster's budget share: the slow check comes every 10 min.
	cfg.RegressionChecksPerMinute = 0.1
	cfg.PollInterval = 100 * time.Millisecond
	cfg.MaxPendingInterval = 300 * time.Millisecond
	cfg.WatchInterval = 300 * time.Millisecond
	startManager(t, ns, func(ctx context.Context, mgr ctrl.Manager) {
		if _, err := readinessgate.Setup(ctx, mgr, readinessgate.Options{
			Config: cfg, Classes: service.ClassFilter{Default: true}, Cloud: hc, TargetGroups: groups,
		}); err != nil {
			t.Fatal(err)
		}
	})
	if err := c.Create(ctx, directService(ns, "web")); err != nil {
		t.Fatal(err)
	}
	newPod := func(name, ip string) *corev1.Pod {
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"app": "web"}},
			Spec: corev1.PodSpec{
				Containers:     []corev1.Container{{Name: "app", Image: "echo"}},
				ReadinessGates: []corev1.PodReadinessGate{{ConditionType: service.ReadinessGateType("web")}},
			},
		}
		if err := c.Create(ctx, pod); err != nil {
			t.Fatal(err)
		}
		if err := hc.RegisterTargets(ctx, tg.ARN, []cloud.Target{{IP: ip, Port: 8080}}); err != nil {
			t.Fatal(err)
		}
		setIP(t, c, pod, ip)
		return pod
	}
	pods := []*corev1.Pod{newPod("web-1", "10.100.1.81"), newPod("web-2", "10.100.1.82")}
	for _, p := range pods {
		waitGate(t, c, ns, p.Name, "web", corev1.ConditionTrue, readinessgate.ReasonHealthy)
	}
	if hc.calls.Load() == 0 {
		t.Fatal("no DescribeTargetHealth call while gates were pending")
	}
	time.Sleep(time.Second) // the last pending pass ends
	before := hc.calls.Load()
	// Pod updates (as a kubelet's status writes would) enqueue the Service.
	for i, p := range pods {
		cur := &corev1.Pod{}
		if err := c.Get(ctx, client.ObjectKeyFromObject(p), cur); err != nil {
			t.Fatal(err)
		}
		cur.Labels["touch"] = fmt.Sprint(i)
		if err := c.Update(ctx, cur); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(3 * time.Second) // 30 pending polls' worth, 10 watch intervals
	if got := hc.calls.Load() - before; got != 0 {
		t.Fatalf("%d DescribeTargetHealth calls with every gate True and nothing draining, want 0", got)
	}
	// Something pending again: it polls.
	newPod("web-3", "10.100.1.83")
	waitGate(t, c, ns, "web-3", "web", corev1.ConditionTrue, readinessgate.ReasonHealthy)
	if hc.calls.Load() == before {
		t.Fatal("no poll for a new pending gate")
	}
}

func TestGateWriterServiceDeleted(t *testing.T) {
	c, ns := newNamespace(t, nil)
	ctx := context.Background()
	hc := &healthCloud{Cloud: fake.New(), state: map[string]cloud.TargetState{}}
	cfg := readinessgate.DefaultConfig()
	cfg.PollInterval = 100 * time.Millisecond
	cfg.MaxPendingInterval = 300 * time.Millisecond
	startManager(t, ns, func(ctx context.Context, mgr ctrl.Manager) {
		if _, err := readinessgate.Setup(ctx, mgr, readinessgate.Options{
			Config: cfg, Classes: service.ClassFilter{Default: true}, Cloud: hc, TargetGroups: staticGroups{},
		}); err != nil {
			t.Fatal(err)
		}
	})
	svc := directService(ns, "api")
	if err := c.Create(ctx, svc); err != nil {
		t.Fatal(err)
	}
	pod := &corev1.Pod{
		// The drain hook was injected, and 10 s of grace cannot cover the
		// default 30 s deregistration delay.
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "api-1", Labels: map[string]string{"app": "api"},
			Annotations: map[string]string{readinessgate.AnnotationInjected: "app"}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "echo"}},
			TerminationGracePeriodSeconds: ptr.To[int64](10),
			ReadinessGates:                []corev1.PodReadinessGate{{ConditionType: service.ReadinessGateType("api")}}},
	}
	if err := c.Create(ctx, pod); err != nil {
		t.Fatal(err)
	}
	setIP(t, c, pod, "10.100.1.80")
	waitEvent(t, c, ns, "api-1", readinessgate.EventGraceTooShort)
	// Its target groups are unknown (none in the registry): no gate is
	// written, as after a failover before the first deploy pass.
	if cond, err := gateCondition(c, ns, "api-1", "api"); err != nil || cond != nil {
		t.Fatalf("gate written while the target groups are unknown: %+v, %v", cond, err)
	}
	if err := c.Delete(ctx, svc); err != nil {
		t.Fatal(err)
	}
	waitGate(t, c, ns, "api-1", "api", corev1.ConditionTrue, readinessgate.ReasonReleased)
}

// TestStatusPatchUIDPrecondition: a gate patch computed for a pod that was
// since replaced by another with the same name is refused.
func TestStatusPatchUIDPrecondition(t *testing.T) {
	c, ns := newNamespace(t, nil)
	ctx := context.Background()
	mk := func() *corev1.Pod {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "p"},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "echo"}}}}
		if err := c.Create(ctx, p); err != nil {
			t.Fatal(err)
		}
		return p
	}
	old := mk()
	if err := c.Delete(ctx, old, client.GracePeriodSeconds(0)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "pod gone", func() (bool, string) {
		err := c.Get(ctx, client.ObjectKeyFromObject(old), &corev1.Pod{})
		return apierrors.IsNotFound(err), fmt.Sprint(err)
	})
	mk()
	w := &readinessgate.Writer{Client: c}
	wrote, err := w.Write(ctx, old, service.ReadinessGateType("web"), readinessgate.Verdict{Status: corev1.ConditionTrue, Reason: readinessgate.ReasonHealthy})
	if err != nil || wrote {
		t.Fatalf("patch of the replaced pod: wrote %v, err %v; want refused by the UID precondition and skipped", wrote, err)
	}
	cond, err := gateCondition(c, ns, "p", "web")
	if err != nil || cond != nil {
		t.Fatalf("the new pod got a condition: %v %v", cond, err)
	}
}

func setIP(t *testing.T, c client.Client, pod *corev1.Pod, ip string) {
	t.Helper()
	patch := fmt.Sprintf(`{"status":{"podIP":%q,"podIPs":[{"ip":%q}]}}`, ip, ip)
	if err := c.Status().Patch(context.Background(), pod, client.RawPatch(types.MergePatchType, []byte(patch))); err != nil {
		t.Fatal(err)
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// TestWebhook runs the webhook server with self-generated certificates the
// apiserver trusts through the CA bundle the controller publishes, then
// stops it and checks both failure policies.
func TestWebhook(t *testing.T) {
	c, ns := newNamespace(t, nil)
	_, optedOut := newNamespace(t, map[string]string{readinessgate.NamespaceOptOutLabel: readinessgate.NamespaceOptOutValue})
	ctx := context.Background()
	port := freePort(t)
	cfg := readinessgate.DefaultConfig()
	cfg.WebhookBindAddress = fmt.Sprintf("127.0.0.1:%d", port)
	cfg.WebhookURL = fmt.Sprintf("https://127.0.0.1:%d%s", port, readinessgate.WebhookPath)
	cfg.WebhookConfigName = "dlbt-readinessgate-" + ns
	cfg.WebhookTimeout = 2 * time.Second
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = c.Delete(context.Background(), &admissionregistrationv1.MutatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: cfg.WebhookConfigName}})
	})
	createWebhookServices(t, ctx, c, ns, optedOut)
	stopMgr := startWebhookManager(t, &cfg, ns, optedOut)
	checkMutated(t, ctx, c, ns, optedOut)
	checkWebhookDown(t, ctx, c, &cfg, ns, stopMgr)
}

// createWebhookServices creates, in ns and in optedOut, a direct-access
// Service web and one, optout, that opts out of the readiness gate.
func createWebhookServices(t *testing.T, ctx context.Context, c client.Client, ns, optedOut string) {
	for _, n := range []string{ns, optedOut} {
		for _, s := range []*corev1.Service{directService(n, "web"), func() *corev1.Service {
			s := directService(n, "optout")
			s.Annotations[service.AnnotationReadinessGate] = "false"
			s.Spec.Selector = map[string]string{"app": "web"}
			return s
		}()} {
			if err := c.Create(ctx, s); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// startWebhookManager starts the gate writer, the webhook and the
// certificate manager publishing its CA bundle; stopMgr stops them once.
// cfg is the test's: the CA bundle callback reads it when it runs.
func startWebhookManager(t *testing.T, cfg *readinessgate.Config, ns, optedOut string) (stopMgr func()) {
	mctx, stop := context.WithCancel(context.Background())
	mgr, err := ctrl.NewManager(restConfig, ctrl.Options{
		Cache:                  cache.Options{DefaultNamespaces: map[string]cache.Config{ns: {}, optedOut: {}}},
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		// The plain workqueue, as lb-controller runs (controller.QueueOptions).
		Controller: config.Controller{SkipNameValidation: ptr.To(true), UsePriorityQueue: ptr.To(false)},
	})
	if err != nil {
		t.Fatal(err)
	}
	cm := &certs.Manager{Client: mgr.GetClient(), Reader: mgr.GetAPIReader(), Config: certs.Config{Secret: ns + "/webhook-tls", Validity: time.Hour, CheckInterval: time.Minute},
		Hosts: cfg.Hosts(),
		OnCABundle: func(ctx context.Context, b []byte) error {
			return readinessgate.EnsureConfiguration(ctx, mgr.GetClient(), mgr.GetAPIReader(), *cfg, b)
		}}
	if err := mgr.Add(cm); err != nil {
		t.Fatal(err)
	}
	if _, err := readinessgate.Setup(mctx, mgr, readinessgate.Options{
		Config: *cfg, Classes: service.ClassFilter{Default: true}, Cloud: fake.New(), TargetGroups: staticGroups{},
		Drain:          readinessgate.DrainHook{Host: "10.100.0.2", Port: 8082, Scheme: corev1.URISchemeHTTP},
		GetCertificate: cm.GetCertificate, CertReady: cm.Ready(),
	}); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- mgr.Start(mctx) }()
	stopped := false
	stopMgr = func() {
		if !stopped {
			stopped = true
			stop()
			if err := <-done; err != nil {
				t.Errorf("manager: %v", err)
			}
		}
	}
	t.Cleanup(stopMgr)
	return stopMgr
}

// newWebPod creates a pod of app web in namespace.
func newWebPod(ctx context.Context, c client.Client, namespace string) (*corev1.Pod, error) {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, GenerateName: "web-", Labels: map[string]string{"app": "web"}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "echo"}}},
	}
	return p, c.Create(ctx, p)
}

// checkMutated: the webhook adds the gate and the drain hook to a pod in ns,
// and leaves a pod in optedOut alone.
func checkMutated(t *testing.T, ctx context.Context, c client.Client, ns, optedOut string) {
	// The apiserver learns the bundle and the cache fills: retry until the
	// first pod comes back mutated.
	var pod *corev1.Pod
	eventually(t, "a mutated pod", func() (bool, string) {
		p, err := newWebPod(ctx, c, ns)
		if err != nil {
			return false, err.Error()
		}
		pod = p
		return len(p.Spec.ReadinessGates) == 1, fmt.Sprintf("gates %v", p.Spec.ReadinessGates)
	})
	if got, want := pod.Spec.ReadinessGates[0].ConditionType, service.ReadinessGateType("web"); got != want {
		t.Errorf("gate %q, want %q", got, want)
	}
	tok := pod.Annotations[readinessgate.AnnotationDrainToken]
	ps := pod.Spec.Containers[0].Lifecycle
	if tok == "" || ps == nil || ps.PreStop == nil || ps.PreStop.HTTPGet == nil ||
		ps.PreStop.HTTPGet.Path != readinessgate.DrainPath(ns, tok) || ps.PreStop.HTTPGet.Host != "10.100.0.2" {
		t.Errorf("drain hook not injected: token %q lifecycle %+v", tok, ps)
	}
	// The opted-out namespace is never sent to the webhook.
	p, err := newWebPod(ctx, c, optedOut)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Spec.ReadinessGates) != 0 || p.Annotations[readinessgate.AnnotationDrainToken] != "" {
		t.Errorf("pod in opted-out namespace mutated: %+v", p.Spec.ReadinessGates)
	}
}

// checkWebhookDown stops the controller and checks both failure policies;
// cfg is the test's, changed to failurePolicy Fail.
func checkWebhookDown(t *testing.T, ctx context.Context, c client.Client, cfg *readinessgate.Config, ns string, stopMgr func()) {
	// Controller down. failurePolicy Ignore: pods are created, without gates.
	stopMgr()
	p, err := newWebPod(ctx, c, ns)
	if err != nil {
		t.Fatalf("Ignore policy, webhook down: create failed: %v", err)
	}
	if len(p.Spec.ReadinessGates) != 0 {
		t.Errorf("webhook down but pod has gates %v", p.Spec.ReadinessGates)
	}
	// failurePolicy Fail: creation is refused while the webhook is down.
	cfg.WebhookFailurePolicy = readinessgate.FailurePolicyFail
	if err := readinessgate.EnsureConfiguration(ctx, c, nil, *cfg, nil); err != nil {
		t.Fatal(err)
	}
	eventually(t, "pod creation refused under Fail", func() (bool, string) {
		_, err := newWebPod(ctx, c, ns)
		return err != nil, fmt.Sprint("created: ", err)
	})
}

// TestGateFailOpen: with --gate-fail-open-after, a pod whose containers have
// been ready that long gets its gate True (reason FailOpen) while its target
// is still unhealthy, and a Warning event says so.
func TestGateFailOpen(t *testing.T) {
	c, ns := newNamespace(t, nil)
	ctx := context.Background()
	hc := &healthCloud{Cloud: fake.New(), state: map[string]cloud.TargetState{}}
	lb, _ := hc.CreateLoadBalancer(ctx, cloud.LoadBalancerSpec{Name: "lb"})
	tg, _ := hc.CreateTargetGroup(ctx, cloud.TargetGroupSpec{Name: "tg-web", Protocol: cloud.ProtocolTCP, Port: 8080})
	if _, err := hc.CreateListener(ctx, cloud.ListenerSpec{LoadBalancerARN: lb.ARN, Protocol: cloud.ProtocolTCP, Port: 80, TargetGroupARN: tg.ARN}); err != nil {
		t.Fatal(err)
	}
	const ip = "10.100.1.90"
	hc.set(ip, cloud.TargetUnhealthy)
	if err := hc.RegisterTargets(ctx, tg.ARN, []cloud.Target{{IP: ip, Port: 8080}}); err != nil {
		t.Fatal(err)
	}
	groups := staticGroups{{Namespace: ns, Name: "web"}: {{ARN: tg.ARN, TargetGroup: service.TargetGroup{Spec: cloud.TargetGroupSpec{Name: "tg-web"}}}}}
	cfg := readinessgate.DefaultConfig()
	cfg.PollInterval = 100 * time.Millisecond
	cfg.MaxPendingInterval = 300 * time.Millisecond
	cfg.FailOpenAfter = 4 * time.Second
	cfg.RegressionChecksPerMinute = 600 // the test watches a regression of a latched gate
	startManager(t, ns, func(ctx context.Context, mgr ctrl.Manager) {
		if _, err := readinessgate.Setup(ctx, mgr, readinessgate.Options{
			Config: cfg, Classes: service.ClassFilter{Default: true}, Cloud: hc, TargetGroups: groups,
		}); err != nil {
			t.Fatal(err)
		}
	})
	if err := c.Create(ctx, directService(ns, "web")); err != nil {
		t.Fatal(err)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "web-1"},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "echo"}},
			ReadinessGates: []corev1.PodReadinessGate{{ConditionType: service.ReadinessGateType("web")}}},
	}
	if err := c.Create(ctx, pod); err != nil {
		t.Fatal(err)
	}
	readyAt := time.Now()
	patch := fmt.Sprintf(`{"status":{"podIP":%q,"conditions":[{"type":"ContainersReady","status":"True","lastTransitionTime":%q}]}}`,
		ip, readyAt.UTC().Format(time.RFC3339))
	if err := c.Status().Patch(ctx, pod, client.RawPatch(types.MergePatchType, []byte(patch))); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond)
	if cond, err := gateCondition(c, ns, "web-1", "web"); err != nil || cond == nil || cond.Reason != readinessgate.ReasonUnhealthy {
		t.Fatalf("before the fail-open timeout: gate %+v, err %v; want False/Unhealthy", cond, err)
	}
	waitGate(t, c, ns, "web-1", "web", corev1.ConditionTrue, readinessgate.ReasonFailOpen)
	if since := time.Since(readyAt); since < cfg.FailOpenAfter-time.Second {
		t.Errorf("failed open %s after containers ready, want ≥ %s", since, cfg.FailOpenAfter)
	}
	waitEvent(t, c, ns, "web-1", readinessgate.EventFailOpen)
	// Healthy later: the reason follows; unhealthy again: it stays True.
	hc.set(ip, cloud.TargetHealthy)
	waitGate(t, c, ns, "web-1", "web", corev1.ConditionTrue, readinessgate.ReasonHealthy)
	hc.set(ip, cloud.TargetUnhealthy)
	waitServiceCondition(t, c, ns, "web", metav1.ConditionFalse, readinessgate.ReasonTargetsUnhealthy)
	stillTrue(t, c, ns, "web-1", "web", readinessgate.ReasonHealthy, time.Second)
}

// TestGateWriterUnknownTargetGroups: a controller that does not yet know a
// Service's target groups (a new leader) writes no gate: a Ready pod stays
// Ready and a new pod gets no False. Once they are known, the Ready pod's
// gate stays True (latched) even though its target is unhealthy, and the
// new pod's gate says why it waits.
func TestGateWriterUnknownTargetGroups(t *testing.T) {
	c, ns := newNamespace(t, nil)
	ctx := context.Background()
	hc := &healthCloud{Cloud: fake.New(), state: map[string]cloud.TargetState{}}
	tg, _ := hc.CreateTargetGroup(ctx, cloud.TargetGroupSpec{Name: "tg-web", Protocol: cloud.ProtocolTCP, Port: 8080})
	const oldIP, newIP = "10.100.1.91", "10.100.1.92"
	for _, ip := range []string{oldIP, newIP} {
		hc.set(ip, cloud.TargetUnhealthy)
		if err := hc.RegisterTargets(ctx, tg.ARN, []cloud.Target{{IP: ip, Port: 8080}}); err != nil {
			t.Fatal(err)
		}
	}
	groups := &lateGroups{}
	cfg := readinessgate.DefaultConfig()
	cfg.PollInterval = 100 * time.Millisecond
	cfg.MaxPendingInterval = 300 * time.Millisecond
	cfg.WatchInterval = 300 * time.Millisecond
	startManager(t, ns, func(ctx context.Context, mgr ctrl.Manager) {
		if _, err := readinessgate.Setup(ctx, mgr, readinessgate.Options{
			Config: cfg, Classes: service.ClassFilter{Default: true}, Cloud: hc, TargetGroups: groups,
		}); err != nil {
			t.Fatal(err)
		}
	})
	if err := c.Create(ctx, directService(ns, "web")); err != nil {
		t.Fatal(err)
	}
	gate := service.ReadinessGateType("web")
	mk := func(name, ip string) *corev1.Pod {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "echo"}},
				ReadinessGates: []corev1.PodReadinessGate{{ConditionType: gate}}}}
		if err := c.Create(ctx, p); err != nil {
			t.Fatal(err)
		}
		return p
	}
	old := mk("old", oldIP)
	// The previous leader had set its gate True.
	patch := fmt.Sprintf(`{"status":{"podIP":%q,"conditions":[{"type":%q,"status":"True","reason":"Healthy","lastTransitionTime":%q}]}}`,
		oldIP, gate, time.Now().UTC().Format(time.RFC3339))
	if err := c.Status().Patch(ctx, old, client.RawPatch(types.MergePatchType, []byte(patch))); err != nil {
		t.Fatal(err)
	}
	setIP(t, c, mk("new", newIP), newIP)
	stillTrue(t, c, ns, "old", "web", readinessgate.ReasonHealthy, 2*time.Second)
	if cond, err := gateCondition(c, ns, "new", "web"); err != nil || cond != nil {
		t.Fatalf("new pod's gate written while the target groups are unknown: %+v, %v", cond, err)
	}

	groups.set(types.NamespacedName{Namespace: ns, Name: "web"},
		[]deploy.TargetGroup{{ARN: tg.ARN, TargetGroup: service.TargetGroup{Spec: cloud.TargetGroupSpec{Name: "tg-web"}}}})
	waitGate(t, c, ns, "new", "web", corev1.ConditionFalse, readinessgate.ReasonUnhealthy)
	waitServiceCondition(t, c, ns, "web", metav1.ConditionFalse, readinessgate.ReasonTargetsUnhealthy)
	stillTrue(t, c, ns, "old", "web", readinessgate.ReasonHealthy, time.Second)
}

// lateGroups is a registry that learns a Service's target groups later.
type lateGroups struct {
	mu sync.Mutex
	m  map[types.NamespacedName][]deploy.TargetGroup
}

func (l *lateGroups) set(k types.NamespacedName, tgs []deploy.TargetGroup) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.m == nil {
		l.m = map[types.NamespacedName][]deploy.TargetGroup{}
	}
	l.m[k] = tgs
}

func (l *lateGroups) Get(k types.NamespacedName) []deploy.TargetGroup {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.m[k]
}

// stillTrue checks for d that the pod's gate stays True with reason.
func stillTrue(t *testing.T, c client.Client, ns, pod, svc, reason string, d time.Duration) {
	t.Helper()
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		cond, err := gateCondition(c, ns, pod, svc)
		if err != nil || cond == nil || cond.Status != corev1.ConditionTrue || cond.Reason != reason {
			t.Fatalf("gate of %s: %+v (%v), want it to stay True/%s", pod, cond, err, reason)
		}
	}
}

// waitServiceCondition waits for the gate writer's condition on the Service.
func waitServiceCondition(t *testing.T, c client.Client, ns, name string, status metav1.ConditionStatus, reason string) {
	t.Helper()
	eventually(t, fmt.Sprintf("Service %s condition %s %s/%s", name, readinessgate.ConditionTargetsHealthy, status, reason), func() (bool, string) {
		var svc corev1.Service
		if err := c.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: name}, &svc); err != nil {
			return false, err.Error()
		}
		cond := meta.FindStatusCondition(svc.Status.Conditions, readinessgate.ConditionTargetsHealthy)
		if cond == nil {
			return false, "no condition"
		}
		return cond.Status == status && cond.Reason == reason, fmt.Sprintf("%s %s: %s", cond.Status, cond.Reason, cond.Message)
	})
}

// waitEvent waits for a Warning event with reason about the pod.
func waitEvent(t *testing.T, c client.Client, ns, pod, reason string) {
	t.Helper()
	eventually(t, "Warning event "+reason, func() (bool, string) {
		var evs eventsv1.EventList
		if err := c.List(context.Background(), &evs, client.InNamespace(ns)); err != nil {
			return false, err.Error()
		}
		var seen []string
		for _, e := range evs.Items {
			seen = append(seen, e.Type+"/"+e.Reason)
			if e.Type == corev1.EventTypeWarning && e.Reason == reason && e.Regarding.Name == pod {
				return true, ""
			}
		}
		return false, fmt.Sprint(seen)
	})
}

// TestGateFailOpenWithUnknownTargetGroups: with the cloud out of reach at a
// failover, the Service's target groups stay unknown; no False gate is
// written, and --gate-fail-open-after still lets a pod whose containers have
// been ready that long through (reason FailOpen), so rollouts do not block.
func TestGateFailOpenWithUnknownTargetGroups(t *testing.T) {
	c, ns := newNamespace(t, nil)
	ctx := context.Background()
	cfg := readinessgate.DefaultConfig()
	cfg.PollInterval = 100 * time.Millisecond
	cfg.MaxPendingInterval = 300 * time.Millisecond
	cfg.FailOpenAfter = 2 * time.Second
	startManager(t, ns, func(ctx context.Context, mgr ctrl.Manager) {
		if _, err := readinessgate.Setup(ctx, mgr, readinessgate.Options{
			Config: cfg, Classes: service.ClassFilter{Default: true}, Cloud: fake.New(), TargetGroups: staticGroups{},
		}); err != nil {
			t.Fatal(err)
		}
	})
	if err := c.Create(ctx, directService(ns, "web")); err != nil {
		t.Fatal(err)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "web-1"},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "echo"}},
			ReadinessGates: []corev1.PodReadinessGate{{ConditionType: service.ReadinessGateType("web")}}},
	}
	if err := c.Create(ctx, pod); err != nil {
		t.Fatal(err)
	}
	patch := fmt.Sprintf(`{"status":{"podIP":"10.100.1.95","conditions":[{"type":"ContainersReady","status":"True","lastTransitionTime":%q}]}}`,
		time.Now().UTC().Format(time.RFC3339))
	if err := c.Status().Patch(ctx, pod, client.RawPatch(types.MergePatchType, []byte(patch))); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	if cond, err := gateCondition(c, ns, "web-1", "web"); err != nil || cond != nil {
		t.Fatalf("before the fail-open timeout: gate %+v (%v), want none written", cond, err)
	}
	waitGate(t, c, ns, "web-1", "web", corev1.ConditionTrue, readinessgate.ReasonFailOpen)
}

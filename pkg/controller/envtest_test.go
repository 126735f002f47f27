package controller

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"runtime/pprof"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	dto "github.com/prometheus/client_model/go"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/directlb/directlb/internal/testenv"
	"github.com/directlb/directlb/pkg/cloud"
	"github.com/directlb/directlb/pkg/cloud/fake"
	"github.com/directlb/directlb/pkg/service"
)

// The reconciler tests run against a real kube-apiserver and etcd
// (controller-runtime's envtest) with the in-memory cloud.

var (
	restConfig *rest.Config
	skipReason string
	nsCounter  atomic.Int32
)

func TestMain(m *testing.M) {
	flag.Parse() // for -short
	os.Exit(testenv.RunEnvtest(m, "dlbt-controller-assets-", &restConfig, &skipReason))
}

type harness struct {
	t     *testing.T
	ns    string
	c     client.Client
	cloud *fake.Cloud
	ctrls *Controllers
}

// start runs a fresh manager with a fresh in-memory cloud for one test, in
// a new namespace.
func start(t *testing.T, mutate ...func(*Config)) *harness {
	t.Helper()
	c, ns := newNamespace(t)
	fc := fake.New()
	cfg := testConfig(t, mutate...)
	ctrls, _ := runManager(t, ns, fc, cfg)
	return &harness{t: t, ns: ns, c: c, cloud: fc, ctrls: ctrls}
}

func testConfig(t *testing.T, mutate ...func(*Config)) Config {
	t.Helper()
	cfg := DefaultConfig()
	cfg.ClusterName = "envtest"
	cfg.TargetBatchWindow = 50 * time.Millisecond
	cfg.TargetRefreshPeriod = time.Minute
	for _, m := range mutate {
		m(&cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// newNamespace skips the test without envtest, else makes a namespace.
func newNamespace(t *testing.T) (client.Client, string) {
	t.Helper()
	if skipReason != "" {
		t.Skip("reconciler tests need a real kube-apiserver and etcd: " + skipReason)
	}
	c, err := client.New(restConfig, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ns := fmt.Sprintf("t%d", nsCounter.Add(1))
	if err := c.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
		t.Fatal(err)
	}
	return c, ns
}

// runManager starts a manager that sees only ns; stop cancels it and waits
// (it also runs at cleanup).
func runManager(t *testing.T, ns string, lbs cloud.LoadBalancers, cfg Config) (*Controllers, func()) {
	t.Helper()
	return runManagerOn(t, restConfig, ns, lbs, cfg)
}

// runManagerOn is runManager against the apiserver of rc.
func runManagerOn(t *testing.T, rc *rest.Config, ns string, lbs cloud.LoadBalancers, cfg Config) (*Controllers, func()) {
	t.Helper()
	mgr, err := ctrl.NewManager(rc, ctrl.Options{
		Cache:                  cache.Options{DefaultNamespaces: map[string]cache.Config{ns: {}}},
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		Controller:             skipNameValidation(),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctrls, err := Setup(mgr, cfg, lbs)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			// A manager that takes long to stop says where it waits.
			slow := time.AfterFunc(10*time.Second, func() {
				var buf bytes.Buffer
				_ = pprof.Lookup("goroutine").WriteTo(&buf, 2)
				t.Logf("manager still stopping after 10s; goroutines:\n%s", buf.String())
			})
			defer slow.Stop()
			if err := <-done; err != nil {
				t.Errorf("manager: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return ctrls, stop
}

// eventually polls cond every 50 ms for up to 20 s.
func (h *harness) eventually(what string, cond func() (bool, string)) {
	h.t.Helper()
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
	h.t.Fatalf("timed out waiting for %s; last: %s", what, last)
}

func (h *harness) service(name string, annotations map[string]string) *corev1.Service {
	h.t.Helper()
	ann := map[string]string{service.AnnotationDirectAccess: "true"}
	for k, v := range annotations {
		ann[k] = v
	}
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: h.ns, Name: name, Annotations: ann},
		Spec: corev1.ServiceSpec{
			Type:              corev1.ServiceTypeLoadBalancer,
			LoadBalancerClass: ptr(service.LoadBalancerClass),
			Selector:          map[string]string{"app": name},
			Ports:             []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromString("web")}},
		},
	}
	if err := h.c.Create(context.Background(), s); err != nil {
		h.t.Fatal(err)
	}
	return s
}

func (h *harness) get(name string) *corev1.Service {
	h.t.Helper()
	s := &corev1.Service{}
	if err := h.c.Get(context.Background(), types.NamespacedName{Namespace: h.ns, Name: name}, s); err != nil {
		h.t.Fatal(err)
	}
	return s
}

func (h *harness) update(name string, mutate func(*corev1.Service)) {
	h.t.Helper()
	for range 10 {
		s := h.get(name)
		mutate(s)
		err := h.c.Update(context.Background(), s)
		if err == nil {
			return
		}
		if !apierrors.IsConflict(err) {
			h.t.Fatal(err)
		}
	}
	h.t.Fatal("update: too many conflicts")
}

// events returns "Type/Reason" of the events about a Service, sorted, once each.
func (h *harness) events(name string) []string {
	h.t.Helper()
	var list eventsv1.EventList
	if err := h.c.List(context.Background(), &list, client.InNamespace(h.ns)); err != nil {
		h.t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, e := range list.Items {
		if e.Regarding.Name == name && e.Regarding.Kind == "Service" {
			seen[e.Type+"/"+e.Reason] = true
		}
	}
	var out []string
	for k := range seen {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func (h *harness) hasEvents(name string, want ...string) func() (bool, string) {
	return func() (bool, string) {
		got := h.events(name)
		for _, w := range want {
			found := false
			for _, g := range got {
				found = found || g == w
			}
			if !found {
				return false, fmt.Sprintf("events %v, want %v", got, want)
			}
		}
		return true, ""
	}
}

// targets returns the registered targets of the Service's only target group.
func (h *harness) targets() []string {
	snap := h.cloud.Snapshot()
	var out []string
	for _, ts := range snap.Targets {
		for _, t := range ts {
			out = append(out, t.String())
		}
	}
	sort.Strings(out)
	return out
}

func ptr[T any](v T) *T { return &v }

func epOf(ip string, ready, terminating bool, pod string) discoveryv1.Endpoint {
	ep := discoveryv1.Endpoint{
		Addresses:  []string{ip},
		Conditions: discoveryv1.EndpointConditions{Ready: ptr(ready), Serving: ptr(ready), Terminating: ptr(terminating)},
	}
	if pod != "" {
		ep.TargetRef = &corev1.ObjectReference{Kind: "Pod", Name: pod}
	}
	return ep
}

func (h *harness) slice(svc string, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	h.t.Helper()
	s := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: h.ns, Name: svc + "-abc",
			Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   eps,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr("http"), Protocol: ptr(corev1.ProtocolTCP), Port: ptr(int32(8080))}},
	}
	if err := h.c.Create(context.Background(), s); err != nil {
		h.t.Fatal(err)
	}
	return s
}

// gatedPod makes a pod whose containers are ready and whose Ready waits on
// directlb's gate for svc.
func (h *harness) gatedPod(name, svc, ip string) {
	h.t.Helper()
	ctx := context.Background()
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: h.ns, Name: name, Labels: map[string]string{"app": svc}},
		Spec: corev1.PodSpec{
			Containers:     []corev1.Container{{Name: "c", Image: "echo"}},
			ReadinessGates: []corev1.PodReadinessGate{{ConditionType: service.ReadinessGateType(svc)}},
		},
	}
	if err := h.c.Create(ctx, p); err != nil {
		h.t.Fatal(err)
	}
	p.Status = corev1.PodStatus{
		Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}},
		Conditions: []corev1.PodCondition{
			{Type: corev1.ContainersReady, Status: corev1.ConditionTrue, LastTransitionTime: metav1.Now()},
			{Type: corev1.PodReady, Status: corev1.ConditionFalse, LastTransitionTime: metav1.Now()},
		},
	}
	if err := h.c.Status().Update(ctx, p); err != nil {
		h.t.Fatal(err)
	}
}

func TestServiceLifecycle(t *testing.T) {
	h := start(t)
	h.service("web", nil)
	lbCalls := lifecycleEnsured(h)
	lifecycleTargets(h, lbCalls)

	// A health-check annotation modifies the target group.
	h.update("web", func(s *corev1.Service) {
		s.Annotations[service.AnnotationHCProtocol] = "HTTP"
		s.Annotations[service.AnnotationHCPath] = "/healthz"
	})
	h.eventually("health check updated", func() (bool, string) {
		tgs := h.cloud.Snapshot().TargetGroups
		return len(tgs) == 1 && tgs[0].HealthCheck.Protocol == "HTTP" && tgs[0].HealthCheck.Path == "/healthz",
			fmt.Sprintf("target groups %+v", tgs)
	})

	// Removing the annotation removes everything, then the finalizer.
	h.update("web", func(s *corev1.Service) { delete(s.Annotations, service.AnnotationDirectAccess) })
	h.eventually("cloud empty, finalizer, ingress and condition gone", func() (bool, string) {
		s := h.get("web")
		snap := h.cloud.Snapshot()
		ok := len(snap.LoadBalancers)+len(snap.TargetGroups)+len(snap.Listeners) == 0 &&
			!controllerutil.ContainsFinalizer(s, Finalizer) && len(s.Status.LoadBalancer.Ingress) == 0 &&
			meta.FindStatusCondition(s.Status.Conditions, ConditionReady) == nil
		return ok, fmt.Sprintf("cloud %+v service finalizers %v status %+v", snap, s.Finalizers, s.Status)
	})
	if v, ok := h.get("web").Annotations[service.AnnotationTargetGroups]; ok {
		t.Errorf("target-group record %q left on a Service no longer owned", v)
	}
	h.eventually("Deleting and Deleted events", h.hasEvents("web", "Normal/DeletingLoadBalancer", "Normal/DeletedLoadBalancer"))
}

// lifecycleEnsured waits for the web Service's finalizer, ingress IP, Ready
// condition, cloud resources, recorded target groups and events; it
// returns the CreateLoadBalancer calls made so far.
func lifecycleEnsured(h *harness) int {
	t := h.t
	h.eventually("finalizer, ingress IP and Ready condition", func() (bool, string) {
		s := h.get("web")
		ing := s.Status.LoadBalancer.Ingress
		cond := meta.FindStatusCondition(s.Status.Conditions, ConditionReady)
		ok := controllerutil.ContainsFinalizer(s, Finalizer) && len(ing) == 1 && ing[0].IP != "" &&
			cond != nil && cond.Status == metav1.ConditionTrue
		return ok, fmt.Sprintf("finalizers %v ingress %v condition %+v", s.Finalizers, ing, cond)
	})
	snap := h.cloud.Snapshot()
	if len(snap.LoadBalancers) != 1 || len(snap.TargetGroups) != 1 || len(snap.Listeners) != 1 {
		t.Fatalf("cloud: %d load balancers, %d target groups, %d listeners; want 1 each",
			len(snap.LoadBalancers), len(snap.TargetGroups), len(snap.Listeners))
	}
	if got, want := h.get("web").Status.LoadBalancer.Ingress[0].IP, snap.LoadBalancers[0].Addresses[0]; got != want {
		t.Errorf("ingress IP %s, want the load balancer's %s", got, want)
	}
	// The target groups are recorded on the Service, for every replica.
	h.eventually("target groups recorded on the Service", func() (bool, string) {
		got := service.RecordedTargetGroups(h.get("web").Annotations)
		return cmp.Equal([]string{snap.TargetGroups[0].ARN}, got), fmt.Sprintf("recorded %v, want [%s]", got, snap.TargetGroups[0].ARN)
	})
	lbCalls := h.cloud.Calls()["CreateLoadBalancer"]
	h.eventually("Ensuring and Ensured events", h.hasEvents("web", "Normal/EnsuringLoadBalancer", "Normal/EnsuredLoadBalancer"))
	return lbCalls
}

// lifecycleTargets follows the web Service's endpoints into its target
// group (ready ones, and a pod waiting only on directlb's gate) through a
// scale, with no load-balancer call beyond the lbCalls already made.
func lifecycleTargets(h *harness, lbCalls int) {
	t := h.t
	ctx := context.Background()
	// Endpoints: ready ones register; a not-ready one, a terminating one and
	// a not-ready pod waiting on another gate do not; a pod waiting only on
	// directlb's gate does.
	registrations := registrationCount(t)
	h.gatedPod("gated", "web", "10.0.0.9")
	sl := h.slice("web",
		epOf("10.0.0.1", true, false, ""),
		epOf("10.0.0.2", true, false, ""),
		epOf("10.0.0.3", false, false, ""),
		epOf("10.0.0.4", false, true, ""),
		epOf("10.0.0.9", false, false, "gated"),
	)
	want := []string{"10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.9:8080"}
	h.eventually("targets registered", func() (bool, string) {
		got := h.targets()
		return cmp.Equal(want, got), fmt.Sprintf("targets %v want %v", got, want)
	})

	if n := registrationCount(t) - registrations; n < 3 {
		t.Errorf("directlb_target_registration_seconds observed %d registrations, want 3", n)
	}

	// Scale: one goes, two come; a ready endpoint becomes terminating.
	sl.Endpoints = []discoveryv1.Endpoint{
		epOf("10.0.0.1", false, true, ""),
		epOf("10.0.0.5", true, false, ""),
		epOf("10.0.0.6", true, false, ""),
		epOf("10.0.0.9", false, false, "gated"),
	}
	if err := h.c.Update(ctx, sl); err != nil {
		t.Fatal(err)
	}
	want = []string{"10.0.0.5:8080", "10.0.0.6:8080", "10.0.0.9:8080"}
	h.eventually("targets follow the slice", func() (bool, string) {
		got := h.targets()
		return cmp.Equal(want, got), fmt.Sprintf("targets %v want %v", got, want)
	})
	calls := h.cloud.Calls()
	if calls["CreateLoadBalancer"] != lbCalls || calls["ModifyTargetGroup"] != 0 || calls["CreateListener"] != 1 {
		t.Errorf("endpoint churn made load balancer calls: %v", calls)
	}
}

func TestInvalidAnnotationMakesNoCloudCall(t *testing.T) {
	h := start(t)
	h.service("bad", map[string]string{
		service.AnnotationScheme:     "public",
		service.AnnotationHCInterval: "1",
	})
	h.eventually("InvalidConfiguration condition", func() (bool, string) {
		cond := meta.FindStatusCondition(h.get("bad").Status.Conditions, ConditionReady)
		return cond != nil && cond.Status == metav1.ConditionFalse && cond.Reason == ReasonInvalidConfiguration,
			fmt.Sprintf("condition %+v", cond)
	})
	h.eventually("Warning event", h.hasEvents("bad", "Warning/InvalidConfiguration"))
	cond := meta.FindStatusCondition(h.get("bad").Status.Conditions, ConditionReady)
	for _, want := range []string{service.AnnotationScheme, `"public"`, service.AnnotationHCInterval, "from 5 to 300"} {
		if !strings.Contains(cond.Message, want) {
			t.Errorf("condition message %q does not name %s", cond.Message, want)
		}
	}
	if n := h.cloud.TotalCalls(); n != 0 {
		t.Fatalf("%d cloud calls for an invalid Service, want 0: %v", n, h.cloud.Calls())
	}
	// Fixing it converges.
	h.update("bad", func(s *corev1.Service) {
		s.Annotations[service.AnnotationScheme] = "internal"
		delete(s.Annotations, service.AnnotationHCInterval)
	})
	h.eventually("Ready after the fix", func() (bool, string) {
		s := h.get("bad")
		cond := meta.FindStatusCondition(s.Status.Conditions, ConditionReady)
		return cond != nil && cond.Status == metav1.ConditionTrue && len(s.Status.LoadBalancer.Ingress) == 1,
			fmt.Sprintf("condition %+v", cond)
	})
	if lbs := h.cloud.Snapshot().LoadBalancers; len(lbs) != 1 || lbs[0].Scheme != "internal" {
		t.Errorf("load balancers %+v, want one internal", lbs)
	}
}

// An invalid annotation with a value longer than an event note may be
// still gets its Warning event (cut to the apiserver's limit) and the whole
// message in the condition.
func TestInvalidLongAnnotationStillMakesAnEvent(t *testing.T) {
	h := start(t)
	long := "/" + strings.Repeat("x", 3000) // not a valid path for a TCP check
	h.service("long", map[string]string{service.AnnotationHCPath: long})
	h.eventually("Warning event", h.hasEvents("long", "Warning/InvalidConfiguration"))
	cond := meta.FindStatusCondition(h.get("long").Status.Conditions, ConditionReady)
	if cond == nil || cond.Reason != ReasonInvalidConfiguration || !strings.Contains(cond.Message, long) {
		t.Fatalf("condition %.200v: want InvalidConfiguration naming the whole value", cond)
	}
}

func TestDeleteAndTypeChange(t *testing.T) {
	h := start(t)
	ctx := context.Background()
	for _, name := range []string{"gone", "retyped"} {
		h.service(name, nil)
	}
	h.eventually("two load balancers", func() (bool, string) {
		n := len(h.cloud.Snapshot().LoadBalancers)
		return n == 2, fmt.Sprintf("%d load balancers", n)
	})
	h.eventually("finalizers", func() (bool, string) {
		return controllerutil.ContainsFinalizer(h.get("gone"), Finalizer) && controllerutil.ContainsFinalizer(h.get("retyped"), Finalizer), ""
	})
	if err := h.c.Delete(ctx, h.get("gone")); err != nil {
		t.Fatal(err)
	}
	h.update("retyped", func(s *corev1.Service) { s.Spec.Type = corev1.ServiceTypeClusterIP })
	h.eventually("Service gone and cloud empty", func() (bool, string) {
		err := h.c.Get(ctx, types.NamespacedName{Namespace: h.ns, Name: "gone"}, &corev1.Service{})
		snap := h.cloud.Snapshot()
		n := len(snap.LoadBalancers) + len(snap.TargetGroups) + len(snap.Listeners)
		retyped := h.get("retyped")
		return client.IgnoreNotFound(err) == nil && err != nil && n == 0 && !controllerutil.ContainsFinalizer(retyped, Finalizer),
			fmt.Sprintf("get: %v, %d cloud resources, finalizers %v", err, n, retyped.Finalizers)
	})
}

func TestClassFilter(t *testing.T) {
	h := start(t, func(c *Config) {
		c.ManageDefaultClass = false
		c.LoadBalancerClasses = []string{"directlb.io/nlb"}
	})
	ctx := context.Background()
	other := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: h.ns, Name: "other",
			Annotations: map[string]string{service.AnnotationDirectAccess: "true"}},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, LoadBalancerClass: ptr("someone-else"),
			Ports: []corev1.ServicePort{{Port: 80}}},
	}
	mine := other.DeepCopy()
	mine.Name, mine.Spec.LoadBalancerClass = "mine", ptr("directlb.io/nlb")
	noclass := other.DeepCopy()
	noclass.Name, noclass.Spec.LoadBalancerClass = "noclass", nil
	for _, s := range []*corev1.Service{other, mine, noclass} {
		if err := h.c.Create(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	h.eventually("mine gets an address", func() (bool, string) {
		return len(h.get("mine").Status.LoadBalancer.Ingress) == 1, ""
	})
	time.Sleep(500 * time.Millisecond)
	if lbs := h.cloud.Snapshot().LoadBalancers; len(lbs) != 1 || lbs[0].Tags[cloud.TagService] != h.ns+"/mine" {
		t.Errorf("load balancers %+v, want only mine's", lbs)
	}
	for _, name := range []string{"other", "noclass"} {
		if s := h.get(name); len(s.Finalizers) != 0 || len(s.Status.LoadBalancer.Ingress) != 0 {
			t.Errorf("%s was touched: %+v", name, s)
		}
	}
}

// skipNameValidation lets every test start a manager with the same
// controller names.
func skipNameValidation() config.Controller {
	c := QueueOptions()
	c.SkipNameValidation = ptr(true)
	return c
}

// registrationCount is the sample count of the endpoint-ready →
// target-registered histogram.
func registrationCount(t *testing.T) uint64 {
	t.Helper()
	m := &dto.Metric{}
	if err := targetRegistration.Write(m); err != nil {
		t.Fatal(err)
	}
	return m.GetHistogram().GetSampleCount()
}

// TestEndpointsBeforeLoadBalancer: endpoints that exist before the load
// balancer does are registered once its target group exists.
func TestEndpointsBeforeLoadBalancer(t *testing.T) {
	h := start(t)
	h.slice("early", epOf("10.3.0.1", true, false, ""), epOf("10.3.0.2", true, false, ""))
	h.service("early", nil)
	want := []string{"10.3.0.1:8080", "10.3.0.2:8080"}
	h.eventually("targets registered", func() (bool, string) {
		got := h.targets()
		return cmp.Equal(want, got), fmt.Sprintf("targets %v want %v", got, want)
	})
}

// An upgrade from a release that owned class-less Services: a direct-access
// Service without a class that already carries the finalizer keeps its load
// balancer under the default configuration (its class can no longer be
// set), with a Warning saying so; one without the finalizer is left alone.
func TestUpgradeKeepsAdoptedClasslessService(t *testing.T) {
	h := start(t)
	ctx := context.Background()
	mk := func(name string, finalizers ...string) {
		s := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: h.ns, Name: name, Finalizers: finalizers,
				Annotations: map[string]string{service.AnnotationDirectAccess: "true"}},
			Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer,
				Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}}},
		}
		if err := h.c.Create(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	mk("adopted", Finalizer)
	mk("fresh")
	h.eventually("the adopted Service has its load balancer", func() (bool, string) {
		return len(h.get("adopted").Status.LoadBalancer.Ingress) == 1, fmt.Sprint(h.get("adopted").Status)
	})
	h.eventually("a Warning about the missing class", h.hasEvents("adopted", "Warning/"+EventNoClass))
	if s := h.get("fresh"); len(s.Finalizers) != 0 || len(s.Status.LoadBalancer.Ingress) != 0 {
		t.Errorf("a new class-less Service was claimed: %+v", s)
	}
	if lbs := h.cloud.Snapshot().LoadBalancers; len(lbs) != 1 {
		t.Errorf("%d load balancers, want the adopted Service's only", len(lbs))
	}
}

// TestCachesSyncedReadiness: the informer-caches readyz check fails before
// the caches are started and synced, and passes after.
func TestCachesSyncedReadiness(t *testing.T) {
	_, ns := newNamespace(t)
	mgr, err := ctrl.NewManager(restConfig, ctrl.Options{
		Cache:                  cache.Options{DefaultNamespaces: map[string]cache.Config{ns: {}}},
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		Controller:             skipNameValidation(),
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mgr.GetCache().GetInformer(context.Background(), &corev1.Pod{}); err != nil {
		t.Fatal(err)
	}
	check := CachesSynced(mgr.GetCache())
	if err := check(nil); err == nil {
		t.Fatal("ready before the caches started")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	deadline := time.Now().Add(20 * time.Second)
	for check(nil) != nil {
		if time.Now().After(deadline) {
			t.Fatalf("not ready 20 s after start: %v", check(nil))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

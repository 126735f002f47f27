package controller

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/directlb/directlb/internal/testenv"
	"github.com/directlb/directlb/pkg/localcloud"
	"github.com/directlb/directlb/pkg/localcloud/faults"
	"github.com/directlb/directlb/pkg/service"
)

// benchLBCIDR holds a load-balancer address for each of 1,000 Services
// (localcloud's default /24 holds about 250); the datapath is off, so the
// addresses are configured nowhere. RFC 2544's benchmarking range.
const benchLBCIDR = "198.18.0.0/20"

const (
	podsPerService = 10
	// describeRefill is AWS's Describe* refill rate (per second), which the
	// steady state should use under 10% of.
	describeRefill = 10.0
)

// BenchmarkConvergenceGates is BenchmarkConvergence with readiness gates
// on: every endpoint is a real Pod carrying the gate
// target-health.directlb.io/<service>; the bench plays the kubelet (pod
// IP, ContainersReady, then Ready once the gate is True) and the
// EndpointSlice controller. Converged = every Service has an ingress IP
// and every pod's gate is True. Then, with every pod Ready and nothing
// pending, it counts DescribeTargetHealth calls over a window
// (DLB_BENCH_LBC_STEADY, default 3m).
func BenchmarkConvergenceGates(b *testing.B) {
	n := benchServices(b)
	servePprof(b)
	steady := 3 * time.Minute
	if s := os.Getenv("DLB_BENCH_LBC_STEADY"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d < 10*time.Second {
			b.Fatalf("DLB_BENCH_LBC_STEADY=%q: want a duration of at least 10s", s)
		}
		steady = d
	}
	logf.SetLogger(zap.New(zap.WriteTo(os.Stderr), zap.Level(zapErrorLevel)))
	// envtest's default Service range (a /24) holds 254 ClusterIPs.
	_, cfg := testenv.StartEnvtest(b, "dlbt-bench-lbc-assets-", func(env *envtest.Environment) {
		env.ControlPlane.GetAPIServer().Configure().Set("service-cluster-ip-range", "10.96.0.0/16")
	})
	for i := 0; i < b.N; i++ {
		runGates(b, cfg, n, fmt.Sprintf("lbg%d", i), steady)
	}
}

func runGates(b *testing.B, cfg *rest.Config, n int, ns string, steady time.Duration) {
	ctx := context.Background()
	c := benchClient(b, cfg, ns)
	names, created := createGatedPods(ctx, b, c, ns, n)
	fmt.Printf("  (setup: %d Services, %d pods and their slices in %.1f s)\n", n, n*podsPerService, time.Since(created).Seconds())

	srv := testenv.Localcloud(b, func(c *localcloud.Config) {
		c.AWSRateLimits = true
		c.LBCIDR = benchLBCIDR
		c.StateDir = inMemory
	})
	// The bench counts from a watch of its own: listing every pod every
	// second (10,000 at 1,000 Services) cost the apiserver and this
	// process more CPU than the controller did, on a 2-core machine.
	seen := watchNamespace(b, benchConfig(cfg), ns)
	start, stop := startController(b, cfg, ns, srv, true)
	defer stop()

	// Twice the bound and 5 minutes: a run that slow has found a limit
	// (the progress lines say which); at 1,000 Services 38 minutes, inside
	// the -timeout the docs give.
	limit := 2*time.Duration(boundSeconds(minimumCalls(n), faults.AWSLimits()))*time.Second + 5*time.Minute
	ingressAt, gatesAt := waitGates(ctx, b, seen, srv, ns, n, start, limit)
	converged := max(ingressAt, gatesAt)
	b.StopTimer()
	counts := srv.Faults().Counts()

	// The kubelet and the EndpointSlice controller catch up: every pod
	// Ready, every endpoint ready. That is a pod update per pod and a
	// slice update per Service, which the gate writer and the target
	// reconciler see.
	parallel(b, n, func(i int) error { return markReady(ctx, c, ns, names[i]) })
	settle := 30 * time.Second
	time.Sleep(settle)
	before := describeHealthCalls(srv)
	t0 := time.Now()
	time.Sleep(steady)
	window := time.Since(t0)
	steadyCalls := describeHealthCalls(srv) - before

	reportGates(b, n, converged, ingressAt, gatesAt, counts, steadyCalls, window, settle)
}

// createGatedPods creates the n Services, their pods with the gate and
// containers ready (as the kubelet would report), and their EndpointSlices
// (not ready: the gate is not True yet); it returns the names and when it
// started.
func createGatedPods(ctx context.Context, b *testing.B, c client.Client, ns string, n int) ([]string, time.Time) {
	names := make([]string, n)
	created := time.Now()
	for i := range names {
		names[i] = fmt.Sprintf("s%03d", i)
		if err := c.Create(ctx, newService(ns, names[i])); err != nil {
			b.Fatal(err)
		}
	}
	parallel(b, n, func(i int) error {
		name := names[i]
		sl := &discoveryv1.EndpointSlice{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name + "-x",
				Labels: map[string]string{discoveryv1.LabelServiceName: name}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports:       []discoveryv1.EndpointPort{{Name: ptr("http"), Protocol: ptr(corev1.ProtocolTCP), Port: ptr(int32(targetPort))}},
		}
		for j := range podsPerService {
			pod := gatedPod(ns, name, j)
			if err := c.Create(ctx, pod); err != nil {
				return err
			}
			ip := podIP(i, j)
			now := metav1.Now()
			pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}},
				Conditions: []corev1.PodCondition{
					{Type: corev1.ContainersReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
					{Type: corev1.PodReady, Status: corev1.ConditionFalse, LastTransitionTime: now, Reason: "ReadinessGatesNotReady"},
				}}
			if err := c.Status().Update(ctx, pod); err != nil {
				return err
			}
			sl.Endpoints = append(sl.Endpoints, discoveryv1.Endpoint{
				Addresses:  []string{ip},
				Conditions: discoveryv1.EndpointConditions{Ready: ptr(false), Serving: ptr(false), Terminating: ptr(false)},
				TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: pod.Name, UID: pod.UID},
			})
		}
		return c.Create(ctx, sl)
	})
	return names, created
}

// waitGates polls seen until every Service has an ingress IP and every
// pod's gate is True, printing progress every progressEvery, and fails
// after limit; it returns when each was reached, from start.
func waitGates(ctx context.Context, b *testing.B, seen client.Reader, srv *localcloud.Server, ns string, n int,
	start time.Time, limit time.Duration) (ingressAt, gatesAt time.Duration) {
	lastProgress, ingressN, gatesN := start, 0, 0
	for {
		if time.Since(lastProgress) >= progressEvery {
			lastProgress = time.Now()
			fmt.Print(progress(time.Since(start), srv, ingressN, gatesN))
		}
		if time.Since(start) > limit {
			k, _ := gatesTrue(ctx, seen, ns)
			b.Fatalf("not converged after %s: ingress at %s, gates at %s (%d of %d True)", limit, ingressAt, gatesAt, k, n*podsPerService)
		}
		if ingressAt == 0 {
			k, err := withIngress(ctx, seen, ns)
			if err != nil {
				b.Fatal(err)
			}
			ingressN = k
			if k == n {
				ingressAt = time.Since(start)
			}
		}
		if gatesAt == 0 {
			k, err := gatesTrue(ctx, seen, ns)
			if err != nil {
				b.Fatal(err)
			}
			gatesN = k
			if k == n*podsPerService {
				gatesAt = time.Since(start)
			}
		}
		if ingressAt != 0 && gatesAt != 0 {
			return ingressAt, gatesAt
		}
		time.Sleep(time.Second)
	}
}

// parallel runs f for 0..n-1 on 8 workers and fails at the first error.
func parallel(b *testing.B, n int, f func(int) error) {
	var wg sync.WaitGroup
	errs := make(chan error, n)
	next := make(chan int)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := f(i); err != nil {
					errs <- err
				}
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		b.Fatal(err)
	}
}

func podIP(i, j int) string { return fmt.Sprintf("10.%d.%d.%d", 64+i/200, i%200, j+1) }

func gatedPod(ns, svc string, j int) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("%s-%d", svc, j), Labels: map[string]string{"app": svc}},
		Spec: corev1.PodSpec{
			Containers:     []corev1.Container{{Name: "app", Image: "echo"}},
			ReadinessGates: []corev1.PodReadinessGate{{ConditionType: service.ReadinessGateType(svc)}},
		},
	}
}

// gatesTrue counts the pods of ns whose directlb gate is True.
func gatesTrue(ctx context.Context, c client.Reader, ns string) (int, error) {
	var pods corev1.PodList
	if err := c.List(ctx, &pods, client.InNamespace(ns), client.UnsafeDisableDeepCopy); err != nil {
		return 0, err
	}
	k := 0
	for _, p := range pods.Items {
		gate := service.ReadinessGateType(p.Labels["app"])
		for _, cond := range p.Status.Conditions {
			if cond.Type == gate && cond.Status == corev1.ConditionTrue {
				k++
			}
		}
	}
	return k, nil
}

// markReady sets Ready on the Service's pods and its endpoints, as the
// kubelet and the EndpointSlice controller do once the gate is True.
func markReady(ctx context.Context, c client.Client, ns, name string) error {
	for j := range podsPerService {
		patch, _ := json.Marshal(map[string]any{"status": map[string]any{"conditions": []corev1.PodCondition{
			{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: metav1.Now()}}}})
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("%s-%d", name, j)}}
		if err := c.Status().Patch(ctx, pod, client.RawPatch(types.StrategicMergePatchType, patch)); err != nil {
			return err
		}
	}
	sl := &discoveryv1.EndpointSlice{}
	if err := c.Get(ctx, types.NamespacedName{Namespace: ns, Name: name + "-x"}, sl); err != nil {
		return err
	}
	for k := range sl.Endpoints {
		sl.Endpoints[k].Conditions.Ready, sl.Endpoints[k].Conditions.Serving = ptr(true), ptr(true)
	}
	return c.Update(ctx, sl)
}

func describeHealthCalls(srv *localcloud.Server) int64 {
	var k int64
	for _, v := range srv.Faults().Counts()["DescribeTargetHealth"] {
		k += v
	}
	return k
}

func reportGates(b *testing.B, n int, converged, ingressAt, gatesAt time.Duration, counts map[string]map[string]int64,
	steadyCalls int64, window, settle time.Duration) {
	limits := faults.AWSLimits()
	passed, total, refused := tally(counts)
	bound := boundSeconds(passed, limits)
	ratio := converged.Seconds() / bound
	perMin := float64(steadyCalls) / window.Minutes()
	b.ReportMetric(converged.Seconds(), "converge-s")
	b.ReportMetric(bound, "bound-s")
	b.ReportMetric(ratio, "measured/bound")
	b.ReportMetric(perMin, "steady-describe-health/min")

	var sb strings.Builder
	fmt.Fprintf(&sb, "lb-controller convergence with readiness gates: %d Services × %d gated pods, localcloud AWS-like limits, datapath off\n", n, podsPerService)
	fmt.Fprintf(&sb, "  cold convergence %.1f s (all ingress IPs at %.1f s, all gates True at %.1f s)\n", converged.Seconds(), ingressAt.Seconds(), gatesAt.Seconds())
	fmt.Fprintf(&sb, "  bound from the rate limits %.1f s (%s); measured/bound %.2f\n", bound, bindingAction(passed, limits), ratio)
	fmt.Fprintf(&sb, "  cloud calls %d (%d refused by the rate limits); per action (passed [refused]):\n", total, refused)
	for _, a := range slices.Sorted(maps.Keys(counts)) {
		fmt.Fprintf(&sb, "    %-30s %6d [%d]  %.1f s\n", a, passed[a], int(counts[a]["throttled"]+counts[a]["rateLimited"]+counts[a]["serverError"]),
			boundSeconds(map[string]int{a: passed[a]}, limits))
	}
	fmt.Fprintf(&sb, "  steady state (every pod Ready, nothing pending; window of %s after %s to settle): %d DescribeTargetHealth calls = %.1f/min (goal < %.0f/min, 10%% of %g/s)\n",
		window.Round(time.Second), settle, steadyCalls, perMin, describeRefill*60/10, describeRefill)
	fmt.Print(sb.String())
}

// watchNamespace is an informer cache of ns's Services and Pods, synced,
// stopped at the end of the benchmark.
func watchNamespace(b *testing.B, cfg *rest.Config, ns string) cache.Cache {
	b.Helper()
	cc, err := cache.New(cfg, cache.Options{DefaultNamespaces: map[string]cache.Config{ns: {}}})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	b.Cleanup(cancel)
	for _, obj := range []client.Object{&corev1.Service{}, &corev1.Pod{}} {
		if _, err := cc.GetInformer(ctx, obj); err != nil {
			b.Fatal(err)
		}
	}
	go func() {
		if err := cc.Start(ctx); err != nil {
			b.Errorf("bench cache: %v", err)
		}
	}()
	if !cc.WaitForCacheSync(ctx) {
		b.Fatal("bench cache did not sync")
	}
	return cc
}

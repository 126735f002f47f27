// Package controller benchmarks the lb-controller's cold convergence against
// a real kube-apiserver and etcd (envtest, from bin/ and /usr/bin/etcd) and
// an in-process localcloud API server with its AWS-like rate limits on and
// no datapath, through the real SDK client.
//
//	DLB_BIN_DIR=$PWD/bin go test -run '^$' -bench . -benchtime 1x -timeout 20m ./bench/controller
//
// DLB_BENCH_LBC_SERVICES changes the number of Services (default 200);
// DLB_BENCH_LBC_FLAGS gives the controller lb-controller flags on top of
// its defaults (e.g. "--kube-api-qps=20 --kube-api-burst=30").
package controller

import (
	"context"
	"fmt"
	"maps"
	"math"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/directlb/directlb/internal/testenv"
	"github.com/directlb/directlb/pkg/cloud"
	"github.com/directlb/directlb/pkg/controller"
	"github.com/directlb/directlb/pkg/localcloud"
	"github.com/directlb/directlb/pkg/localcloud/faults"
	"github.com/directlb/directlb/pkg/service"
)

// inMemory is the benchmarks' localcloud state directory: none. With one,
// localcloud writes and fsyncs its whole state under its store lock on
// every change, which at 1,000 Services is megabytes per call on a shared
// disk: a limit of the simulator, not of AWS nor of the controller. The
// AWS-like rate limits stay.
const inMemory = ""

const (
	readyPerService = 5  // endpoints ready from the start
	latencySamples  = 40 // Services that get one more endpoint ready after convergence
	samplePacing    = 300 * time.Millisecond
	targetPort      = 8080
)

func BenchmarkConvergence(b *testing.B) {
	n := benchServices(b)
	logf.SetLogger(zap.New(zap.WriteTo(os.Stderr), zap.Level(zapErrorLevel)))
	_, cfg := testenv.StartEnvtest(b, "dlbt-bench-lbc-assets-", nil)
	for i := 0; i < b.N; i++ {
		runConvergence(b, cfg, n, fmt.Sprintf("lbc%d", i))
	}
}

func runConvergence(b *testing.B, cfg *rest.Config, n int, ns string) {
	ctx := context.Background()
	c := benchClient(b, cfg, ns)
	names, slicesByName := createServices(ctx, b, c, ns, n)

	srv := testenv.Localcloud(b, func(c *localcloud.Config) {
		c.AWSRateLimits = true
		c.StateDir = inMemory
	})
	start, stop := startController(b, cfg, ns, srv, false)
	defer stop()

	// Cold convergence: every Service has an ingress IP and every target
	// group its 5 targets (as localcloud's store has them).
	limit := 4*time.Duration(boundSeconds(minimumCalls(n), faults.AWSLimits()))*time.Second + 2*time.Minute
	var ingressAt, targetsAt time.Duration
	for {
		if time.Since(start) > limit {
			b.Fatalf("not converged after %s: ingress at %s, targets at %s", limit, ingressAt, targetsAt)
		}
		if ingressAt == 0 {
			k, err := withIngress(ctx, c, ns)
			if err != nil {
				b.Fatal(err)
			}
			if k == n {
				ingressAt = time.Since(start)
			}
		}
		if targetsAt == 0 && fullGroups(srv, ns) == n {
			targetsAt = time.Since(start)
		}
		if ingressAt != 0 && targetsAt != 0 {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	converged := max(ingressAt, targetsAt)
	b.StopTimer()
	counts := srv.Faults().Counts()

	// Endpoint ready → target registered, for a sample of converged
	// Services, one at a time, paced under RegisterTargets' rate.
	histBefore := registrationHistogram(b)
	lat := sampleRegistration(ctx, b, c, srv, ns, names, slicesByName)
	histAfter := registrationHistogram(b)

	report(b, n, converged, ingressAt, targetsAt, counts, lat, histAfter.sub(histBefore))
}

// createServices creates the n Services and their EndpointSlices (newSlice:
// readyPerService ready endpoints, one not ready) and returns both by name.
func createServices(ctx context.Context, b *testing.B, c client.Client, ns string, n int) ([]string, map[string]*discoveryv1.EndpointSlice) {
	names := make([]string, n)
	slicesByName := map[string]*discoveryv1.EndpointSlice{}
	for i := range names {
		names[i] = fmt.Sprintf("s%03d", i)
		if err := c.Create(ctx, newService(ns, names[i])); err != nil {
			b.Fatal(err)
		}
		sl := newSlice(ns, names[i], i)
		if err := c.Create(ctx, sl); err != nil {
			b.Fatal(err)
		}
		slicesByName[names[i]] = sl
	}
	return names, slicesByName
}

// sampleRegistration makes one more endpoint ready in each of
// latencySamples Services spread over names, one at a time, paced by
// samplePacing, and returns how long each took to be registered.
func sampleRegistration(ctx context.Context, b *testing.B, c client.Client, srv *localcloud.Server, ns string,
	names []string, slicesByName map[string]*discoveryv1.EndpointSlice) []time.Duration {
	n := len(names)
	k := min(latencySamples, n)
	lat := make([]time.Duration, 0, k)
	for i := 0; i < k; i++ {
		name := names[i*n/k]
		sl := slicesByName[name]
		if err := c.Get(ctx, client.ObjectKeyFromObject(sl), sl); err != nil {
			b.Fatal(err)
		}
		sl.Endpoints[readyPerService].Conditions.Ready = ptr(true)
		sl.Endpoints[readyPerService].Conditions.Serving = ptr(true)
		addr := sl.Endpoints[readyPerService].Addresses[0]
		t0 := time.Now()
		if err := c.Update(ctx, sl); err != nil {
			b.Fatal(err)
		}
		for !registered(srv, ns, name, addr) {
			if time.Since(t0) > 30*time.Second {
				b.Fatalf("%s: %s not registered after 30 s", name, addr)
			}
			time.Sleep(5 * time.Millisecond)
		}
		lat = append(lat, time.Since(t0))
		time.Sleep(time.Until(t0.Add(samplePacing)))
	}
	return lat
}

func report(b *testing.B, n int, converged, ingressAt, targetsAt time.Duration, counts map[string]map[string]int64,
	lat []time.Duration, hist histogram) {
	limits := faults.AWSLimits()
	passed, total, refused := tally(counts)
	bound := boundSeconds(passed, limits)
	binding := bindingAction(passed, limits)
	ratio := converged.Seconds() / bound
	slices.Sort(lat)
	p50, p99 := percentile(lat, 50), percentile(lat, 99)

	b.ReportMetric(converged.Seconds(), "converge-s")
	b.ReportMetric(bound, "bound-s")
	b.ReportMetric(ratio, "measured/bound")
	b.ReportMetric(float64(total), "cloud-calls")
	b.ReportMetric(float64(refused), "throttled-calls")
	b.ReportMetric(float64(p50.Microseconds())/1000, "reg-p50-ms")
	b.ReportMetric(float64(p99.Microseconds())/1000, "reg-p99-ms")

	var sb strings.Builder
	fmt.Fprintf(&sb, "lb-controller convergence: %d Services × %d ready endpoints, localcloud AWS-like limits, datapath off\n", n, readyPerService)
	fmt.Fprintf(&sb, "  cold convergence %.1f s (all ingress IPs at %.1f s, all targets at %.1f s)\n",
		converged.Seconds(), ingressAt.Seconds(), targetsAt.Seconds())
	fmt.Fprintf(&sb, "  bound from the rate limits %.1f s (%s); measured/bound %.2f\n", bound, binding, ratio)
	fmt.Fprintf(&sb, "  cloud calls %d (%d refused by the rate limits); per action (passed [refused], limit rate/s burst, bound):\n", total, refused)
	for _, a := range slices.Sorted(maps.Keys(counts)) {
		l := limits[a]
		p := passed[a]
		fmt.Fprintf(&sb, "    %-30s %5d [%d]  %g/s burst %d  %.1f s\n", a, p, int(counts[a]["throttled"]+counts[a]["rateLimited"]+counts[a]["serverError"]),
			l.Rate, l.Burst, boundSeconds(map[string]int{a: p}, limits))
	}
	fmt.Fprintf(&sb, "  endpoint ready → target registered (bench, n=%d): p50 %s, p99 %s, max %s\n",
		len(lat), p50.Round(time.Millisecond), p99.Round(time.Millisecond), lat[len(lat)-1].Round(time.Millisecond))
	if hist.count > 0 {
		fmt.Fprintf(&sb, "  directlb_target_registration_seconds over the same changes: n=%d, mean %s, p50 ≤ %gs, p99 ≤ %gs (bucket bounds)\n",
			hist.count, (time.Duration(hist.sum / float64(hist.count) * 1e9)).Round(time.Millisecond), hist.quantileBound(0.5), hist.quantileBound(0.99))
	}
	// stdout, not b.Log: the testing package cuts a benchmark's log at 10 lines.
	fmt.Print(sb.String())
}

// minimumCalls is what any controller must call to create n Services with
// one port each: a load balancer, a target group and a listener each, and
// one registration call each.
func minimumCalls(n int) map[string]int {
	return map[string]int{"CreateLoadBalancer": n, "CreateTargetGroup": n, "CreateListener": n, "RegisterTargets": n}
}

// boundSeconds is the least time the token buckets allow for these calls:
// per action, the calls beyond the burst at the refill rate; the slowest
// action sets the bound (actions have separate buckets).
func boundSeconds(calls map[string]int, limits map[string]faults.Limit) float64 {
	worst := 0.0
	for a, k := range calls {
		l, ok := limits[a]
		if !ok || l.Rate <= 0 {
			continue
		}
		worst = math.Max(worst, math.Max(0, float64(k-l.Burst))/l.Rate)
	}
	return worst
}

func bindingAction(calls map[string]int, limits map[string]faults.Limit) string {
	best, bestS := "none", 0.0
	for a, k := range calls {
		if s := boundSeconds(map[string]int{a: k}, limits); s > bestS {
			l := limits[a]
			best, bestS = fmt.Sprintf("%s: (%d − %d) / %g/s", a, k, l.Burst, l.Rate), s
		}
	}
	return best
}

func percentile(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	i := int(math.Ceil(float64(p)/100*float64(len(ds)))) - 1
	return ds[max(i, 0)]
}

func ptr[T any](v T) *T { return &v }

func newService(ns, name string) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name,
			Annotations: map[string]string{service.AnnotationDirectAccess: "true"}},
		Spec: corev1.ServiceSpec{
			Type:              corev1.ServiceTypeLoadBalancer,
			LoadBalancerClass: ptr(service.LoadBalancerClass),
			Selector:          map[string]string{"app": name},
			Ports: []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80,
				TargetPort: intstr.FromInt32(targetPort)}},
		},
	}
}

// newSlice has readyPerService ready endpoints and one not ready (turned
// ready by the latency part).
func newSlice(ns, name string, i int) *discoveryv1.EndpointSlice {
	s := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name + "-x",
			Labels: map[string]string{discoveryv1.LabelServiceName: name}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr("http"), Protocol: ptr(corev1.ProtocolTCP), Port: ptr(int32(targetPort))}},
	}
	for j := 0; j <= readyPerService; j++ {
		ready := j < readyPerService
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{fmt.Sprintf("10.%d.%d.%d", 64+i/200, i%200, j+1)},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr(ready), Serving: ptr(ready), Terminating: ptr(false)},
		})
	}
	return s
}

func withIngress(ctx context.Context, c client.Reader, ns string) (int, error) {
	var list corev1.ServiceList
	if err := c.List(ctx, &list, client.InNamespace(ns), client.UnsafeDisableDeepCopy); err != nil {
		return 0, err
	}
	k := 0
	for _, s := range list.Items {
		if ing := s.Status.LoadBalancer.Ingress; len(ing) > 0 && ing[0].IP != "" {
			k++
		}
	}
	return k, nil
}

// fullGroups counts the Services of ns whose target group has exactly the
// ready endpoints registered (not draining).
func fullGroups(srv *localcloud.Server, ns string) int {
	k := 0
	for _, tg := range srv.Store().Snapshot().TargetGroups {
		if !strings.HasPrefix(tg.Tags[cloud.TagService], ns+"/") {
			continue
		}
		active := 0
		for _, t := range tg.Targets {
			if !t.Draining() && t.Port == targetPort {
				active++
			}
		}
		if active == readyPerService {
			k++
		}
	}
	return k
}

func registered(srv *localcloud.Server, ns, name, addr string) bool {
	for _, tg := range srv.Store().Snapshot().TargetGroups {
		if tg.Tags[cloud.TagService] != ns+"/"+name {
			continue
		}
		for _, t := range tg.Targets {
			if t.IP == addr && t.Port == targetPort && !t.Draining() {
				return true
			}
		}
	}
	return false
}

// controllerConfig is controller.DefaultConfig with the cluster name and
// the lb-controller flags in DLB_BENCH_LBC_FLAGS (space-separated), as the
// binary would parse them, validated.
func controllerConfig(b *testing.B, clusterName string) controller.Config {
	b.Helper()
	c := controller.DefaultConfig()
	c.ClusterName = clusterName
	fs := pflag.NewFlagSet("lb-controller", pflag.ContinueOnError)
	c.BindFlags(fs)
	if err := fs.Parse(strings.Fields(os.Getenv("DLB_BENCH_LBC_FLAGS"))); err != nil {
		b.Fatalf("DLB_BENCH_LBC_FLAGS: %v", err)
	}
	if err := c.Validate(); err != nil {
		b.Fatal(err)
	}
	if s := os.Getenv("DLB_BENCH_LBC_FLAGS"); s != "" {
		fmt.Printf("  (lb-controller flags: %s)\n", s)
	}
	return c
}

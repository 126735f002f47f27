package tests

// The reason to use directlb: a rolling update of a direct-access
// Deployment under steady load through the load balancer loses no request.
// The same rollout with readiness gates and drain opted out loses some —
// otherwise the test would prove nothing.

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"sort"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/utils/ptr"

	"github.com/directlb/directlb/e2e/framework"
	"github.com/directlb/directlb/pkg/cloud"
	"github.com/directlb/directlb/pkg/service"
)

// Load: new connections and keep-alive connections at once, ≥ 200 req/s.
const (
	roNewConnRate   = 200 // requests/s, each on a new TCP connection
	roKeepAliveRate = 100 // requests/s over a pool of keep-alive connections
	roMaxLoad       = 10 * time.Minute
	roReplicas      = 10
)

// roTimes records, per pod, when the test saw its containers ready, its
// gate True, its deletion and its disappearance.
type roTimes struct {
	events                               int
	mu                                   sync.Mutex
	containersReady, gateTrue, del, gone map[types.UID]time.Time
}

// watch follows the namespace's pods until ctx ends, watching again when
// the apiserver ends a watch.
func (r *roTimes) watch(ctx context.Context, t *testing.T, b *framework.Bed, ns, svc string) {
	go func() {
		rv := ""
		for ctx.Err() == nil {
			if rv == "" {
				// List, then watch from there (the test bed's etcd 3.4 cannot
				// stream the initial list as a watch).
				l, err := b.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
				if err != nil {
					time.Sleep(200 * time.Millisecond)
					continue
				}
				for i := range l.Items {
					r.observe(&l.Items[i], false, svc)
				}
				rv = l.ResourceVersion
			}
			w, err := b.Client.CoreV1().Pods(ns).Watch(ctx, metav1.ListOptions{ResourceVersion: rv, AllowWatchBookmarks: true})
			if err != nil {
				rv = ""
				time.Sleep(200 * time.Millisecond)
				continue
			}
			for ev := range w.ResultChan() {
				p, ok := ev.Object.(*corev1.Pod)
				if !ok {
					if ev.Type == watch.Error {
						rv = "" // too old: start over from the current state
					}
					continue
				}
				rv = p.ResourceVersion
				if ev.Type == watch.Bookmark {
					continue
				}
				r.observe(p, ev.Type == watch.Deleted, svc)
			}
			w.Stop()
		}
	}()
}

func (r *roTimes) observe(p *corev1.Pod, deleted bool, svc string) {
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events++
	first := func(m map[types.UID]time.Time) {
		if _, ok := m[p.UID]; !ok {
			m[p.UID] = now
		}
	}
	if framework.Condition(p, corev1.ContainersReady) == corev1.ConditionTrue {
		first(r.containersReady)
	}
	if s, _ := framework.Gate(p, svc); s == corev1.ConditionTrue {
		first(r.gateTrue)
	}
	if p.DeletionTimestamp != nil {
		first(r.del)
	}
	if deleted {
		first(r.gone)
	}
}

func roPercentiles(d []time.Duration) (p50, p99 time.Duration) {
	if len(d) == 0 {
		return 0, 0
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	idx := func(q float64) int { return min(len(d)-1, int(q*float64(len(d)-1)+0.5)) }
	return d[idx(0.5)], d[idx(0.99)]
}

// pairs returns to[uid]-from[uid] for pods in both maps and created after
// since.
func roPairs(from, to map[types.UID]time.Time, since time.Time) []time.Duration {
	var out []time.Duration
	for uid, a := range from {
		if z, ok := to[uid]; ok && a.After(since) {
			out = append(out, z.Sub(a))
		}
	}
	return out
}

type roResult struct {
	total, failed int64
	errs          map[string]int
	duration      time.Duration
	readyToGate   []time.Duration
	deleteToGone  []time.Duration
}

// roRollout sets up a 10-replica direct-access Deployment behind a load
// balancer, rolls it (maxSurge 1, maxUnavailable 0) under load and returns
// what the load generator saw.
func roRollout(t *testing.T, b *framework.Bed, ns string, gates bool) roResult {
	ctx := t.Context()
	roCreateWeb(t, b, ns, gates)
	lbIP := framework.WaitExternalIP(t, b, ns, "web", 30*time.Second)
	lc := framework.Cloud(t, b)
	roSettled(t, b, lc, ns, 4*time.Minute)
	url := "http://" + lbIP + ":80/"
	for i := range 50 {
		if err := framework.CheckGet(&http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}, url, "web-"); err != nil {
			t.Fatalf("before the rollout, request %d through %s failed: %v", i, url, err)
		}
	}

	times := &roTimes{containersReady: map[types.UID]time.Time{}, gateTrue: map[types.UID]time.Time{}, del: map[types.UID]time.Time{}, gone: map[types.UID]time.Time{}}
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	times.watch(wctx, t, b, ns, "web")

	load := framework.NewLoad("web-")
	lctx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	var wg sync.WaitGroup
	wg.Add(2)
	go load.Run(lctx, url, roNewConnRate, false, roMaxLoad, &wg)
	go load.Run(lctx, url, roKeepAliveRate, true, roMaxLoad, &wg)
	time.Sleep(3 * time.Second)

	begin := time.Now()
	patch := fmt.Sprintf(`{"spec":{"template":{"metadata":{"annotations":{"e2e.directlb.io/rollout":%q}}}}}`, begin.Format(time.RFC3339Nano))
	if _, err := b.Client.AppsV1().Deployments(ns).Patch(ctx, "web", types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	framework.Poll(t, 8*time.Minute, "rollout complete, old pods gone", func(ctx context.Context) (bool, string) {
		d, err := b.Client.AppsV1().Deployments(ns).Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		pods, err := b.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err.Error()
		}
		st := d.Status
		return st.ObservedGeneration >= d.Generation && st.UpdatedReplicas == roReplicas && st.ReadyReplicas == roReplicas &&
				st.Replicas == roReplicas && len(pods.Items) == roReplicas,
			fmt.Sprintf("updated %d ready %d replicas %d pods %d", st.UpdatedReplicas, st.ReadyReplicas, st.Replicas, len(pods.Items))
	})
	took := time.Since(begin)
	time.Sleep(3 * time.Second)
	stopLoad()
	wg.Wait()

	times.mu.Lock()
	res := roResult{
		total: load.Total(), failed: load.Failed(), errs: load.Errors(), duration: took,
		readyToGate:  roPairs(times.containersReady, times.gateTrue, begin),
		deleteToGone: roPairs(times.del, times.gone, begin),
	}
	t.Logf("pod watch: %d events, %d pods seen ready, %d deleted", times.events, len(times.containersReady), len(times.del))
	times.mu.Unlock()
	if rate := float64(res.total) / (took + 6*time.Second).Seconds(); rate < 200 {
		t.Errorf("load was %.0f req/s, want at least 200", rate)
	}
	return res
}

// roCreateWeb creates the web Service (with readiness gates or without)
// and its roReplicas-replica Deployment (maxSurge 1, maxUnavailable 0).
func roCreateWeb(t *testing.T, b *framework.Bed, ns string, gates bool) {
	ctx := t.Context()
	labels := map[string]string{"app": "web"}
	extra := map[string]string{}
	if !gates {
		extra[service.AnnotationReadinessGate] = "false"
	}
	if _, err := b.Client.CoreV1().Services(ns).Create(ctx, framework.GateService(ns, "web", labels, extra), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if gates {
		framework.WaitWebhook(t, b, ns, "web", labels)
	}
	ctr := framework.EchoContainer()
	ctr.Env = []corev1.EnvVar{{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}}}
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: ns},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(int32(roReplicas)),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Strategy: appsv1.DeploymentStrategy{Type: appsv1.RollingUpdateDeploymentStrategyType, RollingUpdate: &appsv1.RollingUpdateDeployment{
				MaxSurge: ptr.To(intstr.FromInt32(1)), MaxUnavailable: ptr.To(intstr.FromInt32(0)),
			}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					Containers:                    []corev1.Container{ctr},
					TerminationGracePeriodSeconds: ptr.To(int64(30)),
				},
			},
		},
	}
	if _, err := b.Client.AppsV1().Deployments(ns).Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// roSettled waits until the Deployment's pods are all Ready and every one
// is a healthy target.
func roSettled(t *testing.T, b *framework.Bed, lc cloud.LoadBalancers, ns string, timeout time.Duration) {
	t.Helper()
	framework.Poll(t, timeout, fmt.Sprintf("%d pods Ready and healthy targets", roReplicas), func(ctx context.Context) (bool, string) {
		pods, err := b.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
		if err != nil {
			return false, err.Error()
		}
		ready := 0
		ips := map[string]bool{}
		for i := range pods.Items {
			if framework.Ready(&pods.Items[i]) {
				ready++
				ips[pods.Items[i].Status.PodIP] = true
			}
		}
		tgs, err := lc.ListTargetGroups(ctx, cloud.Tags{cloud.TagCluster: framework.GateCluster, cloud.TagService: ns + "/web"})
		if err != nil || len(tgs) != 1 {
			return false, fmt.Sprintf("ready %d, target groups %d %v", ready, len(tgs), err)
		}
		th, err := lc.DescribeTargetHealth(ctx, tgs[0].ARN)
		if err != nil {
			return false, err.Error()
		}
		healthy := 0
		for _, h := range th {
			if h.State == cloud.TargetHealthy && ips[h.IP] {
				healthy++
			}
		}
		return ready == roReplicas && len(pods.Items) == roReplicas && healthy == roReplicas,
			fmt.Sprintf("pods %d ready %d healthy targets %d", len(pods.Items), ready, healthy)
	})
}

func roReport(t *testing.T, name string, r roResult) {
	p50g, p99g := roPercentiles(r.readyToGate)
	p50d, p99d := roPercentiles(r.deleteToGone)
	line := fmt.Sprintf("%s: rollout %.1fs, %d requests, %d failed %v; containers-ready→gate p50 %.2fs p99 %.2fs (n=%d); deletion→gone p50 %.2fs p99 %.2fs (n=%d)",
		name, r.duration.Seconds(), r.total, r.failed, r.errs,
		p50g.Seconds(), p99g.Seconds(), len(r.readyToGate), p50d.Seconds(), p99d.Seconds(), len(r.deleteToGone))
	t.Log(line)
	fmt.Fprintln(os.Stderr, "e2e rollout:", line)
}

// TestRolloutZeroLoss: readiness gates and drain on — 0 failed requests.
func TestRolloutZeroLoss(t *testing.T) {
	b := requireCloud(t)
	ns := framework.Namespace(t, b, "e2e-rollout")
	framework.StartGateController(t, b, ns)
	framework.DeleteServices(t, b, ns)
	r := roRollout(t, b, ns, true)
	roReport(t, "gates+drain", r)
	if r.failed != 0 {
		t.Errorf("%d of %d requests failed during the rollout with readiness gates and drain: %v", r.failed, r.total, r.errs)
	}
	if len(r.readyToGate) < roReplicas {
		t.Errorf("saw %d new pods go containers-ready → gate True, want %d", len(r.readyToGate), roReplicas)
	}
}

// TestRolloutOptedOutLoses: the same rollout with gates and drain opted out
// (service.directlb.io/readiness-gate: "false") must lose requests, or the
// zero above would prove nothing.
func TestRolloutOptedOutLoses(t *testing.T) {
	b := requireCloud(t)
	ns := framework.Namespace(t, b, "e2e-rollout-off")
	framework.StartGateController(t, b, ns)
	framework.DeleteServices(t, b, ns)
	r := roRollout(t, b, ns, false)
	roReport(t, "opted out", r)
	if r.failed == 0 {
		t.Errorf("0 of %d requests failed with gates and drain opted out: the rollout test cannot tell them apart", r.total)
	}
}

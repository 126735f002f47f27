package tests

// Two clusters, one cloud account: two lb-controllers with different
// --cluster-name values against the bed's one localcloud, each with a
// direct-access Service of the same namespace/name. Cluster A is the bed
// (real pods behind its EXTERNAL-IP); cluster B is a second kube-apiserver
// and etcd the test starts (envtest), with no nodes: its EndpointSlice is
// written by hand, pointing at A's very pod IPs and port, so that a
// controller confusing the two would register, deregister or delete
// exactly A's targets. Neither may touch the other's resources.

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/directlb/directlb/e2e/framework"
	"github.com/directlb/directlb/internal/testenv"
	"github.com/directlb/directlb/pkg/cloud"
	cloudaws "github.com/directlb/directlb/pkg/cloud/aws"
)

const (
	tcClusterA = "e2e-2c-a"
	tcClusterB = "e2e-2c-b"
	tcService  = "echo"
	tcReplicas = 3
	// tcLoadRate is the request rate through A's EXTERNAL-IP while B's
	// Service comes and goes (new connection each), for at most tcMaxLoad.
	tcLoadRate = 20
	tcMaxLoad  = 4 * time.Minute
)

// tcOwned is what the cloud holds for one cluster's Service: its load
// balancers and target groups (by the ownership tags) and the targets of
// each group that are not draining, sorted.
type tcOwned struct {
	lbs     []cloud.LoadBalancer
	tgs     []cloud.TargetGroup
	targets map[string][]string // target group ARN → targets
	states  string
}

func tcCloud(ctx context.Context, lc *cloudaws.Client, cluster, key string) (tcOwned, error) {
	owner := cloud.Tags{cloud.TagCluster: cluster, cloud.TagService: key}
	lbs, err := lc.ListLoadBalancers(ctx, owner)
	if err != nil {
		return tcOwned{}, err
	}
	tgs, err := lc.ListTargetGroups(ctx, owner)
	if err != nil {
		return tcOwned{}, err
	}
	o := tcOwned{lbs: lbs, tgs: tgs, targets: map[string][]string{}}
	var states []string
	for _, tg := range tgs {
		th, err := lc.DescribeTargetHealth(ctx, tg.ARN)
		if err != nil {
			return tcOwned{}, err
		}
		var active []string
		for _, h := range th {
			states = append(states, fmt.Sprintf("%s=%s", h.Target, h.State))
			if h.State != cloud.TargetDraining {
				active = append(active, h.Target.String())
			}
		}
		sort.Strings(active)
		o.targets[tg.ARN] = active
	}
	o.states = fmt.Sprintf("%d load balancers, %d target groups, targets %s", len(lbs), len(tgs), strings.Join(states, " "))
	return o, nil
}

// single returns the one load balancer and target group, and the group's
// active targets, or false.
func (o tcOwned) single() (cloud.LoadBalancer, cloud.TargetGroup, []string, bool) {
	if len(o.lbs) != 1 || len(o.tgs) != 1 {
		return cloud.LoadBalancer{}, cloud.TargetGroup{}, nil, false
	}
	return o.lbs[0], o.tgs[0], o.targets[o.tgs[0].ARN], true
}

// tcStartClusterB starts cluster B's control plane (envtest: etcd and
// kube-apiserver from the bed's binaries) for the test and writes its
// admin kubeconfig to a file for lb-controller.
func tcStartClusterB(t *testing.T) (kubernetes.Interface, string) {
	t.Helper()
	env, cfg := testenv.StartEnvtest(t, "dlbt-e2e-2c-assets-", nil)
	path := filepath.Join(t.TempDir(), "cluster-b.kubeconfig")
	if err := os.WriteFile(path, env.KubeConfig, 0o600); err != nil {
		t.Fatal(err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return cs, path
}

// tcController runs bin/lb-controller for cluster against kubeconfig and
// the bed's localcloud (readiness gates off: cluster B has no pods, and
// gates have their own tests).
func tcController(t *testing.T, b *framework.Bed, cluster, kubeconfig string) {
	t.Helper()
	bin := filepath.Join(b.BinDir, "lb-controller")
	if _, err := os.Stat(bin); err != nil {
		t.Skipf("%s is not built (make build): %v", bin, err)
	}
	framework.RunController(t, bin, "--cluster-name="+cluster, "--kubeconfig="+kubeconfig,
		"--aws-endpoint="+b.Topology.LocalcloudURL, "--metrics-bind-address=0", "--health-probe-bind-address=0",
		"--target-batch-window=50ms",
		"--readiness-gates=false", "--drain-bind-address=0")
}

// tcWatch records samples of A's target group that differ from its pods.
type tcWatch struct {
	mu         sync.Mutex
	samples    int
	deviations []string
}

// run samples the target group every 250 ms until ctx ends and records
// every sample whose active targets are not want, or that holds a draining
// target (B deregistering A's pods would show as draining).
func (w *tcWatch) run(ctx context.Context, lc *cloudaws.Client, tgARN string, want []string, wg *sync.WaitGroup) {
	defer wg.Done()
	for ctx.Err() == nil {
		th, err := lc.DescribeTargetHealth(ctx, tgARN)
		if ctx.Err() != nil {
			return
		}
		var active []string
		draining := false
		for _, h := range th {
			if h.State == cloud.TargetDraining {
				draining = true
			} else {
				active = append(active, h.Target.String())
			}
		}
		sort.Strings(active)
		w.mu.Lock()
		w.samples++
		if err != nil || draining || !slices.Equal(active, want) {
			w.deviations = append(w.deviations, fmt.Sprintf("%s: %v (err %v)", time.Now().Format("15:04:05.000"), th, err))
		}
		w.mu.Unlock()
		select {
		case <-ctx.Done():
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func TestTwoClustersOneCloud(t *testing.T) {
	b := requireBed(t)
	if b.Topology.LocalcloudURL == "" {
		t.Skip("the test bed runs no localcloud (testbed.Config.Localcloud is off)")
	}
	ns := framework.Namespace(t, b, "e2e-2c")
	key := ns + "/" + tcService
	lc := framework.Cloud(t, b)
	ctx := t.Context()
	csB, kubeconfigB := tcStartClusterB(t)
	if _, err := csB.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("cluster B: create namespace: %v", err)
	}
	// Cleanups run last registered first: the Services go (each
	// controller removing its resources) before the controllers stop, and
	// the controllers before cluster B's apiserver.
	tcController(t, b, tcClusterA, b.Topology.Kubeconfig)
	tcController(t, b, tcClusterB, kubeconfigB)
	framework.DeleteServices(t, b, ns)
	t.Cleanup(func() { tcDeleteService(t, csB, ns) })

	r := &tcClusters{t: t, lc: lc, csB: csB, ns: ns, key: key, labels: map[string]string{"app": "echo"}}
	r.startA(ctx, b)

	// From here to the end: load through A's EXTERNAL-IP, and A's target
	// group sampled for any change.
	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	var wg sync.WaitGroup
	load := framework.NewLoad(tcService + "-")
	watch := &tcWatch{}
	wg.Add(2)
	go load.Run(loadCtx, "http://"+r.ipA+":80/", tcLoadRate, false, tcMaxLoad, &wg)
	// A client of its own: its calls are paced apart from the test's.
	go watch.run(loadCtx, framework.Cloud(t, b), r.tgA.ARN, r.podTargets, &wg)

	slice := r.startB(ctx)
	r.dropOneEndpoint(ctx, slice)
	r.deleteB(ctx)
	r.checkAAfterB(ctx)
	stopLoad()
	wg.Wait()
	tcCheckLoad(t, load, watch, r.podTargets)
	r.checkAServes()
}

// tcClusters is what TestTwoClustersOneCloud's steps share: the bed's
// cloud, cluster B's client, the Service's namespace, key and labels, and
// what the steps found (A's pod targets; each cluster's EXTERNAL-IP, load
// balancer and target group).
type tcClusters struct {
	t          *testing.T
	lc         *cloudaws.Client
	csB        kubernetes.Interface
	ns, key    string
	labels     map[string]string
	podTargets []string
	ipA, ipB   string
	lbA, lbB   cloud.LoadBalancer
	tgA, tgB   cloud.TargetGroup
}

// startA runs three echo pods behind a direct-access Service in cluster A
// and waits for its EXTERNAL-IP and for A's target group to hold exactly
// the pods, all healthy.
func (r *tcClusters) startA(ctx context.Context, b *framework.Bed) {
	t, lc, ns, key := r.t, r.lc, r.ns, r.key
	// Cluster A: three echo pods behind a direct-access Service.
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: tcService, Namespace: ns},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(int32(tcReplicas)),
			Selector: &metav1.LabelSelector{MatchLabels: r.labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: r.labels},
				Spec: corev1.PodSpec{
					Containers:                    []corev1.Container{framework.EchoContainer()},
					TerminationGracePeriodSeconds: ptr.To(int64(2)),
				},
			},
		},
	}
	if _, err := b.Client.AppsV1().Deployments(ns).Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create deployment: %v", err)
	}
	if _, err := b.Client.CoreV1().Services(ns).Create(ctx, framework.GateService(ns, tcService, r.labels, nil), metav1.CreateOptions{}); err != nil {
		t.Fatalf("cluster A: create service: %v", err)
	}
	framework.Poll(t, 120*time.Second, fmt.Sprintf("%d echo pods ready", tcReplicas), func(ctx context.Context) (bool, string) {
		var n int
		var state string
		r.podTargets, n, state = framework.PodTargets(ctx, b, ns)
		return len(r.podTargets) == tcReplicas && n == tcReplicas, state
	})
	r.ipA = tcIngress(t, func(ctx context.Context) (*corev1.Service, error) {
		return b.Client.CoreV1().Services(ns).Get(ctx, tcService, metav1.GetOptions{})
	}, "cluster A")
	framework.Poll(t, 60*time.Second, "A's targets = A's pods, all healthy", func(ctx context.Context) (bool, string) {
		o, err := tcCloud(ctx, lc, tcClusterA, key)
		if err != nil {
			return false, err.Error()
		}
		var got []string
		var ok bool
		r.lbA, r.tgA, got, ok = o.single()
		if !ok || !slices.Equal(got, r.podTargets) {
			return false, fmt.Sprintf("want %v; %s", r.podTargets, o.states)
		}
		th, err := lc.DescribeTargetHealth(ctx, r.tgA.ARN)
		if err != nil {
			return false, err.Error()
		}
		for _, h := range th {
			if h.State != cloud.TargetHealthy {
				return false, o.states
			}
		}
		return true, o.states
	})
}

// startB creates the same namespace/name in cluster B with its
// EndpointSlice pointing at A's pods, waits for B's own load balancer and
// target group, and checks the two clusters share no resource and each
// resource carries its own cluster's tags and listener; it returns B's
// slice.
func (r *tcClusters) startB(ctx context.Context) *discoveryv1.EndpointSlice {
	t, lc, csB, ns, key := r.t, r.lc, r.csB, r.ns, r.key
	// Cluster B: the same namespace/name, its EndpointSlice by hand with
	// A's pod addresses and target port.
	if _, err := csB.CoreV1().Services(ns).Create(ctx, framework.GateService(ns, tcService, r.labels, nil), metav1.CreateOptions{}); err != nil {
		t.Fatalf("cluster B: create service: %v", err)
	}
	slice := tcSlice(ns, r.podTargets)
	if _, err := csB.DiscoveryV1().EndpointSlices(ns).Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		t.Fatalf("cluster B: create endpoint slice: %v", err)
	}
	r.ipB = tcIngress(t, func(ctx context.Context) (*corev1.Service, error) {
		return csB.CoreV1().Services(ns).Get(ctx, tcService, metav1.GetOptions{})
	}, "cluster B")
	framework.Poll(t, 30*time.Second, "B's own load balancer and target group, with B's endpoints", func(ctx context.Context) (bool, string) {
		o, err := tcCloud(ctx, lc, tcClusterB, key)
		if err != nil {
			return false, err.Error()
		}
		var got []string
		var ok bool
		r.lbB, r.tgB, got, ok = o.single()
		return ok && slices.Equal(got, r.podTargets), fmt.Sprintf("want %v; %s", r.podTargets, o.states)
	})
	t.Logf("cluster A: %s (%s) target group %s; cluster B: %s (%s) target group %s", r.lbA.Name, r.ipA, r.tgA.Name, r.lbB.Name, r.ipB, r.tgB.Name)
	if r.lbA.ARN == r.lbB.ARN || r.tgA.ARN == r.tgB.ARN || r.lbA.Name == r.lbB.Name || r.tgA.Name == r.tgB.Name || r.ipA == r.ipB {
		t.Fatalf("the clusters share a resource: A %s %s %s, B %s %s %s", r.lbA.ARN, r.tgA.ARN, r.ipA, r.lbB.ARN, r.tgB.ARN, r.ipB)
	}
	for _, res := range []struct {
		what    string
		tags    cloud.Tags
		cluster string
	}{{"A's load balancer", r.lbA.Tags, tcClusterA}, {"A's target group", r.tgA.Tags, tcClusterA},
		{"B's load balancer", r.lbB.Tags, tcClusterB}, {"B's target group", r.tgB.Tags, tcClusterB}} {
		if !res.tags.Matches(cloud.Tags{cloud.TagCluster: res.cluster, cloud.TagService: key}) {
			t.Errorf("%s: tags %v, want %s=%s and %s=%s", res.what, res.tags, cloud.TagCluster, res.cluster, cloud.TagService, key)
		}
	}
	tcListenerTo(t, lc, r.lbA, r.tgA)
	tcListenerTo(t, lc, r.lbB, r.tgB)
	return slice
}

// dropOneEndpoint removes A's first pod from B's slice and waits for B to
// deregister it from B's group only.
func (r *tcClusters) dropOneEndpoint(ctx context.Context, slice *discoveryv1.EndpointSlice) {
	t, lc, csB, ns, key := r.t, r.lc, r.csB, r.ns, r.key
	// B drops one endpoint: B deregisters it from B's group only.
	dropped := r.podTargets[0]
	slice, err := csB.DiscoveryV1().EndpointSlices(ns).Get(ctx, slice.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	slice.Endpoints = slice.Endpoints[1:]
	if _, err := csB.DiscoveryV1().EndpointSlices(ns).Update(ctx, slice, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	framework.Poll(t, 30*time.Second, "B deregistered "+dropped+" from its own target group", func(ctx context.Context) (bool, string) {
		o, err := tcCloud(ctx, lc, tcClusterB, key)
		if err != nil {
			return false, err.Error()
		}
		_, _, got, ok := o.single()
		return ok && slices.Equal(got, r.podTargets[1:]), o.states
	})
}

// deleteB deletes B's Service and waits for B to remove its resources,
// and only those.
func (r *tcClusters) deleteB(ctx context.Context) {
	t, lc, csB, ns := r.t, r.lc, r.csB, r.ns
	// B's Service goes: B removes its resources, and only those.
	if err := csB.CoreV1().Services(ns).Delete(ctx, tcService, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	framework.Poll(t, 60*time.Second, "B's Service gone (finalizer removed) and nothing of B in the cloud", func(ctx context.Context) (bool, string) {
		_, err := csB.CoreV1().Services(ns).Get(ctx, tcService, metav1.GetOptions{})
		if !apierrors.IsNotFound(err) {
			return false, fmt.Sprintf("cluster B's Service still there (%v)", err)
		}
		lbs, err1 := lc.ListLoadBalancers(ctx, cloud.Tags{cloud.TagCluster: tcClusterB})
		tgs, err2 := lc.ListTargetGroups(ctx, cloud.Tags{cloud.TagCluster: tcClusterB})
		if err1 != nil || err2 != nil {
			return false, fmt.Sprint(err1, err2)
		}
		return len(lbs) == 0 && len(tgs) == 0, fmt.Sprintf("cluster B still owns %d load balancers and %d target groups", len(lbs), len(tgs))
	})
	tcNothingLeft(t, lc, r.lbB, r.tgB)
}

// checkAAfterB checks, 5 s after B is gone, that A has the same load
// balancer, target group, targets and listener.
func (r *tcClusters) checkAAfterB(ctx context.Context) {
	t, lc, key := r.t, r.lc, r.key
	// A after B is gone: the same resources, the same targets, serving.
	time.Sleep(5 * time.Second)
	o, err := tcCloud(ctx, lc, tcClusterA, key)
	if err != nil {
		t.Fatal(err)
	}
	if lb, tg, got, ok := o.single(); !ok || lb.ARN != r.lbA.ARN || tg.ARN != r.tgA.ARN || !slices.Equal(got, r.podTargets) {
		t.Errorf("cluster A after B's deletion: %s; want %s, %s with %v", o.states, r.lbA.ARN, r.tgA.ARN, r.podTargets)
	}
	tcListenerTo(t, lc, r.lbA, r.tgA)
}

// tcCheckLoad checks the load through A's EXTERNAL-IP and the samples of
// A's target group taken while B's Service came and went.
func tcCheckLoad(t *testing.T, load *framework.Load, watch *tcWatch, podTargets []string) {
	t.Logf("through A's EXTERNAL-IP while B's Service came and went: %d requests, %d failed %v; A's target group sampled %d times",
		load.Total(), load.Failed(), load.Errors(), watch.samples)
	if load.Failed() > 0 || load.Total() < 100 {
		t.Errorf("requests through A: %d failed of %d (%v), want 0 failed of at least 100", load.Failed(), load.Total(), load.Errors())
	}
	if len(watch.deviations) > 0 || watch.samples < 20 {
		t.Errorf("A's target group left %v in %d of %d samples (want none of at least 20): %s",
			podTargets, len(watch.deviations), watch.samples, strings.Join(watch.deviations[:min(5, len(watch.deviations))], "; "))
	}
}

// checkAServes sends 30 requests through A's EXTERNAL-IP after B's
// deletion; all must reach an echo pod.
func (r *tcClusters) checkAServes() {
	t := r.t
	failed := 0
	for range 30 {
		if code, body, err := framework.HTTPGet("http://" + r.ipA + ":80/"); err != nil || code != 200 || !strings.HasPrefix(body, tcService+"-") {
			failed++
		}
	}
	if failed > 0 {
		t.Errorf("after B's deletion: %d of 30 requests through A's EXTERNAL-IP failed", failed)
	}
}

// tcIngress waits up to 30 s for the Service's EXTERNAL-IP.
func tcIngress(t *testing.T, get func(context.Context) (*corev1.Service, error), cluster string) string {
	t.Helper()
	var ip string
	framework.Poll(t, 30*time.Second, cluster+": EXTERNAL-IP", func(ctx context.Context) (bool, string) {
		s, err := get(ctx)
		if err != nil {
			return false, err.Error()
		}
		if ing := s.Status.LoadBalancer.Ingress; len(ing) > 0 {
			ip = ing[0].IP
		}
		return ip != "", fmt.Sprintf("status %+v", s.Status)
	})
	return ip
}

// tcSlice is cluster B's EndpointSlice of the Service: one ready endpoint
// per "ip:8080" target, no pods behind them (B has no nodes).
func tcSlice(ns string, targets []string) *discoveryv1.EndpointSlice {
	s := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: tcService + "-b",
			Labels: map[string]string{discoveryv1.LabelServiceName: tcService}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Protocol: ptr.To(corev1.ProtocolTCP), Port: ptr.To(int32(8080))}},
	}
	for _, tg := range targets {
		ip, _, _ := strings.Cut(tg, ":")
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{ip},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true), Terminating: ptr.To(false)}})
	}
	return s
}

// tcListenerTo checks that lb has one listener, and that it forwards to tg.
func tcListenerTo(t *testing.T, lc *cloudaws.Client, lb cloud.LoadBalancer, tg cloud.TargetGroup) {
	t.Helper()
	ls, err := lc.ListListeners(t.Context(), lb.ARN)
	if err != nil || len(ls) != 1 || ls[0].TargetGroupARN != tg.ARN {
		t.Errorf("%s: listeners %+v (err %v), want one forwarding to %s", lb.Name, ls, err, tg.Name)
	}
}

// tcNothingLeft checks the whole account (no tag filter): neither B's load
// balancer nor its target group exists under any tags, and the Service's
// name is held only by cluster A's resources.
func tcNothingLeft(t *testing.T, lc *cloudaws.Client, lbB cloud.LoadBalancer, tgB cloud.TargetGroup) {
	t.Helper()
	ctx := t.Context()
	lbs, err := lc.ListLoadBalancers(ctx, cloud.Tags{})
	if err != nil {
		t.Fatal(err)
	}
	tgs, err := lc.ListTargetGroups(ctx, cloud.Tags{})
	if err != nil {
		t.Fatal(err)
	}
	for _, lb := range lbs {
		if lb.ARN == lbB.ARN || lb.Name == lbB.Name || lb.Tags[cloud.TagCluster] == tcClusterB {
			t.Errorf("B's load balancer is left: %s %s tags %v", lb.Name, lb.ARN, lb.Tags)
		}
	}
	for _, tg := range tgs {
		if tg.ARN == tgB.ARN || tg.Name == tgB.Name || tg.Tags[cloud.TagCluster] == tcClusterB {
			t.Errorf("B's target group is left: %s %s tags %v", tg.Name, tg.ARN, tg.Tags)
		}
	}
}

// tcDeleteService deletes cluster B's Service (if still there) and waits,
// at most 60 s, until B's controller has removed its finalizer.
func tcDeleteService(t *testing.T, cs kubernetes.Interface, ns string) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	err := cs.CoreV1().Services(ns).Delete(ctx, tcService, metav1.DeleteOptions{})
	for err == nil && ctx.Err() == nil {
		_, err = cs.CoreV1().Services(ns).Get(ctx, tcService, metav1.GetOptions{})
		time.Sleep(300 * time.Millisecond)
	}
	if !apierrors.IsNotFound(err) {
		t.Errorf("cluster B: Service %s/%s not deleted within 60s: %v", ns, tcService, err)
	}
}

package controller

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"sort"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/directlb/directlb/internal/testenv"
	"github.com/directlb/directlb/pkg/cloud"
	cloudaws "github.com/directlb/directlb/pkg/cloud/aws"
	"github.com/directlb/directlb/pkg/localcloud"
)

// These tests run the reconcilers against a real kube-apiserver and a real
// localcloud API server (in-process, no datapath) through the real SDK.

func startLocalcloud(t *testing.T, mutate func(*localcloud.Config)) *localcloud.Server {
	t.Helper()
	return testenv.Localcloud(t, mutate)
}

func sdkClient(t *testing.T, srv *localcloud.Server, attempts int) *cloudaws.Client {
	t.Helper()
	return testenv.SDKClient(t, srv, func(cfg *cloudaws.Config) {
		cfg.MaxAttempts = attempts
		cfg.MaxBackoff = 50 * time.Millisecond
		cfg.RateLimits = map[string]cloudaws.Limit{} // the test is about faults, not client-side pacing
	})
}

// waitFor polls cond every 100 ms up to limit.
func waitFor(t *testing.T, limit time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(limit)
	last := ""
	for time.Now().Before(deadline) {
		ok, why := cond()
		if ok {
			return
		}
		last = why
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("timed out after %s waiting for %s; last: %s", limit, what, last)
}

// TestLocalcloudFaultsAndRestart: 20 Services against a localcloud that
// throttles 30% of calls, fails 10% with 5xx and adds latency; the
// controller is stopped in the middle of creating them and a new one
// started. Everything converges with no duplicate; targets follow an
// EndpointSlice; deleting the Services leaves the cloud empty (all checked
// through the SDK).
func TestLocalcloudFaultsAndRestart(t *testing.T) {
	c, ns := newNamespace(t)
	ctx := context.Background()
	srv := startLocalcloud(t, func(cfg *localcloud.Config) {
		cfg.FaultThrottle = map[string]string{"*": "0.3"}
		cfg.Fault5xx = map[string]string{"*": "0.1"}
		cfg.FaultLatency = map[string]string{"*": "10ms"}
	})
	cfg := testConfig(t, func(c *Config) { c.ClusterName = "lc-" + ns })
	h := &harness{t: t, ns: ns, c: c}
	_, stop := runManager(t, ns, sdkClient(t, srv, 10), cfg)

	const n = 20
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("s%02d", i)
		h.service(names[i], nil)
	}
	withIngress := func() int {
		k := 0
		for _, name := range names {
			if len(h.get(name).Status.LoadBalancer.Ingress) > 0 {
				k++
			}
		}
		return k
	}
	waitFor(t, 60*time.Second, "a few Services converged", func() (bool, string) {
		k := withIngress()
		return k >= 3, fmt.Sprintf("%d with an address", k)
	})
	stop() // a crash in the middle of creating them
	t.Logf("controller stopped with %d of %d Services converged", withIngress(), n)
	runManager(t, ns, sdkClient(t, srv, 10), cfg)

	waitFor(t, 90*time.Second, "every Service converged", func() (bool, string) {
		k := withIngress()
		return k == n, fmt.Sprintf("%d of %d with an address", k, n)
	})

	check := sdkClient(t, srv, 30)
	owner := cloud.Tags{cloud.TagCluster: cfg.ClusterName}
	tgs := faultsOwnedResources(ctx, h, check, owner, names)
	faultsTargetsFollow(ctx, h, check, tgs)
	faultsDeleteAll(ctx, h, check, owner, names)
}

// faultsOwnedResources checks, through the SDK, that owner has one load
// balancer with one TCP/80 listener and one target group per Service of
// names, and that each Service's ingress is its load balancer's address
// from localcloud's range; it returns the target groups.
func faultsOwnedResources(ctx context.Context, h *harness, check *cloudaws.Client, owner cloud.Tags, names []string) []cloud.TargetGroup {
	t, ns, n := h.t, h.ns, len(names)
	lbs, err := check.ListLoadBalancers(ctx, owner)
	if err != nil {
		t.Fatal(err)
	}
	tgs, err := check.ListTargetGroups(ctx, owner)
	if err != nil {
		t.Fatal(err)
	}
	if len(lbs) != n || len(tgs) != n {
		t.Fatalf("%d load balancers and %d target groups, want %d each", len(lbs), len(tgs), n)
	}
	lbRange := netip.MustParsePrefix("198.51.100.0/24")
	byService := map[string]cloud.LoadBalancer{}
	for _, lb := range lbs {
		key := lb.Tags[cloud.TagService]
		if _, dup := byService[key]; dup {
			t.Errorf("two load balancers for %s", key)
		}
		byService[key] = lb
		ls, err := check.ListListeners(ctx, lb.ARN)
		if err != nil {
			t.Fatal(err)
		}
		if len(ls) != 1 || ls[0].Port != 80 || ls[0].Protocol != cloud.ProtocolTCP {
			t.Errorf("%s: listeners %+v, want one TCP/80", lb.Name, ls)
		}
	}
	for _, name := range names {
		ing := h.get(name).Status.LoadBalancer.Ingress
		lb := byService[ns+"/"+name]
		ip, err := netip.ParseAddr(ing[0].IP)
		if err != nil || !lbRange.Contains(ip) || len(lb.Addresses) == 0 || lb.Addresses[0] != ing[0].IP {
			t.Errorf("%s: ingress %+v, load balancer addresses %v; want an address from %s", name, ing, lb.Addresses, lbRange)
		}
	}
	return tgs
}

// faultsTargetsFollow gives s00 an EndpointSlice and waits for its ready
// endpoints in its target group (of tgs).
func faultsTargetsFollow(ctx context.Context, h *harness, check *cloudaws.Client, tgs []cloud.TargetGroup) {
	t, ns := h.t, h.ns
	h.slice("s00", epOf("10.1.0.1", true, false, ""), epOf("10.1.0.2", true, false, ""), epOf("10.1.0.3", false, false, ""))
	var tgARN string
	for _, tg := range tgs {
		if tg.Tags[cloud.TagService] == ns+"/s00" {
			tgARN = tg.ARN
		}
	}
	want := []string{"10.1.0.1:8080", "10.1.0.2:8080"}
	waitFor(t, 30*time.Second, "targets registered in localcloud", func() (bool, string) {
		th, err := check.DescribeTargetHealth(ctx, tgARN)
		if err != nil {
			return false, err.Error()
		}
		var got []string
		for _, x := range th {
			got = append(got, x.Target.String())
		}
		sort.Strings(got)
		return cmp.Equal(want, got), fmt.Sprintf("targets %v", got)
	})
}

// faultsDeleteAll deletes the Services of names and waits for them and
// owner's load balancers and target groups to be gone.
func faultsDeleteAll(ctx context.Context, h *harness, check *cloudaws.Client, owner cloud.Tags, names []string) {
	t, c, ns := h.t, h.c, h.ns
	for _, name := range names {
		if err := c.Delete(ctx, h.get(name)); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 90*time.Second, "Services gone and the cloud empty", func() (bool, string) {
		left := 0
		for _, name := range names {
			if err := c.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, &corev1.Service{}); client.IgnoreNotFound(err) == nil && err == nil {
				left++
			}
		}
		lbs, err1 := check.ListLoadBalancers(ctx, owner)
		tgs, err2 := check.ListTargetGroups(ctx, owner)
		if err1 != nil || err2 != nil {
			return false, fmt.Sprintf("list: %v %v", err1, err2)
		}
		return left == 0 && len(lbs) == 0 && len(tgs) == 0,
			fmt.Sprintf("%d Services, %d load balancers, %d target groups left", left, len(lbs), len(tgs))
	})
}

// TestTwoClustersShareAnAccount: two clusters (two apiservers) with
// different cluster names, one cloud account (one localcloud), and in each a
// Service of the same namespace and name. Each controller makes and fills
// only its own load balancer; deleting one cluster's Service leaves the
// other's resources and targets as they were.
func TestTwoClustersShareAnAccount(t *testing.T) {
	c1, ns := newNamespace(t)
	ctx := context.Background()
	c2, rc2 := startSecondAPIServer(ctx, t, ns)

	srv := startLocalcloud(t, nil)
	check := sdkClient(t, srv, 10)
	clusters := []struct {
		name string
		h    *harness
		rc   *rest.Config
		ip   string
		stop func()
	}{
		{name: "alpha-" + ns, h: &harness{t: t, ns: ns, c: c1}, rc: restConfig, ip: "10.1.0.1"},
		{name: "beta-" + ns, h: &harness{t: t, ns: ns, c: c2}, rc: rc2, ip: "10.2.0.1"},
	}
	for i := range clusters {
		cl := &clusters[i]
		cfg := testConfig(t, func(c *Config) { c.ClusterName = cl.name })
		_, cl.stop = runManagerOn(t, cl.rc, ns, sdkClient(t, srv, 10), cfg)
		cl.h.service("web", nil)
		cl.h.slice("web", epOf(cl.ip, true, false, ""))
	}
	for _, cl := range clusters {
		waitFor(t, 60*time.Second, cl.name+": its Service converged with its own target", func() (bool, string) {
			lbs, targets, err := ownedBy(ctx, check, cl.name)
			ok := err == nil && len(lbs) == 1 && cmp.Equal(targets, []string{cl.ip + ":8080"}) &&
				len(cl.h.get("web").Status.LoadBalancer.Ingress) == 1
			return ok, fmt.Sprintf("load balancers %v, targets %v, err %v", lbs, targets, err)
		})
	}
	a, b := clusters[0], clusters[1]
	if aIP, bIP := a.h.get("web").Status.LoadBalancer.Ingress[0].IP, b.h.get("web").Status.LoadBalancer.Ingress[0].IP; aIP == bIP {
		t.Errorf("both clusters' Services got the load balancer address %s", aIP)
	}
	bLBs, bTargets, err := ownedBy(ctx, check, b.name)
	if err != nil {
		t.Fatal(err)
	}

	if err := a.h.c.Delete(ctx, a.h.get("web")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, a.name+": its resources gone", func() (bool, string) {
		lbs, targets, err := ownedBy(ctx, check, a.name)
		return err == nil && len(lbs) == 0 && len(targets) == 0, fmt.Sprintf("%v %v %v", lbs, targets, err)
	})
	time.Sleep(2 * time.Second) // a few more passes of both controllers
	lbs, targets, err := ownedBy(ctx, check, b.name)
	if err != nil || !cmp.Equal(lbs, bLBs) || !cmp.Equal(targets, bTargets) {
		t.Errorf("%s after %s deleted its Service: load balancers %v targets %v (%v); want %v %v unchanged",
			b.name, a.name, lbs, targets, err, bLBs, bTargets)
	}
	if err := b.h.c.Delete(ctx, b.h.get("web")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, b.name+": its resources gone", func() (bool, string) {
		lbs, targets, err := ownedBy(ctx, check, b.name)
		return err == nil && len(lbs) == 0 && len(targets) == 0, fmt.Sprintf("%v %v %v", lbs, targets, err)
	})
}

// startSecondAPIServer starts a second kube-apiserver and etcd (skipping
// the test without the envtest binaries), stopped and removed at cleanup,
// with namespace ns created; it returns a client of it and its config.
func startSecondAPIServer(ctx context.Context, t *testing.T, ns string) (client.Client, *rest.Config) {
	assets, why := testenv.EnvtestAssets("dlbt-controller-second-")
	if why != "" {
		t.Skip("a second apiserver needs the envtest binaries: " + why)
	}
	t.Cleanup(func() { os.RemoveAll(assets) })
	env2 := &envtest.Environment{BinaryAssetsDirectory: assets}
	rc2, err := env2.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env2.Stop() })
	c2, err := client.New(rc2, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := c2.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
		t.Fatal(err)
	}
	return c2, rc2
}

// ownedBy returns a cluster's load balancers and the targets of its groups.
func ownedBy(ctx context.Context, check *cloudaws.Client, cluster string) ([]string, []string, error) {
	owner := cloud.Tags{cloud.TagCluster: cluster}
	lbs, err := check.ListLoadBalancers(ctx, owner)
	if err != nil {
		return nil, nil, err
	}
	tgs, err := check.ListTargetGroups(ctx, owner)
	if err != nil {
		return nil, nil, err
	}
	var names, targets []string
	for _, lb := range lbs {
		names = append(names, lb.Name+" "+lb.Tags[cloud.TagService])
	}
	for _, tg := range tgs {
		th, err := check.DescribeTargetHealth(ctx, tg.ARN)
		if err != nil {
			return nil, nil, err
		}
		for _, x := range th {
			targets = append(targets, x.Target.String())
		}
	}
	return names, targets, nil
}

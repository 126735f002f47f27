package tests

// The node agent's ENI routing (issue 7), the way a user sees it: with the
// VPC's source/destination check on, pods on a node's secondary ENI cannot
// answer the load balancer (or any VPC peer) until the agent routes their
// traffic out through the ENI that owns their address; restarting the agent
// keeps it working; --cleanup leaves no rule or route behind. The pod
// addresses go through localcloud's EC2 API (directlb-cni assigns and
// unassigns them) and the agents learn ENIs and ownership from it.

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/directlb/directlb/e2e/framework"
	"github.com/directlb/directlb/e2e/testbed"
	"github.com/directlb/directlb/internal/namedns"
	"github.com/directlb/directlb/pkg/cloud"
	cloudaws "github.com/directlb/directlb/pkg/cloud/aws"
	"github.com/directlb/directlb/pkg/eni"
	"github.com/directlb/directlb/pkg/service"
)

// eniOwned counts the ENI rules and routes (pkg/eni owns them) in a node's
// namespace.
func eniOwned(t *testing.T, n testbed.Node) (rules, routes int) {
	t.Helper()
	ns, err := namedns.Open(n.NetNS)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	rs, err := h.RuleList(netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		if r.Priority == eni.PriorityToPod || r.Priority == eni.PriorityFromPod {
			rules++
		}
	}
	rts, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: 0, Protocol: eni.RouteProtocol}, netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		t.Fatal(err)
	}
	return rules, len(rts)
}

// eniReplicas is the size of TestENIRouting's echo Deployment.
const eniReplicas = 6

// eniRun is what the steps of TestENIRouting share.
type eniRun struct {
	b    *framework.Bed
	ctx  context.Context
	ns   string
	lc   *cloudaws.Client
	key  string // the Service's namespace/name
	lbIP string
	// pods are the echo pods; primary and secondary those on the nodes'
	// primary and secondary ENIs.
	pods, primary, secondary []corev1.Pod
	as                       *framework.Agents
}

func TestENIRouting(t *testing.T) {
	b := requireCloud(t)
	ctx := t.Context()
	for _, n := range b.Topology.Nodes {
		if r, rt := eniOwned(t, n); r+rt != 0 {
			t.Fatalf("%s has %d ENI rules and %d ENI routes before the test", n.Name, r, rt)
		}
	}
	ns := framework.Namespace(t, b, "e2e-eni")
	framework.StartController(t, b)
	lc := framework.Cloud(t, b)
	framework.DeleteServices(t, b, ns) // while the controller runs: nothing left for the next test
	r := &eniRun{b: b, ctx: ctx, ns: ns, lc: lc, key: ns + "/echo"}
	eniEchoTargets(t, r)
	eniPodsOnBothENIs(t, r)

	// directlb-cni assigns every pod address in localcloud's EC2 API to the
	// ENI it wires the pod on (AssignPrivateIpAddresses), as VPC CNI's IPAM
	// does.
	framework.Poll(t, 30*time.Second, "EC2 lists each pod's address on its ENI", func(ctx context.Context) (bool, string) {
		missing := eniCloudMismatch(ctx, b, lc, r.pods)
		return len(missing) == 0, strings.Join(missing, "; ")
	})

	eniCheckDropsSecondary(t, r)
	eniRoutingServesEveryPod(t, r)
	eniNoSNAT(t, r)
	eniFromSecondaryPod(t, r)
	eniRestartKeepsRoutes(t, r)
	eniCleanupLeavesNothing(t, r)
	eniPodsGoUnassigned(t, r)
}

// eniEchoTargets creates the echo Deployment and its direct-access Service
// and waits for the EXTERNAL-IP and for the pods as the cloud's targets.
func eniEchoTargets(t *testing.T, r *eniRun) {
	b, ns, ctx := r.b, r.ns, r.ctx
	labels := map[string]string{"app": "echo"}
	if _, err := b.Client.AppsV1().Deployments(ns).Create(ctx, framework.EchoDeployment(ns, eniReplicas, labels, nil), metav1.CreateOptions{}); err != nil {
		t.Fatalf("create deployment: %v", err)
	}
	svc := framework.DirectAccessService(ns, "echo", labels, map[string]string{service.AnnotationDeregistrationDelay: "2"})
	if _, err := b.Client.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create service: %v", err)
	}
	r.lbIP = framework.WaitExternalIP(t, b, ns, "echo", 30*time.Second)
	var want []string
	framework.Poll(t, 120*time.Second, "pods ready", func(ctx context.Context) (bool, string) {
		var n int
		var state string
		want, n, state = framework.PodTargets(ctx, b, ns)
		return len(want) == eniReplicas && n == eniReplicas, state
	})
	framework.Poll(t, 30*time.Second, "targets = the pods", func(ctx context.Context) (bool, string) {
		_, got, states := framework.Targets(ctx, r.lc, r.key)
		return cmp.Equal(want, got), fmt.Sprintf("want %v, cloud has %s", want, states)
	})
}

// eniPodsOnBothENIs sorts the echo pods by ENI and wants some on each.
func eniPodsOnBothENIs(t *testing.T, r *eniRun) {
	pods, state := framework.ReadyPods(r.ctx, r.b, r.ns, "app=echo")
	r.pods = pods
	var primary, secondary []corev1.Pod
	for _, p := range pods {
		switch framework.PodENI(r.b.Topology, p.Spec.NodeName, p.Status.PodIP) {
		case 0:
			primary = append(primary, p)
		case 1:
			secondary = append(secondary, p)
		}
	}
	r.primary, r.secondary = primary, secondary
	if len(primary) == 0 || len(secondary) == 0 {
		t.Fatalf("want pods on both ENIs; %d on ENI 0, %d on ENI 1: %s", len(primary), len(secondary), state)
	}
	t.Logf("%d pods on primary ENIs, %d on secondary ENIs", len(primary), len(secondary))
}

// eniHealthy counts the targets the load balancer finds healthy.
func eniHealthy(ctx context.Context, r *eniRun) (int, string) {
	tg, _, states := framework.Targets(ctx, r.lc, r.key)
	th, err := r.lc.DescribeTargetHealth(ctx, tg.ARN)
	if err != nil {
		return 0, err.Error()
	}
	n := 0
	for _, h := range th {
		if h.State == cloud.TargetHealthy {
			n++
		}
	}
	return n, states
}

// eniReach returns the pods that answered a direct request from the host
// (a VPC peer on its own port, like the load balancer).
func eniReach(ps []corev1.Pod) (ok, failed []string) {
	for _, p := range ps {
		code, body, err := framework.HTTPGet("http://" + p.Status.PodIP + ":8080/")
		if err == nil && code == 200 && strings.TrimSpace(body) == p.Name {
			ok = append(ok, p.Name)
		} else {
			failed = append(failed, fmt.Sprintf("%s (%s): %v %d", p.Name, p.Status.PodIP, err, code))
		}
	}
	return ok, failed
}

// eniThroughLB sends n requests through the load balancer at lbIP and
// returns the failures and the answers per pod.
func eniThroughLB(lbIP string, n int) (int, map[string]int) {
	seen := map[string]int{}
	failed := 0
	for range n {
		code, body, err := framework.HTTPGet("http://" + lbIP + ":80/")
		if err != nil || code != 200 {
			failed++
			continue
		}
		seen[strings.TrimSpace(body)]++
	}
	return failed, seen
}

// eniCheckDropsSecondary turns the check on: pods on secondary ENIs answer
// through eth0, which the VPC drops; the load balancer finds them
// unhealthy.
func eniCheckDropsSecondary(t *testing.T, r *eniRun) {
	b := r.b
	if err := testbed.SetSourceDestCheck(r.ctx, b.Topology, true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := testbed.SetSourceDestCheck(cctx, b.Topology, b.Topology.SourceDestCheck); err != nil {
			t.Errorf("restore the source/destination check: %v", err)
		}
	})
	if ok, failed := eniReach(r.primary); len(failed) > 0 {
		t.Fatalf("with the check on, pods on primary ENIs must answer; %v answered, failed: %v", ok, failed)
	}
	if ok, _ := eniReach(r.secondary); len(ok) > 0 {
		t.Fatalf("with the check on and no ENI routing, pods on secondary ENIs answered: %v (the check is not real)", ok)
	}
	framework.Poll(t, 60*time.Second, "targets on secondary ENIs unhealthy", func(ctx context.Context) (bool, string) {
		n, states := eniHealthy(ctx, r)
		return n == len(r.primary), states
	})
}

// eniRoutingServesEveryPod turns ENI routing on: every pod answers,
// directly and through the load balancer. The agents learn the ENIs and
// which addresses each holds from localcloud's EC2 API (no fallback to
// links: --eni-source=ec2 fails the agent if EC2 does not answer).
func eniRoutingServesEveryPod(t *testing.T, r *eniRun) {
	t.Setenv("AWS_ACCESS_KEY_ID", framework.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", framework.SecretKey)
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	r.as = framework.StartAgents(t, r.b, "--eni-routing", "--eni-source=ec2", "--aws-endpoint="+r.b.Topology.LocalcloudURL, "--eni-resync=2s")
	framework.Poll(t, 30*time.Second, "pods on secondary ENIs answer", func(context.Context) (bool, string) {
		_, failed := eniReach(r.secondary)
		return len(failed) == 0, strings.Join(failed, "; ")
	})
	framework.Poll(t, 60*time.Second, "every target healthy", func(ctx context.Context) (bool, string) {
		n, states := eniHealthy(ctx, r)
		return n == eniReplicas, states
	})
	if failed, seen := eniThroughLB(r.lbIP, 120); failed > 0 || len(seen) != eniReplicas {
		t.Fatalf("120 requests through the load balancer with ENI routing: %d failed, answers %v; want 0 failed and all %d pods", failed, seen, eniReplicas)
	}
}

// eniNoSNAT: no SNAT anywhere on the path: a pod on a secondary ENI sees
// the host's VPC address on a direct request, and the load balancer's own
// VPC address (localcloud connects to targets from it, as an NLB without
// client IP preservation does) through the load balancer.
func eniNoSNAT(t *testing.T, r *eniRun) {
	b := r.b
	for _, p := range r.secondary {
		if _, body, err := framework.HTTPGet("http://" + p.Status.PodIP + ":8080/client"); err != nil || strings.TrimSpace(body) != b.Topology.HostAddr.String() {
			t.Errorf("pod %s (%s) saw the host's request come from %q (err %v), want %s", p.Name, p.Status.PodIP, strings.TrimSpace(body), err, b.Topology.HostAddr)
		}
	}
	lbSources := map[string]int{}
	for range 2 * eniReplicas {
		_, body, err := framework.HTTPGet("http://" + r.lbIP + ":80/client")
		if err != nil {
			lbSources["error: "+err.Error()]++
			continue
		}
		lbSources[strings.TrimSpace(body)]++
	}
	if want := b.Topology.CloudAddr.String(); len(lbSources) != 1 || lbSources[want] == 0 {
		t.Errorf("sources the pods saw through the load balancer: %v, want only %s", lbSources, want)
	}
}

// eniFromSecondaryPod: from a pod on a secondary ENI, every pod (same node
// and other nodes, either ENI) answers and sees the pod's own address, and
// the Service's ClusterIP answers.
func eniFromSecondaryPod(t *testing.T, r *eniRun) {
	secondary := r.secondary
	src := framework.PodSandbox(t, r.b, &secondary[0])
	for _, p := range r.pods {
		if got := p2(src.CurlN(t, "http://"+p.Status.PodIP+":8080/", 2)); got != p.Name+","+p.Name {
			t.Errorf("pod %s (secondary ENI) to pod %s (%s on %s): %s", secondary[0].Name, p.Name, p.Status.PodIP, p.Spec.NodeName, got)
		}
		if got := p2(src.CurlN(t, "http://"+p.Status.PodIP+":8080/client", 1)); got != secondary[0].Status.PodIP {
			t.Errorf("pod %s saw pod %s's request come from %q, want %s", p.Name, secondary[0].Name, got, secondary[0].Status.PodIP)
		}
	}
	cs, err := r.b.Client.CoreV1().Services(r.ns).Get(r.ctx, "echo", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	answers := src.CurlN(t, "http://"+cs.Spec.ClusterIP+":80/", 12)
	for _, a := range answers {
		if strings.HasPrefix(a, "ERR") || a == "" {
			t.Errorf("pod %s to ClusterIP %s: %v", secondary[0].Name, cs.Spec.ClusterIP, answers)
			break
		}
	}
}

// eniRestartKeepsRoutes: the routes stay while the agents are down and
// after they restart.
func eniRestartKeepsRoutes(t *testing.T, r *eniRun) {
	b, as := r.b, r.as
	before := map[string][2]int{}
	for _, n := range b.Topology.Nodes {
		rules, routes := eniOwned(t, n)
		before[n.Name] = [2]int{rules, routes}
	}

	for _, a := range as.List {
		as.Stop(a)
	}
	if failed, seen := eniThroughLB(r.lbIP, 60); failed > 0 || len(seen) != eniReplicas {
		t.Errorf("60 requests with the agents stopped: %d failed, answers %v", failed, seen)
	}
	for _, a := range as.List {
		as.Start(a)
	}
	if failed, seen := eniThroughLB(r.lbIP, 60); failed > 0 || len(seen) != eniReplicas {
		t.Errorf("60 requests after the agents restarted: %d failed, answers %v", failed, seen)
	}
	for _, n := range b.Topology.Nodes {
		rules, routes := eniOwned(t, n)
		if got := [2]int{rules, routes}; got != before[n.Name] {
			t.Errorf("%s: ENI rules and routes %v after restart, %v before", n.Name, got, before[n.Name])
		}
	}
}

// eniCleanupLeavesNothing: --cleanup leaves nothing behind, and the check
// bites again.
func eniCleanupLeavesNothing(t *testing.T, r *eniRun) {
	as := r.as
	for _, a := range as.List {
		as.Stop(a)
		if err := as.Cleanup(a); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range r.b.Topology.Nodes {
		if rules, routes := eniOwned(t, n); rules+routes != 0 {
			t.Errorf("%s: %d ENI rules and %d ENI routes left after --cleanup", n.Name, rules, routes)
		}
	}
	if ok, _ := eniReach(r.secondary); len(ok) > 0 {
		t.Errorf("after --cleanup pods on secondary ENIs still answered: %v", ok)
	}
}

// eniPodsGoUnassigned: the pods go, and directlb-cni unassigns their
// addresses (the bed's warmIPTarget is 0).
func eniPodsGoUnassigned(t *testing.T, r *eniRun) {
	b := r.b
	if err := b.Client.AppsV1().Deployments(r.ns).Delete(r.ctx, "echo", metav1.DeleteOptions{}); err != nil {
		t.Fatalf("delete deployment: %v", err)
	}
	framework.Poll(t, 60*time.Second, "EC2 no longer lists the pods' addresses", func(ctx context.Context) (bool, string) {
		held, err := eniCloudAddrs(ctx, b, r.lc)
		if err != nil {
			return false, err.Error()
		}
		var still []string
		for _, p := range r.pods {
			if eni, ok := held[p.Status.PodIP]; ok {
				still = append(still, p.Status.PodIP+" on "+eni)
			}
		}
		return len(still) == 0, strings.Join(still, "; ")
	})
}

// eniCloudAddrs maps every secondary address localcloud's EC2 API lists
// on the nodes' ENIs to its ENI ID.
func eniCloudAddrs(ctx context.Context, b *framework.Bed, c cloud.NetworkInterfaces) (map[string]string, error) {
	out := map[string]string{}
	for _, n := range b.Topology.Nodes {
		nis, err := c.InstanceNetworkInterfaces(ctx, n.Name)
		if err != nil {
			return nil, err
		}
		for _, ni := range nis {
			for _, ip := range ni.SecondaryIPs {
				out[ip.String()] = ni.ID
			}
		}
	}
	return out, nil
}

// eniCloudMismatch returns the pods whose address EC2 does not list on the
// ENI whose pod range holds it.
func eniCloudMismatch(ctx context.Context, b *framework.Bed, c cloud.NetworkInterfaces, pods []corev1.Pod) []string {
	held, err := eniCloudAddrs(ctx, b, c)
	if err != nil {
		return []string{err.Error()}
	}
	var out []string
	for _, p := range pods {
		n, _ := b.Topology.Node(p.Spec.NodeName)
		i := framework.PodENI(b.Topology, p.Spec.NodeName, p.Status.PodIP)
		if n == nil || i < 0 {
			out = append(out, fmt.Sprintf("%s (%s): no ENI in the topology", p.Name, p.Status.PodIP))
			continue
		}
		if got := held[p.Status.PodIP]; got != n.ENIs[i].ID {
			out = append(out, fmt.Sprintf("%s (%s): EC2 has it on %q, want %s", p.Name, p.Status.PodIP, got, n.ENIs[i].ID))
		}
	}
	return out
}

// p2 joins two curl answers.
func p2(a []string) string { return strings.Join(a, ",") }

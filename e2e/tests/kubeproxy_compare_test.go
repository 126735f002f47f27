package tests

// node-agent side by side with the real kube-proxy on the same Services:
// node-agent on node-1 (its socket hooks on node-1's cgroup), the pinned
// kube-proxy in nftables mode on node-3 (rules in node-3's network
// namespace, started as --kube-proxy does), node-2 with neither. From each
// of those two nodes a process of the node itself (its network namespace,
// the kubelet's cgroup) and a pod on it run the same client; for each row
// the outcome under node-agent must equal the outcome under kube-proxy
// (and the one the row expects). Both are logged.

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/directlb/directlb/e2e/framework"
	"github.com/directlb/directlb/e2e/testbed"
	"github.com/directlb/directlb/internal/namedns"
)

// kpcStartKubeProxy starts kube-proxy on node n for the test and stops it
// (its nftables tables removed) at the end.
func kpcStartKubeProxy(t *testing.T, b *framework.Bed, n testbed.Node) *testbed.KubeProxy {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	kp, err := testbed.StartKubeProxy(ctx, b.Topology, b.BinDir, n)
	if err != nil {
		t.Fatalf("start kube-proxy on %s: %v", n.Name, err)
	}
	t.Cleanup(func() {
		if err := kp.Stop(); err != nil {
			t.Error(err)
		}
		if t.Failed() {
			t.Logf("kube-proxy %s log (%s):\n%s", n.Name, kp.Log, framework.Tail(kp.Log))
		}
	})
	return kp
}

// kpcSide is one datapath's node and its two clients.
type kpcSide struct {
	name string // node-agent, kube-proxy
	node testbed.Node
	host framework.Sandbox // the node's own process
	pod  framework.Sandbox
}

// kpcObservation is one client's outcome in one row.
type kpcObservation struct {
	outcome, detail string
}

// kpcCompare runs observe from every client of both sides, logs all four,
// and fails unless, for the host and for the pod client, node-agent's
// outcome equals kube-proxy's and both equal want.
func kpcCompare(t *testing.T, sides [2]kpcSide, want string, observe func(t *testing.T, where framework.Sandbox) kpcObservation) {
	t.Helper()
	got := map[string]kpcObservation{}
	for _, s := range sides {
		for _, c := range []struct {
			kind  string
			where framework.Sandbox
		}{{"host", s.host}, {"pod", s.pod}} {
			o := observe(t, c.where)
			got[s.name+" "+c.kind] = o
			t.Logf("%-10s %-4s on %s: %s (%s)", s.name, c.kind, s.node.Name, o.outcome, o.detail)
		}
	}
	for _, kind := range []string{"host", "pod"} {
		na, kp := got[sides[0].name+" "+kind], got[sides[1].name+" "+kind]
		if na.outcome != kp.outcome {
			t.Errorf("%s client: %s %q, %s %q: the datapaths disagree", kind, sides[0].name, na.outcome, sides[1].name, kp.outcome)
		}
		for _, s := range sides {
			if o := got[s.name+" "+kind]; o.outcome != want {
				t.Errorf("%s client under %s: %q, want %q", kind, s.name, o.outcome, want)
			}
		}
	}
}

// kpcSettle polls observe (every 500 ms, up to bound) until it gives want,
// and returns the last observation: a datapath that is slow to apply a
// change gets the time, one that never gets there reports what it did.
func kpcSettle(t *testing.T, bound time.Duration, want string, observe func(t *testing.T, where framework.Sandbox) kpcObservation) func(t *testing.T, where framework.Sandbox) kpcObservation {
	return func(t *testing.T, where framework.Sandbox) kpcObservation {
		deadline := time.Now().Add(bound)
		for {
			o := observe(t, where)
			if o.outcome == want || time.Now().After(deadline) {
				return o
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
}

// kpcWaitProgrammed waits until both datapaths hold the frontend
// cip:port/proto: node-agent's /debug/services lists it, and kube-proxy's
// nftables table in its node's namespace has the ClusterIP.
func kpcWaitProgrammed(t *testing.T, agent *framework.Agent, kpNode testbed.Node, cip string, port int, proto corev1.Protocol) {
	t.Helper()
	fe := fmt.Sprintf("%s:%d/%s", cip, port, proto)
	framework.Poll(t, 30*time.Second, "node-agent programs "+fe, func(context.Context) (bool, string) {
		lines, err := skTableLines(agent)
		if err != nil {
			return false, err.Error()
		}
		for _, l := range lines {
			if strings.HasPrefix(l, fe+" ") {
				t.Logf("node-agent /debug/services: %s", l)
				return true, ""
			}
		}
		return false, strings.Join(lines, "\n")
	})
	framework.Poll(t, 30*time.Second, "kube-proxy on "+kpNode.Name+" programs "+cip, func(ctx context.Context) (bool, string) {
		out, err := exec.CommandContext(ctx, "nsenter", "--net="+namedns.Path(kpNode.NetNS), "--", "nft", "list", "table", "ip", "kube-proxy").CombinedOutput()
		return err == nil && strings.Contains(string(out), cip+" . "+strings.ToLower(string(proto))+" . "+fmt.Sprint(port)), fmt.Sprintf("%v: %d bytes of ruleset", err, len(out))
	})
}

// kpcGet makes n GETs (a new connection each) from where; the outcome is
// the sorted set of what answered.
func kpcGet(url string, n int) func(t *testing.T, where framework.Sandbox) kpcObservation {
	return func(t *testing.T, where framework.Sandbox) kpcObservation {
		var res skGetResult
		if err := skRun(t.Context(), where, time.Duration(n)*3*time.Second+30*time.Second, &res, "tcp-get", url, fmt.Sprint(n)); err != nil {
			return kpcObservation{outcome: "client failed", detail: err.Error()}
		}
		var keys []string
		for k := range res.Answers {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		return kpcObservation{outcome: strings.Join(keys, ","), detail: fmt.Sprintf("%d GETs: %v %v", n, res.Answers, res.Errors)}
	}
}

func kpcEchoPod(ns, name, node string, labels map[string]string, preStop int64) *corev1.Pod {
	c := framework.EchoContainer()
	grace := int64(1)
	if preStop > 0 {
		c.Lifecycle = &corev1.Lifecycle{PreStop: &corev1.LifecycleHandler{Sleep: &corev1.SleepAction{Seconds: preStop}}}
		grace = preStop + 30
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels},
		Spec:       corev1.PodSpec{NodeName: node, Containers: []corev1.Container{c}, TerminationGracePeriodSeconds: ptr.To(grace)},
	}
}

// TestKubeProxyComparison: the same Services under node-agent (node-1)
// and kube-proxy nftables (node-3), from the node's own process and from
// a pod on it; per row node-agent's outcome must equal kube-proxy's:
//
//   - sessionAffinity ClientIP over UDP: 20,000 exchanges from 64
//     goroutines of one client (a new connected socket every 10
//     exchanges), 3 pods: 1 pod, 0 switches;
//   - internalTrafficPolicy Local with the only endpoint on node-2: the
//     connect times out (dropped), not refused;
//   - a Service without selector and a manual EndpointSlice whose only
//     usable endpoint is ready=false, terminating=true, serving unset
//     (nil means true), next to one with serving=false: the first is
//     served as the terminating fallback, the second never;
//   - publishNotReadyAddresses with 2 of 3 pods terminating (in a 120 s
//     preStop): all 3 are reached.
func TestKubeProxyComparison(t *testing.T) {
	b := requireBed(t)
	skNeedAgent(t, b)
	if _, err := os.Stat(filepath.Join(b.BinDir, "kube-proxy")); err != nil {
		t.Skipf("kube-proxy not built in %s (make tools): %v", b.BinDir, err)
	}
	nodes := b.Topology.Nodes
	agentNode, kpNode := nodes[0], nodes[2]
	skNoSocketHooks(t, agentNode)
	skNoSocketHooks(t, kpNode)
	ns := framework.Namespace(t, b, fmt.Sprintf("e2e-kpcompare-%d", time.Now().Unix()%100000))
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Minute)
	defer cancel()

	_, agent := skStartAgent(t, b, agentNode)
	kpcStartKubeProxy(t, b, kpNode)
	t.Logf("node-agent on %s (cgroup %s), kube-proxy nftables on %s (netns %s), neither on %s", agentNode.Name, agentNode.Cgroup, kpNode.Name, kpNode.NetNS, nodes[1].Name)

	r := &kpcRun{b: b, ns: ns, ctx: ctx, nodes: nodes, agent: agent, kpNode: kpNode}
	kpcCreatePods(t, r)
	r.sides = [2]kpcSide{
		{name: "node-agent", node: agentNode, host: skHost(agentNode), pod: skClientPod(t, b, ns, "client-agent", agentNode.Name)},
		{name: "kube-proxy", node: kpNode, host: skHost(kpNode), pod: skClientPod(t, b, ns, "client-kube-proxy", kpNode.Name)},
	}
	kpcPodsReady(t, r)

	t.Run("sessionAffinity ClientIP over UDP", func(t *testing.T) { kpcAffinityOverUDP(t, r) })
	t.Run("internalTrafficPolicy Local without a local endpoint", func(t *testing.T) { kpcLocalWithoutEndpoint(t, r) })
	t.Run("manual EndpointSlice: not ready, terminating, serving unset", func(t *testing.T) { kpcManualSlice(t, r) })
	t.Run("publishNotReadyAddresses with 2 of 3 pods terminating", func(t *testing.T) { kpcPublishNotReady(t, r) })
}

// kpcRun is what the steps of TestKubeProxyComparison share.
type kpcRun struct {
	b      *framework.Bed
	ns     string
	ctx    context.Context
	nodes  []testbed.Node
	agent  *framework.Agent
	kpNode testbed.Node
	sides  [2]kpcSide
	pods   map[string]corev1.Pod // the Ready echo and pna pods by name
}

// kpcCreatePods creates echo-<i> on node-<i>; pna-<i>
// (publishNotReadyAddresses row) with a 120 s preStop, force-deleted at the
// end.
func kpcCreatePods(t *testing.T, r *kpcRun) {
	b, ns := r.b, r.ns
	for i, n := range r.nodes[:3] {
		framework.CreatePod(t, b, kpcEchoPod(ns, fmt.Sprintf("echo-%d", i+1), n.Name, map[string]string{"app": "echo", "node": n.Name}, 0))
		framework.CreatePod(t, b, kpcEchoPod(ns, fmt.Sprintf("pna-%d", i+1), n.Name, map[string]string{"app": "pna"}, 120))
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = b.Client.CoreV1().Pods(ns).DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: ptr.To(int64(0))}, metav1.ListOptions{LabelSelector: "app=pna"})
	})
}

// kpcPodsReady waits for the 6 echo and pna pods.
func kpcPodsReady(t *testing.T, r *kpcRun) {
	pods := map[string]corev1.Pod{}
	r.pods = pods
	framework.Poll(t, 90*time.Second, "echo and pna pods Ready", func(ctx context.Context) (bool, string) {
		var state []string
		for _, sel := range []string{"app=echo", "app=pna"} {
			ready, s := framework.ReadyPods(ctx, r.b, r.ns, sel)
			for _, p := range ready {
				pods[p.Name] = p
			}
			state = append(state, s)
		}
		return len(pods) == 6, strings.Join(state, "; ")
	})
}

func kpcAffinityOverUDP(t *testing.T, r *kpcRun) {
	ns := r.ns
	svc, err := r.b.Client.CoreV1().Services(ns).Create(r.ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "affinity", Namespace: ns},
		Spec: corev1.ServiceSpec{
			Selector:              map[string]string{"app": "echo"},
			Ports:                 []corev1.ServicePort{{Name: "udp", Port: 53, Protocol: corev1.ProtocolUDP, TargetPort: intstr.FromInt32(9090)}},
			SessionAffinity:       corev1.ServiceAffinityClientIP,
			SessionAffinityConfig: &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: ptr.To(int32(300))}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	kpcWaitProgrammed(t, r.agent, r.kpNode, svc.Spec.ClusterIP, 53, corev1.ProtocolUDP)
	addr := net.JoinHostPort(svc.Spec.ClusterIP, "53")
	kpcCompare(t, r.sides, "1 pod, 0 switches", func(t *testing.T, where framework.Sandbox) kpcObservation {
		var res skAffinityResult
		if err := skRun(t.Context(), where, 3*time.Minute, &res, "udp-affinity", addr, "20000", "64", "10", "120"); err != nil {
			return kpcObservation{outcome: "client failed", detail: err.Error()}
		}
		pl := "pods"
		if len(res.Answers) == 1 {
			pl = "pod"
		}
		if res.Failed > 20 || res.Exchanges < 20000 {
			t.Errorf("%s: %d of %d exchanges failed (%v), want all 20000 done and at most 20 failed", where.NetNS, res.Failed, res.Exchanges, res.Errors)
		}
		return kpcObservation{
			outcome: fmt.Sprintf("%d %s, %d switches", len(res.Answers), pl, res.Switches),
			detail:  fmt.Sprintf("%v; %d exchanges on %d sockets in %d ms, %d failed %v", res.Answers, res.Exchanges, res.Sockets, res.Ms, res.Failed, res.Errors),
		}
	})
}

func kpcLocalWithoutEndpoint(t *testing.T, r *kpcRun) {
	b, ns, nodes := r.b, r.ns, r.nodes
	svc, err := b.Client.CoreV1().Services(ns).Create(r.ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "local", Namespace: ns},
		Spec: corev1.ServiceSpec{
			Selector:              map[string]string{"app": "echo", "node": nodes[1].Name},
			Ports:                 []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}},
			InternalTrafficPolicy: ptr.To(corev1.ServiceInternalTrafficPolicyLocal),
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	framework.Poll(t, 30*time.Second, "local's endpoint (echo-2 on "+nodes[1].Name+")", func(ctx context.Context) (bool, string) {
		eps, err := framework.Endpoints(ctx, b, ns, "local")
		return err == nil && len(eps) == 1 && eps[r.pods["echo-2"].Status.PodIP], fmt.Sprint(eps, err)
	})
	kpcWaitProgrammed(t, r.agent, r.kpNode, svc.Spec.ClusterIP, 80, corev1.ProtocolTCP)
	addr := net.JoinHostPort(svc.Spec.ClusterIP, "80")
	kpcCompare(t, r.sides, "timeout", kpcSettle(t, 20*time.Second, "timeout", func(t *testing.T, where framework.Sandbox) kpcObservation {
		var res skDialResult
		if err := skRun(t.Context(), where, 30*time.Second, &res, "dial", addr, "3000"); err != nil {
			return kpcObservation{outcome: "client failed", detail: err.Error()}
		}
		return kpcObservation{outcome: res.Outcome, detail: fmt.Sprintf("after %d ms: %s", res.Ms, res.Detail)}
	}))
}

func kpcManualSlice(t *testing.T, r *kpcRun) {
	b, ns, ctx, pods := r.b, r.ns, r.ctx, r.pods
	svc, err := b.Client.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "manual", Namespace: ns},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	slice, err := b.Client.DiscoveryV1().EndpointSlices(ns).Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: "manual-1", Namespace: ns, Labels: map[string]string{
			discoveryv1.LabelServiceName: "manual",
			discoveryv1.LabelManagedBy:   "e2e.directlb.io",
		}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To(int32(8080)), Protocol: ptr.To(corev1.ProtocolTCP)}},
		Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{pods["echo-1"].Status.PodIP}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(false), Terminating: ptr.To(true)}},
			{Addresses: []string{pods["echo-2"].Status.PodIP}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(false), Serving: ptr.To(false), Terminating: ptr.To(true)}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if c := slice.Endpoints[0].Conditions; c.Serving != nil {
		t.Fatalf("the apiserver stored serving=%v for the endpoint created without it: the row would not test a nil serving", *c.Serving)
	}
	kpcWaitProgrammed(t, r.agent, r.kpNode, svc.Spec.ClusterIP, 80, corev1.ProtocolTCP)
	url := "http://" + svc.Spec.ClusterIP + "/"
	kpcCompare(t, r.sides, "echo-1", kpcSettle(t, 20*time.Second, "echo-1", kpcGet(url, 20)))
}

func kpcPublishNotReady(t *testing.T, r *kpcRun) {
	b, ns, ctx := r.b, r.ns, r.ctx
	svc, err := b.Client.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "pna", Namespace: ns},
		Spec: corev1.ServiceSpec{
			Selector:                 map[string]string{"app": "pna"},
			Ports:                    []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}},
			PublishNotReadyAddresses: true,
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	kpcWaitProgrammed(t, r.agent, r.kpNode, svc.Spec.ClusterIP, 80, corev1.ProtocolTCP)
	for _, name := range []string{"pna-2", "pna-3"} {
		if err := b.Client.CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	framework.Poll(t, 30*time.Second, "pna's EndpointSlice: 3 ready, 2 of them terminating", func(ctx context.Context) (bool, string) {
		slices, err := framework.EndpointSlices(ctx, b, ns, "pna")
		if err != nil {
			return false, err.Error()
		}
		var ready, term int
		var state []string
		for _, s := range slices {
			for _, e := range s.Endpoints {
				c := e.Conditions
				if c.Ready == nil || *c.Ready {
					ready++
				}
				if c.Terminating != nil && *c.Terminating {
					term++
				}
				state = append(state, fmt.Sprintf("%v ready=%v serving=%v terminating=%v", e.Addresses, ptrString(c.Ready), ptrString(c.Serving), ptrString(c.Terminating)))
			}
		}
		return ready == 3 && term == 2, strings.Join(state, "; ")
	})
	// Both datapaths get the slice's update (kube-proxy syncs at most
	// once a second) before the requests count.
	time.Sleep(3 * time.Second)
	url := "http://" + svc.Spec.ClusterIP + "/"
	want := "pna-1,pna-2,pna-3"
	// 45 GETs miss one of 3 pods with chance 3·(2/3)^45 ≈ 3·10^-8.
	kpcCompare(t, r.sides, want, kpcSettle(t, 20*time.Second, want, kpcGet(url, 45)))
}

func ptrString(b *bool) string {
	if b == nil {
		return "nil"
	}
	return fmt.Sprint(*b)
}

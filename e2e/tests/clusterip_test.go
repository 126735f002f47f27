package tests

// ClusterIP load balancing by the node agent, the way a user sees it: one
// node-agent per node (in the node's network namespace, attached to the
// node's cgroup subtree), a Deployment spread over the nodes, and a client
// pod that curls the Service's ClusterIP.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/directlb/directlb/e2e/framework"
)

func cipScale(t *testing.T, b *framework.Bed, ns, name string, n int32) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	patch := fmt.Sprintf(`{"spec":{"replicas":%d}}`, n)
	if _, err := b.Client.AppsV1().Deployments(ns).Patch(ctx, name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatalf("scale %s to %d: %v", name, n, err)
	}
}

// cipRun is what the steps of TestClusterIP share.
type cipRun struct {
	b        *framework.Bed
	ns       string
	ctx      context.Context
	agents   *framework.Agents
	cip      string
	httpURL  string
	client   framework.Sandbox
	backends []corev1.Pod
}

func TestClusterIP(t *testing.T) {
	b := requireBed(t)
	if len(b.Topology.Nodes) < 3 {
		t.Skipf("needs 3 nodes, the test bed has %d", len(b.Topology.Nodes))
	}
	if _, err := os.Stat(filepath.Join(b.BinDir, "node-agent")); err != nil {
		t.Skipf("node-agent not built in %s (make build): %v", b.BinDir, err)
	}
	ns := framework.Namespace(t, b, fmt.Sprintf("e2e-clusterip-%d", time.Now().Unix()%100000))
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()

	r := &cipRun{b: b, ns: ns, ctx: ctx, agents: framework.StartAgents(t, b)}
	cipEchoService(t, r)
	cipClientPod(t, r)
	cipBackendsOnAllNodes(t, r)

	t.Run("spreads over backends on all nodes", func(t *testing.T) { cipSpreadsOverBackends(t, r) })
	t.Run("UDP echo", func(t *testing.T) { cipUDPEcho(t, r) })
	t.Run("session affinity ClientIP sticks", func(t *testing.T) { cipSessionAffinitySticks(t, r) })
	t.Run("restart during continuous requests loses none", func(t *testing.T) { cipRestartLosesNone(t, r) })
	t.Run("terminating-only endpoints still serve", func(t *testing.T) { cipTerminatingOnlyServe(t, r) })
	t.Run("scale to zero refuses at once", func(t *testing.T) { cipScaleToZeroRefuses(t, r) })
	t.Run("cleanup leaves nothing", func(t *testing.T) { cipCleanupLeavesNothing(t, r) })
}

// cipEchoService creates the echo Deployment (3 replicas) and its Service
// with an HTTP and a UDP port.
func cipEchoService(t *testing.T, r *cipRun) {
	b, ns, ctx := r.b, r.ns, r.ctx
	labels := map[string]string{"app": "echo"}
	if _, err := b.Client.AppsV1().Deployments(ns).Create(ctx, framework.EchoDeployment(ns, 3, labels, nil), metav1.CreateOptions{}); err != nil {
		t.Fatalf("create deployment: %v", err)
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "echo", Namespace: ns},
		Spec: corev1.ServiceSpec{
			Selector: labels,
			Ports: []corev1.ServicePort{
				{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)},
				{Name: "udp", Port: 53, Protocol: corev1.ProtocolUDP, TargetPort: intstr.FromInt32(9090)},
			},
		},
	}
	svc, err := b.Client.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create service: %v", err)
	}
	r.cip = svc.Spec.ClusterIP
	r.httpURL = "http://" + r.cip + "/"
}

// cipClientPod starts the client: a pod of its own (the echo image, for a
// sandbox).
func cipClientPod(t *testing.T, r *cipRun) {
	framework.CreatePod(t, r.b, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "client", Namespace: r.ns},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{framework.EchoContainer()}, TerminationGracePeriodSeconds: ptr.To(int64(1))},
	})
	clientPod := framework.WaitPod(t, r.b, r.ns, "client", 90*time.Second, "Ready", framework.Ready)
	r.client = framework.PodSandbox(t, r.b, clientPod)
}

// cipBackendsOnAllNodes waits for the 3 echo pods, one on each node.
func cipBackendsOnAllNodes(t *testing.T, r *cipRun) {
	var backends []corev1.Pod
	framework.Poll(t, 90*time.Second, "3 echo pods Ready", func(ctx context.Context) (bool, string) {
		var state string
		backends, state = framework.ReadyPods(ctx, r.b, r.ns, "app=echo")
		return len(backends) == 3, state
	})
	r.backends = backends
	nodes := map[string]bool{}
	for _, p := range backends {
		nodes[p.Spec.NodeName] = true
	}
	if len(nodes) != 3 {
		t.Fatalf("echo pods on %v, want all 3 nodes", nodes)
	}
}

func cipSpreadsOverBackends(t *testing.T, r *cipRun) {
	var got map[string]int
	framework.Poll(t, 30*time.Second, "curl "+r.httpURL+" reaches all 3 pods", func(context.Context) (bool, string) {
		got = framework.Count(r.client.CurlN(t, r.httpURL, 45))
		for _, p := range r.backends {
			if got[p.Name] == 0 {
				return false, fmt.Sprint(got)
			}
		}
		return len(got) == 3, fmt.Sprint(got)
	})
	t.Logf("45 requests to %s: %v", r.httpURL, got)
}

func cipUDPEcho(t *testing.T, r *cipRun) {
	client, cip := r.client, r.cip
	names := map[string]bool{}
	for _, p := range r.backends {
		names[p.Name] = true
	}
	// bash's read takes a byte at a time, which would throw the rest
	// of the datagram away; dd reads the whole datagram at once.
	script := fmt.Sprintf(`exec 3<>/dev/udp/%s/53 && printf ping >&3 && timeout 2 dd bs=1500 count=1 status=none <&3 | head -n 1`, cip)
	framework.Poll(t, 20*time.Second, "UDP echo through "+cip+":53", func(ctx context.Context) (bool, string) {
		out, err := client.Sh(ctx, script)
		return err == nil && names[strings.TrimSpace(out)], fmt.Sprintf("%q %v", out, err)
	})
	// Each new socket picks a backend: 15 queries, all answered, by
	// more than one pod.
	out, err := client.Sh(r.ctx, fmt.Sprintf(`for i in $(seq 15); do (%s) || echo ERR; done`, script))
	if err != nil {
		t.Fatalf("UDP loop: %v: %s", err, out)
	}
	got := framework.Count(strings.Split(strings.TrimSpace(out), "\n"))
	for name := range got {
		if !names[name] {
			t.Errorf("UDP answers %v: %q is not an echo pod", got, name)
		}
	}
	if len(got) < 2 {
		t.Errorf("15 UDP queries all went to %v, want them spread", got)
	}
}

func cipSessionAffinitySticks(t *testing.T, r *cipRun) {
	b, ns, ctx, client, httpURL := r.b, r.ns, r.ctx, r.client, r.httpURL
	patch := `{"spec":{"sessionAffinity":"ClientIP","sessionAffinityConfig":{"clientIP":{"timeoutSeconds":300}}}}`
	if _, err := b.Client.CoreV1().Services(ns).Patch(ctx, "echo", types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	// 20 answers from one pod in a row is chance 3·3^-20 without
	// affinity; with it, every round must stick.
	framework.Poll(t, 20*time.Second, "20 requests in a row to one pod", func(context.Context) (bool, string) {
		got := framework.Count(client.CurlN(t, httpURL, 20))
		return len(got) == 1, fmt.Sprint(got)
	})
	first := framework.Count(client.CurlN(t, httpURL, 10))
	second := framework.Count(client.CurlN(t, httpURL, 10))
	if len(first) != 1 || fmt.Sprint(first) != fmt.Sprint(second) {
		t.Errorf("affinity did not stick: %v then %v", first, second)
	}
	patch = `{"spec":{"sessionAffinity":"None","sessionAffinityConfig":null}}`
	if _, err := b.Client.CoreV1().Services(ns).Patch(ctx, "echo", types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	framework.Poll(t, 20*time.Second, "spreading again without affinity", func(context.Context) (bool, string) {
		got := framework.Count(client.CurlN(t, httpURL, 20))
		return len(got) > 1, fmt.Sprint(got)
	})
}

func cipRestartLosesNone(t *testing.T, r *cipRun) {
	agents := r.agents
	// 60 s of requests from the pod, at most 1,200, each bounded by
	// 2 s; every agent is restarted twice meanwhile.
	script := fmt.Sprintf(`n=0; f=0; end=$((SECONDS+60)); while [ $SECONDS -lt $end ] && [ $n -lt 1200 ]; do curl -s -m 2 -o /dev/null %s || { f=$((f+1)); echo "fail at ${SECONDS}s: $?" >&2; }; n=$((n+1)); sleep 0.05; done; echo "$n $f"`, r.httpURL)
	rctx, rcancel := context.WithTimeout(r.ctx, 90*time.Second)
	defer rcancel()
	var out string
	var runErr error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		out, runErr = r.client.Sh(rctx, script)
	}()
	for round := range 2 {
		time.Sleep(10 * time.Second)
		for _, a := range agents.List {
			agents.Stop(a)
			time.Sleep(time.Second) // the node runs without an agent for a while
			agents.Start(a)
		}
		t.Logf("round %d: all agents restarted", round+1)
	}
	wg.Wait()
	if runErr != nil {
		t.Fatalf("request loop: %v: %s", runErr, out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	f := strings.Fields(lines[len(lines)-1])
	if len(f) != 2 {
		t.Fatalf("request loop printed %q", out)
	}
	n, _ := strconv.Atoi(f[0])
	failed, _ := strconv.Atoi(f[1])
	// At least one request a second over the 60 s, so that every
	// restart window had traffic; a loaded 2-core machine manages
	// 150-400 curl runs in that time.
	if n < 60 || failed != 0 {
		t.Errorf("%d requests, %d failed, during agent restarts; want at least 60 and none failed:\n%s", n, failed, out)
	}
	t.Logf("%d requests during 6 agent restarts, %d failed", n, failed)
}

func cipTerminatingOnlyServe(t *testing.T, r *cipRun) {
	b, ns, ctx, client := r.b, r.ns, r.ctx, r.client
	tl := map[string]string{"app": "slow"}
	hook := &corev1.LifecycleHandler{Sleep: &corev1.SleepAction{Seconds: 20}}
	if _, err := b.Client.AppsV1().Deployments(ns).Create(ctx, framework.EchoDeployment(ns, 2, tl, hook), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	tsvc, err := b.Client.CoreV1().Services(ns).Create(ctx, framework.Service(ns, "slow", tl), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	turl := "http://" + tsvc.Spec.ClusterIP + "/"
	framework.Poll(t, 90*time.Second, "2 slow pods Ready", func(ctx context.Context) (bool, string) {
		ready, state := framework.ReadyPods(ctx, b, ns, "app=slow")
		return len(ready) == 2, state
	})
	framework.Poll(t, 20*time.Second, "slow Service answers", func(context.Context) (bool, string) {
		got := framework.Count(client.CurlN(t, turl, 4))
		return len(got) >= 1 && !strings.HasPrefix(fmt.Sprint(got), "map[ERR"), fmt.Sprint(got)
	})
	cipScale(t, b, ns, "slow", 0)
	framework.Poll(t, 15*time.Second, "every endpoint serving and terminating", func(ctx context.Context) (bool, string) {
		slices, err := framework.EndpointSlices(ctx, b, ns, "slow")
		if err != nil {
			return false, err.Error()
		}
		var n, term int
		for _, s := range slices {
			for _, e := range s.Endpoints {
				n++
				if cipTerminatingServing(e) {
					term++
				}
			}
		}
		return n == 2 && term == 2, fmt.Sprintf("%d endpoints, %d serving+terminating", n, term)
	})
	answers := client.CurlN(t, turl, 10)
	for _, a := range answers {
		if strings.HasPrefix(a, "ERR") || !strings.HasPrefix(a, "slow-") {
			t.Fatalf("with only terminating endpoints: %v, want every request answered", answers)
		}
	}
}

func cipScaleToZeroRefuses(t *testing.T, r *cipRun) {
	b, ns, client, httpURL := r.b, r.ns, r.client, r.httpURL
	cipScale(t, b, ns, "echo", 0)
	framework.Poll(t, 60*time.Second, "no echo endpoints left", func(ctx context.Context) (bool, string) {
		eps, err := framework.Endpoints(ctx, b, ns, "echo")
		return err == nil && len(eps) == 0, fmt.Sprintf("%v %v", eps, err)
	})
	script := fmt.Sprintf(`s=$(date +%%s%%N); curl -s -m 5 -o /dev/null %s; rc=$?; e=$(date +%%s%%N); echo "$rc $(( (e-s)/1000000 ))"`, httpURL)
	framework.Poll(t, 15*time.Second, "connection refused at once", func(ctx context.Context) (bool, string) {
		out, _ := client.Sh(ctx, script)
		f := strings.Fields(out)
		if len(f) != 2 {
			return false, out
		}
		ms, _ := strconv.Atoi(f[1])
		// curl exit 7: failed to connect (refused), not 28 (timeout).
		return f[0] == "7" && ms < 500, fmt.Sprintf("curl exit %s after %s ms", f[0], f[1])
	})
	cipScale(t, b, ns, "echo", 3)
	framework.Poll(t, 90*time.Second, "serving again after scaling back", func(context.Context) (bool, string) {
		got := framework.Count(client.CurlN(t, httpURL, 6))
		for k := range got {
			if strings.HasPrefix(k, "ERR") {
				return false, fmt.Sprint(got)
			}
		}
		return true, fmt.Sprint(got)
	})
}

func cipCleanupLeavesNothing(t *testing.T, r *cipRun) {
	agents := r.agents
	for _, a := range agents.List {
		agents.Stop(a)
		if err := agents.Cleanup(a); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(a.BPFRoot); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: %s still there after --cleanup (%v)", a.Node.Name, a.BPFRoot, err)
		}
		out, err := exec.Command("bpftool", "cgroup", "show", a.Node.Cgroup).CombinedOutput()
		if err != nil {
			t.Errorf("bpftool cgroup show %s: %v: %s", a.Node.Cgroup, err, out)
		} else if strings.TrimSpace(string(out)) != "" {
			t.Errorf("%s: programs still attached after --cleanup:\n%s", a.Node.Name, out)
		}
	}
	// With no agent the ClusterIP is not translated any more.
	answers := r.client.CurlN(t, r.httpURL, 1)
	if !strings.HasPrefix(answers[0], "ERR") {
		t.Errorf("after --cleanup %s still answered %q", r.httpURL, answers[0])
	}
}

func cipTerminatingServing(e discoveryv1.Endpoint) bool {
	c := e.Conditions
	return c.Terminating != nil && *c.Terminating && c.Serving != nil && *c.Serving
}

package tests

// The bed's nodes (kubelet, containerd, directlb-cni), seen the way a user
// sees a cluster: Deployments and Services work, pods have their own VPC
// addresses from both ENIs, readiness probes and readiness gates decide
// Ready, and deletion is graceful.

import (
	"context"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"

	"github.com/directlb/directlb/e2e/framework"
	"github.com/directlb/directlb/e2e/testbed"
	"github.com/directlb/directlb/internal/namedns"
)

// ptSandboxLeft reports what is left of a pod's sandbox on its node: its
// pod cgroup (under the kubelet's cgroupRoot) and the host route
// directlb-cni made to its address.
func ptSandboxLeft(topo *testbed.Topology, node string, uid types.UID, ip string) []string {
	var left []string
	n, ok := topo.Node(node)
	if !ok {
		return []string{"no node " + node}
	}
	// Without the kubelet's tree nothing could be found: not "clean".
	if _, err := os.Stat(filepath.Join(n.Cgroup, "kubepods")); err != nil {
		return []string{"no kubepods cgroup: " + err.Error()}
	}
	_ = filepath.WalkDir(filepath.Join(n.Cgroup, "kubepods"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() && d.Name() == "pod"+string(uid) {
			left = append(left, "cgroup "+p)
		}
		return nil
	})
	if ip != "" {
		out, _ := exec.Command("ip", "-n", n.NetNS, "-4", "route", "show", ip+"/32").CombinedOutput()
		if r := strings.TrimSpace(string(out)); r != "" {
			left = append(left, "route "+r)
		}
	}
	return left
}

// A 3-replica Deployment behind a ClusterIP Service: the pods run and get
// Ready spread over the nodes with addresses from both ENIs' pod ranges, each
// answers its own name on its VPC address, the EndpointSlice lists them
// ready, and a deleted pod is replaced while its sandbox disappears.
func TestPodsDeploymentAndService(t *testing.T) {
	b := requireBed(t)
	if len(b.Topology.Nodes) < 3 {
		t.Skipf("needs 3 nodes, the test bed has %d", len(b.Topology.Nodes))
	}
	ns := framework.Namespace(t, b, "e2e-pods-deploy")
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	labels := map[string]string{"app": "echo"}
	dep := framework.EchoDeployment(ns, 3, labels, nil)
	dep.Spec.Template.Spec.TerminationGracePeriodSeconds = ptr.To(int64(5))
	if _, err := b.Client.AppsV1().Deployments(ns).Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create deployment: %v", err)
	}
	if _, err := b.Client.CoreV1().Services(ns).Create(ctx, framework.Service(ns, "echo", labels), metav1.CreateOptions{}); err != nil {
		t.Fatalf("create service: %v", err)
	}

	var pods []corev1.Pod
	framework.Poll(t, 90*time.Second, "3 pods Running and Ready", func(ctx context.Context) (bool, string) {
		var state string
		pods, state = ptReadyEchoPods(ctx, b, ns)
		return len(pods) == 3, state
	})
	ptSpreadOverNodesAndENIs(t, b, pods)
	ips := ptAnswerOwnNames(t, pods)
	ptSliceListsReady(t, b, ns, ips)
	ptDeletedPodReplaced(t, b, ctx, ns, pods[0])
}

// ptReadyEchoPods returns the Ready echo pods in ns, and every echo pod's
// state.
func ptReadyEchoPods(ctx context.Context, b *framework.Bed, ns string) ([]corev1.Pod, string) {
	l, err := b.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=echo"})
	if err != nil {
		return nil, err.Error()
	}
	var ready []corev1.Pod
	var states []string
	for _, p := range l.Items {
		states = append(states, fmt.Sprintf("%s %s ready=%s ip=%s", p.Name, p.Status.Phase, framework.Condition(&p, corev1.PodReady), p.Status.PodIP))
		if framework.Ready(&p) {
			ready = append(ready, p)
		}
	}
	return ready, strings.Join(states, "; ")
}

// ptSpreadOverNodesAndENIs: the pods run on the 3 nodes, with addresses
// from both ENIs' pod ranges and the primary ENI's address as hostIP.
func ptSpreadOverNodesAndENIs(t *testing.T, b *framework.Bed, pods []corev1.Pod) {
	nodes := map[string]bool{}
	enis := map[int]bool{}
	for _, p := range pods {
		nodes[p.Spec.NodeName] = true
		eni := framework.PodENI(b.Topology, p.Spec.NodeName, p.Status.PodIP)
		if eni < 0 {
			t.Errorf("pod %s on %s has %s, in none of the node's ENI pod ranges", p.Name, p.Spec.NodeName, p.Status.PodIP)
		}
		enis[eni] = true
		n, _ := b.Topology.Node(p.Spec.NodeName)
		if want := n.ENIs[0].Addr.Addr().String(); p.Status.HostIP != want {
			t.Errorf("pod %s hostIP %s, want the primary ENI's %s", p.Name, p.Status.HostIP, want)
		}
	}
	if len(nodes) != 3 {
		t.Errorf("pods on %d nodes (%v), want 3", len(nodes), nodes)
	}
	if !enis[0] || !enis[1] {
		t.Errorf("pod addresses come from ENIs %v, want both 0 and 1", enis)
	}
}

// ptAnswerOwnNames: each pod answers its own name on its VPC address, over
// HTTP and UDP. It returns the pods' addresses, sorted.
func ptAnswerOwnNames(t *testing.T, pods []corev1.Pod) []string {
	var ips []string
	for _, p := range pods {
		ips = append(ips, p.Status.PodIP)
		code, body, err := framework.HTTPGet("http://" + net.JoinHostPort(p.Status.PodIP, "8080") + "/")
		if err != nil || code != 200 || body != p.Name+"\n" {
			t.Errorf("GET %s:8080/ = %d %q %v, want 200 %q", p.Status.PodIP, code, body, err, p.Name+"\n")
		}
		if got, err := framework.UDP(p.Status.PodIP+":9090", "ping"); err != nil || got != p.Name+"\nping" {
			t.Errorf("UDP %s:9090 = %q %v, want %q", p.Status.PodIP, got, err, p.Name+"\nping")
		}
	}
	slices.Sort(ips)
	return ips
}

// ptSliceListsReady: the EndpointSlice controller sees the 3 pod addresses
// as ready.
func ptSliceListsReady(t *testing.T, b *framework.Bed, ns string, ips []string) {
	framework.Poll(t, 30*time.Second, "EndpointSlice lists the 3 pod IPs ready", func(ctx context.Context) (bool, string) {
		eps, err := framework.Endpoints(ctx, b, ns, "echo")
		if err != nil {
			return false, err.Error()
		}
		var ready []string
		for a, r := range eps {
			if r {
				ready = append(ready, a)
			}
		}
		slices.Sort(ready)
		return slices.Equal(ready, ips) && len(eps) == 3, fmt.Sprintf("%v", eps)
	})
}

// ptDeletedPodReplaced deletes the victim pod: the ReplicaSet replaces it,
// its sandbox goes away.
func ptDeletedPodReplaced(t *testing.T, b *framework.Bed, ctx context.Context, ns string, victim corev1.Pod) {
	if err := b.Client.CoreV1().Pods(ns).Delete(ctx, victim.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatalf("delete pod %s: %v", victim.Name, err)
	}
	framework.Poll(t, 60*time.Second, "deleted pod gone and replaced by a new Ready pod", func(ctx context.Context) (bool, string) {
		_, err := b.Client.CoreV1().Pods(ns).Get(ctx, victim.Name, metav1.GetOptions{})
		gone := apierrors.IsNotFound(err)
		ready, state := ptReadyEchoPods(ctx, b, ns)
		replaced := len(ready) == 3 && !slices.ContainsFunc(ready, func(p corev1.Pod) bool { return p.UID == victim.UID })
		return gone && replaced, fmt.Sprintf("old pod gone=%v; %s", gone, state)
	})
	// Its cgroup goes (its address may already be the replacement's).
	framework.Poll(t, 15*time.Second, "old pod's cgroup removed", func(context.Context) (bool, string) {
		left := ptSandboxLeft(b.Topology, victim.Spec.NodeName, victim.UID, "")
		return len(left) == 0, strings.Join(left, ", ")
	})
	if code, _, err := framework.HTTPGet("http://" + net.JoinHostPort(victim.Status.PodIP, "8080") + "/"); err == nil {
		// The address may already belong to the replacement on the same node.
		if now, _ := ptReadyEchoPods(ctx, b, ns); !slices.ContainsFunc(now, func(p corev1.Pod) bool { return p.Status.PodIP == victim.Status.PodIP }) {
			t.Errorf("deleted pod's address %s still answers (%d)", victim.Status.PodIP, code)
		}
	}
}

// A pod with a readiness gate stays not Ready although its containers are
// ready, until the gate's condition is set True.
func TestPodReadinessGate(t *testing.T) {
	b := requireBed(t)
	ns := framework.Namespace(t, b, "e2e-pods-gate")
	gate := corev1.PodConditionType("target-health.directlb.io/e2e")
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "gated", Namespace: ns},
		Spec: corev1.PodSpec{
			Containers:     []corev1.Container{framework.EchoContainer()},
			ReadinessGates: []corev1.PodReadinessGate{{ConditionType: gate}},
		},
	}
	framework.CreatePod(t, b, pod)
	p := framework.WaitPod(t, b, ns, "gated", 60*time.Second, "containers ready", func(p *corev1.Pod) bool {
		return framework.Condition(p, corev1.ContainersReady) == corev1.ConditionTrue
	})
	if framework.Condition(p, corev1.PodReady) != corev1.ConditionFalse {
		t.Fatalf("Ready = %q with the gate condition missing, want False", framework.Condition(p, corev1.PodReady))
	}
	// It stays not Ready while nobody sets the gate.
	time.Sleep(3 * time.Second)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	p, err := b.Client.CoreV1().Pods(ns).Get(ctx, "gated", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if framework.Condition(p, corev1.PodReady) != corev1.ConditionFalse {
		t.Fatalf("Ready = %q 3 s later without the gate, want False", framework.Condition(p, corev1.PodReady))
	}

	// Set the gate False first (Ready stays False), then True.
	for _, st := range []corev1.ConditionStatus{corev1.ConditionFalse, corev1.ConditionTrue} {
		patch := fmt.Sprintf(`{"status":{"conditions":[{"type":%q,"status":%q,"reason":"E2E","lastTransitionTime":%q}]}}`,
			gate, st, time.Now().UTC().Format(time.RFC3339))
		if _, err := b.Client.CoreV1().Pods(ns).Patch(ctx, "gated", types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}, "status"); err != nil {
			t.Fatalf("set gate %s: %v", st, err)
		}
		if st == corev1.ConditionFalse {
			time.Sleep(2 * time.Second)
			p, err := b.Client.CoreV1().Pods(ns).Get(ctx, "gated", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if framework.Condition(p, corev1.PodReady) != corev1.ConditionFalse {
				t.Fatalf("Ready = %q with the gate False, want False", framework.Condition(p, corev1.PodReady))
			}
		}
	}
	p = framework.WaitPod(t, b, ns, "gated", 30*time.Second, "Ready after the gate is True", framework.Ready)
	if framework.Condition(p, gate) != corev1.ConditionTrue {
		t.Errorf("the gate condition written by the test was lost: %v", p.Status.Conditions)
	}
}

// A pod whose preStop hook sleeps 3 s keeps answering for those 3 s after its
// deletion starts; then it gets SIGTERM, stops, and is deleted. Both preStop
// forms: the native sleep action and an exec of sleep.
func TestPodPreStopKeepsServing(t *testing.T) {
	b := requireBed(t)
	ns := framework.Namespace(t, b, "e2e-pods-prestop")
	hooks := map[string]*corev1.LifecycleHandler{
		"sleep-action": {Sleep: &corev1.SleepAction{Seconds: 3}},
		"exec-sleep":   {Exec: &corev1.ExecAction{Command: []string{"sleep", "3"}}},
	}
	for name, hook := range hooks {
		t.Run(name, func(t *testing.T) {
			c := framework.EchoContainer()
			c.Lifecycle = &corev1.Lifecycle{PreStop: hook}
			framework.CreatePod(t, b, &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{c}, TerminationGracePeriodSeconds: ptr.To(int64(20))},
			})
			p := framework.WaitPod(t, b, ns, name, 60*time.Second, "Ready", framework.Ready)
			url := "http://" + net.JoinHostPort(p.Status.PodIP, "8080") + "/"

			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			start := time.Now()
			if err := b.Client.CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
				t.Fatalf("delete: %v", err)
			}
			// Every request in the first 2.5 s (the hook sleeps 3 s) is answered.
			var answered int
			for time.Since(start) < 2500*time.Millisecond {
				code, body, err := framework.HTTPGet(url)
				if err != nil || code != 200 || body != name+"\n" {
					t.Fatalf("%.1fs after deletion started: GET = %d %q %v, want 200 %q", time.Since(start).Seconds(), code, body, err, name+"\n")
				}
				answered++
				time.Sleep(100 * time.Millisecond)
			}
			// After the hook, SIGTERM: the echo server stops, well before the grace period ends.
			var stoppedAfter time.Duration
			framework.Poll(t, 12*time.Second, "pod stops answering after its preStop hook", func(context.Context) (bool, string) {
				_, _, err := framework.HTTPGet(url)
				stoppedAfter = time.Since(start)
				return err != nil, "still answering"
			})
			if stoppedAfter < 3*time.Second {
				t.Errorf("stopped answering %s after deletion started, before the 3 s preStop hook ended", stoppedAfter)
			}
			framework.Poll(t, 15*time.Second, "pod deleted from the apiserver", func(ctx context.Context) (bool, string) {
				_, err := b.Client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
				return apierrors.IsNotFound(err), fmt.Sprintf("get: %v", err)
			})
			if time.Since(start) > 15*time.Second {
				t.Errorf("final delete took %s; the pod exits on SIGTERM at once", time.Since(start))
			}
			t.Logf("answered %d requests during preStop; stopped after %s", answered, stoppedAfter.Round(100*time.Millisecond))
		})
	}
}

// A preStop hook longer than the grace period is cut off: SIGTERM, then
// SIGKILL and the final delete come within terminationGracePeriodSeconds
// (plus the kubelet's 2 s minimum after SIGTERM).
func TestPodGracePeriodBoundsPreStop(t *testing.T) {
	b := requireBed(t)
	ns := framework.Namespace(t, b, "e2e-pods-grace")
	c := framework.EchoContainer()
	c.Lifecycle = &corev1.Lifecycle{PreStop: &corev1.LifecycleHandler{Exec: &corev1.ExecAction{Command: []string{"sh", "-c", "sleep 60"}}}}
	framework.CreatePod(t, b, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "slow", Namespace: ns},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{c}, TerminationGracePeriodSeconds: ptr.To(int64(3))},
	})
	framework.WaitPod(t, b, ns, "slow", 60*time.Second, "Ready", framework.Ready)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	start := time.Now()
	if err := b.Client.CoreV1().Pods(ns).Delete(ctx, "slow", metav1.DeleteOptions{}); err != nil {
		t.Fatalf("delete: %v", err)
	}
	framework.Poll(t, 20*time.Second, "pod deleted", func(ctx context.Context) (bool, string) {
		_, err := b.Client.CoreV1().Pods(ns).Get(ctx, "slow", metav1.GetOptions{})
		return apierrors.IsNotFound(err), fmt.Sprintf("get: %v", err)
	})
	took := time.Since(start)
	if took < 2*time.Second || took > 9*time.Second {
		t.Errorf("deleted after %s; want about the 3 s grace period (2 s..9 s)", took)
	}
}

// A pod failing its readiness probe is Running but not Ready and is listed
// not-ready in the EndpointSlice; when it passes it turns ready there, and
// when it fails again (failureThreshold times) it turns not-ready again.
func TestPodFailingReadinessProbe(t *testing.T) {
	b := requireBed(t)
	ns := framework.Namespace(t, b, "e2e-pods-probe")
	labels := map[string]string{"app": "sick"}
	c := framework.EchoContainer()
	c.ReadinessProbe.FailureThreshold = 2
	c.Env = []corev1.EnvVar{{Name: "ECHO_HEALTH_STATUS", Value: "500"}}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	if _, err := b.Client.CoreV1().Services(ns).Create(ctx, framework.Service(ns, "sick", labels), metav1.CreateOptions{}); err != nil {
		t.Fatalf("create service: %v", err)
	}
	framework.CreatePod(t, b, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "sick", Namespace: ns, Labels: labels},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{c}},
	})
	p := framework.WaitPod(t, b, ns, "sick", 60*time.Second, "Running with an address", func(p *corev1.Pod) bool {
		return p.Status.Phase == corev1.PodRunning && p.Status.PodIP != ""
	})
	ip := p.Status.PodIP
	base := "http://" + net.JoinHostPort(ip, "8080")
	// The server is up (it answers /), but /healthz says 500.
	framework.Poll(t, 20*time.Second, "pod answers /", func(context.Context) (bool, string) {
		code, body, err := framework.HTTPGet(base + "/")
		return err == nil && code == 200 && body == "sick\n", fmt.Sprintf("%d %q %v", code, body, err)
	})
	if code, _, err := framework.HTTPGet(base + "/healthz"); err != nil || code != 500 {
		t.Fatalf("GET /healthz = %d %v, want 500 (ECHO_HEALTH_STATUS)", code, err)
	}
	time.Sleep(3 * time.Second) // three probe periods, all failing
	notReady := func(what string) {
		t.Helper()
		framework.Poll(t, 30*time.Second, "EndpointSlice lists the pod not ready "+what, func(ctx context.Context) (bool, string) {
			eps, err := framework.Endpoints(ctx, b, ns, "sick")
			if err != nil {
				return false, err.Error()
			}
			r, listed := eps[ip]
			return listed && !r, fmt.Sprintf("%v", eps)
		})
		p, err := b.Client.CoreV1().Pods(ns).Get(ctx, "sick", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if framework.Condition(p, corev1.PodReady) != corev1.ConditionFalse || framework.Condition(p, corev1.ContainersReady) != corev1.ConditionFalse {
			t.Errorf("%s: conditions %v, want ContainersReady and Ready False", what, p.Status.Conditions)
		}
		if len(p.Status.ContainerStatuses) != 1 || p.Status.ContainerStatuses[0].Ready || p.Status.ContainerStatuses[0].State.Running == nil {
			t.Errorf("%s: container status %+v, want running and not ready", what, p.Status.ContainerStatuses)
		}
	}
	notReady("while /healthz fails from the start")

	// Make it healthy through the echo server's control: it turns ready.
	if code, _, err := framework.HTTPGet(base + "/control/health?status=200"); err != nil || code != 200 {
		t.Fatalf("set health 200: %d %v", code, err)
	}
	framework.Poll(t, 30*time.Second, "EndpointSlice lists the pod ready", func(ctx context.Context) (bool, string) {
		eps, err := framework.Endpoints(ctx, b, ns, "sick")
		if err != nil {
			return false, err.Error()
		}
		return eps[ip], fmt.Sprintf("%v", eps)
	})
	framework.WaitPod(t, b, ns, "sick", 10*time.Second, "Ready", framework.Ready)

	// And failing again takes it out.
	if code, _, err := framework.HTTPGet(base + "/control/health?status=503"); err != nil || code != 200 {
		t.Fatalf("set health 503: %d %v", code, err)
	}
	notReady("after /healthz starts failing")
}

// ptRestartKubelet kills node's kubelet with SIGKILL (a crash), runs
// during() while it is down, and starts it again as the bed started it.
func ptRestartKubelet(t *testing.T, b *framework.Bed, node string, during func()) {
	t.Helper()
	name := "kubelet-" + node
	if err := testbed.Kill(b.Topology.StateDir, name); err != nil {
		t.Fatal(err)
	}
	during()
	if _, err := testbed.Start(b.Topology.StateDir, name); err != nil {
		t.Fatal(err)
	}
}

// A crashed and restarted kubelet picks its pods up: a running pod keeps
// its container, address and readiness; a pod force-deleted while the
// kubelet was down leaves nothing behind; a pod deleted gracefully while it
// was down is terminated and deleted; a new pod does not get an address in
// use.
func TestKubeletRestartAdoptsPods(t *testing.T) {
	b := requireBed(t)
	node := b.Topology.Nodes[0].Name
	ns := framework.Namespace(t, b, "e2e-pods-restart")
	mk := func(name string) *corev1.Pod {
		return framework.CreatePod(t, b, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
			Spec:       corev1.PodSpec{NodeName: node, Containers: []corev1.Container{framework.EchoContainer()}, TerminationGracePeriodSeconds: ptr.To(int64(10))},
		})
	}
	pods := map[string]*corev1.Pod{}
	for _, name := range []string{"keep", "forced", "graceful"} {
		mk(name)
	}
	for _, name := range []string{"keep", "forced", "graceful"} {
		pods[name] = framework.WaitPod(t, b, ns, name, 60*time.Second, "Ready", framework.Ready)
	}
	keep := pods["keep"]
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	ptRestartKubelet(t, b, node, func() {
		if err := b.Client.CoreV1().Pods(ns).Delete(ctx, "forced", metav1.DeleteOptions{GracePeriodSeconds: ptr.To(int64(0))}); err != nil {
			t.Fatalf("force delete: %v", err)
		}
		if err := b.Client.CoreV1().Pods(ns).Delete(ctx, "graceful", metav1.DeleteOptions{}); err != nil {
			t.Fatalf("delete: %v", err)
		}
		// With no kubelet, nobody finishes the graceful deletion.
		time.Sleep(time.Second)
		if _, err := b.Client.CoreV1().Pods(ns).Get(ctx, "graceful", metav1.GetOptions{}); err != nil {
			t.Fatalf("gracefully deleted pod with its kubelet down: %v, want still there", err)
		}
	})

	for _, name := range []string{"forced", "graceful"} {
		p := pods[name]
		framework.Poll(t, 30*time.Second, name+" pod gone and its sandbox removed", func(ctx context.Context) (bool, string) {
			_, err := b.Client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
			left := ptSandboxLeft(b.Topology, node, p.UID, p.Status.PodIP)
			return apierrors.IsNotFound(err) && len(left) == 0, fmt.Sprintf("get: %v; left: %v", err, left)
		})
	}
	// The running pod was adopted, not restarted.
	time.Sleep(2 * time.Second)
	now := framework.WaitPod(t, b, ns, "keep", 10*time.Second, "Ready", framework.Ready)
	if diff := cmp.Diff(keep.Status.ContainerStatuses[0].ContainerID, now.Status.ContainerStatuses[0].ContainerID); diff != "" || now.Status.ContainerStatuses[0].RestartCount != 0 {
		t.Errorf("adopted container changed (restarts %d; container ID -before +after):\n%s", now.Status.ContainerStatuses[0].RestartCount, diff)
	}
	if now.Status.PodIP != keep.Status.PodIP {
		t.Errorf("adopted pod's address changed: %s → %s", keep.Status.PodIP, now.Status.PodIP)
	}
	if code, body, err := framework.HTTPGet("http://" + net.JoinHostPort(keep.Status.PodIP, "8080") + "/"); err != nil || code != 200 || body != "keep\n" {
		t.Errorf("adopted pod: GET / = %d %q %v", code, body, err)
	}
	// A new pod gets an address nobody holds, and runs.
	mk("fresh")
	fresh := framework.WaitPod(t, b, ns, "fresh", 60*time.Second, "Ready", framework.Ready)
	if fresh.Status.PodIP == keep.Status.PodIP {
		t.Errorf("new pod got the adopted pod's address %s", fresh.Status.PodIP)
	}
	// Deleting the adopted pod stops its adopted container.
	if err := b.Client.CoreV1().Pods(ns).Delete(ctx, "keep", metav1.DeleteOptions{}); err != nil {
		t.Fatalf("delete adopted pod: %v", err)
	}
	framework.Poll(t, 20*time.Second, "adopted pod terminated and deleted", func(ctx context.Context) (bool, string) {
		_, err := b.Client.CoreV1().Pods(ns).Get(ctx, "keep", metav1.GetOptions{})
		left := ptSandboxLeft(b.Topology, node, keep.UID, keep.Status.PodIP)
		return apierrors.IsNotFound(err) && len(left) == 0, fmt.Sprintf("get: %v; left: %v", err, left)
	})
}

// A pod gets its ServiceAccount's token at the usual path (a projected
// volume the kubelet mounts): with the cluster CA next to it, the token
// authenticates as the pod's ServiceAccount at the apiserver's VPC address.
func TestPodServiceAccountToken(t *testing.T) {
	b := requireBed(t)
	ns := framework.Namespace(t, b, "e2e-pods-sa")
	framework.CreatePod(t, b, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "sa", Namespace: ns},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{framework.EchoContainer()}},
	})
	framework.WaitPod(t, b, ns, "sa", 60*time.Second, "Ready", framework.Ready)
	const dir = "/var/run/secrets/kubernetes.io/serviceaccount/"
	token := b.MustKubectl(t, "-n", ns, "exec", "sa", "--", "cat", dir+"token")
	ca := b.MustKubectl(t, "-n", ns, "exec", "sa", "--", "cat", dir+"ca.crt")
	if got := strings.TrimSpace(b.MustKubectl(t, "-n", ns, "exec", "sa", "--", "cat", dir+"namespace")); got != ns {
		t.Errorf("namespace file: %q, want %q", got, ns)
	}
	rc := &rest.Config{Host: b.Topology.APIServer, BearerToken: token, TLSClientConfig: rest.TLSClientConfig{CAData: []byte(ca)}}
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	review, err := cs.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("whoami with the pod's token: %v", err)
	}
	if want := "system:serviceaccount:" + ns + ":default"; review.Status.UserInfo.Username != want {
		t.Errorf("pod authenticates as %q, want %q", review.Status.UserInfo.Username, want)
	}
}

// A hostNetwork pod runs in its node's namespace: its pod IP is the node's
// primary ENI address, it answers there, and deleting it leaves the node's
// network alone.
func TestPodHostNetwork(t *testing.T) {
	b := requireBed(t)
	ns := framework.Namespace(t, b, "e2e-pods-hostnet")
	node := b.Topology.Nodes[len(b.Topology.Nodes)-1]
	c := framework.EchoContainer()
	c.Ports = []corev1.ContainerPort{{Name: "http", ContainerPort: 18080}}
	// In the node's namespace the hostname is the node's: the pod's name
	// comes from the downward API.
	c.Env = []corev1.EnvVar{
		{Name: "ECHO_TCP_PORTS", Value: "18080"},
		{Name: "ECHO_UDP_PORTS", Value: ""},
		{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
	}
	framework.CreatePod(t, b, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "hostnet", Namespace: ns},
		Spec:       corev1.PodSpec{HostNetwork: true, NodeName: node.Name, Containers: []corev1.Container{c}},
	})
	p := framework.WaitPod(t, b, ns, "hostnet", 60*time.Second, "Ready", framework.Ready)
	want := node.ENIs[0].Addr.Addr().String()
	if p.Status.PodIP != want || p.Status.HostIP != want {
		t.Errorf("hostNetwork pod: podIP %s hostIP %s, want both %s", p.Status.PodIP, p.Status.HostIP, want)
	}
	if code, body, err := framework.HTTPGet("http://" + net.JoinHostPort(want, "18080") + "/"); err != nil || code != 200 || body != "hostnet\n" {
		t.Errorf("GET %s:18080/ = %d %q %v", want, code, body, err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if err := b.Client.CoreV1().Pods(ns).Delete(ctx, "hostnet", metav1.DeleteOptions{}); err != nil {
		t.Fatalf("delete: %v", err)
	}
	framework.Poll(t, 20*time.Second, "hostNetwork pod deleted", func(ctx context.Context) (bool, string) {
		_, err := b.Client.CoreV1().Pods(ns).Get(ctx, "hostnet", metav1.GetOptions{})
		return apierrors.IsNotFound(err), fmt.Sprint(err)
	})
	if _, err := os.Stat(namedns.Path(node.NetNS)); err != nil {
		t.Errorf("node namespace after deleting a hostNetwork pod: %v", err)
	}
	if code, _, err := framework.HTTPGet("http://" + net.JoinHostPort(want, "18080") + "/"); err == nil {
		t.Errorf("deleted hostNetwork pod still answers (%d)", code)
	}
}

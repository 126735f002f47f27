package tests

// ClusterIP load balancing by the node agent, the way a user sees it: one
// node-agent per node (in the node's network namespace, attached to the
// node's cgroup subtree), a Deployment spread over the nodes, and a client
// pod that curls the Service's ClusterIP.

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/directlb/directlb/e2e/testbed"
	"github.com/directlb/directlb/internal/namedns"
)

// cipAgent is one node-agent process on one node.
type cipAgent struct {
	node    testbed.Node
	bpfRoot string
	log     string
	cmd     *exec.Cmd
	done    chan error
}

type cipAgents struct {
	t      *testing.T
	b      *Bed
	agents []*cipAgent
	extra  []string // more node-agent flags
}

func cipBPFRoot(node string) string { return filepath.Join(testbed.BPFPinPrefix, node) }

// inCgroup starts cmd in the cgroup dir (before it enters any namespace).
func cipStartInCgroup(cmd *exec.Cmd, cgroup string) error {
	f, err := os.Open(cgroup)
	if err != nil {
		return fmt.Errorf("open cgroup %s: %w", cgroup, err)
	}
	defer f.Close()
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(f.Fd())}
	return cmd.Start()
}

func (as *cipAgents) start(a *cipAgent) {
	as.t.Helper()
	b := as.b
	host := b.Topology.HostAddr.String()
	healthz := a.node.ENIs[0].Addr.Addr().String()
	args := []string{
		"--net=" + namedns.Path(a.node.NetNS), "--",
		filepath.Join(b.BinDir, "node-agent"),
		"--kubeconfig=" + b.Topology.Kubeconfig,
		"--k8s-service-host=" + host, "--k8s-service-port=6443",
		"--hostname-override=" + a.node.Name,
		"--cgroup-root=" + a.node.Cgroup,
		"--bpf-root=" + a.bpfRoot,
		"--cluster-cidr=" + b.Topology.VPC.String(),
		"--metrics-bind-address=" + healthz + ":10249",
		"--healthz-bind-address=" + healthz + ":10256",
	}
	args = append(args, as.extra...)
	logf, err := os.OpenFile(a.log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		as.t.Fatal(err)
	}
	cmd := exec.Command("nsenter", args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// The agents are control-plane-like daemons: not in the node's
	// subtree, so their own connections are never translated, and
	// 'down' kills them with the rest.
	if err := cipStartInCgroup(cmd, b.Topology.ControlPlaneCgroup); err != nil {
		logf.Close()
		as.t.Fatalf("start node-agent on %s: %v", a.node.Name, err)
	}
	logf.Close()
	a.cmd = cmd
	a.done = make(chan error, 1)
	go func() { a.done <- cmd.Wait() }()

	// Ready when /healthz answers 200 (the initial sync is done).
	u := "http://" + healthz + ":10256/healthz"
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case err := <-a.done:
			a.cmd = nil
			as.t.Fatalf("node-agent on %s exited: %v\n%s", a.node.Name, err, cipTail(a.log))
		default:
		}
		if code, body, err := ptGet(u); err == nil && code == http.StatusOK && strings.Contains(body, "lastUpdated") && !strings.Contains(body, `"lastUpdated":"0001-01-01`) {
			return
		}
		if time.Now().After(deadline) {
			as.t.Fatalf("node-agent on %s not healthy within 30s\n%s", a.node.Name, cipTail(a.log))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// stop sends SIGTERM and waits; the pins stay.
func (as *cipAgents) stop(a *cipAgent) {
	as.t.Helper()
	if a.cmd == nil {
		return
	}
	a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-a.done:
		if err != nil {
			as.t.Errorf("node-agent on %s exited with %v after SIGTERM\n%s", a.node.Name, err, cipTail(a.log))
		}
	case <-time.After(10 * time.Second):
		a.cmd.Process.Kill()
		<-a.done
		as.t.Errorf("node-agent on %s did not stop within 10s of SIGTERM", a.node.Name)
	}
	a.cmd = nil
}

func cipTail(path string) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 20 {
		lines = lines[len(lines)-20:]
	}
	return strings.Join(lines, "\n")
}

// cipCleanup runs node-agent --cleanup for a node.
func (as *cipAgents) cleanup(a *cipAgent) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "nsenter", "--net="+namedns.Path(a.node.NetNS), "--",
		filepath.Join(as.b.BinDir, "node-agent"), "--cleanup", "--bpf-root="+a.bpfRoot).CombinedOutput()
	if err != nil {
		return fmt.Errorf("node-agent --cleanup on %s: %w: %s", a.node.Name, err, out)
	}
	return nil
}

func cipStartAgents(t *testing.T, b *Bed, extra ...string) *cipAgents {
	t.Helper()
	as := &cipAgents{t: t, b: b, extra: extra}
	logDir := t.TempDir()
	for _, n := range b.Topology.Nodes {
		a := &cipAgent{node: n, bpfRoot: cipBPFRoot(n.Name), log: filepath.Join(logDir, "node-agent-"+n.Name+".log")}
		as.agents = append(as.agents, a)
		as.start(a)
	}
	t.Cleanup(func() {
		for _, a := range as.agents {
			as.stop(a)
			if err := as.cleanup(a); err != nil {
				t.Error(err)
			}
		}
		if t.Failed() {
			for _, a := range as.agents {
				t.Logf("node-agent %s log:\n%s", a.node.Name, cipTail(a.log))
			}
		}
	})
	return as
}

// cipPod is a pod's sandbox: where to run a command "inside" it.
type cipPod struct {
	netns  string // a path: /proc/<pid>/ns/net of one of its processes
	cgroup string // the pod's cgroup v2 directory
}

// cipSandbox finds the pod's cgroup under its node's kubepods tree (the
// kubelet's pod<uid>) and the network namespace of a process in it.
func cipSandbox(t *testing.T, b *Bed, p *corev1.Pod) cipPod {
	t.Helper()
	n, ok := b.Topology.Node(p.Spec.NodeName)
	if !ok {
		t.Fatalf("pod %s: no node %q", p.Name, p.Spec.NodeName)
	}
	var sb cipPod
	_ = filepath.WalkDir(filepath.Join(n.Cgroup, "kubepods"), func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() || sb.netns != "" {
			return nil
		}
		if d.Name() == "pod"+string(p.UID) {
			sb.cgroup = path
			return nil
		}
		if sb.cgroup == "" || filepath.Dir(path) != sb.cgroup {
			return nil
		}
		procs, _ := os.ReadFile(filepath.Join(path, "cgroup.procs"))
		if f := strings.Fields(string(procs)); len(f) > 0 {
			sb.netns = "/proc/" + f[0] + "/ns/net"
		}
		return nil
	})
	if sb.netns == "" {
		t.Fatalf("no sandbox for pod %s on %s (cgroup %q)", p.Name, p.Spec.NodeName, sb.cgroup)
	}
	return sb
}

// sh runs a bash script in the pod's cgroup and network namespace.
func (p cipPod) sh(ctx context.Context, script string) (string, error) {
	cmd := exec.CommandContext(ctx, "nsenter", "--net="+p.netns, "--", "bash", "-c", script)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cipStartInCgroup(cmd, p.cgroup); err != nil {
		return "", err
	}
	err := cmd.Wait()
	return out.String(), err
}

// curlN makes n requests to url from the pod, one curl each, and returns
// the answers ("ERR<exit code>" for a failed one).
func (p cipPod) curlN(t *testing.T, url string, n int) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Duration(n)*3*time.Second)
	defer cancel()
	script := fmt.Sprintf(`for i in $(seq %d); do r=$(curl -s -m 2 %s) || r="ERR$?"; echo "$r"; done`, n, url)
	out, err := p.sh(ctx, script)
	if err != nil {
		t.Fatalf("curl loop in pod: %v: %s", err, out)
	}
	return strings.Split(strings.TrimSpace(out), "\n")
}

func cipCount(answers []string) map[string]int {
	c := map[string]int{}
	for _, a := range answers {
		c[a]++
	}
	return c
}

func cipEchoDeployment(ns string, replicas int32, labels map[string]string, preStop *corev1.LifecycleHandler) *appsv1.Deployment {
	c := ptEchoContainer()
	if preStop != nil {
		c.Lifecycle = &corev1.Lifecycle{PreStop: preStop}
	}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: labels["app"], Namespace: ns},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(replicas),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					Containers:                    []corev1.Container{c},
					TerminationGracePeriodSeconds: ptr.To(int64(30)),
					TopologySpreadConstraints: []corev1.TopologySpreadConstraint{{
						MaxSkew: 1, TopologyKey: corev1.LabelHostname, WhenUnsatisfiable: corev1.DoNotSchedule,
						LabelSelector: &metav1.LabelSelector{MatchLabels: labels},
					}},
				},
			},
		},
	}
}

func cipScale(t *testing.T, b *Bed, ns, name string, n int32) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	patch := fmt.Sprintf(`{"spec":{"replicas":%d}}`, n)
	if _, err := b.Client.AppsV1().Deployments(ns).Patch(ctx, name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatalf("scale %s to %d: %v", name, n, err)
	}
}

func cipReadyPods(ctx context.Context, b *Bed, ns, selector string) ([]corev1.Pod, string) {
	l, err := b.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		return nil, err.Error()
	}
	var ready []corev1.Pod
	var states []string
	for _, p := range l.Items {
		states = append(states, fmt.Sprintf("%s on %s ready=%v", p.Name, p.Spec.NodeName, ptReady(&p)))
		if ptReady(&p) {
			ready = append(ready, p)
		}
	}
	return ready, strings.Join(states, "; ")
}

func TestClusterIP(t *testing.T) {
	b := requireBed(t)
	if len(b.Topology.Nodes) < 3 {
		t.Skipf("needs 3 nodes, the test bed has %d", len(b.Topology.Nodes))
	}
	if _, err := os.Stat(filepath.Join(b.BinDir, "node-agent")); err != nil {
		t.Skipf("node-agent not built in %s (make build): %v", b.BinDir, err)
	}
	ns := ptNamespace(t, b, fmt.Sprintf("e2e-clusterip-%d", time.Now().Unix()%100000))
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()

	agents := cipStartAgents(t, b)

	labels := map[string]string{"app": "echo"}
	if _, err := b.Client.AppsV1().Deployments(ns).Create(ctx, cipEchoDeployment(ns, 3, labels, nil), metav1.CreateOptions{}); err != nil {
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
	cip := svc.Spec.ClusterIP
	httpURL := "http://" + cip + "/"

	// The client: a pod of its own (the echo image, for a sandbox).
	ptCreatePod(t, b, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "client", Namespace: ns},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{ptEchoContainer()}, TerminationGracePeriodSeconds: ptr.To(int64(1))},
	})
	clientPod := ptWaitPod(t, b, ns, "client", 90*time.Second, "Ready", ptReady)
	client := cipSandbox(t, b, clientPod)

	var backends []corev1.Pod
	ptPoll(t, 90*time.Second, "3 echo pods Ready", func(ctx context.Context) (bool, string) {
		var state string
		backends, state = cipReadyPods(ctx, b, ns, "app=echo")
		return len(backends) == 3, state
	})
	nodes := map[string]bool{}
	for _, p := range backends {
		nodes[p.Spec.NodeName] = true
	}
	if len(nodes) != 3 {
		t.Fatalf("echo pods on %v, want all 3 nodes", nodes)
	}

	t.Run("spreads over backends on all nodes", func(t *testing.T) {
		var got map[string]int
		ptPoll(t, 30*time.Second, "curl "+httpURL+" reaches all 3 pods", func(context.Context) (bool, string) {
			got = cipCount(client.curlN(t, httpURL, 45))
			for _, p := range backends {
				if got[p.Name] == 0 {
					return false, fmt.Sprint(got)
				}
			}
			return len(got) == 3, fmt.Sprint(got)
		})
		t.Logf("45 requests to %s: %v", httpURL, got)
	})

	t.Run("UDP echo", func(t *testing.T) {
		names := map[string]bool{}
		for _, p := range backends {
			names[p.Name] = true
		}
		// bash's read takes a byte at a time, which would throw the rest
		// of the datagram away; dd reads the whole datagram at once.
		script := fmt.Sprintf(`exec 3<>/dev/udp/%s/53 && printf ping >&3 && timeout 2 dd bs=1500 count=1 status=none <&3 | head -n 1`, cip)
		ptPoll(t, 20*time.Second, "UDP echo through "+cip+":53", func(ctx context.Context) (bool, string) {
			out, err := client.sh(ctx, script)
			return err == nil && names[strings.TrimSpace(out)], fmt.Sprintf("%q %v", out, err)
		})
		// Each new socket picks a backend: 15 queries, all answered, by
		// more than one pod.
		out, err := client.sh(ctx, fmt.Sprintf(`for i in $(seq 15); do (%s) || echo ERR; done`, script))
		if err != nil {
			t.Fatalf("UDP loop: %v: %s", err, out)
		}
		got := cipCount(strings.Split(strings.TrimSpace(out), "\n"))
		for name := range got {
			if !names[name] {
				t.Errorf("UDP answers %v: %q is not an echo pod", got, name)
			}
		}
		if len(got) < 2 {
			t.Errorf("15 UDP queries all went to %v, want them spread", got)
		}
	})

	t.Run("session affinity ClientIP sticks", func(t *testing.T) {
		patch := `{"spec":{"sessionAffinity":"ClientIP","sessionAffinityConfig":{"clientIP":{"timeoutSeconds":300}}}}`
		if _, err := b.Client.CoreV1().Services(ns).Patch(ctx, "echo", types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
		// 20 answers from one pod in a row is chance 3·3^-20 without
		// affinity; with it, every round must stick.
		ptPoll(t, 20*time.Second, "20 requests in a row to one pod", func(context.Context) (bool, string) {
			got := cipCount(client.curlN(t, httpURL, 20))
			return len(got) == 1, fmt.Sprint(got)
		})
		first := cipCount(client.curlN(t, httpURL, 10))
		second := cipCount(client.curlN(t, httpURL, 10))
		if len(first) != 1 || fmt.Sprint(first) != fmt.Sprint(second) {
			t.Errorf("affinity did not stick: %v then %v", first, second)
		}
		patch = `{"spec":{"sessionAffinity":"None","sessionAffinityConfig":null}}`
		if _, err := b.Client.CoreV1().Services(ns).Patch(ctx, "echo", types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
		ptPoll(t, 20*time.Second, "spreading again without affinity", func(context.Context) (bool, string) {
			got := cipCount(client.curlN(t, httpURL, 20))
			return len(got) > 1, fmt.Sprint(got)
		})
	})

	t.Run("restart during continuous requests loses none", func(t *testing.T) {
		// 60 s of requests from the pod, at most 1,200, each bounded by
		// 2 s; every agent is restarted twice meanwhile.
		script := fmt.Sprintf(`n=0; f=0; end=$((SECONDS+60)); while [ $SECONDS -lt $end ] && [ $n -lt 1200 ]; do curl -s -m 2 -o /dev/null %s || { f=$((f+1)); echo "fail at ${SECONDS}s: $?" >&2; }; n=$((n+1)); sleep 0.05; done; echo "$n $f"`, httpURL)
		rctx, rcancel := context.WithTimeout(ctx, 90*time.Second)
		defer rcancel()
		var out string
		var runErr error
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, runErr = client.sh(rctx, script)
		}()
		for round := range 2 {
			time.Sleep(10 * time.Second)
			for _, a := range agents.agents {
				agents.stop(a)
				time.Sleep(time.Second) // the node runs without an agent for a while
				agents.start(a)
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
	})

	t.Run("terminating-only endpoints still serve", func(t *testing.T) {
		tl := map[string]string{"app": "slow"}
		hook := &corev1.LifecycleHandler{Sleep: &corev1.SleepAction{Seconds: 20}}
		if _, err := b.Client.AppsV1().Deployments(ns).Create(ctx, cipEchoDeployment(ns, 2, tl, hook), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		tsvc, err := b.Client.CoreV1().Services(ns).Create(ctx, ptService(ns, "slow", tl), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		turl := "http://" + tsvc.Spec.ClusterIP + "/"
		ptPoll(t, 90*time.Second, "2 slow pods Ready", func(ctx context.Context) (bool, string) {
			ready, state := cipReadyPods(ctx, b, ns, "app=slow")
			return len(ready) == 2, state
		})
		ptPoll(t, 20*time.Second, "slow Service answers", func(context.Context) (bool, string) {
			got := cipCount(client.curlN(t, turl, 4))
			return len(got) >= 1 && !strings.HasPrefix(fmt.Sprint(got), "map[ERR"), fmt.Sprint(got)
		})
		cipScale(t, b, ns, "slow", 0)
		ptPoll(t, 15*time.Second, "every endpoint serving and terminating", func(ctx context.Context) (bool, string) {
			slices, err := ptSlicesOf(ctx, b, ns, "slow")
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
		answers := client.curlN(t, turl, 10)
		for _, a := range answers {
			if strings.HasPrefix(a, "ERR") || !strings.HasPrefix(a, "slow-") {
				t.Fatalf("with only terminating endpoints: %v, want every request answered", answers)
			}
		}
	})

	t.Run("scale to zero refuses at once", func(t *testing.T) {
		cipScale(t, b, ns, "echo", 0)
		ptPoll(t, 60*time.Second, "no echo endpoints left", func(ctx context.Context) (bool, string) {
			eps, err := ptEndpoints(ctx, b, ns, "echo")
			return err == nil && len(eps) == 0, fmt.Sprintf("%v %v", eps, err)
		})
		script := fmt.Sprintf(`s=$(date +%%s%%N); curl -s -m 5 -o /dev/null %s; rc=$?; e=$(date +%%s%%N); echo "$rc $(( (e-s)/1000000 ))"`, httpURL)
		ptPoll(t, 15*time.Second, "connection refused at once", func(ctx context.Context) (bool, string) {
			out, _ := client.sh(ctx, script)
			f := strings.Fields(out)
			if len(f) != 2 {
				return false, out
			}
			ms, _ := strconv.Atoi(f[1])
			// curl exit 7: failed to connect (refused), not 28 (timeout).
			return f[0] == "7" && ms < 500, fmt.Sprintf("curl exit %s after %s ms", f[0], f[1])
		})
		cipScale(t, b, ns, "echo", 3)
		ptPoll(t, 90*time.Second, "serving again after scaling back", func(context.Context) (bool, string) {
			got := cipCount(client.curlN(t, httpURL, 6))
			for k := range got {
				if strings.HasPrefix(k, "ERR") {
					return false, fmt.Sprint(got)
				}
			}
			return true, fmt.Sprint(got)
		})
	})

	t.Run("cleanup leaves nothing", func(t *testing.T) {
		for _, a := range agents.agents {
			agents.stop(a)
			if err := agents.cleanup(a); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(a.bpfRoot); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s: %s still there after --cleanup (%v)", a.node.Name, a.bpfRoot, err)
			}
			out, err := exec.Command("bpftool", "cgroup", "show", a.node.Cgroup).CombinedOutput()
			if err != nil {
				t.Errorf("bpftool cgroup show %s: %v: %s", a.node.Cgroup, err, out)
			} else if strings.TrimSpace(string(out)) != "" {
				t.Errorf("%s: programs still attached after --cleanup:\n%s", a.node.Name, out)
			}
		}
		// With no agent the ClusterIP is not translated any more.
		answers := client.curlN(t, httpURL, 1)
		if !strings.HasPrefix(answers[0], "ERR") {
			t.Errorf("after --cleanup %s still answered %q", httpURL, answers[0])
		}
	})
}

func cipTerminatingServing(e discoveryv1.Endpoint) bool {
	c := e.Conditions
	return c.Terminating != nil && *c.Terminating && c.Serving != nil && *c.Serving
}

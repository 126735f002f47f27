package tests

// The user's story with the Helm chart: `helm install` directlb into the test
// bed, the controller and the agents run as containers under the chart's
// ServiceAccounts (projected tokens, from the kubelets), kube-proxy is
// nowhere, the examples get an external IP that reaches every pod,
// `helm upgrade` keeps the webhook certificates, and after deleting the
// Service and `helm uninstall` nothing is left in the cloud or the cluster.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/directlb/directlb/e2e/framework"
	"github.com/directlb/directlb/e2e/testbed"
	"github.com/directlb/directlb/internal/namedns"
	"github.com/directlb/directlb/pkg/agent"
	"github.com/directlb/directlb/pkg/cloud"
	cloudaws "github.com/directlb/directlb/pkg/cloud/aws"
	"github.com/directlb/directlb/pkg/service"
)

const (
	chRelease     = "dlbt-chart"
	chNamespace   = "dlbt-chart-system"
	chAppNS       = "dlbt-chart-app"
	chClusterName = "dlbt-chart"
	chChart       = "../../charts/directlb"
	chLBCIDR      = "198.51.100.0/24"
	chLBClass     = "dlbt-chart.directlb.io/lb"
	// Localcloud's default access key (what the chart's Secret carries).
	chAccessKey = "AKIDLOCALCLOUD"
	chSecretKey = "localcloud-secret"
)

var (
	chController = chRelease + "-directlb-controller"
	chAgent      = chRelease + "-directlb-node-agent"
)

func chBPFRoot(node string) string { return filepath.Join(testbed.BPFPinPrefix, "chart-"+node) }

// chHelm runs helm against the test bed (2 minute bound per call unless
// the arguments carry their own --timeout).
func chHelm(t *testing.T, b *framework.Bed, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(b.BinDir, "helm"), append(args, "--kubeconfig", b.Topology.Kubeconfig)...)
	home := t.TempDir()
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+home, "HELM_CONFIG_HOME="+home, "HELM_DATA_HOME="+home)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("helm %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// chLocalcloud returns the test bed's localcloud endpoint, starting one in
// the cloud namespace for this test when the bed runs none.
func chLocalcloud(t *testing.T, b *framework.Bed) string {
	t.Helper()
	if u := b.Topology.LocalcloudURL; u != "" {
		return u
	}
	bin := filepath.Join(b.BinDir, "localcloud")
	if _, err := os.Stat(bin); err != nil {
		t.Skipf("the test bed runs no localcloud and %s is not built (make build): %v", bin, err)
	}
	addr := b.Topology.CloudAddr.String() + ":4566"
	logPath := filepath.Join(t.TempDir(), "localcloud.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command("nsenter", "--net="+namedns.Path(b.Topology.CloudNetNS), "--", bin,
		"--listen="+addr, "--state-dir=", "--lb-cidr="+chLBCIDR,
		"--access-key-id="+chAccessKey, "--secret-access-key="+chSecretKey,
		"--admin-listen=127.0.0.1:0") // its /admin on the cloud namespace's loopback, out of the pods' reach
	cmd.Stdout, cmd.Stderr = logf, logf
	// In the cloud's cgroup (before entering its namespace), so 'down'
	// would kill it with the rest.
	if err := framework.StartInCgroup(cmd, b.Topology.CloudCgroup); err != nil {
		t.Fatalf("start localcloud: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	u := "http://" + addr
	framework.Poll(t, 20*time.Second, "localcloud answers at "+u, func(context.Context) (bool, string) {
		select {
		case err := <-done:
			t.Fatalf("localcloud exited: %v\n%s", err, framework.Tail(logPath))
		default:
		}
		code, _, err := framework.HTTPGet(u + "/")
		return err == nil && code > 0, fmt.Sprint(err)
	})
	return u
}

func chCloud(t *testing.T, endpoint string) cloud.LoadBalancers {
	t.Helper()
	cfg := cloudaws.DefaultConfig()
	cfg.Region = "us-east-1"
	cfg.Endpoint = endpoint
	cfg.MaxAttempts = 3
	cfg.Credentials = credentials.NewStaticCredentialsProvider(chAccessKey, chSecretKey, "")
	c, err := cloudaws.New(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// chCloudLeft lists what the cloud still has for the chart's cluster name.
func chCloudLeft(ctx context.Context, c cloud.LoadBalancers) ([]string, error) {
	var left []string
	tags := cloud.Tags{cloud.TagCluster: chClusterName}
	lbs, err := c.ListLoadBalancers(ctx, tags)
	if err != nil {
		return nil, err
	}
	for _, lb := range lbs {
		left = append(left, "load balancer "+lb.ARN)
	}
	tgs, err := c.ListTargetGroups(ctx, tags)
	if err != nil {
		return nil, err
	}
	for _, tg := range tgs {
		left = append(left, "target group "+tg.ARN)
	}
	return left, nil
}

// chPodLogs returns the logs of the release's pods (kubectl logs, through
// the kubelets), by pod name.
func chPodLogs(t *testing.T, b *framework.Bed) map[string]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second) // also from Cleanup
	defer cancel()
	pods, err := b.Client.CoreV1().Pods(chNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/instance=" + chRelease})
	if err != nil {
		t.Fatal(err)
	}
	logs := map[string]string{}
	for _, p := range pods.Items {
		for _, c := range p.Spec.Containers {
			data, err := b.Client.CoreV1().Pods(p.Namespace).GetLogs(p.Name, &corev1.PodLogOptions{Container: c.Name}).DoRaw(ctx)
			if err != nil {
				t.Errorf("log of %s/%s: %v", p.Name, c.Name, err)
				continue
			}
			logs[p.Name] += string(data)
		}
	}
	return logs
}

// chRun is what the steps of TestChart share: the bed, the cloud the chart's
// controller talks to, the release's namespace, whether the release is
// installed (for the cleanup) and the example's EXTERNAL-IP and pods.
type chRun struct {
	b         *framework.Bed
	endpoint  string
	lbs       cloud.LoadBalancers
	ns        string
	installed bool
	extIP     string
	podIPs    map[string]string // name → IP
}

func TestChart(t *testing.T) {
	b := requireBed(t)
	for _, bin := range []string{"helm", "lb-controller", "node-agent"} {
		if _, err := os.Stat(filepath.Join(b.BinDir, bin)); err != nil {
			t.Skipf("%s is not built (make tools build): %v", bin, err)
		}
	}
	endpoint := chLocalcloud(t, b)
	r := &chRun{b: b, endpoint: endpoint, lbs: chCloud(t, endpoint)}
	t.Cleanup(func() { chCleanup(t, r) })

	r.ns = framework.CreateNamespace(t, b, chNamespace)
	chCredentialsSecret(t, r)
	chHelmInstall(t, r)
	chSourceDestCheckOn(t, r)
	chPodsRunAsServiceAccounts(t, r)
	chNoKubeProxy(t, r)
	chAgentsSynced(t, r)
	chControllerRBAC(t, r)
	chExampleGetsExternalIP(t, r)
	chExamplePodsAreHealthyTargets(t, r)
	chExampleReachesEveryPod(t, r)
	chServiceListShowsExample(t, r)

	// The webhook (the chart's, with the chart's certificates) gave every
	// pod the gate and the drain hook; the chart's controller set the gates.
	chCheckGates(t, b)

	// A rolling update under load through the chart's controller and
	// webhook: the gates hold it, the drain hook empties the old pods;
	// nothing fails.
	chRolloutUnderLoad(t, b, r.extIP)

	// The controller's leader SIGKILLed, the next leader's pod deleted, and
	// a helm upgrade that rolls the controller, all under load: no pod turns
	// NotReady, no request fails.
	chOperationsUnderLoad(t, b, r.ns, r.extIP, func() {
		if _, err := chHelm(t, b, "upgrade", chRelease, chChart, "-n", r.ns, "--reuse-values",
			"--set", "controller.concurrency=5", "--wait", "--timeout", "3m"); err != nil {
			t.Fatal(err)
		}
	})
	chUpgradeApplied(t, r)
	chLogsShowNoDenial(t, r)
	chUninstallLeavesNothing(t, r)
}

// chCleanup cleans up in the order docs/chart.md gives: the app (its
// Service's finalizer needs the controller), then the release, then the
// agents' pins.
func chCleanup(t *testing.T, r *chRun) {
	b := r.b
	if t.Failed() && r.installed {
		for pod, log := range chPodLogs(t, b) {
			lines := strings.Split(strings.TrimSpace(log), "\n")
			t.Logf("last lines of %s:\n%s", pod, strings.Join(lines[max(0, len(lines)-15):], "\n"))
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := b.Client.CoreV1().Namespaces().Delete(ctx, chAppNS, metav1.DeleteOptions{}); err == nil || !apierrors.IsNotFound(err) {
		for ctx.Err() == nil {
			if _, err := b.Client.CoreV1().Namespaces().Get(ctx, chAppNS, metav1.GetOptions{}); apierrors.IsNotFound(err) {
				break
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
	if r.installed {
		if out, err := chHelm(t, b, "uninstall", chRelease, "-n", chNamespace, "--wait", "--timeout", "90s"); err != nil && !strings.Contains(out, "not found") {
			t.Errorf("cleanup: %v", err)
		}
	}
	_ = b.Client.CoreV1().Namespaces().Delete(ctx, chNamespace, metav1.DeleteOptions{})
	for _, n := range b.Topology.Nodes {
		out, err := exec.CommandContext(ctx, "nsenter", "--net="+namedns.Path(n.NetNS), "--",
			filepath.Join(b.BinDir, "node-agent"), "--cleanup", "--bpf-root="+chBPFRoot(n.Name)).CombinedOutput()
		if err != nil {
			t.Errorf("node-agent --cleanup on %s: %v\n%s", n.Name, err, out)
		}
	}
}

// chCredentialsSecret creates the Secret with localcloud's keys the chart's
// values name.
func chCredentialsSecret(t *testing.T, r *chRun) {
	_, err := r.b.Client.CoreV1().Secrets(r.ns).Create(t.Context(), &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "localcloud-credentials"},
		StringData: map[string]string{"AWS_ACCESS_KEY_ID": chAccessKey, "AWS_SECRET_ACCESS_KEY": chSecretKey},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
}

// chHelmInstall: helm install, as a user would on the test bed.
func chHelmInstall(t *testing.T, r *chRun) {
	begin := time.Now()
	r.installed = true
	if _, err := chHelm(t, r.b, "install", chRelease, chChart, "-n", r.ns,
		"-f", filepath.Join(chChart, "ci", "testbed-values.yaml"),
		"--set", "clusterName="+chClusterName,
		"--set", "cloud.endpoint="+r.endpoint,
		"--set", "nodeAgent.bpfRoot="+filepath.Join(testbed.BPFPinPrefix, "chart-$(NODE_NAME)"),
		// Only this test's Service: a direct-access Service another test
		// left behind must not get this release's finalizer.
		"--set", "controller.loadBalancerClasses={"+chLBClass+"}",
		"--set", "controller.manageDefaultClass=false",
		"--wait", "--timeout", "3m"); err != nil {
		t.Fatal(err)
	}
	t.Logf("helm install --wait: %.1fs", time.Since(begin).Seconds())
}

// chSourceDestCheckOn turns the VPC's source/destination check on, as in a
// cloud: pods on secondary ENIs answer only through the agents' ENI routing
// (nodeAgent.eniRouting in the test-bed values).
func chSourceDestCheckOn(t *testing.T, r *chRun) {
	b := r.b
	if err := testbed.SetSourceDestCheck(t.Context(), b.Topology, true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := testbed.SetSourceDestCheck(ctx, b.Topology, b.Topology.SourceDestCheck); err != nil {
			t.Errorf("restore the source/destination check: %v", err)
		}
	})
}

// chPodsRunAsServiceAccounts: the controller and the agents run as the
// chart's ServiceAccounts. helm --wait accepts a DaemonSet with
// maxUnavailable (1) pods not yet Ready, so every pod gets a short while to
// become Ready.
func chPodsRunAsServiceAccounts(t *testing.T, r *chRun) {
	b := r.b
	var pods *corev1.PodList
	framework.Poll(t, 60*time.Second, "every pod of the release Ready", func(ctx context.Context) (bool, string) {
		var err error
		pods, err = b.Client.CoreV1().Pods(r.ns).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/instance=" + chRelease})
		if err != nil {
			return false, err.Error()
		}
		var notReady []string
		for _, p := range pods.Items {
			if !framework.Ready(&p) {
				notReady = append(notReady, p.Name+" "+string(p.Status.Phase))
			}
		}
		return len(notReady) == 0, fmt.Sprintf("not ready: %v", notReady)
	})
	running := map[string]int{}
	for _, p := range pods.Items {
		running[p.Spec.ServiceAccountName]++
	}
	if diff := cmp.Diff(map[string]int{chController: 2, chAgent: len(b.Topology.Nodes)}, running); diff != "" {
		t.Fatalf("ready pods by ServiceAccount (-want +got):\n%s", diff)
	}
}

// chNoKubeProxy: kube-proxy is nowhere; the node agent is the DaemonSet.
func chNoKubeProxy(t *testing.T, r *chRun) {
	ds := r.b.MustKubectl(t, "get", "daemonsets", "-A", "-o", "custom-columns=NS:.metadata.namespace,NAME:.metadata.name,READY:.status.numberReady", "--no-headers")
	t.Logf("kubectl get daemonsets -A:\n%s", ds)
	if !strings.Contains(ds, chAgent) || strings.Contains(ds, "kube-proxy") {
		t.Errorf("daemonsets: want %s and no kube-proxy:\n%s", chAgent, ds)
	}
}

// chAgentsSynced: the agents synced Services and EndpointSlices through
// their RBAC.
func chAgentsSynced(t *testing.T, r *chRun) {
	for _, n := range r.b.Topology.Nodes {
		u := "http://" + n.ENIs[0].Addr.Addr().String() + ":10256/healthz"
		framework.Poll(t, 30*time.Second, "agent on "+n.Name+" synced", func(context.Context) (bool, string) {
			code, body, err := framework.HTTPGet(u)
			return err == nil && code == 200 && strings.Contains(body, "lastUpdated") && !strings.Contains(body, `"lastUpdated":"0001-01-01`), fmt.Sprint(code, body, err)
		})
	}
}

// chControllerRBAC: what the controller needs it has, and no more.
func chControllerRBAC(t *testing.T, r *chRun) {
	ns := r.ns
	sa := "system:serviceaccount:" + ns + ":" + chController
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"update", "services", "--subresource=status", "-A"}, "yes"},
		{[]string{"update", "services", "--subresource=finalizers", "-A"}, "yes"},
		{[]string{"list", "endpointslices.discovery.k8s.io", "-A"}, "yes"},
		{[]string{"patch", "pods", "--subresource=status", "-A"}, "yes"},
		{[]string{"patch", "pods", "-A"}, "no"},
		{[]string{"update", "leases.coordination.k8s.io/lb-controller.directlb.io", "-n", ns}, "yes"},
		{[]string{"get", "secrets", "-n", ns}, "no"},
		{[]string{"get", "secrets/localcloud-credentials", "-n", ns}, "no"},
		{[]string{"delete", "services", "-A"}, "no"},
		{[]string{"update", "nodes"}, "no"},
		{[]string{"update", "leases.coordination.k8s.io/other", "-n", ns}, "no"},
	} {
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		out, _ := r.b.Kubectl(ctx, append([]string{"auth", "can-i", "--as", sa}, tc.args...)...)
		cancel()
		// The answer is the last line (warnings come first).
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if got := strings.TrimSpace(lines[len(lines)-1]); got != tc.want {
			t.Errorf("%s can-i %v: %q, want %s", chController, tc.args, got, tc.want)
		}
	}
}

// chExampleGetsExternalIP applies the examples and waits for an
// EXTERNAL-IP in the chart's pool. The Service first, as the README says:
// the webhook gives a pod its readiness gate when a direct-access Service
// selects it at creation.
func chExampleGetsExternalIP(t *testing.T, r *chRun) {
	b := r.b
	framework.CreateNamespace(t, b, chAppNS)
	raw, err := os.ReadFile("../../examples/echo-service.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var example corev1.Service
	if err := yaml.UnmarshalStrict(raw, &example); err != nil {
		t.Fatal(err)
	}
	example.Spec.LoadBalancerClass = ptr.To(chLBClass)
	if _, err := b.Client.CoreV1().Services(chAppNS).Create(t.Context(), &example, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	b.MustKubectl(t, "apply", "-n", chAppNS, "-f", "../../examples/echo-deployment.yaml")
	begin := time.Now()
	var extIP string
	framework.Poll(t, 90*time.Second, "EXTERNAL-IP of "+chAppNS+"/echo", func(ctx context.Context) (bool, string) {
		svc, err := b.Client.CoreV1().Services(chAppNS).Get(ctx, "echo", metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		if in := svc.Status.LoadBalancer.Ingress; len(in) > 0 && in[0].IP != "" {
			extIP = in[0].IP
			return true, ""
		}
		return false, fmt.Sprintf("status %+v", svc.Status)
	})
	t.Logf("EXTERNAL-IP %s after %.1fs", extIP, time.Since(begin).Seconds())
	t.Logf("kubectl get svc:\n%s", b.MustKubectl(t, "get", "svc", "-n", chAppNS))
	if a, err := netip.ParseAddr(extIP); err != nil || !netip.MustParsePrefix(chLBCIDR).Contains(a) {
		t.Fatalf("EXTERNAL-IP %q is not in %s", extIP, chLBCIDR)
	}
	r.extIP = extIP
}

// chExamplePodsAreHealthyTargets waits for the 3 echo pods, then for the
// pods' IPs as the cloud's healthy targets.
func chExamplePodsAreHealthyTargets(t *testing.T, r *chRun) {
	b := r.b
	podIPs := map[string]string{} // name → IP
	r.podIPs = podIPs
	framework.Poll(t, 90*time.Second, "3 echo pods ready", func(ctx context.Context) (bool, string) {
		list, err := b.Client.CoreV1().Pods(chAppNS).List(ctx, metav1.ListOptions{LabelSelector: "app=echo"})
		if err != nil {
			return false, err.Error()
		}
		clear(podIPs)
		for _, p := range list.Items {
			if framework.Ready(&p) {
				podIPs[p.Name] = p.Status.PodIP
			}
		}
		return len(podIPs) == 3, fmt.Sprint(podIPs)
	})
	var wantTargets []string
	for _, ip := range podIPs {
		wantTargets = append(wantTargets, ip+":8080")
	}
	slices.Sort(wantTargets)
	lbs := r.lbs
	framework.Poll(t, 60*time.Second, "the cloud's healthy targets are the pods", func(ctx context.Context) (bool, string) {
		tgs, err := lbs.ListTargetGroups(ctx, cloud.Tags{cloud.TagCluster: chClusterName, cloud.TagService: chAppNS + "/echo"})
		if err != nil || len(tgs) != 1 {
			return false, fmt.Sprint(tgs, err)
		}
		th, err := lbs.DescribeTargetHealth(ctx, tgs[0].ARN)
		if err != nil {
			return false, err.Error()
		}
		var got []string
		healthy := 0
		for _, h := range th {
			got = append(got, h.Target.String())
			if h.State == cloud.TargetHealthy {
				healthy++
			}
		}
		slices.Sort(got)
		return slices.Equal(got, wantTargets) && healthy == len(wantTargets), fmt.Sprintf("targets %v (%d healthy), want %v", got, healthy, wantTargets)
	})
}

// chExampleReachesEveryPod: up to 300 requests (at most 60 seconds) through
// the EXTERNAL-IP reach every pod, and none fails.
func chExampleReachesEveryPod(t *testing.T, r *chRun) {
	extIP := r.extIP
	seen := map[string]int{}
	failed := 0
	deadline := time.Now().Add(60 * time.Second)
	for i := 0; i < 300 && time.Now().Before(deadline); i++ {
		code, body, err := framework.HTTPGet("http://" + extIP + "/hostname")
		if err != nil || code != 200 {
			failed++
			continue
		}
		seen[strings.TrimSpace(body)]++
	}
	t.Logf("responses by pod: %v, failed: %d", seen, failed)
	for name := range r.podIPs {
		if seen[name] == 0 {
			t.Errorf("no response from pod %s through %s: %v", name, extIP, seen)
		}
	}
	if failed > 0 {
		t.Errorf("%d requests through %s failed", failed, extIP)
	}
}

// chServiceListShowsExample: `node-agent service list`, run on the host
// against each node's pins while the chart's agents run, shows the example
// Service's ClusterIP frontend with the three pods as its backends.
func chServiceListShowsExample(t *testing.T, r *chRun) {
	svc, err := r.b.Client.CoreV1().Services(chAppNS).Get(t.Context(), "echo", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	frontend := fmt.Sprintf("%s:%d/TCP", svc.Spec.ClusterIP, svc.Spec.Ports[0].Port)
	var want []string
	for _, ip := range r.podIPs {
		want = append(want, ip+":8080")
	}
	slices.Sort(want)
	for _, n := range r.b.Topology.Nodes {
		out, err := exec.CommandContext(t.Context(), filepath.Join(r.b.BinDir, "node-agent"), "service", "list",
			"--bpf-root="+chBPFRoot(n.Name), "-o", "json").Output()
		if err != nil {
			t.Fatalf("node-agent service list on %s: %v", n.Name, err)
		}
		var list agent.ServiceList
		if err := json.Unmarshal(out, &list); err != nil {
			t.Fatalf("node-agent service list -o json on %s: %v\n%s", n.Name, err, out)
		}
		i := slices.IndexFunc(list.Frontends, func(f agent.ListedFrontend) bool { return f.Frontend == frontend })
		if i < 0 {
			t.Errorf("node-agent service list on %s has no %s: %s", n.Name, frontend, out)
			continue
		}
		got := slices.Clone(list.Frontends[i].Backends)
		slices.Sort(got)
		if !slices.Equal(got, want) || list.Frontends[i].Type != agent.TypeClusterIP {
			t.Errorf("node-agent service list on %s: %s is %s with %v, want ClusterIP with %v", n.Name, frontend, list.Frontends[i].Type, got, want)
		}
	}
	table, err := exec.CommandContext(t.Context(), filepath.Join(r.b.BinDir, "node-agent"), "service", "list",
		"--bpf-root="+chBPFRoot(r.b.Topology.Nodes[0].Name)).Output()
	if err != nil {
		t.Fatalf("node-agent service list: %v", err)
	}
	t.Logf("node-agent service list on %s:\n%s", r.b.Topology.Nodes[0].Name, table)
}

// chUpgradeApplied: the upgraded controller runs with --concurrency=5 and
// the EXTERNAL-IP still answers.
func chUpgradeApplied(t *testing.T, r *chRun) {
	dep, err := r.b.Client.AppsV1().Deployments(r.ns).Get(t.Context(), chController, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if args := dep.Spec.Template.Spec.Containers[0].Args; !slices.Contains(args, "--concurrency=5") {
		t.Errorf("upgraded controller args %v lack --concurrency=5", args)
	}
	for i := 0; i < 20; i++ {
		if code, body, err := framework.HTTPGet("http://" + r.extIP + "/hostname"); err != nil || code != 200 {
			t.Errorf("after the upgrade, request %d: %d %q %v", i, code, body, err)
		}
	}
}

// chLogsShowNoDenial: no RBAC denial in any log of the release's pods; and
// the logs are really theirs: a controller of the upgraded release took the
// Lease (the old leader released it on SIGTERM, but the new pods may still
// be racing for it, hence the wait), every agent synced.
func chLogsShowNoDenial(t *testing.T, r *chRun) {
	b := r.b
	var leaders, synced int
	var logs map[string]string
	framework.Poll(t, 45*time.Second, "an upgraded controller leads and every agent synced", func(context.Context) (bool, string) {
		leaders, synced = 0, 0
		logs = chPodLogs(t, b)
		for _, log := range logs {
			if strings.Contains(log, "Successfully acquired lease") {
				leaders++
			}
			if strings.Contains(log, "initial sync done") {
				synced++
			}
		}
		return leaders >= 1 && synced == len(b.Topology.Nodes),
			fmt.Sprintf("logs show %d leaders and %d synced agents, want at least 1 and %d", leaders, synced, len(b.Topology.Nodes))
	})
	for pod, log := range logs {
		for _, line := range strings.Split(log, "\n") {
			if strings.Contains(strings.ToLower(line), "forbidden") {
				t.Errorf("%s: %s", pod, line)
			}
		}
	}
}

// chUninstallLeavesNothing uninstalls in the documented order: the Service
// first, while the controller runs, then the release; nothing is left in the
// cluster or the cloud.
func chUninstallLeavesNothing(t *testing.T, r *chRun) {
	b, ns, lbs := r.b, r.ns, r.lbs
	b.MustKubectl(t, "delete", "service", "echo", "-n", chAppNS, "--wait=true", "--timeout=60s")
	framework.Poll(t, 60*time.Second, "the cloud forgets the Service", func(ctx context.Context) (bool, string) {
		left, err := chCloudLeft(ctx, lbs)
		return err == nil && len(left) == 0, fmt.Sprint(left, err)
	})
	if _, err := chHelm(t, b, "uninstall", chRelease, "-n", ns, "--wait", "--timeout", "2m"); err != nil {
		t.Fatal(err)
	}
	r.installed = false
	framework.Poll(t, 60*time.Second, "the release's pods are gone", func(ctx context.Context) (bool, string) {
		list, err := b.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		return err == nil && len(list.Items) == 0, fmt.Sprint(len(list.Items), err)
	})
	sel := "app.kubernetes.io/instance=" + chRelease
	left := b.MustKubectl(t, "get", "all,secrets,serviceaccounts,roles,rolebindings,leases,poddisruptionbudgets,configmaps,events",
		"-n", ns, "-o", "name")
	var leftover []string
	for _, l := range strings.Fields(left) {
		// What the namespace itself holds, and this test's Secret.
		if strings.HasPrefix(l, "configmap/kube-root-ca.crt") || strings.HasPrefix(l, "serviceaccount/default") ||
			l == "secret/localcloud-credentials" || strings.HasPrefix(l, "event") {
			continue
		}
		leftover = append(leftover, l)
	}
	cluster := b.MustKubectl(t, "get", "clusterroles,clusterrolebindings,mutatingwebhookconfigurations", "-l", sel, "-o", "name")
	leftover = append(leftover, strings.Fields(cluster)...)
	if len(leftover) > 0 {
		t.Errorf("left after helm uninstall: %v", leftover)
	}
	if left, err := chCloudLeft(t.Context(), lbs); err != nil || len(left) > 0 {
		t.Errorf("left in the cloud after helm uninstall: %v %v", left, err)
	}
}

// chCheckGates: every echo pod carries the Service's readiness gate, True,
// and the drain preStop hook the webhook adds.
func chCheckGates(t *testing.T, b *framework.Bed) {
	t.Helper()
	list, err := b.Client.CoreV1().Pods(chAppNS).List(t.Context(), metav1.ListOptions{LabelSelector: "app=echo"})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range list.Items {
		if !framework.HasGate(&p, "echo") {
			t.Errorf("pod %s has no readiness gate %s (gates %v): the chart's webhook did not mutate it", p.Name, service.ReadinessGateType("echo"), p.Spec.ReadinessGates)
			continue
		}
		if st, reason := framework.Gate(&p, "echo"); st != corev1.ConditionTrue {
			t.Errorf("pod %s (%s on %s) gate %s=%s (%s), want True", p.Name, p.Status.PodIP, p.Spec.NodeName, service.ReadinessGateType("echo"), st, reason)
			chDiagnose(t, b)
		}
		if c := p.Spec.Containers[0]; c.Lifecycle == nil || c.Lifecycle.PreStop == nil {
			t.Errorf("pod %s container %s has no preStop drain hook", p.Name, c.Name)
		}
	}
}

// chRolloutUnderLoad restarts the echo Deployment while new-connection and
// keep-alive load runs through extIP, until the rollout is complete and the
// old pods are gone (at most 3 minutes), and wants 0 failed requests.
func chRolloutUnderLoad(t *testing.T, b *framework.Bed, extIP string) {
	t.Helper()
	ctx := t.Context()
	old, err := b.Client.CoreV1().Pods(chAppNS).List(ctx, metav1.ListOptions{LabelSelector: "app=echo"})
	if err != nil {
		t.Fatal(err)
	}
	load := framework.NewLoad("echo-")
	lctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(2)
	url := "http://" + extIP + "/hostname"
	go load.Run(lctx, url, 50, false, 3*time.Minute, &wg)
	go load.Run(lctx, url, 50, true, 3*time.Minute, &wg)
	begin := time.Now()
	b.MustKubectl(t, "rollout", "restart", "-n", chAppNS, "deployment/echo")
	framework.Poll(t, 3*time.Minute, "rollout of echo done and the old pods gone", func(ctx context.Context) (bool, string) {
		list, err := b.Client.CoreV1().Pods(chAppNS).List(ctx, metav1.ListOptions{LabelSelector: "app=echo"})
		if err != nil {
			return false, err.Error()
		}
		ready, oldLeft := 0, 0
		for _, p := range list.Items {
			if slices.ContainsFunc(old.Items, func(o corev1.Pod) bool { return o.UID == p.UID }) {
				oldLeft++
			} else if framework.Ready(&p) {
				ready++
			}
		}
		return ready == 3 && oldLeft == 0, fmt.Sprintf("%d new pods ready, %d old pods left", ready, oldLeft)
	})
	stop()
	wg.Wait()
	t.Logf("rollout through the chart's controller: %.1fs, %d requests, %d failed %v",
		time.Since(begin).Seconds(), load.Total(), load.Failed(), load.Errors())
	if load.Failed() > 0 {
		t.Errorf("%d of %d requests failed during the rollout: %v", load.Failed(), load.Total(), load.Errors())
	}
	if load.Total() < 500 {
		t.Errorf("only %d requests during the rollout: the load did not run", load.Total())
	}
	chCheckGates(t, b)
}

// chDiagnose logs what explains a gate that is not True: the pods'
// conditions, the ENI rules of every node and the release's log tails.
func chDiagnose(t *testing.T, b *framework.Bed) {
	t.Helper()
	t.Logf("pods:\n%s", b.MustKubectl(t, "get", "pods", "-n", chAppNS, "-o", "wide"))
	t.Logf("endpointslices:\n%s", b.MustKubectl(t, "get", "endpointslices", "-n", chAppNS, "-o", "yaml"))
	for _, n := range b.Topology.Nodes {
		out, _ := exec.Command("ip", "-n", n.NetNS, "rule").CombinedOutput()
		t.Logf("%s ip rule:\n%s", n.Name, out)
	}
	for pod, log := range chPodLogs(t, b) {
		lines := strings.Split(strings.TrimSpace(log), "\n")
		t.Logf("last lines of %s:\n%s", pod, strings.Join(lines[max(0, len(lines)-30):], "\n"))
	}
}

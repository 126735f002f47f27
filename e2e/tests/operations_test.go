package tests

// Operating directlb never costs traffic: the chart's controller is
// SIGKILLed, its leader pod deleted and the release upgraded while load runs
// through the load balancer and through the ClusterIP from a pod, and the
// echo pods are watched for a single NotReady sample.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/directlb/directlb/e2e/framework"
)

// opsClusterIPLoad runs a curl loop to url inside pod's sandbox (its cgroup,
// where the node agent's socket hooks apply, and its network namespace)
// until stop is called or framework.MaxLoad passes; stop returns the
// answered and failed request counts.
func opsClusterIPLoad(t *testing.T, sb framework.Sandbox, url string) (stop func() (ok, failed int)) {
	t.Helper()
	stopFile := filepath.Join(t.TempDir(), "stop")
	script := fmt.Sprintf(`end=$((SECONDS+%d)); ok=0; bad=0
while ((SECONDS < end)) && [ ! -e %s ]; do
  if curl -fsS -o /dev/null -m 2 %s; then ok=$((ok+1)); else bad=$((bad+1)); fi
  sleep 0.02
done
echo "$ok $bad"`, int(framework.MaxLoad.Seconds()), stopFile, url)
	type result struct {
		out string
		err error
	}
	res := make(chan result, 1)
	// t.Context ends before cleanups run: a failed test stops the loop too.
	ctx, cancel := context.WithTimeout(t.Context(), framework.MaxLoad+30*time.Second)
	t.Cleanup(cancel)
	go func() {
		out, err := sb.Sh(ctx, script)
		res <- result{out, err}
	}()
	return func() (int, int) {
		if err := os.WriteFile(stopFile, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		r := <-res
		var ok, failed int
		if _, err := fmt.Sscanf(lastLine(r.out), "%d %d", &ok, &failed); err != nil || r.err != nil {
			t.Fatalf("ClusterIP load in the pod: %v %v: %s", r.err, err, r.out)
		}
		return ok, failed
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// opsLeader is the controller pod whose metrics say it leads.
func opsLeader(ctx context.Context, b *framework.Bed, ns string) (*corev1.Pod, string) {
	list, err := b.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/component=lb-controller"})
	if err != nil {
		return nil, err.Error()
	}
	var leaders []*corev1.Pod
	var notes []string
	for i := range list.Items {
		p := &list.Items[i]
		if p.DeletionTimestamp != nil || p.Status.PodIP == "" {
			continue
		}
		lead, err := opsLeads(ctx, p.Status.PodIP)
		notes = append(notes, fmt.Sprintf("%s: leads=%v %v", p.Name, lead, err))
		if lead {
			leaders = append(leaders, p)
		}
	}
	if len(leaders) != 1 {
		return nil, fmt.Sprintf("%d leaders: %v", len(leaders), notes)
	}
	return leaders[0], ""
}

// opsLeads reads controller-runtime's leader_election_master_status gauge
// from the pod's metrics endpoint (the chart's :8080).
func opsLeads(ctx context.Context, ip string) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+ip+":8080/metrics", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "leader_election_master_status{") && strings.Contains(line, `name="lb-controller.directlb.io"`) {
			v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
			return err == nil && v == 1, err
		}
	}
	return false, errors.Join(sc.Err(), errors.New("no leader_election_master_status"))
}

// opsKillPod SIGKILLs every process of the pod (its cgroup and below), as
// the kernel's OOM killer or a crash would; the kubelet restarts it.
func opsKillPod(t *testing.T, b *framework.Bed, p *corev1.Pod) int {
	t.Helper()
	killed := 0
	// Every process of the pod (its containers and the sandbox's pause):
	// the kubelet sees them die and starts them again.
	root := framework.PodSandbox(t, b, p).Cgroup
	err := filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() != "cgroup.procs" {
			return err
		}
		raw, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, f := range strings.Fields(string(raw)) {
			if pid, err := strconv.Atoi(f); err == nil && syscall.Kill(pid, syscall.SIGKILL) == nil {
				killed++
			}
		}
		return nil
	})
	if err != nil || killed == 0 {
		t.Fatalf("SIGKILL pod %s (cgroup %s): %d processes, %v", p.Name, root, killed, err)
	}
	return killed
}

// opsProcess names the controller process of pod p. A leader is a process:
// the kubelet restarts a SIGKILLed controller in the same pod, and that new
// process may win the Lease again.
func opsProcess(p *corev1.Pod) string {
	restarts := int32(0)
	for _, c := range p.Status.ContainerStatuses {
		restarts += c.RestartCount
	}
	return fmt.Sprintf("%s (restarts %d)", p.Name, restarts)
}

// opsWaitLeader waits (90 seconds) for a controller in ns to lead whose
// process is not not, and returns its pod.
func opsWaitLeader(t *testing.T, b *framework.Bed, ns, what string, not string) *corev1.Pod {
	t.Helper()
	var leader *corev1.Pod
	framework.Poll(t, 90*time.Second, what, func(ctx context.Context) (bool, string) {
		p, why := opsLeader(ctx, b, ns)
		if p == nil || opsProcess(p) == not {
			return false, why
		}
		leader = p
		return true, ""
	})
	return leader
}

// chOperationsUnderLoad: with load through the EXTERNAL-IP and through the
// echo Service's ClusterIP from an echo pod, and the echo pods sampled every
// 200 ms, the controller's leader is SIGKILLed, then the next leader's pod
// is deleted, then helm upgrade rolls the controller. Wants 0 NotReady
// samples and 0 failed requests on either path.
func chOperationsUnderLoad(t *testing.T, b *framework.Bed, ns, extIP string, upgrade func()) {
	t.Helper()
	ctx := t.Context()
	svc, err := b.Client.CoreV1().Services(chAppNS).Get(ctx, "echo", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pods, err := b.Client.CoreV1().Pods(chAppNS).List(ctx, metav1.ListOptions{LabelSelector: "app=echo"})
	if err != nil || len(pods.Items) == 0 {
		t.Fatalf("echo pods: %v %v", pods, err)
	}
	readiness := framework.WatchReadiness(ctx, b, chAppNS, "app=echo", "echo")
	stopCIP := opsClusterIPLoad(t, framework.PodSandbox(t, b, &pods.Items[0]), "http://"+svc.Spec.ClusterIP+"/hostname")
	load := framework.NewLoad("echo-")
	lctx, stopLoad := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go load.Run(lctx, "http://"+extIP+"/hostname", 50, false, framework.MaxLoad, &wg)

	settle := func() { time.Sleep(10 * time.Second) } // load keeps running

	leader := opsWaitLeader(t, b, ns, "a controller leads", "")
	begin := time.Now()
	n := opsKillPod(t, b, leader)
	next := opsWaitLeader(t, b, ns, "another controller process leads after SIGKILL of "+opsProcess(leader), opsProcess(leader))
	t.Logf("SIGKILL of the leader %s (%d processes): %s leads after %.1fs", leader.Name, n, next.Name, time.Since(begin).Seconds())
	settle()

	begin = time.Now()
	if err := b.Client.CoreV1().Pods(ns).Delete(ctx, next.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	third := opsWaitLeader(t, b, ns, "another controller leads after deleting "+next.Name, opsProcess(next))
	t.Logf("leader pod %s deleted: %s leads after %.1fs", next.Name, third.Name, time.Since(begin).Seconds())
	settle()

	begin = time.Now()
	upgrade()
	opsWaitLeader(t, b, ns, "an upgraded controller leads", "")
	t.Logf("helm upgrade rolled the controller in %.1fs", time.Since(begin).Seconds())
	settle()

	stopLoad()
	wg.Wait()
	cipOK, cipFailed := stopCIP()
	samples, notReady := readiness.Finish()
	t.Logf("controller operations under load: external %d requests, %d failed %v; ClusterIP from a pod %d requests, %d failed; %d readiness samples, %d NotReady",
		load.Total(), load.Failed(), load.Errors(), cipOK+cipFailed, cipFailed, samples, len(notReady))
	if len(notReady) > 0 {
		t.Errorf("echo pods turned NotReady during controller operations (%d samples): %v", len(notReady), notReady[:min(len(notReady), 20)])
	}
	if load.Failed() > 0 {
		t.Errorf("%d of %d requests through %s failed: %v", load.Failed(), load.Total(), extIP, load.Errors())
	}
	if cipFailed > 0 {
		t.Errorf("%d of %d requests to the ClusterIP from a pod failed", cipFailed, cipOK+cipFailed)
	}
	if load.Total() < 1000 || cipOK < 300 || samples < 100 {
		t.Errorf("the load or the sampling did not run: %d external, %d ClusterIP requests, %d samples", load.Total(), cipOK, samples)
	}
}

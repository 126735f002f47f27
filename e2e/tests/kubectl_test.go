// kubectl logs, exec and port-forward on the example's pods: the apiserver
// reaches each node's kubelet API (node certificates, Node authorization),
// the kubelet streams from containerd.
package tests

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/directlb/directlb/e2e/framework"
)

// kcExample applies examples/echo-deployment.yaml (agnhost netexec, three
// replicas) in ns and returns its pods once all are Ready.
func kcExample(t *testing.T, b *framework.Bed, ns string) []corev1.Pod {
	t.Helper()
	b.MustKubectl(t, "-n", ns, "apply", "-f", filepath.Join("..", "..", "examples", "echo-deployment.yaml"))
	b.MustKubectl(t, "-n", ns, "rollout", "status", "deployment/echo", "--timeout=90s")
	var pods []corev1.Pod
	framework.Poll(t, 30*time.Second, "three Ready echo pods", func(ctx context.Context) (bool, string) {
		l, err := b.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=echo"})
		if err != nil {
			return false, err.Error()
		}
		pods = pods[:0]
		for _, p := range l.Items {
			if framework.Ready(&p) {
				pods = append(pods, p)
			}
		}
		return len(pods) == 3 && len(l.Items) == 3, fmt.Sprintf("%d of %d ready", len(pods), len(l.Items))
	})
	return pods
}

func TestKubectlOnExamplePods(t *testing.T) {
	b := requireBed(t)
	ns := framework.Namespace(t, b, "kubectl-e2e")
	pods := kcExample(t, b, ns)

	t.Run("logs", func(t *testing.T) {
		for _, p := range pods {
			out := b.MustKubectl(t, "-n", ns, "logs", p.Name, "-c", "echo")
			// agnhost netexec logs its listener at start.
			if !strings.Contains(out, "8080") {
				t.Errorf("kubectl logs %s: no line naming port 8080:\n%s", p.Name, out)
			}
		}
	})

	t.Run("exec", func(t *testing.T) {
		for _, p := range pods {
			out := b.MustKubectl(t, "-n", ns, "exec", p.Name, "-c", "echo", "--", "sh", "-c", "cat /etc/hostname; ip -4 -o addr show dev eth0")
			lines := strings.Split(strings.TrimSpace(out), "\n")
			if len(lines) < 2 || lines[0] != p.Name {
				t.Errorf("kubectl exec %s: want its name then its address, got:\n%s", p.Name, out)
				continue
			}
			if !strings.Contains(lines[1], p.Status.PodIP) {
				t.Errorf("kubectl exec %s: eth0 does not hold the pod IP %s: %q", p.Name, p.Status.PodIP, lines[1])
			}
		}
	})

	t.Run("port-forward", func(t *testing.T) {
		for _, p := range pods {
			port := kcPortForward(t, b, ns, p.Name, 8080)
			code, body, err := framework.HTTPGet(fmt.Sprintf("http://127.0.0.1:%s/hostname", port))
			if err != nil || code != 200 || body != p.Name {
				t.Errorf("GET /hostname through kubectl port-forward to %s: %d %q %v", p.Name, code, body, err)
			}
		}
	})
}

var forwardingRE = regexp.MustCompile(`Forwarding from 127\.0\.0\.1:(\d+) ->`)

// kcPortForward runs 'kubectl port-forward pod/<pod> :<port>' until the
// test ends and returns the local port it listens on.
func kcPortForward(t *testing.T, b *framework.Bed, ns, pod string, port int) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	cmd := exec.CommandContext(ctx, filepath.Join(b.BinDir, "kubectl"), "--kubeconfig", b.Topology.Kubeconfig,
		"-n", ns, "port-forward", "--address=127.0.0.1", "pod/"+pod, fmt.Sprintf(":%d", port))
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
	})
	got := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if m := forwardingRE.FindStringSubmatch(sc.Text()); m != nil {
				got <- m[1]
				break
			}
		}
		_, _ = io.Copy(io.Discard, stdout)
	}()
	select {
	case p := <-got:
		return p
	case <-time.After(20 * time.Second):
		t.Fatalf("kubectl port-forward %s: no 'Forwarding from' line in 20s; stderr: %s", pod, stderr.String())
		return ""
	}
}

package framework

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/directlb/directlb/e2e/testbed"
)

// EchoImage is the echo server's image (e2e/echo), imported on every node.
const EchoImage = "example.com/echo:1"

// CreateNamespace creates a namespace, waiting out one of an earlier run
// on a kept test bed that is still going. The caller deletes it.
func CreateNamespace(t *testing.T, b *Bed, name string) string {
	t.Helper()
	Poll(t, 90*time.Second, "create namespace "+name, func(ctx context.Context) (bool, string) {
		_, err := b.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatalf("create namespace %s: %v", name, err)
		}
		return err == nil, fmt.Sprint(err)
	})
	return name
}

// Namespace creates a namespace for one test and deletes it afterwards.
func Namespace(t *testing.T, b *Bed, name string) string {
	t.Helper()
	CreateNamespace(t, b, name)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = b.Client.CoreV1().Namespaces().Delete(ctx, name, metav1.DeleteOptions{})
	})
	return name
}

// Condition is the status of the pod's condition typ ("" if it has none).
func Condition(p *corev1.Pod, typ corev1.PodConditionType) corev1.ConditionStatus {
	for _, c := range p.Status.Conditions {
		if c.Type == typ {
			return c.Status
		}
	}
	return ""
}

// Ready: the pod runs, is Ready, and is not being deleted.
func Ready(p *corev1.Pod) bool {
	return p.Status.Phase == corev1.PodRunning && Condition(p, corev1.PodReady) == corev1.ConditionTrue && p.DeletionTimestamp == nil
}

// EchoContainer runs the echo image (e2e/echo) on 8080/TCP and 9090/UDP.
func EchoContainer() corev1.Container {
	return corev1.Container{
		Name:  "echo",
		Image: EchoImage,
		Ports: []corev1.ContainerPort{
			{Name: "http", ContainerPort: 8080},
			{Name: "udp", ContainerPort: 9090, Protocol: corev1.ProtocolUDP},
		},
		ReadinessProbe: &corev1.Probe{
			ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromString("http")}},
			PeriodSeconds: 1,
		},
	}
}

// EchoDeployment is a Deployment named labels["app"] of replicas echo pods
// spread over the nodes (at most one more on a node than on another), with
// a 30 s grace period and preStop as the hook (nil: none).
func EchoDeployment(ns string, replicas int32, labels map[string]string, preStop *corev1.LifecycleHandler) *appsv1.Deployment {
	c := EchoContainer()
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

// CreatePod creates the pod (30 s bound) and returns it as created.
func CreatePod(t *testing.T, b *Bed, pod *corev1.Pod) *corev1.Pod {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	p, err := b.Client.CoreV1().Pods(pod.Namespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create pod %s: %v", pod.Name, err)
	}
	return p
}

// WaitPod waits until cond holds for the pod and returns it.
func WaitPod(t *testing.T, b *Bed, ns, name string, timeout time.Duration, what string, cond func(*corev1.Pod) bool) *corev1.Pod {
	t.Helper()
	var got *corev1.Pod
	Poll(t, timeout, fmt.Sprintf("pod %s/%s %s", ns, name, what), func(ctx context.Context) (bool, string) {
		p, err := b.Client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		got = p
		return cond(p), fmt.Sprintf("phase %s, conditions %v", p.Status.Phase, p.Status.Conditions)
	})
	return got
}

// ReadyPods returns the Ready pods of the selector and, second, the state
// of every pod it selects (for a failure message).
func ReadyPods(ctx context.Context, b *Bed, ns, selector string) ([]corev1.Pod, string) {
	l, err := b.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		return nil, err.Error()
	}
	var ready []corev1.Pod
	var states []string
	for _, p := range l.Items {
		states = append(states, fmt.Sprintf("%s on %s ready=%v", p.Name, p.Spec.NodeName, Ready(&p)))
		if Ready(&p) {
			ready = append(ready, p)
		}
	}
	return ready, strings.Join(states, "; ")
}

// PodENI returns the index of the ENI whose pod range holds ip on node, or -1.
func PodENI(topo *testbed.Topology, node, ip string) int {
	n, ok := topo.Node(node)
	if !ok {
		return -1
	}
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return -1
	}
	for i, e := range n.ENIs {
		if e.PodRange.Contains(a) {
			return i
		}
	}
	return -1
}

package tests

// Editing a live direct-access Service costs no traffic: a port added, and
// the targetPort of a serving port changed, while load runs through the
// load balancer and every pod is sampled for readiness.

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/directlb/directlb/e2e/framework"
	"github.com/directlb/directlb/pkg/cloud"
)

// edReplicas echo pods serve HTTP on both 8080 and 8081.
const edReplicas = 3

// TestServiceEditsUnderLoad: port 81 is added to a live Service and serves
// within interval × healthy threshold + 5 s; then port 80's targetPort moves
// from 8080 to 8081. Load through port 80 loses no request, no pod turns
// NotReady, and the load balancer ends with the pods on 8081 only.
func TestServiceEditsUnderLoad(t *testing.T) {
	b := requireCloud(t)
	ns := framework.Namespace(t, b, "e2e-edits")
	framework.StartGateController(t, b, ns)
	framework.DeleteServices(t, b, ns)
	ctx := t.Context()
	labels := map[string]string{"app": "web"}
	svc := framework.GateService(ns, "web", labels, nil)
	svc.Spec.Ports[0].TargetPort = intstr.FromInt32(8080)
	if _, err := b.Client.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	framework.WaitWebhook(t, b, ns, "web", labels)
	edCreateWeb(t, b, ns, labels)
	lc := framework.Cloud(t, b)
	lbIP := edWaitServing(t, b, lc, ns)

	readiness := framework.WatchReadiness(ctx, b, ns, "app=web", "web")
	load := framework.NewLoad("web-")
	lctx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	var wg sync.WaitGroup
	wg.Add(2)
	go load.Run(lctx, "http://"+lbIP+":80/", 50, false, framework.MaxLoad, &wg)
	go load.Run(lctx, "http://"+lbIP+":80/", 50, true, framework.MaxLoad, &wg)
	time.Sleep(3 * time.Second)

	edAddPort81(t, b, ns, lbIP)
	edMoveTargetPort(t, b, lc, ns)
	time.Sleep(5 * time.Second)

	stopLoad()
	wg.Wait()
	samples, notReady := readiness.Finish()
	t.Logf("Service edits under load: %d requests on port 80, %d failed %v; %d readiness samples, %d NotReady",
		load.Total(), load.Failed(), load.Errors(), samples, len(notReady))
	if load.Failed() > 0 {
		t.Errorf("%d of %d requests to the unchanged frontend port failed: %v", load.Failed(), load.Total(), load.Errors())
	}
	if len(notReady) > 0 {
		t.Errorf("pods turned NotReady during the edits: %v", notReady[:min(len(notReady), 20)])
	}
	edNoWarningEvents(t, b, ns)
	if load.Total() < 1000 || samples < 50 {
		t.Errorf("the load or the sampling did not run: %d requests, %d samples", load.Total(), samples)
	}
}

// edCreateWeb creates the web Deployment: edReplicas echo pods that serve
// HTTP on 8080 and 8081.
func edCreateWeb(t *testing.T, b *framework.Bed, ns string, labels map[string]string) {
	ctr := framework.EchoContainer()
	ctr.Ports = append(ctr.Ports, corev1.ContainerPort{Name: "http-alt", ContainerPort: 8081})
	ctr.Env = []corev1.EnvVar{
		{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
		{Name: "ECHO_TCP_PORTS", Value: "8080,8081"},
	}
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: ns},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(int32(edReplicas)),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{ctr}, TerminationGracePeriodSeconds: ptr.To(int64(30))},
			},
		},
	}
	if _, err := b.Client.AppsV1().Deployments(ns).Create(t.Context(), dep, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// edWaitServing waits for the web Service's EXTERNAL-IP, every pod Ready
// and each a healthy target on 8080, and returns the EXTERNAL-IP.
func edWaitServing(t *testing.T, b *framework.Bed, lc cloud.LoadBalancers, ns string) string {
	var lbIP string
	framework.Poll(t, 3*time.Minute, "EXTERNAL-IP, every pod Ready and a healthy target on 8080", func(ctx context.Context) (bool, string) {
		s, err := b.Client.CoreV1().Services(ns).Get(ctx, "web", metav1.GetOptions{})
		if err != nil || len(s.Status.LoadBalancer.Ingress) == 0 {
			return false, fmt.Sprint("no ingress ", err)
		}
		lbIP = s.Status.LoadBalancer.Ingress[0].IP
		ready, states := framework.ReadyPods(ctx, b, ns, "app=web")
		got, why := edHealthyTargets(ctx, lc, ns, "80/TCP")
		return len(ready) == edReplicas && len(got) == edReplicas && edAllOnPort(got, 8080), states + "; " + why
	})
	return lbIP
}

// edAddPort81 adds port 81 → 8081 and wants it served within interval ×
// healthy threshold + 5 s (GateService checks every 5 s, healthy after 2).
func edAddPort81(t *testing.T, b *framework.Bed, ns, lbIP string) {
	edUpdate(t, b, ns, func(s *corev1.Service) {
		s.Spec.Ports = append(s.Spec.Ports, corev1.ServicePort{Name: "alt", Port: 81, TargetPort: intstr.FromInt32(8081)})
	})
	added := time.Now()
	bound := 5*2*time.Second + 5*time.Second
	c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	framework.Poll(t, 2*bound, "port 81 serves", func(context.Context) (bool, string) {
		err := framework.CheckGet(c, "http://"+lbIP+":81/", "web-")
		return err == nil, fmt.Sprint(err)
	})
	if took := time.Since(added); took > bound {
		t.Errorf("the added port served after %.1fs, want within %s (interval × threshold + 5 s)", took.Seconds(), bound)
	} else {
		t.Logf("added port 81 serves %.1fs after the edit", took.Seconds())
	}
}

// edMoveTargetPort moves port 80's targetPort from 8080 to 8081 and waits
// for every pod to be a healthy target on 8081 only.
func edMoveTargetPort(t *testing.T, b *framework.Bed, lc cloud.LoadBalancers, ns string) {
	edUpdate(t, b, ns, func(s *corev1.Service) { s.Spec.Ports[0].TargetPort = intstr.FromInt32(8081) })
	moved := time.Now()
	framework.Poll(t, 2*time.Minute, "port 80's targets all on 8081, healthy", func(ctx context.Context) (bool, string) {
		got, why := edHealthyTargets(ctx, lc, ns, "80/TCP")
		all, _ := edRegistered(ctx, lc, ns, "80/TCP")
		return len(got) == edReplicas && edAllOnPort(got, 8081) && len(all) == edReplicas, why
	})
	t.Logf("targetPort 8080 → 8081: every pod on 8081 only after %.1fs", time.Since(moved).Seconds())
}

// edNoWarningEvents: a targetPort change is not a health regression: the
// old-port targets drain, the new ones register and turn healthy; no
// Warning event on a Service.
func edNoWarningEvents(t *testing.T, b *framework.Bed, ns string) {
	evs, err := b.Client.EventsV1().Events(ns).List(t.Context(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range evs.Items {
		if e.Type == corev1.EventTypeWarning && e.Regarding.Kind == "Service" {
			t.Errorf("Warning event on Service %s during the edits: %s: %s", e.Regarding.Name, e.Reason, e.Note)
		}
	}
}

func edUpdate(t *testing.T, b *framework.Bed, ns string, mutate func(*corev1.Service)) {
	t.Helper()
	s, err := b.Client.CoreV1().Services(ns).Get(t.Context(), "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	mutate(s)
	if _, err := b.Client.CoreV1().Services(ns).Update(t.Context(), s, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// edRegistered lists the targets of the Service's target group for port
// (not draining ones), and edHealthyTargets the healthy ones.
func edRegistered(ctx context.Context, lc cloud.LoadBalancers, ns, port string) ([]cloud.TargetHealth, string) {
	tgs, err := lc.ListTargetGroups(ctx, cloud.Tags{cloud.TagCluster: framework.GateCluster, cloud.TagService: ns + "/web", cloud.TagPort: port})
	if err != nil || len(tgs) != 1 {
		return nil, fmt.Sprintf("target groups for %s: %d %v", port, len(tgs), err)
	}
	th, err := lc.DescribeTargetHealth(ctx, tgs[0].ARN)
	if err != nil {
		return nil, err.Error()
	}
	var out []cloud.TargetHealth
	for _, h := range th {
		if h.State != cloud.TargetDraining {
			out = append(out, h)
		}
	}
	return out, fmt.Sprint(th)
}

func edHealthyTargets(ctx context.Context, lc cloud.LoadBalancers, ns, port string) ([]cloud.TargetHealth, string) {
	all, why := edRegistered(ctx, lc, ns, port)
	return slices.DeleteFunc(all, func(h cloud.TargetHealth) bool { return h.State != cloud.TargetHealthy }), why
}

func edAllOnPort(th []cloud.TargetHealth, port int32) bool {
	for _, h := range th {
		if h.Port != port {
			return false
		}
	}
	return true
}

// Package examples_test checks the example manifests: they decode strictly
// into their Kubernetes types, the Service is a direct-access Service whose
// annotations pass directlb's validation and model, and its selector and
// target port match the Deployment's pods.
package examples_test

import (
	"os"
	"testing"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"

	"github.com/directlb/directlb/pkg/controller"
	"github.com/directlb/directlb/pkg/readinessgate"
	"github.com/directlb/directlb/pkg/service"
)

func decode(t *testing.T, file string, into any) {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict(b, into); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
}

func TestExamples(t *testing.T) {
	var dep appsv1.Deployment
	var svc corev1.Service
	decode(t, "echo-deployment.yaml", &dep)
	decode(t, "echo-service.yaml", &svc)
	svc.Namespace = "default"

	if dep.Spec.Replicas == nil || *dep.Spec.Replicas != 3 {
		t.Errorf("replicas %v, want 3", dep.Spec.Replicas)
	}
	pod := dep.Spec.Template
	if !labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(pod.Labels)) {
		t.Errorf("Service selector %v does not select the pods %v", svc.Spec.Selector, pod.Labels)
	}
	c := pod.Spec.Containers[0]
	if c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet == nil || c.ReadinessProbe.HTTPGet.Path != "/healthz" {
		t.Errorf("readiness probe %+v, want httpGet /healthz", c.ReadinessProbe)
	}
	var ports []int32
	for _, p := range c.Ports {
		if p.Name == svc.Spec.Ports[0].TargetPort.StrVal {
			ports = append(ports, p.ContainerPort)
		}
	}
	if diff := cmp.Diff([]int32{8080}, ports); diff != "" {
		t.Errorf("target port %v resolves to container ports (-want +got):\n%s", svc.Spec.Ports[0].TargetPort, diff)
	}

	if svc.Spec.Type != corev1.ServiceTypeLoadBalancer || !service.IsDirectAccess(svc.Annotations) {
		t.Fatalf("Service is %s with annotations %v; want a direct-access LoadBalancer", svc.Spec.Type, svc.Annotations)
	}
	defaults := controller.DefaultConfig()
	if !service.Wanted(&svc, service.ClassFilter{Classes: defaults.LoadBalancerClasses, Default: defaults.ManageDefaultClass}) {
		t.Errorf("the controller's defaults do not own the example Service")
	}
	opts, err := service.ParseAnnotations(svc.Annotations)
	if err != nil {
		t.Fatalf("annotations: %v", err)
	}
	// The example's own defaults agree: its pods raise no drain warning.
	examplePod := &corev1.Pod{Spec: pod.Spec}
	margin := int64(readinessgate.DefaultConfig().DrainMargin.Seconds())
	if msg := readinessgate.GraceWarning(examplePod, int64(opts.DeregistrationDelaySeconds), margin); msg != "" {
		t.Errorf("the example's pods would get a DrainExceedsGracePeriod warning: %s", msg)
	}
	if opts.HealthCheck.Path != "/healthz" {
		t.Errorf("health check path %q, want /healthz", opts.HealthCheck.Path)
	}
	if _, err := service.Build(&svc, service.Config{ClusterName: "examples"}); err != nil {
		t.Errorf("model: %v", err)
	}
}

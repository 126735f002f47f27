package framework

import (
	"context"
	"fmt"
	"maps"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/directlb/directlb/pkg/service"
)

// Service is a ClusterIP Service of port 80 (http) to the pods' 8080.
func Service(ns, name string, selector map[string]string) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.ServiceSpec{
			Selector: selector,
			Ports:    []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}},
		},
	}
}

// DirectAccessService is a LoadBalancer Service of directlb's class,
// direct-access, with an HTTP health check of /healthz every 5 s (healthy
// after 2), port 80 (http) to the pods' "http"; annotations add to or
// override these.
func DirectAccessService(ns, name string, selector map[string]string, annotations map[string]string) *corev1.Service {
	ann := map[string]string{
		service.AnnotationDirectAccess:       "true",
		service.AnnotationHCProtocol:         "HTTP",
		service.AnnotationHCPath:             "/healthz",
		service.AnnotationHCInterval:         "5",
		service.AnnotationHCHealthyThreshold: "2",
	}
	maps.Copy(ann, annotations)
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Annotations: ann},
		Spec: corev1.ServiceSpec{
			Type:              corev1.ServiceTypeLoadBalancer,
			LoadBalancerClass: ptr.To(service.LoadBalancerClass),
			Selector:          selector,
			Ports:             []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromString("http")}},
		},
	}
}

// GateService is the readiness-gate tests' DirectAccessService: a 2 s
// check timeout, unhealthy after 2 failures, and a 5 s deregistration
// delay; extra adds or overrides annotations.
func GateService(ns, name string, selector map[string]string, extra map[string]string) *corev1.Service {
	ann := map[string]string{
		service.AnnotationHCTimeout:            "2",
		service.AnnotationHCUnhealthyThreshold: "2",
		service.AnnotationDeregistrationDelay:  "5",
	}
	maps.Copy(ann, extra)
	return DirectAccessService(ns, name, selector, ann)
}

// EndpointSlices lists the Service's EndpointSlices.
func EndpointSlices(ctx context.Context, b *Bed, ns, svc string) ([]discoveryv1.EndpointSlice, error) {
	l, err := b.Client.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + svc})
	if err != nil {
		return nil, err
	}
	return l.Items, nil
}

// Endpoints maps each address of the Service's EndpointSlices to its
// ready condition.
func Endpoints(ctx context.Context, b *Bed, ns, svc string) (map[string]bool, error) {
	slices, err := EndpointSlices(ctx, b, ns, svc)
	if err != nil {
		return nil, err
	}
	out := map[string]bool{}
	for _, s := range slices {
		for _, e := range s.Endpoints {
			for _, a := range e.Addresses {
				out[a] = e.Conditions.Ready != nil && *e.Conditions.Ready
			}
		}
	}
	return out, nil
}

// DeleteServices deletes the namespace's Services at cleanup and waits
// until the controller has removed their cloud resources (finalizer gone).
// Register it after the controller's start so it runs while the
// controller still does.
func DeleteServices(t *testing.T, b *Bed, ns string) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		if l, err := b.Client.CoreV1().Services(ns).List(ctx, metav1.ListOptions{}); err == nil {
			for _, s := range l.Items {
				_ = b.Client.CoreV1().Services(ns).Delete(ctx, s.Name, metav1.DeleteOptions{})
			}
		}
		for ctx.Err() == nil {
			l, err := b.Client.CoreV1().Services(ns).List(ctx, metav1.ListOptions{})
			if err == nil && len(l.Items) == 0 {
				return
			}
			time.Sleep(300 * time.Millisecond)
		}
		t.Errorf("services of %s not deleted within 60s (cloud cleanup)", ns)
	})
}

// WaitExternalIP waits until the Service has a load-balancer ingress IP
// (its EXTERNAL-IP) and returns it.
func WaitExternalIP(t *testing.T, b *Bed, ns, name string, timeout time.Duration) string {
	t.Helper()
	var lbIP string
	Poll(t, timeout, "EXTERNAL-IP", func(ctx context.Context) (bool, string) {
		s, err := b.Client.CoreV1().Services(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		if ing := s.Status.LoadBalancer.Ingress; len(ing) > 0 {
			lbIP = ing[0].IP
		}
		return lbIP != "", fmt.Sprintf("status %+v", s.Status)
	})
	return lbIP
}

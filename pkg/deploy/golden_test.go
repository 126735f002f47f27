package deploy

import (
	"context"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"

	"github.com/directlb/directlb/internal/golden"
	"github.com/directlb/directlb/pkg/cloud/fake"
	"github.com/directlb/directlb/pkg/service"
)

// TestGoldenCalls records the model and the cloud calls for a few
// representative Services, so a change to the model or to the deploy order
// shows as a diff of testdata/. After an intended change:
//
//	go test ./pkg/deploy -update
//
// and review the diff in the same commit.
func TestGoldenCalls(t *testing.T) {
	web := newService("web", func(s *corev1.Service) { s.Spec.Ports = s.Spec.Ports[:1] })
	tests := []struct {
		name string
		from *corev1.Service // deployed first, calls not recorded; nil = empty cloud
		to   *corev1.Service // nil = Delete
	}{
		{name: "create-tcp", to: web},
		{name: "create-tcp-udp", to: newService("dns", func(s *corev1.Service) {
			s.Spec.Ports = append(s.Spec.Ports, corev1.ServicePort{Name: "dns-tcp", Protocol: corev1.ProtocolTCP, Port: 53, TargetPort: intstr.FromInt32(5353)})
		})},
		{name: "create-internal-http-health-check", to: newService("api", func(s *corev1.Service) {
			s.Spec.Ports = s.Spec.Ports[:1]
			for k, v := range map[string]string{
				service.AnnotationScheme: "internal", service.AnnotationHCProtocol: "HTTP", service.AnnotationHCPath: "/healthz",
				service.AnnotationHCPort: "8081", service.AnnotationHCInterval: "5", service.AnnotationHCHealthyThreshold: "2",
				service.AnnotationDeregistrationDelay: "60",
			} {
				s.Annotations[k] = v
			}
		})},
		{name: "update-target-port", from: web, to: newService("web", func(s *corev1.Service) {
			s.Spec.Ports = s.Spec.Ports[:1]
			s.Spec.Ports[0].TargetPort = intstr.FromInt32(9090)
		})},
		{name: "delete", from: newService("web")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			golden.Check(t, tt.name+".yaml", goldenPassOf(t, tt.from, tt.to))
		})
	}
}

// goldenPassOf deploys from on an empty fake cloud, then records one pass
// to to (a Delete of from's resources when to is nil): YAML documents of
// the Service, the model service.Build makes of it, and the cloud calls of
// the pass in order.
func goldenPassOf(t *testing.T, from, to *corev1.Service) []byte {
	t.Helper()
	ctx := context.Background()
	c := fake.New()
	d := &Deployer{Cloud: c}
	if from != nil {
		if _, err := d.Deploy(ctx, build(t, from)); err != nil {
			t.Fatal(err)
		}
	}
	c.Record()
	var out []byte
	section := func(comment string, v any) {
		b, err := yaml.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		if len(out) > 0 {
			out = append(out, "---\n"...)
		}
		out = append(append(out, "# "+comment+"\n"...), b...)
	}
	if to == nil {
		section("The Service, deleted.", serviceOf(from))
		if _, err := d.Delete(ctx, build(t, from).Spec.Tags); err != nil {
			t.Fatal(err)
		}
		section("The cloud calls of one Delete pass, in order.", c.Log())
		return out
	}
	lb := build(t, to)
	section("The Service.", serviceOf(to))
	section("The model: service.Build of the Service.", lb)
	if _, err := d.Deploy(ctx, lb); err != nil {
		t.Fatal(err)
	}
	section("The cloud calls of one Deploy pass, in order.", c.Log())
	return out
}

// serviceOf is the part of s the model reads.
func serviceOf(s *corev1.Service) any {
	return map[string]any{"name": s.Namespace + "/" + s.Name, "annotations": s.Annotations, "ports": s.Spec.Ports}
}

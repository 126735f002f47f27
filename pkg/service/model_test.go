package service

import (
	"errors"
	"regexp"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/directlb/directlb/pkg/cloud"
)

func svc(ports ...corev1.ServicePort) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web",
			Annotations: map[string]string{AnnotationDirectAccess: "true"}},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, Ports: ports},
	}
}

func TestBuild(t *testing.T) {
	cfg := Config{ClusterName: "c1", VPCID: "vpc-1"}
	owner := cloud.Tags{cloud.TagCluster: "c1", cloud.TagService: "shop/web"}
	withPort := func(key string) cloud.Tags {
		return cloud.Tags{cloud.TagCluster: "c1", cloud.TagService: "shop/web", cloud.TagPort: key}
	}
	hc := defaults().HealthCheck
	lbName := LoadBalancerName("c1", "shop", "web")

	tests := []struct {
		name string
		svc  *corev1.Service
		want LoadBalancer
	}{
		{
			name: "one tcp port with a numeric target port",
			svc:  svc(corev1.ServicePort{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(8080)}),
			want: LoadBalancer{
				Spec:      cloud.LoadBalancerSpec{Name: lbName, Scheme: SchemeInternetFacing, Tags: owner},
				Listeners: []Listener{{Protocol: cloud.ProtocolTCP, Port: 80, PortKey: "80/TCP", Tags: withPort("80/TCP")}},
				TargetGroups: []TargetGroup{{
					PortKey: "80/TCP",
					Spec: cloud.TargetGroupSpec{Name: targetGroupName("c1", svc(), "80/TCP", cloud.ProtocolTCP, 8080),
						Protocol: cloud.ProtocolTCP, Port: 8080, VPCID: "vpc-1", HealthCheck: hc,
						DeregistrationDelaySeconds: 20, Tags: withPort("80/TCP")},
					Ports: []Port{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(8080)}},
				}},
			},
		},
		{
			name: "tcp and udp on one number share a TCP_UDP listener; named and default target ports",
			svc: svc(
				corev1.ServicePort{Name: "dns-tcp", Protocol: corev1.ProtocolTCP, Port: 53},
				corev1.ServicePort{Name: "dns-udp", Protocol: corev1.ProtocolUDP, Port: 53},
				corev1.ServicePort{Name: "metrics", Protocol: corev1.ProtocolUDP, Port: 9000, TargetPort: intstr.FromString("m")},
			),
			want: LoadBalancer{
				Spec: cloud.LoadBalancerSpec{Name: lbName, Scheme: SchemeInternetFacing, Tags: owner},
				Listeners: []Listener{
					{Protocol: cloud.ProtocolTCPUDP, Port: 53, PortKey: "53/TCP_UDP", Tags: withPort("53/TCP_UDP")},
					{Protocol: cloud.ProtocolUDP, Port: 9000, PortKey: "9000/UDP", Tags: withPort("9000/UDP")},
				},
				TargetGroups: []TargetGroup{
					{
						PortKey: "53/TCP_UDP",
						Spec: cloud.TargetGroupSpec{Name: targetGroupName("c1", svc(), "53/TCP_UDP", cloud.ProtocolTCPUDP, 53),
							Protocol: cloud.ProtocolTCPUDP, Port: 53, VPCID: "vpc-1", HealthCheck: hc,
							DeregistrationDelaySeconds: 20, Tags: withPort("53/TCP_UDP")},
						Ports: []Port{
							{Name: "dns-tcp", Protocol: corev1.ProtocolTCP, Port: 53, TargetPort: intstr.FromInt32(53)},
							{Name: "dns-udp", Protocol: corev1.ProtocolUDP, Port: 53, TargetPort: intstr.FromInt32(53)},
						},
					},
					{
						PortKey: "9000/UDP",
						Spec: cloud.TargetGroupSpec{Name: targetGroupName("c1", svc(), "9000/UDP", cloud.ProtocolUDP, 9000),
							Protocol: cloud.ProtocolUDP, Port: 9000, VPCID: "vpc-1", HealthCheck: hc,
							DeregistrationDelaySeconds: 20, Tags: withPort("9000/UDP")},
						Ports: []Port{{Name: "metrics", Protocol: corev1.ProtocolUDP, Port: 9000, TargetPort: intstr.FromString("m")}},
					},
				},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Build(tt.svc, cfg)
			if err != nil {
				t.Fatal(err)
			}
			tt.want.Options = defaults()
			tt.want.Options.DirectAccess = true
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Build (-want +got):\n%s", diff)
			}
		})
	}
}

func TestBuildInvalid(t *testing.T) {
	s := svc(
		corev1.ServicePort{Name: "a", Protocol: corev1.ProtocolTCP, Port: 53, TargetPort: intstr.FromInt32(1053)},
		corev1.ServicePort{Name: "b", Protocol: corev1.ProtocolUDP, Port: 53, TargetPort: intstr.FromInt32(2053)},
		corev1.ServicePort{Name: "c", Protocol: corev1.ProtocolSCTP, Port: 99},
	)
	s.Annotations[AnnotationScheme] = "public"
	_, err := Build(s, Config{ClusterName: "c1"})
	var ic *InvalidConfigError
	ok := errors.As(err, &ic)
	if !ok {
		t.Fatalf("err = %v, want *InvalidConfigError", err)
	}
	want := []FieldError{
		{AnnotationScheme, "public", `allowed values are "internet-facing", "internal"`},
		{"spec.ports[1].targetPort", "2053", "a TCP and a UDP port with the same number (53) share one TCP_UDP listener, so they need the same targetPort (1053)"},
		{"spec.ports[2].protocol", "SCTP", `direct-access load balancers support "TCP" and "UDP"`},
	}
	if diff := cmp.Diff(want, ic.Problems); diff != "" {
		t.Errorf("problems (-want +got):\n%s", diff)
	}
}

func TestNames(t *testing.T) {
	valid := regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,30}[a-z0-9]$`)
	long := "a-very-long-namespace-name-that-goes-on-and-on"
	names := map[string]bool{}
	for _, in := range [][3]string{
		{"c1", "shop", "web"}, {"c2", "shop", "web"}, {"c1", "shop", "web2"},
		{"c1", long, long}, {"c1", long, long + "x"}, {"c1", "shop-", "-web"},
	} {
		n := LoadBalancerName(in[0], in[1], in[2])
		if !valid.MatchString(n) {
			t.Errorf("LoadBalancerName%v = %q: not a valid cloud name (≤ 32, [a-z0-9-], no hyphen at the ends)", in, n)
		}
		if n != LoadBalancerName(in[0], in[1], in[2]) {
			t.Errorf("LoadBalancerName%v is not deterministic", in)
		}
		if names[n] {
			t.Errorf("LoadBalancerName%v = %q collides", in, n)
		}
		names[n] = true
	}
	s := svc()
	s.Name = long
	for _, port := range []int32{1, 65535} {
		n := targetGroupName("c1", s, "65535/TCP_UDP", cloud.ProtocolTCPUDP, port)
		if !valid.MatchString(n) {
			t.Errorf("targetGroupName = %q: not a valid cloud name", n)
		}
	}
	if targetGroupName("c1", s, "80/TCP", cloud.ProtocolTCP, 8080) == targetGroupName("c1", s, "80/TCP", cloud.ProtocolTCP, 8081) {
		t.Error("a new target port must give a new target group name")
	}
}

func TestWanted(t *testing.T) {
	class := func(s string) *string { return &s }
	tests := []struct {
		name   string
		mutate func(*corev1.Service)
		filter ClassFilter
		want   bool
	}{
		{"direct, no class, default owned", func(*corev1.Service) {}, ClassFilter{Default: true}, true},
		{"default not owned", func(*corev1.Service) {}, ClassFilter{}, false},
		{"owned class", func(s *corev1.Service) { s.Spec.LoadBalancerClass = class("directlb.io/nlb") }, ClassFilter{Classes: []string{"directlb.io/nlb"}}, true},
		{"other class", func(s *corev1.Service) { s.Spec.LoadBalancerClass = class("other") }, ClassFilter{Default: true, Classes: []string{"directlb.io/nlb"}}, false},
		{"not direct", func(s *corev1.Service) { s.Annotations[AnnotationDirectAccess] = "True" }, ClassFilter{Default: true}, false},
		{"cluster ip", func(s *corev1.Service) { s.Spec.Type = corev1.ServiceTypeClusterIP }, ClassFilter{Default: true}, false},
		{"deleting", func(s *corev1.Service) { now := metav1.Now(); s.DeletionTimestamp = &now }, ClassFilter{Default: true}, false},
	}
	for _, tt := range tests {
		s := svc()
		tt.mutate(s)
		if got := Wanted(s, tt.filter); got != tt.want {
			t.Errorf("%s: Wanted = %v, want %v", tt.name, got, tt.want)
		}
	}
}

// A class-less direct-access Service that already carries the finalizer (an
// upgrade from a release that owned class-less Services) stays owned by a
// controller with the default class, so the upgrade deletes no load
// balancer; a new class-less one is not claimed, nor does a controller with
// only classes of its own adopt it.
func TestWantedAdoptsClasslessServicesWithTheFinalizer(t *testing.T) {
	svc := func(class *string, finalizers ...string) *corev1.Service {
		return &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "ns", Finalizers: finalizers,
				Annotations: map[string]string{AnnotationDirectAccess: "true"}},
			Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, LoadBalancerClass: class},
		}
	}
	cls := func(s string) *string { return &s }
	defaults := ClassFilter{Classes: []string{LoadBalancerClass}}
	own := ClassFilter{Classes: []string{"example.com/lb"}}
	for _, tc := range []struct {
		name string
		svc  *corev1.Service
		f    ClassFilter
		want bool
	}{
		{"the class", svc(cls(LoadBalancerClass)), defaults, true},
		{"class-less, new", svc(nil), defaults, false},
		{"class-less, with the finalizer", svc(nil, Finalizer), defaults, true},
		{"class-less, someone else's finalizer", svc(nil, "example.com/other"), defaults, false},
		{"class-less with the finalizer, a controller of other classes", svc(nil, Finalizer), own, false},
		{"another class with the finalizer", svc(cls("example.com/x"), Finalizer), defaults, false},
	} {
		if got := Wanted(tc.svc, tc.f); got != tc.want {
			t.Errorf("%s: Wanted = %v, want %v", tc.name, got, tc.want)
		}
	}
}

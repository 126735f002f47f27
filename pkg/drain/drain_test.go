package drain

import (
	"context"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	"github.com/directlb/directlb/pkg/cloud"
	cloudfake "github.com/directlb/directlb/pkg/cloud/fake"
	"github.com/directlb/directlb/pkg/deploy"
	"github.com/directlb/directlb/pkg/readinessgate"
	"github.com/directlb/directlb/pkg/service"
)

type groups map[types.NamespacedName][]deploy.TargetGroup

func (g groups) Get(k types.NamespacedName) []deploy.TargetGroup { return g[k] }

func pod(name, token, ip string, deleting bool) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name,
			Annotations: map[string]string{readinessgate.AnnotationDrainToken: token}},
		Spec:   corev1.PodSpec{ReadinessGates: []corev1.PodReadinessGate{{ConditionType: service.ReadinessGateType("web")}}},
		Status: corev1.PodStatus{PodIP: ip},
	}
	if deleting {
		p.DeletionTimestamp = ptr.To(metav1.Now())
		p.DeletionGracePeriodSeconds = ptr.To[int64](30)
		p.Finalizers = []string{"test/keep"}
	}
	return p
}

func TestWait(t *testing.T) {
	ctx := context.Background()
	fc := cloudfake.New()
	lb, _ := fc.CreateLoadBalancer(ctx, cloud.LoadBalancerSpec{Name: "lb"})
	tg, _ := fc.CreateTargetGroup(ctx, cloud.TargetGroupSpec{Name: "tg", Protocol: cloud.ProtocolTCP, Port: 8080})
	if _, err := fc.CreateListener(ctx, cloud.ListenerSpec{LoadBalancerARN: lb.ARN, Protocol: cloud.ProtocolTCP, Port: 80, TargetGroupARN: tg.ARN}); err != nil {
		t.Fatal(err)
	}
	for _, ip := range []string{"10.0.0.1", "10.0.0.2", "10.0.0.3"} {
		if err := fc.RegisterTargets(ctx, tg.ARN, []cloud.Target{{IP: ip, Port: 8080}}); err != nil {
			t.Fatal(err)
		}
	}
	reader := fake.NewClientBuilder().WithIndex(&corev1.Pod{}, IndexToken, indexToken).WithObjects(
		pod("draining", "t1", "10.0.0.1", true),
		pod("stuck", "t2", "10.0.0.2", true),
		pod("restarting", "t3", "10.0.0.3", false),
		pod("gone", "t4", "10.0.0.4", true),
	).Build()
	w := &Waiter{
		Reader:       reader,
		Cloud:        fc,
		TargetGroups: groups{{Namespace: "ns", Name: "web"}: {{ARN: tg.ARN}}},
		Config:       Config{MaxWait: 1500 * time.Millisecond, PollInterval: 100 * time.Millisecond},
	}
	// The target of "draining" leaves the load balancer 500 ms from now.
	go func() {
		time.Sleep(500 * time.Millisecond)
		_ = fc.DeregisterTargets(ctx, tg.ARN, []cloud.Target{{IP: "10.0.0.1", Port: 8080}})
	}()
	tests := []struct {
		name, token string
		want        string
		min, max    time.Duration
	}{
		{"waits until the target left", "t1", ResultDrained, 400 * time.Millisecond, 1200 * time.Millisecond},
		{"ceiling", "t2", ResultTimeout, 1400 * time.Millisecond, 3 * time.Second},
		{"container restart, not a deletion", "t3", ResultNotTarget, 0, 200 * time.Millisecond},
		{"not a target any more", "t4", ResultDrained, 0, 500 * time.Millisecond},
		{"unknown token", "nope", ResultNotTarget, 0, 200 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			start := time.Now()
			got, msg := w.Wait(ctx, "ns", tt.token)
			took := time.Since(start)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("result (-want +got):\n%s (%s)", diff, msg)
			}
			if took < tt.min || took > tt.max {
				t.Errorf("took %s, want %s..%s", took, tt.min, tt.max)
			}
		})
	}
}

// TestConfigHook: where the injected hook goes for each flag combination,
// and which are refused.
func TestConfigHook(t *testing.T) {
	tests := []struct {
		name    string
		mod     func(*Config)
		want    readinessgate.DrainHook
		wantErr bool
	}{
		{"no host, no service: no hook", func(*Config) {}, readinessgate.DrainHook{}, false},
		{"host", func(c *Config) { c.Host = "10.100.0.2" },
			readinessgate.DrainHook{Host: "10.100.0.2", Port: 8082, Scheme: corev1.URISchemeHTTP}, false},
		{"service", func(c *Config) { c.Service = "sys/drain" },
			readinessgate.DrainHook{Service: types.NamespacedName{Namespace: "sys", Name: "drain"}, Port: 8082, Scheme: corev1.URISchemeHTTP}, false},
		{"host wins over service", func(c *Config) { c.Host = "10.0.0.1"; c.Service = "sys/drain" },
			readinessgate.DrainHook{Host: "10.0.0.1", Port: 8082, Scheme: corev1.URISchemeHTTP}, false},
		{"endpoint off", func(c *Config) { c.Service = "sys/drain"; c.BindAddress = "0" }, readinessgate.DrainHook{}, false},
		{"bad service", func(c *Config) { c.Service = "drain" }, readinessgate.DrainHook{}, true},
		{"bad port", func(c *Config) { c.Service = "sys/drain"; c.Port = 0 }, readinessgate.DrainHook{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := DefaultConfig()
			tt.mod(&c)
			if err := c.Validate(); (err != nil) != tt.wantErr {
				t.Fatalf("Validate: %v, want error %v", err, tt.wantErr)
			}
			if tt.wantErr {
				return
			}
			if diff := cmp.Diff(tt.want, c.Hook()); diff != "" {
				t.Errorf("Hook (-want +got):\n%s", diff)
			}
		})
	}
}

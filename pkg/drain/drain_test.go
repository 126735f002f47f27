package drain

import (
	"context"
	"io"
	"net/http"
	"strings"
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
	"github.com/directlb/directlb/pkg/targethealth"
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
		Health:       targethealth.NewCache(fc, 0),
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

// noListing is a cloud on which listing the account fails the test: a
// drain never scans the account.
type noListing struct {
	*cloudfake.Cloud
	t *testing.T
}

func (n noListing) ListTargetGroups(context.Context, cloud.Tags) ([]cloud.TargetGroup, error) {
	n.t.Error("drain listed the account's target groups")
	return nil, nil
}

// drainSetup is one Service "web" with one target group holding 10.0.0.1
// (the pod "draining", deleting, token t1), and a stuck pod (10.0.0.2,
// token t2) whose target never leaves.
func drainSetup(t *testing.T, record bool) (*cloudfake.Cloud, string, *Waiter) {
	t.Helper()
	ctx := context.Background()
	fc := cloudfake.New()
	tg, _ := fc.CreateTargetGroup(ctx, cloud.TargetGroupSpec{Name: "tg", Protocol: cloud.ProtocolTCP, Port: 8080})
	for _, ip := range []string{"10.0.0.1", "10.0.0.2"} {
		if err := fc.RegisterTargets(ctx, tg.ARN, []cloud.Target{{IP: ip, Port: 8080}}); err != nil {
			t.Fatal(err)
		}
	}
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web"}}
	if record {
		svc.Annotations = map[string]string{service.AnnotationTargetGroups: service.RecordTargetGroups([]string{tg.ARN})}
	}
	reader := fake.NewClientBuilder().WithIndex(&corev1.Pod{}, IndexToken, indexToken).WithObjects(
		svc, pod("draining", "t1", "10.0.0.1", true), pod("stuck", "t2", "10.0.0.2", true)).Build()
	w := &Waiter{
		Reader:       reader,
		Health:       targethealth.NewCache(noListing{fc, t}, 0),
		TargetGroups: groups{}, // a standby: its registry is empty
		Config:       Config{BindAddress: "127.0.0.1:0", MaxWait: 10 * time.Second, PollInterval: 100 * time.Millisecond, ShutdownDelay: 5 * time.Second},
	}
	return fc, tg.ARN, w
}

// A replica that is not the leader (empty registry) answers from the
// target groups recorded on the Service, and never lists the account.
func TestWaitOnStandby(t *testing.T) {
	ctx := context.Background()
	fc, arn, w := drainSetup(t, true)
	go func() {
		time.Sleep(300 * time.Millisecond)
		_ = fc.DeregisterTargets(ctx, arn, []cloud.Target{{IP: "10.0.0.1", Port: 8080}})
	}()
	start := time.Now()
	if got, msg := w.Wait(ctx, "ns", "t1"); got != ResultDrained || time.Since(start) < 250*time.Millisecond {
		t.Fatalf("Wait = %s (%s) after %s, want drained after the deregistration", got, msg, time.Since(start))
	}

	// Without a record and without a registry entry there is nothing to
	// wait on (and still no listing).
	_, _, bare := drainSetup(t, false)
	if got, _ := bare.Wait(ctx, "ns", "t1"); got != ResultNotTarget {
		t.Fatalf("no record: Wait = %s, want %s", got, ResultNotTarget)
	}
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// startWaiter runs w.Start until the returned cancel; done reports its end.
func startWaiter(t *testing.T, w *Waiter) (cancel func(), done <-chan error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- w.Start(ctx) }()
	for w.Checker(nil) != nil {
		time.Sleep(10 * time.Millisecond)
	}
	return cancel, errc
}

// Told to stop, the endpoint keeps answering the waits in flight for up to
// the shutdown delay: a controller rollout does not cut a pod's drain
// short. Its readiness check fails at once.
func TestShutdownKeepsWaitsInFlight(t *testing.T) {
	ctx := context.Background()
	fc, arn, w := drainSetup(t, true)
	if w.Checker(nil) == nil {
		t.Fatal("ready before serving")
	}
	stop, done := startWaiter(t, w)
	type answer struct {
		code int
		body string
	}
	got := make(chan answer, 1)
	go func() {
		code, body := get(t, "http://"+w.Addr()+"/drain/ns/t1")
		got <- answer{code, body}
	}()
	time.Sleep(200 * time.Millisecond) // the wait is in flight
	stopped := time.Now()
	stop()
	time.Sleep(100 * time.Millisecond)
	if w.Checker(nil) == nil {
		t.Error("still ready after the stop")
	}
	// A new wait is still taken during the delay.
	if code, body := get(t, "http://"+w.Addr()+"/drain/ns/unknown"); code != http.StatusOK || !strings.HasPrefix(body, ResultNotTarget) {
		t.Errorf("new wait during the delay: %d %q", code, body)
	}
	time.Sleep(700 * time.Millisecond)
	if err := fc.DeregisterTargets(ctx, arn, []cloud.Target{{IP: "10.0.0.1", Port: 8080}}); err != nil {
		t.Fatal(err)
	}
	a := <-got
	if a.code != http.StatusOK || !strings.HasPrefix(a.body, ResultDrained) {
		t.Fatalf("wait in flight at the stop: %d %q, want 200 drained", a.code, a.body)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// It stopped once nothing was in flight, well before the 5 s delay.
	if took := time.Since(stopped); took > 3*time.Second {
		t.Fatalf("stopped %s after the stop, want soon after the last wait", took)
	}
}

// Past the shutdown delay a wait still in flight is answered 503
// (shutdown), not a 200 the kubelet would take for a finished drain.
func TestShutdownDelayEnds(t *testing.T) {
	_, _, w := drainSetup(t, true)
	w.Config.ShutdownDelay = 400 * time.Millisecond
	stop, done := startWaiter(t, w)
	type answer struct {
		code int
		body string
	}
	got := make(chan answer, 1)
	go func() {
		code, body := get(t, "http://"+w.Addr()+"/drain/ns/t2")
		got <- answer{code, body}
	}()
	time.Sleep(200 * time.Millisecond)
	stopped := time.Now()
	stop()
	a := <-got
	took := time.Since(stopped)
	if a.code != http.StatusServiceUnavailable || !strings.HasPrefix(a.body, ResultShutdown) {
		t.Fatalf("stuck wait at the end of the delay: %d %q, want 503 shutdown", a.code, a.body)
	}
	if took < 350*time.Millisecond || took > 2*time.Second {
		t.Fatalf("answered %s after the stop, want at the 400 ms delay", took)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// With nothing in flight the endpoint still takes new waits for
// ListenAfterStop (the drain Service is letting go of the replica).
func TestShutdownListensAfterStop(t *testing.T) {
	_, _, w := drainSetup(t, true)
	w.ListenAfterStop = 500 * time.Millisecond
	stop, done := startWaiter(t, w)
	stopped := time.Now()
	stop()
	time.Sleep(200 * time.Millisecond)
	if code, _ := get(t, "http://"+w.Addr()+"/drain/ns/unknown"); code != http.StatusOK {
		t.Errorf("new wait 200 ms after the stop: %d, want 200", code)
	}
	<-done
	if took := time.Since(stopped); took < 450*time.Millisecond || took > 2*time.Second {
		t.Fatalf("stopped %s after the stop, want after ListenAfterStop (500 ms)", took)
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
		{"shutdown delay past the ceiling", func(c *Config) { c.Service = "sys/drain"; c.ShutdownDelay = 10 * time.Minute }, readinessgate.DrainHook{}, true},
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

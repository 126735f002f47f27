package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap/zaptest"
	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/utils/ptr"

	"github.com/directlb/directlb/pkg/datapath"
)

func lbLocal(mut ...func(*v1.Service)) *v1.Service {
	return service(append([]func(*v1.Service){func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeLoadBalancer
		s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
		s.Spec.HealthCheckNodePort = 32100
		s.Spec.Ports[0].NodePort = 30080
	}}, mut...)...)
}

func TestDesiredHealthCheck(t *testing.T) {
	twoPorts := func(s *v1.Service) {
		s.Spec.Ports = append(s.Spec.Ports, v1.ServicePort{Name: "https", Port: 443, Protocol: v1.ProtocolTCP, NodePort: 30443})
	}
	httpsSlice := func(eps ...ep) *discoveryv1.EndpointSlice {
		s := slice("web-https", 8443, eps...)
		s.Ports[0].Name = ptr.To("https")
		return s
	}
	cases := []struct {
		name   string
		svc    *v1.Service
		slices []*discoveryv1.EndpointSlice
		want   HealthCheck
		wantOK bool
	}{
		{name: "ClusterIP Service: none", svc: service()},
		{name: "LoadBalancer, externalTrafficPolicy Cluster: none", svc: lbLocal(func(s *v1.Service) {
			s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyCluster
			s.Spec.HealthCheckNodePort = 0
		})},
		{name: "NodePort with Local: none (the apiserver allocates it for LoadBalancer only)", svc: lbLocal(func(s *v1.Service) { s.Spec.Type = v1.ServiceTypeNodePort })},
		{name: "Local without a port: none", svc: lbLocal(func(s *v1.Service) { s.Spec.HealthCheckNodePort = 0 })},
		{name: "another proxy's: none", svc: lbLocal(func(s *v1.Service) { s.Labels = map[string]string{LabelServiceProxyName: "x"} })},
		{name: "no endpoints: 0", svc: lbLocal(), want: HealthCheck{Port: 32100}, wantOK: true},
		{
			name:   "ready endpoints here count, elsewhere not",
			svc:    lbLocal(),
			slices: []*discoveryv1.EndpointSlice{slice("web-a", 8080, ready("10.1.0.1", ""), ready("10.1.0.2", ""), ready("10.1.0.3", "node-2"))},
			want:   HealthCheck{Port: 32100, LocalEndpoints: 2}, wantOK: true,
		},
		{
			name:   "terminating endpoints do not count, even serving (kube-proxy: fail the check before they go)",
			svc:    lbLocal(),
			slices: []*discoveryv1.EndpointSlice{slice("web-a", 8080, terminating("10.1.0.1", "", true), terminating("10.1.0.2", "", false))},
			want:   HealthCheck{Port: 32100}, wantOK: true,
		},
		{
			name:   "ready and terminating (publishNotReadyAddresses) counts",
			svc:    lbLocal(),
			slices: []*discoveryv1.EndpointSlice{slice("web-a", 8080, ep{addr: "10.1.0.1", ready: yes, serving: yes, terminating: yes})},
			want:   HealthCheck{Port: 32100, LocalEndpoints: 1}, wantOK: true,
		},
		{
			name:   "nil conditions: ready",
			svc:    lbLocal(),
			slices: []*discoveryv1.EndpointSlice{slice("web-a", 8080, ep{addr: "10.1.0.1"})},
			want:   HealthCheck{Port: 32100, LocalEndpoints: 1}, wantOK: true,
		},
		{
			name:   "not ready: 0",
			svc:    lbLocal(),
			slices: []*discoveryv1.EndpointSlice{slice("web-a", 8080, ep{addr: "10.1.0.1", ready: no, serving: no, terminating: no})},
			want:   HealthCheck{Port: 32100}, wantOK: true,
		},
		{
			name:   "one address on two ports is one endpoint",
			svc:    lbLocal(twoPorts),
			slices: []*discoveryv1.EndpointSlice{slice("web-a", 8080, ready("10.1.0.1", "")), httpsSlice(ready("10.1.0.1", ""), ready("10.1.0.4", ""))},
			want:   HealthCheck{Port: 32100, LocalEndpoints: 2}, wantOK: true,
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, ok := DesiredHealthCheck(c.svc, c.slices, thisNode)
			if ok != c.wantOK || got != c.want {
				t.Errorf("got %+v %v, want %+v %v", got, ok, c.want, c.wantOK)
			}
		})
	}
}

func TestHealthCheckResponse(t *testing.T) {
	name := types.NamespacedName{Namespace: "ns", Name: "web"}
	cases := []struct {
		count    int
		healthy  bool
		wantCode int
	}{
		{count: 0, healthy: true, wantCode: http.StatusServiceUnavailable},
		{count: 1, healthy: true, wantCode: http.StatusOK},
		{count: 3, healthy: true, wantCode: http.StatusOK},
		{count: 3, healthy: false, wantCode: http.StatusServiceUnavailable},
		{count: 0, healthy: false, wantCode: http.StatusServiceUnavailable},
	}
	for _, c := range cases {
		code, body := healthCheckResponse(name, c.count, c.healthy)
		if code != c.wantCode {
			t.Errorf("count %d healthy %v: %d, want %d", c.count, c.healthy, code, c.wantCode)
		}
		var got map[string]any
		if err := json.Unmarshal(body, &got); err != nil {
			t.Fatal(err)
		}
		want := map[string]any{
			"service":             map[string]any{"namespace": "ns", "name": "web"},
			"localEndpoints":      float64(c.count),
			"serviceProxyHealthy": c.healthy,
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("count %d healthy %v: body (-want +got):\n%s", c.count, c.healthy, diff)
		}
	}
}

// freePort returns a TCP port free on 127.0.0.1 right now.
func freePort(t *testing.T) uint16 {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return uint16(ln.Addr().(*net.TCPAddr).Port)
}

type hcAnswer struct {
	code   int
	weight string
	body   healthCheckBody
}

func getHealthCheck(t *testing.T, port uint16) (hcAnswer, error) {
	t.Helper()
	c := http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get("http://127.0.0.1:" + strconv.Itoa(int(port)) + "/")
	if err != nil {
		return hcAnswer{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return hcAnswer{}, err
	}
	for h, want := range map[string]string{"Content-Type": "application/json", "X-Content-Type-Options": "nosniff"} {
		if got := resp.Header.Get(h); got != want {
			t.Errorf("%s: %q, want %q", h, got, want)
		}
	}
	a := hcAnswer{code: resp.StatusCode, weight: resp.Header.Get("X-Load-Balancing-Endpoint-Weight")}
	if err := json.Unmarshal(b, &a.body); err != nil {
		t.Fatalf("body %q: %v", b, err)
	}
	return a, nil
}

func TestServiceHealthServerListeners(t *testing.T) {
	metrics := NewMetrics(nil)
	proxyHealth := NewHealth(time.Minute)
	s := NewServiceHealthServer(ServiceHealthConfig{Proxy: proxyHealth, Metrics: metrics, Logger: zaptest.NewLogger(t)})
	defer s.Close()
	lo := []netip.Addr{netip.MustParseAddr("127.0.0.1")}
	web := types.NamespacedName{Namespace: "ns", Name: "web"}
	api := types.NamespacedName{Namespace: "ns", Name: "api"}
	p1, p2 := freePort(t), freePort(t)

	if n := s.Sync(lo, map[types.NamespacedName]HealthCheck{web: {Port: p1}}); n != 0 {
		t.Fatalf("%d ports failed", n)
	}
	a, err := getHealthCheck(t, p1)
	if err != nil {
		t.Fatal(err)
	}
	if a.code != http.StatusServiceUnavailable || a.weight != "0" || a.body.LocalEndpoints != 0 || a.body.Service.Name != "web" || a.body.Service.Namespace != "ns" || !a.body.ServiceProxyHealthy {
		t.Errorf("no local endpoints: %+v", a)
	}

	// Endpoints arrive: 200 on the same listener.
	s.Sync(lo, map[types.NamespacedName]HealthCheck{web: {Port: p1, LocalEndpoints: 2}})
	if a, err := getHealthCheck(t, p1); err != nil || a.code != http.StatusOK || a.weight != "2" || a.body.LocalEndpoints != 2 {
		t.Errorf("two local endpoints: %+v %v", a, err)
	}

	// A port in use: logged, counted, retried at the next Sync.
	busy, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(int(p2)))
	if err != nil {
		t.Fatal(err)
	}
	checks := map[types.NamespacedName]HealthCheck{web: {Port: p1, LocalEndpoints: 2}, api: {Port: p2, LocalEndpoints: 1}}
	if n := s.Sync(lo, checks); n != 1 {
		t.Errorf("%d ports failed, want 1", n)
	}
	if got := counterValue(t, metrics.HealthCheckListenFailuresTotal); got != 1 {
		t.Errorf("listen failures %v, want 1", got)
	}
	if got := gaugeValue(t, metrics.HealthCheckNodePortsFailed); got != 1 {
		t.Errorf("failed ports gauge %v, want 1", got)
	}
	busy.Close()
	if n := s.Sync(lo, checks); n != 0 {
		t.Errorf("%d ports failed after the port was freed", n)
	}
	if a, err := getHealthCheck(t, p2); err != nil || a.code != http.StatusOK || a.body.Service.Name != "api" {
		t.Errorf("api after retry: %+v %v", a, err)
	}
	if diff := cmp.Diff([]uint16{min(p1, p2), max(p1, p2)}, s.Ports()); diff != "" {
		t.Errorf("ports (-want +got):\n%s", diff)
	}

	checkProxyUnhealthy(t, proxyHealth, p2)

	// A Service goes: its port closes, the other stays.
	s.Sync(lo, map[types.NamespacedName]HealthCheck{api: {Port: p2, LocalEndpoints: 1}})
	if _, err := getHealthCheck(t, p1); err == nil {
		t.Error("web's port still answers after the Service went")
	}
	if got := gaugeValue(t, metrics.HealthCheckNodePorts); got != 1 {
		t.Errorf("ports gauge %v, want 1", got)
	}

	checkClosed(t, s, lo, checks, p2)
}

// checkProxyUnhealthy: the proxy turns unhealthy: 503 with endpoints, as kube-proxy.
func checkProxyUnhealthy(t *testing.T, proxyHealth *Health, p2 uint16) {
	proxyHealth.mu.Lock()
	proxyHealth.timeout = time.Nanosecond
	proxyHealth.mu.Unlock()
	proxyHealth.QueuedUpdate()
	time.Sleep(time.Millisecond)
	if a, err := getHealthCheck(t, p2); err != nil || a.code != http.StatusServiceUnavailable || a.body.ServiceProxyHealthy {
		t.Errorf("proxy unhealthy: %+v %v", a, err)
	}
	proxyHealth.Updated()
}

// checkClosed: Close shuts everything, and the port can be bound again.
func checkClosed(t *testing.T, s *ServiceHealthServer, lo []netip.Addr, checks map[types.NamespacedName]HealthCheck, p2 uint16) {
	s.Close()
	if _, err := getHealthCheck(t, p2); err == nil {
		t.Error("a port answers after Close")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(int(p2)))
	if err != nil {
		t.Fatalf("port not released by Close: %v", err)
	}
	ln.Close()
	if n := s.Sync(lo, checks); n != 0 || len(s.Ports()) != 0 {
		t.Error("Sync opened ports after Close")
	}
}

func TestServiceHealthServerReopensOnNewAddresses(t *testing.T) {
	var mu sync.Mutex
	var opened []string
	port := freePort(t)
	s := NewServiceHealthServer(ServiceHealthConfig{Listen: func(addr string) (net.Listener, error) {
		mu.Lock()
		opened = append(opened, addr)
		mu.Unlock()
		if addr == net.JoinHostPort("10.0.0.99", strconv.Itoa(int(port))) {
			return nil, errors.New("cannot assign requested address")
		}
		return net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(int(port)))
	}})
	defer s.Close()
	web := types.NamespacedName{Namespace: "ns", Name: "web"}
	checks := map[types.NamespacedName]HealthCheck{web: {Port: port, LocalEndpoints: 1}}
	if n := s.Sync(nil, checks); n != 0 || len(s.Ports()) != 0 {
		t.Fatal("a port opened with no node address known")
	}
	s.Sync([]netip.Addr{netip.MustParseAddr("10.0.0.11")}, checks)
	s.Sync([]netip.Addr{netip.MustParseAddr("10.0.0.11")}, checks) // unchanged: not reopened
	s.Sync([]netip.Addr{netip.MustParseAddr("10.0.0.12")}, checks)
	if n := s.Sync([]netip.Addr{netip.MustParseAddr("10.0.0.12"), netip.MustParseAddr("10.0.0.99")}, checks); n != 1 {
		t.Errorf("%d failed, want 1", n)
	}
	if len(s.Ports()) != 0 {
		t.Error("a port half open: one address failed, the others must close too")
	}
	p := strconv.Itoa(int(port))
	want := []string{"10.0.0.11:" + p, "10.0.0.12:" + p, "10.0.0.12:" + p, "10.0.0.99:" + p}
	if diff := cmp.Diff(want, opened); diff != "" {
		t.Errorf("listens (-want +got):\n%s", diff)
	}
	if a, err := getHealthCheck(t, port); err == nil {
		t.Errorf("answered while not open: %+v", a)
	}
}

// TestProxierServesHealthCheckNodePort: the proxier opens a Service's
// healthCheckNodePort on this node's primary address once the Node is
// known, reports its local endpoints as they come and go, and closes it
// when the Service stops needing it.
func TestProxierServesHealthCheckNodePort(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	port := freePort(t)
	svc := lbLocal(func(s *v1.Service) { s.Spec.HealthCheckNodePort = int32(port) })
	client := fake.NewClientset(svc, slice("web-a", 8080, ready("10.1.0.1", "node-2")),
		node(thisNode, internal("10.0.0.11")), node("node-2", internal("10.0.0.12")))
	var mu sync.Mutex
	var addrs []string
	hs := NewServiceHealthServer(ServiceHealthConfig{Logger: zaptest.NewLogger(t), Listen: func(addr string) (net.Listener, error) {
		mu.Lock()
		addrs = append(addrs, addr)
		mu.Unlock()
		_, p, _ := net.SplitHostPort(addr)
		return net.Listen("tcp", "127.0.0.1:"+p)
	}})
	defer hs.Close()
	npa, _ := ParseNodePortAddresses(nil)
	p, err := New(Config{Client: client, NodeName: thisNode, Programmer: datapath.NewLoadBalancer(datapath.LoadBalancerConfig{Maps: datapath.NewFakeMaps()}),
		NodePortAddresses: npa, ServiceHealth: hs, Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	wait := func(what string, ok func(hcAnswer, error) bool) {
		t.Helper()
		var a hcAnswer
		var err error
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			if a, err = getHealthCheck(t, port); ok(a, err) {
				return
			}
		}
		t.Fatalf("%s: last answer %+v, %v", what, a, err)
	}
	wait("503 with the only endpoint on another node", func(a hcAnswer, err error) bool { return err == nil && a.code == http.StatusServiceUnavailable })
	mu.Lock()
	if diff := cmp.Diff([]string{"10.0.0.11:" + strconv.Itoa(int(port))}, addrs); diff != "" {
		t.Errorf("listened on (-want +got):\n%s", diff)
	}
	mu.Unlock()

	s := slice("web-a", 8080, ready("10.1.0.1", "node-2"), ready("10.1.0.5", ""))
	if _, err := client.DiscoveryV1().EndpointSlices("ns").Update(ctx, s, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	wait("200 with a local endpoint", func(a hcAnswer, err error) bool {
		return err == nil && a.code == http.StatusOK && a.body.LocalEndpoints == 1
	})

	svc = lbLocal(func(s *v1.Service) {
		s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyCluster
		s.Spec.HealthCheckNodePort = 0
	})
	if _, err := client.CoreV1().Services("ns").Update(ctx, svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	wait("closed after externalTrafficPolicy Cluster", func(_ hcAnswer, err error) bool { return err != nil })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

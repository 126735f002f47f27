package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
)

// HealthCheck is what one Service's healthCheckNodePort reports on this
// node: the port, and how many of the Service's endpoints on this node are
// ready.
type HealthCheck struct {
	Port           uint16
	LocalEndpoints int
}

// DesiredHealthCheck returns the health check a Service needs on this
// node, as kube-proxy decides it: a LoadBalancer Service with
// externalTrafficPolicy Local and a healthCheckNodePort gets one; it counts
// the distinct addresses of its ready endpoints on this node, over all its
// ports and slices (10.0.0.1:80 and 10.0.0.1:443 are one). Terminating
// endpoints are not counted even when they still serve (kube-proxy: the
// health check should fail while a node has only terminating endpoints,
// so load balancers move away before they are gone).
func DesiredHealthCheck(svc *v1.Service, eps []*discoveryv1.EndpointSlice, nodeName string) (HealthCheck, bool) {
	if !Handled(svc) || svc.Spec.Type != v1.ServiceTypeLoadBalancer ||
		svc.Spec.ExternalTrafficPolicy != v1.ServiceExternalTrafficPolicyLocal ||
		svc.Spec.HealthCheckNodePort <= 0 || svc.Spec.HealthCheckNodePort > 65535 {
		return HealthCheck{}, false
	}
	local := map[netip.Addr]bool{}
	for _, port := range svc.Spec.Ports {
		for _, e := range endpointsFor(eps, port, nodeName) {
			if e.local && e.ready {
				local[e.addr.Addr()] = true
			}
		}
	}
	return HealthCheck{Port: uint16(svc.Spec.HealthCheckNodePort), LocalEndpoints: len(local)}, true
}

// healthCheckBody is kube-proxy's health check JSON.
type healthCheckBody struct {
	Service struct {
		Namespace string `json:"namespace"`
		Name      string `json:"name"`
	} `json:"service"`
	LocalEndpoints      int  `json:"localEndpoints"`
	ServiceProxyHealthy bool `json:"serviceProxyHealthy"`
}

// healthCheckResponse is kube-proxy's answer on a healthCheckNodePort: 200
// when the node has a ready local endpoint and the proxy is healthy (no
// change waiting longer than --healthz-timeout), else 503. Node
// eligibility (a Node being deleted) does not enter, as in kube-proxy: it
// affects /healthz only.
func healthCheckResponse(name types.NamespacedName, count int, proxyHealthy bool) (int, []byte) {
	var b healthCheckBody
	b.Service.Namespace, b.Service.Name = name.Namespace, name.Name
	b.LocalEndpoints, b.ServiceProxyHealthy = count, proxyHealthy
	body, _ := json.MarshalIndent(b, "", "\t") // a struct of strings, ints and bools
	if count > 0 && proxyHealthy {
		return http.StatusOK, body
	}
	return http.StatusServiceUnavailable, body
}

// ServiceHealthConfig configures a ServiceHealthServer.
type ServiceHealthConfig struct {
	// Proxy tells whether the proxy is healthy (serviceProxyHealthy).
	Proxy *Health
	// Listen opens a listener; default net.Listen("tcp", addr).
	Listen  func(addr string) (net.Listener, error)
	Metrics *Metrics
	Logger  *zap.Logger
}

// ServiceHealthServer serves the healthCheckNodePorts: one listener per
// port on each of the node's addresses (Sync), opened and closed as
// Services come and go. A port it cannot open (in use, say) is logged,
// counted and tried again at the next Sync.
type ServiceHealthServer struct {
	cfg ServiceHealthConfig

	mu     sync.Mutex
	counts map[types.NamespacedName]int
	ports  map[uint16]*hcListener
	failed map[uint16]string // port → last error, logged once
	closed bool
	wg     sync.WaitGroup
}

type hcListener struct {
	name    types.NamespacedName
	addrs   []netip.Addr
	servers []*http.Server
	// lns are closed here too: http.Server.Close closes only the
	// listeners its Serve has started on, and a port reopened right
	// after must be free.
	lns []net.Listener
}

// NewServiceHealthServer returns a server with no ports open.
func NewServiceHealthServer(cfg ServiceHealthConfig) *ServiceHealthServer {
	if cfg.Listen == nil {
		cfg.Listen = func(addr string) (net.Listener, error) { return net.Listen("tcp", addr) }
	}
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics(nil)
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.Proxy == nil {
		cfg.Proxy = NewHealth(time.Minute)
	}
	return &ServiceHealthServer{
		cfg:    cfg,
		counts: map[types.NamespacedName]int{},
		ports:  map[uint16]*hcListener{},
		failed: map[uint16]string{},
	}
}

// Sync makes the open ports exactly checks' ports, each on every address
// in addrs (an unspecified address listens on all), and the counts
// checks' counts. A port claimed by two Services goes to the first by
// name. It returns how many ports failed to open.
func (s *ServiceHealthServer) Sync(addrs []netip.Addr, checks map[types.NamespacedName]HealthCheck) int {
	names := make([]types.NamespacedName, 0, len(checks))
	for n := range checks {
		names = append(names, n)
	}
	slices.SortFunc(names, func(a, b types.NamespacedName) int { return strings.Compare(a.String(), b.String()) })
	want := map[uint16]types.NamespacedName{}
	for _, n := range names {
		if _, taken := want[checks[n].Port]; !taken {
			want[checks[n].Port] = n
		}
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return 0
	}
	clear(s.counts)
	for n, hc := range checks {
		s.counts[n] = hc.LocalEndpoints
	}
	for port, l := range s.ports {
		if n, ok := want[port]; !ok || n != l.name || !slices.Equal(l.addrs, addrs) {
			s.closeLocked(port, l)
		}
	}
	for port := range s.failed {
		if _, ok := want[port]; !ok {
			delete(s.failed, port)
		}
	}
	for port, name := range want {
		if _, open := s.ports[port]; open || len(addrs) == 0 {
			continue
		}
		if err := s.openLocked(port, name, addrs); err != nil {
			s.cfg.Metrics.HealthCheckListenFailuresTotal.Inc()
			if s.failed[port] != err.Error() {
				s.cfg.Logger.Error("open health check node port", zap.String("service", name.String()), zap.Uint16("port", port), zap.Error(err))
			}
			s.failed[port] = err.Error()
			continue
		}
		delete(s.failed, port)
		s.cfg.Logger.Info("serving health check node port", zap.String("service", name.String()), zap.Uint16("port", port))
	}
	s.cfg.Metrics.HealthCheckNodePorts.Set(float64(len(s.ports)))
	s.cfg.Metrics.HealthCheckNodePortsFailed.Set(float64(len(s.failed)))
	return len(s.failed)
}

// openLocked listens on port at every address, or on none.
func (s *ServiceHealthServer) openLocked(port uint16, name types.NamespacedName, addrs []netip.Addr) error {
	l := &hcListener{name: name, addrs: slices.Clone(addrs)}
	for _, a := range addrs {
		host := a.String()
		if a.IsUnspecified() {
			host = ""
		}
		addr := net.JoinHostPort(host, strconv.Itoa(int(port)))
		ln, err := s.cfg.Listen(addr)
		if err != nil {
			s.closeLocked(port, l)
			return fmt.Errorf("listen on %s: %w", addr, err)
		}
		srv := &http.Server{Handler: s.handler(name), ReadHeaderTimeout: 5 * time.Second}
		l.servers = append(l.servers, srv)
		l.lns = append(l.lns, ln)
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				s.cfg.Logger.Error("health check node port closed", zap.String("service", name.String()), zap.String("address", addr), zap.Error(err))
			}
		}()
	}
	s.ports[port] = l
	return nil
}

func (s *ServiceHealthServer) closeLocked(port uint16, l *hcListener) {
	for _, srv := range l.servers {
		_ = srv.Close() // open connections; Serve returns
	}
	for _, ln := range l.lns {
		_ = ln.Close() // already closed by srv.Close if its Serve had started
	}
	if s.ports[port] == l {
		delete(s.ports, port)
		s.cfg.Logger.Info("closed health check node port", zap.String("service", l.name.String()), zap.Uint16("port", port))
	}
}

func (s *ServiceHealthServer) handler(name types.NamespacedName) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		s.mu.Lock()
		count := s.counts[name]
		s.mu.Unlock()
		healthy, _, _ := s.cfg.Proxy.Status()
		code, body := healthCheckResponse(name, count, healthy)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("X-Load-Balancing-Endpoint-Weight", strconv.Itoa(count))
		w.WriteHeader(code)
		_, _ = w.Write(body) // the client went away; nothing to tell it
	})
}

// Ports returns the open ports.
func (s *ServiceHealthServer) Ports() []uint16 {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]uint16, 0, len(s.ports))
	for p := range s.ports {
		out = append(out, p)
	}
	slices.Sort(out)
	return out
}

// Close closes every port and waits for their servers to return; Sync does
// nothing afterwards.
func (s *ServiceHealthServer) Close() {
	s.mu.Lock()
	s.closed = true
	for port, l := range s.ports {
		s.closeLocked(port, l)
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// Run closes the server when ctx ends.
func (s *ServiceHealthServer) Run(ctx context.Context) error {
	<-ctx.Done()
	s.Close()
	return nil
}

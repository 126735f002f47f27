package proxy

import (
	"context"
	"encoding/json"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap/zaptest"
	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/directlb/directlb/pkg/datapath"
)

// countingProgrammer records what the proxier asks for.
type countingProgrammer struct {
	*datapath.LoadBalancer
	applies, syncs int
}

func (c *countingProgrammer) Apply(u []datapath.Service, d []datapath.Frontend) (datapath.ApplyStats, error) {
	c.applies++
	return c.LoadBalancer.Apply(u, d)
}

func (c *countingProgrammer) Sync(d []datapath.Service) (datapath.ApplyStats, error) {
	c.syncs++
	return c.LoadBalancer.Sync(d)
}

func programmedState(maps *datapath.FakeMaps) map[string][]string {
	out := map[string][]string{}
	maps.DumpServices(func(k datapath.ServiceKey, v datapath.ServiceValue) {
		if k.Slot != 0 {
			return
		}
		bs := []string{}
		for s := uint16(1); s <= v.Count; s++ {
			sv := maps.Services[datapath.ServiceKey{Frontend: k.Frontend, Slot: s}]
			b := maps.Backends[sv.BackendID]
			bs = append(bs, netip.AddrPortFrom(b.Addr, b.Port).String())
		}
		out[k.Frontend.String()] = bs
	})
	return out
}

func eventually(t *testing.T, maps *datapath.FakeMaps, want map[string][]string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	var got map[string][]string
	for time.Now().Before(deadline) {
		got = programmedState(maps)
		if cmp.Diff(want, got, cmpopts.EquateEmpty(), cmpopts.SortSlices(func(a, b string) bool { return a < b })) == "" {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("programmed state (-want +got):\n%s", cmp.Diff(want, got, cmpopts.EquateEmpty()))
}

func TestProxierProgramsChangesIncrementally(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// State left by an earlier run: a Service that no longer exists.
	maps := datapath.NewFakeMaps()
	lb := datapath.NewLoadBalancer(datapath.LoadBalancerConfig{Maps: maps})
	stale := datapath.Frontend{Addr: netip.MustParseAddr("10.96.9.9"), Port: 80, Proto: datapath.TCP}
	if _, err := lb.Apply([]datapath.Service{{Frontend: stale, Backends: []netip.AddrPort{netip.MustParseAddrPort("10.9.9.9:80")}}}, nil); err != nil {
		t.Fatal(err)
	}

	client := newWatchedClientset(service(), slice("web-a", 8080, ready("10.1.0.1", ""), ready("10.1.0.2", "node-2")))
	prog := &countingProgrammer{LoadBalancer: lb}
	health := NewHealth(time.Minute)
	p, err := New(Config{Client: client, NodeName: thisNode, Programmer: prog, Health: health})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	select {
	case <-p.Synced():
	case <-time.After(10 * time.Second):
		t.Fatal("no initial sync")
	}
	eventually(t, maps, map[string][]string{"10.96.0.10:80/TCP": {"10.1.0.1:8080", "10.1.0.2:8080"}, "10.96.0.10/any": {}})
	if healthy, _, _ := health.Status(); !healthy {
		t.Error("unhealthy after the initial sync")
	}

	// One endpoint turns terminating: the other ready one serves alone.
	s := slice("web-a", 8080, ready("10.1.0.1", ""), terminating("10.1.0.2", "node-2", true))
	if _, err := client.DiscoveryV1().EndpointSlices("ns").Update(ctx, s, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, maps, map[string][]string{"10.96.0.10:80/TCP": {"10.1.0.1:8080"}, "10.96.0.10/any": {}})

	// A second Service appears; the first is not rewritten.
	writes := maps.Writes
	other := service(func(s *v1.Service) {
		s.Name = "dns"
		s.Spec.ClusterIP, s.Spec.ClusterIPs = "10.96.0.53", []string{"10.96.0.53"}
		s.Spec.Ports = []v1.ServicePort{{Name: "dns", Port: 53, Protocol: v1.ProtocolUDP}}
	})
	if _, err := client.CoreV1().Services("ns").Create(ctx, other, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, maps, map[string][]string{"10.96.0.10:80/TCP": {"10.1.0.1:8080"}, "10.96.0.10/any": {}, "10.96.0.53:53/UDP": {}, "10.96.0.53/any": {}})
	if got := maps.Writes - writes; got != 2 {
		t.Errorf("adding an endpoint-less Service took %d map writes, want 2 (its master and its address entry)", got)
	}

	// Handing the first Service to another proxy removes it here.
	svc := service(func(s *v1.Service) { s.Labels = map[string]string{LabelServiceProxyName: "someone-else"} })
	if _, err := client.CoreV1().Services("ns").Update(ctx, svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, maps, map[string][]string{"10.96.0.53:53/UDP": {}, "10.96.0.53/any": {}})

	// Deleting the last one leaves empty maps, backends included.
	client.waitWatching(t, "services", "endpointslices")
	if err := client.CoreV1().Services("ns").Delete(ctx, "dns", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, maps, map[string][]string{})
	if len(maps.Backends) != 0 {
		t.Errorf("backends left: %v", maps.Backends)
	}
	if prog.syncs != 1 {
		t.Errorf("%d full syncs, want only the initial one", prog.syncs)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestHealthGoesStale(t *testing.T) {
	now := time.Unix(1000, 0)
	h := NewHealth(10 * time.Second)
	h.now = func() time.Time { return now }
	h.oldestQueue = now
	if ok, _, _ := h.Status(); !ok {
		t.Fatal("unhealthy at start")
	}
	now = now.Add(11 * time.Second)
	if ok, _, _ := h.Status(); ok {
		t.Fatal("healthy with the initial sync 11s overdue")
	}
	h.Updated()
	if ok, _, _ := h.Status(); !ok {
		t.Fatal("unhealthy right after an update")
	}
	now = now.Add(time.Hour)
	if ok, _, _ := h.Status(); !ok {
		t.Fatal("unhealthy with nothing queued")
	}
	h.QueuedUpdate()
	now = now.Add(11 * time.Second)
	if ok, _, _ := h.Status(); ok {
		t.Fatal("healthy with a change waiting 11s")
	}
}

func TestNodeEligible(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	node := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: thisNode}}
	other := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-2"}, Spec: v1.NodeSpec{Taints: []v1.Taint{{Key: ToBeDeletedTaint, Effect: v1.TaintEffectNoSchedule}}}}
	client := newWatchedClientset(node, other)
	health := NewHealth(time.Minute)
	p, err := New(Config{Client: client, NodeName: thisNode, Programmer: datapath.NewLoadBalancer(datapath.LoadBalancerConfig{Maps: datapath.NewFakeMaps()}), Health: health})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	<-p.Synced()

	get := func(path string) (int, healthBody) {
		t.Helper()
		rec := httptest.NewRecorder()
		health.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		var b healthBody
		if err := json.Unmarshal(rec.Body.Bytes(), &b); err != nil {
			t.Fatal(err)
		}
		return rec.Code, b
	}
	waitEligible := func(want bool) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
			if ok, _ := health.NodeEligible(); ok == want {
				return
			}
		}
		t.Fatalf("nodeEligible never became %v", want)
	}
	if code, b := get("/healthz"); code != http.StatusOK || b.NodeEligible == nil || !*b.NodeEligible {
		t.Errorf("/healthz with an untainted node (another node tainted): %d %+v", code, b)
	}

	// cluster-autoscaler marks this node for removal.
	node.Spec.Taints = []v1.Taint{{Key: ToBeDeletedTaint, Effect: v1.TaintEffectNoSchedule}}
	if _, err := client.CoreV1().Nodes().Update(ctx, node, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitEligible(false)
	if code, b := get("/healthz"); code != http.StatusServiceUnavailable || b.NodeEligible == nil || *b.NodeEligible {
		t.Errorf("/healthz on a node to be deleted: %d %+v, want 503 and nodeEligible false", code, b)
	}
	if code, b := get("/livez"); code != http.StatusOK || b.NodeEligible != nil {
		t.Errorf("/livez on a node to be deleted: %d %+v, want 200 without nodeEligible (no restart for it)", code, b)
	}

	node.Spec.Taints = nil
	if _, err := client.CoreV1().Nodes().Update(ctx, node, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitEligible(true)
	client.waitWatching(t, "nodes")
	if err := client.CoreV1().Nodes().Delete(ctx, thisNode, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitEligible(false)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestFullMapAffectsOnlyTheServiceThatDoesNotFit: a services map with room
// for 8 entries cannot take web (master, 2 slots, address entry), dns
// (master, address entry) and wide (master, 4 slots, address entry)
// together. Which ones fit depends on the order the informers deliver, but
// those that fit are programmed whole, the one that does not is counted
// and keeps its earlier state, and the agent stays healthy; once room is
// made, the retry programs it.
func TestFullMapAffectsOnlyTheServiceThatDoesNotFit(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	maps := datapath.NewFakeMaps()
	maps.MaxServices = 8
	lb := datapath.NewLoadBalancer(datapath.LoadBalancerConfig{Maps: maps})
	named := func(name, ip string, port int32) func(*v1.Service) {
		return func(s *v1.Service) {
			s.Name = name
			s.Spec.ClusterIP, s.Spec.ClusterIPs = ip, []string{ip}
			s.Spec.Ports[0].Port = port
		}
	}
	sliceOf := func(svc string, eps ...ep) *discoveryv1.EndpointSlice {
		s := slice(svc+"-a", 8080, eps...)
		s.Labels[discoveryv1.LabelServiceName] = svc
		return s
	}
	client := newWatchedClientset(
		service(), slice("web-a", 8080, ready("10.1.0.1", ""), ready("10.1.0.2", "")),
		service(named("wide", "10.96.0.20", 80)),
		sliceOf("wide", ready("10.1.1.1", ""), ready("10.1.1.2", ""), ready("10.1.1.3", ""), ready("10.1.1.4", "")),
		service(named("dns", "10.96.0.53", 53)),
	)
	health := NewHealth(time.Minute)
	metrics := NewMetrics(nil)
	p, err := New(Config{Client: client, NodeName: thisNode, Programmer: lb, Health: health, Metrics: metrics,
		FailedRetryPeriod: 50 * time.Millisecond, Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	<-p.Synced()

	checkFullMap(t, maps, metrics, health)

	// dns goes and wide shrinks to one endpoint: web's 4 entries and
	// wide's 3 fit.
	client.waitWatching(t, "services", "endpointslices")
	if err := client.CoreV1().Services("ns").Delete(ctx, "dns", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.DiscoveryV1().EndpointSlices("ns").Update(ctx, sliceOf("wide", ready("10.1.1.1", "")), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, maps, map[string][]string{
		"10.96.0.10:80/TCP": {"10.1.0.1:8080", "10.1.0.2:8080"}, "10.96.0.10/any": {},
		"10.96.0.20:80/TCP": {"10.1.1.1:8080"}, "10.96.0.20/any": {},
	})
	for deadline := time.Now().Add(5 * time.Second); gaugeValue(t, metrics.ServicesNotProgrammed) != 0 && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	if got := gaugeValue(t, metrics.ServicesNotProgrammed); got != 0 {
		t.Errorf("services_not_programmed = %v once everything fits, want 0", got)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// checkFullMap waits until two of web, dns and wide are programmed whole and
// the third is counted as not programmed, with the maps consistent and the
// agent healthy.
func checkFullMap(t *testing.T, maps *datapath.FakeMaps, metrics *Metrics, health *Health) {
	want := map[string][]string{
		"10.96.0.10:80/TCP": {"10.1.0.1:8080", "10.1.0.2:8080"},
		"10.96.0.53:53/TCP": {},
		"10.96.0.20:80/TCP": {"10.1.1.1:8080", "10.1.1.2:8080", "10.1.1.3:8080", "10.1.1.4:8080"},
	}
	whole := func(got map[string][]string) int {
		n := 0
		for fe, bs := range want {
			if g, ok := got[fe]; ok && cmp.Diff(bs, g, cmpopts.EquateEmpty(), cmpopts.SortSlices(func(a, b string) bool { return a < b })) == "" {
				n++
			}
		}
		return n
	}
	var got map[string][]string
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		got = programmedState(maps)
		if whole(got) == 2 && gaugeValue(t, metrics.ServicesNotProgrammed) == 1 {
			break
		}
	}
	if n, g := whole(got), gaugeValue(t, metrics.ServicesNotProgrammed); n != 2 || g != 1 {
		t.Fatalf("with a full map: %d Services programmed whole, %v counted as not programmed, want 2 and 1: %v", n, g, got)
	}
	if err := maps.ConsistentNow(); err != nil {
		t.Error(err)
	}
	if healthy, _, _ := health.Status(); !healthy {
		t.Error("unhealthy because one Service does not fit")
	}
}

func gaugeValue(t *testing.T, g prometheus.Gauge) float64 {
	t.Helper()
	var m dto.Metric
	if err := g.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetGauge().GetValue()
}

// TestProxierNodePortOnEveryNode: the agent programs every Node's primary
// address, so that a NodePort resolves on this node's address and the
// other nodes' alike, and follows Nodes as they come, change and go.
func TestProxierNodePortOnEveryNode(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	svc := service(func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeNodePort
		s.Spec.Ports[0].NodePort = 30080
	})
	client := newWatchedClientset(svc, slice("web-a", 8080, ready("10.1.0.1", "node-2")),
		node(thisNode, internal("10.0.0.11")), node("node-2", internal("10.0.0.12")))
	maps := datapath.NewFakeMaps()
	lb := datapath.NewLoadBalancer(datapath.LoadBalancerConfig{Maps: maps})
	npa, _ := ParseNodePortAddresses(nil)
	p, err := New(Config{Client: client, NodeName: thisNode, Programmer: lb, NodePortAddresses: npa, Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	go p.Run(ctx)
	resolves := func(want map[string]string) {
		t.Helper()
		rng := rand.New(rand.NewPCG(1, 2))
		var got map[string]string
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
			got = map[string]string{}
			for dst := range want {
				ap := netip.MustParseAddrPort(dst)
				b, err := maps.Resolve(datapath.Frontend{Addr: ap.Addr(), Port: ap.Port(), Proto: datapath.TCP}, rng)
				if err != nil {
					got[dst] = err.Error()
				} else {
					got[dst] = netip.AddrPortFrom(b.Addr, b.Port).String()
				}
			}
			if cmp.Diff(want, got) == "" {
				return
			}
		}
		t.Fatalf("resolved (-want +got):\n%s", cmp.Diff(want, got))
	}
	none := datapath.ErrNoService.Error()
	resolves(map[string]string{"10.0.0.11:30080": "10.1.0.1:8080", "10.0.0.12:30080": "10.1.0.1:8080", "10.0.0.13:30080": none, "10.0.0.11:22": none})

	if _, err := client.CoreV1().Nodes().Create(ctx, node("node-3", internal("10.0.0.13")), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	resolves(map[string]string{"10.0.0.13:30080": "10.1.0.1:8080"})
	if _, err := client.CoreV1().Nodes().Update(ctx, node("node-2", internal("10.0.0.22")), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	resolves(map[string]string{"10.0.0.12:30080": none, "10.0.0.22:30080": "10.1.0.1:8080"})
	client.waitWatching(t, "nodes")
	if err := client.CoreV1().Nodes().Delete(ctx, "node-3", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	resolves(map[string]string{"10.0.0.13:30080": none, "10.0.0.11:30080": "10.1.0.1:8080"})
	if diff := cmp.Diff(map[netip.Addr]datapath.NodeAddressFlags{
		netip.MustParseAddr("10.0.0.11"): datapath.NodeAddressLocal,
		netip.MustParseAddr("10.0.0.22"): datapath.NodeAddressRemote,
	}, lb.NodeAddresses(), cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("node addresses (-want +got):\n%s", diff)
	}
}

// recordingDestroyer records what the proxier asks DestroySockets for.
type recordingDestroyer struct {
	mu   sync.Mutex
	left []string
}

func (r *recordingDestroyer) DestroySockets(left []datapath.LeftBackend) (datapath.DestroyStats, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, l := range left {
		r.left = append(r.left, netip.AddrPortFrom(l.Backend.Addr, l.Backend.Port).String()+"/"+l.Backend.Proto.String())
	}
	return datapath.DestroyStats{Destroyed: len(left)}, nil
}

func (r *recordingDestroyer) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.left
	r.left = nil
	slices.Sort(out)
	return out
}

// TestProxierDestroysSocketsOfBackendsThatLeft: after a sync that removes a
// UDP backend (an endpoint gone, or the Service), the proxier asks for the
// sockets translated to it to be destroyed; TCP backends are not asked for.
func TestProxierDestroysSocketsOfBackendsThatLeft(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	udp := func(s *v1.Service) {
		s.Spec.Ports = []v1.ServicePort{
			{Name: "http", Port: 53, Protocol: v1.ProtocolUDP},
			{Name: "tcp", Port: 53, Protocol: v1.ProtocolTCP},
		}
	}
	eps := func(addrs ...string) *discoveryv1.EndpointSlice {
		var es []ep
		for _, a := range addrs {
			es = append(es, ready(a, ""))
		}
		s := slice("web-a", 5353, es...)
		s.Ports = append(s.Ports, discoveryv1.EndpointPort{Name: ptr.To("tcp"), Port: ptr.To(int32(5353)), Protocol: ptr.To(v1.ProtocolTCP)})
		s.Ports[0].Protocol = ptr.To(v1.ProtocolUDP)
		return s
	}
	client := newWatchedClientset(service(udp), eps("10.1.0.1", "10.1.0.2"))
	maps := datapath.NewFakeMaps()
	lb := datapath.NewLoadBalancer(datapath.LoadBalancerConfig{Maps: maps})
	rec := &recordingDestroyer{}
	metrics := NewMetrics(nil)
	p, err := New(Config{Client: client, NodeName: thisNode, Programmer: lb, Sockets: rec, Metrics: metrics, Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	<-p.Synced()
	eventually(t, maps, map[string][]string{
		"10.96.0.10:53/UDP": {"10.1.0.1:5353", "10.1.0.2:5353"},
		"10.96.0.10:53/TCP": {"10.1.0.1:5353", "10.1.0.2:5353"},
		"10.96.0.10/any":    {},
	})
	if got := rec.take(); len(got) != 0 {
		t.Errorf("the first sync asked to destroy %v", got)
	}

	if _, err := client.DiscoveryV1().EndpointSlices("ns").Update(ctx, eps("10.1.0.1"), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, maps, map[string][]string{
		"10.96.0.10:53/UDP": {"10.1.0.1:5353"},
		"10.96.0.10:53/TCP": {"10.1.0.1:5353"},
		"10.96.0.10/any":    {},
	})
	waitDestroyed(t, rec, []string{"10.1.0.2:5353/UDP"})

	client.waitWatching(t, "services", "endpointslices")
	if err := client.CoreV1().Services("ns").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, maps, map[string][]string{})
	waitDestroyed(t, rec, []string{"10.1.0.1:5353/UDP"})
	var m dto.Metric
	if err := metrics.UDPSocketsDestroyedTotal.Write(&m); err != nil {
		t.Fatal(err)
	}
	if got := m.GetCounter().GetValue(); got != 2 {
		t.Errorf("udp_sockets_destroyed_total = %v, want 2", got)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func waitDestroyed(t *testing.T, rec *recordingDestroyer, want []string) {
	t.Helper()
	var got []string
	for range 200 {
		got = append(got, rec.take()...)
		if len(got) >= len(want) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("sockets to destroy (-want +got):\n%s", diff)
	}
}

func TestMapFill(t *testing.T) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(&MapFill{Capacity: map[string]uint32{"dlb_svc4": 1000, "dlb_nat4": 10}, Entries: func() map[string]int { return map[string]int{"dlb_svc4": 250} }})
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			got[mf.GetName()+"/"+m.GetLabel()[0].GetValue()] = m.GetGauge().GetValue()
		}
	}
	want := map[string]float64{
		"directlb_node_agent_bpf_map_capacity/dlb_svc4":   1000,
		"directlb_node_agent_bpf_map_capacity/dlb_nat4":   10,
		"directlb_node_agent_bpf_map_entries/dlb_svc4":    250,
		"directlb_node_agent_bpf_map_fill_ratio/dlb_svc4": 0.25,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("map fill metrics (-want +got):\n%s", diff)
	}
}

// TestProxierFollowsTheNodeZone: the endpoints' zone hints are applied for
// the zone the Node's label names, and a relabelled Node reprograms the
// Services for its new zone.
func TestProxierFollowsTheNodeZone(t *testing.T) {
	ctx := t.Context()
	n := node(thisNode, internal("10.0.0.11"))
	n.Labels = map[string]string{v1.LabelTopologyZone: "zone-a"}
	client := newWatchedClientset(service(), n,
		slice("web-a", 8080, zoned("10.1.0.1", "node-2", []string{"zone-a"}, nil), zoned("10.1.0.2", "node-3", []string{"zone-b"}, nil)))
	maps := datapath.NewFakeMaps()
	p, err := New(Config{Client: client, NodeName: thisNode, Programmer: datapath.NewLoadBalancer(datapath.LoadBalancerConfig{Maps: maps}), Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	go p.Run(ctx)
	eventually(t, maps, map[string][]string{"10.96.0.10:80/TCP": {"10.1.0.1:8080"}, "10.96.0.10/any": {}})

	client.waitWatching(t, "nodes")
	n.Labels[v1.LabelTopologyZone] = "zone-b"
	if _, err := client.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, maps, map[string][]string{"10.96.0.10:80/TCP": {"10.1.0.2:8080"}, "10.96.0.10/any": {}})

	delete(n.Labels, v1.LabelTopologyZone)
	if _, err := client.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, maps, map[string][]string{"10.96.0.10:80/TCP": {"10.1.0.1:8080", "10.1.0.2:8080"}, "10.96.0.10/any": {}})
}

package proxy

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

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

	client := fake.NewClientset(service(), slice("web-a", 8080, ready("10.1.0.1", ""), ready("10.1.0.2", "node-2")))
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
	client := fake.NewClientset(node, other)
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
	if err := client.CoreV1().Nodes().Delete(ctx, thisNode, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitEligible(false)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

package proxy

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/directlb/directlb/pkg/datapath"
)

func TestServiceTable(t *testing.T) {
	maps := datapath.NewFakeMaps()
	lb := datapath.NewLoadBalancer(datapath.LoadBalancerConfig{Maps: maps})
	web := datapath.Frontend{Addr: netip.MustParseAddr("10.96.0.10"), Port: 80, Proto: datapath.TCP}
	dns := datapath.Frontend{Addr: netip.MustParseAddr("10.96.0.53"), Port: 53, Proto: datapath.UDP}
	if _, err := lb.Apply([]datapath.Service{
		{Frontend: web, Backends: backends("10.1.0.1:8080", "10.1.0.2:8080"), AffinityTimeout: 3 * time.Hour},
		{Frontend: datapath.AddressFrontend(web.Addr)},
		{Frontend: dns, Drop: true},
		{Frontend: datapath.NodePortFrontend(30080, datapath.TCP).External(), Backends: backends("10.1.0.2:8080"), SNAT: true},
	}, nil); err != nil {
		t.Fatal(err)
	}
	entries, err := ReadServiceTable(maps)
	if err != nil {
		t.Fatal(err)
	}
	want := []TableEntry{
		{Name: "10.96.0.10/any", Backends: []string{}},
		{Name: "10.96.0.10:80/TCP", AffinityTimeout: 10800, Flags: []string{"affinity"}, Backends: []string{"10.1.0.1:8080/TCP", "10.1.0.2:8080/TCP"}},
		{Name: "10.96.0.53:53/UDP", Flags: []string{"drop"}, Backends: []string{}},
		{Name: "external:nodeport:30080/TCP", Flags: []string{"snat"}, Backends: []string{"10.1.0.2:8080/TCP"}},
	}
	if diff := cmp.Diff(want, entries, cmpopts.IgnoreFields(TableEntry{}, "Frontend", "ID")); diff != "" {
		t.Errorf("table (-want +got):\n%s", diff)
	}

	// The handler names the Services it is told about, and lists those
	// not programmed after the table.
	h := ServiceTableHandler(maps, fakeSource{
		owners: map[datapath.Frontend]types.NamespacedName{web: {Namespace: "ns", Name: "web"}},
		failed: []NotProgrammed{{Service: "ns/wide", Error: "map dlb_svc4 full"}},
	})
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/debug/services", nil))
	lines := strings.Split(strings.TrimSpace(rec.Body.String()), "\n")
	if len(lines) != 8 || !strings.HasPrefix(lines[0], "FRONTEND") || lines[5] != "" ||
		!strings.HasPrefix(lines[6], "NOT PROGRAMMED  ERROR") || strings.Join(strings.Fields(lines[7]), " ") != "ns/wide map dlb_svc4 full" {
		t.Fatalf("text table:\n%s", rec.Body.String())
	}
	if f := strings.Fields(lines[2]); len(f) != 6 || f[0] != "10.96.0.10:80/TCP" || f[1] != "ns/web" || f[3] != "affinity(10800s)" || f[4] != "10.1.0.1:8080/TCP" {
		t.Errorf("web's line: %q", lines[2])
	}
	if f := strings.Fields(lines[3]); f[1] != "-" || f[4] != "(none)" {
		t.Errorf("dns's line: %q", lines[3])
	}
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/debug/services?o=json", nil))
	var got ServiceTable
	if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	if len(got.Frontends) != 4 || got.Frontends[1].Service != "ns/web" || got.Frontends[1].ID == 0 ||
		cmp.Diff([]NotProgrammed{{Service: "ns/wide", Error: "map dlb_svc4 full"}}, got.NotProgrammed) != "" {
		t.Errorf("json: %+v", got)
	}
}

type fakeSource struct {
	owners map[datapath.Frontend]types.NamespacedName
	failed []NotProgrammed
}

func (f fakeSource) Owners() map[datapath.Frontend]types.NamespacedName { return f.owners }
func (f fakeSource) NotProgrammed() []NotProgrammed                     { return f.failed }

// TestProxierOwners: the table names each frontend's Service from the
// informers.
func TestProxierOwners(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	svc := service(func(s *v1.Service) { s.Spec.Type = v1.ServiceTypeNodePort; s.Spec.Ports[0].NodePort = 30080 })
	client := fake.NewClientset(svc, slice("web-a", 8080, ready("10.1.0.1", "")))
	maps := datapath.NewFakeMaps()
	npa, _ := ParseNodePortAddresses(nil)
	p, err := New(Config{Client: client, NodeName: thisNode, Programmer: datapath.NewLoadBalancer(datapath.LoadBalancerConfig{Maps: maps}), NodePortAddresses: npa})
	if err != nil {
		t.Fatal(err)
	}
	go p.Run(ctx)
	<-p.Synced()
	want := map[string]string{
		"10.96.0.10/any":     "ns/web ",
		"10.96.0.10:80/TCP":  "ns/web 10.1.0.1:8080/TCP",
		"nodeport:30080/TCP": "ns/web 10.1.0.1:8080/TCP",
	}
	var names map[string]string
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		rec := httptest.NewRecorder()
		ServiceTableHandler(maps, p).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/debug/services?o=json", nil))
		var got ServiceTable
		if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
			t.Fatal(err)
		}
		names = map[string]string{}
		for _, e := range got.Frontends {
			names[e.Name] = e.Service + " " + strings.Join(e.Backends, ",")
		}
		if cmp.Diff(want, names) == "" {
			return
		}
	}
	t.Errorf("table (-want +got):\n%s", cmp.Diff(want, names))
}

package proxy

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/scheme"
	eventsv1client "k8s.io/client-go/kubernetes/typed/events/v1"
	"k8s.io/client-go/tools/events"

	"github.com/directlb/directlb/pkg/datapath"
)

// noteRecorder keeps every event it is given, as "Type Reason note".
type noteRecorder struct {
	mu    sync.Mutex
	notes []string
}

func (r *noteRecorder) Eventf(regarding, _ runtime.Object, eventtype, reason, _, note string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.notes = append(r.notes, eventtype+" "+reason+" "+fmt.Sprintf(note, args...))
}

func (r *noteRecorder) get() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.notes...)
}

// tee gives each event to every recorder.
type tee []events.EventRecorder

func (t tee) Eventf(regarding, related runtime.Object, eventtype, reason, action, note string, args ...any) {
	for _, r := range t {
		r.Eventf(regarding, related, eventtype, reason, action, note, args...)
	}
}

// TestNotProgrammedIsReported: with room for 6 entries in the services
// map, web (master, 2 slots, address entry) fits and wide (master, 4
// slots, address entry) does not (Services are applied one by one in name
// order after the batch fails). wide is listed on /debug/services with its
// error and gets one Warning NotProgrammed event however often it is
// retried; once its endpoints go (master and address entry fit), it gets
// one Normal Programmed event and leaves the list. The events reach the
// apiserver as events.k8s.io Events regarding the Service.
func TestNotProgrammedIsReported(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	maps := datapath.NewFakeMaps()
	maps.MaxServices = 6
	wideSlice := func(eps ...ep) *discoveryv1.EndpointSlice {
		s := slice("wide-a", 8080, eps...)
		s.Labels[discoveryv1.LabelServiceName] = "wide"
		return s
	}
	client := newWatchedClientset(
		service(), slice("web-a", 8080, ready("10.1.0.1", ""), ready("10.1.0.2", "")),
		service(func(s *v1.Service) {
			s.Name = "wide"
			s.Spec.ClusterIP, s.Spec.ClusterIPs = "10.96.0.20", []string{"10.96.0.20"}
		}),
		wideSlice(ready("10.1.1.1", ""), ready("10.1.1.2", ""), ready("10.1.1.3", ""), ready("10.1.1.4", "")),
	)
	b := events.NewBroadcaster(&events.EventSinkImpl{Interface: client.EventsV1()})
	b.StartRecordingToSink(ctx.Done())
	defer b.Shutdown()
	notes := &noteRecorder{}
	metrics := NewMetrics(nil)
	p, err := New(Config{Client: client, NodeName: thisNode, Programmer: datapath.NewLoadBalancer(datapath.LoadBalancerConfig{Maps: maps}),
		FailedRetryPeriod: 10 * time.Millisecond, Metrics: metrics, Logger: zaptest.NewLogger(t),
		Recorder: tee{notes, b.NewRecorder(scheme.Scheme, "directlb-node-agent")}})
	if err != nil {
		t.Fatal(err)
	}
	go p.Run(ctx)
	<-p.Synced()

	// Many retries (every 10 ms), one event.
	for deadline := time.Now().Add(5 * time.Second); counterValue(t, metrics.ServiceProgramFailuresTotal) < 10 && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	if n := counterValue(t, metrics.ServiceProgramFailuresTotal); n < 10 {
		t.Fatalf("%v failures counted, want 10 retries", n)
	}
	got := notes.get()
	if len(got) != 1 || !strings.HasPrefix(got[0], "Warning NotProgrammed node "+thisNode+": ") || !strings.Contains(got[0], "map full") {
		t.Fatalf("events after 10 failed tries: %q, want one Warning NotProgrammed naming the node and the full map", got)
	}
	table := debugServices(t, p, maps)
	if len(table.NotProgrammed) != 1 || table.NotProgrammed[0].Service != "ns/wide" || !strings.Contains(table.NotProgrammed[0].Error, "map full") {
		t.Errorf("/debug/services notProgrammed: %+v, want ns/wide with its error", table.NotProgrammed)
	}
	waitEvent(t, client.EventsV1(), "wide", ReasonNotProgrammed, v1.EventTypeWarning)

	client.waitWatching(t, "endpointslices")
	if _, err := client.DiscoveryV1().EndpointSlices("ns").Update(ctx, wideSlice(), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, maps, map[string][]string{
		"10.96.0.10:80/TCP": {"10.1.0.1:8080", "10.1.0.2:8080"}, "10.96.0.10/any": {},
		"10.96.0.20:80/TCP": {}, "10.96.0.20/any": {},
	})
	waitEvent(t, client.EventsV1(), "wide", ReasonProgrammed, v1.EventTypeNormal)
	if got := notes.get(); len(got) != 2 || got[1] != "Normal Programmed node "+thisNode+": programmed after earlier failures" {
		t.Errorf("events after wide fits: %q", got)
	}
	if table := debugServices(t, p, maps); len(table.NotProgrammed) != 0 {
		t.Errorf("/debug/services notProgrammed once everything fits: %+v", table.NotProgrammed)
	}
}

func debugServices(t *testing.T, p *Proxier, maps datapath.Maps) ServiceTable {
	t.Helper()
	rec := httptest.NewRecorder()
	ServiceTableHandler(maps, p).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/debug/services?o=json", nil))
	var table ServiceTable
	if err := json.Unmarshal(rec.Body.Bytes(), &table); err != nil {
		t.Fatal(err)
	}
	return table
}

// waitEvent waits for an events.k8s.io Event regarding Service ns/name.
func waitEvent(t *testing.T, c eventsv1client.EventsGetter, name, reason, typ string) {
	t.Helper()
	var seen []string
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		list, err := c.Events("ns").List(context.Background(), metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		seen = seen[:0]
		for _, e := range list.Items {
			seen = append(seen, e.Type+" "+e.Reason+" "+e.Regarding.Kind+"/"+e.Regarding.Name+": "+e.Note)
			if e.Reason == reason && e.Type == typ && e.Regarding.Kind == "Service" && e.Regarding.Name == name &&
				e.ReportingController == "directlb-node-agent" && strings.Contains(e.Note, "node "+thisNode) {
				return
			}
		}
	}
	t.Fatalf("no %s %s event on Service %s; events: %q", typ, reason, name, seen)
}

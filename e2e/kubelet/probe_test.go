package kubelet

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

func TestReadinessThresholds(t *testing.T) {
	cases := []struct {
		name     string
		settings ProbeSettings
		results  []bool
		want     []bool // Ready after each result
	}{
		{
			name:     "defaults: one success, three failures",
			settings: SettingsOf(&v1.Probe{}),
			results:  []bool{false, true, false, false, true, false, false, false},
			want:     []bool{false, true, true, true, true, true, true, false},
		},
		{
			name:     "success threshold 3",
			settings: SettingsOf(&v1.Probe{SuccessThreshold: 3, FailureThreshold: 1}),
			results:  []bool{true, true, false, true, true, true, false},
			want:     []bool{false, false, false, false, false, true, false},
		},
		{
			name:     "failures interrupted by a success start over",
			settings: SettingsOf(&v1.Probe{FailureThreshold: 2}),
			results:  []bool{true, false, true, false, false},
			want:     []bool{true, true, true, true, false},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var rs ReadinessState
			var got []bool
			for _, r := range c.results {
				rs.Observe(r, c.settings)
				got = append(got, rs.Ready)
			}
			if diff := cmp.Diff(c.want, got); diff != "" {
				t.Errorf("ready after each result (-want +got):\n%s", diff)
			}
		})
	}
}

func TestSettingsDefaults(t *testing.T) {
	got := SettingsOf(&v1.Probe{InitialDelaySeconds: 2, PeriodSeconds: 1})
	want := ProbeSettings{InitialDelay: 2e9, Period: 1e9, Timeout: 1e9, SuccessThreshold: 1, FailureThreshold: 3}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("settings (-want +got):\n%s", diff)
	}
}

func TestProbeActions(t *testing.T) {
	status := http.StatusOK
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" || r.Header.Get("X-Probe") != "yes" {
			w.WriteHeader(http.StatusNotFound)
			return
		}
		w.WriteHeader(status)
	}))
	defer srv.Close()
	host, portS, _ := net.SplitHostPort(srv.Listener.Addr().String())
	port, _ := strconv.Atoi(portS)
	closed, _ := net.Listen("tcp", "127.0.0.1:0")
	closedPort := closed.Addr().(*net.TCPAddr).Port
	closed.Close()

	var d net.Dialer
	p := &Prober{Dial: d.DialContext}
	ctr := &v1.Container{Ports: []v1.ContainerPort{{Name: "http", ContainerPort: int32(port)}}}
	httpProbe := &v1.Probe{ProbeHandler: v1.ProbeHandler{HTTPGet: &v1.HTTPGetAction{
		Path: "/healthz", Port: intstr.FromString("http"), HTTPHeaders: []v1.HTTPHeader{{Name: "X-Probe", Value: "yes"}},
	}}}
	cases := []struct {
		name   string
		probe  *v1.Probe
		status int
		ok     bool
	}{
		{"http 200 via named port", httpProbe, 200, true},
		{"http 302 counts as success", httpProbe, 302, true},
		{"http 500 fails", httpProbe, 500, false},
		{"tcp open", &v1.Probe{ProbeHandler: v1.ProbeHandler{TCPSocket: &v1.TCPSocketAction{Port: intstr.FromInt32(int32(port))}}}, 200, true},
		{"tcp closed", &v1.Probe{ProbeHandler: v1.ProbeHandler{TCPSocket: &v1.TCPSocketAction{Port: intstr.FromInt32(int32(closedPort))}}}, 200, false},
		{"unknown named port", &v1.Probe{ProbeHandler: v1.ProbeHandler{TCPSocket: &v1.TCPSocketAction{Port: intstr.FromString("nope")}}}, 200, false},
	}
	for _, c := range cases {
		status = c.status
		err := p.Probe(context.Background(), c.probe, host, ctr)
		if (err == nil) != c.ok {
			t.Errorf("%s: Probe() = %v, want ok=%v", c.name, err, c.ok)
		}
	}
}

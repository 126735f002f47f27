package health

import (
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/directlb/directlb/pkg/localcloud/store"
)

func TestMatches(t *testing.T) {
	for _, tc := range []struct {
		matcher string
		code    int
		want    bool
	}{
		{"", 200, true}, {"", 399, true}, {"", 404, false},
		{"200", 200, true}, {"200", 204, false},
		{"200,204", 204, true}, {"200-299,404", 404, true}, {"200-299,404", 500, false},
	} {
		if got := matches(tc.matcher, tc.code); got != tc.want {
			t.Errorf("matches(%q, %d) = %v, want %v", tc.matcher, tc.code, got, tc.want)
		}
	}
}

func hostPort(t *testing.T, addr string) (string, int32) {
	t.Helper()
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(p)
	return h, int32(n)
}

func stateOf(tg string, t store.Target, c *Checker) string {
	s, _ := c.Status(tg, t)
	return s.State
}

func waitState(t *testing.T, c *Checker, tg string, target store.Target, want string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for stateOf(tg, target, c) != want {
		if time.Now().After(deadline) {
			t.Fatalf("target %v: state %q, want %q within %s", target, stateOf(tg, target, c), want, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestTransitionsAndRestore(t *testing.T) {
	var failing atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" || failing.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	defer srv.Close()
	ip, port := hostPort(t, srv.Listener.Addr().String())
	// A closed port for a TCP check.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	_, closedPort := hostPort(t, ln.Addr().String())
	ln.Close()

	hc := store.HealthCheck{Protocol: "HTTP", Port: "traffic-port", Path: "/healthz", Matcher: "200", IntervalSeconds: 1, TimeoutSeconds: 1, HealthyThreshold: 2, UnhealthyThreshold: 2}
	tcp := store.HealthCheck{Protocol: "TCP", Port: strconv.Itoa(int(closedPort)), IntervalSeconds: 1, TimeoutSeconds: 1, HealthyThreshold: 2, UnhealthyThreshold: 2}
	st := store.State{
		Listeners: map[string]*store.Listener{"l1": {TargetGroupARN: "tg-http"}, "l2": {TargetGroupARN: "tg-tcp"}},
		TargetGroups: map[string]*store.TargetGroup{
			"tg-http":   {ARN: "tg-http", HealthCheck: hc, Targets: []store.Target{{IP: ip, Port: port}}},
			"tg-tcp":    {ARN: "tg-tcp", HealthCheck: tcp, Targets: []store.Target{{IP: ip, Port: port}}},
			"tg-unused": {ARN: "tg-unused", HealthCheck: hc, Targets: []store.Target{{IP: ip, Port: port}}},
		},
	}
	target := store.Target{IP: ip, Port: port}
	path := filepath.Join(t.TempDir(), "health.json")
	c := New(Config{StatePath: path})
	c.Sync(st)
	if got := stateOf("tg-http", target, c); got != Initial {
		t.Errorf("before any check: %q, want initial", got)
	}
	if _, ok := c.Status("tg-unused", target); ok {
		t.Errorf("a group no listener uses is checked")
	}
	// First check at once, the second one interval later.
	waitState(t, c, "tg-http", target, Healthy, 2500*time.Millisecond)
	waitState(t, c, "tg-tcp", target, Unhealthy, 2500*time.Millisecond)
	if s, _ := c.Status("tg-tcp", target); s.Reason != "Target.FailedHealthChecks" {
		t.Errorf("refused TCP check: reason %q", s.Reason)
	}
	failing.Store(true)
	waitState(t, c, "tg-http", target, Unhealthy, 2500*time.Millisecond)
	if s, _ := c.Status("tg-http", target); s.Reason != "Target.ResponseCodeMismatch" {
		t.Errorf("503 answers: reason %q, want Target.ResponseCodeMismatch", s.Reason)
	}
	c.Close()

	// A new checker resumes from the saved states.
	c2 := New(Config{StatePath: path})
	defer c2.Close()
	c2.Sync(st)
	if got := stateOf("tg-http", target, c2); got != Unhealthy {
		t.Errorf("after restart: %q, want unhealthy restored", got)
	}
	// Deregistered (draining) targets are no longer checked.
	st.TargetGroups["tg-http"].Targets[0].DrainUntil = time.Now().Add(time.Minute)
	c2.Sync(st)
	if _, ok := c2.Status("tg-http", target); ok {
		t.Errorf("draining target still checked")
	}
}

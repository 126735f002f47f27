package echo

import (
	"context"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/zap"
)

// start runs a server on loopback; the returned channel is closed when Serve
// returns, and *serveErr holds its error then.
func start(t *testing.T, cfg Config) (*Server, context.CancelFunc, <-chan struct{}, *error) {
	t.Helper()
	cfg.ListenHost = "127.0.0.1"
	if cfg.PodName == "" {
		cfg.PodName = "pod-a"
	}
	if cfg.HealthStatus == 0 {
		cfg.HealthStatus = 200
	}
	if cfg.ShutdownTimeout == 0 {
		cfg.ShutdownTimeout = 10 * time.Second
	}
	s, err := Listen(cfg, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	var serveErr error
	go func() { serveErr = s.Serve(ctx); close(done) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			t.Error("server did not stop")
		}
	})
	return s, cancel, done, &serveErr
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

type reply struct {
	Code int
	Body string
}

func TestHTTPAndControls(t *testing.T) {
	s, _, _, _ := start(t, Config{TCPPorts: []int{0, 0}})
	for _, a := range s.TCPAddrs() {
		base := "http://" + a.String()
		steps := []struct {
			path string
			want reply
		}{
			{"/", reply{200, "pod-a\n"}},
			{"/healthz", reply{200, "200\n"}},
			{"/client", reply{200, "127.0.0.1\n"}},
			{"/nope", reply{404, "404 page not found\n"}},
			{"/control/health?status=500", reply{200, "health 500\n"}},
			{"/healthz", reply{500, "500\n"}},
			{"/control/health?status=x", reply{400, "status must be an HTTP status code\n"}},
			{"/control/health?status=200", reply{200, "health 200\n"}},
			{"/healthz", reply{200, "200\n"}},
		}
		for _, st := range steps {
			code, body := get(t, base+st.path)
			if diff := cmp.Diff(st.want, reply{code, body}); diff != "" {
				t.Errorf("GET %s (-want +got):\n%s", st.path, diff)
			}
		}
	}
}

func TestDelay(t *testing.T) {
	s, _, _, _ := start(t, Config{TCPPorts: []int{0}, Delay: 300 * time.Millisecond})
	base := "http://" + s.TCPAddrs()[0].String()
	t0 := time.Now()
	get(t, base+"/")
	if d := time.Since(t0); d < 300*time.Millisecond {
		t.Errorf("initial delay: answered after %s, want >= 300ms", d)
	}
	get(t, base+"/control/delay?ms=0")
	t0 = time.Now()
	get(t, base+"/healthz")
	if d := time.Since(t0); d > 250*time.Millisecond {
		t.Errorf("delay 0: answered after %s", d)
	}
}

func TestUDP(t *testing.T) {
	s, _, _, _ := start(t, Config{UDPPorts: []int{0}})
	c, err := net.Dial("udp", s.UDPAddrs()[0].String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 100)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff("pod-a\nhello", string(buf[:n])); diff != "" {
		t.Errorf("udp reply (-want +got):\n%s", diff)
	}
}

// On shutdown the listener closes at once (new connections are refused) while
// an in-flight request still gets its answer.
func TestShutdownFinishesInFlight(t *testing.T) {
	s, cancel, done, serveErr := start(t, Config{TCPPorts: []int{0}, Delay: time.Second})
	addr := s.TCPAddrs()[0].String()
	type res struct {
		code int
		body string
		err  error
	}
	inflight := make(chan res, 1)
	go func() {
		c := &http.Client{Timeout: 5 * time.Second}
		resp, err := c.Get("http://" + addr + "/")
		if err != nil {
			inflight <- res{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		inflight <- res{resp.StatusCode, string(b), err}
	}()
	time.Sleep(300 * time.Millisecond) // the request is now waiting out its delay
	cancel()
	time.Sleep(100 * time.Millisecond)
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Error("connect after shutdown started: succeeded, want refused")
	}
	r := <-inflight
	if r.err != nil || r.code != 200 || r.body != "pod-a\n" {
		t.Errorf("in-flight request: code %d body %q err %v; want 200 pod-a", r.code, r.body, r.err)
	}
	select {
	case <-done:
		if *serveErr != nil {
			t.Errorf("serve: %v", *serveErr)
		}
	case <-time.After(5 * time.Second):
		t.Error("server did not return after in-flight request ended")
	}
}

func TestValidate(t *testing.T) {
	cases := []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"good", Config{PodName: "a", TCPPorts: []int{8080}, HealthStatus: 200}, true},
		{"no name", Config{HealthStatus: 200}, false},
		{"bad port", Config{PodName: "a", UDPPorts: []int{70000}, HealthStatus: 200}, false},
		{"bad status", Config{PodName: "a", HealthStatus: 5}, false},
	}
	for _, c := range cases {
		if err := c.cfg.Validate(); (err == nil) != c.ok {
			t.Errorf("%s: Validate() = %v, want ok=%v", c.name, err, c.ok)
		}
	}
}

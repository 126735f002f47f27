package localcloud_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/credentials"

	"github.com/directlb/directlb/pkg/cloud"
	cloudaws "github.com/directlb/directlb/pkg/cloud/aws"
	"github.com/directlb/directlb/pkg/localcloud/localcloudtest"
)

func TestMain(m *testing.M) { localcloudtest.Main(m) }

func newClient(t *testing.T, endpoint string) *cloudaws.Client {
	t.Helper()
	cfg := cloudaws.DefaultConfig()
	cfg.Region = "us-east-1"
	cfg.Endpoint = endpoint
	cfg.MaxBackoff = 100 * time.Millisecond
	cfg.Credentials = credentials.NewStaticCredentialsProvider(localcloudtest.AccessKeyID, localcloudtest.SecretAccessKey, "")
	c, err := cloudaws.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// get does one request on a new connection and returns the body (the
// target's address).
func get(client *http.Client, url string) (string, error) {
	resp, err := client.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > timeout {
			t.Fatalf("%s: not within %s", what, timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return time.Since(start)
}

func healthOf(t *testing.T, c *cloudaws.Client, tg string) map[string]cloud.TargetState {
	t.Helper()
	th, err := c.DescribeTargetHealth(context.Background(), tg)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]cloud.TargetState{}
	for _, h := range th {
		out[h.IP] = h.State
	}
	return out
}

// heldConn is one long-lived TCP connection through the load balancer on
// which requests are sent one after another.
type heldConn struct {
	conn net.Conn
	r    *bufio.Reader
}

func (h *heldConn) request() (string, error) {
	_ = h.conn.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := fmt.Fprint(h.conn, "GET / HTTP/1.1\r\nHost: lb\r\n\r\n"); err != nil {
		return "", err
	}
	resp, err := http.ReadResponse(h.r, nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// datapathStory is what TestDatapath carries from one step to the next.
type datapathStory struct {
	nt       *localcloudtest.Net
	stateDir string
	c        *cloudaws.Client
	ctx      context.Context
	lb       cloud.LoadBalancer
	tg       cloud.TargetGroup
	lbURL    string
	fresh    *http.Client
	sick     string // the target whose health endpoint fails
	drained  string // the target deregistered under a held connection
}

func TestDatapath(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: the datapath test takes ~30 s")
	}
	nt := localcloudtest.New(t, 3)
	stateDir := t.TempDir()
	nt.StartLocalcloud(stateDir)
	s := &datapathStory{nt: nt, stateDir: stateDir, c: newClient(t, nt.APIEndpoint()), ctx: context.Background()}
	s.setup(t)
	s.spreadTCP(t)
	s.spreadUDP(t)
	s.failHealth(t)
	held := s.dialHeld(t)
	defer held.conn.Close()
	s.drain(t, held)
	s.restart(t)
}

// setup creates a TCP and a UDP listener to the three targets and waits
// until all are healthy.
func (s *datapathStory) setup(t *testing.T) {
	nt, c, ctx := s.nt, s.c, s.ctx
	lb, err := c.CreateLoadBalancer(ctx, cloud.LoadBalancerSpec{Name: "dp", Tags: cloud.Tags{cloud.TagCluster: "dlbt"}})
	if err != nil {
		t.Fatal(err)
	}
	hc := cloud.HealthCheck{Protocol: "HTTP", Port: "traffic-port", Path: "/healthz", IntervalSeconds: 1, TimeoutSeconds: 1, HealthyThreshold: 2, UnhealthyThreshold: 2}
	tg, err := c.CreateTargetGroup(ctx, cloud.TargetGroupSpec{Name: "dp-http", Protocol: cloud.ProtocolTCP, Port: localcloudtest.EchoHTTPPort, HealthCheck: hc, DeregistrationDelaySeconds: 5})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateListener(ctx, cloud.ListenerSpec{LoadBalancerARN: lb.ARN, Protocol: cloud.ProtocolTCP, Port: 80, TargetGroupARN: tg.ARN}); err != nil {
		t.Fatal(err)
	}
	udpHC := cloud.HealthCheck{Protocol: "TCP", Port: fmt.Sprint(localcloudtest.EchoHTTPPort), IntervalSeconds: 1, TimeoutSeconds: 1, HealthyThreshold: 2, UnhealthyThreshold: 2}
	utg, err := c.CreateTargetGroup(ctx, cloud.TargetGroupSpec{Name: "dp-udp", Protocol: cloud.ProtocolUDP, Port: localcloudtest.EchoUDPPort, HealthCheck: udpHC, DeregistrationDelaySeconds: 5})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateListener(ctx, cloud.ListenerSpec{LoadBalancerARN: lb.ARN, Protocol: cloud.ProtocolUDP, Port: 53, TargetGroupARN: utg.ARN}); err != nil {
		t.Fatal(err)
	}
	var targets, udpTargets []cloud.Target
	for _, a := range nt.TargetAddrs {
		targets = append(targets, cloud.Target{IP: a, Port: localcloudtest.EchoHTTPPort})
		udpTargets = append(udpTargets, cloud.Target{IP: a, Port: localcloudtest.EchoUDPPort})
	}
	if err := c.RegisterTargets(ctx, tg.ARN, targets); err != nil {
		t.Fatal(err)
	}
	if err := c.RegisterTargets(ctx, utg.ARN, udpTargets); err != nil {
		t.Fatal(err)
	}
	allHealthy := func(tgARN string, n int) func() bool {
		return func() bool {
			h := healthOf(t, c, tgARN)
			healthy := 0
			for _, s := range h {
				if s == cloud.TargetHealthy {
					healthy++
				}
			}
			return healthy == n
		}
	}
	waitFor(t, "3 targets healthy", 10*time.Second, allHealthy(tg.ARN, 3))
	waitFor(t, "3 UDP targets healthy", 10*time.Second, allHealthy(utg.ARN, 3))
	s.lb, s.tg = lb, tg
	s.lbURL = fmt.Sprintf("http://%s:80/", lb.Addresses[0])
	s.fresh = &http.Client{Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil}, Timeout: 3 * time.Second}
}

// count sends n requests, each on a new connection, and counts the answers
// by target.
func (s *datapathStory) count(t *testing.T, n int) map[string]int {
	t.Helper()
	fresh, lbURL := s.fresh, s.lbURL
	seen := map[string]int{}
	for i := range n {
		body, err := get(fresh, lbURL)
		if err != nil {
			t.Fatalf("request %d through %s: %v", i, lbURL, err)
		}
		seen[body]++
	}
	return seen
}

// spreadTCP: 300 requests reach all three.
func (s *datapathStory) spreadTCP(t *testing.T) {
	nt := s.nt
	seen := s.count(t, 300)
	for _, a := range nt.TargetAddrs {
		if seen[a] == 0 {
			t.Errorf("300 requests: target %s got none (%v)", a, seen)
		}
	}
	t.Logf("300 requests: %v", seen)
}

// spreadUDP: flows from different source ports spread over the targets.
func (s *datapathStory) spreadUDP(t *testing.T) {
	lb := s.lb
	udpSeen := map[string]int{}
	for i := range 30 {
		conn, err := net.Dial("udp4", net.JoinHostPort(lb.Addresses[0], "53"))
		if err != nil {
			t.Fatal(err)
		}
		_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
		fmt.Fprintf(conn, "ping%d", i)
		buf := make([]byte, 256)
		n, err := conn.Read(buf)
		conn.Close()
		if err != nil {
			t.Fatalf("UDP flow %d: %v", i, err)
		}
		addr, payload, _ := strings.Cut(string(buf[:n]), ":")
		if payload != fmt.Sprintf("ping%d", i) {
			t.Fatalf("UDP flow %d: answer %q", i, buf[:n])
		}
		udpSeen[addr]++
	}
	if len(udpSeen) < 2 {
		t.Errorf("30 UDP flows went to %v; want at least 2 targets", udpSeen)
	}
}

// failHealth fails one target's health endpoint: it is unhealthy within
// interval × threshold (2 s, plus one check's timeout and polling slack),
// then gets no new requests.
func (s *datapathStory) failHealth(t *testing.T) {
	nt, c, tg := s.nt, s.c, s.tg
	sick := nt.TargetAddrs[2]
	nt.SetHealth(sick, false)
	took := waitFor(t, "failing target unhealthy", 5*time.Second, func() bool {
		return healthOf(t, c, tg.ARN)[sick] == cloud.TargetUnhealthy
	})
	t.Logf("unhealthy after %s (interval 1s × threshold 2)", took)
	if took > 3500*time.Millisecond {
		t.Errorf("unhealthy after %s; want within interval × threshold (2s) plus 1.5s slack", took)
	}
	seen := s.count(t, 100)
	if seen[sick] != 0 {
		t.Errorf("unhealthy target %s got %d of 100 new requests", sick, seen[sick])
	}
	s.sick = sick
}

// dialHeld opens the long-lived connection drain holds.
func (s *datapathStory) dialHeld(t *testing.T) *heldConn {
	conn, err := net.Dial("tcp4", net.JoinHostPort(s.lb.Addresses[0], "80"))
	if err != nil {
		t.Fatal(err)
	}
	return &heldConn{conn: conn, r: bufio.NewReader(conn)}
}

// drain: a long-lived connection to a target that is then deregistered
// (delay 5 s) keeps working for the delay and is closed after it; the
// target gets no new connections meanwhile.
func (s *datapathStory) drain(t *testing.T, held *heldConn) {
	c, ctx, tg := s.c, s.ctx, s.tg
	drained, err := held.request()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.DeregisterTargets(ctx, tg.ARN, []cloud.Target{{IP: drained, Port: localcloudtest.EchoHTTPPort}}); err != nil {
		t.Fatal(err)
	}
	deregAt := time.Now()
	if s := healthOf(t, c, tg.ARN)[drained]; s != cloud.TargetDraining {
		t.Errorf("deregistered target %s: state %s, want draining", drained, s)
	}
	// The API answers once the state has the target draining; the
	// datapath takes the change from the state a moment later (its
	// reconcile loop), as an NLB takes a deregistration within seconds.
	// Until then a new connection may still reach the target; within a
	// second none may.
	for settle := time.Now(); s.count(t, 5)[drained] != 0; {
		if time.Since(settle) > time.Second {
			t.Fatalf("draining target %s still got new connections 1s after its deregistration", drained)
		}
	}
	for time.Since(deregAt) < 4*time.Second {
		body, err := held.request()
		if err != nil {
			t.Fatalf("held connection failed %s after deregistration (delay 5s): %v", time.Since(deregAt), err)
		}
		if body != drained {
			t.Fatalf("held connection answered by %s, want %s", body, drained)
		}
		if got := s.count(t, 5); got[drained] != 0 {
			t.Fatalf("draining target %s got new connections: %v", drained, got)
		}
		time.Sleep(300 * time.Millisecond)
	}
	var closedAfter time.Duration
	for {
		if _, err := held.request(); err != nil {
			closedAfter = time.Since(deregAt)
			break
		}
		if time.Since(deregAt) > 8*time.Second {
			t.Fatal("held connection still open 8s after deregistration with a 5s delay")
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("held connection closed %s after deregistration", closedAfter)
	if closedAfter < 4500*time.Millisecond {
		t.Errorf("held connection closed after %s, before the 5s delay", closedAfter)
	}
	if _, ok := healthOf(t, c, tg.ARN)[drained]; ok {
		t.Errorf("drained target %s still in the target group after the delay", drained)
	}
	s.drained = drained
}

// restart: the load balancer, targets, health and datapath come back.
func (s *datapathStory) restart(t *testing.T) {
	nt, c, ctx, lb, tg, sick, drained := s.nt, s.c, s.ctx, s.lb, s.tg, s.sick, s.drained
	nt.StopLocalcloud()
	nt.StartLocalcloud(s.stateDir)
	lbs, err := c.ListLoadBalancers(ctx, cloud.Tags{cloud.TagCluster: "dlbt"})
	if err != nil || len(lbs) != 1 || lbs[0].Addresses[0] != lb.Addresses[0] {
		t.Fatalf("after restart: load balancers %+v, %v; want %s at %s", lbs, err, lb.Name, lb.Addresses[0])
	}
	h := healthOf(t, c, tg.ARN)
	if len(h) != 2 || h[sick] != cloud.TargetUnhealthy {
		t.Errorf("after restart: targets %v; want 2 with %s still unhealthy", h, sick)
	}
	seen := s.count(t, 60)
	healthyOne := ""
	for _, a := range nt.TargetAddrs {
		if a != sick && a != drained {
			healthyOne = a
		}
	}
	if seen[healthyOne] != 60 {
		t.Errorf("after restart: 60 requests went to %v; want all to %s", seen, healthyOne)
	}
}

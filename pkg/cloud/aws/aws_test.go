package aws_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/directlb/directlb/pkg/cloud"
	cloudaws "github.com/directlb/directlb/pkg/cloud/aws"
	"github.com/directlb/directlb/pkg/localcloud"
	"github.com/directlb/directlb/pkg/localcloud/faults"
)

const (
	testKey    = "AKIDTEST"
	testSecret = "test-secret"
)

// startLocalcloud runs localcloud's API (no datapath) on a random loopback port.
func startLocalcloud(t *testing.T) *localcloud.Server {
	t.Helper()
	cfg := localcloud.DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.StateDir = t.TempDir()
	cfg.Datapath = false
	cfg.AccessKeyID, cfg.SecretAccessKey = testKey, testSecret
	srv, err := localcloud.New(cfg, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return srv
}

type clientOpts struct {
	secret      string
	pageSize    int32
	maxAttempts int
	reg         *prometheus.Registry
}

func newClient(t *testing.T, srv *localcloud.Server, o clientOpts) *cloudaws.Client {
	t.Helper()
	cfg := cloudaws.DefaultConfig()
	cfg.Region = "us-east-1"
	cfg.Endpoint = "http://" + srv.Addr()
	cfg.MaxBackoff = 20 * time.Millisecond
	if o.secret == "" {
		o.secret = testSecret
	}
	if o.pageSize != 0 {
		cfg.PageSize = o.pageSize
	}
	if o.maxAttempts != 0 {
		cfg.MaxAttempts = o.maxAttempts
	}
	cfg.RateLimits = map[string]cloudaws.Limit{} // the server's limits are what tests exercise
	cfg.Credentials = credentials.NewStaticCredentialsProvider(testKey, o.secret, "")
	if o.reg != nil {
		cfg.Registerer = o.reg
	}
	c, err := cloudaws.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// roundTrip is what TestRoundTrip carries from one step to the next.
type roundTrip struct {
	srv     *localcloud.Server
	c       *cloudaws.Client
	ctx     context.Context
	owner   cloud.Tags
	hc      cloud.HealthCheck
	lb      cloud.LoadBalancer
	tg, tg2 cloud.TargetGroup
	l       cloud.Listener
	targets []cloud.Target
}

func TestRoundTrip(t *testing.T) {
	srv := startLocalcloud(t)
	rt := &roundTrip{
		srv:   srv,
		c:     newClient(t, srv, clientOpts{}),
		ctx:   context.Background(),
		owner: cloud.Tags{cloud.TagCluster: "c1", cloud.TagService: "default/web"},
	}
	rt.create(t)
	rt.listByTags(t)
	rt.modify(t)
	rt.registerInBatches(t)
	rt.deleteInOrder(t)
}

func (rt *roundTrip) create(t *testing.T) {
	c, ctx, owner := rt.c, rt.ctx, rt.owner
	lb, err := c.CreateLoadBalancer(ctx, cloud.LoadBalancerSpec{Name: "web", Scheme: "internet-facing", Tags: owner})
	if err != nil {
		t.Fatal(err)
	}
	if len(lb.Addresses) != 1 || !strings.HasPrefix(lb.Addresses[0], "198.51.100.") || lb.State != "active" {
		t.Fatalf("created load balancer %+v: want one address in 198.51.100.0/24, active", lb)
	}
	hc := cloud.HealthCheck{Protocol: "HTTP", Port: "traffic-port", Path: "/healthz", IntervalSeconds: 5, TimeoutSeconds: 2, HealthyThreshold: 2, UnhealthyThreshold: 3}
	tg, err := c.CreateTargetGroup(ctx, cloud.TargetGroupSpec{Name: "web-80", Protocol: cloud.ProtocolTCP, Port: 8080, VPCID: "vpc-1", HealthCheck: hc, DeregistrationDelaySeconds: 5, Tags: owner})
	if err != nil {
		t.Fatal(err)
	}
	tg2, err := c.CreateTargetGroup(ctx, cloud.TargetGroupSpec{Name: "web-80-b", Protocol: cloud.ProtocolTCP, Port: 8080, HealthCheck: hc, DeregistrationDelaySeconds: 0, Tags: owner})
	if err != nil {
		t.Fatal(err)
	}
	l, err := c.CreateListener(ctx, cloud.ListenerSpec{LoadBalancerARN: lb.ARN, Protocol: cloud.ProtocolTCP, Port: 80, TargetGroupARN: tg.ARN, Tags: owner})
	if err != nil {
		t.Fatal(err)
	}
	rt.lb, rt.hc, rt.tg, rt.tg2, rt.l = lb, hc, tg, tg2, l
}

// listByTags: listed by tags, with what was asked for.
func (rt *roundTrip) listByTags(t *testing.T) {
	c, ctx, owner, lb, hc, tg, tg2, l := rt.c, rt.ctx, rt.owner, rt.lb, rt.hc, rt.tg, rt.tg2, rt.l
	lbs, err := c.ListLoadBalancers(ctx, cloud.Tags{cloud.TagCluster: "c1"})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]cloud.LoadBalancer{lb}, lbs); diff != "" {
		t.Errorf("ListLoadBalancers (-want +got):\n%s", diff)
	}
	if other, err := c.ListLoadBalancers(ctx, cloud.Tags{cloud.TagCluster: "c2"}); err != nil || len(other) != 0 {
		t.Errorf("ListLoadBalancers for another cluster = %v, %v; want none", other, err)
	}
	tgs, err := c.ListTargetGroups(ctx, owner)
	if err != nil {
		t.Fatal(err)
	}
	sort.Slice(tgs, func(i, j int) bool { return tgs[i].Name < tgs[j].Name })
	want := []cloud.TargetGroup{
		// A listing carries no attributes (DeregistrationDelay reads them).
		{ARN: tg.ARN, TargetGroupSpec: cloud.TargetGroupSpec{Name: "web-80", Protocol: cloud.ProtocolTCP, Port: 8080, VPCID: "vpc-1", HealthCheck: hc, Tags: owner}, LoadBalancerARNs: []string{lb.ARN}},
		{ARN: tg2.ARN, TargetGroupSpec: cloud.TargetGroupSpec{Name: "web-80-b", Protocol: cloud.ProtocolTCP, Port: 8080, HealthCheck: hc, DeregistrationDelaySeconds: 0, Tags: owner}},
	}
	if diff := cmp.Diff(want, tgs); diff != "" {
		t.Errorf("ListTargetGroups (-want +got):\n%s", diff)
	}
	for arn, want := range map[string]int32{tg.ARN: 5, tg2.ARN: 0} {
		if d, err := c.DeregistrationDelay(ctx, arn); err != nil || d != want {
			t.Errorf("DeregistrationDelay(%s) = %d, %v; want %d", arn, d, err, want)
		}
	}
	ls, err := c.ListListeners(ctx, lb.ARN)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]cloud.Listener{l}, ls); diff != "" {
		t.Errorf("ListListeners (-want +got):\n%s", diff)
	}
}

// modify the health check, the delay and the listener's target group.
func (rt *roundTrip) modify(t *testing.T) {
	c, ctx, owner, lb, tg, tg2, l := rt.c, rt.ctx, rt.owner, rt.lb, rt.tg, rt.tg2, rt.l
	hc2 := cloud.HealthCheck{Protocol: "TCP", Port: "9090", IntervalSeconds: 10, TimeoutSeconds: 5, HealthyThreshold: 3, UnhealthyThreshold: 3}
	if err := c.ModifyTargetGroup(ctx, tg.ARN, hc2, 30); err != nil {
		t.Fatal(err)
	}
	if err := c.ModifyListener(ctx, l.ARN, tg2.ARN); err != nil {
		t.Fatal(err)
	}
	tgs, _ := c.ListTargetGroups(ctx, owner)
	sort.Slice(tgs, func(i, j int) bool { return tgs[i].Name < tgs[j].Name })
	delay, err := c.DeregistrationDelay(ctx, tg.ARN)
	if got := tgs[0]; got.HealthCheck != hc2 || err != nil || delay != 30 || len(got.LoadBalancerARNs) != 0 {
		t.Errorf("after modify: %+v, delay %d (%v); want health check %+v, delay 30, no load balancer", got, delay, err, hc2)
	}
	ls, _ := c.ListListeners(ctx, lb.ARN)
	if len(ls) != 1 || ls[0].TargetGroupARN != tg2.ARN {
		t.Errorf("after modify listener: %+v; want target group %s", ls, tg2.ARN)
	}
}

// registerInBatches registers more than one batch; the server refuses more
// than 200 per call.
func (rt *roundTrip) registerInBatches(t *testing.T) {
	c, ctx, srv, tg2 := rt.c, rt.ctx, rt.srv, rt.tg2
	var targets []cloud.Target
	for i := range 450 {
		targets = append(targets, cloud.Target{IP: fmt.Sprintf("10.100.%d.%d", 1+i/200, 1+i%200), Port: 8080})
	}
	rt.targets = targets
	if err := c.RegisterTargets(ctx, tg2.ARN, targets); err != nil {
		t.Fatal(err)
	}
	th, err := c.DescribeTargetHealth(ctx, tg2.ARN)
	if err != nil {
		t.Fatal(err)
	}
	if len(th) != 450 {
		t.Fatalf("DescribeTargetHealth: %d targets, want 450", len(th))
	}
	for _, h := range th {
		if h.State != cloud.TargetHealthy {
			t.Fatalf("target %s: state %s, want healthy (API-only localcloud)", h.Target, h.State)
		}
	}
	if n := srv.Faults().Counts()["RegisterTargets"]["pass"]; n != 3 {
		t.Errorf("RegisterTargets calls = %d, want 3 batches", n)
	}
	if err := c.DeregisterTargets(ctx, tg2.ARN, targets[:250]); err != nil {
		t.Fatal(err)
	}
	th, _ = c.DescribeTargetHealth(ctx, tg2.ARN)
	if len(th) != 200 {
		t.Errorf("after deregistering 250 with delay 0: %d targets, want 200", len(th))
	}
}

// deleteInOrder: a target group in use cannot go; delete in order, twice.
func (rt *roundTrip) deleteInOrder(t *testing.T) {
	c, ctx, owner, lb, tg, tg2, l, targets := rt.c, rt.ctx, rt.owner, rt.lb, rt.tg, rt.tg2, rt.l, rt.targets
	if err := c.DeleteTargetGroup(ctx, tg2.ARN); err == nil || cloud.IsRetryable(err) {
		t.Errorf("deleting a target group in use: err %v, want a permanent error", err)
	} else if ae := (*cloud.APIError)(nil); !errors.As(err, &ae) || ae.Code != "ResourceInUse" {
		t.Errorf("deleting a target group in use: %v, want ResourceInUse", err)
	}
	for range 2 {
		if err := c.DeleteListener(ctx, l.ARN); err != nil {
			t.Fatal(err)
		}
		if err := c.DeleteTargetGroup(ctx, tg.ARN); err != nil {
			t.Fatal(err)
		}
		if err := c.DeleteTargetGroup(ctx, tg2.ARN); err != nil {
			t.Fatal(err)
		}
		if err := c.DeleteLoadBalancer(ctx, lb.ARN); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.DescribeTargetHealth(ctx, tg.ARN); !errors.Is(err, cloud.ErrNotFound) {
		t.Errorf("DescribeTargetHealth of a deleted target group: %v, want ErrNotFound", err)
	}
	if err := c.DeregisterTargets(ctx, tg.ARN, targets[:1]); err != nil {
		t.Errorf("DeregisterTargets of a deleted target group: %v, want nil", err)
	}
	if lbs, _ := c.ListLoadBalancers(ctx, owner); len(lbs) != 0 {
		t.Errorf("load balancers after delete: %v", lbs)
	}
}

func TestPagination(t *testing.T) {
	srv := startLocalcloud(t)
	c := newClient(t, srv, clientOpts{pageSize: 5})
	ctx := context.Background()
	var want []string
	for i := range 15 {
		tags := cloud.Tags{cloud.TagCluster: "mine"}
		if i%5 == 4 {
			tags = cloud.Tags{cloud.TagCluster: "other"}
		}
		lb, err := c.CreateLoadBalancer(ctx, cloud.LoadBalancerSpec{Name: fmt.Sprintf("lb-%02d", i), Tags: tags})
		if err != nil {
			t.Fatal(err)
		}
		if tags[cloud.TagCluster] == "mine" {
			want = append(want, lb.Name)
		}
		if _, err := c.CreateTargetGroup(ctx, cloud.TargetGroupSpec{Name: fmt.Sprintf("tg-%02d", i), Protocol: cloud.ProtocolUDP, Port: 53,
			HealthCheck: cloud.HealthCheck{Protocol: "TCP", Port: "53", IntervalSeconds: 10, TimeoutSeconds: 5, HealthyThreshold: 2, UnhealthyThreshold: 2}, Tags: tags}); err != nil {
			t.Fatal(err)
		}
	}
	lbs, err := c.ListLoadBalancers(ctx, cloud.Tags{cloud.TagCluster: "mine"})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, lb := range lbs {
		got = append(got, lb.Name)
	}
	sort.Strings(got)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("ListLoadBalancers over pages (-want +got):\n%s", diff)
	}
	tgs, err := c.ListTargetGroups(ctx, cloud.Tags{cloud.TagCluster: "mine"})
	if err != nil {
		t.Fatal(err)
	}
	if len(tgs) != 12 {
		t.Errorf("ListTargetGroups over pages: %d, want 12", len(tgs))
	}
	counts := srv.Faults().Counts()
	// 15 items in pages of 5; DescribeTags in batches of 20.
	if n := counts["DescribeLoadBalancers"]["pass"]; n != 3 {
		t.Errorf("DescribeLoadBalancers calls = %d, want 3 pages", n)
	}
	if n := counts["DescribeTargetGroups"]["pass"]; n != 3 {
		t.Errorf("DescribeTargetGroups calls = %d, want 3 pages", n)
	}
	if n := counts["DescribeTags"]["pass"]; n != 2 {
		t.Errorf("DescribeTags calls = %d, want 2 (one per list)", n)
	}
}

func TestRetriesAndErrors(t *testing.T) {
	ctx := context.Background()
	hc := cloud.HealthCheck{Protocol: "TCP", IntervalSeconds: 10, TimeoutSeconds: 5, HealthyThreshold: 2, UnhealthyThreshold: 2}
	for _, tc := range []struct {
		name          string
		rule          faults.Rule
		wantErrCode   string // "" means the call succeeds through retries
		wantCalls     map[string]int64
		wantThrottled float64 // client-side throttled attempts
	}{
		{name: "half throttled, retried through", rule: faults.Rule{Throttle: 0.5},
			wantCalls: map[string]int64{"pass": 1, "throttled": 1}, wantThrottled: 1},
		{name: "half 5xx, retried through", rule: faults.Rule{ServerError: 0.5},
			wantCalls: map[string]int64{"pass": 1, "serverError": 1}, wantThrottled: 0},
		{name: "always throttled", rule: faults.Rule{Throttle: 1}, wantErrCode: "Throttling",
			wantCalls: map[string]int64{"throttled": 3}, wantThrottled: 3},
		{name: "always 5xx", rule: faults.Rule{ServerError: 1}, wantErrCode: "ServiceUnavailable",
			wantCalls: map[string]int64{"serverError": 3}, wantThrottled: 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := startLocalcloud(t)
			reg := prometheus.NewRegistry()
			c := newClient(t, srv, clientOpts{maxAttempts: 3, reg: reg})
			srv.Faults().Set(faults.Spec{Rules: map[string]faults.Rule{"CreateTargetGroup": tc.rule}})
			_, err := c.CreateTargetGroup(ctx, cloud.TargetGroupSpec{Name: "tg", Protocol: cloud.ProtocolTCP, Port: 80, HealthCheck: hc})
			if tc.wantErrCode == "" && err != nil {
				t.Fatalf("CreateTargetGroup: %v, want success after retry", err)
			}
			if tc.wantErrCode != "" {
				var ae *cloud.APIError
				if !errors.As(err, &ae) || ae.Code != tc.wantErrCode || !ae.Retryable {
					t.Fatalf("CreateTargetGroup: %v, want retryable %s", err, tc.wantErrCode)
				}
			}
			if diff := cmp.Diff(tc.wantCalls, srv.Faults().Counts()["CreateTargetGroup"]); diff != "" {
				t.Errorf("server-side outcomes (-want +got):\n%s", diff)
			}
			if got := counterValue(t, reg, "directlb_cloud_api_throttled_total", "CreateTargetGroup"); got != tc.wantThrottled {
				t.Errorf("throttled metric = %v, want %v", got, tc.wantThrottled)
			}
			if got := counterValue(t, reg, "directlb_cloud_api_calls_total", "CreateTargetGroup"); got != 1 {
				t.Errorf("calls metric = %v, want 1 (one call, retries inside it)", got)
			}
		})
	}
}

// counterValue reads one counter labelled operation=op from reg (0 if absent).
func counterValue(t *testing.T, reg *prometheus.Registry, name, op string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "operation" && l.GetValue() == op {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

func TestServerRateLimitIsRetriedThrough(t *testing.T) {
	srv := startLocalcloud(t)
	c := newClient(t, srv, clientOpts{maxAttempts: 20})
	srv.Faults().Set(faults.Spec{Limits: map[string]faults.Limit{"CreateLoadBalancer": {Rate: 20, Burst: 2}}})
	start := time.Now()
	for i := range 8 {
		if _, err := c.CreateLoadBalancer(context.Background(), cloud.LoadBalancerSpec{Name: fmt.Sprintf("rl-%d", i)}); err != nil {
			t.Fatalf("create %d: %v", i, err)
		}
	}
	// 2 from the burst, 6 more at 20/s: at least ~300 ms.
	if d := time.Since(start); d < 250*time.Millisecond {
		t.Errorf("8 creates took %s; the 20/s limit allows no less than ~300ms", d)
	}
	if n := srv.Faults().Counts()["CreateLoadBalancer"]["rateLimited"]; n == 0 {
		t.Errorf("no call was rate limited")
	}
}

func TestBadSignatureRefused(t *testing.T) {
	srv := startLocalcloud(t)
	c := newClient(t, srv, clientOpts{secret: "wrong-secret"})
	_, err := c.ListLoadBalancers(context.Background(), nil)
	var ae *cloud.APIError
	if !errors.As(err, &ae) || ae.Code != "SignatureDoesNotMatch" || ae.Retryable {
		t.Fatalf("wrongly signed: %v, want permanent SignatureDoesNotMatch", err)
	}
	// Unsigned: refused with the AWS error shape and 403.
	resp, err := http.Post("http://"+srv.Addr()+"/", "application/x-www-form-urlencoded",
		strings.NewReader("Action=DescribeLoadBalancers&Version=2015-12-01"))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(body), "<Code>MissingAuthenticationToken</Code>") ||
		!strings.Contains(string(body), "<RequestId>") {
		t.Errorf("unsigned: %d %s; want 403 MissingAuthenticationToken with a RequestId", resp.StatusCode, body)
	}
	if n := srv.Faults().Counts()["DescribeLoadBalancers"]; len(n) != 0 {
		t.Errorf("refused requests reached the action: %v", n)
	}
}

// Package localcloud benchmarks localcloud's datapath against going straight
// to the target, in one run, on the same namespaces: forwarding throughput
// and connect+request latency, reported as ratios (LB / direct).
package localcloud

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/credentials"

	"github.com/directlb/directlb/pkg/cloud"
	cloudaws "github.com/directlb/directlb/pkg/cloud/aws"
	"github.com/directlb/directlb/pkg/localcloud/localcloudtest"
)

func TestMain(m *testing.M) { localcloudtest.Main(m) }

const (
	bulkBytes    = 64 << 20 // per throughput run
	bulkRuns     = 3
	latencyCount = 300
	budget       = 60 * time.Second // the whole benchmark, at most
)

// setup builds the namespaces, starts localcloud and makes a load balancer
// with an HTTP (80 → 8080) and a bulk (9000 → 9000) listener to one target.
func setup(b *testing.B) (nt *localcloudtest.Net, lbAddr, target string) {
	nt = localcloudtest.New(b, 1)
	nt.StartLocalcloud(b.TempDir())
	cfg := cloudaws.DefaultConfig()
	cfg.Region, cfg.Endpoint = "us-east-1", nt.APIEndpoint()
	cfg.Credentials = credentials.NewStaticCredentialsProvider(localcloudtest.AccessKeyID, localcloudtest.SecretAccessKey, "")
	c, err := cloudaws.New(context.Background(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	lb, err := c.CreateLoadBalancer(ctx, cloud.LoadBalancerSpec{Name: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	hc := cloud.HealthCheck{Protocol: "TCP", Port: "traffic-port", IntervalSeconds: 1, TimeoutSeconds: 1, HealthyThreshold: 2, UnhealthyThreshold: 2}
	target = nt.TargetAddrs[0]
	for _, port := range []int32{localcloudtest.EchoHTTPPort, localcloudtest.EchoBulkPort} {
		tg, err := c.CreateTargetGroup(ctx, cloud.TargetGroupSpec{Name: fmt.Sprintf("bench-%d", port), Protocol: cloud.ProtocolTCP, Port: port, HealthCheck: hc})
		if err != nil {
			b.Fatal(err)
		}
		lport := port
		if port == localcloudtest.EchoHTTPPort {
			lport = 80
		}
		if _, err := c.CreateListener(ctx, cloud.ListenerSpec{LoadBalancerARN: lb.ARN, Protocol: cloud.ProtocolTCP, Port: lport, TargetGroupARN: tg.ARN}); err != nil {
			b.Fatal(err)
		}
		if err := c.RegisterTargets(ctx, tg.ARN, []cloud.Target{{IP: target, Port: port}}); err != nil {
			b.Fatal(err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			th, err := c.DescribeTargetHealth(ctx, tg.ARN)
			if err == nil && len(th) == 1 && th[0].State == cloud.TargetHealthy {
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("target %s:%d not healthy in 10s: %v %v", target, port, th, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return nt, lb.Addresses[0], target
}

// throughput reads bulkBytes from addr's bulk source; bytes per second.
func throughput(b *testing.B, addr string) float64 {
	conn, err := net.DialTimeout("tcp4", addr, 3*time.Second)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	start := time.Now()
	if _, err := fmt.Fprintf(conn, "%d\n", bulkBytes); err != nil {
		b.Fatal(err)
	}
	n, err := io.Copy(io.Discard, conn)
	if err != nil || n != bulkBytes {
		b.Fatalf("bulk from %s: %d bytes, %v; want %d", addr, n, err, bulkBytes)
	}
	return float64(n) / time.Since(start).Seconds()
}

// latencies does latencyCount GETs, each on a new connection.
func latencies(b *testing.B, url string) []time.Duration {
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil}, Timeout: 3 * time.Second}
	out := make([]time.Duration, 0, latencyCount)
	for range latencyCount {
		start := time.Now()
		resp, err := client.Get(url)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		out = append(out, time.Since(start))
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

func pct(d []time.Duration, p float64) time.Duration { return d[int(float64(len(d)-1)*p)] }

// BenchmarkDatapath: run with -benchtime 1x (make bench does); each
// iteration is one full side-by-side measurement.
func BenchmarkDatapath(b *testing.B) {
	_, lbAddr, target := setup(b)
	start := time.Now()
	b.ResetTimer()
	for range b.N {
		if time.Since(start) > budget {
			break
		}
		// Alternate direct and LB so background load hits both alike.
		var direct, viaLB float64
		for range bulkRuns {
			direct += throughput(b, net.JoinHostPort(target, fmt.Sprint(localcloudtest.EchoBulkPort)))
			viaLB += throughput(b, net.JoinHostPort(lbAddr, fmt.Sprint(localcloudtest.EchoBulkPort)))
		}
		direct /= bulkRuns
		viaLB /= bulkRuns
		dl := latencies(b, fmt.Sprintf("http://%s:%d/", target, localcloudtest.EchoHTTPPort))
		ll := latencies(b, fmt.Sprintf("http://%s:80/", lbAddr))

		b.ReportMetric(direct/1e6, "direct_MB/s")
		b.ReportMetric(viaLB/1e6, "lb_MB/s")
		b.ReportMetric(viaLB/direct, "throughput_ratio")
		b.ReportMetric(float64(pct(dl, 0.5).Microseconds()), "direct_p50_us")
		b.ReportMetric(float64(pct(ll, 0.5).Microseconds()), "lb_p50_us")
		b.ReportMetric(float64(pct(ll, 0.5))/float64(pct(dl, 0.5)), "latency_p50_ratio")
		b.ReportMetric(float64(pct(dl, 0.99).Microseconds()), "direct_p99_us")
		b.ReportMetric(float64(pct(ll, 0.99).Microseconds()), "lb_p99_us")
		b.ReportMetric(float64(pct(ll, 0.99))/float64(pct(dl, 0.99)), "latency_p99_ratio")
	}
}

package controller

import (
	"context"
	"os"
	"strconv"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/directlb/directlb/internal/testenv"
	"github.com/directlb/directlb/pkg/controller"
	"github.com/directlb/directlb/pkg/localcloud"
)

// benchServices is the number of Services to converge:
// DLB_BENCH_LBC_SERVICES, default 200.
func benchServices(b *testing.B) int {
	n := 200
	if s := os.Getenv("DLB_BENCH_LBC_SERVICES"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 1 {
			b.Fatalf("DLB_BENCH_LBC_SERVICES=%q: want a positive number", s)
		}
		n = v
	}
	return n
}

// benchConfig is the bench's own client configuration: not rate limited
// (the controller's limits are what its flags give it).
func benchConfig(cfg *rest.Config) *rest.Config {
	c := rest.CopyConfig(cfg)
	c.QPS = -1
	return c
}

// benchClient is the bench's own client (not rate limited), with the
// namespace ns created.
func benchClient(b *testing.B, cfg *rest.Config, ns string) client.Client {
	c, err := client.New(benchConfig(cfg), client.Options{})
	if err != nil {
		b.Fatal(err)
	}
	if err := c.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
		b.Fatal(err)
	}
	return c
}

// startController sets the lb-controller up against srv (cluster name
// bench-<ns>, flags from DLB_BENCH_LBC_FLAGS) on a manager with the
// apiserver limits its --kube-api-qps and --kube-api-burst give the real
// binary, with the gate writer too when gates is set, resets the
// benchmark timer and starts the manager. It returns when
// it started and stop, which stops the manager.
func startController(b *testing.B, cfg *rest.Config, ns string, srv *localcloud.Server, gates bool) (start time.Time, stop func()) {
	lbs := testenv.SDKClient(b, srv, nil) // default client: retries and client-side pacing as in production
	ccfg := controllerConfig(b, "bench-"+ns)
	mgrCfg := rest.CopyConfig(cfg)
	ccfg.SetKubeAPILimits(mgrCfg)
	mgr, err := ctrl.NewManager(mgrCfg, ctrl.Options{
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		Controller:             controller.QueueOptions(),
	})
	if err != nil {
		b.Fatal(err)
	}
	mctx, cancel := context.WithCancel(context.Background())
	ctrls, err := controller.Setup(mgr, ccfg, lbs)
	if err != nil {
		cancel()
		b.Fatal(err)
	}
	if gates {
		if err := controller.SetupGates(mctx, mgr, ccfg, lbs, ctrls); err != nil {
			cancel()
			b.Fatal(err)
		}
	}
	done := make(chan error, 1)
	b.ResetTimer()
	start = time.Now()
	go func() { done <- mgr.Start(mctx) }()
	return start, func() {
		cancel()
		if err := <-done; err != nil {
			b.Errorf("manager: %v", err)
		}
	}
}

// tally sums localcloud's call counts (action → outcome → calls): the
// calls that passed, by action; all calls; the ones the limits refused.
func tally(counts map[string]map[string]int64) (passed map[string]int, total, refused int) {
	passed = map[string]int{}
	for action, m := range counts {
		passed[action] = int(m["pass"])
		for outcome, v := range m {
			total += int(v)
			if outcome != "pass" {
				refused += int(v)
			}
		}
	}
	return passed, total, refused
}

package readinessgate

import (
	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

var (
	gateReadyLatency = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "directlb_readiness_gate_ready_seconds",
		Help:    "Time from a pod's containers turning ready to its directlb readiness gate turning True (first time).",
		Buckets: []float64{0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 120, 300},
	})
	gateFlips = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "directlb_readiness_gate_flips_total",
		Help: "Readiness gate condition changes written, by new status and reason.",
	}, []string{"status", "reason"})
	gateFailOpen = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "directlb_readiness_gate_fail_open_total",
		Help: "Readiness gates set True by the fail-open timeout while the target was not healthy.",
	})
	healthPolls = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "directlb_readiness_gate_health_polls_total",
		Help: "DescribeTargetHealth calls made by the gate writer (one per target group per pass).",
	})
	unhealthyReady = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "directlb_readiness_gate_unhealthy_ready_pods",
		Help: "Pods whose readiness gate has latched True but whose targets the load balancer now reports unhealthy, by Service.",
	}, []string{"namespace", "service"})
	healthRegressions = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "directlb_readiness_gate_health_regressions_total",
		Help: "Times a Service's TargetsHealthy condition turned False (each is a Warning event).",
	})
	webhookRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "directlb_readiness_gate_webhook_requests_total",
		Help: "Pod admission requests by result (mutated, unchanged, error).",
	}, []string{"result"})
)

func init() {
	metrics.Registry.MustRegister(gateReadyLatency, gateFlips, gateFailOpen, healthPolls, webhookRequests, unhealthyReady, healthRegressions)
}

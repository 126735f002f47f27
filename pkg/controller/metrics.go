package controller

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
)

var (
	reconcileDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "directlb_reconcile_duration_seconds",
		Help:    "Time of one reconcile, per controller (service, targets).",
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
	}, []string{"controller"})
	reconcileErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "directlb_reconcile_errors_total",
		Help: "Reconcile errors per controller and kind (retryable, permanent, invalid_configuration).",
	}, []string{"controller", "kind"})
	targetRegistration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "directlb_target_registration_seconds",
		Help:    "Time from an endpoint turning ready (as the controller saw it) to its target being registered with the load balancer.",
		Buckets: []float64{0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60},
	})
	targetChanges = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "directlb_target_changes_total",
		Help: "Targets registered or deregistered.",
	}, []string{"op"})
	cloudTargetReads = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "directlb_target_health_reads_total",
		Help: "DescribeTargetHealth calls made to refresh the cached target lists.",
	})
)

func init() {
	metrics.Registry.MustRegister(reconcileDuration, reconcileErrors, targetRegistration, targetChanges, cloudTargetReads)
}

// timed measures a reconciler at its boundary.
func timed(name string, r reconcile.Reconciler) reconcile.Reconciler {
	return reconcile.Func(func(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
		start := time.Now()
		res, err := r.Reconcile(ctx, req)
		reconcileDuration.WithLabelValues(name).Observe(time.Since(start).Seconds())
		return res, err
	})
}

package controller

import (
	"fmt"
	"maps"
	"slices"
	"time"

	"golang.org/x/time/rate"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/client-go/util/workqueue"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	"github.com/directlb/directlb/pkg/cloud"
	"github.com/directlb/directlb/pkg/deploy"
	"github.com/directlb/directlb/pkg/recorder"
	"github.com/directlb/directlb/pkg/service"
	"github.com/directlb/directlb/pkg/targethealth"
)

// Controllers are the two reconcilers, for callers that need to reach them
// (issue 6's readiness gates read TargetGroups).
type Controllers struct {
	Services     *ServiceReconciler
	Targets      *TargetReconciler
	TargetGroups *TargetGroups
	// Health is the one target-health reader the target reconciler, the
	// gate writer and drain share.
	Health *targethealth.Cache
}

// Setup adds the Service and target reconcilers to mgr.
func Setup(mgr ctrl.Manager, cfg Config, lbs cloud.LoadBalancers) (*Controllers, error) {
	classes := service.ClassFilter{Classes: cfg.LoadBalancerClasses, Default: cfg.ManageDefaultClass}
	tgs := NewTargetGroups()
	health := targethealth.NewCache(lbs, targethealth.DefaultTTL)
	svcs := &ServiceReconciler{
		Client:       mgr.GetClient(),
		Recorder:     recorder.New(mgr.GetEventRecorder("directlb-lb-controller")),
		Deployer:     &deploy.Deployer{Cloud: deploy.NewInventory(lbs, cfg.CloudInventoryTTL)},
		Model:        service.Config{ClusterName: cfg.ClusterName, VPCID: cfg.VPCID},
		Classes:      classes,
		TargetGroups: tgs,
		ResyncPeriod: cfg.ResyncPeriod,
	}
	// Ours now, or was ours: a finalizer to clean up.
	relevant := predicate.NewPredicateFuncs(func(o client.Object) bool {
		s, ok := o.(*corev1.Service)
		return ok && (service.Wanted(s, classes) || controllerutil.ContainsFinalizer(s, Finalizer))
	})
	// Status writes (our own included) need no cloud pass. Services do
	// not bump metadata.generation, so compare the spec.
	specChanged := predicate.Funcs{UpdateFunc: func(e event.UpdateEvent) bool {
		o, ok1 := e.ObjectOld.(*corev1.Service)
		n, ok2 := e.ObjectNew.(*corev1.Service)
		return !ok1 || !ok2 || !equality.Semantic.DeepEqual(o.Spec, n.Spec) ||
			!maps.Equal(userAnnotations(o.Annotations), userAnnotations(n.Annotations)) ||
			!slices.Equal(o.Finalizers, n.Finalizers) ||
			(o.DeletionTimestamp == nil) != (n.DeletionTimestamp == nil)
	}}
	err := ctrl.NewControllerManagedBy(mgr).
		Named("service").
		For(&corev1.Service{}, builder.WithPredicates(relevant, specChanged)).
		WithOptions(controller.Options{MaxConcurrentReconciles: cfg.Concurrency, RateLimiter: retryLimiter()}).
		Complete(timed("service", svcs))
	if err != nil {
		return nil, fmt.Errorf("set up service controller: %w", err)
	}

	targets := &TargetReconciler{
		Client:        mgr.GetClient(),
		Cloud:         lbs,
		Classes:       classes,
		TargetGroups:  tgs,
		Health:        health,
		RefreshPeriod: cfg.TargetRefreshPeriod,
	}
	err = ctrl.NewControllerManagedBy(mgr).
		Named("targets").
		WithOptions(controller.Options{MaxConcurrentReconciles: cfg.Concurrency, RateLimiter: retryLimiter()}).
		WatchesRawSource(source.Channel(tgs.notify, &handler.EnqueueRequestForObject{})).
		Watches(&discoveryv1.EndpointSlice{}, targets.sliceHandler(cfg.TargetBatchWindow)).
		Watches(&corev1.Pod{}, targets.podHandler(cfg.TargetBatchWindow)).
		Complete(timed("targets", targets))
	if err != nil {
		return nil, fmt.Errorf("set up target controller: %w", err)
	}
	return &Controllers{Services: svcs, Targets: targets, TargetGroups: tgs, Health: health}, nil
}

// userAnnotations are a Service's annotations but the one the Service
// reconciler writes itself (service.AnnotationTargetGroups), whose change
// needs no cloud pass.
func userAnnotations(m map[string]string) map[string]string {
	if _, ok := m[service.AnnotationTargetGroups]; !ok {
		return m
	}
	out := maps.Clone(m)
	delete(out, service.AnnotationTargetGroups)
	return out
}

// retryLimiter backs a failing item off exponentially from 100 ms up to
// 30 s (controller-runtime's default goes to 16 minutes, too slow for a
// throttled cloud that recovers in seconds), with an overall 50/s bucket.
func retryLimiter() workqueue.TypedRateLimiter[reconcile.Request] {
	return workqueue.NewTypedMaxOfRateLimiter(
		workqueue.NewTypedItemExponentialFailureRateLimiter[reconcile.Request](100*time.Millisecond, 30*time.Second),
		&workqueue.TypedBucketRateLimiter[reconcile.Request]{Limiter: rate.NewLimiter(rate.Limit(50), 300)},
	)
}

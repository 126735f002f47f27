package controller

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
)

// leaderElectionID names the leader election Lease (the chart makes it and
// its Role).
const leaderElectionID = "lb-controller.directlb.io"

// QueueOptions are the controllers' workqueue options: the plain
// rate-limited workqueue, not controller-runtime's priority queue, whose
// v0.24 can deadlock on shutdown (a ready item handed to a worker that
// already left, under the queue's lock: controller-runtime#3538, fixed in
// v0.25, which needs the v0.37 Kubernetes libraries). A deadlocked queue
// holds the manager's shutdown for its whole grace period: a controller
// upgrade or failover that waits 30 s for nothing.
func QueueOptions() config.Controller {
	off := false
	return config.Controller{UsePriorityQueue: &off}
}

// NewManager is the controller-runtime manager cfg describes: its
// kubeconfig, metrics and probe addresses (a ping liveness check; a
// readiness check that the informer caches have synced) and leader
// election. Every replica, leader or standby, starts the informers of
// Services, Pods and EndpointSlices at once: the webhook and drain read
// them, and a standby that becomes leader starts warm.
func NewManager(cfg Config) (ctrl.Manager, error) {
	restCfg, err := loadRESTConfig(cfg.Kubeconfig)
	if err != nil {
		return nil, err
	}
	cfg.SetKubeAPILimits(restCfg)
	// Shutdown waits for the drain endpoint's delay, then for the rest.
	shutdown := max(30*time.Second, cfg.Drain.ShutdownDelay+10*time.Second)
	mgr, err := ctrl.NewManager(restCfg, ctrl.Options{
		GracefulShutdownTimeout:       &shutdown,
		Metrics:                       metricsserver.Options{BindAddress: cfg.MetricsBindAddress},
		HealthProbeBindAddress:        cfg.HealthProbeBindAddress,
		LeaderElection:                cfg.LeaderElect,
		LeaderElectionID:              leaderElectionID,
		LeaderElectionNamespace:       cfg.LeaderElectionNamespace,
		LeaderElectionReleaseOnCancel: true,
		Controller:                    QueueOptions(),
	})
	if err != nil {
		return nil, fmt.Errorf("create manager: %w", err)
	}
	if err := mgr.AddHealthzCheck("ping", healthz.Ping); err != nil {
		return nil, err
	}
	if err := mgr.AddReadyzCheck("ping", healthz.Ping); err != nil {
		return nil, err
	}
	for _, obj := range []client.Object{&corev1.Service{}, &corev1.Pod{}, &discoveryv1.EndpointSlice{}} {
		if _, err := mgr.GetCache().GetInformer(context.Background(), obj); err != nil {
			return nil, fmt.Errorf("informer for %T: %w", obj, err)
		}
	}
	if err := mgr.AddReadyzCheck("informer-caches", CachesSynced(mgr.GetCache())); err != nil {
		return nil, err
	}
	return mgr, nil
}

// cacheSyncCheck bounds how long one readiness probe looks at the caches.
const cacheSyncCheck = 200 * time.Millisecond

// CachesSynced is a readyz check that fails until every informer of c has
// synced: a replica whose caches are still filling would admit pods
// without seeing their Services (no gate, no drain hook) and answer
// drains without the pods.
func CachesSynced(c cache.Cache) healthz.Checker {
	return func(req *http.Request) error {
		ctx := context.Background()
		if req != nil {
			ctx = req.Context()
		}
		ctx, cancel := context.WithTimeout(ctx, cacheSyncCheck)
		defer cancel()
		if !c.WaitForCacheSync(ctx) {
			return errors.New("informer caches have not synced")
		}
		return nil
	}
}

func loadRESTConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig == "" {
		return ctrl.GetConfig()
	}
	return clientcmd.BuildConfigFromFlags("", kubeconfig)
}

// SetKubeAPILimits gives rc the client-side rate limit of --kube-api-qps
// and --kube-api-burst (in place of one rc may carry).
func (c *Config) SetKubeAPILimits(rc *rest.Config) {
	rc.QPS, rc.Burst, rc.RateLimiter = c.KubeAPIQPS, c.KubeAPIBurst, nil
}

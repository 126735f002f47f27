package controller

import (
	"fmt"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	ctrl "sigs.k8s.io/controller-runtime"
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
// kubeconfig, metrics and probe addresses (with ping checks) and leader
// election.
func NewManager(cfg Config) (ctrl.Manager, error) {
	restCfg, err := loadRESTConfig(cfg.Kubeconfig)
	if err != nil {
		return nil, err
	}
	mgr, err := ctrl.NewManager(restCfg, ctrl.Options{
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
	return mgr, nil
}

func loadRESTConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig == "" {
		return ctrl.GetConfig()
	}
	return clientcmd.BuildConfigFromFlags("", kubeconfig)
}

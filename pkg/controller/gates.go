package controller

import (
	"context"

	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/directlb/directlb/pkg/cloud"
	"github.com/directlb/directlb/pkg/drain"
	"github.com/directlb/directlb/pkg/readinessgate"
	"github.com/directlb/directlb/pkg/service"
)

// SetupGates adds the readiness gates (the webhook with its serving
// certificate, and the gate writer) and the drain endpoint to mgr; nothing
// with --readiness-gates=false. ctrls are Setup's reconcilers, whose target
// groups the gates and drain read.
func SetupGates(ctx context.Context, mgr ctrl.Manager, cfg Config, lbs cloud.LoadBalancers, ctrls *Controllers) error {
	if !cfg.Gates.Enabled {
		return nil
	}
	getCert, ready, err := readinessgate.ServingCertificate(mgr, cfg.Gates, cfg.Certs)
	if err != nil {
		return err
	}
	_, err = readinessgate.Setup(ctx, mgr, readinessgate.Options{
		Config:         cfg.Gates,
		Classes:        service.ClassFilter{Classes: cfg.LoadBalancerClasses, Default: cfg.ManageDefaultClass},
		Cloud:          lbs,
		Health:         ctrls.Health,
		TargetGroups:   ctrls.TargetGroups,
		Wake:           ctrls.TargetGroups.Subscribe(),
		Drain:          cfg.Drain.Hook(),
		GetCertificate: getCert,
		CertReady:      ready,
		Concurrency:    cfg.Concurrency,
	})
	if err != nil {
		return err
	}
	return drain.Setup(ctx, mgr, &drain.Waiter{
		Reader:          mgr.GetCache(),
		APIReader:       mgr.GetAPIReader(),
		Health:          ctrls.Health,
		TargetGroups:    ctrls.TargetGroups,
		Config:          cfg.Drain,
		ListenAfterStop: cfg.Gates.WebhookShutdownDelay,
	})
}

// Command lb-controller gives direct-access Services a cloud load balancer
// whose targets are the pods' own IPs; see docs/lb-controller.md.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/pflag"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	cloudaws "github.com/directlb/directlb/pkg/cloud/aws"
	"github.com/directlb/directlb/pkg/controller"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "lb-controller:", err)
		os.Exit(1)
	}
}

func run() error {
	cfg := controller.DefaultConfig()
	fs := pflag.NewFlagSet("lb-controller", pflag.ContinueOnError)
	cfg.BindFlags(fs)
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return nil
		}
		return err
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&cfg.Log)))

	mgr, err := controller.NewManager(cfg)
	if err != nil {
		return err
	}
	ctx := ctrl.SetupSignalHandler()
	cfg.Cloud.Registerer = ctrlmetrics.Registry // per-operation call metrics on the controller's /metrics
	lbs, err := cloudaws.New(ctx, cfg.Cloud)
	if err != nil {
		return fmt.Errorf("cloud client: %w", err)
	}
	ctrls, err := controller.Setup(mgr, cfg, lbs)
	if err != nil {
		return err
	}
	if err := controller.SetupGates(ctx, mgr, cfg, lbs, ctrls); err != nil {
		return err
	}
	ctrl.Log.Info("starting lb-controller", "cluster", cfg.ClusterName, "cloudEndpoint", cfg.Cloud.Endpoint)
	return mgr.Start(ctx)
}

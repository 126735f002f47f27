// Command lb-controller gives direct-access Services a cloud load balancer
// whose targets are the pods' own IPs; see docs/lb-controller.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"

	"github.com/spf13/pflag"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/directlb/directlb/pkg/cloud"
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
	awsCfg := cloudaws.DefaultConfig()
	bindCloudFlags(fs, &awsCfg)
	gateCfg := defaultGateConfig()
	gateCfg.BindFlags(fs)
	zapOpts := zap.Options{}
	goFlags := flag.NewFlagSet("zap", flag.ContinueOnError)
	zapOpts.BindFlags(goFlags)
	fs.AddGoFlagSet(goFlags)
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return nil
		}
		return err
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	if err := gateCfg.Validate(); err != nil {
		return err
	}
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&zapOpts)))

	restCfg, err := restConfig(cfg.Kubeconfig)
	if err != nil {
		return err
	}
	mgr, err := ctrl.NewManager(restCfg, ctrl.Options{
		Metrics:                       metricsserver.Options{BindAddress: cfg.MetricsBindAddress},
		HealthProbeBindAddress:        cfg.HealthProbeBindAddress,
		LeaderElection:                cfg.LeaderElect,
		LeaderElectionID:              "lb-controller.directlb.io",
		LeaderElectionNamespace:       cfg.LeaderElectionNamespace,
		LeaderElectionReleaseOnCancel: true,
	})
	if err != nil {
		return fmt.Errorf("create manager: %w", err)
	}
	ctx := ctrl.SetupSignalHandler()
	lbs, err := newCloud(ctx, cfg, awsCfg)
	if err != nil {
		return err
	}
	ctrls, err := controller.Setup(mgr, cfg, lbs)
	if err != nil {
		return err
	}
	if err := setupGates(ctx, mgr, cfg, gateCfg, lbs, ctrls); err != nil {
		return err
	}
	if err := mgr.AddHealthzCheck("ping", healthz.Ping); err != nil {
		return err
	}
	if err := mgr.AddReadyzCheck("ping", healthz.Ping); err != nil {
		return err
	}
	ctrl.Log.Info("starting lb-controller", "cluster", cfg.ClusterName, "cloudEndpoint", cfg.CloudEndpoint)
	return mgr.Start(ctx)
}

func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig == "" {
		return ctrl.GetConfig()
	}
	return clientcmd.BuildConfigFromFlags("", kubeconfig)
}

// bindCloudFlags adds the ELBv2 client's tuning flags (--aws-*); region and
// endpoint come from --cloud-region and --cloud-endpoint instead.
func bindCloudFlags(fs *pflag.FlagSet, c *cloudaws.Config) {
	awsFlags := pflag.NewFlagSet("aws", pflag.ContinueOnError)
	c.BindFlags(awsFlags)
	awsFlags.VisitAll(func(f *pflag.Flag) {
		if f.Name != "aws-region" && f.Name != "aws-endpoint" {
			fs.AddFlag(f)
		}
	})
}

// newCloud builds the ELBv2 client (AWS, or localcloud by endpoint); its
// per-operation call metrics go to the controller's registry.
func newCloud(ctx context.Context, cfg controller.Config, awsCfg cloudaws.Config) (cloud.LoadBalancers, error) {
	awsCfg.Region = cfg.CloudRegion
	awsCfg.Endpoint = cfg.CloudEndpoint
	awsCfg.Registerer = ctrlmetrics.Registry
	c, err := cloudaws.New(ctx, awsCfg)
	if err != nil {
		return nil, fmt.Errorf("cloud client: %w", err)
	}
	return c, nil
}

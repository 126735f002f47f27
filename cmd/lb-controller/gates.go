package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"path/filepath"

	"github.com/spf13/pflag"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/certwatcher"

	"github.com/directlb/directlb/pkg/certs"
	"github.com/directlb/directlb/pkg/cloud"
	"github.com/directlb/directlb/pkg/controller"
	"github.com/directlb/directlb/pkg/drain"
	"github.com/directlb/directlb/pkg/readinessgate"
	"github.com/directlb/directlb/pkg/service"
)

// gateConfig is the configuration of readiness gates, their webhook
// certificates and drain (issue 6).
type gateConfig struct {
	Gates readinessgate.Config
	Certs certs.Config
	Drain drain.Config
}

func defaultGateConfig() gateConfig {
	return gateConfig{Gates: readinessgate.DefaultConfig(), Certs: certs.DefaultConfig(), Drain: drain.DefaultConfig()}
}

func (g *gateConfig) BindFlags(fs *pflag.FlagSet) {
	g.Gates.BindFlags(fs)
	g.Certs.BindFlags(fs)
	g.Drain.BindFlags(fs)
}

func (g *gateConfig) Validate() error {
	if !g.Gates.Enabled {
		return nil
	}
	if err := g.Gates.Validate(); err != nil {
		return err
	}
	if err := g.Certs.Validate(); err != nil {
		return err
	}
	return g.Drain.Validate()
}

// setupGates wires the webhook (with its certificates and configuration),
// the gate writer and the drain endpoint.
func setupGates(ctx context.Context, mgr ctrl.Manager, cfg controller.Config, g gateConfig, lbs cloud.LoadBalancers, ctrls *controller.Controllers) error {
	if !g.Gates.Enabled {
		return nil
	}
	var getCert func(*tls.ClientHelloInfo) (*tls.Certificate, error)
	var ready <-chan struct{}
	if g.Gates.WebhookEnabled() {
		if g.Certs.Dir != "" {
			w, err := certwatcher.New(filepath.Join(g.Certs.Dir, "tls.crt"), filepath.Join(g.Certs.Dir, "tls.key"))
			if err != nil {
				return fmt.Errorf("webhook certificate files: %w", err)
			}
			if err := mgr.Add(w); err != nil {
				return err
			}
			getCert = w.GetCertificate
			if g.Gates.ManageWebhookConfiguration {
				// cert-manager's CA injector owns the bundle.
				if err := mgr.Add(publishOnce(mgr, g.Gates)); err != nil {
					return err
				}
			}
		} else {
			m := &certs.Manager{Client: mgr.GetClient(), Reader: mgr.GetAPIReader(), Config: g.Certs, Hosts: g.Gates.Hosts()}
			if g.Gates.ManageWebhookConfiguration {
				m.OnCABundle = func(ctx context.Context, bundle []byte) error {
					return readinessgate.EnsureConfiguration(ctx, mgr.GetClient(), mgr.GetAPIReader(), g.Gates, bundle)
				}
			}
			if err := mgr.Add(m); err != nil {
				return err
			}
			getCert, ready = m.GetCertificate, m.Ready()
		}
	}
	classes := service.ClassFilter{Classes: cfg.LoadBalancerClasses, Default: cfg.ManageDefaultClass}
	_, err := readinessgate.Setup(ctx, mgr, readinessgate.Options{
		Config:         g.Gates,
		Classes:        classes,
		Cloud:          lbs,
		TargetGroups:   ctrls.TargetGroups,
		Drain:          g.Drain.Hook(),
		GetCertificate: getCert,
		CertReady:      ready,
		Concurrency:    cfg.Concurrency,
	})
	if err != nil {
		return err
	}
	return drain.Setup(ctx, mgr, &drain.Waiter{
		Reader:       mgr.GetCache(),
		APIReader:    mgr.GetAPIReader(),
		Cloud:        lbs,
		TargetGroups: ctrls.TargetGroups,
		ClusterName:  cfg.ClusterName,
		Config:       g.Drain,
	})
}

type runnableFunc func(context.Context) error

func (f runnableFunc) Start(ctx context.Context) error { return f(ctx) }
func (f runnableFunc) NeedLeaderElection() bool        { return false }

func publishOnce(mgr ctrl.Manager, cfg readinessgate.Config) runnableFunc {
	return func(ctx context.Context) error {
		return readinessgate.EnsureConfiguration(ctx, mgr.GetClient(), mgr.GetAPIReader(), cfg, nil)
	}
}

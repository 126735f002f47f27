package readinessgate

import (
	"context"
	"crypto/tls"
	"fmt"
	"path/filepath"

	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/certwatcher"

	"github.com/directlb/directlb/pkg/certs"
)

// ServingCertificate adds to mgr what serves the webhook's certificate and
// returns it for Options.GetCertificate and Options.CertReady (nil, nil
// when the webhook does not run).
//
// With cc.Dir set the certificate is the files tls.crt and tls.key there
// (e.g. a cert-manager Certificate's Secret), reloaded when they change;
// cert-manager's CA injector then owns the CA bundle, so the
// MutatingWebhookConfiguration is written once, without one. Otherwise a
// certs.Manager issues and renews the CA and the certificate in cc.Secret
// and writes the configuration with each new CA bundle.
func ServingCertificate(mgr ctrl.Manager, cfg Config, cc certs.Config) (func(*tls.ClientHelloInfo) (*tls.Certificate, error), <-chan struct{}, error) {
	if !cfg.WebhookEnabled() {
		return nil, nil, nil
	}
	if cc.Dir == "" {
		m := &certs.Manager{Client: mgr.GetClient(), Reader: mgr.GetAPIReader(), Config: cc, Hosts: cfg.Hosts()}
		if cfg.ManageWebhookConfiguration {
			m.OnCABundle = func(ctx context.Context, bundle []byte) error {
				return EnsureConfiguration(ctx, mgr.GetClient(), mgr.GetAPIReader(), cfg, bundle)
			}
		}
		if err := mgr.Add(m); err != nil {
			return nil, nil, err
		}
		return m.GetCertificate, m.Ready(), nil
	}
	w, err := certwatcher.New(filepath.Join(cc.Dir, "tls.crt"), filepath.Join(cc.Dir, "tls.key"))
	if err != nil {
		return nil, nil, fmt.Errorf("webhook certificate files: %w", err)
	}
	if err := mgr.Add(w); err != nil {
		return nil, nil, err
	}
	if cfg.ManageWebhookConfiguration {
		if err := mgr.Add(&configurationWriter{mgr: mgr, cfg: cfg}); err != nil {
			return nil, nil, err
		}
	}
	return w.GetCertificate, nil, nil
}

// configurationWriter writes the MutatingWebhookConfiguration once at
// start and keeps the CA bundle the object has. Every replica runs it, as
// every replica serves the webhook.
type configurationWriter struct {
	mgr ctrl.Manager
	cfg Config
}

func (w *configurationWriter) Start(ctx context.Context) error {
	return EnsureConfiguration(ctx, w.mgr.GetClient(), w.mgr.GetAPIReader(), w.cfg, nil)
}

// NeedLeaderElection implements manager.LeaderElectionRunnable.
func (w *configurationWriter) NeedLeaderElection() bool { return false }

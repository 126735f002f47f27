// Package certs gives the lb-controller's webhook a serving certificate it
// makes itself: a CA and a serving certificate kept in one Secret (so every
// replica serves the same one), renewed before they expire, with the CA
// bundle handed to a callback that patches the webhook configuration.
package certs

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spf13/pflag"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"
)

// Secret keys.
const (
	KeyCACert   = "ca.crt"
	KeyCAKey    = "ca.key"
	KeyCABundle = "ca-bundle.crt" // current CA and, during a CA rotation, the previous one
	KeyCert     = corev1.TLSCertKey
	KeyKey      = corev1.TLSPrivateKeyKey
)

// Config says where the certificates live and how long they last.
type Config struct {
	// Secret is "namespace/name" of the Secret holding the CA and the
	// serving certificate.
	Secret string
	// Validity is the serving certificate's lifetime; the CA lives 4×
	// longer. Each is renewed when less than a third of its life is left.
	Validity time.Duration
	// CheckInterval is how often the Secret is checked for renewal.
	CheckInterval time.Duration
	// Dir, when set, serves tls.crt/tls.key from this directory instead
	// (e.g. a cert-manager Certificate's Secret mounted there); the CA
	// bundle is then left to cert-manager's CA injector.
	Dir string
}

// DefaultConfig returns the flag defaults.
func DefaultConfig() Config {
	return Config{Secret: "kube-system/directlb-webhook-tls", Validity: 90 * 24 * time.Hour, CheckInterval: time.Hour}
}

// BindFlags registers the flags.
func (c *Config) BindFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.Secret, "webhook-cert-secret", c.Secret, "namespace/name of the Secret with the self-generated webhook CA and serving certificate")
	fs.DurationVar(&c.Validity, "webhook-cert-validity", c.Validity, "lifetime of the self-generated serving certificate (the CA lives 4x longer); renewed with a third left")
	fs.DurationVar(&c.CheckInterval, "webhook-cert-check-interval", c.CheckInterval, "how often the webhook certificates are checked for renewal")
	fs.StringVar(&c.Dir, "webhook-cert-dir", c.Dir, "serve tls.crt/tls.key from this directory (e.g. from cert-manager) instead of self-generated certificates")
}

// Validate reports every invalid setting.
func (c *Config) Validate() error {
	var errs []error
	if c.Dir == "" {
		if ns, name, ok := strings.Cut(c.Secret, "/"); !ok || ns == "" || name == "" {
			errs = append(errs, fmt.Errorf("--webhook-cert-secret %q: must be namespace/name", c.Secret))
		}
		if c.Validity < time.Minute {
			errs = append(errs, fmt.Errorf("--webhook-cert-validity %s: must be at least 1m", c.Validity))
		}
	}
	if c.CheckInterval < time.Second {
		errs = append(errs, fmt.Errorf("--webhook-cert-check-interval %s: must be at least 1s", c.CheckInterval))
	}
	return errors.Join(errs...)
}

// Manager keeps the Secret's certificates valid and serves the current
// serving certificate.
type Manager struct {
	Client client.Client
	// Reader reads the Secret; give it the manager's API reader
	// (mgr.GetAPIReader()) so the controller needs no cluster-wide
	// list/watch of Secrets for a cache. Nil reads through Client.
	Reader client.Reader
	Config Config
	// Hosts are the DNS names or IP addresses the serving certificate
	// covers.
	Hosts []string
	// OnCABundle is called with the CA bundle after every change (and once
	// at start); a failure is retried on the next check.
	OnCABundle func(ctx context.Context, bundle []byte) error
	// Now is the clock (tests); nil is time.Now.
	Now func() time.Time

	cert       atomic.Pointer[tls.Certificate]
	readyOnce  sync.Once
	ready      chan struct{}
	initOnce   sync.Once
	lastBundle []byte
}

func (m *Manager) init() {
	m.initOnce.Do(func() { m.ready = make(chan struct{}) })
}

// Ready is closed once a serving certificate is loaded.
func (m *Manager) Ready() <-chan struct{} {
	m.init()
	return m.ready
}

// GetCertificate is a tls.Config.GetCertificate.
func (m *Manager) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	c := m.cert.Load()
	if c == nil {
		return nil, errors.New("no webhook serving certificate yet")
	}
	return c, nil
}

// NeedLeaderElection: every replica serves the webhook, so every replica
// keeps its certificate; the Secret's resourceVersion settles races.
func (m *Manager) NeedLeaderElection() bool { return false }

// Start checks at once and then every CheckInterval until ctx ends.
func (m *Manager) Start(ctx context.Context) error {
	m.init()
	logger := log.FromContext(ctx).WithName("webhook-certs")
	t := time.NewTicker(m.Config.CheckInterval)
	defer t.Stop()
	fast := time.NewTimer(0)
	defer fast.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-fast.C:
		}
		if err := m.Check(ctx); err != nil {
			logger.Error(err, "webhook certificates")
			fast.Reset(5 * time.Second)
		}
	}
}

func (m *Manager) now() time.Time {
	if m.Now != nil {
		return m.Now()
	}
	return time.Now()
}

// Check makes sure the Secret holds a CA and a serving certificate that
// are valid for a while yet and cover Hosts, renews what is due, serves the
// result and hands the bundle on.
func (m *Manager) Check(ctx context.Context) error {
	m.init()
	ns, name, _ := strings.Cut(m.Config.Secret, "/")
	sec := &corev1.Secret{}
	var r client.Reader = m.Client
	if m.Reader != nil {
		r = m.Reader
	}
	err := r.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, sec)
	exists := err == nil
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("get secret %s: %w", m.Config.Secret, err)
	}
	data, changed, err := Renew(sec.Data, m.Hosts, m.Config.Validity, m.now())
	if err != nil {
		return err
	}
	if changed {
		sec.Data = data
		sec.Type = corev1.SecretTypeTLS
		if exists {
			err = m.Client.Update(ctx, sec)
		} else {
			sec.ObjectMeta = metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"app.kubernetes.io/managed-by": "directlb-lb-controller"}}
			err = m.Client.Create(ctx, sec)
		}
		if err != nil {
			// Another replica won the race: take its result next time.
			return fmt.Errorf("write secret %s: %w", m.Config.Secret, err)
		}
		log.FromContext(ctx).Info("webhook certificates renewed", "secret", m.Config.Secret)
	}
	if m.OnCABundle != nil && !bytes.Equal(m.lastBundle, data[KeyCABundle]) {
		if err := m.OnCABundle(ctx, data[KeyCABundle]); err != nil {
			return fmt.Errorf("publish CA bundle: %w", err)
		}
		m.lastBundle = data[KeyCABundle]
	}
	// Serve the new certificate only after the bundle that trusts it is
	// published.
	pair, err := tls.X509KeyPair(data[KeyCert], data[KeyKey])
	if err != nil {
		return fmt.Errorf("load serving certificate: %w", err)
	}
	m.cert.Store(&pair)
	m.readyOnce.Do(func() { close(m.ready) })
	return nil
}

// Renew returns the Secret data with whatever is missing, invalid or due
// renewed, and whether it changed anything. Pure but for randomness.
func Renew(data map[string][]byte, hosts []string, validity time.Duration, now time.Time) (map[string][]byte, bool, error) {
	out := map[string][]byte{}
	for k, v := range data {
		out[k] = v
	}
	changed := false
	ca, caKey, err := parsePair(out[KeyCACert], out[KeyCAKey])
	if err != nil || due(ca, 4*validity, now) {
		var prev []byte
		if err == nil && now.Before(ca.NotAfter) {
			prev = out[KeyCACert] // keep trusting the old CA until it expires
		}
		ca, caKey, err = newCA(4*validity, now)
		if err != nil {
			return nil, false, err
		}
		out[KeyCACert] = pemCert(ca.Raw)
		out[KeyCAKey], err = pemKey(caKey)
		if err != nil {
			return nil, false, err
		}
		out[KeyCABundle] = append(append([]byte{}, out[KeyCACert]...), prev...)
		delete(out, KeyCert) // re-issue under the new CA
		changed = true
	}
	if len(out[KeyCABundle]) == 0 || !bytes.Contains(out[KeyCABundle], out[KeyCACert]) {
		out[KeyCABundle] = out[KeyCACert]
		changed = true
	}
	leaf, _, err := parsePair(out[KeyCert], out[KeyKey])
	if err != nil || due(leaf, validity, now) || !covers(leaf, hosts) || leaf.CheckSignatureFrom(ca) != nil {
		der, key, err := newLeaf(ca, caKey, hosts, validity, now)
		if err != nil {
			return nil, false, err
		}
		out[KeyCert] = pemCert(der)
		out[KeyKey], err = pemKey(key)
		if err != nil {
			return nil, false, err
		}
		changed = true
	}
	return out, changed, nil
}

// due: less than a third of the lifetime left.
func due(c *x509.Certificate, lifetime time.Duration, now time.Time) bool {
	return now.Add(lifetime / 3).After(c.NotAfter)
}

func covers(c *x509.Certificate, hosts []string) bool {
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			if !slices.ContainsFunc(c.IPAddresses, func(x net.IP) bool { return x.Equal(ip) }) {
				return false
			}
		} else if !slices.Contains(c.DNSNames, h) {
			return false
		}
	}
	return true
}

func parsePair(certPEM, keyPEM []byte) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	cb, _ := pem.Decode(certPEM)
	kb, _ := pem.Decode(keyPEM)
	if cb == nil || kb == nil {
		return nil, nil, errors.New("missing")
	}
	c, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, nil, err
	}
	k, err := x509.ParseECPrivateKey(kb.Bytes)
	if err != nil {
		return nil, nil, err
	}
	return c, k, nil
}

func serial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
}

func newCA(lifetime time.Duration, now time.Time) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	sn, err := serial()
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          sn,
		Subject:               pkix.Name{CommonName: fmt.Sprintf("directlb-webhook-ca-%d", now.Unix())},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(lifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, fmt.Errorf("create CA: %w", err)
	}
	c, err := x509.ParseCertificate(der)
	return c, key, err
}

func newLeaf(ca *x509.Certificate, caKey *ecdsa.PrivateKey, hosts []string, lifetime time.Duration, now time.Time) ([]byte, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	sn, err := serial()
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: sn,
		Subject:      pkix.Name{CommonName: "directlb-webhook"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(lifetime),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if tmpl.NotAfter.After(ca.NotAfter) {
		tmpl.NotAfter = ca.NotAfter
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, nil, fmt.Errorf("create serving certificate: %w", err)
	}
	return der, key, nil
}

func pemCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func pemKey(k *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), nil
}

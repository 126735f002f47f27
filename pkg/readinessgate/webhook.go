package readinessgate

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/directlb/directlb/pkg/service"
)

// WebhookPath is the path the webhook serves pod admission on.
const WebhookPath = "/mutate-pod"

// Mutator is the admission handler for pod CREATE.
type Mutator struct {
	// Reader lists the Services of the pod's namespace (the manager's cache).
	Reader  client.Reader
	Options MutateOptions
	// DrainMargin is used for the grace-period warning.
	DrainMargin time.Duration
}

// Handle adds gates (and the drain hook) to a pod being created.
func (m *Mutator) Handle(ctx context.Context, req admission.Request) admission.Response {
	if req.Operation != admissionv1.Create || req.Kind.Kind != "Pod" || req.SubResource != "" {
		return admission.Allowed("")
	}
	pod := &corev1.Pod{}
	if err := json.Unmarshal(req.Object.Raw, pod); err != nil {
		webhookRequests.WithLabelValues("error").Inc()
		return admission.Errored(http.StatusBadRequest, fmt.Errorf("decode pod: %w", err))
	}
	var svcs corev1.ServiceList
	if err := m.Reader.List(ctx, &svcs, client.InNamespace(req.Namespace)); err != nil {
		webhookRequests.WithLabelValues("error").Inc()
		return admission.Errored(http.StatusInternalServerError, fmt.Errorf("list services of namespace %s: %w", req.Namespace, err))
	}
	opts := m.Options
	if opts.Drain.Host == "" && opts.Drain.Service.Name != "" {
		opts.Drain.Host = m.drainHost(ctx, opts.Drain.Service)
	}
	gated := Mutate(pod, req.Namespace, svcs.Items, opts)
	if len(gated) == 0 {
		webhookRequests.WithLabelValues("unchanged").Inc()
		return admission.Allowed("")
	}
	raw, err := json.Marshal(pod)
	if err != nil {
		webhookRequests.WithLabelValues("error").Inc()
		return admission.Errored(http.StatusInternalServerError, err)
	}
	webhookRequests.WithLabelValues("mutated").Inc()
	log.FromContext(ctx).V(1).Info("added readiness gates", "namespace", req.Namespace, "generateName", pod.GenerateName, "services", gated)
	resp := admission.PatchResponseFromRaw(req.Object.Raw, raw)
	if pod.Annotations[AnnotationInjected] != "" {
		if msg := GraceWarning(pod, maxDelay(svcs.Items, gated), int64(m.DrainMargin.Seconds())); msg != "" {
			resp = resp.WithWarnings(msg)
		}
	}
	return resp
}

// drainHost is the ClusterIP of the drain Service, or "" (no hook; logged)
// when it is missing or headless: the pod still gets its gates.
func (m *Mutator) drainHost(ctx context.Context, key types.NamespacedName) string {
	var svc corev1.Service
	if err := m.Reader.Get(ctx, key, &svc); err != nil {
		log.FromContext(ctx).Error(err, "drain Service: no preStop hook injected", "service", key.String())
		return ""
	}
	if ip := svc.Spec.ClusterIP; ip != "" && ip != corev1.ClusterIPNone {
		return ip
	}
	log.FromContext(ctx).Info("drain Service has no ClusterIP: no preStop hook injected", "service", key.String())
	return ""
}

// maxDelay is the longest deregistration delay among the named Services.
func maxDelay(svcs []corev1.Service, names []string) int64 {
	var out int64
	for i := range svcs {
		for _, n := range names {
			if svcs[i].Name != n {
				continue
			}
			d := int64(service.DefaultDeregistrationDelay)
			if o, err := service.ParseAnnotations(svcs[i].Annotations); err == nil {
				d = int64(o.DeregistrationDelaySeconds)
			}
			out = max(out, d)
		}
	}
	return out
}

// NewToken returns a random drain token.
func NewToken() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Server serves the webhook over HTTPS on every replica (no leader
// election: the apiserver may call any of them).
type Server struct {
	Addr           string
	Handler        *Mutator
	GetCertificate func(*tls.ClientHelloInfo) (*tls.Certificate, error)
	// Ready is closed by the caller when GetCertificate has a certificate;
	// nil means at once.
	Ready <-chan struct{}
	// ShutdownDelay: how long it keeps serving once told to stop.
	ShutdownDelay time.Duration

	serving atomic.Bool
}

// Checker is a readyz check: it fails until the webhook serves (its
// certificate is there and it listens) and again once it is stopping, so a
// replica that cannot mutate pods takes no admission traffic — with
// failurePolicy Ignore such pods would silently get no gates.
func (s *Server) Checker(*http.Request) error {
	if !s.serving.Load() {
		return errors.New("the readiness-gate webhook is not serving")
	}
	return nil
}

// NeedLeaderElection implements manager.LeaderElectionRunnable.
func (s *Server) NeedLeaderElection() bool { return false }

// Start serves until ctx ends.
func (s *Server) Start(ctx context.Context) error {
	if s.Ready != nil {
		select {
		case <-s.Ready:
		case <-ctx.Done():
			return nil
		}
	}
	hook, err := admission.StandaloneWebhook(&admission.Webhook{Handler: s.Handler}, admission.StandaloneOptions{
		Logger: log.FromContext(ctx).WithName("readiness-gate-webhook"), MetricsPath: WebhookPath})
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle(WebhookPath, hook)
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) })
	ln, err := net.Listen("tcp", s.Addr)
	if err != nil {
		return fmt.Errorf("webhook listen %s: %w", s.Addr, err)
	}
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		TLSConfig:         &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: s.GetCertificate},
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.ServeTLS(ln, "", "") }()
	s.serving.Store(true)
	log.FromContext(ctx).Info("readiness-gate webhook serving", "address", ln.Addr().String())
	select {
	case err := <-errc:
		s.serving.Store(false)
		return fmt.Errorf("webhook server: %w", err)
	case <-ctx.Done():
	}
	s.serving.Store(false)
	// The apiserver may still call this replica until the webhook
	// Service's endpoints drop it: keep answering a while.
	select {
	case err := <-errc:
		return fmt.Errorf("webhook server: %w", err)
	case <-time.After(s.ShutdownDelay):
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

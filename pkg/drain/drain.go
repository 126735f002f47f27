// Package drain holds the drain wait endpoint: the preStop httpGet the
// readiness-gate webhook injects calls it, and it answers only when the
// pod's targets have left every target group of its Services (the load
// balancer deregistered them and their deregistration delay is over), or at
// a ceiling. The pod keeps serving its open connections until then.
package drain

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/directlb/directlb/pkg/cloud"
	"github.com/directlb/directlb/pkg/readinessgate"
	"github.com/directlb/directlb/pkg/service"
	"github.com/directlb/directlb/pkg/targethealth"
)

// IndexToken indexes pods by their drain token annotation.
const IndexToken = "directlb.io/drain-token"

// Results of a drain wait.
const (
	ResultDrained   = "drained"
	ResultNotTarget = "not_target"
	ResultTimeout   = "timeout"
	ResultCanceled  = "canceled"
	// ResultShutdown: the controller replica stopped before the wait ended
	// (past --drain-shutdown-delay).
	ResultShutdown = "shutdown"
)

var (
	drainsStarted = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "directlb_drains_started_total",
		Help: "Drain waits started for terminating pods that are load balancer targets.",
	})
	drainsCompleted = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "directlb_drains_completed_total",
		Help: "Drain waits finished, by result (drained, timeout, canceled, shutdown).",
	}, []string{"result"})
	drainDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "directlb_drain_duration_seconds",
		Help:    "Time from the pod's deletion to its last target leaving the load balancer.",
		Buckets: []float64{0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 90, 120, 300},
	})
)

func init() {
	metrics.Registry.MustRegister(drainsStarted, drainsCompleted, drainDuration)
}

// Config configures the endpoint; every field is a flag.
type Config struct {
	// BindAddress is where the plain-HTTP endpoint listens ("0": off). It
	// runs only when Host is set.
	BindAddress string
	// Host and Port are what the injected preStop httpGet calls: an
	// address the kubelet reaches (a node-local address, the controller
	// Service's ClusterIP, or in the test bed the host 10.100.0.2). An
	// empty Host injects no hook, unless Service is set.
	Host string
	// Service ("namespace/name"), when Host is empty, is the Service whose
	// ClusterIP the hook calls, read from the cache at each pod admission:
	// the chart's drain Service in front of the controller replicas.
	Service string
	Port    int32
	// MaxWait is the ceiling of one wait.
	MaxWait time.Duration
	// PollInterval is how often a target group's health is read while
	// pods wait on it (shared by every waiter of the group).
	PollInterval time.Duration
	// ShutdownDelay is how long, once the replica is told to stop, the
	// endpoint keeps answering: waits in flight go on (a controller
	// rollout does not cut short the drains of pods deleted meanwhile)
	// and new ones are still taken while the drain Service's endpoints
	// let go of the replica. It stops earlier once no wait is in flight
	// (but not before the webhook's shutdown delay).
	ShutdownDelay time.Duration
}

// DefaultShutdownDelay covers a wait that began just before the stop on a
// Service with the default deregistration delay (20 s) plus the default
// --drain-grace-margin (5 s), inside the chart's controller
// terminationGracePeriodSeconds (30 s).
const DefaultShutdownDelay = 25 * time.Second

// DefaultConfig returns the flag defaults.
func DefaultConfig() Config {
	return Config{BindAddress: ":8082", Port: 8082, MaxWait: 5 * time.Minute, PollInterval: time.Second,
		ShutdownDelay: DefaultShutdownDelay}
}

// BindFlags registers the flags.
func (c *Config) BindFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.BindAddress, "drain-bind-address", c.BindAddress, `address of the drain wait endpoint the injected preStop hook calls ("0" disables it)`)
	fs.StringVar(&c.Host, "drain-host", c.Host, "host the injected preStop httpGet calls (empty: the ClusterIP of --drain-service, or no preStop hook)")
	fs.StringVar(&c.Service, "drain-service", c.Service, "namespace/name of a Service in front of the drain endpoint; with --drain-host empty the injected hook calls its ClusterIP")
	fs.Int32Var(&c.Port, "drain-port", c.Port, "port the injected preStop httpGet calls")
	fs.DurationVar(&c.MaxWait, "drain-max-wait", c.MaxWait, "ceiling of one drain wait")
	fs.DurationVar(&c.PollInterval, "drain-poll-interval", c.PollInterval, "target-health poll interval while pods drain")
	fs.DurationVar(&c.ShutdownDelay, "drain-shutdown-delay", c.ShutdownDelay, "how long the drain endpoint keeps answering waits in flight (and new ones) once the controller is told to stop; it stops sooner when none is in flight. Keep it under the controller's terminationGracePeriodSeconds")
}

// Validate reports every invalid setting.
func (c *Config) Validate() error {
	var errs []error
	if c.injects() && (c.Port < 1 || c.Port > 65535) {
		errs = append(errs, fmt.Errorf("--drain-port %d: must be from 1 to 65535", c.Port))
	}
	if c.Service != "" {
		if _, err := parseService(c.Service); err != nil {
			errs = append(errs, fmt.Errorf("--drain-service %q: %w", c.Service, err))
		}
	}
	if c.MaxWait < time.Second || c.MaxWait > time.Hour {
		errs = append(errs, fmt.Errorf("--drain-max-wait %s: must be from 1s to 1h", c.MaxWait))
	}
	if c.PollInterval < 100*time.Millisecond || c.PollInterval > 10*time.Second {
		errs = append(errs, fmt.Errorf("--drain-poll-interval %s: must be from 100ms to 10s", c.PollInterval))
	}
	if c.ShutdownDelay < 0 || c.ShutdownDelay > c.MaxWait {
		errs = append(errs, fmt.Errorf("--drain-shutdown-delay %s: must be from 0 to --drain-max-wait (%s)", c.ShutdownDelay, c.MaxWait))
	}
	return errors.Join(errs...)
}

// injects: the webhook adds a preStop hook.
func (c *Config) injects() bool {
	return c.BindAddress != "0" && (c.Host != "" || c.Service != "")
}

// parseService parses "namespace/name".
func parseService(s string) (types.NamespacedName, error) {
	ns, name, ok := strings.Cut(s, "/")
	if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
		return types.NamespacedName{}, errors.New("want namespace/name")
	}
	return types.NamespacedName{Namespace: ns, Name: name}, nil
}

// Hook is the preStop target for the webhook.
func (c *Config) Hook() readinessgate.DrainHook {
	if !c.injects() {
		return readinessgate.DrainHook{}
	}
	h := readinessgate.DrainHook{Host: c.Host, Port: c.Port, Scheme: corev1.URISchemeHTTP}
	if c.Host == "" {
		h.Service, _ = parseService(c.Service) // Validate checked it
	}
	return h
}

// Waiter answers drain waits. Every replica, leader or standby, answers
// from shared state: the pod and its Services from the informer cache, the
// Services' target groups as the leader recorded them on each Service
// (service.AnnotationTargetGroups), their health through the shared
// target-health reader. It never lists the cloud account.
type Waiter struct {
	// Reader is the manager's cache (pods by drain token, Services).
	Reader client.Reader
	// APIReader reads a pod from the apiserver when the cache has not yet
	// seen its deletion (the kubelet may call before the controller's
	// watch delivers it); nil skips that check.
	APIReader client.Reader
	// Health reads target health (shared with the gate writer and the
	// target reconciler).
	Health targethealth.Reader
	// TargetGroups is this replica's registry (filled on the leader): used
	// for a Service that carries no record yet (deployed by an older
	// release and not passed since).
	TargetGroups targethealth.TargetGroupSource
	Config       Config
	// ListenAfterStop is the least time the endpoint keeps taking new
	// waits once told to stop (the webhook's shutdown delay: the Services
	// in front of both let go of the replica at the same pace).
	ListenAfterStop time.Duration

	inFlight atomic.Int64
	serving  atomic.Bool
	stopping atomic.Bool
	addr     atomic.Value // string: where it listens
}

// Addr is the address the endpoint listens on ("" before Start listens).
func (w *Waiter) Addr() string {
	a, _ := w.addr.Load().(string)
	return a
}

// Checker is a readyz check: it fails until the endpoint listens and
// again once the replica is told to stop, so the drain Service sends no
// new wait to a replica that is leaving.
func (w *Waiter) Checker(*http.Request) error {
	if !w.serving.Load() {
		return errors.New("the drain endpoint is not serving")
	}
	return nil
}

// NeedLeaderElection: every replica answers waits.
func (w *Waiter) NeedLeaderElection() bool { return false }

// Start serves the endpoint until ctx ends, then for up to
// Config.ShutdownDelay more (see there).
func (w *Waiter) Start(ctx context.Context) error {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /drain/{namespace}/{token}", w.serveWait)
	ln, err := net.Listen("tcp", w.Config.BindAddress)
	if err != nil {
		return fmt.Errorf("drain listen %s: %w", w.Config.BindAddress, err)
	}
	// Waits outlive ctx (the manager's stop) until the shutdown delay is
	// over.
	waits, endWaits := context.WithCancel(context.WithoutCancel(ctx))
	defer endWaits()
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second,
		BaseContext: func(net.Listener) context.Context { return waits }}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	w.addr.Store(ln.Addr().String())
	w.serving.Store(true)
	logger := log.FromContext(ctx)
	logger.Info("drain endpoint serving", "address", ln.Addr().String())
	select {
	case err := <-errc:
		w.serving.Store(false)
		return fmt.Errorf("drain server: %w", err)
	case <-ctx.Done():
	}
	w.serving.Store(false)
	if err := w.linger(errc); err != nil && !errors.Is(err, http.ErrServerClosed) {
		logger.Error(err, "drain server failed while stopping")
	}
	w.stopping.Store(true)
	if n := w.inFlight.Load(); n > 0 {
		logger.Info("drain endpoint stopping with waits in flight", "waits", n, "shutdownDelay", w.Config.ShutdownDelay)
	}
	endWaits() // what is left answers ResultShutdown
	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	return nil
}

// linger keeps serving after the stop: at least ListenAfterStop (capped by
// the delay), then until no wait is in flight or the delay is over; it
// returns early with the server's error if the server fails.
func (w *Waiter) linger(errc <-chan error) error {
	start := time.Now()
	least := min(w.ListenAfterStop, w.Config.ShutdownDelay)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		since := time.Since(start)
		if since >= w.Config.ShutdownDelay || (since >= least && w.inFlight.Load() == 0) {
			return nil
		}
		select {
		case err := <-errc:
			return err
		case <-tick.C:
		}
	}
}

func (w *Waiter) serveWait(rw http.ResponseWriter, r *http.Request) {
	w.inFlight.Add(1)
	defer w.inFlight.Add(-1)
	ns, token := r.PathValue("namespace"), r.PathValue("token")
	res, msg := w.Wait(r.Context(), ns, token)
	code := http.StatusOK
	switch res {
	case ResultTimeout:
		// The kubelet records a FailedPreStopHook event and stops the pod.
		code = http.StatusGatewayTimeout
	case ResultShutdown:
		code = http.StatusServiceUnavailable
	}
	rw.WriteHeader(code)
	fmt.Fprintf(rw, "%s: %s\n", res, msg)
}

// Wait blocks until the pod with the drain token has no target left in any
// target group of its gated Services, the ceiling passes, or ctx ends.
func (w *Waiter) Wait(ctx context.Context, namespace, token string) (string, string) {
	logger := log.FromContext(ctx)
	pod, err := w.pod(ctx, namespace, token)
	if err == nil && pod != nil && pod.DeletionTimestamp == nil && w.APIReader != nil {
		fresh := &corev1.Pod{}
		if err := w.APIReader.Get(ctx, client.ObjectKeyFromObject(pod), fresh); err == nil && fresh.UID == pod.UID {
			pod = fresh
		}
	}
	if err != nil || pod == nil || pod.Status.PodIP == "" || pod.DeletionTimestamp == nil {
		// Unknown, no address, or a container restart rather than a pod
		// deletion: nothing to wait for.
		return ResultNotTarget, "no terminating pod with this token is a target"
	}
	ctx, cancel := context.WithTimeout(ctx, w.Config.MaxWait)
	defer cancel()
	tgs := w.groups(ctx, pod)
	if len(tgs) == 0 {
		return ResultNotTarget, "the pod's Services have no target groups"
	}
	deleted := pod.DeletionTimestamp.Time
	if g := pod.DeletionGracePeriodSeconds; g != nil {
		deleted = deleted.Add(-time.Duration(*g) * time.Second)
	}
	drainsStarted.Inc()
	logger.Info("drain wait", "pod", namespace+"/"+pod.Name, "ip", pod.Status.PodIP, "targetGroups", len(tgs))
	for {
		left, err := w.present(ctx, tgs, pod.Status.PodIP)
		if err == nil && !left {
			drainsCompleted.WithLabelValues(ResultDrained).Inc()
			drainDuration.Observe(time.Since(deleted).Seconds())
			logger.Info("drained", "pod", namespace+"/"+pod.Name, "took", time.Since(deleted))
			return ResultDrained, "the pod's targets have left the load balancer"
		}
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				drainsCompleted.WithLabelValues(ResultTimeout).Inc()
				logger.Info("drain ceiling reached", "pod", namespace+"/"+pod.Name)
				return ResultTimeout, fmt.Sprintf("targets still present after %s", w.Config.MaxWait)
			}
			if w.stopping.Load() {
				drainsCompleted.WithLabelValues(ResultShutdown).Inc()
				logger.Info("drain wait cut short: the controller stopped", "pod", namespace+"/"+pod.Name, "shutdownDelay", w.Config.ShutdownDelay)
				return ResultShutdown, fmt.Sprintf("the controller replica stopped (after --drain-shutdown-delay %s) before the targets left", w.Config.ShutdownDelay)
			}
			drainsCompleted.WithLabelValues(ResultCanceled).Inc()
			return ResultCanceled, "the caller went away"
		case <-time.After(w.Config.PollInterval):
		}
	}
}

func (w *Waiter) pod(ctx context.Context, namespace, token string) (*corev1.Pod, error) {
	var pods corev1.PodList
	if err := w.Reader.List(ctx, &pods, client.InNamespace(namespace), client.MatchingFields{IndexToken: token}); err != nil {
		return nil, fmt.Errorf("find pod by drain token: %w", err)
	}
	if len(pods.Items) != 1 {
		return nil, nil
	}
	return &pods.Items[0], nil
}

// groups are the target groups of the Services the pod is gated on: as
// the leader recorded them on each Service (read from the cache), else as
// this replica's registry knows them. No cloud listing.
func (w *Waiter) groups(ctx context.Context, pod *corev1.Pod) []string {
	var arns []string
	for _, name := range readinessgate.GateServices(pod) {
		key := types.NamespacedName{Namespace: pod.Namespace, Name: name}
		svc := &corev1.Service{}
		err := w.Reader.Get(ctx, key, svc)
		if client.IgnoreNotFound(err) != nil {
			log.FromContext(ctx).Error(err, "get service for drain", "service", key.String())
		}
		if err == nil {
			if rec := service.RecordedTargetGroups(svc.Annotations); rec != nil {
				arns = append(arns, rec...)
				continue
			}
		}
		if w.TargetGroups == nil {
			continue
		}
		for _, tg := range w.TargetGroups.Get(key) {
			arns = append(arns, tg.ARN)
		}
	}
	return arns
}

// present reports whether ip still has a target in any of the groups
// (registered, initial, healthy or draining alike).
func (w *Waiter) present(ctx context.Context, arns []string, ip string) (bool, error) {
	for _, arn := range arns {
		ts, err := w.read(ctx, arn)
		if err != nil {
			if errors.Is(err, cloud.ErrNotFound) {
				continue // the group is gone, and the target with it
			}
			return true, err
		}
		for _, t := range ts {
			if t.IP == ip {
				return true, nil
			}
		}
	}
	return false, nil
}

// read returns a target group's health no older than half the poll
// interval, through the shared reader (one call for every waiter of the
// group, and for the gate writer's polls).
func (w *Waiter) read(ctx context.Context, arn string) ([]cloud.TargetHealth, error) {
	return w.Health.Read(ctx, arn, w.Config.PollInterval/2)
}

// Setup indexes pods by drain token and adds the endpoint to mgr (when
// its bind address is not "0").
func Setup(ctx context.Context, mgr ctrl.Manager, w *Waiter) error {
	if err := mgr.GetFieldIndexer().IndexField(ctx, &corev1.Pod{}, IndexToken, indexToken); err != nil {
		return fmt.Errorf("index pods by drain token: %w", err)
	}
	if !w.Config.injects() {
		return nil
	}
	if err := mgr.Add(w); err != nil {
		return fmt.Errorf("add drain endpoint: %w", err)
	}
	if err := mgr.AddReadyzCheck("drain-endpoint", w.Checker); err != nil {
		return fmt.Errorf("add drain readiness check: %w", err)
	}
	return nil
}

func indexToken(obj client.Object) []string {
	if t := obj.GetAnnotations()[readinessgate.AnnotationDrainToken]; t != "" {
		return []string{t}
	}
	return nil
}

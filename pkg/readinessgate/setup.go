package readinessgate

import (
	"context"
	"crypto/tls"
	"fmt"
	"maps"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	"github.com/directlb/directlb/pkg/cloud"
	"github.com/directlb/directlb/pkg/recorder"
	"github.com/directlb/directlb/pkg/service"
	"github.com/directlb/directlb/pkg/targethealth"
)

// Options are what Setup wires together.
type Options struct {
	Config  Config
	Classes service.ClassFilter
	Cloud   cloud.LoadBalancers
	// Health is the target-health reader shared with the target
	// reconciler and drain (nil: one of its own over Cloud).
	Health       targethealth.Reader
	TargetGroups targethealth.TargetGroupSource
	// Wake, when set, names a Service whose target groups changed (became
	// known): the writer takes it up at once instead of at its next
	// backed-off look.
	Wake <-chan event.GenericEvent
	// Drain is where the injected preStop hook goes (zero: no hook).
	Drain DrainHook
	// GetCertificate serves the webhook; nil runs no webhook server.
	GetCertificate func(*tls.ClientHelloInfo) (*tls.Certificate, error)
	// CertReady is closed once GetCertificate has a certificate.
	CertReady <-chan struct{}
	// Concurrency is the number of parallel gate reconciles.
	Concurrency int
}

// Setup adds the pod gate index, the gate writer and the webhook server to
// mgr.
func Setup(ctx context.Context, mgr ctrl.Manager, o Options) (*Writer, error) {
	err := mgr.GetFieldIndexer().IndexField(ctx, &corev1.Pod{}, IndexGates, func(obj client.Object) []string {
		pod, ok := obj.(*corev1.Pod)
		if !ok {
			return nil
		}
		return GateServices(pod)
	})
	if err != nil {
		return nil, fmt.Errorf("index pods by readiness gate: %w", err)
	}
	health := o.Health
	if health == nil {
		health = targethealth.NewCache(o.Cloud, 0)
	}
	w := &Writer{
		Client:       mgr.GetClient(),
		Health:       health,
		TargetGroups: o.TargetGroups,
		Classes:      o.Classes,
		Recorder:     recorder.New(mgr.GetEventRecorder("directlb-readiness-gate")),
		Config:       o.Config,
	}
	bld := ctrl.NewControllerManagedBy(mgr).
		Named("readiness-gates").
		WithOptions(controller.Options{MaxConcurrentReconciles: max(1, o.Concurrency)}).
		Watches(&corev1.Pod{}, w.podHandler()).
		Watches(&corev1.Service{}, w.serviceHandler())
	if o.Wake != nil {
		bld = bld.WatchesRawSource(source.Channel(o.Wake, &handler.EnqueueRequestForObject{}))
	}
	err = bld.Complete(w)
	if err != nil {
		return nil, fmt.Errorf("set up readiness gate writer: %w", err)
	}
	if o.GetCertificate != nil && o.Config.WebhookBindAddress != "0" {
		srv := &Server{
			Addr: o.Config.WebhookBindAddress,
			Handler: &Mutator{Reader: mgr.GetCache(), Options: MutateOptions{
				Classes: o.Classes, Drain: o.Drain, NewToken: NewToken,
			}, DrainMargin: o.Config.DrainMargin},
			GetCertificate: o.GetCertificate,
			Ready:          o.CertReady,
			ShutdownDelay:  o.Config.WebhookShutdownDelay,
		}
		if err := mgr.Add(srv); err != nil {
			return nil, fmt.Errorf("add webhook server: %w", err)
		}
		if err := mgr.AddReadyzCheck("readiness-gate-webhook", srv.Checker); err != nil {
			return nil, fmt.Errorf("add webhook readiness check: %w", err)
		}
	}
	return w, nil
}

type queue = workqueue.TypedRateLimitingInterface[reconcile.Request]

// podHandler enqueues the Services a pod's gates name, after the batch
// window, and resets their backoff.
func (w *Writer) podHandler() handler.Funcs {
	enqueue := func(obj client.Object, q queue) {
		pod, ok := obj.(*corev1.Pod)
		if !ok {
			return
		}
		for _, name := range GateServices(pod) {
			key := types.NamespacedName{Namespace: pod.Namespace, Name: name}
			w.poke(key)
			q.AddAfter(reconcile.Request{NamespacedName: key}, batchWindow)
		}
	}
	return handler.Funcs{
		CreateFunc: func(_ context.Context, e event.CreateEvent, q queue) { enqueue(e.Object, q) },
		UpdateFunc: func(_ context.Context, e event.UpdateEvent, q queue) { enqueue(e.ObjectNew, q) },
		DeleteFunc: func(_ context.Context, e event.DeleteEvent, q queue) {
			if pod, ok := e.Object.(*corev1.Pod); ok {
				w.forget(pod.UID)
			}
			enqueue(e.Object, q)
		},
	}
}

// serviceHandler enqueues a Service when it changes or goes, so its gates
// are released when it stops being direct-access.
func (w *Writer) serviceHandler() handler.Funcs {
	enqueue := func(obj client.Object, q queue) {
		q.AddAfter(reconcile.Request{NamespacedName: client.ObjectKeyFromObject(obj)}, batchWindow)
	}
	return handler.Funcs{
		CreateFunc: func(_ context.Context, e event.CreateEvent, q queue) { enqueue(e.Object, q) },
		UpdateFunc: func(_ context.Context, e event.UpdateEvent, q queue) {
			o, ok1 := e.ObjectOld.(*corev1.Service)
			n, ok2 := e.ObjectNew.(*corev1.Service)
			if ok1 && ok2 && userChange(o, n) {
				w.changed(client.ObjectKeyFromObject(n))
				w.poke(client.ObjectKeyFromObject(n))
			}
			enqueue(e.ObjectNew, q)
		},
		DeleteFunc: func(_ context.Context, e event.DeleteEvent, q queue) { enqueue(e.Object, q) },
	}
}

// userChange: the Service's spec or annotations changed (not its status,
// nor the target-group record the lb-controller writes).
func userChange(o, n *corev1.Service) bool {
	if !equality.Semantic.DeepEqual(o.Spec, n.Spec) {
		return true
	}
	strip := func(m map[string]string) map[string]string {
		out := maps.Clone(m)
		delete(out, service.AnnotationTargetGroups)
		return out
	}
	return !maps.Equal(strip(o.Annotations), strip(n.Annotations))
}

func (w *Writer) forget(uid types.UID) {
	w.mu.Lock()
	defer w.mu.Unlock()
	delete(w.everTrue, uid)
	delete(w.graceChecked, uid)
	delete(w.waitingSince, uid)
}

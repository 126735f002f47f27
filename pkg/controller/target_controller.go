package controller

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/directlb/directlb/pkg/cloud"
	"github.com/directlb/directlb/pkg/deploy"
	"github.com/directlb/directlb/pkg/service"
	"github.com/directlb/directlb/pkg/targethealth"
)

// verifyDelay is how soon after a change the cloud's target list is read
// again, to catch what a lost response or another writer changed.
const verifyDelay = 10 * time.Second

// TargetReconciler registers the pod IPs and ports of a direct-access
// Service's EndpointSlices as targets of its target groups. It only calls
// RegisterTargets, DeregisterTargets and DescribeTargetHealth.
type TargetReconciler struct {
	Client       client.Client
	Cloud        cloud.LoadBalancers
	Classes      service.ClassFilter
	TargetGroups *TargetGroups
	// Health is the target-health reader shared with the gate writer and
	// drain (nil: one of its own over Cloud).
	Health *targethealth.Cache
	// RefreshPeriod is how long a target group's target list is cached.
	RefreshPeriod time.Duration

	mu    sync.Mutex
	cache map[string]*cachedTargets // by target group ARN
	// readySeen is when the controller saw an IP turn ready, for the
	// endpoint-ready → target-registered histogram.
	readySeen map[string]time.Time
	// replacing: when an old-port target started waiting for its
	// new-port replacement (targetPort change).
	replacing map[cloud.Target]time.Time
}

// maxReplacementWait bounds how long a pod's old-port target stays
// registered while its new-port target is not healthy: a targetPort the
// pods do not serve must not keep the old port in the load balancer, and
// the cloud read about once per health check, for ever.
const maxReplacementWait = 5 * time.Minute

type cachedTargets struct {
	targets map[cloud.Target]bool
	// healthy: the registered targets the cloud reported healthy at the
	// last read.
	healthy   map[cloud.Target]bool
	refreshAt time.Time
}

// Reconcile makes the targets of one Service's target groups match its
// eligible endpoints.
func (r *TargetReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	tgs := r.TargetGroups.Get(req.NamespacedName)
	svc := &corev1.Service{}
	if err := r.Client.Get(ctx, req.NamespacedName, svc); err != nil || !service.Wanted(svc, r.Classes) || len(tgs) == 0 {
		r.forget(tgs)
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	eps, err := r.endpoints(ctx, svc)
	if err != nil {
		return ctrl.Result{}, err
	}
	next := r.RefreshPeriod
	for _, tg := range tgs {
		wait, err := r.sync(ctx, tg, eps)
		if err != nil {
			kind := "retryable"
			if deploy.IsPermanent(err) {
				kind = "permanent"
			}
			reconcileErrors.WithLabelValues("targets", kind).Inc()
			return ctrl.Result{}, fmt.Errorf("sync targets of %s: %w", service.Key(svc), err)
		}
		next = min(next, wait)
	}
	return ctrl.Result{RequeueAfter: max(next, time.Second)}, nil
}

// endpoint is an eligible endpoint: its IP and its port numbers by
// (port name, protocol).
type endpoint struct {
	ip    string
	ports map[portID]int32
}

type portID struct {
	name     string
	protocol corev1.Protocol
}

func (r *TargetReconciler) endpoints(ctx context.Context, svc *corev1.Service) ([]endpoint, error) {
	var slices discoveryv1.EndpointSliceList
	if err := r.Client.List(ctx, &slices, client.InNamespace(svc.Namespace),
		client.MatchingLabels{discoveryv1.LabelServiceName: svc.Name}); err != nil {
		return nil, fmt.Errorf("list endpoint slices of %s: %w", service.Key(svc), err)
	}
	var out []endpoint
	for _, s := range slices.Items {
		if s.AddressType != discoveryv1.AddressTypeIPv4 {
			continue
		}
		ports := map[portID]int32{}
		for _, p := range s.Ports {
			if p.Port == nil {
				continue
			}
			id := portID{protocol: corev1.ProtocolTCP}
			if p.Name != nil {
				id.name = *p.Name
			}
			if p.Protocol != nil {
				id.protocol = *p.Protocol
			}
			ports[id] = *p.Port
		}
		for _, ep := range s.Endpoints {
			ok, err := r.eligible(ctx, svc.Namespace, ep)
			if err != nil {
				return nil, err
			}
			if ok {
				out = append(out, endpoint{ip: ep.Addresses[0], ports: ports})
			}
		}
	}
	return out, nil
}

// eligible: an endpoint with an address, not terminating, that is ready —
// or whose containers are ready and whose only unmet readiness gates are
// directlb's own (they can only turn True once the target is registered).
func (r *TargetReconciler) eligible(ctx context.Context, ns string, ep discoveryv1.Endpoint) (bool, error) {
	if len(ep.Addresses) == 0 || isTrue(ep.Conditions.Terminating) {
		return false, nil
	}
	ready := ep.Conditions.Ready == nil || *ep.Conditions.Ready
	if ep.TargetRef == nil || ep.TargetRef.Kind != "Pod" {
		return ready, nil
	}
	pod := &corev1.Pod{}
	if err := r.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: ep.TargetRef.Name}, pod); err != nil {
		if client.IgnoreNotFound(err) == nil {
			return false, nil // gone already
		}
		return false, fmt.Errorf("get pod %s/%s: %w", ns, ep.TargetRef.Name, err)
	}
	if pod.DeletionTimestamp != nil {
		return false, nil
	}
	return ready || readyButForDirectlbGates(pod), nil
}

// readyButForDirectlbGates: not terminating, containers ready, and every
// unmet readiness gate is directlb's. That is a pod waiting for our gate
// (it turns True only once the target is registered), and also a pod whose
// Ready condition or EndpointSlice lags behind gates that are already True
// (the kubelet recomputes Ready after it sees the gate): deregistering that
// one would pull a healthy target and send it through its health checks
// again.
func readyButForDirectlbGates(pod *corev1.Pod) bool {
	if pod.DeletionTimestamp != nil || !podCondition(pod, corev1.ContainersReady) {
		return false
	}
	for _, g := range pod.Spec.ReadinessGates {
		if !podCondition(pod, g.ConditionType) && !strings.HasPrefix(string(g.ConditionType), service.ReadinessGatePrefix) {
			return false
		}
	}
	return true
}

// WaitsOnlyForDirectlbGates reports whether pod's containers are ready and
// every readiness gate it still waits for is a directlb target-health gate.
func WaitsOnlyForDirectlbGates(pod *corev1.Pod) bool {
	if pod.DeletionTimestamp != nil || !podCondition(pod, corev1.ContainersReady) {
		return false
	}
	unmet := 0
	for _, g := range pod.Spec.ReadinessGates {
		if podCondition(pod, g.ConditionType) {
			continue
		}
		if !strings.HasPrefix(string(g.ConditionType), service.ReadinessGatePrefix) {
			return false
		}
		unmet++
	}
	return unmet > 0
}

func podCondition(pod *corev1.Pod, t corev1.PodConditionType) bool {
	for _, c := range pod.Status.Conditions {
		if c.Type == t {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func isTrue(b *bool) bool { return b != nil && *b }

// sync makes one target group's targets match eps and returns how long its
// cached target list stays fresh.
func (r *TargetReconciler) sync(ctx context.Context, tg deploy.TargetGroup, eps []endpoint) (time.Duration, error) {
	want := map[cloud.Target]bool{}
	for _, ep := range eps {
		for _, p := range tg.Ports {
			if n, ok := ep.ports[portID{p.Name, p.Protocol}]; ok {
				want[cloud.Target{IP: ep.ip, Port: n}] = true
			}
		}
	}
	have, err := r.registered(ctx, tg.ARN)
	if err != nil {
		return 0, err
	}
	var add, remove []cloud.Target
	for t := range want {
		if !have.targets[t] {
			add = append(add, t)
		}
	}
	moving := false
	for t := range have.targets {
		if want[t] {
			continue
		}
		if r.keepUntilReplaced(t, want, have) {
			moving = true // keeps serving until its new port is healthy
			continue
		}
		remove = append(remove, t)
	}
	sortTargets(add)
	sortTargets(remove)
	logger := log.FromContext(ctx)
	if len(add) > 0 {
		// The cloud splits long lists into requests (cloud.LoadBalancers).
		err := r.Cloud.RegisterTargets(ctx, tg.ARN, add)
		r.health().Invalidate(tg.ARN) // the gate writer and drain read the change
		if err != nil {
			r.failed(tg.ARN, add, true, err)
			return 0, fmt.Errorf("register targets %s: %w", tg.Spec.Name, err)
		}
		r.applied(tg.ARN, add, true)
		logger.Info("registered targets", "targetGroup", tg.Spec.Name, "count", len(add))
	}
	if len(remove) > 0 {
		err := r.Cloud.DeregisterTargets(ctx, tg.ARN, remove)
		r.health().Invalidate(tg.ARN)
		if err != nil {
			r.failed(tg.ARN, remove, false, err)
			return 0, fmt.Errorf("deregister targets %s: %w", tg.Spec.Name, err)
		}
		r.applied(tg.ARN, remove, false)
		logger.Info("deregistered targets", "targetGroup", tg.Spec.Name, "count", len(remove))
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if moving {
		// Read the cloud again after about one health check.
		check := time.Duration(max(tg.Spec.HealthCheck.IntervalSeconds, 1)) * time.Second
		if v := time.Now().Add(check); v.Before(have.refreshAt) {
			have.refreshAt = v
		}
	}
	return time.Until(have.refreshAt), nil
}

// keepUntilReplaced reports whether old, a registered target that is no
// longer wanted, is the same pod as a wanted target on another port
// that is not healthy yet (a targetPort change): old then stays registered,
// so the pod keeps taking traffic while the load balancer checks the new
// port — for at most maxReplacementWait.
func (r *TargetReconciler) keepUntilReplaced(old cloud.Target, want map[cloud.Target]bool, have *cachedTargets) bool {
	warming := false
	for w := range want {
		if w.IP == old.IP && w.Port != old.Port && !have.healthy[w] {
			warming = true
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if !warming {
		delete(r.replacing, old)
		return false
	}
	if r.replacing == nil {
		r.replacing = map[cloud.Target]time.Time{}
	}
	since, ok := r.replacing[old]
	if !ok {
		r.replacing[old] = time.Now()
		return true
	}
	if time.Since(since) < maxReplacementWait {
		return true
	}
	delete(r.replacing, old)
	return false
}

// registered returns the cached target list of a target group, reading it
// from the cloud when it is missing or stale. Draining targets are already
// on their way out and do not count.
func (r *TargetReconciler) registered(ctx context.Context, arn string) (*cachedTargets, error) {
	r.mu.Lock()
	c, ok := r.cache[arn]
	r.mu.Unlock()
	if ok && time.Now().Before(c.refreshAt) {
		return c, nil
	}
	health, err := r.health().Read(ctx, arn, 0)
	cloudTargetReads.Inc()
	if err != nil {
		return nil, fmt.Errorf("describe target health %s: %w", arn, err)
	}
	c = &cachedTargets{targets: map[cloud.Target]bool{}, healthy: map[cloud.Target]bool{}, refreshAt: time.Now().Add(r.RefreshPeriod)}
	for _, h := range health {
		if h.State != cloud.TargetDraining {
			c.targets[h.Target] = true
		}
		if h.State == cloud.TargetHealthy {
			c.healthy[h.Target] = true
		}
	}
	r.mu.Lock()
	if r.cache == nil {
		r.cache = map[string]*cachedTargets{}
	}
	r.cache[arn] = c
	r.mu.Unlock()
	return c, nil
}

// health is the shared reader (made on first use when none was given).
func (r *TargetReconciler) health() *targethealth.Cache {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.Health == nil {
		r.Health = targethealth.NewCache(r.Cloud, 0)
	}
	return r.Health
}

// applied records a successful change in the cache, observes the
// registration latency, and schedules a verifying read.
func (r *TargetReconciler) applied(arn string, ts []cloud.Target, registered bool) {
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.cache[arn]
	if c == nil {
		c = &cachedTargets{targets: map[cloud.Target]bool{}} // refreshAt zero: read again next pass
		r.cache[arn] = c
	}
	for _, t := range ts {
		if registered {
			c.targets[t] = true
			if seen, ok := r.readySeen[t.IP]; ok {
				targetRegistration.Observe(now.Sub(seen).Seconds())
				delete(r.readySeen, t.IP)
			}
		} else {
			delete(c.targets, t)
			delete(r.readySeen, t.IP)
		}
	}
	op := "deregister"
	if registered {
		op = "register"
	}
	targetChanges.WithLabelValues(op).Add(float64(len(ts)))
	if v := now.Add(verifyDelay); v.Before(c.refreshAt) {
		c.refreshAt = v
	}
}

// failed handles a failed Register/Deregister call of ts: the targets the
// cloud applied before the failure (a *cloud.BatchError says how many)
// count as applied, for the metrics; then the target group's cache goes,
// so the next pass reads the truth.
func (r *TargetReconciler) failed(arn string, ts []cloud.Target, registered bool, err error) {
	if be := (*cloud.BatchError)(nil); errors.As(err, &be) && be.Done > 0 {
		r.applied(arn, ts[:min(be.Done, len(ts))], registered)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.cache, arn)
}

func (r *TargetReconciler) forget(tgs []deploy.TargetGroup) {
	h := r.health()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, tg := range tgs {
		delete(r.cache, tg.ARN)
		h.Forget(tg.ARN)
	}
}

// sawReady records when the controller first saw ip turn eligible.
func (r *TargetReconciler) sawReady(ip string, at time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.readySeen == nil || len(r.readySeen) > 100000 {
		r.readySeen = map[string]time.Time{}
	}
	if _, ok := r.readySeen[ip]; !ok {
		r.readySeen[ip] = at
	}
}

func sortTargets(ts []cloud.Target) {
	sort.Slice(ts, func(i, j int) bool {
		if ts[i].IP != ts[j].IP {
			return ts[i].IP < ts[j].IP
		}
		return ts[i].Port < ts[j].Port
	})
}

// readyIPs are the addresses of a slice's ready, non-terminating endpoints.
func readyIPs(s *discoveryv1.EndpointSlice) map[string]bool {
	out := map[string]bool{}
	if s == nil {
		return out
	}
	for _, ep := range s.Endpoints {
		if len(ep.Addresses) > 0 && !isTrue(ep.Conditions.Terminating) && (ep.Conditions.Ready == nil || *ep.Conditions.Ready) {
			out[ep.Addresses[0]] = true
		}
	}
	return out
}

// sliceHandler enqueues the slice's Service after the batch window and
// notes when endpoints turned ready.
func (r *TargetReconciler) sliceHandler(window time.Duration) handler.Funcs {
	enqueue := func(q workqueue.TypedRateLimitingInterface[reconcile.Request], obj client.Object, old *discoveryv1.EndpointSlice) {
		s, ok := obj.(*discoveryv1.EndpointSlice)
		if !ok {
			return
		}
		name := s.Labels[discoveryv1.LabelServiceName]
		if name == "" {
			return
		}
		key := types.NamespacedName{Namespace: s.Namespace, Name: name}
		if !r.TargetGroups.Has(key) {
			return
		}
		now := time.Now()
		before := readyIPs(old)
		for ip := range readyIPs(s) {
			if !before[ip] {
				r.sawReady(ip, now)
			}
		}
		addAfter(q, key, window)
	}
	return handler.Funcs{
		CreateFunc: func(_ context.Context, e event.CreateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			enqueue(q, e.Object, nil)
		},
		UpdateFunc: func(_ context.Context, e event.UpdateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			old, _ := e.ObjectOld.(*discoveryv1.EndpointSlice)
			enqueue(q, e.ObjectNew, old)
		},
		DeleteFunc: func(_ context.Context, e event.DeleteEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			enqueue(q, e.Object, nil)
		},
	}
}

// podHandler enqueues the Services whose directlb readiness gates a pod
// carries: their endpoints do not change when such a pod's containers turn
// ready (the pod is not Ready until the gate is True).
func (r *TargetReconciler) podHandler(window time.Duration) handler.Funcs {
	enqueue := func(q workqueue.TypedRateLimitingInterface[reconcile.Request], obj client.Object, old *corev1.Pod) {
		pod, ok := obj.(*corev1.Pod)
		if !ok {
			return
		}
		for _, g := range pod.Spec.ReadinessGates {
			name, ok := strings.CutPrefix(string(g.ConditionType), service.ReadinessGatePrefix)
			if !ok {
				continue
			}
			key := types.NamespacedName{Namespace: pod.Namespace, Name: name}
			if !r.TargetGroups.Has(key) {
				continue
			}
			if pod.Status.PodIP != "" && WaitsOnlyForDirectlbGates(pod) && (old == nil || !WaitsOnlyForDirectlbGates(old)) {
				r.sawReady(pod.Status.PodIP, time.Now())
			}
			addAfter(q, key, window)
		}
	}
	return handler.Funcs{
		CreateFunc: func(_ context.Context, e event.CreateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			enqueue(q, e.Object, nil)
		},
		UpdateFunc: func(_ context.Context, e event.UpdateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			old, _ := e.ObjectOld.(*corev1.Pod)
			enqueue(q, e.ObjectNew, old)
		},
		DeleteFunc: func(_ context.Context, e event.DeleteEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			enqueue(q, e.Object, nil)
		},
	}
}

func addAfter(q workqueue.TypedRateLimitingInterface[reconcile.Request], key types.NamespacedName, d time.Duration) {
	req := reconcile.Request{NamespacedName: key}
	if d <= 0 {
		q.Add(req)
		return
	}
	q.AddAfter(req, d)
}

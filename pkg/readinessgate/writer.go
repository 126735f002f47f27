package readinessgate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/directlb/directlb/pkg/recorder"
	"github.com/directlb/directlb/pkg/service"
	"github.com/directlb/directlb/pkg/targethealth"
)

// IndexGates indexes pods by the names of the Services whose directlb
// readiness gates they carry.
const IndexGates = "directlb.io/readiness-gates"

// ConditionTargetsHealthy is the Service status condition the gate writer
// keeps: False while a pod whose gate has latched True has targets the load
// balancer reports unhealthy.
const ConditionTargetsHealthy = "directlb.io/TargetsHealthy"

// Reasons of ConditionTargetsHealthy, and events on the Service.
const (
	ReasonTargetsHealthy    = "TargetsHealthy"
	ReasonTargetsUnhealthy  = "TargetsUnhealthy"
	EventTargetHealthFailed = "TargetHealthDegraded"
	EventTargetHealthOK     = "TargetHealthRecovered"
)

// Event reasons on pods.
const (
	EventFailOpen         = "ReadinessGateFailOpen"
	EventGraceTooShort    = "DrainExceedsGracePeriod"
	EventGateReleased     = "ReadinessGateReleased"
	batchWindow           = 200 * time.Millisecond
	pendingBackoffPercent = 150
)

// GateServices returns the names of the Services whose directlb gates pod
// carries.
func GateServices(pod *corev1.Pod) []string {
	var out []string
	for _, g := range pod.Spec.ReadinessGates {
		if name, ok := strings.CutPrefix(string(g.ConditionType), service.ReadinessGatePrefix); ok {
			out = append(out, name)
		}
	}
	return out
}

// Writer keeps the gate conditions of one Service's pods equal to the
// cloud's view of their targets. Its requests are Service keys.
type Writer struct {
	Client client.Client
	// Health is the shared target-health reader.
	Health       targethealth.Reader
	TargetGroups targethealth.TargetGroupSource
	Classes      service.ClassFilter
	Recorder     events.EventRecorder
	Config       Config

	mu sync.Mutex
	// pending is the current poll interval of a Service with pending gates.
	pending map[types.NamespacedName]time.Duration
	// seen: pods already checked for the grace period, and pods whose gate
	// has been True once (for the containers-ready → True histogram).
	graceChecked map[types.UID]bool
	everTrue     map[types.UID]bool
	// waitingSince: when this writer first saw a pod waiting with no gate
	// condition (ReportPendingAfter counts from there).
	waitingSince map[types.UID]time.Time
	// groups: gated target groups per Service (and their total), for the
	// regression check's budget; changedAt: when a Service's spec or
	// annotations last changed (it is watched for a while after).
	groups      map[types.NamespacedName]int
	groupsTotal int
	changedAt   map[types.NamespacedName]time.Time
}

// watchAfterChange is how long a Service is watched (fresh reads every
// WatchInterval) after its spec or annotations change: a health-check
// edit shows its effect within a few checks, and a typo is reported at
// once rather than at the next slow check.
const watchAfterChange = 3 * time.Minute

// Reconcile polls the target health of the Service's target groups once
// and writes every gate that differs.
func (w *Writer) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	var pods corev1.PodList
	if err := w.Client.List(ctx, &pods, client.InNamespace(req.Namespace), client.MatchingFields{IndexGates: req.Name}); err != nil {
		return ctrl.Result{}, fmt.Errorf("list gated pods of %s: %w", req.NamespacedName, err)
	}
	if len(pods.Items) == 0 {
		w.setPending(req.NamespacedName, 0)
		w.setGroups(req.NamespacedName, 0)
		unhealthyReady.DeleteLabelValues(req.Namespace, req.Name)
		return ctrl.Result{}, nil
	}
	svc := &corev1.Service{}
	err := w.Client.Get(ctx, req.NamespacedName, svc)
	if client.IgnoreNotFound(err) != nil {
		return ctrl.Result{}, fmt.Errorf("get service %s: %w", req.NamespacedName, err)
	}
	gateType := service.ReadinessGateType(req.Name)
	if err != nil || !service.Wanted(svc, w.Classes) || svc.Annotations[service.AnnotationReadinessGate] == "false" {
		return w.release(ctx, req.NamespacedName, pods.Items, svc, gateType)
	}
	if len(w.TargetGroups.Get(req.NamespacedName)) == 0 {
		return w.awaitTargetGroups(ctx, req.NamespacedName, pods.Items, svc, gateType)
	}
	// Something pending needs a fresh read; with every gate latched True,
	// nothing draining and no regression reported, the read is only the
	// slow regression check, and a result that young serves (usually the
	// target reconciler's own refresh: no call of its own).
	check := w.setGroups(req.NamespacedName, len(w.TargetGroups.Get(req.NamespacedName)))
	watch := w.watching(svc, pods.Items, gateType)
	maxAge := time.Duration(0)
	if !watch {
		maxAge = check
		if maxAge == 0 {
			maxAge = regressionOffMaxAge
		}
	}
	groups, err := w.health(ctx, req.NamespacedName, maxAge)
	if err != nil {
		return ctrl.Result{}, err
	}
	pendingAny, changed := false, false
	var regressed []string
	for i := range pods.Items {
		pod := &pods.Items[i]
		w.checkGrace(pod, svc)
		v, now := w.decide(pod, gateType, groups)
		if v.True() && regression(now) && pod.DeletionTimestamp == nil {
			regressed = append(regressed, fmt.Sprintf("%s (%s)", pod.Name, now.Message))
		}
		if !v.True() && pod.DeletionTimestamp == nil {
			pendingAny = true
		}
		if held, first := w.holdNotYet(pod, gateType, v); held {
			// A wait that starts now polls from PollInterval, as a
			// write would: the target may be healthy in a second.
			changed = changed || first
			continue
		}
		c, err := w.Write(ctx, pod, gateType, v)
		if err != nil {
			return ctrl.Result{}, err
		}
		changed = changed || c
	}
	if err := w.reportHealth(ctx, svc, regressed); err != nil {
		return ctrl.Result{}, err
	}
	if pendingAny {
		return ctrl.Result{RequeueAfter: w.nextPending(req.NamespacedName, changed)}, nil
	}
	w.setPending(req.NamespacedName, 0)
	if len(regressed) > 0 || w.draining(pods.Items) || w.recentlyChanged(req.NamespacedName) {
		return ctrl.Result{RequeueAfter: w.Config.WatchInterval}, nil
	}
	// Every gate True, nothing draining, no regression: no polling, only
	// the slow regression check (pod and Service changes still enqueue).
	return ctrl.Result{RequeueAfter: check}, nil
}

// release sets every gate True (Released): no load balancer will ever
// report on these pods (the Service is gone, no longer direct-access, or
// opted out).
func (w *Writer) release(ctx context.Context, key types.NamespacedName, pods []corev1.Pod, svc *corev1.Service, gateType corev1.PodConditionType) (ctrl.Result, error) {
	v := Verdict{Status: corev1.ConditionTrue, Reason: ReasonReleased,
		Message: "the Service is gone, no longer direct-access, or opted out of readiness gates"}
	for i := range pods {
		if _, err := w.Write(ctx, &pods[i], gateType, v); err != nil {
			return ctrl.Result{}, err
		}
	}
	if err := w.clearHealth(ctx, svc); err != nil {
		return ctrl.Result{}, err
	}
	w.setPending(key, 0)
	w.setGroups(key, 0)
	unhealthyReady.DeleteLabelValues(key.Namespace, key.Name)
	return ctrl.Result{}, nil
}

// awaitTargetGroups is a pass while the Service's target groups are not
// known yet: a new leader before its first deploy pass, or a Service not
// deployed yet. Unknown is not False: no False gate is written until they
// are. The fail-open rule still holds (a cloud outage at a failover must
// not block rollouts for ever). No cloud call here; the registry wakes the
// writer when they are known (Options.Wake), the backed-off look is the
// fallback.
func (w *Writer) awaitTargetGroups(ctx context.Context, key types.NamespacedName, pods []corev1.Pod, svc *corev1.Service, gateType corev1.PodConditionType) (ctrl.Result, error) {
	for i := range pods {
		pod := &pods[i]
		w.checkGrace(pod, svc)
		if v, _ := w.decide(pod, gateType, nil); v.True() && pod.DeletionTimestamp == nil {
			if _, err := w.Write(ctx, pod, gateType, v); err != nil {
				return ctrl.Result{}, err
			}
		}
	}
	return ctrl.Result{RequeueAfter: w.nextPending(key, false)}, nil
}

// setGroups records how many target groups the Service's gates watch and
// returns its regression-check interval: the budget shared by every
// gated target group, at least WatchInterval; 0 with the check off.
func (w *Writer) setGroups(key types.NamespacedName, n int) time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.groups == nil {
		w.groups = map[types.NamespacedName]int{}
	}
	w.groupsTotal += n - w.groups[key]
	if n == 0 {
		delete(w.groups, key)
	} else {
		w.groups[key] = n
	}
	return RegressionInterval(w.groupsTotal, w.Config.RegressionChecksPerMinute, w.Config.WatchInterval)
}

// RegressionInterval is how often each Service is checked for health
// regressions when groups target groups share a budget of perMinute
// reads a minute: groups/perMinute minutes, at least floor; 0 when the
// budget is 0 (no check).
func RegressionInterval(groups int, perMinute float64, floor time.Duration) time.Duration {
	if perMinute <= 0 {
		return 0
	}
	d := time.Duration(float64(max(groups, 1)) / perMinute * float64(time.Minute))
	return max(d, floor)
}

// changed notes that a Service's spec or annotations changed.
func (w *Writer) changed(key types.NamespacedName) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.changedAt == nil || len(w.changedAt) > 100000 {
		w.changedAt = map[types.NamespacedName]time.Time{}
	}
	w.changedAt[key] = time.Now()
}

// recentlyChanged: the Service changed less than watchAfterChange ago.
func (w *Writer) recentlyChanged(key types.NamespacedName) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	at, ok := w.changedAt[key]
	if ok && time.Since(at) >= watchAfterChange {
		delete(w.changedAt, key)
		return false
	}
	return ok
}

// regressionOffMaxAge is the age of a result the writer accepts, with the
// regression check off, for a pass that a pod or Service change caused
// while nothing is pending.
const regressionOffMaxAge = 24 * time.Hour

// watching reports whether the Service has something the writer must read
// fresh for: a live pod whose gate is not True yet, a gated pod draining,
// a health regression it reports (ConditionTargetsHealthy False), or a
// recent change of its spec or annotations.
func (w *Writer) watching(svc *corev1.Service, pods []corev1.Pod, gateType corev1.PodConditionType) bool {
	if w.recentlyChanged(client.ObjectKeyFromObject(svc)) {
		return true
	}
	if c := meta.FindStatusCondition(svc.Status.Conditions, ConditionTargetsHealthy); c != nil && c.Status == metav1.ConditionFalse {
		return true
	}
	for i := range pods {
		if pods[i].DeletionTimestamp != nil {
			return true
		}
		if c := findCondition(&pods[i], gateType); c == nil || c.Status != corev1.ConditionTrue {
			return true
		}
	}
	return false
}

// draining: a gated pod of the Service is terminating (its gate follows
// its targets' draining).
func (w *Writer) draining(pods []corev1.Pod) bool {
	for i := range pods {
		if pods[i].DeletionTimestamp != nil {
			return true
		}
	}
	return false
}

// clearHealth removes ConditionTargetsHealthy from a Service whose gates
// were released (opted out, or no longer direct-access), so no stale False
// stays behind. A Service that is gone has nothing to clear.
func (w *Writer) clearHealth(ctx context.Context, svc *corev1.Service) error {
	if svc.UID == "" || meta.FindStatusCondition(svc.Status.Conditions, ConditionTargetsHealthy) == nil {
		return nil
	}
	orig := svc.DeepCopy()
	meta.RemoveStatusCondition(&svc.Status.Conditions, ConditionTargetsHealthy)
	return client.IgnoreNotFound(w.Client.Status().Patch(ctx, svc, client.StrategicMergeFrom(orig)))
}

// regression reports whether what the load balancer says of a Ready pod is
// a health problem: failing checks, or the cloud cannot check it. A target
// still registering (a port just added) or draining (its old port after a
// targetPort change, a pod leaving) is not.
func regression(now Verdict) bool {
	return !now.True() && (now.Reason == ReasonUnhealthy || now.Reason == ReasonUnavailable)
}

// reportHealth keeps ConditionTargetsHealthy on the Service and the
// unhealthy-Ready gauge, and says in an event when the condition turns
// False or back to True. regressed names the pods (with what the load
// balancer says).
func (w *Writer) reportHealth(ctx context.Context, svc *corev1.Service, regressed []string) error {
	unhealthyReady.WithLabelValues(svc.Namespace, svc.Name).Set(float64(len(regressed)))
	cond := metav1.Condition{Type: ConditionTargetsHealthy, Status: metav1.ConditionTrue, Reason: ReasonTargetsHealthy,
		Message: "the load balancer reports every Ready pod's targets healthy", ObservedGeneration: svc.Generation}
	if len(regressed) > 0 {
		sort.Strings(regressed)
		cond.Status, cond.Reason = metav1.ConditionFalse, ReasonTargetsUnhealthy
		cond.Message = recorder.Truncate(fmt.Sprintf("%d Ready pod(s) have targets the load balancer reports unhealthy; their readiness gates stay True (they latch): %s",
			len(regressed), strings.Join(regressed, "; ")), recorder.MaxConditionMessage)
	}
	old := meta.FindStatusCondition(svc.Status.Conditions, ConditionTargetsHealthy)
	if old == nil && len(regressed) == 0 {
		return nil // nothing to report yet
	}
	orig := svc.DeepCopy()
	if !meta.SetStatusCondition(&svc.Status.Conditions, cond) {
		return nil
	}
	if err := w.Client.Status().Patch(ctx, svc, client.StrategicMergeFrom(orig)); err != nil {
		return client.IgnoreNotFound(err)
	}
	switch {
	case cond.Status == metav1.ConditionFalse && (old == nil || old.Status != metav1.ConditionFalse):
		healthRegressions.Inc()
		w.Recorder.Eventf(svc, nil, corev1.EventTypeWarning, EventTargetHealthFailed, "CheckTargetHealth", "%s", cond.Message)
	case old != nil && old.Status == metav1.ConditionFalse:
		w.Recorder.Eventf(svc, nil, corev1.EventTypeNormal, EventTargetHealthOK, "CheckTargetHealth", "%s", cond.Message)
	}
	return nil
}

// health reads every target group of the Service once, through the shared
// reader (a result at most maxAge old; 0: the reader's TTL).
func (w *Writer) health(ctx context.Context, key types.NamespacedName, maxAge time.Duration) ([]GroupHealth, error) {
	tgs := w.TargetGroups.Get(key)
	out := make([]GroupHealth, 0, len(tgs))
	for _, tg := range tgs {
		ts, err := w.Health.Read(ctx, tg.ARN, maxAge)
		healthPolls.Inc()
		if err != nil {
			return nil, fmt.Errorf("describe target health %s: %w", tg.Spec.Name, err)
		}
		out = append(out, GroupHealth{Name: tg.Spec.Name, Targets: ts})
	}
	return out, nil
}

// decide returns the gate the pod gets and, second, what the load balancer
// reports about it now. A gate latches: once True it stays True while the
// pod lives, whatever the health checks say later (a regression is
// reported on the Service instead, see reportHealth). Before that, the
// fail-open rule applies on top of Evaluate.
func (w *Writer) decide(pod *corev1.Pod, gateType corev1.PodConditionType, groups []GroupHealth) (gate, now Verdict) {
	v := Evaluate(pod.Status.PodIP, groups)
	if v.True() || pod.DeletionTimestamp != nil {
		return v, v
	}
	if cur := findCondition(pod, gateType); cur != nil && cur.Status == corev1.ConditionTrue {
		return Verdict{Status: corev1.ConditionTrue, Reason: cur.Reason, Message: cur.Message}, v
	}
	if w.Config.FailOpenAfter <= 0 {
		return v, v
	}
	cr := findCondition(pod, corev1.ContainersReady)
	if cr == nil || cr.Status != corev1.ConditionTrue || time.Since(cr.LastTransitionTime.Time) < w.Config.FailOpenAfter {
		return v, v
	}
	return Verdict{Status: corev1.ConditionTrue, Reason: ReasonFailOpen,
		Message: fmt.Sprintf("failed open after %s: %s", w.Config.FailOpenAfter, v.Message)}, v
}

// holdNotYet reports whether the False verdict v is left unwritten for
// now: it only says "not yet" (no pod IP, not registered, initial), the
// pod has no gate condition at all (the kubelet keeps it NotReady as a
// False one would) and it has waited less than ReportPendingAfter since
// this writer first saw it. A target that turns healthy within that time
// costs the pod one status patch instead of two or three; one that does
// not gets its reason written then. After a restart the wait starts over,
// which only delays a message. first: the wait starts with this pass.
func (w *Writer) holdNotYet(pod *corev1.Pod, gateType corev1.PodConditionType, v Verdict) (held, first bool) {
	if w.Config.ReportPendingAfter <= 0 || v.True() || pod.DeletionTimestamp != nil ||
		(v.Reason != ReasonPodIPPending && v.Reason != ReasonRegistering) || findCondition(pod, gateType) != nil {
		return false, false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.waitingSince == nil || len(w.waitingSince) > 100000 {
		w.waitingSince = map[types.UID]time.Time{}
	}
	since, ok := w.waitingSince[pod.UID]
	if !ok {
		since = time.Now()
		w.waitingSince[pod.UID] = since
	}
	return time.Since(since) < w.Config.ReportPendingAfter, !ok
}

// Write patches the gate condition if it differs from v; it reports
// whether it wrote. The patch carries the pod's UID as a precondition.
func (w *Writer) Write(ctx context.Context, pod *corev1.Pod, gateType corev1.PodConditionType, v Verdict) (bool, error) {
	cur := findCondition(pod, gateType)
	if cur != nil && cur.Status == v.Status && cur.Reason == v.Reason && cur.Message == v.Message {
		return false, nil
	}
	now := metav1.Now()
	cond := corev1.PodCondition{Type: gateType, Status: v.Status, Reason: v.Reason, Message: v.Message, LastTransitionTime: now}
	if cur != nil && cur.Status == v.Status {
		cond.LastTransitionTime = cur.LastTransitionTime
	}
	patch, err := json.Marshal(map[string]any{
		"metadata": map[string]any{"uid": pod.UID},
		"status":   map[string]any{"conditions": []corev1.PodCondition{cond}},
	})
	if err != nil {
		return false, err
	}
	if err := w.Client.Status().Patch(ctx, pod, client.RawPatch(types.StrategicMergePatchType, patch)); err != nil {
		if client.IgnoreNotFound(err) == nil || IsUIDMismatch(err) {
			return false, nil // gone, or replaced by a pod of the same name
		}
		return false, fmt.Errorf("patch gate of pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	logger := log.FromContext(ctx)
	logger.V(1).Info("readiness gate", "pod", pod.Namespace+"/"+pod.Name, "gate", string(gateType), "status", string(v.Status), "reason", v.Reason)
	if cur == nil || cur.Status != v.Status {
		gateFlips.WithLabelValues(string(v.Status), v.Reason).Inc()
	}
	switch {
	case v.Reason == ReasonFailOpen && (cur == nil || cur.Reason != ReasonFailOpen):
		gateFailOpen.Inc()
		w.Recorder.Eventf(pod, nil, corev1.EventTypeWarning, EventFailOpen, "SetReadinessGate",
			"gate %s set True without a healthy target: %s", gateType, v.Message)
	case v.Reason == ReasonReleased:
		w.Recorder.Eventf(pod, nil, corev1.EventTypeNormal, EventGateReleased, "SetReadinessGate", "gate %s released: %s", gateType, v.Message)
	case v.Reason == ReasonHealthy:
		w.observeReady(pod, now.Time)
	}
	return true, nil
}

// IsUIDMismatch reports whether err is the apiserver refusing a patch whose
// metadata.uid precondition does not match the object.
func IsUIDMismatch(err error) bool {
	var se apierrors.APIStatus
	if !apierrors.IsInvalid(err) || !errors.As(err, &se) || se.Status().Details == nil {
		return false
	}
	for _, c := range se.Status().Details.Causes {
		if c.Field == "metadata.uid" {
			return true
		}
	}
	return false
}

// observeReady records containers-ready → gate True the first time the
// gate of a pod turns True.
func (w *Writer) observeReady(pod *corev1.Pod, at time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.everTrue == nil || len(w.everTrue) > 100000 {
		w.everTrue = map[types.UID]bool{}
	}
	if w.everTrue[pod.UID] {
		return
	}
	w.everTrue[pod.UID] = true
	if cr := findCondition(pod, corev1.ContainersReady); cr != nil && cr.Status == corev1.ConditionTrue {
		gateReadyLatency.Observe(at.Sub(cr.LastTransitionTime.Time).Seconds())
	}
}

// checkGrace warns once per pod when the drain hook cannot finish within
// the pod's termination grace period.
func (w *Writer) checkGrace(pod *corev1.Pod, svc *corev1.Service) {
	if pod.Annotations[AnnotationInjected] == "" {
		return
	}
	w.mu.Lock()
	if w.graceChecked == nil || len(w.graceChecked) > 100000 {
		w.graceChecked = map[types.UID]bool{}
	}
	done := w.graceChecked[pod.UID]
	w.graceChecked[pod.UID] = true
	w.mu.Unlock()
	if done {
		return
	}
	opts, err := service.ParseAnnotations(svc.Annotations)
	if err != nil {
		return // the Service reconciler reports it
	}
	if msg := GraceWarning(pod, int64(opts.DeregistrationDelaySeconds), int64(w.Config.DrainMargin.Seconds())); msg != "" {
		w.Recorder.Eventf(pod, nil, corev1.EventTypeWarning, EventGraceTooShort, "CheckDrain", "%s", msg)
	}
}

func (w *Writer) setPending(key types.NamespacedName, d time.Duration) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.pending == nil {
		w.pending = map[types.NamespacedName]time.Duration{}
	}
	if d == 0 {
		delete(w.pending, key)
		return
	}
	w.pending[key] = d
}

// nextPending is the poll interval for a Service with pending gates:
// PollInterval after a change, then 1.5× per unchanged pass, capped.
func (w *Writer) nextPending(key types.NamespacedName, changed bool) time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.pending == nil {
		w.pending = map[types.NamespacedName]time.Duration{}
	}
	d, ok := w.pending[key]
	if !ok || changed {
		d = w.Config.PollInterval
	} else {
		d = min(d*pendingBackoffPercent/100, w.Config.MaxPendingInterval)
	}
	w.pending[key] = d
	return d
}

// poke resets a Service's backoff (a pod changed).
func (w *Writer) poke(key types.NamespacedName) {
	w.mu.Lock()
	defer w.mu.Unlock()
	delete(w.pending, key)
}

func findCondition(pod *corev1.Pod, t corev1.PodConditionType) *corev1.PodCondition {
	for i := range pod.Status.Conditions {
		if pod.Status.Conditions[i].Type == t {
			return &pod.Status.Conditions[i]
		}
	}
	return nil
}

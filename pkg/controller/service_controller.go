package controller

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/directlb/directlb/pkg/cloud"
	"github.com/directlb/directlb/pkg/deploy"
	"github.com/directlb/directlb/pkg/readinessgate"
	"github.com/directlb/directlb/pkg/recorder"
	"github.com/directlb/directlb/pkg/service"
)

// Finalizer guards the cloud cleanup of a direct-access Service.
const Finalizer = service.Finalizer

// ConditionReady is the Service status condition directlb maintains.
const ConditionReady = "directlb.io/LoadBalancerReady"

// Condition reasons.
const (
	ReasonEnsured              = "LoadBalancerEnsured"
	ReasonInvalidConfiguration = "InvalidConfiguration"
	ReasonSyncFailed           = "SyncFailed"
	ReasonCloudRejected        = "CloudRejected"
	ReasonProvisioning         = "Provisioning"
)

// Event reasons.
const (
	EventEnsuring        = "EnsuringLoadBalancer"
	EventEnsured         = "EnsuredLoadBalancer"
	EventSyncFailed      = "SyncLoadBalancerFailed"
	EventDeleting        = "DeletingLoadBalancer"
	EventDeleted         = "DeletedLoadBalancer"
	EventInvalidConfig   = "InvalidConfiguration"
	EventNoClass         = "NoLoadBalancerClass"
	permanentRetryPeriod = 5 * time.Minute
	provisioningRecheck  = 3 * time.Second
	// drainRecheck is how soon a pass runs again while stale target groups
	// drain before they are deleted.
	drainRecheck = 5 * time.Second
)

// ServiceReconciler makes the cloud load balancer, listeners and target
// groups of each direct-access Service match the Service.
type ServiceReconciler struct {
	Client       client.Client
	Recorder     events.EventRecorder
	Deployer     *deploy.Deployer
	Model        service.Config
	Classes      service.ClassFilter
	TargetGroups *TargetGroups
	ResyncPeriod time.Duration
}

// Reconcile fetches, models, deploys and maps errors.
func (r *ServiceReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	svc := &corev1.Service{}
	if err := r.Client.Get(ctx, req.NamespacedName, svc); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !service.Wanted(svc, r.Classes) {
		if !controllerutil.ContainsFinalizer(svc, Finalizer) {
			return ctrl.Result{}, nil
		}
		return r.result(ctx, svc, r.cleanup(ctx, svc))
	}
	if err := r.addFinalizer(ctx, svc); err != nil {
		return ctrl.Result{}, err
	}
	if !r.Classes.Owns(svc.Spec.LoadBalancerClass) {
		r.Recorder.Eventf(svc, nil, corev1.EventTypeWarning, EventNoClass, "Adopt",
			"kept without spec.loadBalancerClass (claimed before direct access was claimed by class); a cloud provider's service controller may provision it too: recreate it with loadBalancerClass %s when convenient", service.LoadBalancerClass)
	}
	want, err := service.Build(svc, r.Model)
	if err != nil {
		return r.result(ctx, svc, err)
	}
	res, err := r.ensure(ctx, svc, want)
	if err != nil {
		return r.result(ctx, svc, err)
	}
	return res, nil
}

// result maps an error to a condition, an event and a requeue policy:
// invalid configuration waits for the user, a permanent cloud error retries
// slowly, anything else goes back to the queue with backoff.
func (r *ServiceReconciler) result(ctx context.Context, svc *corev1.Service, err error) (ctrl.Result, error) {
	if err == nil {
		return ctrl.Result{}, nil
	}
	logger := log.FromContext(ctx)
	switch {
	case service.IsInvalidConfig(err):
		reconcileErrors.WithLabelValues("service", "invalid_configuration").Inc()
		r.Recorder.Eventf(svc, nil, corev1.EventTypeWarning, EventInvalidConfig, "Validate", "%s", err.Error())
		logger.Info("invalid configuration", "service", service.Key(svc), "error", err.Error())
		return ctrl.Result{}, r.setCondition(ctx, svc, metav1.ConditionFalse, ReasonInvalidConfiguration, err.Error(), nil)
	case deploy.IsPermanent(err):
		reconcileErrors.WithLabelValues("service", "permanent").Inc()
		r.Recorder.Eventf(svc, nil, corev1.EventTypeWarning, EventSyncFailed, "Sync", "%s", err.Error())
		logger.Error(err, "cloud rejected the load balancer", "service", service.Key(svc))
		return ctrl.Result{RequeueAfter: permanentRetryPeriod},
			r.setCondition(ctx, svc, metav1.ConditionFalse, ReasonCloudRejected, err.Error(), nil)
	default:
		reconcileErrors.WithLabelValues("service", "retryable").Inc()
		r.Recorder.Eventf(svc, nil, corev1.EventTypeWarning, EventSyncFailed, "Sync", "%s", err.Error())
		if cerr := r.setCondition(ctx, svc, metav1.ConditionFalse, ReasonSyncFailed, err.Error(), nil); cerr != nil {
			logger.Error(cerr, "set condition", "service", service.Key(svc))
		}
		return ctrl.Result{}, err
	}
}

func (r *ServiceReconciler) ensure(ctx context.Context, svc *corev1.Service, want service.LoadBalancer) (ctrl.Result, error) {
	cond := meta.FindStatusCondition(svc.Status.Conditions, ConditionReady)
	upToDate := cond != nil && cond.Status == metav1.ConditionTrue
	if !upToDate {
		r.Recorder.Eventf(svc, nil, corev1.EventTypeNormal, EventEnsuring, "Ensure", "Ensuring load balancer %s", want.Spec.Name)
	}
	res, err := r.Deployer.Deploy(ctx, want)
	if err != nil {
		return ctrl.Result{}, fmt.Errorf("ensure load balancer %s: %w", want.Spec.Name, err)
	}
	key := types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}
	r.TargetGroups.Set(ctx, key, res.TargetGroups)
	if err := r.recordTargetGroups(ctx, svc, res.TargetGroups); err != nil {
		return ctrl.Result{}, err
	}

	ingress := ingressOf(res.LoadBalancer)
	if len(ingress) == 0 {
		err := r.setCondition(ctx, svc, metav1.ConditionFalse, ReasonProvisioning,
			fmt.Sprintf("load balancer %s has no address yet (state %q)", res.LoadBalancer.Name, res.LoadBalancer.State), nil)
		return ctrl.Result{RequeueAfter: provisioningRecheck}, err
	}
	msg := fmt.Sprintf("load balancer %s with %d listeners", res.LoadBalancer.Name, len(want.Listeners))
	if err := r.setCondition(ctx, svc, metav1.ConditionTrue, ReasonEnsured, msg, ingress); err != nil {
		return ctrl.Result{}, err
	}
	if res.Changed || !upToDate {
		r.Recorder.Eventf(svc, nil, corev1.EventTypeNormal, EventEnsured, "Ensure", "Ensured %s", msg)
		log.FromContext(ctx).Info("ensured load balancer", "service", service.Key(svc), "loadBalancer", res.LoadBalancer.Name, "changed", res.Changed)
	}
	if len(res.Pending) > 0 {
		log.FromContext(ctx).Info("retiring target groups", "service", service.Key(svc), "pending", res.Pending)
		return ctrl.Result{RequeueAfter: drainRecheck}, nil
	}
	return ctrl.Result{RequeueAfter: r.ResyncPeriod}, nil
}

// recordTargetGroups writes the target groups' ARNs on the Service
// (service.AnnotationTargetGroups), where every replica reads them from its
// cache: drain on a standby, and whatever outlives this leader's memory.
func (r *ServiceReconciler) recordTargetGroups(ctx context.Context, svc *corev1.Service, tgs []deploy.TargetGroup) error {
	arns := make([]string, 0, len(tgs))
	for _, tg := range tgs {
		arns = append(arns, tg.ARN)
	}
	v := service.RecordTargetGroups(arns)
	if cur, ok := svc.Annotations[service.AnnotationTargetGroups]; ok && cur == v {
		return nil
	}
	orig := svc.DeepCopy()
	if svc.Annotations == nil {
		svc.Annotations = map[string]string{}
	}
	svc.Annotations[service.AnnotationTargetGroups] = v
	if err := r.Client.Patch(ctx, svc, client.MergeFrom(orig)); err != nil {
		return fmt.Errorf("record target groups on %s: %w", service.Key(svc), err)
	}
	return nil
}

// ingressOf is status.loadBalancer.ingress: the IP addresses where the cloud
// reports them (localcloud), else the DNS name (AWS). ipMode Proxy tells
// in-cluster datapaths to send traffic to the load balancer rather than
// short-circuit it.
func ingressOf(lb cloud.LoadBalancer) []corev1.LoadBalancerIngress {
	proxy := corev1.LoadBalancerIPModeProxy
	var out []corev1.LoadBalancerIngress
	for _, a := range lb.Addresses {
		out = append(out, corev1.LoadBalancerIngress{IP: a, IPMode: &proxy})
	}
	if len(out) == 0 && lb.DNSName != "" {
		out = append(out, corev1.LoadBalancerIngress{Hostname: lb.DNSName})
	}
	return out
}

// cleanup deletes the Service's cloud resources, then its status and
// finalizer.
func (r *ServiceReconciler) cleanup(ctx context.Context, svc *corev1.Service) error {
	r.Recorder.Eventf(svc, nil, corev1.EventTypeNormal, EventDeleting, "Delete", "Deleting the load balancer and target groups")
	owner := cloud.Tags{cloud.TagCluster: r.Model.ClusterName, cloud.TagService: service.Key(svc)}
	if _, err := r.Deployer.Delete(ctx, owner); err != nil {
		return fmt.Errorf("delete load balancer of %s: %w", service.Key(svc), err)
	}
	r.TargetGroups.Delete(ctx, types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name})
	r.Recorder.Eventf(svc, nil, corev1.EventTypeNormal, EventDeleted, "Delete", "Deleted the load balancer and target groups")
	log.FromContext(ctx).Info("deleted load balancer", "service", service.Key(svc))
	if svc.DeletionTimestamp == nil {
		orig := svc.DeepCopy()
		svc.Status.LoadBalancer.Ingress = nil
		meta.RemoveStatusCondition(&svc.Status.Conditions, ConditionReady)
		meta.RemoveStatusCondition(&svc.Status.Conditions, readinessgate.ConditionTargetsHealthy)
		if err := r.Client.Status().Patch(ctx, svc, client.MergeFrom(orig)); err != nil {
			return fmt.Errorf("clear status of %s: %w", service.Key(svc), err)
		}
	}
	orig := svc.DeepCopy()
	controllerutil.RemoveFinalizer(svc, Finalizer)
	delete(svc.Annotations, service.AnnotationTargetGroups)
	if err := r.Client.Patch(ctx, svc, client.MergeFromWithOptions(orig, client.MergeFromWithOptimisticLock{})); err != nil {
		return fmt.Errorf("remove finalizer of %s: %w", service.Key(svc), err)
	}
	return nil
}

func (r *ServiceReconciler) addFinalizer(ctx context.Context, svc *corev1.Service) error {
	if controllerutil.ContainsFinalizer(svc, Finalizer) {
		return nil
	}
	orig := svc.DeepCopy()
	controllerutil.AddFinalizer(svc, Finalizer)
	if err := r.Client.Patch(ctx, svc, client.MergeFromWithOptions(orig, client.MergeFromWithOptimisticLock{})); err != nil {
		return fmt.Errorf("add finalizer to %s: %w", service.Key(svc), err)
	}
	return nil
}

// setCondition writes the condition and, when ingress is not nil, the
// ingress, in one status patch; it skips the patch when nothing changes.
func (r *ServiceReconciler) setCondition(ctx context.Context, svc *corev1.Service, status metav1.ConditionStatus, reason, msg string, ingress []corev1.LoadBalancerIngress) error {
	orig := svc.DeepCopy()
	changed := meta.SetStatusCondition(&svc.Status.Conditions, metav1.Condition{
		Type: ConditionReady, Status: status, Reason: reason, Message: recorder.Truncate(msg, recorder.MaxConditionMessage), ObservedGeneration: svc.Generation,
	})
	if ingress != nil && !equalIngress(svc.Status.LoadBalancer.Ingress, ingress) {
		svc.Status.LoadBalancer.Ingress = ingress
		changed = true
	}
	if !changed {
		return nil
	}
	// A strategic merge patch changes only this condition (conditions merge
	// by type): the gate writer keeps another one on the same Service.
	if err := r.Client.Status().Patch(ctx, svc, client.StrategicMergeFrom(orig)); err != nil {
		return fmt.Errorf("update status of %s: %w", service.Key(svc), err)
	}
	return nil
}

func equalIngress(a, b []corev1.LoadBalancerIngress) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].IP != b[i].IP || a[i].Hostname != b[i].Hostname || (a[i].IPMode == nil) != (b[i].IPMode == nil) ||
			(a[i].IPMode != nil && *a[i].IPMode != *b[i].IPMode) {
			return false
		}
	}
	return true
}

package readinessgate

import (
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/directlb/directlb/pkg/service"
)

// Names users see on pods and namespaces.
const (
	// NamespaceOptOutLabel on a namespace, with the value "disabled", keeps
	// the webhook away from the namespace's pods (no gates, no drain hook).
	NamespaceOptOutLabel = "directlb.io/readiness-gate"
	NamespaceOptOutValue = "disabled"
	// AnnotationDrainToken identifies a pod to the drain endpoint: the
	// webhook runs before the pod has a name (generateName), so the preStop
	// path carries this random token instead.
	AnnotationDrainToken = "drain.directlb.io/token"
	// AnnotationInjected lists the containers the webhook gave a preStop
	// hook.
	AnnotationInjected = "drain.directlb.io/prestop-injected"
)

// DrainHook says where the injected preStop httpGet goes. A zero Host
// disables the injection; the webhook fills Host from Service's ClusterIP
// when Service is set.
type DrainHook struct {
	Host    string
	Service types.NamespacedName
	Port    int32
	Scheme  corev1.URIScheme
}

// DrainPath is the path of a pod's drain wait on the drain endpoint.
func DrainPath(namespace, token string) string {
	return "/drain/" + namespace + "/" + token
}

// MutateOptions are what Mutate needs besides the pod and the Services.
type MutateOptions struct {
	Classes service.ClassFilter
	Drain   DrainHook
	// NewToken makes a drain token; called at most once per pod.
	NewToken func() string
}

// Gated returns the names of the Services among svcs (of the pod's
// namespace) that select pod, want direct access from this controller and
// did not opt out of readiness gates, sorted.
func Gated(pod *corev1.Pod, svcs []corev1.Service, classes service.ClassFilter) []string {
	var out []string
	for i := range svcs {
		s := &svcs[i]
		if !service.Wanted(s, classes) || s.Annotations[service.AnnotationReadinessGate] == "false" || len(s.Spec.Selector) == 0 {
			continue
		}
		if labels.SelectorFromSet(s.Spec.Selector).Matches(labels.Set(pod.Labels)) {
			out = append(out, s.Name)
		}
	}
	slices.Sort(out)
	return out
}

// Mutate adds the readiness gate of every gated Service the pod lacks and,
// where a container has no preStop hook of its own, the drain preStop
// httpGet. It is idempotent: a pod it already changed is left as it is. It
// returns the gated Service names.
func Mutate(pod *corev1.Pod, namespace string, svcs []corev1.Service, opts MutateOptions) []string {
	gated := Gated(pod, svcs, opts.Classes)
	if len(gated) == 0 {
		return nil
	}
	for _, name := range gated {
		t := service.ReadinessGateType(name)
		if !slices.ContainsFunc(pod.Spec.ReadinessGates, func(g corev1.PodReadinessGate) bool { return g.ConditionType == t }) {
			pod.Spec.ReadinessGates = append(pod.Spec.ReadinessGates, corev1.PodReadinessGate{ConditionType: t})
		}
	}
	if opts.Drain.Host == "" {
		return gated
	}
	var bare []int // containers without a preStop hook of their own
	for i, c := range pod.Spec.Containers {
		if c.Lifecycle == nil || c.Lifecycle.PreStop == nil {
			bare = append(bare, i)
		}
	}
	token := pod.Annotations[AnnotationDrainToken]
	if token == "" {
		if len(bare) == 0 {
			return gated // every container has its own preStop: no token needed
		}
		token = opts.NewToken()
	}
	var injected []string
	if prev := pod.Annotations[AnnotationInjected]; prev != "" {
		injected = strings.Split(prev, ",")
	}
	hook := &corev1.LifecycleHandler{HTTPGet: &corev1.HTTPGetAction{
		Host:   opts.Drain.Host,
		Port:   intstr.FromInt32(opts.Drain.Port),
		Path:   DrainPath(namespace, token),
		Scheme: opts.Drain.Scheme,
	}}
	for _, i := range bare {
		c := &pod.Spec.Containers[i]
		if c.Lifecycle == nil {
			c.Lifecycle = &corev1.Lifecycle{}
		}
		c.Lifecycle.PreStop = hook.DeepCopy()
		if !slices.Contains(injected, c.Name) {
			injected = append(injected, c.Name)
		}
	}
	if pod.Annotations == nil {
		pod.Annotations = map[string]string{}
	}
	pod.Annotations[AnnotationDrainToken] = token
	if len(injected) > 0 {
		pod.Annotations[AnnotationInjected] = strings.Join(injected, ",")
	}
	return gated
}

// GraceWarning returns a warning when the pod's termination grace period
// cannot cover the longest deregistration delay among the Services plus
// margin seconds, else "".
func GraceWarning(pod *corev1.Pod, delaySeconds, marginSeconds int64) string {
	grace := int64(corev1.DefaultTerminationGracePeriodSeconds)
	if pod.Spec.TerminationGracePeriodSeconds != nil {
		grace = *pod.Spec.TerminationGracePeriodSeconds
	}
	if grace >= delaySeconds+marginSeconds {
		return ""
	}
	return fmt.Sprintf("terminationGracePeriodSeconds %d cannot cover the load balancer's deregistration delay (%ds) plus %ds: the pod may stop before it is drained; raise terminationGracePeriodSeconds or lower %s",
		grace, delaySeconds, marginSeconds, service.AnnotationDeregistrationDelay)
}

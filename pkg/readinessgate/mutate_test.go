package readinessgate

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/google/go-cmp/cmp"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/directlb/directlb/pkg/service"
)

func svc(name string, annotations map[string]string, selector map[string]string) corev1.Service {
	a := map[string]string{service.AnnotationDirectAccess: "true"}
	for k, v := range annotations {
		a[k] = v
	}
	return corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, Annotations: a},
		Spec:       corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, Selector: selector},
	}
}

func basePod() *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "web-", Labels: map[string]string{"app": "web"}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{
			{Name: "app", Image: "echo", Ports: []corev1.ContainerPort{{ContainerPort: 8080}}},
		}},
	}
}

var hook = DrainHook{Host: "10.100.0.2", Port: 8082, Scheme: corev1.URISchemeHTTP}

func drainPreStop(token string) *corev1.Lifecycle {
	return &corev1.Lifecycle{PreStop: &corev1.LifecycleHandler{HTTPGet: &corev1.HTTPGetAction{
		Host: "10.100.0.2", Port: intstr.FromInt32(8082), Path: "/drain/ns/" + token, Scheme: corev1.URISchemeHTTP}}}
}

func gates(names ...string) []corev1.PodReadinessGate {
	var out []corev1.PodReadinessGate
	for _, n := range names {
		out = append(out, corev1.PodReadinessGate{ConditionType: service.ReadinessGateType(n)})
	}
	return out
}

// webSelector selects the pods basePod makes.
var webSelector = map[string]string{"app": "web"}

// sleepPreStop is a user's own preStop hook.
var sleepPreStop = &corev1.Lifecycle{PreStop: &corev1.LifecycleHandler{Sleep: &corev1.SleepAction{Seconds: 5}}}

// mutateCase is one pod and the Services Mutate sees, and what it should
// do to the pod.
type mutateCase struct {
	name      string
	pod       func(*corev1.Pod)
	svcs      []corev1.Service
	drain     DrainHook
	wantGated []string
	want      func(*corev1.Pod)
}

// mutateCases are TestMutate's table; each runs Mutate twice.
var mutateCases = []mutateCase{
	{name: "no services", wantGated: nil, want: func(*corev1.Pod) {}},
	{
		name:      "selected direct-access service: gate and drain hook",
		svcs:      []corev1.Service{svc("web", nil, webSelector)},
		drain:     hook,
		wantGated: []string{"web"},
		want: func(p *corev1.Pod) {
			p.Spec.ReadinessGates = gates("web")
			p.Spec.Containers[0].Lifecycle = drainPreStop("tok")
			p.Annotations = map[string]string{AnnotationDrainToken: "tok", AnnotationInjected: "app"}
		},
	},
	{
		name:      "no drain host: gate only",
		svcs:      []corev1.Service{svc("web", nil, webSelector)},
		wantGated: []string{"web"},
		want:      func(p *corev1.Pod) { p.Spec.ReadinessGates = gates("web") },
	},
	{
		name: "not selected, not direct-access, opted out, no selector, wrong type",
		svcs: []corev1.Service{
			svc("other", nil, map[string]string{"app": "other"}),
			svc("optout", map[string]string{service.AnnotationReadinessGate: "false"}, webSelector),
			svc("noselector", nil, nil),
			{ObjectMeta: metav1.ObjectMeta{Name: "plain"}, Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, Selector: webSelector}},
			func() corev1.Service {
				s := svc("clusterip", nil, webSelector)
				s.Spec.Type = corev1.ServiceTypeClusterIP
				return s
			}(),
			func() corev1.Service {
				s := svc("otherclass", nil, webSelector)
				s.Spec.LoadBalancerClass = ptr.To("example.com/other")
				return s
			}(),
		},
		drain: hook,
		want:  func(*corev1.Pod) {},
	},
	{
		name:      "two services, sorted, one gate each",
		svcs:      []corev1.Service{svc("web-b", nil, webSelector), svc("web-a", nil, map[string]string{"app": "web"})},
		wantGated: []string{"web-a", "web-b"},
		want:      func(p *corev1.Pod) { p.Spec.ReadinessGates = gates("web-a", "web-b") },
	},
	{
		name: "user preStop kept; sidecar without one gets the hook",
		pod: func(p *corev1.Pod) {
			p.Spec.Containers[0].Lifecycle = sleepPreStop.DeepCopy()
			p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: "side", Image: "x"})
		},
		svcs:      []corev1.Service{svc("web", nil, webSelector)},
		drain:     hook,
		wantGated: []string{"web"},
		want: func(p *corev1.Pod) {
			p.Spec.ReadinessGates = gates("web")
			p.Spec.Containers[1].Lifecycle = drainPreStop("tok")
			p.Annotations = map[string]string{AnnotationDrainToken: "tok", AnnotationInjected: "side"}
		},
	},
	{
		name:      "every container has its preStop: no token",
		pod:       func(p *corev1.Pod) { p.Spec.Containers[0].Lifecycle = sleepPreStop.DeepCopy() },
		svcs:      []corev1.Service{svc("web", nil, webSelector)},
		drain:     hook,
		wantGated: []string{"web"},
		want:      func(p *corev1.Pod) { p.Spec.ReadinessGates = gates("web") },
	},
	{
		name: "user's own gates kept",
		pod: func(p *corev1.Pod) {
			p.Spec.ReadinessGates = []corev1.PodReadinessGate{{ConditionType: "example.com/ready"}}
		},
		svcs:      []corev1.Service{svc("web", nil, webSelector)},
		wantGated: []string{"web"},
		want: func(p *corev1.Pod) {
			p.Spec.ReadinessGates = append([]corev1.PodReadinessGate{{ConditionType: "example.com/ready"}}, gates("web")...)
		},
	},
}

func TestMutate(t *testing.T) {
	for _, tt := range mutateCases {
		t.Run(tt.name, func(t *testing.T) {
			pod := basePod()
			if tt.pod != nil {
				tt.pod(pod)
			}
			want := pod.DeepCopy()
			tt.want(want)
			opts := MutateOptions{Classes: service.ClassFilter{Default: true}, Drain: tt.drain, NewToken: func() string { return "tok" }}
			got := Mutate(pod, "ns", tt.svcs, opts)
			if diff := cmp.Diff(tt.wantGated, got); diff != "" {
				t.Errorf("gated (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(want, pod); diff != "" {
				t.Errorf("pod (-want +got):\n%s", diff)
			}
			// Idempotent: a second pass (webhook reinvocation) changes nothing.
			again := pod.DeepCopy()
			opts.NewToken = func() string { t.Fatal("second pass made a new token"); return "" }
			Mutate(again, "ns", tt.svcs, opts)
			if diff := cmp.Diff(pod, again); diff != "" {
				t.Errorf("second pass changed the pod (-first +second):\n%s", diff)
			}
		})
	}
}

func TestGraceWarning(t *testing.T) {
	tests := []struct {
		grace *int64
		delay int64
		warn  bool
	}{
		{nil, 20, false}, // default 30 ≥ 20+5
		{nil, 30, true},  // 30 < 35
		{ptr.To[int64](60), 30, false},
		{ptr.To[int64](10), 5, false},
		{ptr.To[int64](9), 5, true},
	}
	for _, tt := range tests {
		p := basePod()
		p.Spec.TerminationGracePeriodSeconds = tt.grace
		if got := GraceWarning(p, tt.delay, 5) != ""; got != tt.warn {
			t.Errorf("grace %v delay %d: warning %v, want %v", tt.grace, tt.delay, got, tt.warn)
		}
	}
}

// TestHandlePatch runs the admission handler on an AdmissionRequest and
// applies the JSON patch it returns.
func TestHandlePatch(t *testing.T) {
	s := svc("web", map[string]string{service.AnnotationDeregistrationDelay: "40"}, map[string]string{"app": "web"})
	reader := fake.NewClientBuilder().WithObjects(&s).Build()
	m := &Mutator{Reader: reader, Options: MutateOptions{Classes: service.ClassFilter{Default: true}, Drain: hook,
		NewToken: func() string { return "tok" }}, DrainMargin: 5e9}
	raw, err := json.Marshal(basePod())
	if err != nil {
		t.Fatal(err)
	}
	req := admission.Request{AdmissionRequest: admissionv1.AdmissionRequest{
		Operation: admissionv1.Create, Namespace: "ns",
		Kind:   metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
		Object: runtime.RawExtension{Raw: raw},
	}}
	resp := m.Handle(context.Background(), req)
	if !resp.Allowed {
		t.Fatalf("not allowed: %+v", resp.Result)
	}
	paths := map[string]string{}
	for _, p := range resp.Patches {
		paths[p.Path] = p.Operation
	}
	want := map[string]string{
		"/metadata/annotations":        "add",
		"/spec/readinessGates":         "add",
		"/spec/containers/0/lifecycle": "add",
	}
	if diff := cmp.Diff(want, paths); diff != "" {
		t.Errorf("patch paths (-want +got):\n%s", diff)
	}
	if len(resp.Warnings) != 1 {
		t.Errorf("warnings %q: want one (grace 30s < delay 40s + 5s)", resp.Warnings)
	}

	// A pod nobody selects passes without a patch.
	other := basePod()
	other.Labels = map[string]string{"app": "other"}
	raw, _ = json.Marshal(other)
	req.Object.Raw = raw
	resp = m.Handle(context.Background(), req)
	if !resp.Allowed || len(resp.Patches) != 0 {
		t.Errorf("unselected pod: allowed %v, %d patches; want allowed, none", resp.Allowed, len(resp.Patches))
	}
}

// TestHandleDrainService: with a drain Service instead of a host, the hook
// calls its ClusterIP; without the Service (or headless) the pod still gets
// its gate but no hook.
func TestHandleDrainService(t *testing.T) {
	web := svc("web", nil, map[string]string{"app": "web"})
	drainSvc := func(ip string) *corev1.Service {
		return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "sys", Name: "drain"}, Spec: corev1.ServiceSpec{ClusterIP: ip}}
	}
	tests := []struct {
		name     string
		objs     []client.Object
		wantHost string // "": no hook
	}{
		{"clusterIP", []client.Object{&web, drainSvc("10.96.0.42")}, "10.96.0.42"},
		{"missing", []client.Object{&web}, ""},
		{"headless", []client.Object{&web, drainSvc(corev1.ClusterIPNone)}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reader := fake.NewClientBuilder().WithObjects(tt.objs...).Build()
			m := &Mutator{Reader: reader, Options: MutateOptions{Classes: service.ClassFilter{Default: true},
				Drain:    DrainHook{Service: types.NamespacedName{Namespace: "sys", Name: "drain"}, Port: 8082, Scheme: corev1.URISchemeHTTP},
				NewToken: func() string { return "tok" }}}
			raw, err := json.Marshal(basePod())
			if err != nil {
				t.Fatal(err)
			}
			resp := m.Handle(context.Background(), admission.Request{AdmissionRequest: admissionv1.AdmissionRequest{
				Operation: admissionv1.Create, Namespace: "ns",
				Kind:   metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
				Object: runtime.RawExtension{Raw: raw},
			}})
			if !resp.Allowed {
				t.Fatalf("not allowed: %+v", resp.Result)
			}
			gotHost, gates := "", false
			for _, p := range resp.Patches {
				switch p.Path {
				case "/spec/readinessGates":
					gates = true
				case "/spec/containers/0/lifecycle":
					b, _ := json.Marshal(p.Value)
					var lc corev1.Lifecycle
					if err := json.Unmarshal(b, &lc); err != nil || lc.PreStop == nil || lc.PreStop.HTTPGet == nil {
						t.Fatalf("lifecycle patch %s: %v", b, err)
					}
					gotHost = lc.PreStop.HTTPGet.Host
				}
			}
			if !gates || gotHost != tt.wantHost {
				t.Errorf("gate patched %v, hook host %q; want true, %q", gates, gotHost, tt.wantHost)
			}
		})
	}
}

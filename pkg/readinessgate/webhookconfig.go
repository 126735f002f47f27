package readinessgate

import (
	"bytes"
	"context"
	"fmt"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// WebhookName is the name of the webhook inside the configuration.
const WebhookName = "pods.readiness-gate.directlb.io"

// DesiredConfiguration is the MutatingWebhookConfiguration for cfg and a
// CA bundle. The webhook sees pod CREATE only, in every namespace except
// the excluded ones and those labelled NamespaceOptOutLabel=disabled.
func DesiredConfiguration(cfg Config, caBundle []byte) (*admissionregistrationv1.MutatingWebhookConfiguration, error) {
	cc := admissionregistrationv1.WebhookClientConfig{CABundle: caBundle}
	if cfg.WebhookURL != "" {
		cc.URL = ptr.To(cfg.WebhookURL)
	} else {
		ns, name, port, err := cfg.ServiceRef()
		if err != nil {
			return nil, err
		}
		cc.Service = &admissionregistrationv1.ServiceReference{Namespace: ns, Name: name, Port: ptr.To(port), Path: ptr.To(WebhookPath)}
	}
	policy := admissionregistrationv1.Ignore
	if cfg.WebhookFailurePolicy == FailurePolicyFail {
		policy = admissionregistrationv1.Fail
	}
	nsSel := &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
		{Key: NamespaceOptOutLabel, Operator: metav1.LabelSelectorOpNotIn, Values: []string{NamespaceOptOutValue}},
	}}
	if len(cfg.ExcludeNamespaces) > 0 {
		nsSel.MatchExpressions = append(nsSel.MatchExpressions, metav1.LabelSelectorRequirement{
			Key: corev1.LabelMetadataName, Operator: metav1.LabelSelectorOpNotIn, Values: cfg.ExcludeNamespaces,
		})
	}
	scope := admissionregistrationv1.NamespacedScope
	return &admissionregistrationv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: cfg.WebhookConfigName, Labels: map[string]string{"app.kubernetes.io/managed-by": "directlb-lb-controller"}},
		Webhooks: []admissionregistrationv1.MutatingWebhook{{
			Name:         WebhookName,
			ClientConfig: cc,
			Rules: []admissionregistrationv1.RuleWithOperations{{
				Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create},
				Rule: admissionregistrationv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"},
					Resources: []string{"pods"}, Scope: &scope},
			}},
			FailurePolicy:           &policy,
			MatchPolicy:             ptr.To(admissionregistrationv1.Equivalent),
			NamespaceSelector:       nsSel,
			ObjectSelector:          &metav1.LabelSelector{},
			SideEffects:             ptr.To(admissionregistrationv1.SideEffectClassNone),
			TimeoutSeconds:          ptr.To(int32(cfg.WebhookTimeout.Seconds())),
			AdmissionReviewVersions: []string{"v1"},
			ReinvocationPolicy:      ptr.To(admissionregistrationv1.IfNeededReinvocationPolicy),
		}},
	}, nil
}

// EnsureConfiguration creates or updates the MutatingWebhookConfiguration.
// A nil caBundle keeps the bundle the object has (cert-manager's CA
// injector owns it then). r reads the object (pass the manager's API
// reader: no cluster-wide cache of webhook configurations); nil reads
// through c.
func EnsureConfiguration(ctx context.Context, c client.Client, r client.Reader, cfg Config, caBundle []byte) error {
	if r == nil {
		r = c
	}
	want, err := DesiredConfiguration(cfg, caBundle)
	if err != nil {
		return err
	}
	have := &admissionregistrationv1.MutatingWebhookConfiguration{}
	err = r.Get(ctx, client.ObjectKey{Name: want.Name}, have)
	if apierrors.IsNotFound(err) {
		if err := c.Create(ctx, want); err != nil {
			return fmt.Errorf("create mutating webhook configuration %s: %w", want.Name, err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("get mutating webhook configuration %s: %w", want.Name, err)
	}
	if caBundle == nil && len(have.Webhooks) == 1 {
		want.Webhooks[0].ClientConfig.CABundle = have.Webhooks[0].ClientConfig.CABundle
	}
	if len(have.Webhooks) == 1 && equality.Semantic.DeepEqual(have.Webhooks, want.Webhooks) &&
		bytes.Equal(have.Webhooks[0].ClientConfig.CABundle, want.Webhooks[0].ClientConfig.CABundle) {
		return nil
	}
	have.Webhooks = want.Webhooks
	if have.Labels == nil {
		have.Labels = map[string]string{}
	}
	for k, v := range want.Labels {
		have.Labels[k] = v
	}
	if err := c.Update(ctx, have); err != nil {
		return fmt.Errorf("update mutating webhook configuration %s: %w", want.Name, err)
	}
	return nil
}

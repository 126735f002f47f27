package framework

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/directlb/directlb/pkg/service"
)

// HasGate: the pod carries the readiness gate of the Service svc.
func HasGate(p *corev1.Pod, svc string) bool {
	for _, g := range p.Spec.ReadinessGates {
		if g.ConditionType == service.ReadinessGateType(svc) {
			return true
		}
	}
	return false
}

// Gate is the status and reason of the pod's gate condition for the
// Service svc ("" if it has none).
func Gate(p *corev1.Pod, svc string) (corev1.ConditionStatus, string) {
	for _, c := range p.Status.Conditions {
		if c.Type == service.ReadinessGateType(svc) {
			return c.Status, c.Reason
		}
	}
	return "", ""
}

// WaitWebhook waits until a dry-run pod selected by svc comes back with
// the Service's gate: the configuration, its CA bundle and the controller's
// cache are all in place.
func WaitWebhook(t *testing.T, b *Bed, ns, svc string, labels map[string]string) {
	t.Helper()
	Poll(t, 60*time.Second, "webhook adds the gate", func(ctx context.Context) (bool, string) {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{GenerateName: "probe-", Namespace: ns, Labels: labels},
			Spec: corev1.PodSpec{Containers: []corev1.Container{EchoContainer()}}}
		got, err := b.Client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		if err != nil {
			return false, err.Error()
		}
		return HasGate(got, svc), fmt.Sprintf("gates %v", got.Spec.ReadinessGates)
	})
}

// ReadinessWatch samples the pods of a selector every 200 ms until
// finished (or MaxLoad passes) and keeps every sample in which a pod was
// not Ready.
type ReadinessWatch struct {
	mu       sync.Mutex
	samples  int
	notReady []string
	done     chan struct{}
	stop     context.CancelFunc
}

// WatchReadiness starts sampling the pods of selector in ns; a NotReady
// sample names the pod's gate for the Service gate.
func WatchReadiness(ctx context.Context, b *Bed, ns, selector, gate string) *ReadinessWatch {
	ctx, cancel := context.WithTimeout(ctx, MaxLoad)
	r := &ReadinessWatch{done: make(chan struct{}), stop: cancel}
	go func() {
		defer close(r.done)
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			list, err := b.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
			if err != nil {
				continue // ctx ended, or the apiserver is busy: not a sample
			}
			r.mu.Lock()
			r.samples++
			for _, p := range list.Items {
				if !Ready(&p) && p.DeletionTimestamp == nil {
					s, reason := Gate(&p, gate)
					r.notReady = append(r.notReady, fmt.Sprintf("%s %s (gate %s/%s)", time.Now().Format("15:04:05.000"), p.Name, s, reason))
				}
			}
			r.mu.Unlock()
		}
	}()
	return r
}

// Finish stops the sampling and returns the sample count and the NotReady
// samples.
func (r *ReadinessWatch) Finish() (int, []string) {
	r.stop()
	<-r.done
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.samples, slices.Clone(r.notReady)
}

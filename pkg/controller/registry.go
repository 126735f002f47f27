package controller

import (
	"context"
	"slices"
	"sync"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"

	"github.com/directlb/directlb/pkg/deploy"
)

// TargetGroups hands the target groups the Service reconciler ensured to
// the target reconciler, so the target reconciler never has to look them up
// in the cloud. It wakes the target reconciler when a Service's set changes.
type TargetGroups struct {
	mu     sync.RWMutex
	groups map[types.NamespacedName][]deploy.TargetGroup
	notify chan event.GenericEvent
	// subs get the same wake-ups (the gate writer's).
	subs []chan event.GenericEvent
}

// Subscribe returns a channel that receives the Service of every change
// of its target groups, as the target reconciler does (the gate writer
// waits for a Service's target groups to be known). Call it before the
// manager starts, and keep reading it.
func (t *TargetGroups) Subscribe() <-chan event.GenericEvent {
	c := make(chan event.GenericEvent, 1024)
	t.mu.Lock()
	defer t.mu.Unlock()
	t.subs = append(t.subs, c)
	return c
}

// NewTargetGroups returns an empty registry.
func NewTargetGroups() *TargetGroups {
	return &TargetGroups{groups: map[types.NamespacedName][]deploy.TargetGroup{}, notify: make(chan event.GenericEvent, 1024)}
}

// Get returns the Service's target groups (nil if none are known).
func (t *TargetGroups) Get(key types.NamespacedName) []deploy.TargetGroup {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.groups[key]
}

// Has reports whether the Service has target groups.
func (t *TargetGroups) Has(key types.NamespacedName) bool {
	return len(t.Get(key)) > 0
}

// Set records the Service's target groups; a change wakes the target
// reconciler for that Service.
func (t *TargetGroups) Set(ctx context.Context, key types.NamespacedName, tgs []deploy.TargetGroup) {
	t.mu.Lock()
	old := t.groups[key]
	t.groups[key] = tgs
	t.mu.Unlock()
	same := slices.EqualFunc(old, tgs, func(a, b deploy.TargetGroup) bool {
		return a.ARN == b.ARN && slices.Equal(a.Ports, b.Ports)
	})
	if !same {
		t.wake(ctx, key)
	}
}

// Delete forgets the Service and wakes the target reconciler so it drops
// its caches.
func (t *TargetGroups) Delete(ctx context.Context, key types.NamespacedName) {
	t.mu.Lock()
	_, had := t.groups[key]
	delete(t.groups, key)
	t.mu.Unlock()
	if had {
		t.wake(ctx, key)
	}
}

func (t *TargetGroups) wake(ctx context.Context, key types.NamespacedName) {
	obj := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Name}}
	t.mu.RLock()
	chans := append([]chan event.GenericEvent{t.notify}, t.subs...)
	t.mu.RUnlock()
	for _, c := range chans {
		select {
		case c <- event.GenericEvent{Object: client.Object(obj)}:
		case <-ctx.Done():
			return
		}
	}
}

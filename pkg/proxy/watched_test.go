package proxy

import (
	"sync"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// watchedClientset is a fake clientset that tells when the informers'
// watches are open. The fake tracker replays objects added between an
// informer's List and its Watch but not deletions, so a test that deletes
// right after the informers synced must first wait for the watch (as
// informers on a real apiserver resume from the List's resourceVersion).
type watchedClientset struct {
	*fake.Clientset
	mu       sync.Mutex
	watching map[string]bool
}

func newWatchedClientset(objs ...runtime.Object) *watchedClientset {
	c := &watchedClientset{Clientset: fake.NewClientset(objs...), watching: map[string]bool{}}
	c.PrependWatchReactor("*", func(action k8stesting.Action) (bool, watch.Interface, error) {
		wa, ok := action.(k8stesting.WatchActionImpl)
		if !ok {
			return false, nil, nil
		}
		w, err := c.Tracker().Watch(action.GetResource(), action.GetNamespace(), wa.ListOptions)
		if err != nil {
			return true, nil, err
		}
		c.mu.Lock()
		c.watching[action.GetResource().Resource] = true
		c.mu.Unlock()
		return true, w, nil
	})
	return c
}

// waitWatching waits until each resource (plural, as "services") has an
// open watch.
func (c *watchedClientset) waitWatching(t *testing.T, resources ...string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for _, r := range resources {
		for {
			c.mu.Lock()
			ok := c.watching[r]
			c.mu.Unlock()
			if ok {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("no watch on %s after 10s", r)
			}
			time.Sleep(time.Millisecond)
		}
	}
}

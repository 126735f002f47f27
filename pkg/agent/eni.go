package agent

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/directlb/directlb/pkg/eni"
)

// ENIRouting keeps the ENI policy routing (pkg/eni) of this node's pods:
// pods from an informer limited to spec.nodeName, each pod's ENI from the
// proxy neighbour entry the CNI adds on the ENI that answers ARP for it.
type ENIRouting struct {
	Client   kubernetes.Interface
	NodeName string
	Router   *eni.Router
	// Owners returns pod address → ENI device (eni.ProxyOwners).
	Owners func() (map[netip.Addr]string, error)
	// Resync re-reads everything this often, for ownership that changed
	// without a pod event.
	Resync time.Duration
	Logger *zap.Logger
}

// Run syncs after every pod change (gathered for a short while) and every
// Resync, until ctx ends.
func (e *ENIRouting) Run(ctx context.Context) error {
	f := informers.NewSharedInformerFactoryWithOptions(e.Client, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", e.NodeName).String()
	}))
	inf := f.Core().V1().Pods()
	kick := make(chan struct{}, 1)
	notify := func(any) {
		select {
		case kick <- struct{}{}:
		default:
		}
	}
	if _, err := inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    notify,
		UpdateFunc: func(_, n any) { notify(n) },
		DeleteFunc: notify,
	}); err != nil {
		return fmt.Errorf("pod event handler: %w", err)
	}
	lister := inf.Lister()
	f.Start(ctx.Done())
	defer f.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), inf.Informer().HasSynced) {
		return nil
	}
	t := time.NewTicker(e.Resync)
	defer t.Stop()
	for {
		if err := e.sync(lister); err != nil {
			e.Logger.Warn("ENI routing sync failed; retrying", zap.Error(err))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-kick:
			// Gather a burst of events into one sync.
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(50 * time.Millisecond):
			}
		case <-t.C:
		}
	}
}

func (e *ENIRouting) sync(lister corelisters.PodLister) error {
	pods, err := lister.List(labels.Everything())
	if err != nil {
		return fmt.Errorf("list pods: %w", err)
	}
	owners, err := e.Owners()
	if err != nil {
		return err
	}
	want := LocalPods(pods, owners)
	res, err := e.Router.Sync(want)
	if res != (eni.Result{Skipped: res.Skipped}) {
		e.Logger.Info("ENI routing synced",
			zap.Int("pods", len(want)),
			zap.Int("rulesAdded", res.RulesAdded), zap.Int("rulesDeleted", res.RulesDeleted),
			zap.Int("routesAdded", res.RoutesAdded), zap.Int("routesDeleted", res.RoutesDeleted),
			zap.Int("skipped", res.Skipped))
	}
	return err
}

// LocalPods turns pods into eni.Pods: running or pending pods with a pod
// network (not hostNetwork) and an IPv4 address; the ENI is the one whose
// proxy neighbour entry holds the address (empty when none does, and the
// router then skips the pod). The host route is left to the CNI (no Veth).
func LocalPods(pods []*corev1.Pod, owners map[netip.Addr]string) []eni.Pod {
	var out []eni.Pod
	for _, p := range pods {
		if p.Spec.HostNetwork || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		ip, err := netip.ParseAddr(p.Status.PodIP)
		if err != nil || !ip.Is4() {
			continue
		}
		out = append(out, eni.Pod{Name: p.Namespace + "/" + p.Name, IP: ip, ENI: owners[ip]})
	}
	return out
}

// InstanceIDFromProviderID is the last segment of a Node's spec.providerID
// (aws:///us-east-1a/i-0abc → i-0abc; directlb-testbed:///node-1 → node-1).
func InstanceIDFromProviderID(providerID string) string {
	if providerID == "" {
		return ""
	}
	i := strings.LastIndex(providerID, "/")
	return providerID[i+1:]
}

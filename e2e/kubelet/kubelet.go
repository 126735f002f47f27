package kubelet

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"go.uber.org/zap"
	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"

	"github.com/directlb/directlb/e2e/testbed"
	"github.com/directlb/directlb/internal/namedns"
)

// Kubelet is the stand-in for one node.
type Kubelet struct {
	cfg    Config
	log    *zap.Logger
	topo   *testbed.Topology
	node   testbed.Node
	client kubernetes.Interface
	// apiCA is the apiserver's CA from the admin kubeconfig (used when a
	// namespace has no kube-root-ca.crt yet).
	apiCA  []byte
	images ImageMap
	store  stateStore
	lister corelisters.PodLister
	dialer Dialer

	// ipam records pod addresses in localcloud's EC2 API; nil when the
	// test bed runs no localcloud.
	ipam *CloudIPAM

	mu      sync.Mutex
	alloc   *Allocator
	workers map[types.UID]*podWorker
	wg      sync.WaitGroup
	ctx     context.Context

	svcMu   sync.Mutex
	svcHost string
	svcPort string
}

// New prepares a stand-in from the configuration.
func New(cfg Config, log *zap.Logger) (*Kubelet, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	topo, err := testbed.Load(cfg.TopologyFile)
	if err != nil {
		return nil, err
	}
	if err := cfg.complete(topo); err != nil {
		return nil, err
	}
	var node *testbed.Node
	for i := range topo.Nodes {
		if topo.Nodes[i].Name == cfg.NodeName {
			node = &topo.Nodes[i]
		}
	}
	if node == nil {
		return nil, fmt.Errorf("node %s is not in the topology", cfg.NodeName)
	}
	if len(node.ENIs) == 0 {
		return nil, fmt.Errorf("node %s has no ENIs", cfg.NodeName)
	}
	images, err := ParseImageMap(cfg.Images)
	if err != nil {
		return nil, err
	}
	rc, err := clientcmd.BuildConfigFromFlags("", cfg.Kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", cfg.Kubeconfig, err)
	}
	rc.QPS, rc.Burst = 50, 100
	rc.UserAgent = "dlb-kubelet/" + cfg.NodeName
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	apiCA := rc.CAData
	if len(apiCA) == 0 && rc.CAFile != "" {
		if apiCA, err = os.ReadFile(rc.CAFile); err != nil {
			return nil, fmt.Errorf("read apiserver CA: %w", err)
		}
	}
	var ranges []PodRange
	for i, e := range node.ENIs {
		if e.PodRange.IsValid() {
			ranges = append(ranges, PodRange{ENI: i, Prefix: e.PodRange})
		}
	}
	var ipam *CloudIPAM
	if topo.LocalcloudURL != "" {
		if ipam, err = NewCloudIPAM(context.Background(), topo.LocalcloudURL, log.With(zap.String("node", node.Name))); err != nil {
			return nil, err
		}
	}
	return &Kubelet{
		ipam:    ipam,
		cfg:     cfg,
		log:     log.With(zap.String("node", node.Name)),
		topo:    topo,
		node:    *node,
		client:  client,
		apiCA:   apiCA,
		images:  images,
		store:   stateStore{dir: filepath.Join(cfg.StateDir, "nodes", node.Name, "pods")},
		dialer:  NetnsDialer(node.NetNS),
		alloc:   NewAllocator(ranges, nodeOrdinal(node.Name)),
		workers: map[types.UID]*podWorker{},
	}, nil
}

// nodeOrdinal: node-1 → 0, node-2 → 1, ...; first ENI preferred on a tie,
// so that single pods on neighbouring nodes use different ENIs.
func nodeOrdinal(name string) int {
	m := regexp.MustCompile(`(\d+)$`).FindString(name)
	n, err := strconv.Atoi(m)
	if err != nil {
		h := 0
		for _, c := range name {
			h += int(c)
		}
		return h
	}
	return n - 1
}

// Run registers the node, adopts or cleans up what an earlier stand-in left,
// and runs the node's pods until ctx ends. Pod processes keep running after
// Run returns; the next stand-in adopts them.
func (k *Kubelet) Run(ctx context.Context) error {
	k.ctx = ctx
	if err := ensureCgroup(k.node.Cgroup); err != nil {
		return err
	}
	var devs []string
	for _, e := range k.node.ENIs {
		devs = append(devs, e.Device)
	}
	if err := prepareNode(k.node.NetNS, devs); err != nil {
		return fmt.Errorf("prepare node netns: %w", err)
	}
	for {
		err := k.registerNode(ctx)
		if err == nil {
			break
		}
		k.log.Info("waiting for the apiserver to register the node", zap.Error(err))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
	k.log.Info("node registered")
	go k.heartbeat(ctx)

	factory := informers.NewSharedInformerFactoryWithOptions(k.client, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", k.node.Name).String()
	}))
	podInformer := factory.Core().V1().Pods()
	k.lister = podInformer.Lister()
	inf := podInformer.Informer()
	factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		return errors.New("pod informer did not sync")
	}
	if err := k.adopt(); err != nil {
		return err
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { k.podChanged(o) },
		UpdateFunc: func(_, o any) { k.podChanged(o) },
		DeleteFunc: func(o any) {
			if d, ok := o.(cache.DeletedFinalStateUnknown); ok {
				o = d.Obj
			}
			k.podChanged(o)
		},
	}); err != nil {
		return fmt.Errorf("pod event handler: %w", err)
	}
	k.log.Info("kubelet stand-in running")
	<-ctx.Done()
	k.wg.Wait()
	return nil
}

// adopt reads the persisted pod states: pods still in the apiserver get a
// worker that adopts their processes; the rest are killed and cleaned up.
// Then anything of this node's without a state is swept.
func (k *Kubelet) adopt() error {
	states, err := k.store.loadAll()
	if err != nil {
		return err
	}
	pods, err := k.lister.List(labels.Everything())
	if err != nil {
		return err
	}
	byUID := map[types.UID]*v1.Pod{}
	for _, p := range pods {
		byUID[p.UID] = p
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	// Reserve every address first, live or not, so none is given twice.
	for _, st := range states {
		if st.HostNetwork || !st.IP.IsValid() {
			continue
		}
		if _, err := k.alloc.Reserve(string(st.UID), st.Group, st.IP); err != nil {
			k.log.Error("reserve address from state", zap.String("uid", string(st.UID)), zap.Error(err))
		}
	}
	known := map[types.UID]bool{}
	for _, st := range states {
		known[st.UID] = true
		if p := byUID[st.UID]; p != nil {
			k.log.Info("adopting pod", zap.String("pod", p.Namespace+"/"+p.Name), zap.String("uid", string(p.UID)))
			k.startWorker(st)
			continue
		}
		k.log.Info("cleaning up pod no longer in the apiserver", zap.String("pod", st.Namespace+"/"+st.Name), zap.String("uid", string(st.UID)))
		if err := k.cleanupLocked(st); err != nil {
			k.log.Error("cleanup", zap.Error(err))
		}
	}
	k.sweep(known)
	return nil
}

// sweep removes pod cgroups, pod netns and node-side veths of this node that
// no state file accounts for (a crash between creating and recording).
func (k *Kubelet) sweep(known map[types.UID]bool) {
	ents, _ := os.ReadDir(k.node.Cgroup)
	for _, e := range ents {
		uid, ok := strings.CutPrefix(e.Name(), "pod-")
		if !e.IsDir() || !ok || known[types.UID(uid)] {
			continue
		}
		k.log.Info("sweeping orphan cgroup", zap.String("cgroup", e.Name()))
		if err := killCgroup(filepath.Join(k.node.Cgroup, e.Name()), 5*time.Second); err != nil {
			k.log.Error("sweep cgroup", zap.Error(err))
		}
	}
	knownNS, knownVeth := map[string]bool{}, map[string]bool{}
	for uid := range known {
		knownNS[k.podNetNSName(uid)] = true
		knownVeth[hostVethName(uid)] = true
	}
	names, _ := namedns.List(k.podNetNSName(""))
	for _, name := range names {
		if !knownNS[name] {
			k.log.Info("sweeping orphan netns", zap.String("netns", name))
			_ = namedns.Delete(name)
		}
	}
	h, ns, err := handleAt(k.node.NetNS)
	if err != nil {
		return
	}
	defer ns.Close()
	defer h.Close()
	links, _ := h.LinkList()
	vethRe := regexp.MustCompile(`^dlb[0-9a-f]{8}$`)
	for _, l := range links {
		if _, isVeth := l.(*netlink.Veth); isVeth && vethRe.MatchString(l.Attrs().Name) && !knownVeth[l.Attrs().Name] {
			k.log.Info("sweeping orphan veth", zap.String("veth", l.Attrs().Name))
			_ = h.LinkDel(l)
		}
	}
	// Proxy entries for pod addresses nobody holds.
	for _, e := range k.node.ENIs {
		link, err := h.LinkByName(e.Device)
		if err != nil {
			continue
		}
		neighs, _ := h.NeighProxyList(link.Attrs().Index, netlink.FAMILY_V4)
		for _, n := range neighs {
			a, ok := netip.AddrFromSlice(n.IP)
			if !ok || !e.PodRange.Contains(a.Unmap()) {
				continue
			}
			held := false
			for uid := range known {
				if al, ok := k.alloc.Held(string(uid)); ok && al.Addr == a.Unmap() {
					held = true
				}
			}
			if !held {
				_ = h.NeighDel(&n)
			}
		}
	}
}

func (k *Kubelet) podNetNSName(uid types.UID) string {
	u := strings.ReplaceAll(string(uid), "-", "")
	if len(u) > 8 {
		u = u[:8]
	}
	return k.cfg.PodNetNSPrefix + k.node.Name + "-" + u
}

func hostVethName(uid types.UID) string {
	u := strings.ReplaceAll(string(uid), "-", "")
	if len(u) > 8 {
		u = u[:8]
	}
	return "dlb" + u
}

func (k *Kubelet) logPath(st *PodState, container string) string {
	return filepath.Join(k.store.dir, string(st.UID), container+".log")
}

// podChanged routes an informer event to the pod's worker, creating it for a
// new pod.
func (k *Kubelet) podChanged(o any) {
	pod, ok := o.(*v1.Pod)
	if !ok {
		return
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if w := k.workers[pod.UID]; w != nil {
		w.Poke()
		return
	}
	if k.ctx.Err() != nil {
		return
	}
	cur, err := k.lister.Pods(pod.Namespace).Get(pod.Name)
	if err != nil || cur.UID != pod.UID {
		return // deleted; no worker, nothing of ours
	}
	if cur.Status.Phase == v1.PodSucceeded || cur.Status.Phase == v1.PodFailed || cur.DeletionTimestamp != nil {
		// Nothing runs for it here: a terminal or deleted pod only needs the
		// final delete once it is being deleted.
		if cur.DeletionTimestamp != nil {
			go k.finalDelete(cur)
		}
		return
	}
	st := &PodState{
		UID:         cur.UID,
		Namespace:   cur.Namespace,
		Name:        cur.Name,
		HostNetwork: cur.Spec.HostNetwork,
		Cgroup:      filepath.Join(k.node.Cgroup, "pod-"+string(cur.UID)),
		StartTime:   time.Now(),
		Containers:  map[string]*ContainerState{},
	}
	if cur.Spec.HostNetwork {
		st.NetNS = k.node.NetNS
		st.IP = k.node.ENIs[0].Addr.Addr()
	} else {
		prefer, _ := netip.ParseAddr(cur.Status.PodIP)
		st.Group = workloadOf(cur)
		al, err := k.alloc.Allocate(string(cur.UID), st.Group, prefer)
		if err != nil {
			k.log.Error("allocate pod address", zap.String("pod", cur.Namespace+"/"+cur.Name), zap.Error(err))
			return
		}
		eni := k.node.ENIs[al.ENI]
		st.IP, st.ENI, st.ENIDevice, st.ENIID = al.Addr, al.ENI, eni.Device, eni.ID
		st.NetNS = k.podNetNSName(cur.UID)
		st.HostVeth = hostVethName(cur.UID)
	}
	if err := k.store.save(st); err != nil {
		k.log.Error("save pod state", zap.Error(err))
		k.alloc.Release(string(cur.UID))
		return
	}
	k.log.Info("new pod", zap.String("pod", cur.Namespace+"/"+cur.Name), zap.String("ip", st.IP.String()), zap.String("eni", st.ENIID))
	k.startWorker(st)
}

// workloadOf names the pod's controller (its ReplicaSet, StatefulSet, ...)
// for spreading its pods over the ENIs; "" for a pod without one.
func workloadOf(pod *v1.Pod) string {
	if ref := metav1.GetControllerOf(pod); ref != nil {
		return string(ref.UID)
	}
	return ""
}

// startWorker runs a worker for st; k.mu is held.
func (k *Kubelet) startWorker(st *PodState) {
	w := newPodWorker(k, st)
	k.workers[st.UID] = w
	k.wg.Go(func() {
		w.run(k.ctx)
		if k.ctx.Err() != nil {
			return
		}
		k.mu.Lock()
		delete(k.workers, st.UID)
		k.alloc.Release(string(st.UID))
		k.mu.Unlock()
	})
}

func (k *Kubelet) finalDelete(pod *v1.Pod) {
	uid := pod.UID
	err := k.client.CoreV1().Pods(pod.Namespace).Delete(k.ctx, pod.Name, metav1.DeleteOptions{
		GracePeriodSeconds: ptr.To(int64(0)),
		Preconditions:      &metav1.Preconditions{UID: &uid},
	})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		k.log.Warn("final delete", zap.String("pod", pod.Namespace+"/"+pod.Name), zap.Error(err))
	}
}

// setupSandbox creates the pod's cgroup and network.
func (k *Kubelet) setupSandbox(st *PodState) error {
	if err := ensureCgroup(st.Cgroup); err != nil {
		return err
	}
	if st.HostNetwork {
		return nil
	}
	if k.ipam != nil && st.ENIID != "" {
		if err := k.ipam.Assign(context.Background(), st.ENIID, st.IP); err != nil {
			return err
		}
	}
	return setupPodNetwork(k.podNetwork(st))
}

func (k *Kubelet) podNetwork(st *PodState) PodNetwork {
	return PodNetwork{NodeNetNS: k.node.NetNS, PodNetNS: st.NetNS, HostVeth: st.HostVeth, ENIDevice: st.ENIDevice, Addr: st.IP}
}

// cleanup kills whatever still runs in the pod's cgroup, tears the network
// down and forgets the pod (its address is released by the worker's end).
func (k *Kubelet) cleanup(st *PodState) error {
	var errs []error
	if err := killCgroup(st.Cgroup, 10*time.Second); err != nil {
		errs = append(errs, err)
	}
	if !st.HostNetwork {
		if err := teardownPodNetwork(k.podNetwork(st)); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	if k.ipam != nil && !st.HostNetwork && st.ENIID != "" {
		k.ipam.Unassign(context.Background(), st.ENIID, st.IP)
	}
	return k.store.remove(st.UID)
}

func (k *Kubelet) cleanupLocked(st *PodState) error {
	if err := k.cleanup(st); err != nil {
		return err
	}
	k.alloc.Release(string(st.UID))
	return nil
}

// apiServiceEndpoint is the kubernetes Service's ClusterIP and port, as a
// kubelet puts into KUBERNETES_SERVICE_HOST/PORT.
func (k *Kubelet) apiServiceEndpoint(ctx context.Context) (string, string) {
	k.svcMu.Lock()
	defer k.svcMu.Unlock()
	if k.svcHost != "" {
		return k.svcHost, k.svcPort
	}
	svc, err := k.client.CoreV1().Services(v1.NamespaceDefault).Get(ctx, "kubernetes", metav1.GetOptions{})
	if err != nil || svc.Spec.ClusterIP == "" {
		return "", ""
	}
	port := "443"
	for _, p := range svc.Spec.Ports {
		if p.Name == "https" {
			port = strconv.Itoa(int(p.Port))
		}
	}
	k.svcHost, k.svcPort = svc.Spec.ClusterIP, port
	return k.svcHost, k.svcPort
}

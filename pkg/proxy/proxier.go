package proxy

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/events"

	"github.com/directlb/directlb/pkg/datapath"
)

// Programmer writes Services into the datapath; *datapath.LoadBalancer is
// one. Apply and Sync write only what differs from what is programmed.
type Programmer interface {
	Apply(upserts []datapath.Service, deletes []datapath.Frontend) (datapath.ApplyStats, error)
	Sync(desired []datapath.Service) (datapath.ApplyStats, error)
	// Frontends are all programmed frontends, restored ones included.
	Frontends() []datapath.Frontend
	// SetNodeAddresses makes the node addresses whose NodePorts are
	// translated exactly these; it returns the number of map writes.
	SetNodeAddresses(map[netip.Addr]datapath.NodeAddressFlags) (int, error)
}

// SocketDestroyer destroys the connected UDP sockets translated to
// backends that left their Service; *datapath.Datapath is one.
type SocketDestroyer interface {
	DestroySockets(left []datapath.LeftBackend) (datapath.DestroyStats, error)
}

// Config configures a Proxier.
type Config struct {
	Client     kubernetes.Interface
	NodeName   string
	Programmer Programmer
	// SyncWindow is how long changes are gathered after the first one
	// before they are programmed together.
	SyncWindow time.Duration
	// RetryPeriod is the wait before a full sync after a failed one.
	RetryPeriod time.Duration
	// FailedRetryPeriod is the wait before Services that did not fit (a
	// full map) are tried again; each failure costs a re-read of the maps,
	// so it is longer than RetryPeriod. Default 30 s.
	FailedRetryPeriod time.Duration
	// NodePortAddresses selects the node addresses NodePorts are served
	// on (--nodeport-addresses); the zero value serves none, so callers
	// set it (ParseNodePortAddresses(nil) is kube-proxy's default).
	NodePortAddresses NodePortAddresses
	// LocalAddresses lists this node's own IPv4 addresses, for
	// NodePortAddresses.CIDRs; nil: only the Node objects' addresses.
	LocalAddresses func() ([]netip.Addr, error)
	// LocalAddressResync re-reads LocalAddresses this often while CIDRs
	// are configured. Default 30 s.
	LocalAddressResync time.Duration
	// NorthSouth also programs the frontends for traffic from outside the
	// node (DesiredNorthSouth), for the tc programs on --nodeport-devices.
	NorthSouth bool
	// Sockets, if set, destroys the connected UDP sockets whose backend
	// left their Service, right after the sync that removed it (kube-proxy
	// flushes those conntrack entries instead).
	Sockets SocketDestroyer
	// ServiceHealth, if set, serves the healthCheckNodePorts of
	// externalTrafficPolicy Local Services on this node's addresses
	// (those NodePortAddresses selects for this node), following the
	// same Services and EndpointSlices.
	ServiceHealth *ServiceHealthServer
	Metrics       *Metrics
	Health        *Health
	// Recorder, if set, gets an event on each Service that does not fit
	// the datapath (a Warning NotProgrammed when a failure episode starts)
	// and when it fits again (a Normal Programmed); see reportFailures.
	Recorder events.EventRecorder
	Logger   *zap.Logger
}

// Event reasons on a Service (Config.Recorder).
const (
	ReasonNotProgrammed = "NotProgrammed"
	ReasonProgrammed    = "Programmed"
)

// Proxier keeps the datapath in step with Services and EndpointSlices.
type Proxier struct {
	cfg       Config
	factory   informers.SharedInformerFactory
	epFactory informers.SharedInformerFactory
	// nodeFactory watches the Nodes: this agent's own for nodeEligible,
	// all of them for the addresses NodePorts are served on.
	nodeFactory informers.SharedInformerFactory
	nodeSynced  cache.InformerSynced
	services    corelisters.ServiceLister

	mu         sync.Mutex
	slices     map[types.NamespacedName]map[string]*discoveryv1.EndpointSlice
	dirty      map[types.NamespacedName]time.Time // earliest trigger time, zero if unknown
	svcPending int
	epPending  int
	full       bool
	kick       chan struct{}
	// nodes are the Nodes' IPv4 addresses (nodeAddresses), by name;
	// nodesDirty says the node addresses need programming, which waits
	// for the Node informer's first list (nodesReady) so that a restart
	// keeps the pinned ones until then.
	nodes      map[string][]netip.Addr
	nodesDirty bool
	nodesReady bool
	// zone is this node's topology.kubernetes.io/zone label, for the
	// endpoints' zone hints; a change reprograms every Service.
	zone string

	// programmed and failed are touched only by the sync loop. failed
	// holds the Services whose last write failed (maps full, say); they
	// keep what was programmed before and are retried after
	// FailedRetryPeriod.
	programmed map[types.NamespacedName][]datapath.Frontend
	failed     map[types.NamespacedName]error
	// notProgrammed is failed as of the last sync, for /debug/services
	// (any goroutine; under its own lock).
	notProgrammedMu sync.Mutex
	notProgrammed   []NotProgrammed
	// healthChecks are the health checks the Services want
	// (DesiredHealthCheck), hcAddrs the addresses they listen on, and
	// hcFailed how many ports did not open at the last try; sync loop
	// only.
	healthChecks map[types.NamespacedName]HealthCheck
	hcAddrs      []netip.Addr
	hcFailed     int
	synced       chan struct{}
}

// New sets up the informers; Run starts them.
func New(cfg Config) (*Proxier, error) {
	if cfg.Client == nil || cfg.Programmer == nil {
		return nil, fmt.Errorf("proxy: client and programmer are required")
	}
	if cfg.SyncWindow <= 0 {
		cfg.SyncWindow = 5 * time.Millisecond
	}
	if cfg.RetryPeriod <= 0 {
		cfg.RetryPeriod = time.Second
	}
	if cfg.FailedRetryPeriod <= 0 {
		cfg.FailedRetryPeriod = 30 * time.Second
	}
	if cfg.LocalAddressResync <= 0 {
		cfg.LocalAddressResync = 30 * time.Second
	}
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics(nil)
	}
	if cfg.Health == nil {
		cfg.Health = NewHealth(time.Minute)
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	p := &Proxier{
		cfg:        cfg,
		slices:     map[types.NamespacedName]map[string]*discoveryv1.EndpointSlice{},
		dirty:      map[types.NamespacedName]time.Time{},
		full:       true,
		kick:       make(chan struct{}, 1),
		programmed: map[types.NamespacedName][]datapath.Frontend{},
		failed:     map[types.NamespacedName]error{},
		synced:     make(chan struct{}),
		nodes:      map[string][]netip.Addr{},

		healthChecks: map[types.NamespacedName]HealthCheck{},
	}
	if cfg.NodePortAddresses.matchAll() {
		// kube-proxy listens on every address then; no Node needed.
		p.hcAddrs = []netip.Addr{netip.IPv4Unspecified()}
	}
	// The same server-side filters as kube-proxy: Services another proxy
	// owns or that are headless never reach us.
	p.factory = informers.NewSharedInformerFactoryWithOptions(cfg.Client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = ServiceSelector }))
	p.epFactory = informers.NewSharedInformerFactoryWithOptions(cfg.Client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.LabelSelector = discoveryv1.LabelServiceName + "," + "!" + LabelHeadless
		}))
	p.nodeFactory = informers.NewSharedInformerFactory(cfg.Client, 0)
	nodeInformer := p.nodeFactory.Core().V1().Nodes().Informer()
	p.nodeSynced = nodeInformer.HasSynced
	if _, err := nodeInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { p.onNode(o, false) },
		UpdateFunc: func(_, o any) { p.onNode(o, false) },
		DeleteFunc: func(o any) { p.onNode(o, true) },
	}); err != nil {
		return nil, fmt.Errorf("watch node: %w", err)
	}
	svcInformer := p.factory.Core().V1().Services()
	p.services = svcInformer.Lister()
	if _, err := svcInformer.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { p.onService(o) },
		UpdateFunc: func(_, o any) { p.onService(o) },
		DeleteFunc: func(o any) { p.onService(o) },
	}); err != nil {
		return nil, fmt.Errorf("watch services: %w", err)
	}
	if _, err := p.epFactory.Discovery().V1().EndpointSlices().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { p.onSlice(o, false) },
		UpdateFunc: func(_, o any) { p.onSlice(o, false) },
		DeleteFunc: func(o any) { p.onSlice(o, true) },
	}); err != nil {
		return nil, fmt.Errorf("watch endpointslices: %w", err)
	}
	return p, nil
}

func unwrap(o any) any {
	if d, ok := o.(cache.DeletedFinalStateUnknown); ok {
		return d.Obj
	}
	return o
}

func (p *Proxier) onNode(o any, deleted bool) {
	n, ok := unwrap(o).(*v1.Node)
	if !ok {
		return
	}
	p.mu.Lock()
	old, known := p.nodes[n.Name]
	if deleted {
		delete(p.nodes, n.Name)
	} else {
		p.nodes[n.Name] = nodeAddresses(n)
	}
	if deleted && known || !deleted && (!known || !slices.Equal(old, p.nodes[n.Name])) {
		p.nodesDirty = true
		p.kickLocked()
	}
	if n.Name == p.cfg.NodeName && !deleted && n.Labels[v1.LabelTopologyZone] != p.zone {
		p.zone = n.Labels[v1.LabelTopologyZone]
		p.full = true
		p.kickLocked()
	}
	p.mu.Unlock()
	if n.Name != p.cfg.NodeName {
		return
	}
	if deleted && n.DeletionTimestamp == nil {
		// Gone from the apiserver: as good as being deleted.
		n = n.DeepCopy()
		now := metav1.Now()
		n.DeletionTimestamp = &now
	}
	was, _ := p.cfg.Health.NodeEligible()
	p.cfg.Health.SyncNode(n)
	if is, why := p.cfg.Health.NodeEligible(); is != was {
		p.cfg.Logger.Info("node eligibility changed", zap.String("node", n.Name), zap.Bool("nodeEligible", is), zap.String("reason", why))
	}
}

func (p *Proxier) onService(o any) {
	svc, ok := unwrap(o).(*v1.Service)
	if !ok {
		return
	}
	p.cfg.Metrics.ServiceChangesTotal.Inc()
	p.mu.Lock()
	p.svcPending++
	p.cfg.Metrics.ServiceChangesPending.Set(float64(p.svcPending))
	p.markLocked(types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}, time.Time{})
	p.mu.Unlock()
}

func (p *Proxier) onSlice(o any, deleted bool) {
	s, ok := unwrap(o).(*discoveryv1.EndpointSlice)
	if !ok {
		return
	}
	name, ok := serviceName(s)
	if !ok {
		return
	}
	var trigger time.Time
	if v, ok := s.Annotations[v1.EndpointsLastChangeTriggerTime]; ok {
		if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
			trigger = t
		}
	}
	p.cfg.Metrics.EndpointChangesTotal.Inc()
	p.mu.Lock()
	if deleted {
		delete(p.slices[name], s.Name)
		if len(p.slices[name]) == 0 {
			delete(p.slices, name)
		}
	} else {
		if p.slices[name] == nil {
			p.slices[name] = map[string]*discoveryv1.EndpointSlice{}
		}
		p.slices[name][s.Name] = s
	}
	p.epPending++
	p.cfg.Metrics.EndpointChangesPending.Set(float64(p.epPending))
	p.markLocked(name, trigger)
	p.mu.Unlock()
}

func (p *Proxier) markLocked(name types.NamespacedName, trigger time.Time) {
	if old, ok := p.dirty[name]; !ok || (!trigger.IsZero() && (old.IsZero() || trigger.Before(old))) {
		p.dirty[name] = trigger
	}
	p.cfg.Health.QueuedUpdate()
	p.kickLocked()
}

func (p *Proxier) kickLocked() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// Synced is closed after the first full sync has programmed the datapath.
func (p *Proxier) Synced() <-chan struct{} { return p.synced }

// Run starts the informers, programs the full desired state once they have
// synced (removing what an earlier run left that is no longer wanted), and
// then programs changes as they come, until ctx ends.
func (p *Proxier) Run(ctx context.Context) error {
	p.factory.Start(ctx.Done())
	p.epFactory.Start(ctx.Done())
	// The Node watch is not waited for: until it answers (or if RBAC
	// denies it) the node counts as eligible, and the node addresses
	// restored from the pins stay as they are.
	p.nodeFactory.Start(ctx.Done())
	go p.watchNodeAddresses(ctx)
	defer p.factory.Shutdown()
	defer p.epFactory.Shutdown()
	defer p.nodeFactory.Shutdown()
	for typ, ok := range p.factory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return fmt.Errorf("wait for %v informer to sync: %w", typ, ctx.Err())
		}
	}
	for typ, ok := range p.epFactory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return fmt.Errorf("wait for %v informer to sync: %w", typ, ctx.Err())
		}
	}
	p.cfg.Logger.Info("informers synced, programming all services")
	first := true
	retry := time.NewTimer(0)
	defer retry.Stop()
	var retryFailed <-chan time.Time
	for {
		if err := p.syncOnce(); err != nil {
			p.cfg.Metrics.SyncFailuresTotal.Inc()
			p.cfg.Logger.Error("program datapath", zap.Error(err))
			retry.Reset(p.cfg.RetryPeriod)
			select {
			case <-ctx.Done():
				return nil
			case <-retry.C:
			}
			continue
		}
		if first {
			first = false
			close(p.synced)
		}
		if (len(p.failed) > 0 || p.hcFailed > 0) && retryFailed == nil {
			retryFailed = time.After(p.cfg.FailedRetryPeriod)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-p.kick:
		case <-retryFailed:
			retryFailed = nil
			p.mu.Lock()
			for name := range p.failed {
				p.markLocked(name, time.Time{})
			}
			p.kickLocked() // health check ports that did not open
			p.mu.Unlock()
		}
		// Gather what else arrives within the window into one batch.
		t := time.NewTimer(p.cfg.SyncWindow)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// watchNodeAddresses marks the node addresses for programming once the
// Nodes are listed, and again every LocalAddressResync while CIDRs select
// local addresses (they are not watched).
func (p *Proxier) watchNodeAddresses(ctx context.Context) {
	if !cache.WaitForCacheSync(ctx.Done(), p.nodeSynced) {
		return
	}
	mark := func() {
		p.mu.Lock()
		p.nodesReady = true
		p.nodesDirty = true
		p.kickLocked()
		p.mu.Unlock()
	}
	mark()
	if len(p.cfg.NodePortAddresses.CIDRs) == 0 || p.cfg.LocalAddresses == nil {
		return
	}
	t := time.NewTicker(p.cfg.LocalAddressResync)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			mark()
		}
	}
}

// syncNodeAddresses programs the node addresses when they changed.
func (p *Proxier) syncNodeAddresses() error {
	p.mu.Lock()
	if !p.nodesReady || !p.nodesDirty {
		p.mu.Unlock()
		return nil
	}
	p.nodesDirty = false
	nodes := make(map[string][]netip.Addr, len(p.nodes))
	for n, a := range p.nodes {
		nodes[n] = a
	}
	p.mu.Unlock()
	var local []netip.Addr
	if len(p.cfg.NodePortAddresses.CIDRs) > 0 && p.cfg.LocalAddresses != nil {
		var err error
		if local, err = p.cfg.LocalAddresses(); err != nil {
			p.mu.Lock()
			p.nodesDirty = true
			p.mu.Unlock()
			return fmt.Errorf("list local addresses: %w", err)
		}
	}
	want := DesiredNodeAddresses(nodes, p.cfg.NodeName, p.cfg.NodePortAddresses, local)
	if !p.cfg.NodePortAddresses.matchAll() {
		p.hcAddrs = healthCheckAddresses(want)
	}
	n, err := p.cfg.Programmer.SetNodeAddresses(want)
	if err != nil {
		p.mu.Lock()
		p.nodesDirty = true
		p.mu.Unlock()
		return err
	}
	p.cfg.Metrics.MapWritesTotal.Add(float64(n))
	if n > 0 {
		p.cfg.Logger.Info("programmed node addresses", zap.Int("addresses", len(want)), zap.Int("writes", n))
	}
	return nil
}

// syncOnce programs every dirty Service, or everything after a failure or
// at start, and the node addresses when they changed.
func (p *Proxier) syncOnce() error {
	// Node addresses stand alone: a failure there does not hold back
	// the Services, and is retried with them.
	nerr := p.syncNodeAddresses()
	err := p.syncServices()
	if p.cfg.ServiceHealth != nil {
		p.hcFailed = p.cfg.ServiceHealth.Sync(p.hcAddrs, p.healthChecks)
	}
	if err != nil {
		return errors.Join(err, nerr)
	}
	return nerr
}

func (p *Proxier) syncServices() error {
	p.mu.Lock()
	full := p.full
	p.full = false // set again by a failure, or by a change (zone) that needs all
	dirty := p.dirty
	p.dirty = map[types.NamespacedName]time.Time{}
	svcPending, epPending := p.svcPending, p.epPending
	p.svcPending, p.epPending = 0, 0
	p.mu.Unlock()
	p.cfg.Metrics.ServiceChangesPending.Set(0)
	p.cfg.Metrics.EndpointChangesPending.Set(0)

	start := time.Now()
	var st datapath.ApplyStats
	var err error
	prev := maps.Clone(p.failed)
	if full {
		st, err = p.syncAll()
	} else {
		st, err = p.syncDirty(dirty)
	}
	p.reportFailures(prev)
	if err != nil {
		p.mu.Lock()
		p.full = true
		for n, tt := range dirty {
			if _, ok := p.dirty[n]; !ok {
				p.dirty[n] = tt
			}
		}
		p.svcPending += svcPending
		p.epPending += epPending
		p.mu.Unlock()
		return err
	}
	done := time.Now()
	p.cfg.Metrics.SyncDuration.Observe(done.Sub(start).Seconds())
	p.cfg.Metrics.LastSyncTimestamp.Set(float64(done.UnixNano()) / 1e9)
	p.cfg.Metrics.MapWritesTotal.Add(float64(st.Writes))
	for _, tt := range dirty {
		if !tt.IsZero() {
			p.cfg.Metrics.NetworkProgrammingDuration.Observe(done.Sub(tt).Seconds())
		}
	}
	n := 0
	for _, fes := range p.programmed {
		n += len(fes)
	}
	p.cfg.Metrics.ProgrammedServices.Set(float64(n))
	p.destroySockets(st.Left)
	// Services that did not fit are reported above and retried; they do not
	// make the agent unhealthy, or a full map would restart it in a loop.
	p.cfg.Health.Updated()
	if st.Writes > 0 || full {
		p.cfg.Logger.Debug("programmed datapath",
			zap.Bool("full", full),
			zap.Int("services", len(dirty)),
			zap.Int("changed", st.ServicesChanged),
			zap.Int("deleted", st.ServicesDeleted),
			zap.Int("writes", st.Writes),
			zap.Duration("took", done.Sub(start)))
	}
	return nil
}

// destroySockets ends the connected UDP sockets still translated to the
// backends that just left their Services. A failure is logged and counted;
// the sockets stay as they are (as a conntrack flush that fails leaves
// the entries).
func (p *Proxier) destroySockets(left []datapath.LeftBackend) {
	if p.cfg.Sockets == nil || len(left) == 0 {
		return
	}
	start := time.Now()
	st, err := p.cfg.Sockets.DestroySockets(left)
	p.cfg.Metrics.UDPSocketsDestroyedTotal.Add(float64(st.Destroyed))
	if err != nil {
		p.cfg.Metrics.SocketDestroyFailuresTotal.Inc()
		p.cfg.Logger.Warn("destroy UDP sockets of backends that left", zap.Int("backends", len(left)), zap.Error(err))
	}
	p.cfg.Logger.Debug("destroyed UDP sockets of backends that left",
		zap.Int("backends", len(left)),
		zap.Int("sockets", st.Destroyed),
		zap.Int("namespaces", st.Namespaces),
		zap.Duration("took", time.Since(start)))
}

func (p *Proxier) slicesOf(name types.NamespacedName) []*discoveryv1.EndpointSlice {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]*discoveryv1.EndpointSlice, 0, len(p.slices[name]))
	for _, s := range p.slices[name] {
		out = append(out, s)
	}
	return out
}

func (p *Proxier) desiredFor(name types.NamespacedName) ([]datapath.Service, error) {
	svc, err := p.services.Services(name.Namespace).Get(name.Name)
	if apierrors.IsNotFound(err) {
		delete(p.healthChecks, name)
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("get service %s: %w", name, err)
	}
	return p.desired(svc, p.slicesOf(name)), nil
}

// desired returns the Service's datapath Services and records its health
// check (the sync loop's healthChecks).
func (p *Proxier) desired(svc *v1.Service, eps []*discoveryv1.EndpointSlice) []datapath.Service {
	name := types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}
	if hc, ok := DesiredHealthCheck(svc, eps, p.cfg.NodeName); ok {
		p.healthChecks[name] = hc
	} else {
		delete(p.healthChecks, name)
	}
	node := p.thisNode()
	d := Desired(svc, eps, node)
	if p.cfg.NorthSouth {
		d = append(d, DesiredNorthSouth(svc, eps, node)...)
	}
	return d
}

// thisNode is the node the endpoints are chosen for: its name and zone.
func (p *Proxier) thisNode() ThisNode {
	p.mu.Lock()
	defer p.mu.Unlock()
	return ThisNode{Name: p.cfg.NodeName, Zone: p.zone}
}

func frontends(svcs []datapath.Service) []datapath.Frontend {
	out := make([]datapath.Frontend, len(svcs))
	for i, s := range svcs {
		out[i] = s.Frontend
	}
	return out
}

func (p *Proxier) syncAll() (datapath.ApplyStats, error) {
	list, err := p.services.List(labels.Everything())
	if err != nil {
		return datapath.ApplyStats{}, fmt.Errorf("list services: %w", err)
	}
	var all []datapath.Service
	byName := map[types.NamespacedName][]datapath.Service{}
	clear(p.healthChecks)
	for _, svc := range list {
		name := types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}
		d := p.desired(svc, p.slicesOf(name))
		if len(d) > 0 {
			byName[name] = d
			all = append(all, d...)
		}
	}
	st, err := p.cfg.Programmer.Sync(all)
	if err == nil {
		p.programmed = map[types.NamespacedName][]datapath.Frontend{}
		for name, d := range byName {
			p.programmed[name] = frontends(d)
		}
		clear(p.failed)
		return st, nil
	}
	p.cfg.Logger.Warn("programming all services in one batch failed; programming them one by one", zap.Error(err))
	// Some of the failed batch's writes may have been made: its sockets
	// of backends that left are ended too.
	failedLeft := st.Left
	want := map[datapath.Frontend]bool{}
	for _, s := range all {
		want[s.Frontend] = true
	}
	var deletes []datapath.Frontend
	for _, fe := range p.cfg.Programmer.Frontends() {
		if !want[fe] {
			deletes = append(deletes, fe)
		}
	}
	for name := range p.programmed {
		if _, ok := byName[name]; !ok {
			delete(p.programmed, name)
		}
	}
	// A Service that is gone (or wants nothing now) has nothing left to
	// fail.
	for name := range p.failed {
		if _, ok := byName[name]; !ok {
			delete(p.failed, name)
		}
	}
	each, err := p.applyEach(byName, deletes)
	each.Left = append(failedLeft, each.Left...)
	return each, err
}

// applyEach programs each Service on its own after a batch failed, so that
// a Service that does not fit (a full map) affects only itself: deletes
// first (they free room), then one Apply per Service. A failed Service
// keeps what was programmed for it before, is logged and counted, and is
// retried after FailedRetryPeriod; the others are programmed. Each failure costs
// the LoadBalancer a re-read of the maps.
func (p *Proxier) applyEach(byName map[types.NamespacedName][]datapath.Service, deletes []datapath.Frontend) (datapath.ApplyStats, error) {
	var st datapath.ApplyStats
	add := func(s datapath.ApplyStats) {
		st.ServicesChanged += s.ServicesChanged
		st.ServicesDeleted += s.ServicesDeleted
		st.Writes += s.Writes
		st.Left = append(st.Left, s.Left...)
	}
	s, err := p.cfg.Programmer.Apply(nil, deletes)
	add(s)
	if err != nil {
		return st, fmt.Errorf("delete services: %w", err)
	}
	names := make([]types.NamespacedName, 0, len(byName))
	for name := range byName {
		names = append(names, name)
	}
	slices.SortFunc(names, func(a, b types.NamespacedName) int { return strings.Compare(a.String(), b.String()) })
	for _, name := range names {
		d := byName[name]
		s, err := p.cfg.Programmer.Apply(d, nil)
		add(s)
		if err != nil {
			p.failed[name] = err
			p.cfg.Metrics.ServiceProgramFailuresTotal.Inc()
			continue
		}
		delete(p.failed, name)
		if len(d) == 0 {
			delete(p.programmed, name)
		} else {
			p.programmed[name] = frontends(d)
		}
	}
	return st, nil
}

func (p *Proxier) syncDirty(dirty map[types.NamespacedName]time.Time) (datapath.ApplyStats, error) {
	var upserts []datapath.Service
	var deletes []datapath.Frontend
	next := map[types.NamespacedName][]datapath.Frontend{}
	byName := map[types.NamespacedName][]datapath.Service{}
	for name := range dirty {
		d, err := p.desiredFor(name)
		if err != nil {
			return datapath.ApplyStats{}, err
		}
		byName[name] = d
		want := map[datapath.Frontend]bool{}
		for _, s := range d {
			want[s.Frontend] = true
		}
		for _, fe := range p.programmed[name] {
			if !want[fe] {
				deletes = append(deletes, fe)
			}
		}
		upserts = append(upserts, d...)
		next[name] = frontends(d)
	}
	st, err := p.cfg.Programmer.Apply(upserts, deletes)
	if err != nil {
		p.cfg.Logger.Warn("programming changed services in one batch failed; programming them one by one", zap.Error(err), zap.Int("services", len(dirty)))
		each, err := p.applyEach(byName, deletes)
		each.Left = append(st.Left, each.Left...)
		return each, err
	}
	for name := range dirty {
		delete(p.failed, name)
	}
	for name, fes := range next {
		if len(fes) == 0 {
			delete(p.programmed, name)
		} else {
			p.programmed[name] = fes
		}
	}
	return st, nil
}

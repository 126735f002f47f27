package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/vishvananda/netlink"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/events"

	"github.com/directlb/directlb/pkg/cloud"
	cloudaws "github.com/directlb/directlb/pkg/cloud/aws"
	"github.com/directlb/directlb/pkg/datapath"
	"github.com/directlb/directlb/pkg/eni"
	"github.com/directlb/directlb/pkg/proxy"
	"github.com/directlb/directlb/pkg/recorder"
)

// NewLogger is the agent's JSON logger at level (debug, info, warn or
// error; Validate checked it).
func NewLogger(level string) (*zap.Logger, error) {
	l, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, fmt.Errorf("--log-level %q: %w", level, err)
	}
	zc := zap.NewProductionConfig()
	zc.Level = zap.NewAtomicLevelAt(l)
	return zc.Build()
}

// Cleanup removes the agent's programs, links and pins, and kube-proxy's
// leftovers, in the current network namespace.
func Cleanup(ctx context.Context, cfg Config, log *zap.Logger) error {
	var errs []error
	if err := datapath.Cleanup(cfg.BPFRoot); err != nil {
		errs = append(errs, fmt.Errorf("remove datapath pins under %s: %w", cfg.BPFRoot, err))
	} else {
		log.Info("removed datapath programs and pins", zap.String("bpfRoot", cfg.BPFRoot))
	}
	if err := eni.Cleanup(nil); err != nil {
		errs = append(errs, fmt.Errorf("remove ENI routing: %w", err))
	} else {
		log.Info("removed ENI policy rules and routes")
	}
	if err := CleanupKubeProxy(ctx, ExecRunner); err != nil {
		errs = append(errs, err)
	} else {
		log.Info("removed kube-proxy iptables and nftables leftovers")
	}
	return errors.Join(errs...)
}

// RestConfig builds the apiserver client configuration: the kubeconfig (or
// in-cluster), with the host replaced by --k8s-service-host/-port.
func RestConfig(cfg Config) (*rest.Config, error) {
	var rc *rest.Config
	var err error
	switch {
	case cfg.Kubeconfig != "":
		rc, err = clientcmd.BuildConfigFromFlags("", cfg.Kubeconfig)
	default:
		rc, err = rest.InClusterConfig()
		if err != nil && cfg.K8sServiceHost != "" {
			// In-cluster without the service environment: token and CA
			// from the service account, host from the flags.
			rc, err = &rest.Config{
				TLSClientConfig: rest.TLSClientConfig{CAFile: "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"},
				BearerTokenFile: "/var/run/secrets/kubernetes.io/serviceaccount/token",
			}, nil
		}
	}
	if err != nil {
		return nil, fmt.Errorf("apiserver client config: %w", err)
	}
	if cfg.K8sServiceHost != "" {
		port := cfg.K8sServicePort
		if port == 0 {
			port = 443
		}
		rc.Host = "https://" + net.JoinHostPort(cfg.K8sServiceHost, strconv.Itoa(port))
	}
	rc.QPS, rc.Burst = cfg.KubeAPIQPS, cfg.KubeAPIBurst
	rc.UserAgent = "directlb-node-agent"
	return rc, nil
}

// Run starts the agent and blocks until ctx ends or something fails. On
// return the pinned maps and links stay, so traffic keeps flowing through a
// restart.
func Run(ctx context.Context, cfg Config, log *zap.Logger) error {
	if cfg.Cleanup {
		return Cleanup(ctx, cfg, log)
	}
	if cfg.WriteConfigTo != "" {
		return writeConfig(cfg, log)
	}
	node, client, err := nodeClient(cfg)
	if err != nil {
		return err
	}

	dp, err := datapath.Load(datapath.Config{BPFRoot: cfg.BPFRoot, Cgroup: cfg.CgroupRoot, MapSizes: cfg.MapSizes})
	if err != nil {
		return err
	}
	defer dp.Close()
	lb, err := attachDatapath(cfg, dp, node, log)
	if err != nil {
		return err
	}

	rec, stopEvents := newRecorder(ctx, client)
	defer stopEvents()
	reg, metrics := newRegistry(dp, lb)
	health := proxy.NewHealth(cfg.HealthTimeout)
	npa, err := proxy.ParseNodePortAddresses(cfg.NodePortAddresses)
	if err != nil {
		return fmt.Errorf("--nodeport-addresses: %w", err)
	}
	// healthCheckNodePorts, on this node's addresses as NodePorts are;
	// closed when Run returns.
	hcs := proxy.NewServiceHealthServer(proxy.ServiceHealthConfig{Proxy: health, Metrics: metrics, Logger: log.Named("healthcheck")})
	defer hcs.Close()
	p, err := proxy.New(proxy.Config{
		Client:            client,
		NodeName:          node,
		Programmer:        lb,
		SyncWindow:        cfg.SyncWindow,
		NodePortAddresses: npa,
		LocalAddresses:    localAddresses,
		NorthSouth:        len(cfg.NodePortDevices) > 0,
		Sockets:           dp,
		ServiceHealth:     hcs,
		Metrics:           metrics,
		Health:            health,
		Recorder:          rec,
		Logger:            log.Named("proxy"),
	})
	if err != nil {
		return err
	}

	g, ctx := errgroup.WithContext(ctx)
	serveMetrics(ctx, g, cfg.MetricsBindAddress, reg, dp.Maps, p, log)
	serveHealthz(ctx, g, cfg.HealthzBindAddress, health, log)
	g.Go(func() error { return p.Run(ctx) })
	if cfg.ENIRouting {
		er, err := newENIRouting(ctx, cfg, client, node, reg, log.Named("eni"))
		if err != nil {
			return err
		}
		g.Go(func() error { return er.Run(ctx) })
	}
	g.Go(func() error {
		logInitialSync(ctx, p, log)
		return nil
	})
	return g.Wait()
}

// writeConfig writes the effective configuration to --write-config-to.
func writeConfig(cfg Config, log *zap.Logger) error {
	if err := WriteConfigFile(cfg.WriteConfigTo, cfg); err != nil {
		return err
	}
	log.Info("wrote configuration", zap.String("file", cfg.WriteConfigTo))
	return nil
}

// nodeClient checks the kernel and the cgroup, and returns this node's name
// and an apiserver client.
func nodeClient(cfg Config) (string, kubernetes.Interface, error) {
	if err := datapath.CheckKernel(); err != nil {
		return "", nil, fmt.Errorf("kernel check: %w", err)
	}
	if err := datapath.IsCgroup2(cfg.CgroupRoot); err != nil {
		return "", nil, fmt.Errorf("--cgroup-root: %w", err)
	}
	node, err := cfg.NodeName()
	if err != nil {
		return "", nil, err
	}
	rc, err := RestConfig(cfg)
	if err != nil {
		return "", nil, err
	}
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return "", nil, fmt.Errorf("apiserver client: %w", err)
	}
	return node, client, nil
}

// attachDatapath restores the LoadBalancer from the pinned maps, then
// attaches the programs to the cgroup and to --nodeport-devices.
func attachDatapath(cfg Config, dp *datapath.Datapath, node string, log *zap.Logger) (*datapath.LoadBalancer, error) {
	lb := datapath.NewLoadBalancer(datapath.LoadBalancerConfig{Maps: dp.Maps})
	st, err := lb.Restore()
	if err != nil {
		return nil, fmt.Errorf("restore from pinned maps: %w", err)
	}
	// Attach after the restore: a new program then reads maps that
	// already hold what the previous run programmed.
	if err := dp.Attach(); err != nil {
		return nil, err
	}
	if len(cfg.NodePortDevices) > 0 {
		if err := datapath.CheckNorthSouthKernel(); err != nil {
			return nil, fmt.Errorf("kernel check for --nodeport-devices: %w", err)
		}
	}
	// With no devices this detaches what an earlier run attached.
	if err := dp.AttachDevices(cfg.NodePortDevices); err != nil {
		return nil, fmt.Errorf("--nodeport-devices: %w", err)
	}
	log.Info("datapath attached",
		zap.String("node", node),
		zap.String("cgroup", cfg.CgroupRoot),
		zap.String("bpfRoot", cfg.BPFRoot),
		zap.String("clusterCIDR", cfg.ClusterCIDR),
		zap.Strings("nodePortDevices", cfg.NodePortDevices),
		zap.Int("restoredServices", st.Services),
		zap.Int("restoredBackends", st.Backends),
		zap.Int("removedStale", st.Removed),
		zap.Any("mapSizes", dp.MapCapacities()))
	return lb, nil
}

// newRecorder records events (events.k8s.io/v1) on Services, as
// directlb-node-agent; the returned func flushes and stops it.
func newRecorder(ctx context.Context, client kubernetes.Interface) (events.EventRecorder, func()) {
	b := events.NewBroadcaster(&events.EventSinkImpl{Interface: client.EventsV1()})
	b.StartRecordingToSink(ctx.Done())
	return recorder.New(b.NewRecorder(scheme.Scheme, "directlb-node-agent")), b.Shutdown
}

// newRegistry is the agent's Prometheus registry: Go and process
// collectors, the proxy's metrics and the fill of the BPF maps.
func newRegistry(dp *datapath.Datapath, lb *datapath.LoadBalancer) (*prometheus.Registry, *proxy.Metrics) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics := proxy.NewMetrics(reg)
	reg.MustRegister(&proxy.MapFill{Capacity: dp.MapCapacities(), Entries: func() map[string]int {
		// The Service maps from what the LoadBalancer wrote; the LRU
		// revnat map counted (at most its 65,536 default). dlb_nat4 is
		// not counted: iterating up to 262,144 entries per scrape costs
		// too much.
		n := lb.MapEntries()
		if v, err := dp.Maps.RevNATEntries(); err == nil {
			n["dlb_revnat4"] = v
		}
		return n
	}})
	return reg, metrics
}

// serveMetrics serves /metrics, /healthz and /debug/services on addr,
// unless addr is empty.
func serveMetrics(ctx context.Context, g *errgroup.Group, addr string, reg *prometheus.Registry, maps datapath.Maps, src proxy.TableSource, log *zap.Logger) {
	if addr == "" {
		return
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	// The programmed frontends and backends, read from the pinned maps,
	// and the Services that did not fit.
	mux.Handle("/debug/services", proxy.ServiceTableHandler(maps, src))
	serve(ctx, g, log, "metrics", addr, mux)
}

// serveHealthz serves the agent's health on /healthz and /livez on addr,
// unless addr is empty.
func serveHealthz(ctx context.Context, g *errgroup.Group, addr string, health *proxy.Health, log *zap.Logger) {
	if addr == "" {
		return
	}
	mux := http.NewServeMux()
	mux.Handle("/healthz", health)
	mux.Handle("/livez", health)
	serve(ctx, g, log, "healthz", addr, mux)
}

// logInitialSync logs once the proxier's first sync is done, or returns
// when ctx ends first.
func logInitialSync(ctx context.Context, p *proxy.Proxier, log *zap.Logger) {
	select {
	case <-p.Synced():
		log.Info("initial sync done")
	case <-ctx.Done():
	}
}

// localAddresses are the IPv4 addresses on this network namespace's links.
func localAddresses() ([]netip.Addr, error) {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("list addresses: %w", err)
	}
	out := make([]netip.Addr, 0, len(addrs))
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP.To4()); ok {
			out = append(out, ip)
		}
	}
	return out, nil
}

func newENIRouting(ctx context.Context, cfg Config, client kubernetes.Interface, node string, reg prometheus.Registerer, log *zap.Logger) (*ENIRouting, error) {
	var gw netip.Addr
	if cfg.ENIGateway != "" {
		gw = netip.MustParseAddr(cfg.ENIGateway) // checked by Validate
	}
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink handle: %w", err)
	}
	rc := eni.ResolveConfig{Source: cfg.ENISource, Node: eni.Namespace{Handle: h}, Devices: cfg.ENIDevices, Gateway: gw, Logger: log}
	if cfg.ENISource != eni.SourceLinks {
		rc.Cloud, rc.NoCloudReason = newEC2(ctx, cfg, reg)
		rc.InstanceID, rc.NoInstanceReason = instanceID(ctx, cfg, client, node)
	}
	src, err := eni.Resolve(ctx, rc)
	if err != nil {
		return nil, err
	}
	if src.Reason != "" {
		log.Warn("ENIs from links, not EC2", zap.String("eniSource", src.Source), zap.String("reason", src.Reason))
	} else {
		log.Info("ENI source", zap.String("eniSource", src.Source), zap.String("instance", rc.InstanceID))
	}
	for _, e := range src.ENIs {
		log.Info("ENI", zap.String("device", e.Device), zap.Int("index", e.Index), zap.Int("table", e.Table()),
			zap.String("address", e.Address.String()), zap.String("gateway", e.Gateway.String()))
	}
	r, err := eni.New(eni.Config{Handle: h, ENIs: src.ENIs, Logger: log})
	if err != nil {
		return nil, err
	}
	return &ENIRouting{
		Client:   client,
		NodeName: node,
		Router:   r,
		Owners:   src.Owners,
		Resync:   cfg.ENIResync,
		Logger:   log,
	}, nil
}

// newEC2 builds the EC2 client, or says why there is none.
func newEC2(ctx context.Context, cfg Config, reg prometheus.Registerer) (cloud.NetworkInterfaces, string) {
	region := cfg.AWSRegionOrDefault()
	if region == "" {
		return nil, "neither --aws-endpoint nor a region (--aws-region, $AWS_REGION) is set"
	}
	ac := cfg.AWS
	ac.Region = region
	ac.Registerer = reg // directlb_cloud_api_* per EC2 operation
	c, err := cloudaws.New(ctx, ac)
	if err != nil {
		return nil, fmt.Sprintf("EC2 client: %v", err)
	}
	return c, ""
}

// instanceID is --eni-instance-id, else from the Node's spec.providerID.
func instanceID(ctx context.Context, cfg Config, client kubernetes.Interface, node string) (string, string) {
	if cfg.ENIInstanceID != "" {
		return cfg.ENIInstanceID, ""
	}
	n, err := client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Sprintf("no --eni-instance-id and reading Node %s failed: %v", node, err)
	}
	if id := InstanceIDFromProviderID(n.Spec.ProviderID); id != "" {
		return id, ""
	}
	return "", fmt.Sprintf("no --eni-instance-id and Node %s has no spec.providerID", node)
}

func serve(ctx context.Context, g *errgroup.Group, log *zap.Logger, what, addr string, h http.Handler) {
	srv := &http.Server{Addr: addr, Handler: h, ReadHeaderTimeout: 5 * time.Second}
	g.Go(func() error {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("listen for %s on %s: %w", what, addr, err)
		}
		log.Info("serving", zap.String("server", what), zap.String("address", ln.Addr().String()))
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("serve %s: %w", what, err)
		}
		return nil
	})
	g.Go(func() error {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		return srv.Shutdown(sctx)
	})
}

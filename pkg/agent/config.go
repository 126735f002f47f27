// Package agent wires the node agent: configuration, the kernel check, the
// datapath, the control plane, the metrics and health servers, and
// --cleanup.
package agent

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	cloudaws "github.com/directlb/directlb/pkg/cloud/aws"
	"github.com/directlb/directlb/pkg/datapath"
	"github.com/directlb/directlb/pkg/eni"
	"github.com/directlb/directlb/pkg/proxy"
)

// Config is the node agent's configuration; every field is a flag.
type Config struct {
	// ConfigFile is --config: a kube-proxy KubeProxyConfiguration whose
	// fields set the flags not given on the command line
	// (LoadConfigFile).
	ConfigFile string
	// WriteConfigTo is --write-config-to: write the effective
	// configuration there as a KubeProxyConfiguration and exit.
	WriteConfigTo string
	Kubeconfig    string
	// KubeAPIQPS and KubeAPIBurst limit the apiserver client.
	KubeAPIQPS       float32
	KubeAPIBurst     int
	HostnameOverride string
	// CgroupRoot is the cgroup v2 directory whose processes get ClusterIP
	// translation (the whole machine when it is the v2 root).
	CgroupRoot string
	// BPFRoot is where maps and links are pinned (on a bpffs).
	BPFRoot     string
	ClusterCIDR string
	// NodePortAddresses is --nodeport-addresses: CIDRs and "primary"
	// (proxy.ParseNodePortAddresses); empty means primary.
	NodePortAddresses []string
	// NodePortDevices are the links whose traffic from outside the node
	// gets NodePorts, externalIPs and load-balancer IPs (tc programs);
	// empty: none (only this node's own sockets translate them).
	NodePortDevices    []string
	MetricsBindAddress string
	HealthzBindAddress string
	// K8sServiceHost and K8sServicePort reach the apiserver directly, so
	// the agent does not depend on the ClusterIP it programs.
	K8sServiceHost string
	K8sServicePort int
	// SyncWindow gathers changes into one batch.
	SyncWindow time.Duration
	// HealthTimeout is how long a change may wait before /healthz turns 503.
	HealthTimeout time.Duration
	Cleanup       bool
	LogLevel      string
	// MapSizes are the --map-size-* flags: the max entries of the BPF
	// maps that grow with the cluster; 0 keeps sock_lb.c's size.
	MapSizes datapath.MapSizes

	// ENIRouting turns on the per-pod ENI policy routing (pkg/eni).
	ENIRouting bool
	// ENIDevices are the ENI links; empty: every eth<N> with an address.
	ENIDevices []string
	// ENIGateway overrides the subnets' gateway.
	ENIGateway string
	// ENIResync re-reads pods and ENI ownership this often.
	ENIResync time.Duration
	// ENISource is where the ENIs and their addresses come from:
	// eni.SourceAuto, eni.SourceEC2 or eni.SourceLinks.
	ENISource string
	// ENIInstanceID is this node's instance ID for EC2; empty: the last
	// segment of the Node's spec.providerID.
	ENIInstanceID string
	// AWS configures the EC2 client (pkg/cloud/aws) with the --aws-* flags
	// lb-controller has too; an empty Region falls back as
	// AWSRegionOrDefault says.
	AWS cloudaws.Config
}

// DefaultCgroupRoot is the cgroup v2 mount: /sys/fs/cgroup on a unified
// host, /sys/fs/cgroup/unified on a hybrid one.
func DefaultCgroupRoot() string {
	var st unix.Statfs_t
	if unix.Statfs("/sys/fs/cgroup", &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
		return "/sys/fs/cgroup"
	}
	return "/sys/fs/cgroup/unified"
}

// DefaultConfig returns the defaults the flags have.
func DefaultConfig() Config {
	return Config{
		CgroupRoot:         DefaultCgroupRoot(),
		KubeAPIQPS:         50,
		KubeAPIBurst:       100,
		BPFRoot:            "/sys/fs/bpf/directlb",
		MetricsBindAddress: "127.0.0.1:10249",
		HealthzBindAddress: ":10256",
		SyncWindow:         5 * time.Millisecond,
		HealthTimeout:      time.Minute,
		ENIResync:          10 * time.Second,
		ENISource:          eni.SourceAuto,
		AWS:                cloudaws.DefaultConfig(),
		LogLevel:           "info",
	}
}

// BindFlags registers the flags, with kube-proxy's names where they mean
// the same and c's current values as defaults.
func (c *Config) BindFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.ConfigFile, "config", c.ConfigFile, "A kube-proxy configuration file (kubeproxy.config.k8s.io/v1alpha1 KubeProxyConfiguration): the fields that apply set the flags of the same meaning; flags given on the command line win. Fields that do not apply are logged, or refused when node-agent would break their meaning (docs/node-agent.md).")
	fs.StringVar(&c.WriteConfigTo, "write-config-to", c.WriteConfigTo, "Write the effective configuration (the fields a KubeProxyConfiguration carries) to this file and exit.")
	fs.StringVar(&c.Kubeconfig, "kubeconfig", c.Kubeconfig, "Path to a kubeconfig; empty uses the in-cluster configuration.")
	fs.Float32Var(&c.KubeAPIQPS, "kube-api-qps", c.KubeAPIQPS, "Queries per second to the apiserver.")
	fs.IntVar(&c.KubeAPIBurst, "kube-api-burst", c.KubeAPIBurst, "Burst of queries to the apiserver.")
	fs.StringVar(&c.HostnameOverride, "hostname-override", c.HostnameOverride, "The node's name as Kubernetes knows it; defaults to $NODE_NAME, then the hostname.")
	fs.StringVar(&c.CgroupRoot, "cgroup-root", c.CgroupRoot, "cgroup v2 directory to attach the socket load balancer to; its processes and those of its descendants get ClusterIP translation.")
	fs.StringVar(&c.BPFRoot, "bpf-root", c.BPFRoot, "Directory on a bpffs where maps and links are pinned (a bpffs is mounted at /sys/fs/bpf if needed). Use one per agent on a shared kernel.")
	fs.StringVar(&c.ClusterCIDR, "cluster-cidr", c.ClusterCIDR, "The pods' CIDR (comma-separated for several). Validated and logged; the socket load balancer does not masquerade, so it changes nothing else.")
	fs.StringSliceVar(&c.NodePortAddresses, "nodeport-addresses", c.NodePortAddresses, "Node addresses NodePorts are served on, as kube-proxy's nodePortAddresses: CIDRs (this node's interface addresses and the Nodes' addresses within them) and the keyword \"primary\" (every Node's primary InternalIP); empty means primary. This node's sockets reach the NodePorts of every node's selected addresses.")
	fs.StringSliceVar(&c.NodePortDevices, "nodeport-devices", c.NodePortDevices, "Links (comma-separated) whose incoming traffic to this node's NodePorts, externalIPs and load-balancer IPs is load-balanced by tc (tcx) programs: externalTrafficPolicy Cluster SNATs to the node for a backend on another node, Local keeps the client's address. Empty: off; the node's own processes and pods still reach them through the socket hooks.")
	fs.StringVar(&c.MetricsBindAddress, "metrics-bind-address", c.MetricsBindAddress, "Address for /metrics (Prometheus); empty turns it off. The default is the loopback address, as kube-proxy's; the chart opts in to every address (nodeAgent.metricsBindAddress).")
	fs.StringVar(&c.HealthzBindAddress, "healthz-bind-address", c.HealthzBindAddress, "Address for /healthz and /livez; empty turns it off.")
	fs.StringVar(&c.K8sServiceHost, "k8s-service-host", c.K8sServiceHost, "Apiserver host to use instead of the kubeconfig's or in-cluster one.")
	fs.IntVar(&c.K8sServicePort, "k8s-service-port", c.K8sServicePort, "Apiserver port with --k8s-service-host (default 443).")
	fs.DurationVar(&c.SyncWindow, "sync-window", c.SyncWindow, "How long changes are gathered into one batch before they are programmed.")
	fs.DurationVar(&c.HealthTimeout, "healthz-timeout", c.HealthTimeout, "How long a change may wait to be programmed before /healthz answers 503.")
	fs.BoolVar(&c.Cleanup, "cleanup", c.Cleanup, "Remove this agent's programs, links and pins under --bpf-root, its ENI policy rules and routes, and kube-proxy's iptables and nftables leftovers, then exit.")
	fs.BoolVar(&c.ENIRouting, "eni-routing", c.ENIRouting, "Route each local pod's traffic out of the ENI that owns its address (policy rules and per-ENI tables, see docs/node-agent.md). ENIs and address ownership come from --eni-source.")
	fs.StringSliceVar(&c.ENIDevices, "eni-devices", c.ENIDevices, "ENI devices for --eni-routing (comma-separated); empty: every eth<N> link with an IPv4 address, N being the device index.")
	fs.StringVar(&c.ENIGateway, "eni-gateway", c.ENIGateway, "Subnet gateway for --eni-routing; empty: the default route's gateway when it is in the ENI's subnet, else the subnet's first address.")
	fs.DurationVar(&c.ENIResync, "eni-resync", c.ENIResync, "How often --eni-routing re-reads pods and proxy neighbours without an event.")
	fs.StringVar(&c.ENISource, "eni-source", c.ENISource, "Where --eni-routing learns the ENIs and which pod address each owns: ec2 (DescribeNetworkInterfaces of this instance, ENIs mapped to links by MAC), links (eth<N> links and proxy neighbour entries), or auto (ec2 when --aws-endpoint or a region is set and it answers with ENIs of local links, else links, with the reason logged).")
	fs.StringVar(&c.ENIInstanceID, "eni-instance-id", c.ENIInstanceID, "This node's EC2 instance ID for --eni-source ec2/auto; empty: the last segment of the Node's spec.providerID (aws:///zone/i-..., or the node name in the test bed).")
	c.AWS.BindClientFlags(fs)
	fs.Lookup("aws-region").Usage = "AWS region of the EC2 API; empty: $AWS_REGION, then $AWS_DEFAULT_REGION, then us-east-1 when --aws-endpoint is set."
	fs.StringVar(&c.LogLevel, "log-level", c.LogLevel, "Log level: debug, info, warn or error.")
	c.bindMapSizeFlags(fs)
}

// Bounds of the --map-size-* flags. The hash maps (services, backends)
// allocate entries as they are written, but their bucket array up front;
// the LRU maps (revnat, sticky) allocate every entry up front (roughly
// 100 bytes each), so their maximum is lower, and the kernel splits their
// free list among the CPUs, so that a small one evicts early: their
// minimum is higher. A hash map as small as 16 entries works (a test bed,
// or a node that must hold only a few Services).
const (
	MinHashMapSize   = 16
	MinLRUMapSize    = 1024
	MaxHashMapSize   = 1 << 24 // 16,777,216
	MaxLRUMapSize    = 1 << 22 // 4,194,304
	mapSizeFlagUsage = " A pinned map of another size is not reused: the agent refuses to start, naming the pin to remove (or run node-agent --cleanup); docs/node-agent.md, Map sizes."
)

func (c *Config) bindMapSizeFlags(fs *pflag.FlagSet) {
	fs.Uint32Var(&c.MapSizes.Services, "map-size-services", c.MapSizes.Services, fmt.Sprintf("Max entries of dlb_svc4: one per frontend (ClusterIP, NodePort, externalIP or load-balancer IP port), one per backend slot of each, and one per ClusterIP; 0: the default, %d; %d to %d.", datapath.DefaultMapSizes.Services, MinHashMapSize, MaxHashMapSize)+mapSizeFlagUsage)
	fs.Uint32Var(&c.MapSizes.Backends, "map-size-backends", c.MapSizes.Backends, fmt.Sprintf("Max entries of dlb_backends4 (one per distinct endpoint address, port and protocol) and dlb_affmatch4 (one per backend of each sessionAffinity Service frontend); 0: the default, %d; %d to %d.", datapath.DefaultMapSizes.Backends, MinHashMapSize, MaxHashMapSize)+mapSizeFlagUsage)
	fs.Uint32Var(&c.MapSizes.RevNAT, "map-size-revnat", c.MapSizes.RevNAT, fmt.Sprintf("Max entries of dlb_revnat4 (LRU, preallocated): one per translated socket and backend, so that replies and getpeername show the Service address; 0: the default, %d; %d to %d.", datapath.DefaultMapSizes.RevNAT, MinLRUMapSize, MaxLRUMapSize)+mapSizeFlagUsage)
	fs.Uint32Var(&c.MapSizes.Sticky, "map-size-sticky", c.MapSizes.Sticky, fmt.Sprintf("Max entries of dlb_sticky4 (LRU, preallocated): one per unconnected UDP socket and Service it sends to, keeping its backend; 0: the default, %d; %d to %d.", datapath.DefaultMapSizes.Sticky, MinLRUMapSize, MaxLRUMapSize)+mapSizeFlagUsage)
}

// validateMapSizes checks the --map-size-* flags: 0 (the default) or
// within their bounds.
func (c *Config) validateMapSizes() error {
	var errs []error
	for _, f := range []struct {
		flag          string
		n, low, limit uint32
	}{
		{"--map-size-services", c.MapSizes.Services, MinHashMapSize, MaxHashMapSize},
		{"--map-size-backends", c.MapSizes.Backends, MinHashMapSize, MaxHashMapSize},
		{"--map-size-revnat", c.MapSizes.RevNAT, MinLRUMapSize, MaxLRUMapSize},
		{"--map-size-sticky", c.MapSizes.Sticky, MinLRUMapSize, MaxLRUMapSize},
	} {
		if f.n != 0 && (f.n < f.low || f.n > f.limit) {
			errs = append(errs, fmt.Errorf("%s %d: want 0 (the default) or %d to %d", f.flag, f.n, f.low, f.limit))
		}
	}
	return errors.Join(errs...)
}

// Validate checks the flags.
func (c *Config) Validate() error {
	if c.BPFRoot == "" || !strings.HasPrefix(c.BPFRoot, "/") {
		return fmt.Errorf("--bpf-root %q: must be an absolute path", c.BPFRoot)
	}
	if c.Cleanup {
		return nil
	}
	if c.CgroupRoot == "" || !strings.HasPrefix(c.CgroupRoot, "/") {
		return fmt.Errorf("--cgroup-root %q: must be an absolute path", c.CgroupRoot)
	}
	if c.ClusterCIDR != "" {
		for _, s := range strings.Split(c.ClusterCIDR, ",") {
			if _, err := netip.ParsePrefix(strings.TrimSpace(s)); err != nil {
				return fmt.Errorf("--cluster-cidr %q: %w", c.ClusterCIDR, err)
			}
		}
	}
	if _, err := proxy.ParseNodePortAddresses(c.NodePortAddresses); err != nil {
		return fmt.Errorf("--nodeport-addresses: %w", err)
	}
	for flag, addr := range map[string]string{"--metrics-bind-address": c.MetricsBindAddress, "--healthz-bind-address": c.HealthzBindAddress} {
		if addr == "" {
			continue
		}
		if _, port, err := net.SplitHostPort(addr); err != nil {
			return fmt.Errorf("%s %q: %w", flag, addr, err)
		} else if _, err := strconv.ParseUint(port, 10, 16); err != nil {
			return fmt.Errorf("%s %q: bad port: %w", flag, addr, err)
		}
	}
	if c.KubeAPIQPS <= 0 {
		return fmt.Errorf("--kube-api-qps %v: must be positive", c.KubeAPIQPS)
	}
	if c.KubeAPIBurst <= 0 {
		return fmt.Errorf("--kube-api-burst %d: must be positive", c.KubeAPIBurst)
	}
	if c.K8sServicePort < 0 || c.K8sServicePort > 65535 {
		return fmt.Errorf("--k8s-service-port %d: out of range", c.K8sServicePort)
	}
	if c.K8sServicePort != 0 && c.K8sServiceHost == "" {
		return fmt.Errorf("--k8s-service-port needs --k8s-service-host")
	}
	if c.SyncWindow < 0 {
		return fmt.Errorf("--sync-window %v: must not be negative", c.SyncWindow)
	}
	if c.HealthTimeout <= 0 {
		return fmt.Errorf("--healthz-timeout %v: must be positive", c.HealthTimeout)
	}
	if c.ENIGateway != "" {
		if a, err := netip.ParseAddr(c.ENIGateway); err != nil || !a.Is4() {
			return fmt.Errorf("--eni-gateway %q: not an IPv4 address", c.ENIGateway)
		}
	}
	if c.ENIResync <= 0 {
		return fmt.Errorf("--eni-resync %v: must be positive", c.ENIResync)
	}
	switch c.ENISource {
	case eni.SourceAuto, eni.SourceEC2, eni.SourceLinks:
	default:
		return fmt.Errorf("--eni-source %q: want auto, ec2 or links", c.ENISource)
	}
	if err := c.AWS.ValidateClient(); err != nil {
		return err
	}
	if err := c.validateMapSizes(); err != nil {
		return err
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("--log-level %q: want debug, info, warn or error", c.LogLevel)
	}
	return nil
}

// NodeName is the node this agent serves.
func (c *Config) NodeName() (string, error) {
	if c.HostnameOverride != "" {
		return strings.ToLower(strings.TrimSpace(c.HostnameOverride)), nil
	}
	if n := os.Getenv("NODE_NAME"); n != "" {
		return strings.ToLower(n), nil
	}
	h, err := os.Hostname()
	if err != nil {
		return "", fmt.Errorf("node name: %w", err)
	}
	return strings.ToLower(h), nil
}

// AWSRegionOrDefault is --aws-region, else $AWS_REGION, else
// $AWS_DEFAULT_REGION, else us-east-1 when --aws-endpoint is set (any
// region does for localcloud), else empty: no cloud is configured.
func (c *Config) AWSRegionOrDefault() string {
	for _, r := range []string{c.AWS.Region, os.Getenv("AWS_REGION"), os.Getenv("AWS_DEFAULT_REGION")} {
		if r != "" {
			return r
		}
	}
	if c.AWS.Endpoint != "" {
		return "us-east-1"
	}
	return ""
}

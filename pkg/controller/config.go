// Package controller holds directlb's lb-controller: the Service reconciler
// (load balancer, listeners, target groups) and the target reconciler (pod
// IPs from EndpointSlices registered as targets), their configuration,
// events, conditions and metrics.
package controller

import (
	"errors"
	"flag"
	"fmt"
	"regexp"
	"time"

	"github.com/directlb/directlb/pkg/service"
	"github.com/spf13/pflag"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/directlb/directlb/pkg/certs"
	cloudaws "github.com/directlb/directlb/pkg/cloud/aws"
	"github.com/directlb/directlb/pkg/drain"
	"github.com/directlb/directlb/pkg/readinessgate"
)

// Config is the lb-controller's configuration; every field is a flag.
type Config struct {
	// ClusterName goes into the directlb.io/cluster ownership tag and the
	// cloud resource names; it must be unique among the clusters sharing a
	// cloud account.
	ClusterName string
	// VPCID is the VPC target groups are created in ("" = cloud default).
	VPCID string
	// Concurrency is the number of parallel reconciles per controller.
	Concurrency int
	// LoadBalancerClasses are the spec.loadBalancerClass values owned.
	LoadBalancerClasses []string
	// ManageDefaultClass is whether Services without a class are owned.
	ManageDefaultClass bool
	// ResyncPeriod is how often a converged Service is checked against the
	// cloud again (drift repair).
	ResyncPeriod time.Duration
	// TargetBatchWindow is how long the target reconciler waits after an
	// EndpointSlice or Pod change before acting, so a burst becomes one
	// pass per Service.
	TargetBatchWindow time.Duration
	// TargetRefreshPeriod is how long the cloud's target list stays cached
	// before it is read again.
	TargetRefreshPeriod time.Duration
	// CloudInventoryTTL is how long the list of this cluster's load
	// balancers and target groups is cached (0: list per Service pass).
	CloudInventoryTTL time.Duration

	// KubeAPIQPS and KubeAPIBurst limit the manager's apiserver client
	// (client-go's token bucket; leader election and informers' watches
	// share it). The gate writer's pod status patches are most of what
	// it spends: see the flag's usage.
	KubeAPIQPS   float32
	KubeAPIBurst int

	LeaderElect             bool
	LeaderElectionNamespace string
	MetricsBindAddress      string
	HealthProbeBindAddress  string
	Kubeconfig              string

	// Cloud is the ELBv2 client's configuration (--aws-*).
	Cloud cloudaws.Config
	// Gates, Certs and Drain configure the readiness gates, their
	// webhook's certificates and the drain endpoint (SetupGates).
	Gates readinessgate.Config
	Certs certs.Config
	Drain drain.Config
	// Log is controller-runtime's zap logger (--zap-*).
	Log zap.Options
}

// The apiserver client's default budget. client-go's own (20/s, burst
// 30) is too small for the readiness gates: every gated pod costs a
// status patch when its target turns healthy (and one more if it is told
// Registering first), every Service a few writes of its own (finalizer,
// target-group record, status, events), and a cold start or a rollout of
// many Services asks for them together. 1,000 Services × 10 pods are
// 13,000-25,000 writes in the ~1,000 s the cloud's CreateLoadBalancer
// limit (1/s) allows for their convergence (bench/controller measured 13
// a Service with the Registering write held back, 18-23 without): 13-25/s
// on average, up to over client-go's 20/s before a single read; and the
// Service reconciler's writes wait behind the gate writer's in the one
// bucket. 100/s, burst 200 (a burst
// holds the patches of 20 Services whose targets turned healthy in one
// health check) leaves several times that; the apiserver's own priority
// and fairness still applies.
const (
	DefaultKubeAPIQPS   = 100
	DefaultKubeAPIBurst = 200
)

// DefaultConfig returns the defaults the flags have.
func DefaultConfig() Config {
	aws := cloudaws.DefaultConfig()
	aws.Region = "us-east-1"
	return Config{
		Concurrency:            4,
		LoadBalancerClasses:    []string{service.LoadBalancerClass},
		ResyncPeriod:           10 * time.Minute,
		TargetBatchWindow:      100 * time.Millisecond,
		TargetRefreshPeriod:    20 * time.Minute,
		CloudInventoryTTL:      time.Minute,
		KubeAPIQPS:             DefaultKubeAPIQPS,
		KubeAPIBurst:           DefaultKubeAPIBurst,
		MetricsBindAddress:     ":8080",
		HealthProbeBindAddress: ":8081",
		Cloud:                  aws,
		Gates:                  readinessgate.DefaultConfig(),
		Certs:                  certs.DefaultConfig(),
		Drain:                  drain.DefaultConfig(),
	}
}

// BindFlags registers the flags, with c's current values as defaults.
func (c *Config) BindFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.ClusterName, "cluster-name", c.ClusterName, "name of this cluster, in cloud ownership tags and resource names (required)")
	fs.StringVar(&c.VPCID, "vpc-id", c.VPCID, "VPC to create target groups in (empty: the cloud's default)")
	fs.IntVar(&c.Concurrency, "concurrency", c.Concurrency, "parallel reconciles per controller")
	fs.StringArrayVar(&c.LoadBalancerClasses, "load-balancer-class", c.LoadBalancerClasses, "a spec.loadBalancerClass value this controller owns (repeatable; the first use replaces the default)")
	fs.BoolVar(&c.ManageDefaultClass, "manage-default-class", c.ManageDefaultClass, "also own direct-access Services that set no loadBalancerClass (where a cloud provider's service controller runs, it provisions those too)")
	fs.DurationVar(&c.ResyncPeriod, "resync-period", c.ResyncPeriod, "how often a converged Service is compared with the cloud again")
	fs.DurationVar(&c.TargetBatchWindow, "target-batch-window", c.TargetBatchWindow, "delay that coalesces a burst of endpoint changes into one target update per Service")
	fs.DurationVar(&c.TargetRefreshPeriod, "target-refresh-period", c.TargetRefreshPeriod, "how long the cloud's registered targets are cached before they are read again for drift (a change is read back 10s after it; the gates' slow regression check reuses this read where its interval is longer)")
	fs.DurationVar(&c.CloudInventoryTTL, "cloud-inventory-ttl", c.CloudInventoryTTL, "how long this cluster's load balancers and target groups, found by tags, are cached (0 lists them on every Service pass)")
	fs.Float32Var(&c.KubeAPIQPS, "kube-api-qps", c.KubeAPIQPS, "queries per second to the apiserver (client-side limit; the readiness gates patch every gated pod's status as its target turns healthy, so a cold start or a rollout of many Services needs far more than client-go's default 20)")
	fs.IntVar(&c.KubeAPIBurst, "kube-api-burst", c.KubeAPIBurst, "burst of queries to the apiserver: the size of the --kube-api-qps token bucket (a Service's pods turning healthy together)")
	fs.BoolVar(&c.LeaderElect, "leader-elect", c.LeaderElect, "run leader election (needed with more than one replica)")
	fs.StringVar(&c.LeaderElectionNamespace, "leader-election-namespace", c.LeaderElectionNamespace, "namespace of the leader election Lease (empty: the pod's namespace)")
	fs.StringVar(&c.MetricsBindAddress, "metrics-bind-address", c.MetricsBindAddress, `address of the Prometheus metrics endpoint ("0" disables it)`)
	fs.StringVar(&c.HealthProbeBindAddress, "health-probe-bind-address", c.HealthProbeBindAddress, `address of /healthz and /readyz ("0" disables it)`)
	fs.StringVar(&c.Kubeconfig, "kubeconfig", c.Kubeconfig, "kubeconfig file (empty: in-cluster config or $KUBECONFIG)")
	c.Cloud.BindFlags(fs)
	deprecatedAlias(fs, "cloud-region", "aws-region")
	deprecatedAlias(fs, "cloud-endpoint", "aws-endpoint")
	c.Gates.BindFlags(fs)
	c.Certs.BindFlags(fs)
	c.Drain.BindFlags(fs)
	goFlags := flag.NewFlagSet("zap", flag.ContinueOnError)
	c.Log.BindFlags(goFlags)
	fs.AddGoFlagSet(goFlags)
}

// deprecatedAlias adds old as another name of the flag current: the same
// value, hidden from --help, with a warning when it is used.
func deprecatedAlias(fs *pflag.FlagSet, old, current string) {
	f := fs.Lookup(current)
	fs.AddFlag(&pflag.Flag{Name: old, Usage: f.Usage, Value: f.Value, DefValue: f.DefValue})
	// Cannot fail: the flag exists and the message is not empty.
	_ = fs.MarkDeprecated(old, "use --"+current+" instead")
}

var clusterNameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// Validate reports every invalid setting.
func (c *Config) Validate() error {
	var errs []error
	if !clusterNameRE.MatchString(c.ClusterName) {
		errs = append(errs, fmt.Errorf("--cluster-name %q: must be 1-63 lower-case letters, digits and '-', starting and ending with a letter or digit", c.ClusterName))
	}
	if c.Concurrency < 1 || c.Concurrency > 100 {
		errs = append(errs, fmt.Errorf("--concurrency %d: must be from 1 to 100", c.Concurrency))
	}
	for _, cl := range c.LoadBalancerClasses {
		if cl == "" {
			errs = append(errs, errors.New("--load-balancer-class: must not be empty (use --manage-default-class for Services without a class)"))
		}
	}
	if !c.ManageDefaultClass && len(c.LoadBalancerClasses) == 0 {
		errs = append(errs, errors.New("--manage-default-class=false needs at least one --load-balancer-class, or the controller owns nothing"))
	}
	if c.ResyncPeriod < 10*time.Second {
		errs = append(errs, fmt.Errorf("--resync-period %s: must be at least 10s", c.ResyncPeriod))
	}
	if c.TargetBatchWindow < 0 || c.TargetBatchWindow > 10*time.Second {
		errs = append(errs, fmt.Errorf("--target-batch-window %s: must be from 0 to 10s", c.TargetBatchWindow))
	}
	if c.TargetRefreshPeriod < time.Second {
		errs = append(errs, fmt.Errorf("--target-refresh-period %s: must be at least 1s", c.TargetRefreshPeriod))
	}
	if c.CloudInventoryTTL < 0 || c.CloudInventoryTTL > time.Hour {
		errs = append(errs, fmt.Errorf("--cloud-inventory-ttl %s: must be from 0 to 1h", c.CloudInventoryTTL))
	}
	if c.KubeAPIQPS <= 0 {
		errs = append(errs, fmt.Errorf("--kube-api-qps %v: must be positive", c.KubeAPIQPS))
	}
	if c.KubeAPIBurst < 1 {
		errs = append(errs, fmt.Errorf("--kube-api-burst %d: must be positive", c.KubeAPIBurst))
	}
	errs = append(errs, c.Cloud.Validate())
	if c.Gates.Enabled {
		errs = append(errs, c.Gates.Validate(), c.Certs.Validate(), c.Drain.Validate())
		if c.Drain.ShutdownDelay < c.Gates.WebhookShutdownDelay {
			errs = append(errs, fmt.Errorf("--drain-shutdown-delay %s: must be at least --webhook-shutdown-delay (%s): both endpoints must outlast the Services letting go of the replica", c.Drain.ShutdownDelay, c.Gates.WebhookShutdownDelay))
		}
	}
	return errors.Join(errs...)
}

package controller

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/directlb/directlb/pkg/service"
	"github.com/google/go-cmp/cmp"
	"github.com/spf13/pflag"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/flowcontrol"
)

func TestConfigFlags(t *testing.T) {
	c := DefaultConfig()
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	c.BindFlags(fs)
	err := fs.Parse([]string{"--cluster-name=dev-1", "--aws-endpoint=http://10.100.0.3:4566",
		"--load-balancer-class=a/b", "--load-balancer-class=c/d", "--manage-default-class=false",
		"--concurrency=8", "--resync-period=1m", "--leader-elect", "--kube-api-qps=50.5", "--kube-api-burst=80"})
	if err != nil {
		t.Fatal(err)
	}
	want := DefaultConfig()
	want.ClusterName, want.Cloud.Endpoint = "dev-1", "http://10.100.0.3:4566"
	want.LoadBalancerClasses, want.ManageDefaultClass = []string{"a/b", "c/d"}, false
	want.Concurrency, want.ResyncPeriod, want.LeaderElect = 8, time.Minute, true
	want.KubeAPIQPS, want.KubeAPIBurst = 50.5, 80
	if diff := cmp.Diff(want, c); diff != "" {
		t.Errorf("config (-want +got):\n%s", diff)
	}
	if err := c.Validate(); err != nil {
		t.Errorf("Validate: %v", err)
	}
}

// TestDeprecatedCloudFlags: --cloud-region and --cloud-endpoint, the names
// before lb-controller and node-agent agreed on --aws-*, still set the
// region and endpoint, with a warning, and are hidden from --help.
func TestDeprecatedCloudFlags(t *testing.T) {
	c := DefaultConfig()
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	var out bytes.Buffer
	fs.SetOutput(&out)
	c.BindFlags(fs)
	if err := fs.Parse([]string{"--cluster-name=dev-1", "--cloud-region=eu-west-1", "--cloud-endpoint=http://10.100.0.3:4566"}); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"eu-west-1", "http://10.100.0.3:4566"}, []string{c.Cloud.Region, c.Cloud.Endpoint}); diff != "" {
		t.Errorf("region and endpoint (-want +got):\n%s", diff)
	}
	for _, w := range []string{"--cloud-region has been deprecated, use --aws-region instead", "--cloud-endpoint has been deprecated, use --aws-endpoint instead"} {
		if !strings.Contains(out.String(), w) {
			t.Errorf("warnings %q lack %q", out.String(), w)
		}
	}
	if usage := fs.FlagUsages(); strings.Contains(usage, "--cloud-region") || strings.Contains(usage, "--cloud-endpoint") || !strings.Contains(usage, "--aws-region") {
		t.Errorf("--help shows the old names or lacks --aws-region:\n%s", usage)
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*Config)
		want   []string // substrings of the error, "" for none
	}{
		{"defaults with a name", func(*Config) {}, nil},
		{"no cluster name", func(c *Config) { c.ClusterName = "" }, []string{"--cluster-name"}},
		{"upper case name", func(c *Config) { c.ClusterName = "Dev" }, []string{"--cluster-name"}},
		{"everything wrong", func(c *Config) {
			c.Concurrency, c.ResyncPeriod, c.TargetBatchWindow, c.TargetRefreshPeriod = 0, time.Second, time.Minute, 0
			c.LoadBalancerClasses, c.Cloud.Region = []string{""}, ""
		}, []string{"--concurrency", "--resync-period", "--target-batch-window", "--target-refresh-period", "--load-balancer-class", "--aws-region"}},
		{"apiserver client without a budget", func(c *Config) { c.KubeAPIQPS, c.KubeAPIBurst = 0, -1 }, []string{"--kube-api-qps", "--kube-api-burst"}},
		{"owns nothing", func(c *Config) { c.ManageDefaultClass, c.LoadBalancerClasses = false, nil }, []string{"--manage-default-class"}},
		{"drain stops before the webhook", func(c *Config) { c.Drain.ShutdownDelay = time.Second }, []string{"--drain-shutdown-delay"}},
		{"drain shutdown past the ceiling", func(c *Config) { c.Drain.ShutdownDelay, c.Drain.MaxWait = time.Minute, 30*time.Second }, []string{"--drain-shutdown-delay"}},
		{"regression checks over the refill rate", func(c *Config) { c.Gates.RegressionChecksPerMinute = 601 }, []string{"--gate-regression-checks-per-minute"}},
		{"regression check off", func(c *Config) { c.Gates.RegressionChecksPerMinute = 0 }, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := DefaultConfig()
			c.ClusterName = "dev"
			tt.mutate(&c)
			err := c.Validate()
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("Validate: no error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %s", err, w)
				}
			}
		})
	}
}

// By default lb-controller claims Services by the documented class only: a
// class-less Service belongs to the cloud provider's own service controller.
func TestDefaultClaimsByClass(t *testing.T) {
	f := service.ClassFilter{Classes: DefaultConfig().LoadBalancerClasses, Default: DefaultConfig().ManageDefaultClass}
	if !f.Owns(ptr(service.LoadBalancerClass)) {
		t.Errorf("default config does not own %s", service.LoadBalancerClass)
	}
	if f.Owns(nil) || f.Owns(ptr("")) {
		t.Error("default config owns Services without a class")
	}
	c := DefaultConfig()
	c.ClusterName = "x"
	if err := c.Validate(); err != nil {
		t.Errorf("defaults with a cluster name do not validate: %v", err)
	}
}

// The manager's client gets the flags' budget, not client-go's default
// (20/s, burst 30) nor a limiter the loaded kubeconfig carries.
func TestSetKubeAPILimits(t *testing.T) {
	c := DefaultConfig()
	rc := &rest.Config{QPS: 20, Burst: 30, RateLimiter: flowcontrol.NewFakeAlwaysRateLimiter()}
	c.SetKubeAPILimits(rc)
	if rc.QPS != DefaultKubeAPIQPS || rc.Burst != DefaultKubeAPIBurst || rc.RateLimiter != nil {
		t.Errorf("rest config QPS %v, burst %d, limiter %v; want %v, %d, nil", rc.QPS, rc.Burst, rc.RateLimiter, DefaultKubeAPIQPS, DefaultKubeAPIBurst)
	}
}

// Package aws implements cloud.LoadBalancers on the AWS ELBv2 API through
// aws-sdk-go-v2, pointed at AWS or, by endpoint, at localcloud.
package aws

import (
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"
)

// Limit is a client-side token bucket for one API operation.
type Limit struct {
	Rate  float64 // tokens per second
	Burst int
}

// DefaultRateLimits are per-operation client-side limits a little under the
// ELBv2 API's published defaults, so one controller does not eat the
// account's whole budget: Describe* 8/s (burst 30), RegisterTargets and
// DeregisterTargets 4/s (burst 20), load balancer create/delete 1/s (burst
// 10), other mutating calls 2/s (burst 20); EC2's DescribeNetworkInterfaces
// 16/s (burst 80) and Assign/UnassignPrivateIpAddresses 4/s (burst 100),
// under EC2's default request-token buckets (non-mutating 20/s, bucket 100;
// mutating 5/s, bucket 200). Operations not listed are not limited.
func DefaultRateLimits() map[string]Limit {
	m := map[string]Limit{}
	for _, op := range []string{"DescribeLoadBalancers", "DescribeListeners", "DescribeTargetGroups",
		"DescribeTargetGroupAttributes", "DescribeTargetHealth", "DescribeTags"} {
		m[op] = Limit{Rate: 8, Burst: 30}
	}
	for _, op := range []string{"RegisterTargets", "DeregisterTargets"} {
		m[op] = Limit{Rate: 4, Burst: 20}
	}
	for _, op := range []string{"CreateLoadBalancer", "DeleteLoadBalancer"} {
		m[op] = Limit{Rate: 1, Burst: 10}
	}
	for _, op := range []string{"CreateListener", "DeleteListener", "ModifyListener", "CreateTargetGroup",
		"DeleteTargetGroup", "ModifyTargetGroup", "ModifyTargetGroupAttributes", "AddTags", "RemoveTags"} {
		m[op] = Limit{Rate: 2, Burst: 20}
	}
	m["DescribeNetworkInterfaces"] = Limit{Rate: 16, Burst: 80}
	for _, op := range []string{"AssignPrivateIpAddresses", "UnassignPrivateIpAddresses"} {
		m[op] = Limit{Rate: 4, Burst: 100}
	}
	return m
}

// Config configures the ELBv2 (and EC2) clients.
type Config struct {
	// Region is the AWS region (required).
	Region string
	// Endpoint overrides the service endpoint, e.g. http://10.100.0.3:4566
	// for localcloud. Empty uses AWS's endpoints.
	Endpoint string
	// MaxAttempts is the SDK retryer's attempts per call (throttling and
	// 5xx are retried with backoff).
	MaxAttempts int
	// MaxBackoff caps the retryer's backoff between attempts.
	MaxBackoff time.Duration
	// PageSize is the Describe* page size (1-400).
	PageSize int32
	// Subnets are passed to CreateLoadBalancer (AWS needs them; localcloud
	// ignores them).
	Subnets []string
	// RateLimits are client-side per-operation limits; nil means
	// DefaultRateLimits. A rate of 0 disables an operation's limit.
	RateLimits map[string]Limit

	// Registerer receives the per-operation metrics; nil registers nothing.
	Registerer prometheus.Registerer
	// Credentials overrides the default credential chain (tests use it).
	Credentials awssdk.CredentialsProvider
	// SharedCredentialsFile, when set, is the credentials file (the
	// format of ~/.aws/credentials) the default chain reads instead of
	// ~/.aws/credentials; it must exist. directlb-cni, which the runtime
	// runs on the host, is given one by the chart.
	SharedCredentialsFile string
}

// DefaultConfig returns a Config with defaults filled in.
func DefaultConfig() Config {
	return Config{
		MaxAttempts: 10,
		MaxBackoff:  20 * time.Second,
		PageSize:    400,
		RateLimits:  DefaultRateLimits(),
	}
}

// rateLimitsFlag is a pflag.Value for "Op=rate:burst,Op=rate:burst".
type rateLimitsFlag struct{ m *map[string]Limit }

func (f rateLimitsFlag) String() string {
	if f.m == nil || *f.m == nil {
		return ""
	}
	var parts []string
	for op, l := range *f.m {
		parts = append(parts, fmt.Sprintf("%s=%g:%d", op, l.Rate, l.Burst))
	}
	sort.Strings(parts)
	return strings.Join(parts, ",")
}

func (f rateLimitsFlag) Set(s string) error {
	if *f.m == nil {
		*f.m = DefaultRateLimits()
	}
	for _, part := range strings.Split(s, ",") {
		if part == "" {
			continue
		}
		op, v, ok := strings.Cut(part, "=")
		if !ok {
			return fmt.Errorf("rate limit %q: want Operation=rate:burst", part)
		}
		rs, bs, ok := strings.Cut(v, ":")
		if !ok {
			return fmt.Errorf("rate limit %q: want Operation=rate:burst", part)
		}
		r, err := strconv.ParseFloat(rs, 64)
		if err != nil {
			return fmt.Errorf("rate limit %q: %w", part, err)
		}
		b, err := strconv.Atoi(bs)
		if err != nil {
			return fmt.Errorf("rate limit %q: %w", part, err)
		}
		(*f.m)[op] = Limit{Rate: r, Burst: b}
	}
	return nil
}

func (f rateLimitsFlag) Type() string { return "limits" }

// BindFlags binds the config to flags prefixed "aws-": the client's
// (BindClientFlags) and the ELBv2 ones.
func (c *Config) BindFlags(fs *pflag.FlagSet) {
	c.BindClientFlags(fs)
	fs.Int32Var(&c.PageSize, "aws-page-size", c.PageSize, "page size of Describe calls (1-400)")
	fs.StringSliceVar(&c.Subnets, "aws-subnets", c.Subnets, "subnet IDs for new load balancers")
	fs.Var(rateLimitsFlag{&c.RateLimits}, "aws-rate-limits", "client-side per-operation limits, Operation=rate:burst,...; rate 0 disables one (defaults near AWS's published ELBv2 limits)")
}

// BindClientFlags binds what every AWS client of directlb takes, ELBv2 in
// lb-controller or EC2 in node-agent: --aws-region, --aws-endpoint,
// --aws-max-attempts and --aws-max-backoff.
func (c *Config) BindClientFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.Region, "aws-region", c.Region, "AWS region")
	fs.StringVar(&c.Endpoint, "aws-endpoint", c.Endpoint, "ELBv2/EC2 endpoint override, e.g. http://10.100.0.3:4566 for localcloud; empty uses AWS. Credentials come from the SDK's default chain ($AWS_ACCESS_KEY_ID, ...)")
	fs.IntVar(&c.MaxAttempts, "aws-max-attempts", c.MaxAttempts, "attempts per API call; throttling and 5xx are retried with backoff")
	fs.DurationVar(&c.MaxBackoff, "aws-max-backoff", c.MaxBackoff, "largest backoff between retried attempts")
}

// Validate reports every invalid setting; each message names its flag.
func (c *Config) Validate() error {
	var errs []error
	if c.Region == "" {
		errs = append(errs, errors.New("--aws-region: must not be empty"))
	}
	return errors.Join(append(errs, c.ValidateClient())...)
}

// ValidateClient is Validate without the region check, for node-agent,
// where no region means no cloud.
func (c *Config) ValidateClient() error {
	var errs []error
	if c.MaxAttempts < 1 {
		errs = append(errs, fmt.Errorf("--aws-max-attempts %d: must be at least 1", c.MaxAttempts))
	}
	if c.MaxBackoff <= 0 {
		errs = append(errs, fmt.Errorf("--aws-max-backoff %s: must be positive", c.MaxBackoff))
	}
	if c.PageSize < 1 || c.PageSize > 400 {
		errs = append(errs, fmt.Errorf("--aws-page-size %d: must be from 1 to 400", c.PageSize))
	}
	for op, l := range c.RateLimits {
		if l.Rate < 0 || (l.Rate > 0 && l.Burst < 1) {
			errs = append(errs, fmt.Errorf("--aws-rate-limits %s: rate must be at least 0 and burst at least 1", op))
		}
	}
	if c.Endpoint != "" && !strings.HasPrefix(c.Endpoint, "http://") && !strings.HasPrefix(c.Endpoint, "https://") {
		errs = append(errs, fmt.Errorf("--aws-endpoint %q: must be an http:// or https:// URL", c.Endpoint))
	}
	return errors.Join(errs...)
}

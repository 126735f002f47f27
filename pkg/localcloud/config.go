// Package localcloud wires localcloud together: the ELBv2 API (pkg/localcloud/api),
// its state on disk (store), fault injection (faults), and, when enabled,
// health checks (health) and the L4 datapath (datapath).
package localcloud

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/spf13/pflag"

	"github.com/directlb/directlb/pkg/localcloud/faults"
)

// Config is localcloud's configuration; every field is a flag.
type Config struct {
	Listen            string
	AdminListen       string
	StateDir          string
	LBCIDR            string
	Region            string
	AccessKeyID       string
	SecretAccessKey   string
	Datapath          bool
	DatapathInterface string
	TargetSelection   string
	// ConnectFallback: a TCP connect a target refuses goes to the next
	// healthy target instead of resetting the client (an NLB resets).
	ConnectFallback bool
	UDPIdleTimeout  time.Duration
	MaxPageSize     int
	// NetworkInterfacesFile seeds ENIs at start (JSON array of
	// store.NetworkInterface); empty seeds none.
	NetworkInterfacesFile string

	AWSRateLimits bool
	RateLimits    map[string]string
	FaultThrottle map[string]string
	Fault5xx      map[string]string
	FaultLatency  map[string]string
}

// Target selection policies.
const (
	SelectFlowHash   = "flow-hash"
	SelectRoundRobin = "round-robin"
)

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{
		Listen:            "127.0.0.1:4566",
		StateDir:          "/var/lib/localcloud",
		LBCIDR:            "198.51.100.0/24",
		Region:            "us-east-1",
		AccessKeyID:       "AKIDLOCALCLOUD",
		SecretAccessKey:   "localcloud-secret",
		Datapath:          true,
		DatapathInterface: "lo",
		TargetSelection:   SelectFlowHash,
		UDPIdleTimeout:    120 * time.Second,
		MaxPageSize:       400,
	}
}

// BindFlags binds the config to fs.
func (c *Config) BindFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.Listen, "listen", c.Listen, "address of the ELBv2 API (http), e.g. 10.100.0.3:4566 or 127.0.0.1:0")
	fs.StringVar(&c.AdminListen, "admin-listen", c.AdminListen, "address of the admin endpoint and /metrics; empty serves them on --listen under /admin/ and /metrics")
	fs.StringVar(&c.StateDir, "state-dir", c.StateDir, "directory of state.json (written atomically on every change); empty keeps state in memory")
	fs.StringVar(&c.LBCIDR, "lb-cidr", c.LBCIDR, "range load balancer addresses come from")
	fs.StringVar(&c.Region, "region", c.Region, "region in ARNs")
	fs.StringVar(&c.AccessKeyID, "access-key-id", c.AccessKeyID, "the access key id requests must be signed with (SigV4)")
	fs.StringVar(&c.SecretAccessKey, "secret-access-key", c.SecretAccessKey, "the secret access key requests must be signed with (SigV4)")
	fs.BoolVar(&c.Datapath, "datapath", c.Datapath, "run health checks and forward traffic (needs CAP_NET_ADMIN); off serves the API only and reports registered targets healthy")
	fs.StringVar(&c.DatapathInterface, "datapath-interface", c.DatapathInterface, "interface load balancer addresses are added to")
	fs.StringVar(&c.TargetSelection, "target-selection", c.TargetSelection, "how a new flow picks a healthy target: flow-hash or round-robin")
	fs.BoolVar(&c.ConnectFallback, "connect-fallback", c.ConnectFallback, "when a target refuses a new TCP connection, try the next healthy one instead of resetting the client as an NLB does")
	fs.DurationVar(&c.UDPIdleTimeout, "udp-idle-timeout", c.UDPIdleTimeout, "a UDP flow with no packets for this long is forgotten")
	fs.IntVar(&c.MaxPageSize, "max-page-size", c.MaxPageSize, "Describe* page size when the request gives none (1-400)")
	fs.StringVar(&c.NetworkInterfacesFile, "network-interfaces-file", c.NetworkInterfacesFile, "JSON array of ENIs to create or update at start (id, instanceId, deviceIndex, macAddress, subnetCidr, privateIpAddress, pool, addressLimit, description, tags); they are kept in state.json. PUT /admin/network-interfaces/{id} does the same at run time")
	fs.BoolVar(&c.AWSRateLimits, "aws-rate-limits", c.AWSRateLimits, "throttle each action with token buckets near AWS's published ELBv2 limits")
	fs.StringToStringVar(&c.RateLimits, "rate-limit", c.RateLimits, "per-action token buckets, Action=rate:burst (* for every action); overrides --aws-rate-limits for those actions")
	fs.StringToStringVar(&c.FaultThrottle, "fault-throttle", c.FaultThrottle, "fraction of calls answered Throttling (HTTP 400), Action=0.3 (* for every action)")
	fs.StringToStringVar(&c.Fault5xx, "fault-5xx", c.Fault5xx, "fraction of calls answered ServiceUnavailable (HTTP 503), Action=0.1 (* for every action)")
	fs.StringToStringVar(&c.FaultLatency, "fault-latency", c.FaultLatency, "latency added to calls, Action=200ms (* for every action)")
}

// FaultSpec builds the fault configuration from the flags.
func (c *Config) FaultSpec() (faults.Spec, error) {
	rules, err := faults.ParseRules(c.FaultThrottle, c.Fault5xx, c.FaultLatency)
	if err != nil {
		return faults.Spec{}, err
	}
	limits := map[string]faults.Limit{}
	if c.AWSRateLimits {
		limits = faults.AWSLimits()
	}
	extra, err := faults.ParseLimits(c.RateLimits)
	if err != nil {
		return faults.Spec{}, err
	}
	for a, l := range extra {
		limits[a] = l
	}
	spec := faults.Spec{Rules: rules, Limits: limits}
	return spec, spec.Validate()
}

// Validate checks the config.
func (c *Config) Validate() error {
	var errs []error
	if c.Listen == "" {
		errs = append(errs, errors.New("--listen is required"))
	}
	p, err := netip.ParsePrefix(c.LBCIDR)
	if err != nil || !p.Addr().Is4() || p.Bits() > 30 {
		errs = append(errs, fmt.Errorf("--lb-cidr %q must be an IPv4 prefix of /30 or larger", c.LBCIDR))
	}
	if c.Region == "" {
		errs = append(errs, errors.New("--region is required"))
	}
	if c.AccessKeyID == "" || c.SecretAccessKey == "" {
		errs = append(errs, errors.New("--access-key-id and --secret-access-key are required: every request is SigV4-checked"))
	}
	if c.Datapath && c.DatapathInterface == "" {
		errs = append(errs, errors.New("--datapath-interface is required with --datapath"))
	}
	if c.TargetSelection != SelectFlowHash && c.TargetSelection != SelectRoundRobin {
		errs = append(errs, fmt.Errorf("--target-selection %q must be %s or %s", c.TargetSelection, SelectFlowHash, SelectRoundRobin))
	}
	if c.UDPIdleTimeout <= 0 {
		errs = append(errs, errors.New("--udp-idle-timeout must be > 0"))
	}
	if c.MaxPageSize < 1 || c.MaxPageSize > 400 {
		errs = append(errs, fmt.Errorf("--max-page-size %d out of range 1-400", c.MaxPageSize))
	}
	if _, err := c.FaultSpec(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

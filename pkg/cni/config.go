package cni

import (
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	cloudaws "github.com/directlb/directlb/pkg/cloud/aws"
)

// Type is the plugin's type in a conflist: the name of its binary.
const Type = "directlb-cni"

// Defaults of the settings a conflist may leave out.
const (
	DefaultDataDir      = "/var/lib/directlb-cni"
	DefaultLogFile      = "/var/log/directlb-cni.log"
	DefaultLogLevel     = "info"
	DefaultWarmIPTarget = 1
	DefaultCloudTimeout = 10 * time.Second
	DefaultMaxAttempts  = 3
)

// Settings are the plugin's own keys of its conflist entry (Config adds
// the standard ones). Install writes them; the plugin reads them.
type Settings struct {
	// InstanceID is the EC2 instance whose ENIs give pods addresses
	// (required).
	InstanceID string `json:"instanceID"`
	AWS        AWS    `json:"aws"`
	// DataDir holds the pool: <dataDir>/<instanceID>/pool.json.
	DataDir string `json:"dataDir,omitempty"`
	// WarmIPTarget is the free addresses each ENI in use keeps; nil: 1.
	WarmIPTarget *int `json:"warmIPTarget,omitempty"`
	// FirstENI is the device index that wins ties between ENIs.
	FirstENI int `json:"firstENI"`
	// LogFile is where the plugin logs (JSON lines); stdout is the CNI
	// protocol's, so never there.
	LogFile  string `json:"logFile,omitempty"`
	LogLevel string `json:"logLevel,omitempty"`
	// CloudTimeout bounds one cloud call, retries included, e.g. "10s".
	CloudTimeout Duration `json:"cloudTimeout,omitzero"`
}

// AWS says how to reach EC2: pkg/cloud/aws, pointed at AWS or, by
// endpoint, at localcloud.
type AWS struct {
	// Endpoint overrides EC2's endpoint, e.g. http://10.100.0.3:4566.
	Endpoint string `json:"endpoint,omitempty"`
	Region   string `json:"region"`
	// SharedCredentialsFile holds the access key ([default] profile);
	// empty: the SDK's default chain (the instance's role through IMDS).
	SharedCredentialsFile string `json:"sharedCredentialsFile,omitempty"`
	// MaxAttempts per call; throttling and 5xx are retried.
	MaxAttempts int `json:"maxAttempts,omitempty"`
}

// Config is the plugin's conflist entry as the runtime hands it over.
type Config struct {
	types.PluginConf
	Settings
}

// Duration is a time.Duration written as a string ("10s").
type Duration struct{ time.Duration }

// MarshalJSON implements json.Marshaler.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

// UnmarshalJSON implements json.Unmarshaler.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("want a duration such as \"10s\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	d.Duration = v
	return nil
}

// LoadConfig decodes the plugin's stdin, fills in the defaults and
// validates it.
func LoadConfig(stdin []byte) (*Config, error) {
	var c Config
	if err := json.Unmarshal(stdin, &c); err != nil {
		return nil, fmt.Errorf("decode %s configuration: %w", Type, err)
	}
	c.Settings.Default()
	if err := c.Settings.Validate(); err != nil {
		return nil, fmt.Errorf("invalid %s configuration: %w", Type, err)
	}
	return &c, nil
}

// Default fills in what is not set.
func (s *Settings) Default() {
	if s.DataDir == "" {
		s.DataDir = DefaultDataDir
	}
	if s.LogFile == "" {
		s.LogFile = DefaultLogFile
	}
	if s.LogLevel == "" {
		s.LogLevel = DefaultLogLevel
	}
	if s.WarmIPTarget == nil {
		w := DefaultWarmIPTarget
		s.WarmIPTarget = &w
	}
	if s.CloudTimeout.Duration == 0 {
		s.CloudTimeout.Duration = DefaultCloudTimeout
	}
	if s.AWS.MaxAttempts == 0 {
		s.AWS.MaxAttempts = DefaultMaxAttempts
	}
}

// Validate reports every invalid setting; each message names its key.
func (s *Settings) Validate() error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if s.InstanceID == "" || strings.ContainsAny(s.InstanceID, "/\x00") || s.InstanceID == "." || s.InstanceID == ".." {
		bad("instanceID %q: must be the EC2 instance ID (non-empty, no '/')", s.InstanceID)
	}
	if s.AWS.Region == "" {
		bad("aws.region: must not be empty")
	}
	if e := s.AWS.Endpoint; e != "" && !strings.HasPrefix(e, "http://") && !strings.HasPrefix(e, "https://") {
		bad("aws.endpoint %q: must be an http:// or https:// URL", e)
	}
	if f := s.AWS.SharedCredentialsFile; f != "" && !filepath.IsAbs(f) {
		bad("aws.sharedCredentialsFile %q: must be an absolute path", f)
	}
	if s.AWS.MaxAttempts < 1 {
		bad("aws.maxAttempts %d: must be at least 1", s.AWS.MaxAttempts)
	}
	if !filepath.IsAbs(s.DataDir) {
		bad("dataDir %q: must be an absolute path", s.DataDir)
	}
	if w := s.WarmIPTarget; w != nil && (*w < 0 || *w > 64) {
		bad("warmIPTarget %d: must be from 0 to 64", *w)
	}
	if s.FirstENI < 0 {
		bad("firstENI %d: must be a device index (0 or more)", s.FirstENI)
	}
	if !filepath.IsAbs(s.LogFile) {
		bad("logFile %q: must be an absolute path", s.LogFile)
	}
	if !slices.Contains([]string{"debug", "info", "warn", "error"}, s.LogLevel) {
		bad("logLevel %q: want debug, info, warn or error", s.LogLevel)
	}
	if s.CloudTimeout.Duration <= 0 {
		bad("cloudTimeout %s: must be positive", s.CloudTimeout)
	}
	return errors.Join(errs...)
}

// PoolDir is the instance's pool directory.
func (s *Settings) PoolDir() string { return filepath.Join(s.DataDir, s.InstanceID) }

// CloudConfig is the pkg/cloud/aws configuration for EC2. A plugin run is
// one short process, so there are no client-side rate limits (each run
// would start with a full bucket) and the retries stay short.
func (s *Settings) CloudConfig() cloudaws.Config {
	c := cloudaws.DefaultConfig()
	c.Region, c.Endpoint = s.AWS.Region, s.AWS.Endpoint
	c.MaxAttempts, c.MaxBackoff = s.AWS.MaxAttempts, time.Second
	c.RateLimits = map[string]cloudaws.Limit{}
	c.SharedCredentialsFile = s.AWS.SharedCredentialsFile
	return c
}

package readinessgate

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/spf13/pflag"
)

// Failure policies of the webhook.
const (
	FailurePolicyIgnore = "Ignore"
	FailurePolicyFail   = "Fail"
)

// Config configures the webhook and the gate writer; every field is a flag.
type Config struct {
	// Enabled runs the webhook and the gate writer.
	Enabled bool
	// PollInterval is the first health poll interval of a Service with
	// pending gates; it grows 1.5× per poll without change, up to
	// MaxPendingInterval, and starts over on any change.
	PollInterval       time.Duration
	MaxPendingInterval time.Duration
	// WatchInterval is the poll interval once every gate is True while
	// something still needs watching: a health regression the writer
	// reports, or a gated pod draining.
	WatchInterval time.Duration
	// RegressionChecksPerMinute is the budget of the slow regression
	// check, across all Services: a Service whose gates are all True, with
	// nothing draining and no regression, is checked every
	// (gated target groups ÷ this) minutes, at least WatchInterval apart,
	// on a result at most that old (often the target reconciler's
	// own refresh: no call of its own). A small cluster is checked every
	// WatchInterval, a big one slowly, at a bounded cost. 0: never (pod
	// and Service changes still do).
	RegressionChecksPerMinute float64
	// ReportPendingAfter is how long a pod's gate may stay without a
	// condition while its verdict is only "not yet" (no pod IP, target not
	// registered or initial): the missing condition keeps the pod NotReady
	// as a False one would, and a target that turns healthy within this
	// time costs the pod one status patch (True) instead of two or three.
	// Counted from when this writer first saw the pod waiting; 0 writes
	// every verdict at once.
	ReportPendingAfter time.Duration
	// FailOpenAfter sets a gate True (with a Warning event) when the pod's
	// containers have been ready this long and the target is still not
	// healthy; 0 never fails open.
	FailOpenAfter time.Duration
	// DrainMargin is added to the deregistration delay when checking that
	// terminationGracePeriodSeconds covers the drain.
	DrainMargin time.Duration

	// WebhookBindAddress is where the HTTPS webhook listens ("0": no
	// webhook server). The server runs only with WebhookURL or
	// WebhookService set.
	WebhookBindAddress string
	// WebhookShutdownDelay is how long the webhook keeps serving after
	// the controller is told to stop, while the webhook Service's
	// endpoints let go of this replica.
	WebhookShutdownDelay time.Duration
	// WebhookURL is the URL the apiserver calls (test bed: the host
	// address); WebhookService ("namespace/name:port") is the in-cluster
	// alternative. Without either there is no webhook (the gate writer
	// still serves pods that carry gates).
	WebhookURL     string
	WebhookService string
	// WebhookFailurePolicy is Ignore (default) or Fail; see
	// docs/readiness-gates.md for the trade-off.
	WebhookFailurePolicy string
	WebhookTimeout       time.Duration
	// WebhookConfigName is the MutatingWebhookConfiguration the controller
	// creates and keeps up to date (CA bundle included) when
	// ManageWebhookConfiguration is set.
	WebhookConfigName          string
	ManageWebhookConfiguration bool
	// ExcludeNamespaces never get the webhook (the controller's own
	// namespace belongs here, so it can always start).
	ExcludeNamespaces []string
}

// DefaultConfig returns the flag defaults.
func DefaultConfig() Config {
	return Config{
		Enabled:                    true,
		PollInterval:               time.Second,
		MaxPendingInterval:         10 * time.Second,
		WatchInterval:              10 * time.Second,
		RegressionChecksPerMinute:  20,
		ReportPendingAfter:         30 * time.Second,
		DrainMargin:                5 * time.Second,
		WebhookBindAddress:         ":9443",
		WebhookShutdownDelay:       3 * time.Second,
		WebhookFailurePolicy:       FailurePolicyIgnore,
		WebhookTimeout:             5 * time.Second,
		WebhookConfigName:          "directlb-readiness-gate",
		ManageWebhookConfiguration: true,
		ExcludeNamespaces:          []string{"kube-system"},
	}
}

// BindFlags registers the flags.
func (c *Config) BindFlags(fs *pflag.FlagSet) {
	fs.BoolVar(&c.Enabled, "readiness-gates", c.Enabled, "run the readiness-gate webhook and gate writer")
	fs.DurationVar(&c.PollInterval, "gate-poll-interval", c.PollInterval, "first target-health poll interval while a Service has pending gates")
	fs.DurationVar(&c.MaxPendingInterval, "gate-max-pending-interval", c.MaxPendingInterval, "longest target-health poll interval while gates are pending (at most 10s)")
	fs.DurationVar(&c.WatchInterval, "gate-watch-interval", c.WatchInterval, "target-health poll interval once every gate is True while a health regression is reported or a gated pod drains")
	fs.Float64Var(&c.RegressionChecksPerMinute, "gate-regression-checks-per-minute", c.RegressionChecksPerMinute, "target groups per minute, across all Services, checked for health regressions once every gate is True and nothing drains: each Service every (gated target groups / this) minutes, at least --gate-watch-interval apart (0: only on pod or Service changes)")
	fs.DurationVar(&c.ReportPendingAfter, "gate-report-pending-after", c.ReportPendingAfter, "how long a waiting pod's gate stays without a condition before a False PodIPPending or Registering is written (the pod is NotReady either way; most targets turn healthy first, saving the apiserver one or two status patches per pod; 0: write at once)")
	fs.DurationVar(&c.FailOpenAfter, "gate-fail-open-after", c.FailOpenAfter, "set a gate True with a Warning event when the pod's containers have been ready this long (0: never)")
	fs.DurationVar(&c.DrainMargin, "drain-grace-margin", c.DrainMargin, "margin over the deregistration delay that terminationGracePeriodSeconds must leave, else a Warning event")
	fs.StringVar(&c.WebhookBindAddress, "webhook-bind-address", c.WebhookBindAddress, `address of the HTTPS readiness-gate webhook ("0" disables the server)`)
	fs.DurationVar(&c.WebhookShutdownDelay, "webhook-shutdown-delay", c.WebhookShutdownDelay, "how long the webhook keeps serving after the controller is told to stop (0-20s), while the webhook Service's endpoints let go of this replica")
	fs.StringVar(&c.WebhookURL, "webhook-url", c.WebhookURL, "URL the apiserver calls for the webhook, e.g. https://10.100.0.2:9443/mutate-pod")
	fs.StringVar(&c.WebhookService, "webhook-service", c.WebhookService, "Service the apiserver calls for the webhook, namespace/name:port (instead of --webhook-url)")
	fs.StringVar(&c.WebhookFailurePolicy, "webhook-failure-policy", c.WebhookFailurePolicy, "Ignore or Fail: what pod creation does when the webhook cannot be reached")
	fs.DurationVar(&c.WebhookTimeout, "webhook-timeout", c.WebhookTimeout, "apiserver timeout for one webhook call (1s-30s)")
	fs.StringVar(&c.WebhookConfigName, "webhook-configuration-name", c.WebhookConfigName, "name of the MutatingWebhookConfiguration")
	fs.BoolVar(&c.ManageWebhookConfiguration, "manage-webhook-configuration", c.ManageWebhookConfiguration, "create and update the MutatingWebhookConfiguration (and its CA bundle)")
	fs.StringArrayVar(&c.ExcludeNamespaces, "webhook-exclude-namespace", c.ExcludeNamespaces, "namespace the webhook never sees (repeatable; include the controller's own)")
}

// Validate reports every invalid setting.
func (c *Config) Validate() error {
	if !c.Enabled {
		return nil
	}
	var errs []error
	if c.PollInterval < 100*time.Millisecond || c.PollInterval > 10*time.Second {
		errs = append(errs, fmt.Errorf("--gate-poll-interval %s: must be from 100ms to 10s", c.PollInterval))
	}
	if c.MaxPendingInterval < c.PollInterval || c.MaxPendingInterval > 10*time.Second {
		errs = append(errs, fmt.Errorf("--gate-max-pending-interval %s: must be from --gate-poll-interval to 10s", c.MaxPendingInterval))
	}
	if c.WatchInterval < time.Second || c.WatchInterval > 5*time.Minute {
		errs = append(errs, fmt.Errorf("--gate-watch-interval %s: must be from 1s to 5m", c.WatchInterval))
	}
	if c.RegressionChecksPerMinute < 0 || c.RegressionChecksPerMinute > 600 {
		errs = append(errs, fmt.Errorf("--gate-regression-checks-per-minute %g: must be from 0 to 600 (AWS refills Describe calls at 600 a minute)", c.RegressionChecksPerMinute))
	}
	if c.ReportPendingAfter < 0 || c.ReportPendingAfter > 5*time.Minute {
		errs = append(errs, fmt.Errorf("--gate-report-pending-after %s: must be from 0 to 5m", c.ReportPendingAfter))
	}
	if c.FailOpenAfter < 0 {
		errs = append(errs, fmt.Errorf("--gate-fail-open-after %s: must not be negative", c.FailOpenAfter))
	}
	if c.WebhookShutdownDelay < 0 || c.WebhookShutdownDelay > 20*time.Second {
		errs = append(errs, fmt.Errorf("--webhook-shutdown-delay %s: must be from 0 to 20s", c.WebhookShutdownDelay))
	}
	if c.WebhookFailurePolicy != FailurePolicyIgnore && c.WebhookFailurePolicy != FailurePolicyFail {
		errs = append(errs, fmt.Errorf("--webhook-failure-policy %q: must be Ignore or Fail", c.WebhookFailurePolicy))
	}
	if c.WebhookTimeout < time.Second || c.WebhookTimeout > 30*time.Second {
		errs = append(errs, fmt.Errorf("--webhook-timeout %s: must be from 1s to 30s", c.WebhookTimeout))
	}
	switch {
	case c.WebhookURL != "" && c.WebhookService != "":
		errs = append(errs, errors.New("--webhook-url and --webhook-service: set only one"))
	case c.WebhookURL != "":
		if u, err := url.Parse(c.WebhookURL); err != nil || u.Scheme != "https" || u.Host == "" {
			errs = append(errs, fmt.Errorf("--webhook-url %q: must be an https:// URL", c.WebhookURL))
		}
	case c.WebhookService != "":
		if _, _, _, err := c.ServiceRef(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// ServiceRef splits --webhook-service into namespace, name and port.
func (c *Config) ServiceRef() (ns, name string, port int32, err error) {
	bad := fmt.Errorf("--webhook-service %q: must be namespace/name:port", c.WebhookService)
	nsName, p, ok := strings.Cut(c.WebhookService, ":")
	ns, name, ok2 := strings.Cut(nsName, "/")
	if !ok || !ok2 || ns == "" || name == "" {
		return "", "", 0, bad
	}
	var n int
	if _, err := fmt.Sscanf(p, "%d", &n); err != nil || n < 1 || n > 65535 {
		return "", "", 0, bad
	}
	return ns, name, int32(n), nil
}

// WebhookEnabled: the webhook server runs only when the apiserver has a
// way to reach it (--webhook-url or --webhook-service).
func (c *Config) WebhookEnabled() bool {
	return c.Enabled && c.WebhookBindAddress != "0" && (c.WebhookURL != "" || c.WebhookService != "")
}

// Hosts are the DNS names and addresses the serving certificate must cover.
func (c *Config) Hosts() []string {
	if c.WebhookURL != "" {
		if u, err := url.Parse(c.WebhookURL); err == nil {
			return []string{u.Hostname()}
		}
	}
	if ns, name, _, err := c.ServiceRef(); err == nil {
		return []string{name + "." + ns + ".svc", name + "." + ns + ".svc.cluster.local"}
	}
	return nil
}

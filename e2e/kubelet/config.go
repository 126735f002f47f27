// Package kubelet is the test bed's kubelet stand-in: one per node, it
// registers the Node and keeps its Lease, and runs the pods bound to the node
// as real processes in real network namespaces, with readiness probes,
// readiness gates, preStop hooks and graceful termination the way a kubelet
// does. See docs/testbed-pods.md.
package kubelet

import (
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/directlb/directlb/e2e/testbed"
	"github.com/spf13/pflag"
)

// DefaultImages maps the project's images to its binaries in the bin dir.
var DefaultImages = []string{
	"ghcr.io/directlb/lb-controller:*=lb-controller",
	"ghcr.io/directlb/node-agent:*=node-agent",
	"ghcr.io/directlb/localcloud:*=localcloud",
}

// Config is the kubelet stand-in's configuration.
type Config struct {
	// TopologyFile is <state dir>/topology.json written by `dlb-testbed up`.
	TopologyFile string
	// NodeName is the node of the topology this stand-in serves.
	NodeName string
	// Kubeconfig defaults to the topology's admin kubeconfig.
	Kubeconfig string
	// Images maps image patterns to binaries: "pattern=binary". A pattern
	// is a path.Match glob against the full image reference ("repo:*"); a
	// pattern without tag or digest matches the repository with any tag.
	// A relative binary is looked up in BinDir.
	Images []string
	// BinDir holds the project's binaries; default: the directory of this
	// executable.
	BinDir string
	// EchoCommand runs the built-in echo server; default: this executable
	// with the argument "echo".
	EchoCommand []string
	// StateDir defaults to the topology's state dir; per-pod state lives in
	// <StateDir>/nodes/<node>/pods.
	StateDir string
	// Nsenter is the nsenter binary that puts containers into their netns.
	Nsenter string
	// PodNetNSPrefix starts every pod network namespace's name; the rest is
	// "<node>-<first 8 hex of the pod UID>".
	PodNetNSPrefix string

	HeartbeatInterval time.Duration
	LeaseDuration     time.Duration
	// RestartBackoff is the first delay before a crashed container restarts;
	// it doubles up to MaxRestartBackoff.
	RestartBackoff    time.Duration
	MaxRestartBackoff time.Duration

	// Capacity of the Node.
	CPU    string
	Memory string
	Pods   string
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{
		TopologyFile:      "/run/directlb-testbed/topology.json",
		Images:            append([]string{}, DefaultImages...),
		Nsenter:           "nsenter",
		PodNetNSPrefix:    testbed.NamePrefix + "pod-",
		HeartbeatInterval: 10 * time.Second,
		LeaseDuration:     40 * time.Second,
		RestartBackoff:    time.Second,
		MaxRestartBackoff: 30 * time.Second,
		CPU:               "4",
		Memory:            "8Gi",
		Pods:              "110",
	}
}

// BindFlags binds the configuration to flags.
func (c *Config) BindFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.TopologyFile, "topology", c.TopologyFile, "topology.json written by dlb-testbed up")
	fs.StringVar(&c.NodeName, "node", c.NodeName, "name of the node to serve (e.g. node-1)")
	fs.StringVar(&c.Kubeconfig, "kubeconfig", c.Kubeconfig, "kubeconfig (default: the topology's admin kubeconfig)")
	fs.StringSliceVar(&c.Images, "images", c.Images, "image map, pattern=binary,...; unmapped images run the echo server")
	fs.StringVar(&c.BinDir, "bin-dir", c.BinDir, "directory of the project's binaries (default: this executable's directory)")
	fs.StringSliceVar(&c.EchoCommand, "echo-command", c.EchoCommand, "command of the built-in echo server (default: this executable, echo)")
	fs.StringVar(&c.StateDir, "state-dir", c.StateDir, "state dir (default: the topology's)")
	fs.StringVar(&c.Nsenter, "nsenter", c.Nsenter, "nsenter binary")
	fs.StringVar(&c.PodNetNSPrefix, "pod-netns-prefix", c.PodNetNSPrefix, "prefix of pod network namespace names (<prefix><node>-<uid8>)")
	fs.DurationVar(&c.HeartbeatInterval, "heartbeat-interval", c.HeartbeatInterval, "how often the Lease is renewed and the Node's Ready condition refreshed")
	fs.DurationVar(&c.LeaseDuration, "lease-duration", c.LeaseDuration, "the Lease's duration")
	fs.DurationVar(&c.RestartBackoff, "restart-backoff", c.RestartBackoff, "first delay before restarting a container that exited")
	fs.DurationVar(&c.MaxRestartBackoff, "max-restart-backoff", c.MaxRestartBackoff, "longest delay before restarting a container")
	fs.StringVar(&c.CPU, "cpu", c.CPU, "the Node's cpu capacity")
	fs.StringVar(&c.Memory, "memory", c.Memory, "the Node's memory capacity")
	fs.StringVar(&c.Pods, "pods", c.Pods, "the Node's pod capacity")
}

// Validate checks the configuration.
func (c *Config) Validate() error {
	if c.TopologyFile == "" {
		return errors.New("--topology is required")
	}
	if c.NodeName == "" {
		return errors.New("--node is required")
	}
	if _, err := ParseImageMap(c.Images); err != nil {
		return err
	}
	if c.PodNetNSPrefix == "" {
		return errors.New("--pod-netns-prefix is empty")
	}
	if c.HeartbeatInterval <= 0 || c.LeaseDuration <= c.HeartbeatInterval {
		return fmt.Errorf("lease duration %s must exceed heartbeat interval %s", c.LeaseDuration, c.HeartbeatInterval)
	}
	if c.RestartBackoff <= 0 || c.MaxRestartBackoff < c.RestartBackoff {
		return fmt.Errorf("restart backoff %s..%s is not a range", c.RestartBackoff, c.MaxRestartBackoff)
	}
	return nil
}

// complete fills the defaults that depend on the topology or the executable.
func (c *Config) complete(topo *testbed.Topology) error {
	if c.Kubeconfig == "" {
		c.Kubeconfig = topo.Kubeconfig
	}
	if c.StateDir == "" {
		c.StateDir = topo.StateDir
	}
	if c.BinDir == "" || len(c.EchoCommand) == 0 {
		self, err := os.Executable()
		if err != nil {
			return fmt.Errorf("find own executable: %w", err)
		}
		if c.BinDir == "" {
			c.BinDir = filepath.Dir(self)
		}
		if len(c.EchoCommand) == 0 {
			c.EchoCommand = []string{self, "echo"}
		}
	}
	return nil
}

// ImageRule maps an image pattern to a binary.
type ImageRule struct {
	Pattern string
	Binary  string
}

// ImageMap maps images to binaries; the first matching rule wins.
type ImageMap []ImageRule

// ParseImageMap parses "pattern=binary" entries.
func ParseImageMap(entries []string) (ImageMap, error) {
	var m ImageMap
	for _, e := range entries {
		e = strings.TrimSpace(e)
		if e == "" {
			continue
		}
		pat, bin, ok := strings.Cut(e, "=")
		if !ok || pat == "" || bin == "" {
			return nil, fmt.Errorf("image map entry %q: want pattern=binary", e)
		}
		if _, err := path.Match(pat, ""); err != nil {
			return nil, fmt.Errorf("image map entry %q: %w", e, err)
		}
		m = append(m, ImageRule{Pattern: pat, Binary: bin})
	}
	return m, nil
}

// Lookup returns the binary an image maps to, or "" for the echo server.
func (m ImageMap) Lookup(image string) string {
	repo := imageRepo(image)
	for _, r := range m {
		if ok, _ := path.Match(r.Pattern, image); ok {
			return r.Binary
		}
		if !strings.ContainsAny(r.Pattern, ":@") || strings.HasSuffix(r.Pattern, ":*") {
			p := strings.TrimSuffix(r.Pattern, ":*")
			if ok, _ := path.Match(p, repo); ok {
				return r.Binary
			}
		}
	}
	return ""
}

// imageRepo strips the tag and digest from an image reference.
func imageRepo(image string) string {
	if i := strings.Index(image, "@"); i >= 0 {
		image = image[:i]
	}
	if i := strings.LastIndex(image, ":"); i > strings.LastIndex(image, "/") {
		image = image[:i]
	}
	return image
}

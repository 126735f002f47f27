// Package install puts directlb-cni on a node the way CNI plugins install
// themselves from a DaemonSet's init container: the binary into the host's
// CNI bin directory, the conflist into its CNI conf directory (where the
// runtime picks it up), and, when the pod has an access key in its
// environment, a credentials file for the plugin. Every file is written to
// a temporary name and renamed, so the runtime never reads half of one,
// and left alone when it already has the content.
package install

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/directlb/directlb/pkg/cni"
)

// Config is the install step's flags.
type Config struct {
	BinDir   string
	ConfDir  string
	ConfName string
	// NetworkName is the conflist's network name.
	NetworkName string
	// CNIVersion is the conflist's cniVersion.
	CNIVersion string
	// Source is the plugin binary to copy; empty: this executable.
	Source string
	// InstanceID, or NodeName: the instance ID is the last segment of
	// the Node's spec.providerID (as node-agent's --eni-instance-id).
	InstanceID string
	NodeName   string
	// FirstENILabel, with NodeName, is a Node label whose value, when the
	// Node has it, is firstENI instead of Plugin.FirstENI.
	FirstENILabel string
	// APIServer is how NodeName is read.
	APIServer APIServer
	// CredentialsFile, when set, is written with $AWS_ACCESS_KEY_ID,
	// $AWS_SECRET_ACCESS_KEY (and $AWS_SESSION_TOKEN) and becomes the
	// plugin's aws.sharedCredentialsFile.
	CredentialsFile string
	// ChainPortmap appends the reference portmap plugin (hostPort) to
	// the conflist; it must be in BinDir.
	ChainPortmap bool
	// Plugin is the plugin's own settings; InstanceID and
	// AWS.SharedCredentialsFile are filled in by Run.
	Plugin cni.Settings

	warmIPTarget int
	cloudTimeout time.Duration
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{
		BinDir:      "/opt/cni/bin",
		ConfDir:     "/etc/cni/net.d",
		ConfName:    "10-directlb.conflist",
		NetworkName: "directlb",
		CNIVersion:  "1.1.0",
		APIServer:   DefaultAPIServer(),
		Plugin: cni.Settings{
			AWS:      cni.AWS{Region: "us-east-1", MaxAttempts: cni.DefaultMaxAttempts},
			DataDir:  cni.DefaultDataDir,
			LogFile:  cni.DefaultLogFile,
			LogLevel: cni.DefaultLogLevel,
		},
		warmIPTarget: cni.DefaultWarmIPTarget,
		cloudTimeout: cni.DefaultCloudTimeout,
	}
}

// BindFlags binds the flags of `directlb-cni install`.
func (c *Config) BindFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.BinDir, "bin-dir", c.BinDir, "host CNI bin directory the plugin binary is copied into")
	fs.StringVar(&c.ConfDir, "conf-dir", c.ConfDir, "host CNI conf directory the conflist is written into")
	fs.StringVar(&c.ConfName, "conf-name", c.ConfName, "file name of the conflist (the runtime uses the first in name order)")
	fs.StringVar(&c.NetworkName, "network-name", c.NetworkName, "the conflist's network name")
	fs.StringVar(&c.CNIVersion, "cni-version", c.CNIVersion, "the conflist's cniVersion (1.1.0 enables STATUS and GC)")
	fs.StringVar(&c.Source, "source", c.Source, "plugin binary to copy; empty: this executable")
	fs.StringVar(&c.InstanceID, "instance-id", c.InstanceID, "EC2 instance ID of this node; or --node-name")
	fs.StringVar(&c.NodeName, "node-name", c.NodeName, "read the instance ID from this Node's spec.providerID (last segment), through the apiserver")
	fs.StringVar(&c.FirstENILabel, "first-eni-label", c.FirstENILabel, "with --node-name: a Node label whose value, when present, is used as --first-eni")
	fs.BoolVar(&c.ChainPortmap, "chain-portmap", c.ChainPortmap, "chain the reference portmap plugin after directlb-cni, for hostPort (it must be in --bin-dir)")
	c.APIServer.BindFlags(fs)
	fs.StringVar(&c.CredentialsFile, "credentials-file", c.CredentialsFile, "write $AWS_ACCESS_KEY_ID and $AWS_SECRET_ACCESS_KEY to this host file (0600) and point the plugin at it; empty: the plugin uses the SDK's default chain (the instance role)")
	fs.StringVar(&c.Plugin.AWS.Endpoint, "aws-endpoint", c.Plugin.AWS.Endpoint, "EC2 endpoint override, e.g. http://10.100.0.3:4566 for localcloud; empty: AWS")
	fs.StringVar(&c.Plugin.AWS.Region, "aws-region", c.Plugin.AWS.Region, "AWS region")
	fs.IntVar(&c.Plugin.AWS.MaxAttempts, "aws-max-attempts", c.Plugin.AWS.MaxAttempts, "attempts per EC2 call")
	fs.StringVar(&c.Plugin.DataDir, "data-dir", c.Plugin.DataDir, "host directory of the plugin's address pool")
	fs.IntVar(&c.warmIPTarget, "warm-ip-target", c.warmIPTarget, "free addresses each ENI in use keeps assigned (0: an address leaves the cloud with its pod)")
	fs.IntVar(&c.Plugin.FirstENI, "first-eni", c.Plugin.FirstENI, "device index of the ENI that wins ties when a workload's pods are spread over the ENIs")
	fs.StringVar(&c.Plugin.LogFile, "log-file", c.Plugin.LogFile, "host file the plugin logs to")
	fs.StringVar(&c.Plugin.LogLevel, "log-level", c.Plugin.LogLevel, "plugin log level: debug, info, warn or error")
	fs.DurationVar(&c.cloudTimeout, "cloud-timeout", c.cloudTimeout, "bound of one EC2 call, retries included")
}

// settings are the plugin's settings with the flag-only ones filled in.
func (c *Config) settings() cni.Settings {
	s := c.Plugin
	// The flags' values, unless a caller set the plugin's own (the test
	// bed writes its conflist through Conflist).
	if s.WarmIPTarget == nil {
		w := c.warmIPTarget
		s.WarmIPTarget = &w
	}
	if s.CloudTimeout.Duration == 0 {
		s.CloudTimeout = cni.Duration{Duration: c.cloudTimeout}
	}
	return s
}

// Validate reports every invalid flag; each message names its flag.
func (c *Config) Validate() error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	for flag, dir := range map[string]string{"--bin-dir": c.BinDir, "--conf-dir": c.ConfDir} {
		if !filepath.IsAbs(dir) {
			bad("%s %q: must be an absolute path", flag, dir)
		}
	}
	if c.ConfName == "" || strings.Contains(c.ConfName, "/") || !strings.HasSuffix(c.ConfName, ".conflist") {
		bad("--conf-name %q: must be a file name ending in .conflist", c.ConfName)
	}
	if c.NetworkName == "" {
		bad("--network-name: must not be empty")
	}
	if !slices.Contains(cni.Versions.SupportedVersions(), c.CNIVersion) {
		bad("--cni-version %q: want one of %v", c.CNIVersion, cni.Versions.SupportedVersions())
	}
	if (c.InstanceID == "") == (c.NodeName == "") {
		bad("--instance-id %q, --node-name %q: set exactly one", c.InstanceID, c.NodeName)
	}
	if c.FirstENILabel != "" && c.NodeName == "" {
		bad("--first-eni-label: needs --node-name")
	}
	if c.CredentialsFile != "" && !filepath.IsAbs(c.CredentialsFile) {
		bad("--credentials-file %q: must be an absolute path", c.CredentialsFile)
	}
	errs = append(errs, c.APIServer.Validate())
	p := c.settings()
	if p.InstanceID == "" {
		p.InstanceID = "i-validate" // filled in by Run
	}
	if err := p.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("plugin settings (the flags of the same names): %w", err))
	}
	return errors.Join(errs...)
}

// Run installs the plugin. getenv reads the access key for
// CredentialsFile.
func Run(ctx context.Context, c Config, getenv func(string) string) error {
	if err := c.Validate(); err != nil {
		return err
	}
	if err := c.resolveNode(ctx); err != nil {
		return err
	}
	if c.CredentialsFile != "" {
		if err := writeCredentials(c.CredentialsFile, getenv); err != nil {
			return err
		}
		c.Plugin.AWS.SharedCredentialsFile = c.CredentialsFile
	}
	src := c.Source
	if src == "" {
		var err error
		if src, err = os.Executable(); err != nil {
			return fmt.Errorf("find this executable: %w", err)
		}
	}
	bin, err := os.ReadFile(src)
	if err != nil {
		return fmt.Errorf("read plugin binary: %w", err)
	}
	for _, d := range []string{c.BinDir, c.ConfDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("create %s: %w", d, err)
		}
	}
	if err := writeFile(filepath.Join(c.BinDir, cni.Type), bin, 0o755); err != nil {
		return err
	}
	if c.ChainPortmap {
		if _, err := os.Stat(filepath.Join(c.BinDir, "portmap")); err != nil {
			return fmt.Errorf("--chain-portmap: the portmap plugin must be in --bin-dir: %w", err)
		}
	}
	conf, err := Conflist(c)
	if err != nil {
		return err
	}
	return writeFile(filepath.Join(c.ConfDir, c.ConfName), conf, 0o644)
}

// resolveNode fills in the instance ID (and firstENI) from the Node.
func (c *Config) resolveNode(ctx context.Context) error {
	c.Plugin.InstanceID = c.InstanceID
	if c.NodeName == "" {
		return nil
	}
	n, err := c.APIServer.Node(ctx, c.NodeName)
	if err != nil {
		return err
	}
	if c.Plugin.InstanceID = instanceIDFromProviderID(n.Spec.ProviderID); c.Plugin.InstanceID == "" {
		return fmt.Errorf("--node-name %s: the Node has no spec.providerID to take the instance ID from; pass --instance-id", c.NodeName)
	}
	if v, ok := n.Metadata.Labels[c.FirstENILabel]; ok && c.FirstENILabel != "" {
		i, err := strconv.Atoi(v)
		if err != nil || i < 0 {
			return fmt.Errorf("--first-eni-label %s: Node %s has %q, want a device index", c.FirstENILabel, c.NodeName, v)
		}
		c.Plugin.FirstENI = i
	}
	return nil
}

// instanceIDFromProviderID is the last segment of a providerID
// (aws:///us-east-1a/i-0abc → i-0abc), as node-agent reads it.
func instanceIDFromProviderID(p string) string {
	return p[strings.LastIndex(p, "/")+1:]
}

// Conflist is the conflist Run writes: directlb-cni with c's settings,
// then, with ChainPortmap, portmap (hostPort, with SNAT for hairpin).
func Conflist(c Config) ([]byte, error) {
	type plugin struct {
		Type string `json:"type"`
		cni.Settings
	}
	plugins := []any{plugin{Type: cni.Type, Settings: c.settings()}}
	if c.ChainPortmap {
		plugins = append(plugins, map[string]any{"type": "portmap", "capabilities": map[string]bool{"portMappings": true}, "snat": true})
	}
	list := struct {
		CNIVersion string `json:"cniVersion"`
		Name       string `json:"name"`
		Plugins    []any  `json:"plugins"`
	}{CNIVersion: c.CNIVersion, Name: c.NetworkName, Plugins: plugins}
	b, err := json.MarshalIndent(list, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode conflist: %w", err)
	}
	return append(b, '\n'), nil
}

// writeCredentials writes the access key in the environment as a shared
// credentials file.
func writeCredentials(path string, getenv func(string) string) error {
	id, secret := getenv("AWS_ACCESS_KEY_ID"), getenv("AWS_SECRET_ACCESS_KEY")
	if id == "" || secret == "" {
		return fmt.Errorf("--credentials-file %s: needs $AWS_ACCESS_KEY_ID and $AWS_SECRET_ACCESS_KEY", path)
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n", id, secret)
	if tok := getenv("AWS_SESSION_TOKEN"); tok != "" {
		fmt.Fprintf(&b, "aws_session_token = %s\n", tok)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("--credentials-file %s: %w", path, err)
	}
	return writeFile(path, b.Bytes(), 0o600)
}

// writeFile writes data to path through a hidden temporary file in the
// same directory and a rename; a file that already has data and mode is
// left alone, so the runtime's watch on the conf directory sees nothing.
func writeFile(path string, data []byte, mode os.FileMode) error {
	if st, err := os.Stat(path); err == nil && st.Mode().Perm() == mode {
		if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, data) {
			return nil
		}
	}
	dir, base := filepath.Split(path)
	tmp, err := os.CreateTemp(dir, "."+base+".*.tmp") // not *.conflist: the runtime ignores it
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Chmod(mode)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

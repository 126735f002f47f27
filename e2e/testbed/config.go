package testbed

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/pflag"
	"go.uber.org/zap"
)

// Fixed names and paths of the test bed. They are part of the contract in
// docs/testbed.md: 'down' finds what 'up' made by these names alone, so it
// works after a crash of 'up' or of a test process.
const (
	DefaultStateDir = "/run/directlb-testbed"
	// CgroupRoot is the cgroup v2 directory that holds every process the
	// test bed starts.
	CgroupRoot = "/sys/fs/cgroup/unified/directlb"
	// NamePrefix starts the name of every network namespace and host link
	// the test bed makes.
	NamePrefix = "dlb-"
	// BPFPinPrefix starts every bpffs path the test bed's programs pin.
	BPFPinPrefix = "/sys/fs/bpf/directlb"

	VPCNetNS   = "dlb-vpc"
	CloudNetNS = "dlb-cloud"
	HostLink   = "dlb-host"
	BridgeName = "br0"
)

// Config says how to bring the test bed up.
type Config struct {
	// StateDir holds topology.json, the kubeconfig, certificates, etcd's
	// data (on a tmpfs), logs and pid files.
	StateDir string
	// BinDir holds kube-apiserver, kube-controller-manager, kube-scheduler,
	// kubectl, dlb-testbed and (optionally) localcloud.
	BinDir string
	// EtcdBinary is the etcd server to run.
	EtcdBinary string
	// Nodes is the number of nodes (1..200).
	Nodes int
	// SourceDestCheck makes the VPC drop frames whose IPv4 source is not
	// owned by the port they came in on.
	SourceDestCheck bool
	// Kubelets starts a kubelet per node and waits for the nodes to be
	// Ready.
	Kubelets bool
	// KubeletArgs are extra arguments for every kubelet.
	KubeletArgs []string
	// RuncBinary is the OCI runtime containerd runs containers with.
	RuncBinary string
	// CNIPluginDir holds the reference CNI plugins (Debian's
	// containernetworking-plugins) the node's CNI dir links to.
	CNIPluginDir string
	// Images are OCI archives imported into every node's containerd.
	Images []string
	// KubeProxy runs kube-proxy (nftables mode) on every node: the control
	// of the conformance runs; a bed with node-agent leaves it off.
	KubeProxy bool
	// ClusterDNS deploys CoreDNS as kube-system/kube-dns at ClusterDNS
	// (needs the coredns image); without kubelets there is nothing to run
	// it and it is left out.
	ClusterDNS bool
	// APIServerArgs and ControllerManagerArgs are extra arguments for
	// kube-apiserver and kube-controller-manager (e.g. feature gates).
	APIServerArgs         []string
	ControllerManagerArgs []string
	// Localcloud starts BinDir/localcloud inside the cloud namespace.
	Localcloud bool
	// Timeout bounds the whole bring-up.
	Timeout time.Duration
	// Verbosity is the klog -v level of the Kubernetes daemons.
	Verbosity int

	// Log receives progress; nil means no logs.
	Log *zap.Logger `json:"-"`
}

// DefaultConfig returns the configuration 'make up' uses.
func DefaultConfig() Config {
	return Config{
		StateDir:     DefaultStateDir,
		BinDir:       "bin",
		EtcdBinary:   "/usr/bin/etcd",
		Nodes:        3,
		Kubelets:     true,
		ClusterDNS:   true,
		Localcloud:   true,
		RuncBinary:   "/usr/sbin/runc",
		CNIPluginDir: "/usr/lib/cni",
		Timeout:      3 * time.Minute,
		Verbosity:    1,
	}
}

// BindFlags registers the configuration's flags on fs.
func (c *Config) BindFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.StateDir, "state-dir", c.StateDir, "directory for topology.json, kubeconfig, certificates, logs and pid files")
	fs.StringVar(&c.BinDir, "bin-dir", c.BinDir, "directory with kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, dlb-testbed and localcloud")
	fs.StringVar(&c.EtcdBinary, "etcd", c.EtcdBinary, "etcd server binary")
	fs.IntVar(&c.Nodes, "nodes", c.Nodes, "number of nodes")
	fs.BoolVar(&c.SourceDestCheck, "source-dest-check", c.SourceDestCheck, "drop VPC frames whose IPv4 source is not owned by the ENI they came from")
	fs.BoolVar(&c.Kubelets, "kubelets", c.Kubelets, "start a kubelet per node and wait for the nodes to be Ready")
	fs.StringArrayVar(&c.KubeletArgs, "kubelet-arg", c.KubeletArgs, "extra argument for every kubelet (repeatable)")
	fs.StringVar(&c.RuncBinary, "runc", c.RuncBinary, "OCI runtime for containerd")
	fs.StringVar(&c.CNIPluginDir, "cni-plugin-dir", c.CNIPluginDir, "directory of the reference CNI plugins")
	fs.StringArrayVar(&c.Images, "image", c.Images, "OCI image archive to import into every node (repeatable; default: <bin-dir>/images/*.oci.tar)")
	fs.BoolVar(&c.KubeProxy, "kube-proxy", c.KubeProxy, "run kube-proxy (nftables mode) on every node, as the conformance runs' control does")
	fs.BoolVar(&c.ClusterDNS, "cluster-dns", c.ClusterDNS, "deploy CoreDNS as kube-system/kube-dns at "+ClusterDNS.String()+" (with --kubelets)")
	fs.StringArrayVar(&c.APIServerArgs, "apiserver-arg", c.APIServerArgs, "extra argument for kube-apiserver (repeatable)")
	fs.StringArrayVar(&c.ControllerManagerArgs, "controller-manager-arg", c.ControllerManagerArgs, "extra argument for kube-controller-manager (repeatable)")
	fs.BoolVar(&c.Localcloud, "localcloud", c.Localcloud, "start bin/localcloud in the cloud namespace")
	fs.DurationVar(&c.Timeout, "timeout", c.Timeout, "bound on the whole bring-up")
	fs.IntVar(&c.Verbosity, "v", c.Verbosity, "klog verbosity of the Kubernetes daemons")
}

// Validate checks the configuration and makes its paths absolute.
func (c *Config) Validate() error {
	var errs []error
	if c.Nodes < 1 || c.Nodes > 200 {
		errs = append(errs, fmt.Errorf("nodes %d: must be in 1..200", c.Nodes))
	}
	if c.Timeout <= 0 {
		errs = append(errs, fmt.Errorf("timeout %s: must be positive", c.Timeout))
	}
	if c.StateDir == "" || c.StateDir == "/" {
		errs = append(errs, fmt.Errorf("state dir %q: must be a dedicated directory", c.StateDir))
	}
	for _, p := range []*string{&c.StateDir, &c.BinDir} {
		abs, err := filepath.Abs(*p)
		if err != nil {
			errs = append(errs, fmt.Errorf("path %q: %w", *p, err))
			continue
		}
		*p = abs
	}
	if c.Kubelets && !c.Localcloud {
		errs = append(errs, errors.New("kubelets need localcloud (--localcloud): directlb-cni takes the pods' addresses from its EC2 API"))
	}
	if c.KubeProxy && !c.Kubelets {
		errs = append(errs, errors.New("--kube-proxy needs the nodes' kubelets (--kubelets)"))
	}
	if c.EtcdBinary == "" {
		errs = append(errs, errors.New("etcd binary: must be set"))
	}
	return errors.Join(errs...)
}

// CheckBinaries reports which binaries the configuration needs and lacks.
func (c *Config) CheckBinaries() error {
	need := []string{c.EtcdBinary}
	for _, b := range []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler"} {
		need = append(need, filepath.Join(c.BinDir, b))
	}
	if c.Kubelets {
		for _, b := range []string{"kubelet", "containerd", "containerd-shim-runc-v2", "ctr", "directlb-cni"} {
			need = append(need, filepath.Join(c.BinDir, b))
		}
		need = append(need, c.RuncBinary)
	}
	if c.KubeProxy {
		need = append(need, filepath.Join(c.BinDir, "kube-proxy"))
	}
	if c.Localcloud {
		need = append(need, filepath.Join(c.BinDir, "localcloud"))
	}
	var errs []error
	for _, p := range need {
		if st, err := os.Stat(p); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
			errs = append(errs, fmt.Errorf("binary %s: missing or not executable (make tools build)", p))
		}
	}
	return errors.Join(errs...)
}

func (c *Config) log() *zap.Logger {
	if c.Log == nil {
		return zap.NewNop()
	}
	return c.Log
}

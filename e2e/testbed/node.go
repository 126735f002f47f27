package testbed

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kubeletv1beta1 "k8s.io/kubelet/config/v1beta1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"
)

// The node's runtime: a real kubelet and containerd per node, both in the
// node's network namespace (docs/testbed.md, "Nodes").

// PauseImage is the sandbox image containerd pins; the image builder makes
// it (the tag the pinned kubelet and e2e framework expect).
const PauseImage = "registry.k8s.io/pause:3.10.2"

// ClusterDNS is the address the kubelet writes into pods' resolv.conf: the
// tenth of the Service range, as kubeadm picks it.
var ClusterDNS = nthAddr(ServiceCIDR.Masked().Addr(), 10)

func nthAddr(a netip.Addr, n int) netip.Addr {
	for range n {
		a = a.Next()
	}
	return a
}

// kubeletSysctls are the host-wide sysctls the kubelet sets at start
// (pkg/kubelet/cm setupKernelTunables) with the values it wants. The bed
// runs the kubelet in its own mount namespace with files holding these
// values bind-mounted over the /proc/sys paths, so the host keeps its own.
var kubeletSysctls = map[string]string{
	"vm/overcommit_memory":      "1",
	"vm/panic_on_oom":           "0",
	"kernel/panic":              "10",
	"kernel/panic_on_oops":      "1",
	"kernel/keys/root_maxkeys":  "1000000",
	"kernel/keys/root_maxbytes": "25000000",
}

// nodeDir is <state dir>/nodes/<node>: everything of one node's runtime.
func nodeDir(t *Topology, n Node) string { return filepath.Join(t.StateDir, "nodes", n.Name) }

// NodeRuntime are the paths of a node's kubelet and containerd.
type NodeRuntime struct {
	// ContainerdSocket is containerd's gRPC socket (ctr --address).
	ContainerdSocket string `json:"containerdSocket"`
	// KubeletRootDir is the kubelet's --root-dir (pods' volumes), a shared
	// bind mount so that mounts the kubelet makes reach containerd.
	KubeletRootDir string `json:"kubeletRootDir"`
	// PodLogsDir holds the containers' logs (kubectl logs reads them).
	PodLogsDir string `json:"podLogsDir"`
	// CNIConfDir and CNIBinDir are containerd's CNI directories.
	CNIConfDir string `json:"cniConfDir"`
	CNIBinDir  string `json:"cniBinDir"`
	// CgroupRoot is the kubelet's cgroupRoot (the same path in every
	// hierarchy; under CgroupRoot's v2 directory it is Node.Cgroup).
	CgroupRoot string `json:"cgroupRoot"`
}

// planRuntime fills n.Runtime.
func planRuntime(t *Topology, n *Node) {
	d := filepath.Join(t.StateDir, "nodes", n.Name)
	n.Runtime = &NodeRuntime{
		ContainerdSocket: filepath.Join(d, "containerd", "containerd.sock"),
		KubeletRootDir:   filepath.Join(d, "kubelet"),
		PodLogsDir:       filepath.Join(d, "pod-logs"),
		CNIConfDir:       filepath.Join(d, "cni", "net.d"),
		CNIBinDir:        filepath.Join(d, "cni", "bin"),
		CgroupRoot:       cgroupRel(n.Cgroup),
	}
}

// containerdConfig is containerd's config.toml for node n: its own root,
// state and socket; runc with its own root; CNI from the node's dirs; the
// locally imported pause image; NRI off; oom_score_adj restricted (root
// here lacks CAP_SYS_RESOURCE; runc fails every sandbox otherwise).
func containerdConfig(cfg Config, t *Topology, n Node) string {
	d := filepath.Join(nodeDir(t, n), "containerd")
	r := n.Runtime
	return fmt.Sprintf(`version = 4
root = %q
state = %q

[plugins]
  [plugins.'io.containerd.server.v1.grpc']
    address = %q
  [plugins.'io.containerd.server.v1.ttrpc']
    address = %q
  # Not the host's /opt/containerd and /run/containerd/s.
  [plugins.'io.containerd.internal.v1.opt']
    path = %q
  [plugins.'io.containerd.shim.v1.manager']
    socket_dir = %q

  [plugins.'io.containerd.cri.v1.images']
    snapshotter = 'overlayfs'
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = %q

  [plugins.'io.containerd.cri.v1.runtime']
    restrict_oom_score_adj = true
    netns_mounts_under_state_dir = true
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = 'runc'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = 'io.containerd.runc.v2'
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = %q
          Root = %q
          SystemdCgroup = false
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = [%q]
      conf_dir = %q
      max_conf_num = 1
      use_internal_loopback = true

  [plugins.'io.containerd.grpc.v1.cri']
    stream_server_address = '127.0.0.1'
    stream_server_port = '0'

  [plugins.'io.containerd.nri.v1.nri']
    disable = true
`,
		filepath.Join(d, "root"), filepath.Join(d, "state"),
		r.ContainerdSocket, r.ContainerdSocket+".ttrpc",
		filepath.Join(d, "opt"), filepath.Join(nodeDir(t, n), "s"),
		PauseImage,
		cfg.RuncBinary, filepath.Join(d, "runc"),
		r.CNIBinDir, r.CNIConfDir)
}

// kubeletConfig is the node's KubeletConfiguration.
func kubeletConfig(t *Topology, n Node) ([]byte, error) {
	p := pki{dir: filepath.Join(t.StateDir, "pki")}
	addr := n.ENIs[0].Addr.Addr().String()
	kc := kubeletv1beta1.KubeletConfiguration{
		TypeMeta:           metav1.TypeMeta{APIVersion: "kubelet.config.k8s.io/v1beta1", Kind: "KubeletConfiguration"},
		Address:            addr,
		Port:               10250,
		ReadOnlyPort:       0,
		HealthzBindAddress: "127.0.0.1",
		HealthzPort:        ptr.To[int32](10248),
		ProviderID:         "directlb-testbed:///" + n.Name,
		// Its own serving certificate from the bed's CA (the default is a
		// self-signed pair in the host-wide /var/lib/kubelet/pki).
		TLSCertFile:              p.path(nodeServingCert(n.Name)),
		TLSPrivateKeyFile:        p.path(nodeServingKey(n.Name)),
		VolumePluginDir:          filepath.Join(nodeDir(t, n), "volume-plugins"),
		ContainerRuntimeEndpoint: "unix://" + n.Runtime.ContainerdSocket,
		PodLogsDir:               n.Runtime.PodLogsDir,
		CgroupDriver:             "cgroupfs",
		CgroupRoot:               n.Runtime.CgroupRoot,
		CgroupsPerQOS:            ptr.To(true),
		FailCgroupV1:             ptr.To(false),
		FailSwapOn:               ptr.To(false),
		MakeIPTablesUtilChains:   ptr.To(false),
		ClusterDomain:            "cluster.local",
		ClusterDNS:               []string{ClusterDNS.String()},
		ResolverConfig:           ptr.To(filepath.Join(nodeDir(t, n), "resolv.conf")),
		Authentication: kubeletv1beta1.KubeletAuthentication{
			X509:      kubeletv1beta1.KubeletX509Authentication{ClientCAFile: p.path(caCert)},
			Webhook:   kubeletv1beta1.KubeletWebhookAuthentication{Enabled: ptr.To(true)},
			Anonymous: kubeletv1beta1.KubeletAnonymousAuthentication{Enabled: ptr.To(false)},
		},
		Authorization: kubeletv1beta1.KubeletAuthorization{Mode: kubeletv1beta1.KubeletAuthorizationModeWebhook},
		// tmpfs-backed: the defaults (10% / 15% free) would evict at once
		// on a busy machine; a test bed evicts only when nearly full.
		EvictionHard: map[string]string{
			"memory.available":  "100Mi",
			"nodefs.available":  "1%",
			"imagefs.available": "1%",
			"nodefs.inodesFree": "1%",
		},
		ImageGCHighThresholdPercent: ptr.To[int32](100),
		ImageGCLowThresholdPercent:  ptr.To[int32](99),
		SerializeImagePulls:         ptr.To(false),
		NodeStatusUpdateFrequency:   metav1.Duration{Duration: 10e9},
		// Pods see changes of their ServiceAccount token and ConfigMaps
		// quickly, and the node reports its status at once.
		SyncFrequency:                 metav1.Duration{Duration: 10e9},
		FileCheckFrequency:            metav1.Duration{Duration: 10e9},
		StaticPodPath:                 "",
		MaxPods:                       110,
		LocalStorageCapacityIsolation: ptr.To(true),
	}
	b, err := yaml.Marshal(kc)
	if err != nil {
		return nil, fmt.Errorf("kubelet config for %s: %w", n.Name, err)
	}
	return b, nil
}

// prepareNode writes node n's configuration, certificates' kubeconfig,
// files for the sysctls it sets and CNI dirs, makes its kubelet root a shared bind
// mount and its cgroupRoot in every cgroup v1 hierarchy.
func prepareNode(cfg Config, t *Topology, n Node) error {
	d := nodeDir(t, n)
	r := n.Runtime
	for _, dir := range []string{d, r.KubeletRootDir, r.PodLogsDir, r.CNIConfDir, r.CNIBinDir, filepath.Join(d, "containerd"), filepath.Join(d, "sysctl"),
		filepath.Join(d, "device-plugins"), filepath.Join(d, "log-containers"), kubeletHostDevicePlugins, kubeletHostContainerLogs} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("node %s: %w", n.Name, err)
		}
	}
	kc, err := kubeletConfig(t, n)
	if err != nil {
		return err
	}
	files := map[string][]byte{
		filepath.Join(d, "kubelet-config.yaml"):       kc,
		filepath.Join(d, "containerd", "config.toml"): []byte(containerdConfig(cfg, t, n)),
		filepath.Join(d, "resolv.conf"):               []byte(fmt.Sprintf("nameserver %s\n", ClusterDNS)),
	}
	for name, v := range kubeletSysctls {
		files[filepath.Join(d, "sysctl", strings.ReplaceAll(name, "/", "."))] = []byte(v + "\n")
	}
	for path, b := range files {
		if err := os.WriteFile(path, b, 0o644); err != nil {
			return fmt.Errorf("node %s: %w", n.Name, err)
		}
	}
	if err := sharedBindMount(r.KubeletRootDir); err != nil {
		return fmt.Errorf("node %s: %w", n.Name, err)
	}
	return makeV1Cgroups(r.CgroupRoot)
}

// sharedBindMount makes dir a bind mount of itself with shared propagation:
// mounts made below it in another mount namespace of its peer group (the
// kubelet's) appear here too (containerd's).
func sharedBindMount(dir string) error {
	if err := unix.Mount(dir, dir, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind mount %s: %w", dir, err)
	}
	if err := unix.Mount("", dir, "", unix.MS_SHARED, ""); err != nil {
		return fmt.Errorf("make %s shared: %w", dir, err)
	}
	return nil
}

// containerd returns node n's containerd, in the node's namespace and in
// the node's runtime cgroup.
func containerdDaemon(cfg Config, t *Topology, n Node) daemon {
	return daemon{
		Name:   "containerd-" + n.Name,
		Path:   filepath.Join(cfg.BinDir, "containerd"),
		Args:   []string{"--config", filepath.Join(nodeDir(t, n), "containerd", "config.toml")},
		Env:    []string{"PATH=" + cfg.BinDir + ":" + os.Getenv("PATH")},
		Cgroup: n.KubeletCgroup,
		NetNS:  n.NetNS,
	}
}

// kubeletDaemon returns node n's kubelet: in the node's namespace, in its
// own mount namespace where the host-wide sysctls it sets are files of the
// node's (so the host keeps its values), talking to the apiserver as
// system:node:<node>.
func kubeletDaemon(cfg Config, t *Topology, n Node) daemon {
	d := nodeDir(t, n)
	var binds []string
	for name := range kubeletSysctls {
		binds = append(binds, fmt.Sprintf("mount --bind %s /proc/sys/%s", filepath.Join(d, "sysctl", strings.ReplaceAll(name, "/", ".")), name))
	}
	// Two fixed host paths every kubelet uses get a directory of the
	// node's: the device-plugin socket dir (each kubelet clears it and
	// listens on kubelet.sock there) and the /var/log/containers links.
	binds = append(binds,
		fmt.Sprintf("mount --bind %s %s", filepath.Join(d, "device-plugins"), kubeletHostDevicePlugins),
		fmt.Sprintf("mount --bind %s %s", filepath.Join(d, "log-containers"), kubeletHostContainerLogs))
	// /proc (recursively) and / private first: on a host whose mounts are
	// shared the binds would otherwise reach the host's namespace. The
	// root dir stays a peer of the host's: it is a mount of its own.
	script := "set -e; mount --make-rprivate /proc; mount --make-private /; " + strings.Join(binds, "; ") + `; exec "$@"`
	args := []string{"--mount", "--propagation", "unchanged", "--", "sh", "-c", script, "kubelet",
		filepath.Join(cfg.BinDir, "kubelet"),
		"--config=" + filepath.Join(d, "kubelet-config.yaml"),
		"--kubeconfig=" + filepath.Join(d, "kubelet.kubeconfig"),
		"--root-dir=" + n.Runtime.KubeletRootDir,
		"--hostname-override=" + n.Name,
		"--node-ip=" + n.ENIs[0].Addr.Addr().String(),
		// directlb.io/first-eni: the ENI that wins directlb-cni's ties on
		// this node (docs/cni.md), (i-1) mod 2 on node i.
		fmt.Sprintf("--node-labels=directlb.io/testbed=true,directlb.io/first-eni=%d", firstENI(t, n)),
		"--v=" + strconv.Itoa(cfg.Verbosity),
	}
	return daemon{
		Name:   "kubelet-" + n.Name,
		Path:   "unshare",
		Args:   append(args, cfg.KubeletArgs...),
		Cgroup: n.KubeletCgroup,
		NetNS:  n.NetNS,
	}
}

// firstENI is the device index of the ENI that wins directlb-cni's ties on
// node n: (i-1) mod 2 on node i, so the first pods of a workload on
// neighbouring nodes use different ENIs.
func firstENI(t *Topology, n Node) int {
	for i := range t.Nodes {
		if t.Nodes[i].Name == n.Name {
			return i % len(n.ENIs)
		}
	}
	return 0
}

// kubeletHostDevicePlugins and kubeletHostContainerLogs are paths the
// kubelet uses whatever its flags say; each node's kubelet sees its own
// directory there (kubeletDaemon). They are made, empty, on the host.
const (
	kubeletHostDevicePlugins = "/var/lib/kubelet/device-plugins"
	kubeletHostContainerLogs = "/var/log/containers"
)

// hostPathMounts are the host mounts the chart's node-agent mounts with
// mountPropagation HostToContainer, which the runtime allows only from a
// shared (or slave) mount, as systemd makes every mount on a real node.
var hostPathMounts = []string{"/sys/fs/bpf", CgroupV2Mount}

// prepareHostMounts mounts bpffs at /sys/fs/bpf if nothing is there (as a
// node's init does) and makes both host-path mounts shared. It changes
// only their propagation; 'down' leaves them, like any node's.
func prepareHostMounts() error {
	mounted, err := mountinfo.Mounted("/sys/fs/bpf")
	if err != nil {
		return fmt.Errorf("host mount /sys/fs/bpf: %w", err)
	}
	if !mounted {
		if err := unix.Mount("bpf", "/sys/fs/bpf", "bpf", 0, ""); err != nil {
			return fmt.Errorf("mount bpffs at /sys/fs/bpf: %w", err)
		}
	}
	for _, p := range hostPathMounts {
		if err := unix.Mount("", p, "", unix.MS_SHARED, ""); err != nil {
			return fmt.Errorf("make %s shared: %w", p, err)
		}
	}
	return nil
}

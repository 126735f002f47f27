package testbed

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	componentbaseconfigv1alpha1 "k8s.io/component-base/config/v1alpha1"
	kubeproxyv1alpha1 "k8s.io/kube-proxy/config/v1alpha1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/directlb/directlb/internal/namedns"
)

// kube-proxy on every node (Config.KubeProxy): the pinned kube-proxy in
// nftables mode in the node's network namespace, the referee the upstream
// conformance runs compare node-agent with (docs/conformance.md).

// kubeProxyKubeconfig is the kubeconfig every node's kube-proxy uses
// (system:kube-proxy).
func kubeProxyKubeconfig(t *Topology) string {
	return filepath.Join(t.StateDir, "kube-proxy.kubeconfig")
}

// kubeProxyConfig is node n's KubeProxyConfiguration: nftables, the node's
// name, the VPC as the cluster's address range (pods and nodes have VPC
// addresses), and every host-wide or per-namespace kernel setting left
// as it is (conntrack sizes and timeouts, oom_score_adj).
func kubeProxyConfig(t *Topology, n Node) ([]byte, error) {
	zero := &metav1.Duration{}
	c := kubeproxyv1alpha1.KubeProxyConfiguration{
		TypeMeta:           metav1.TypeMeta{APIVersion: kubeproxyv1alpha1.SchemeGroupVersion.String(), Kind: "KubeProxyConfiguration"},
		ClientConnection:   componentbaseconfigv1alpha1.ClientConnectionConfiguration{Kubeconfig: kubeProxyKubeconfig(t)},
		HostnameOverride:   n.Name,
		Mode:               "nftables",
		ClusterCIDR:        t.VPC.String(),
		HealthzBindAddress: "0.0.0.0:10256",
		MetricsBindAddress: "127.0.0.1:10249",
		OOMScoreAdj:        ptr.To[int32](0),
		Conntrack: kubeproxyv1alpha1.KubeProxyConntrackConfiguration{
			MaxPerCore:            ptr.To[int32](0),
			Min:                   ptr.To[int32](0),
			TCPEstablishedTimeout: zero,
			TCPCloseWaitTimeout:   zero,
			UDPTimeout:            *zero,
			UDPStreamTimeout:      *zero,
		},
	}
	return yaml.Marshal(c)
}

// writeKubeProxyConfig writes node n's kube-proxy configuration.
func writeKubeProxyConfig(t *Topology, n Node) error {
	b, err := kubeProxyConfig(t, n)
	if err != nil {
		return fmt.Errorf("node %s: kube-proxy config: %w", n.Name, err)
	}
	if err := os.WriteFile(filepath.Join(nodeDir(t, n), "kube-proxy.yaml"), b, 0o644); err != nil {
		return fmt.Errorf("node %s: %w", n.Name, err)
	}
	return nil
}

// kubeProxyDaemon is node n's kube-proxy, in the node's namespace and
// runtime cgroup.
func kubeProxyDaemon(cfg Config, t *Topology, n Node) daemon {
	return daemon{
		Name:   "kube-proxy-" + n.Name,
		Path:   filepath.Join(cfg.BinDir, "kube-proxy"),
		Args:   []string{"--config=" + filepath.Join(nodeDir(t, n), "kube-proxy.yaml"), "--v=" + strconv.Itoa(cfg.Verbosity)},
		Env:    []string{"PATH=" + os.Getenv("PATH")},
		Cgroup: n.KubeletCgroup,
		NetNS:  n.NetNS,
	}
}

// KubeProxy is a kube-proxy started on one node of a bed that is up
// (StartKubeProxy): the referee a test runs next to node-agent on another
// node, on the same Services.
type KubeProxy struct {
	Node Node
	// Log is its log file, <state dir>/logs/kube-proxy-<node>.log.
	Log      string
	r        *running
	stateDir string
}

// StartKubeProxy starts the pinned kube-proxy (binDir/kube-proxy) on node n
// the way --kube-proxy does at 'up' (same configuration, namespace, cgroup
// and log), and waits within ctx until it has programmed its nftables
// table and its /healthz on the node's address answers 200. The caller
// makes sure no other Service datapath serves that node.
func StartKubeProxy(ctx context.Context, t *Topology, binDir string, n Node) (*KubeProxy, error) {
	if err := writeKubeProxyConfig(t, n); err != nil {
		return nil, err
	}
	// -v=2 logs each sync and the conntrack entries it clears.
	r, err := kubeProxyDaemon(Config{BinDir: binDir, Verbosity: 2}, t, n).start(t.StateDir)
	if err != nil {
		return nil, err
	}
	k := &KubeProxy{Node: n, Log: r.logPath, r: r, stateDir: t.StateDir}
	healthz := "http://" + net.JoinHostPort(n.ENIs[0].Addr.Addr().String(), "10256") + "/healthz"
	hc := &http.Client{Timeout: time.Second}
	for {
		if err := r.check(); err != nil {
			return nil, err
		}
		if _, err := nftIn(ctx, n, "list", "table", "ip", "kube-proxy"); err == nil {
			if resp, err := hc.Get(healthz); err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					return k, nil
				}
			}
		}
		select {
		case <-ctx.Done():
			_ = k.Stop()
			return nil, fmt.Errorf("kube-proxy on %s: not ready (nftables table ip kube-proxy, %s 200): %w; last log lines:\n%s", n.Name, healthz, ctx.Err(), tail(r.logPath, 15))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Stop ends kube-proxy (SIGTERM, SIGKILL after 10 s) and deletes the
// nftables tables it leaves behind (kube-proxy keeps its rules when it
// exits; its --cleanup deletes the same tables), so the node is left as
// 'up' made it.
func (k *KubeProxy) Stop() error {
	var errs []error
	if err := syscall.Kill(k.r.pid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		errs = append(errs, fmt.Errorf("stop kube-proxy on %s: %w", k.Node.Name, err))
	}
	select {
	case <-k.r.exited:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(k.r.pid, syscall.SIGKILL)
		<-k.r.exited
		errs = append(errs, fmt.Errorf("kube-proxy on %s did not stop within 10s of SIGTERM", k.Node.Name))
	}
	_ = os.Remove(pidPath(k.stateDir, k.r.Name))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, family := range []string{"ip", "ip6"} {
		if out, err := nftIn(ctx, k.Node, "delete", "table", family, "kube-proxy"); err != nil && !strings.Contains(out, "No such file or directory") {
			errs = append(errs, fmt.Errorf("kube-proxy on %s: delete table %s kube-proxy: %w: %s", k.Node.Name, family, err, out))
		}
	}
	return errors.Join(errs...)
}

// nftIn runs nft in node n's network namespace.
func nftIn(ctx context.Context, n Node, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + namedns.Path(n.NetNS), "--", "nft"}, args...)...).CombinedOutput()
	return string(out), err
}

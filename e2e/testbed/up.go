package testbed

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/directlb/directlb/internal/namedns"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// pollInterval is how often bring-up checks readiness.
const pollInterval = 100 * time.Millisecond

// ErrAlreadyUp is returned by Up when a test bed (or what is left of one)
// exists; Down removes it.
var ErrAlreadyUp = errors.New("a test bed is already up (or left over): run 'dlb-testbed down' first")

// Up brings the test bed up: network, control plane, nodes and (if asked)
// localcloud and each node's containerd and kubelet. It returns once the apiserver is
// ready, the default ServiceAccount exists and (with kubelets) every node is
// Ready. On error, what was made stays for inspection; Down removes it.
func Up(ctx context.Context, cfg Config) (*Topology, error) {
	if err := checkUp(cfg); err != nil {
		return nil, err
	}
	log := cfg.log()
	begin := time.Now()
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()

	t := Plan(cfg)
	if err := makeState(t); err != nil {
		return nil, err
	}
	if err := pkiAndNetwork(ctx, cfg, t); err != nil {
		return t, err
	}
	log.Info("network and certificates ready", zap.Duration("took", time.Since(begin)))

	// etcd and the apiserver first; the controller manager and the
	// scheduler once the apiserver is ready (the controller manager exits
	// if it cannot read its delegated authentication config at start).
	cp := controlPlane(cfg, t)
	daemons, err := startFirst(cfg, t, cp[:2])
	if err != nil {
		return t, err
	}
	cs, err := Clientset(t)
	if err != nil {
		return t, err
	}
	if err := waitAPIServer(ctx, cs, daemons); err != nil {
		return t, err
	}
	log.Info("apiserver ready", zap.Duration("took", time.Since(begin)))
	rest := slices.Clone(cp[2:])
	if cfg.Kubelets {
		if daemons, err = startNodes(ctx, cfg, t, daemons); err != nil {
			return t, err
		}
		log.Info("containerd ready, images imported", zap.Duration("took", time.Since(begin)))
		nodes, err := nodeDaemons(cfg, t)
		if err != nil {
			return t, err
		}
		rest = append(rest, nodes...)
	}
	if daemons, err = startAll(t.StateDir, daemons, rest); err != nil {
		return t, err
	}
	if err := waitServiceAccount(ctx, cs, daemons); err != nil {
		return t, err
	}
	log.Info("controller manager ready", zap.Duration("took", time.Since(begin)))

	if err := waitCloudAndNodes(ctx, cfg, t, cs, daemons, log, begin); err != nil {
		return t, err
	}
	if cfg.Kubelets && cfg.ClusterDNS {
		if err := deployClusterDNS(ctx, cs, t); err != nil {
			return t, err
		}
	}
	log.Info("test bed up",
		zap.Duration("took", time.Since(begin)),
		zap.Int("nodes", len(t.Nodes)),
		zap.Bool("kubelets", cfg.Kubelets),
		zap.String("kubeconfig", t.Kubeconfig))
	return t, nil
}

// startFirst starts ds (etcd and the apiserver) and, with localcloud, the
// cloud's ENIs file and localcloud.
func startFirst(cfg Config, t *Topology, ds []daemon) ([]*running, error) {
	daemons, err := startAll(t.StateDir, nil, ds)
	if err != nil {
		return daemons, err
	}
	if cfg.Localcloud {
		if _, err := writeCloudENIs(t); err != nil {
			return daemons, err
		}
		if daemons, err = startAll(t.StateDir, daemons, []daemon{localcloud(cfg, t)}); err != nil {
			return daemons, err
		}
	}
	return daemons, nil
}

// waitAPIServer waits until the apiserver's /readyz answers.
func waitAPIServer(ctx context.Context, cs kubernetes.Interface, daemons []*running) error {
	return waitFor(ctx, daemons, "apiserver /readyz", func(ctx context.Context) (bool, error) {
		_, err := cs.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		return err == nil, nil
	})
}

// waitCloudAndNodes waits for localcloud (if asked) and, with kubelets, for
// every node to be Ready.
func waitCloudAndNodes(ctx context.Context, cfg Config, t *Topology, cs kubernetes.Interface, daemons []*running, log *zap.Logger, begin time.Time) error {
	if cfg.Localcloud {
		if err := waitLocalcloud(ctx, t, daemons); err != nil {
			return err
		}
	}
	if cfg.Kubelets {
		if err := waitNodes(ctx, t, cs, daemons); err != nil {
			return err
		}
		log.Info("nodes ready", zap.Int("nodes", len(t.Nodes)), zap.Duration("took", time.Since(begin)))
	}
	return nil
}

// checkUp: cfg is valid, the binaries are there and no test bed is.
func checkUp(cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	if err := cfg.CheckBinaries(); err != nil {
		return err
	}
	if err := checkCgroups(); err != nil {
		return err
	}
	if present, err := Present(cfg.StateDir); err != nil {
		return err
	} else if present {
		return ErrAlreadyUp
	}
	return nil
}

// makeState makes the state directory (etcd's data on a tmpfs), saves the
// topology in it and makes the cgroups.
func makeState(t *Topology) error {
	if err := os.MkdirAll(filepath.Join(t.StateDir, "etcd"), 0o755); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	// etcd's data on a tmpfs: no fsync cost whatever the state dir is on.
	if err := unix.Mount("tmpfs", filepath.Join(t.StateDir, "etcd"), "tmpfs", 0, "mode=0700,size=2g"); err != nil {
		return fmt.Errorf("mount tmpfs for etcd: %w", err)
	}
	if err := t.Save(); err != nil {
		return err
	}
	for _, cg := range []string{t.ControlPlaneCgroup, t.CloudCgroup} {
		if err := makeCgroup(cg); err != nil {
			return err
		}
	}
	for _, n := range t.Nodes {
		if err := makeCgroup(n.KubeletCgroup); err != nil {
			return err
		}
	}
	return nil
}

// startNodes prepares every node's runtime, starts its containerd and
// imports the images into it, the nodes in parallel.
func startNodes(ctx context.Context, cfg Config, t *Topology, daemons []*running) ([]*running, error) {
	images, err := cfg.imageArchives()
	if err != nil {
		return daemons, err
	}
	if cfg.ClusterDNS && !slices.ContainsFunc(images, func(a string) bool { return filepath.Base(a) == "coredns.oci.tar" }) {
		return daemons, errors.New("cluster DNS: no coredns.oci.tar among the images (make tools builds bin/coredns, make images its image; or --cluster-dns=false)")
	}
	if err := prepareHostMounts(); err != nil {
		return daemons, err
	}
	if t.LocalcloudURL != "" {
		if err := writeCNICredentials(t); err != nil {
			return daemons, err
		}
	}
	var started []daemon
	for _, n := range t.Nodes {
		if err := prepareNode(cfg, t, n); err != nil {
			return daemons, err
		}
		if err := installCNI(cfg, t, n); err != nil {
			return daemons, err
		}
		started = append(started, containerdDaemon(cfg, t, n))
	}
	if daemons, err = startAll(t.StateDir, daemons, started); err != nil {
		return daemons, err
	}
	var g errgroup.Group
	for _, n := range t.Nodes {
		g.Go(func() error {
			if err := waitFor(ctx, daemons, "containerd of "+n.Name, func(ctx context.Context) (bool, error) {
				_, err := os.Stat(n.Runtime.ContainerdSocket)
				return err == nil, nil
			}); err != nil {
				return err
			}
			return importImages(ctx, cfg, n, images)
		})
	}
	return daemons, g.Wait()
}

// nodeDaemons are the kubelets and, if asked, the kube-proxies.
func nodeDaemons(cfg Config, t *Topology) ([]daemon, error) {
	var ds []daemon
	for _, n := range t.Nodes {
		ds = append(ds, kubeletDaemon(cfg, t, n))
		if cfg.KubeProxy {
			if err := writeKubeProxyConfig(t, n); err != nil {
				return nil, err
			}
			ds = append(ds, kubeProxyDaemon(cfg, t, n))
		}
	}
	return ds, nil
}

// pkiAndNetwork makes the certificates and kubeconfigs and, at the same
// time, the network (with the source/destination check if asked).
func pkiAndNetwork(ctx context.Context, cfg Config, t *Topology) error {
	var g errgroup.Group
	g.Go(func() error {
		p := pki{dir: filepath.Join(t.StateDir, "pki")}
		if err := generatePKI(p.dir, t.Nodes); err != nil {
			return err
		}
		for _, n := range t.Nodes {
			if n.Runtime == nil {
				continue
			}
			if err := writeClientKubeconfig(filepath.Join(nodeDir(t, n), "kubelet.kubeconfig"), t.APIServer, p,
				nodeCert(n.Name), nodeKey(n.Name), "system:node:"+n.Name); err != nil {
				return err
			}
		}
		if err := writeClientKubeconfig(kubeProxyKubeconfig(t), t.APIServer, p, kubeProxyCert, kubeProxyKey, "system:kube-proxy"); err != nil {
			return err
		}
		if err := writeKubeconfig(t.Kubeconfig, fmt.Sprintf("https://127.0.0.1:%d", apiServerPort), p); err != nil {
			return err
		}
		return writeKubeconfig(t.VPCKubeconfig, t.APIServer, p)
	})
	g.Go(func() error {
		if err := setupNetwork(t); err != nil {
			return fmt.Errorf("network: %w", err)
		}
		if cfg.SourceDestCheck {
			return applySourceDestCheck(ctx, t)
		}
		return nil
	})
	return g.Wait()
}

// startAll starts ds in order and appends them to started.
func startAll(stateDir string, started []*running, ds []daemon) ([]*running, error) {
	for _, d := range ds {
		r, err := d.start(stateDir)
		if err != nil {
			return started, err
		}
		started = append(started, r)
	}
	return started, nil
}

// waitServiceAccount waits for the default ServiceAccount, which the
// controller manager makes.
func waitServiceAccount(ctx context.Context, cs kubernetes.Interface, daemons []*running) error {
	return waitFor(ctx, daemons, "default ServiceAccount", func(ctx context.Context) (bool, error) {
		_, err := cs.CoreV1().ServiceAccounts(metav1.NamespaceDefault).Get(ctx, "default", metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		return err == nil, err
	})
}

// waitLocalcloud waits for localcloud's API port.
func waitLocalcloud(ctx context.Context, t *Topology, daemons []*running) error {
	addr := net.JoinHostPort(t.CloudAddr.String(), fmt.Sprint(localcloudPort))
	return waitFor(ctx, daemons, "localcloud at "+addr, func(ctx context.Context) (bool, error) {
		c, err := (&net.Dialer{Timeout: time.Second}).DialContext(ctx, "tcp", addr)
		if err != nil {
			return false, nil
		}
		return true, c.Close()
	})
}

// waitNodes waits for every node to be Ready.
func waitNodes(ctx context.Context, t *Topology, cs kubernetes.Interface, daemons []*running) error {
	return waitFor(ctx, daemons, fmt.Sprintf("%d nodes Ready", len(t.Nodes)), func(ctx context.Context) (bool, error) {
		nodes, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, nil
		}
		return readyNodes(nodes.Items) == len(t.Nodes), nil
	})
}

// readyNodes counts the nodes whose Ready condition is True.
func readyNodes(nodes []corev1.Node) int {
	n := 0
	for _, node := range nodes {
		for _, c := range node.Status.Conditions {
			if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
				n++
			}
		}
	}
	return n
}

// waitFor polls cond until it is true, fails, a daemon exits or ctx ends.
func waitFor(ctx context.Context, daemons []*running, what string, cond func(context.Context) (bool, error)) error {
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		if err := anyExited(daemons); err != nil {
			return fmt.Errorf("wait for %s: %w", what, err)
		}
		cctx, ccancel := context.WithTimeout(ctx, 3*time.Second)
		ok, err := cond(cctx)
		ccancel()
		if err != nil && ctx.Err() == nil {
			return fmt.Errorf("wait for %s: %w", what, err)
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctxErr(ctx, what)
		case <-tick.C:
		}
	}
}

// Clientset returns a client for the test bed's admin kubeconfig.
func Clientset(t *Topology) (*kubernetes.Clientset, error) {
	rc, err := clientcmd.BuildConfigFromFlags("", t.Kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("load kubeconfig %s: %w", t.Kubeconfig, err)
	}
	rc.QPS, rc.Burst = 200, 400
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("client for %s: %w", t.Kubeconfig, err)
	}
	return cs, nil
}

// Present reports whether anything of a test bed exists: its state dir, its
// cgroup tree or its VPC namespace.
func Present(stateDir string) (bool, error) {
	for _, p := range []string{stateDir, CgroupRoot, namedns.Path(VPCNetNS)} {
		_, err := os.Stat(p)
		if err == nil {
			return true, nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return false, fmt.Errorf("check %s: %w", p, err)
		}
	}
	return false, nil
}

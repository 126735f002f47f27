package testbed

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
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
// localcloud and the kubelet stand-ins. It returns once the apiserver is
// ready, the default ServiceAccount exists and (with kubelets) every node is
// Ready. On error, what was made stays for inspection; Down removes it.
func Up(ctx context.Context, cfg Config) (*Topology, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if err := cfg.CheckBinaries(); err != nil {
		return nil, err
	}
	if present, err := Present(cfg.StateDir); err != nil {
		return nil, err
	} else if present {
		return nil, ErrAlreadyUp
	}
	log := cfg.log()
	begin := time.Now()
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()

	t := Plan(cfg)
	if err := os.MkdirAll(filepath.Join(t.StateDir, "etcd"), 0o755); err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	// etcd's data on a tmpfs: no fsync cost whatever the state dir is on.
	if err := unix.Mount("tmpfs", filepath.Join(t.StateDir, "etcd"), "tmpfs", 0, "mode=0700,size=2g"); err != nil {
		return nil, fmt.Errorf("mount tmpfs for etcd: %w", err)
	}
	if err := t.Save(); err != nil {
		return nil, err
	}
	for _, cg := range []string{t.ControlPlaneCgroup, t.CloudCgroup} {
		if err := makeCgroup(cg); err != nil {
			return nil, err
		}
	}
	for _, n := range t.Nodes {
		if err := makeCgroup(n.KubeletCgroup); err != nil {
			return nil, err
		}
	}

	var g errgroup.Group
	g.Go(func() error {
		p := pki{dir: filepath.Join(t.StateDir, "pki")}
		if err := generatePKI(p.dir); err != nil {
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
	if err := g.Wait(); err != nil {
		return t, err
	}
	log.Info("network and certificates ready", zap.Duration("elapsed", time.Since(begin)))

	// etcd and the apiserver first; the controller manager and the
	// scheduler once the apiserver is ready (the controller manager exits
	// if it cannot read its delegated authentication config at start).
	cp := controlPlane(cfg, t)
	var daemons []*running
	for _, d := range cp[:2] {
		r, err := d.start(t.StateDir)
		if err != nil {
			return t, err
		}
		daemons = append(daemons, r)
	}
	if cfg.Localcloud {
		if _, err := writeCloudENIs(t); err != nil {
			return t, err
		}
		r, err := localcloud(cfg, t).start(t.StateDir)
		if err != nil {
			return t, err
		}
		daemons = append(daemons, r)
	}

	cs, err := Clientset(t)
	if err != nil {
		return t, err
	}
	if err := waitFor(ctx, daemons, "apiserver /readyz", func(ctx context.Context) (bool, error) {
		_, err := cs.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		return err == nil, nil
	}); err != nil {
		return t, err
	}
	log.Info("apiserver ready", zap.Duration("elapsed", time.Since(begin)))
	for _, d := range cp[2:] {
		r, err := d.start(t.StateDir)
		if err != nil {
			return t, err
		}
		daemons = append(daemons, r)
	}

	if cfg.Kubelets {
		for _, n := range t.Nodes {
			r, err := kubelet(cfg, t, n).start(t.StateDir)
			if err != nil {
				return t, err
			}
			daemons = append(daemons, r)
		}
	}
	if err := waitFor(ctx, daemons, "default ServiceAccount", func(ctx context.Context) (bool, error) {
		_, err := cs.CoreV1().ServiceAccounts(metav1.NamespaceDefault).Get(ctx, "default", metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		return err == nil, err
	}); err != nil {
		return t, err
	}
	log.Info("controller manager ready", zap.Duration("elapsed", time.Since(begin)))

	if cfg.Localcloud {
		addr := net.JoinHostPort(t.CloudAddr.String(), fmt.Sprint(localcloudPort))
		if err := waitFor(ctx, daemons, "localcloud at "+addr, func(ctx context.Context) (bool, error) {
			c, err := (&net.Dialer{Timeout: time.Second}).DialContext(ctx, "tcp", addr)
			if err != nil {
				return false, nil
			}
			return true, c.Close()
		}); err != nil {
			return t, err
		}
	}
	if cfg.Kubelets {
		if err := waitFor(ctx, daemons, fmt.Sprintf("%d nodes Ready", len(t.Nodes)), func(ctx context.Context) (bool, error) {
			nodes, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
			if err != nil {
				return false, nil
			}
			return readyNodes(nodes.Items) == len(t.Nodes), nil
		}); err != nil {
			return t, err
		}
		log.Info("nodes ready", zap.Int("nodes", len(t.Nodes)), zap.Duration("elapsed", time.Since(begin)))
	}
	log.Info("test bed up",
		zap.Duration("bringUp", time.Since(begin)),
		zap.Int("nodes", len(t.Nodes)),
		zap.Bool("kubelets", cfg.Kubelets),
		zap.String("kubeconfig", t.Kubeconfig))
	return t, nil
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

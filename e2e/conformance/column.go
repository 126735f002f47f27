package conformance

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"

	"github.com/directlb/directlb/e2e/framework"
	"github.com/directlb/directlb/e2e/testbed"
)

// Column is the Service datapath a run measures.
type Column string

const (
	// Control is the referee: the pinned kube-proxy (nftables mode) on
	// every node, no node-agent.
	Control Column = "control"
	// DirectLB is the chart as the docs install it: kubeProxyReplacement
	// true, no kube-proxy.
	DirectLB Column = "directlb"
)

// ParseColumn checks a column's name.
func ParseColumn(s string) (Column, error) {
	switch c := Column(s); c {
	case Control, DirectLB:
		return c, nil
	}
	return "", fmt.Errorf("column %q: want control or directlb", s)
}

// Chart release the directlb column installs (as make demo does).
const (
	release   = "directlb"
	releaseNS = "directlb-system"
)

// BedConfig is the test bed a column runs on.
func BedConfig(col Column, binDir string) testbed.Config {
	cfg := testbed.DefaultConfig()
	cfg.BinDir = binDir
	cfg.KubeProxy = col == Control
	cfg.ClusterDNS = true
	return cfg
}

// Prepare brings a fresh test bed up for the column (whatever bed was
// there is torn down first), installs the chart for directlb, and waits
// until the Service datapath and cluster DNS answer.
func Prepare(ctx context.Context, col Column, cfg testbed.Config, chartDir string) (*testbed.Topology, error) {
	if err := testbed.Down(ctx, cfg.StateDir); err != nil {
		return nil, fmt.Errorf("tear down the old bed: %w", err)
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := cfg.CheckBinaries(); err != nil {
		return nil, err
	}
	t, err := testbed.Up(ctx, cfg)
	if err != nil {
		return t, fmt.Errorf("test bed: %w", err)
	}
	cs, err := testbed.Clientset(t)
	if err != nil {
		return t, err
	}
	if col == DirectLB {
		if err := installChart(ctx, cs, t, cfg.BinDir, chartDir); err != nil {
			return t, err
		}
	}
	return t, waitClusterDNS(ctx, cs, 3*time.Minute)
}

// installChart installs charts/directlb with the test bed's values, as
// make demo does, and waits for the release's pods.
func installChart(ctx context.Context, cs kubernetes.Interface, t *testbed.Topology, binDir, chartDir string) error {
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: releaseNS}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	// localcloud's default access key (docs/localcloud.md).
	_, err := cs.CoreV1().Secrets(releaseNS).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "localcloud-credentials"},
		StringData: map[string]string{"AWS_ACCESS_KEY_ID": "AKIDLOCALCLOUD", "AWS_SECRET_ACCESS_KEY": "localcloud-secret"},
	}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "helm"), "upgrade", "--install", release, chartDir,
		"-n", releaseNS, "-f", filepath.Join(chartDir, "ci", "testbed-values.yaml"),
		"--kubeconfig", t.Kubeconfig, "--wait", "--timeout", "3m")
	cmd.Env = append(os.Environ(), "PATH="+binDir+":"+os.Getenv("PATH"))
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("helm install: %w: %s", err, out)
	}
	// helm --wait accepts a DaemonSet with maxUnavailable pods not Ready.
	return poll(ctx, 2*time.Minute, "every pod of the release Ready", func(ctx context.Context) (bool, string, error) {
		pods, err := cs.CoreV1().Pods(releaseNS).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/instance=" + release})
		if err != nil {
			return false, "", err
		}
		var notReady []string
		for _, p := range pods.Items {
			if !framework.Ready(&p) {
				notReady = append(notReady, p.Name)
			}
		}
		return len(pods.Items) > 0 && len(notReady) == 0, "not Ready: " + strings.Join(notReady, ", "), nil
	})
}

// waitClusterDNS waits for every CoreDNS pod to be Ready (the e2e
// framework's own start-up check wants kube-system's pods Ready too).
func waitClusterDNS(ctx context.Context, cs kubernetes.Interface, limit time.Duration) error {
	return poll(ctx, limit, "cluster DNS Ready", func(ctx context.Context) (bool, string, error) {
		pods, err := cs.CoreV1().Pods(metav1.NamespaceSystem).List(ctx, metav1.ListOptions{LabelSelector: "k8s-app=kube-dns"})
		if err != nil {
			return false, "", err
		}
		ready := 0
		for _, p := range pods.Items {
			if framework.Ready(&p) {
				ready++
			}
		}
		return len(pods.Items) > 0 && ready == len(pods.Items), fmt.Sprintf("%d of %d CoreDNS pods Ready", ready, len(pods.Items)), nil
	})
}

// poll calls cond every second (apimachinery's wait) until it is true,
// fails, or limit passes; the error carries cond's last note.
func poll(ctx context.Context, limit time.Duration, what string, cond func(context.Context) (bool, string, error)) error {
	var last string
	err := wait.PollUntilContextTimeout(ctx, time.Second, limit, true, func(ctx context.Context) (bool, error) {
		ok, note, err := cond(ctx)
		if err != nil {
			last = err.Error()
			return false, nil // an API error is retried until the limit
		}
		last = note
		return ok, nil
	})
	if err != nil {
		return fmt.Errorf("%s: not within %s (%s): %w", what, limit, last, err)
	}
	return nil
}

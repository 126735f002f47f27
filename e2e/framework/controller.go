package framework

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/directlb/directlb/pkg/readinessgate"
)

const (
	// Cluster is the cluster name of StartController's lb-controller (its
	// cloud resources carry it as their ownership tag).
	Cluster = "e2e-lb"
	// GateCluster is StartGateController's.
	GateCluster = "e2e-rg"
	// AccessKey and SecretKey are localcloud's default credentials (the
	// test bed starts it with them).
	AccessKey = "AKIDLOCALCLOUD"
	SecretKey = "localcloud-secret"
)

// StartController runs bin/lb-controller as a host process against the
// bed's apiserver and localcloud until the test ends, without readiness
// gates and drain; kill SIGKILLs it.
func StartController(t *testing.T, b *Bed) (kill func()) {
	t.Helper()
	bin := filepath.Join(b.BinDir, "lb-controller")
	if _, err := os.Stat(bin); err != nil {
		t.Skipf("%s is not built (make build): %v", bin, err)
	}
	kill, _ = RunController(t, bin, "--cluster-name="+Cluster, "--kubeconfig="+b.Topology.Kubeconfig,
		"--aws-endpoint="+b.Topology.LocalcloudURL, "--metrics-bind-address=0", "--health-probe-bind-address=0",
		"--target-batch-window=50ms",
		// Readiness gates and drain have their own tests (issue 6).
		"--readiness-gates=false", "--drain-bind-address=0")
	return kill
}

// RunController runs lb-controller with args and localcloud's credentials
// until the test ends (SIGTERM, then SIGKILL after 15 s), logging to a
// file whose tail goes into a failed test's output; kill SIGKILLs it at
// once.
func RunController(t *testing.T, bin string, args ...string) (kill func(), logPath string) {
	t.Helper()
	logPath = filepath.Join(t.TempDir(), "lb-controller.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "AWS_ACCESS_KEY_ID="+AccessKey, "AWS_SECRET_ACCESS_KEY="+SecretKey)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatalf("start lb-controller: %v", err)
	}
	done := make(chan struct{}) // closed when it exited
	go func() { _ = cmd.Wait(); close(done) }()
	var once sync.Once
	stop := func(sig syscall.Signal) {
		once.Do(func() {
			_ = cmd.Process.Signal(sig)
			select {
			case <-done:
			case <-time.After(15 * time.Second):
				_ = cmd.Process.Kill()
				<-done
			}
		})
	}
	t.Cleanup(func() {
		stop(syscall.SIGTERM)
		if t.Failed() {
			out, _ := os.ReadFile(logPath)
			if len(out) > 12000 {
				out = out[len(out)-12000:]
			}
			t.Logf("lb-controller log (tail):\n%s", out)
		}
	})
	return func() { stop(syscall.SIGKILL) }, logPath
}

// GateController is an lb-controller run by StartGateController.
type GateController struct {
	WebhookConfig string // its MutatingWebhookConfiguration
	Kill          func() // SIGKILLs it
	LogPath       string
}

// StartGateController runs bin/lb-controller as a host process with
// readiness gates and drain: the webhook and the drain endpoint listen on
// the host's VPC address (the apiserver and the nodes' kubelets reach it
// there). The webhook configuration is deleted at cleanup.
func StartGateController(t *testing.T, b *Bed, ns string, extra ...string) *GateController {
	t.Helper()
	bin := filepath.Join(b.BinDir, "lb-controller")
	if _, err := os.Stat(bin); err != nil {
		t.Skipf("%s is not built (make build): %v", bin, err)
	}
	host := b.Topology.HostAddr.String()
	whPort, drainPort := freePort(t), freePort(t)
	c := &GateController{WebhookConfig: "directlb-" + ns}
	// Registered first, so it runs after RunController's cleanup stopped
	// the controller (which would put the configuration back).
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = b.Client.AdmissionregistrationV1().MutatingWebhookConfigurations().Delete(ctx, c.WebhookConfig, metav1.DeleteOptions{})
	})
	args := append([]string{"--cluster-name=" + GateCluster, "--kubeconfig=" + b.Topology.Kubeconfig,
		"--aws-endpoint=" + b.Topology.LocalcloudURL, "--metrics-bind-address=0", "--health-probe-bind-address=0",
		"--target-batch-window=50ms",
		"--webhook-bind-address=" + net.JoinHostPort(host, strconv.Itoa(whPort)),
		"--webhook-url=https://" + net.JoinHostPort(host, strconv.Itoa(whPort)) + readinessgate.WebhookPath,
		"--webhook-configuration-name=" + c.WebhookConfig,
		"--webhook-cert-secret=" + ns + "/directlb-webhook-tls",
		"--webhook-timeout=3s",
		"--drain-host=" + host, "--drain-port=" + strconv.Itoa(drainPort),
		"--drain-bind-address=" + net.JoinHostPort(host, strconv.Itoa(drainPort)),
		"--gate-max-pending-interval=3s",
	}, extra...)
	c.Kill, c.LogPath = RunController(t, bin, args...)
	return c
}

// freePort is a free TCP port on the host's VPC address.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "10.100.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

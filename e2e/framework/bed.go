package framework

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"

	"github.com/directlb/directlb/e2e/testbed"
)

// Bed is the test bed the tests run on.
type Bed struct {
	Topology *testbed.Topology
	Client   kubernetes.Interface
	BinDir   string
}

// Kubectl runs bin/kubectl with the test bed's admin kubeconfig and returns
// its combined output.
func (b *Bed) Kubectl(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(b.BinDir, "kubectl"), append([]string{"--kubeconfig", b.Topology.Kubeconfig}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// MustKubectl is Kubectl that fails the test on error (1 minute bound).
func (b *Bed) MustKubectl(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	out, err := b.Kubectl(ctx, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

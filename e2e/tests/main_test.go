// Package tests holds the end-to-end tests. TestMain brings the local test
// bed up once for the whole package (from DLB_BIN_DIR, default ../../bin)
// and tears it down at the end, unless DLB_TESTBED_KEEP=1.
package tests

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
	ctrlzap "sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/directlb/directlb/e2e/framework"
	"github.com/directlb/directlb/e2e/testbed"
)

var (
	// bed is set by TestMain when the test bed is up; tests get it through
	// requireBed.
	bed *framework.Bed
	// skipReason says why bed is nil.
	skipReason string
)

// requireBed returns the test bed or skips the test, saying why.
func requireBed(t *testing.T) *framework.Bed {
	t.Helper()
	if bed == nil {
		t.Skip(skipReason)
	}
	return bed
}

// requireCloud is requireBed for a test that needs the bed's localcloud.
func requireCloud(t *testing.T) *framework.Bed {
	t.Helper()
	b := requireBed(t)
	if b.Topology.LocalcloudURL == "" {
		t.Skip("the test bed runs no localcloud (testbed.Config.Localcloud is off)")
	}
	return b
}

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(run(m))
}

func run(m *testing.M) int {
	switch {
	case testing.Short():
		skipReason = "end-to-end tests do not run in -short mode"
		return m.Run()
	case os.Geteuid() != 0:
		skipReason = "end-to-end tests need root (network namespaces, cgroups, BPF)"
		fmt.Fprintln(os.Stderr, "e2e: not root, skipping every test:", skipReason)
		return m.Run()
	}
	cfg := testbed.DefaultConfig()
	// The load-balancer tests need the cloud; tests that start their own
	// localcloud use this one when it runs.
	cfg.Localcloud = true
	cfg.BinDir = os.Getenv("DLB_BIN_DIR")
	if cfg.BinDir == "" {
		cfg.BinDir = "../../bin"
	}
	// controller-runtime's logger, for the envtest control plane a test
	// starts (TestTwoClustersOneCloud's cluster B); unset, it prints a
	// stack trace instead of its first line.
	ctrllog.SetLogger(ctrlzap.New(ctrlzap.WriteTo(os.Stderr)))
	cfg.Log = zap.New(zapcore.NewCore(zapcore.NewConsoleEncoder(zap.NewDevelopmentEncoderConfig()), zapcore.Lock(os.Stderr), zap.InfoLevel))
	if err := cfg.Validate(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	if err := cfg.CheckBinaries(); err != nil {
		skipReason = fmt.Sprintf("binaries missing in %s (make tools build): %v", cfg.BinDir, err)
		fmt.Fprintln(os.Stderr, "e2e: skipping every test:", skipReason)
		return m.Run()
	}
	keep := os.Getenv("DLB_TESTBED_KEEP") == "1"

	// One e2e run (or up/down) at a time on this machine: the names are
	// fixed, so a second run would tear this one's bed down.
	ctx := context.Background()
	lctx, cancel := context.WithTimeout(ctx, 30*time.Minute)
	unlock, err := testbed.Lock(lctx, func(holder string) {
		fmt.Fprintf(os.Stderr, "e2e: waiting for process %s to release %s\n", holder, testbed.LockFile)
	})
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer unlock()
	hostSysctls = readSysctls()
	topo, err := reuseOrUp(ctx, cfg, keep)
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: test bed:", err)
		if !keep {
			tearDown(ctx, cfg.StateDir)
		}
		return 1
	}
	cs, err := testbed.Clientset(topo)
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	bed = &framework.Bed{Topology: topo, Client: cs, BinDir: cfg.BinDir}

	code := m.Run()

	if keep {
		fmt.Fprintf(os.Stderr, "e2e: DLB_TESTBED_KEEP=1: test bed left up; export KUBECONFIG=%s; 'make down' removes it\n", topo.Kubeconfig)
		return code
	}
	if !tearDown(ctx, cfg.StateDir) && code == 0 {
		code = 1
	}
	return code
}

// kubeletSysctls are the host-wide sysctls a kubelet sets at start; the
// bed keeps the host's values (TestHostSysctlsUntouched).
var kubeletSysctls = []string{"vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops", "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes"}

// hostSysctls are their values before the bed came up.
var hostSysctls map[string]string

func readSysctls() map[string]string {
	out := map[string]string{}
	for _, k := range kubeletSysctls {
		b, err := os.ReadFile("/proc/sys/" + k)
		out[k] = strings.TrimSpace(string(b))
		if err != nil {
			out[k] = err.Error()
		}
	}
	return out
}

// reuseOrUp brings a fresh test bed up. With keep, a test bed left up by an
// earlier run with keep is reused if its apiserver answers.
func reuseOrUp(ctx context.Context, cfg testbed.Config, keep bool) (*testbed.Topology, error) {
	if keep {
		if t, err := testbed.Load(cfg.StateDir); err == nil {
			if cs, err := testbed.Clientset(t); err == nil {
				cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				_, err = cs.CoreV1().ServiceAccounts(metav1.NamespaceDefault).Get(cctx, "default", metav1.GetOptions{})
				cancel()
				if err == nil {
					fmt.Fprintln(os.Stderr, "e2e: reusing the test bed in", cfg.StateDir)
					return t, nil
				}
			}
		}
	}
	// Whatever is left of an earlier bed (a crashed run, a 'make up') goes.
	if err := testbed.Down(ctx, cfg.StateDir); err != nil {
		return nil, fmt.Errorf("remove the previous test bed: %w", err)
	}
	begin := time.Now()
	t, err := testbed.Up(ctx, cfg)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(os.Stderr, "e2e: test bed up in %.1fs (%d nodes)\n", time.Since(begin).Seconds(), len(t.Nodes))
	return t, nil
}

// tearDown removes the test bed and checks that nothing is left; it reports
// whether both worked.
func tearDown(ctx context.Context, stateDir string) bool {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	err := testbed.Down(ctx, stateDir)
	left, lerr := testbed.Leftovers(stateDir)
	err = errors.Join(err, lerr)
	if len(left) > 0 {
		err = errors.Join(err, fmt.Errorf("left after down: %s", strings.Join(left, ", ")))
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: tear down:", err)
		return false
	}
	return true
}

package conformance

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/directlb/directlb/e2e/testbed"
	"github.com/directlb/directlb/internal/privileged"
)

// TestConformanceGate is CI's hold on directlb: on a fresh test bed with
// the chart installed (the directlb column) the 15 upstream "[sig-network]
// Services ... [Conformance]" tests and the sig-node subset each give
// exactly their recorded results (testdata/*-directlb.txt): a recorded
// pass that fails is a regression, and a recorded failure that passes
// must be re-recorded. It brings up and tears down its own bed, so it
// runs only from 'make test-conformance' (DLB_CONFORMANCE=1), never next
// to the e2e package's bed.
func TestConformanceGate(t *testing.T) {
	if os.Getenv("DLB_CONFORMANCE") != "1" {
		t.Skip("runs from make test-conformance (DLB_CONFORMANCE=1): it brings up a test bed of its own")
	}
	privileged.Require(t, "brings up the test bed (network namespaces, cgroups, BPF)")
	bin := os.Getenv("DLB_BIN_DIR")
	if bin == "" {
		bin = "../../bin"
	}
	bin, err := filepath.Abs(bin)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range []string{"e2e.test", "ginkgo", "helm", "kubectl"} {
		if _, err := os.Stat(filepath.Join(bin, b)); err != nil {
			t.Fatalf("%s: %v (make tools)", b, err)
		}
	}
	ctx := t.Context()
	lctx, cancel := context.WithTimeout(ctx, 30*time.Minute)
	unlock, err := testbed.Lock(lctx, func(holder string) { t.Logf("waiting for process %s to release the test bed", holder) })
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	cfg := BedConfig(DirectLB, bin)
	t.Cleanup(func() {
		if err := testbed.Down(context.Background(), cfg.StateDir); err != nil {
			t.Errorf("tear down: %v", err)
		}
	})
	begin := time.Now()
	topo, err := Prepare(ctx, DirectLB, cfg, "../../charts/directlb")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("test bed with the chart ready in %.0fs", time.Since(begin).Seconds())
	out := t.TempDir()
	if dir := os.Getenv("DLB_CONFORMANCE_OUT"); dir != "" {
		out = dir
	}
	for _, s := range []Suite{Services, Node} {
		t.Run(s.Name, func(t *testing.T) {
			want, err := ReadExpected(filepath.Join("testdata", s.Name+"-directlb.txt"))
			if err != nil {
				t.Fatal(err)
			}
			begin := time.Now()
			got, err := Run(ctx, RunConfig{BinDir: bin, Kubeconfig: topo.Kubeconfig, OutDir: out, Timeout: 20 * time.Minute}, s)
			if err != nil {
				t.Fatal(err)
			}
			n := Count(got)
			t.Logf("%d passed, %d failed, %d skipped in %.0fs (report: %s)", n.Passed, n.Failed, n.Skipped, time.Since(begin).Seconds(), filepath.Join(out, s.Name))
			for _, d := range Compare(want, got) {
				t.Error(d)
			}
		})
	}
}

package conformance

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"time"
)

// RunConfig says how to run a suite on a bed that is up.
type RunConfig struct {
	// BinDir holds e2e.test, ginkgo and kubectl ('make tools').
	BinDir     string
	Kubeconfig string
	// OutDir gets the JUnit report, ginkgo's log and the suite's output.
	OutDir string
	// Timeout bounds the whole suite (ginkgo --timeout).
	Timeout time.Duration
}

// Run runs the suite with ginkgo in parallel processes and returns each
// test's result. Failing tests are results, not an error; an error means
// the suite could not run or report.
func Run(ctx context.Context, rc RunConfig, s Suite) ([]Result, error) {
	focus, err := regexp.Compile(s.Focus)
	if err != nil {
		return nil, fmt.Errorf("suite %s: focus: %w", s.Name, err)
	}
	out, err := filepath.Abs(filepath.Join(rc.OutDir, s.Name))
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return nil, err
	}
	junit := filepath.Join(out, "junit.xml")
	_ = os.Remove(junit)
	args := []string{
		"--procs=" + strconv.Itoa(max(1, s.Procs)),
		"--timeout=" + rc.Timeout.String(),
		"--junit-report=" + junit,
		"--focus=" + s.Focus,
		"--no-color",
		"--silence-skips",
		// One order for both columns, so a bounded run reaches the same tests.
		"--seed=20261201",
	}
	if skip := s.SkipRegexp(); skip != "" {
		args = append(args, "--skip="+skip)
	}
	args = append(args, filepath.Join(rc.BinDir, "e2e.test"), "--",
		"--kubeconfig="+rc.Kubeconfig,
		"--provider=skeleton",
		"--kubectl-path="+filepath.Join(rc.BinDir, "kubectl"),
		"--e2e-output-dir="+out,
		"--dump-logs-on-failure=false",
		"--disable-log-dump",
	)
	log, err := os.Create(filepath.Join(out, "ginkgo.log"))
	if err != nil {
		return nil, err
	}
	defer func() { _ = log.Close() }()
	// The suite's own time plus a margin for ginkgo to report.
	ctx, cancel := context.WithTimeout(ctx, rc.Timeout+2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(rc.BinDir, "ginkgo"), args...)
	cmd.Dir = out
	cmd.Stdout, cmd.Stderr = log, log
	cmd.Env = append(os.Environ(), "PATH="+rc.BinDir+":"+os.Getenv("PATH"), "KUBECONFIG="+rc.Kubeconfig)
	runErr := cmd.Run()
	results, err := ReadJUnit(junit, focus)
	if err != nil {
		return nil, fmt.Errorf("suite %s: %w (log: %s)", s.Name, errors.Join(err, runErr), log.Name())
	}
	if len(results) == 0 {
		return nil, fmt.Errorf("suite %s: no test matched %q (log: %s): %w", s.Name, s.Focus, log.Name(), errors.Join(errors.New("empty report"), runErr))
	}
	return results, nil
}

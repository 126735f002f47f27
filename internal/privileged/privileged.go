// Package privileged is the one way directlb's tests and benchmarks say
// what they need from the machine: root, a kernel feature, a tool on $PATH.
// Each helper skips with a message that names the need and what the test
// does with it, so a skipped privileged test is never silent about why. CI
// runs as root on a kernel with every feature, so there these tests run.
package privileged

import (
	"os"
	"os/exec"
	"testing"
)

// Root reports whether the process runs as root, for a TestMain that
// prepares privileged state (a mount namespace) only when it can.
func Root() bool { return os.Geteuid() == 0 }

// Require skips tb unless the process runs as root; needs says what the
// test does that takes root, such as "creates network namespaces".
func Require(tb testing.TB, needs string) {
	tb.Helper()
	if !Root() {
		tb.Skipf("needs root: %s", needs)
	}
}

// RequireTools skips tb unless every tool is on $PATH, naming the first
// one missing; use says what the test runs them for.
func RequireTools(tb testing.TB, use string, tools ...string) {
	tb.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			tb.Skipf("needs %s on $PATH: %s", tool, use)
		}
	}
}

// RequireKernel skips tb when check, a kernel feature probe such as
// datapath.CheckKernel, failed; the message carries the probe's error,
// which names the missing feature.
func RequireKernel(tb testing.TB, check func() error) {
	tb.Helper()
	if err := check(); err != nil {
		tb.Skipf("needs a kernel feature this machine lacks: %v", err)
	}
}

package privileged

import (
	"errors"
	"testing"
)

// skipped runs f as a subtest and reports whether it skipped.
func skipped(t *testing.T, f func(t *testing.T)) bool {
	t.Helper()
	var did bool
	t.Run("sub", func(t *testing.T) {
		defer func() { did = t.Skipped() }()
		f(t)
	})
	return did
}

func TestRequireSkipsOnlyWhatIsMissing(t *testing.T) {
	if !skipped(t, func(t *testing.T) { RequireTools(t, "nothing", "go", "dlbt-no-such-tool") }) {
		t.Error("RequireTools ran on without dlbt-no-such-tool")
	}
	if skipped(t, func(t *testing.T) { RequireTools(t, "building", "go") }) {
		t.Error("RequireTools skipped with go on $PATH")
	}
	if !skipped(t, func(t *testing.T) { RequireKernel(t, func() error { return errors.New("no BTF") }) }) {
		t.Error("RequireKernel ran on after a failed probe")
	}
	if skipped(t, func(t *testing.T) { RequireKernel(t, func() error { return nil }) }) {
		t.Error("RequireKernel skipped after a passing probe")
	}
	if got := skipped(t, func(t *testing.T) { Require(t, "nothing") }); got == Root() {
		t.Errorf("Require skipped = %v as root = %v", got, Root())
	}
}

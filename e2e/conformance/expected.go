package conformance

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"
)

// Expected is a test's recorded result under a column, and for an
// expected failure the capability it waits for.
type Expected struct {
	Name  string
	State State
	Needs string
}

// ReadExpected reads a recorded-results file: one test a line,
// "<passed|failed><TAB><name>[<TAB><what a failure needs>]"; blank lines
// and lines starting with # are comments. A failure must say what it needs.
func ReadExpected(path string) ([]Expected, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []Expected
	var errs []error
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Split(line, "\t")
		e := Expected{State: State(f[0])}
		if len(f) > 1 {
			e.Name = f[1]
		}
		if len(f) > 2 {
			e.Needs = f[2]
		}
		switch {
		case e.Name == "":
			errs = append(errs, fmt.Errorf("%s:%d: no test name", path, n))
		case e.State != Passed && e.State != Failed:
			errs = append(errs, fmt.Errorf("%s:%d: state %q, want passed or failed", path, n, e.State))
		case e.State == Failed && e.Needs == "":
			errs = append(errs, fmt.Errorf("%s:%d: an expected failure must say what it needs", path, n))
		}
		out = append(out, e)
	}
	return out, errors.Join(append(errs, sc.Err())...)
}

// Compare checks results against the record: every recorded test ran with
// its recorded result and no other test ran (skipped ones aside). A recorded failure that now
// passes is reported too, so the record is updated with the change that
// fixed it.
func Compare(want []Expected, got []Result) []string {
	byName := map[string]Result{}
	for _, r := range got {
		byName[r.Name] = r
	}
	var diffs []string
	seen := map[string]bool{}
	for _, e := range want {
		seen[e.Name] = true
		r, ok := byName[e.Name]
		switch {
		case !ok:
			diffs = append(diffs, fmt.Sprintf("did not run: %s", e.Name))
		case r.State == e.State:
		case e.State == Passed:
			diffs = append(diffs, fmt.Sprintf("REGRESSION, %s: %s (recorded passed): %s", r.State, e.Name, r.Message))
		case r.State == Passed:
			diffs = append(diffs, fmt.Sprintf("now passes, recorded as failing (needs %s): %s; update the record", e.Needs, e.Name))
		default:
			diffs = append(diffs, fmt.Sprintf("%s, recorded %s: %s: %s", r.State, e.State, e.Name, r.Message))
		}
	}
	for _, r := range got {
		// A test the suite's skip list leaves out is reported as skipped;
		// it needs no record.
		if !seen[r.Name] && r.State != Skipped {
			diffs = append(diffs, fmt.Sprintf("not in the record (%s): %s", r.State, r.Name))
		}
	}
	return diffs
}

// Package golden compares what a test renders with a file under the test
// package's testdata/, and with -update rewrites the file instead:
//
//	go test ./charts/... -update
//
// Review the rewritten files in the commit like code: they are the
// rendered output the change means to produce.
package golden

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/ with what the tests render")

// Check compares got with testdata/name. With -update it writes got there
// instead. A difference fails tb with a line diff and the command that
// accepts it.
func Check(tb testing.TB, name string, got []byte) {
	tb.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			tb.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			tb.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		tb.Fatalf("golden file: %v (go test -update writes it)", err)
	}
	if diff := cmp.Diff(strings.Split(string(want), "\n"), strings.Split(string(got), "\n")); diff != "" {
		tb.Errorf("%s differs from the rendered output (-want +got):\n%s\nif the change is intended, rewrite it with go test -update and review the diff", path, diff)
	}
}

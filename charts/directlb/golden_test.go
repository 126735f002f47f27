package chart_test

import (
	"regexp"
	"testing"

	"github.com/directlb/directlb/internal/golden"
)

// generated matches the lines helm fills with a fresh webhook CA and
// certificate on every render; the goldens hold a placeholder instead.
var generated = regexp.MustCompile(`(?m)^(\s*(?:ca-bundle\.crt|ca\.crt|ca\.key|tls\.crt|tls\.key|caBundle): ).+$`)

// TestGolden compares the manifests the chart renders with its defaults,
// with the test bed's values, and with those plus directlb-cni
// (testdata/cni-values.yaml) against testdata/. They change with every
// change to templates/ or values.yaml: rewrite them with
//
//	go test ./charts/... -update
//
// (helm from bin/, or DLB_BIN_DIR=/path/to/dir-with-helm) and review their diff in the same commit, as the rendered effect of the
// change. TestTemplate's checks hold whatever the goldens say.
func TestGolden(t *testing.T) {
	helm := helmBinary(t)
	for _, g := range []struct {
		file string
		args []string
	}{
		{file: "defaults.yaml"},
		{file: "testbed.yaml", args: []string{"-f", "ci/testbed-values.yaml"}},
		{file: "cni.yaml", args: []string{"-f", "ci/testbed-values.yaml", "-f", "testdata/cni-values.yaml"}},
	} {
		t.Run(g.file, func(t *testing.T) {
			out, err := runHelm(t, helm, append([]string{"template", release, ".", "-n", namespace}, g.args...)...)
			if err != nil {
				t.Fatal(err)
			}
			golden.Check(t, g.file, generated.ReplaceAll([]byte(out), []byte("${1}<generated at render>")))
		})
	}
}

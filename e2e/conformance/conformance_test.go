package conformance

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

const (
	basic    = "[sig-network] Services should serve a basic endpoint from pods [Conformance]"
	nodePort = "[sig-network] Services should be able to create a functioning NodePort service [Conformance]"
	affinity = "[sig-network] Services should have session affinity work for service with type clusterIP [LinuxOnly] [Conformance]"
)

func TestReadJUnit(t *testing.T) {
	rs, err := ReadJUnit("testdata/junit-sample.xml", regexp.MustCompile(Services.Focus))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]State{basic: Passed, nodePort: Failed, affinity: Skipped}
	if len(rs) != len(want) {
		t.Fatalf("%d results %+v, want the 3 Services specs (suite nodes and the sig-storage spec the focus left out dropped)", len(rs), rs)
	}
	for _, r := range rs {
		if want[r.Name] != r.State {
			t.Errorf("%s: %s, want %s", r.Name, r.State, want[r.Name])
		}
		if r.Name == nodePort && r.Message != "service is not reachable within 2m0s timeout on endpoint 10.100.1.10:31000 over TCP protocol" {
			t.Errorf("failure message %q: want its first line", r.Message)
		}
	}
	if n := Count(rs); n != (Counts{Passed: 1, Failed: 1, Skipped: 1}) {
		t.Errorf("Count = %+v", n)
	}
}

func TestReadJUnitKeepsFailedSuiteNodes(t *testing.T) {
	data := `<testsuites><testsuite name="s"><testcase name="[SynchronizedBeforeSuite]" status="failed"><failure message="nodes not ready"/></testcase></testsuite></testsuites>`
	rs, err := parseJUnit([]byte(data), regexp.MustCompile(Services.Focus))
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 1 || rs[0].State != Failed || rs[0].Name != "[SynchronizedBeforeSuite]" {
		t.Errorf("results %+v: want the failed suite node", rs)
	}
}

func TestReadExpected(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.txt")
	if err := os.WriteFile(good, []byte("# comment\n\npassed\t"+basic+"\nfailed\t"+nodePort+"\tNodePort\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	es, err := ReadExpected(good)
	if err != nil || len(es) != 2 || es[1].Needs != "NodePort" {
		t.Fatalf("ReadExpected = %+v, %v", es, err)
	}
	bad := filepath.Join(dir, "bad.txt")
	if err := os.WriteFile(bad, []byte("failed\t"+nodePort+"\nflaky\t"+basic+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = ReadExpected(bad)
	for _, w := range []string{"must say what it needs", `state "flaky"`} {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("ReadExpected(bad) = %v, want %q", err, w)
		}
	}
}

func TestCompare(t *testing.T) {
	want := []Expected{{Name: basic, State: Passed}, {Name: nodePort, State: Failed, Needs: "NodePort"}, {Name: affinity, State: Passed}}
	cases := []struct {
		name string
		got  []Result
		diff []string // substrings, one per difference, in order
	}{
		{"as recorded", []Result{{Name: basic, State: Passed}, {Name: nodePort, State: Failed}, {Name: affinity, State: Passed}}, nil},
		{"a regression", []Result{{Name: basic, State: Failed, Message: "boom"}, {Name: nodePort, State: Failed}, {Name: affinity, State: Passed}}, []string{"REGRESSION, failed: " + basic + " (recorded passed): boom"}},
		{"a skip is not a pass", []Result{{Name: basic, State: Passed}, {Name: nodePort, State: Failed}, {Name: affinity, State: Skipped}}, []string{"REGRESSION, skipped"}},
		{"a fix to record", []Result{{Name: basic, State: Passed}, {Name: nodePort, State: Passed}, {Name: affinity, State: Passed}}, []string{"now passes, recorded as failing (needs NodePort)"}},
		{"missing and extra", []Result{{Name: basic, State: Passed}, {Name: nodePort, State: Failed}, {Name: "x", State: Passed}}, []string{"did not run: " + affinity, "not in the record (passed): x"}},
		{"an unrecorded skip is fine", []Result{{Name: basic, State: Passed}, {Name: nodePort, State: Failed}, {Name: affinity, State: Passed}, {Name: "y", State: Skipped}}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := Compare(want, c.got)
			if len(d) != len(c.diff) {
				t.Fatalf("Compare = %q, want %d differences", d, len(c.diff))
			}
			for i := range d {
				if !strings.Contains(d[i], c.diff[i]) {
					t.Errorf("difference %d = %q, want %q", i, d[i], c.diff[i])
				}
			}
		})
	}
}

func TestTableAndUpdateDoc(t *testing.T) {
	control := []Result{{Name: basic, State: Passed}, {Name: nodePort, State: Passed}}
	directlb := []Result{{Name: basic, State: Passed}, {Name: nodePort, State: Failed, Message: "a|b"}}
	tab := Table(Services, control, directlb)
	for _, w := range []string{"| control | 2 | 0 | 0 |", "| directlb | 1 | 1 | 0 |", "| " + escape(nodePort) + " | passed | **failed**: a\\|b |"} {
		if !strings.Contains(tab, w) {
			t.Errorf("table lacks %q:\n%s", w, tab)
		}
	}
	if tab := Table(Services, nil, directlb); !strings.Contains(tab, "| control | not run |") {
		t.Errorf("a column that did not run:\n%s", tab)
	}
	doc := filepath.Join(t.TempDir(), "doc.md")
	if err := os.WriteFile(doc, []byte("# T\nintro\n"+beginMarker+"\nold\n"+endMarker+"\nafter\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := UpdateDoc(doc, "new"); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(doc)
	if want := "# T\nintro\n" + beginMarker + "\n\nnew\n\n" + endMarker + "\nafter\n"; string(got) != want {
		t.Errorf("UpdateDoc:\n%s\nwant:\n%s", got, want)
	}
	if err := os.WriteFile(doc, []byte("no markers"), 0o644); err == nil {
		if err := UpdateDoc(doc, "x"); err == nil {
			t.Error("UpdateDoc without markers: no error")
		}
	}
}

// TestSuitesCompile: every suite's focus and skips are valid ginkgo
// (RE2) expressions, and every skip says why.
func TestSuitesCompile(t *testing.T) {
	for name, s := range Suites {
		if _, err := regexp.Compile(s.Focus); err != nil {
			t.Errorf("%s focus: %v", name, err)
		}
		if _, err := regexp.Compile(s.SkipRegexp()); err != nil {
			t.Errorf("%s skip: %v", name, err)
		}
		for _, sk := range s.Skips {
			if sk.Reason == "" {
				t.Errorf("%s: skip %q has no reason", name, sk.Pattern)
			}
		}
	}
	if !regexp.MustCompile(Services.Focus).MatchString(basic) || regexp.MustCompile(Services.SkipRegexp()).MatchString(basic) {
		t.Errorf("the Services suite does not select %q", basic)
	}
}

func TestPoll(t *testing.T) {
	n := 0
	if err := poll(t.Context(), 5*time.Second, "third time", func(context.Context) (bool, string, error) {
		n++
		return n == 2, fmt.Sprintf("call %d", n), nil
	}); err != nil || n != 2 {
		t.Errorf("poll = %v after %d calls, want nil after 2", err, n)
	}
	err := poll(t.Context(), 1500*time.Millisecond, "never", func(context.Context) (bool, string, error) {
		return false, "still not", nil
	})
	if err == nil || !strings.Contains(err.Error(), "never: not within 1.5s (still not)") {
		t.Errorf("poll that never succeeds = %v", err)
	}
}

// TestRunCLIReportOnly: --columns= brings no bed up and rewrites the
// report from the results on disk.
func TestRunCLIReportOnly(t *testing.T) {
	dir := t.TempDir()
	if err := SaveResults(dir, Control, Services.Name, []Result{{Name: basic, State: Passed}}); err != nil {
		t.Fatal(err)
	}
	doc := filepath.Join(dir, "conformance.md")
	if err := os.WriteFile(doc, []byte(beginMarker+"\n"+endMarker+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c := DefaultCLIConfig()
	c.Columns, c.OutDir, c.Report = nil, dir, doc
	var out strings.Builder
	if err := RunCLI(t.Context(), c, &out); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(doc)
	for _, w := range []string{"| control | 1 | 0 | 0 |", "| directlb | not run |"} {
		if !strings.Contains(string(got), w) {
			t.Errorf("report lacks %q:\n%s", w, got)
		}
	}
}

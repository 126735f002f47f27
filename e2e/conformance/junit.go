package conformance

import (
	"encoding/xml"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/onsi/ginkgo/v2/reporters"
)

// State is a test's outcome.
type State string

// States ginkgo's JUnit report gives a spec.
const (
	Passed  State = "passed"
	Failed  State = "failed"
	Skipped State = "skipped"
)

// Result is one upstream test's outcome in one run.
type Result struct {
	Name     string
	State    State
	Duration time.Duration
	// Message is the failure's first line.
	Message string
}

// ReadJUnit reads ginkgo's --junit-report file: the specs whose name
// matches focus, sorted by name, and any suite node (such as
// [SynchronizedBeforeSuite]) that failed. ginkgo lists the specs its
// focus left out as skipped; they are dropped here.
func ReadJUnit(path string, focus *regexp.Regexp) ([]Result, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return parseJUnit(data, focus)
}

func parseJUnit(data []byte, focus *regexp.Regexp) ([]Result, error) {
	var js reporters.JUnitTestSuites
	if err := xml.Unmarshal(data, &js); err != nil {
		return nil, fmt.Errorf("junit report: %w", err)
	}
	var out []Result
	for _, s := range js.TestSuites {
		for _, c := range s.TestCases {
			r := Result{Duration: time.Duration(c.Time * float64(time.Second))}
			switch c.Status {
			case "passed":
				r.State = Passed
			case "skipped", "pending":
				r.State = Skipped
			default: // failed, panicked, timedout, interrupted, aborted
				r.State = Failed
				if c.Failure != nil {
					r.Message = firstLine(c.Failure.Message)
				} else if c.Error != nil {
					r.Message = firstLine(c.Error.Message)
				}
			}
			name, spec := strings.CutPrefix(c.Name, "[It] ")
			switch {
			case spec && !focus.MatchString(name):
				continue
			case !spec && r.State != Failed:
				continue
			}
			r.Name = name
			out = append(out, r)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return s
}

// Counts are a run's totals.
type Counts struct{ Passed, Failed, Skipped int }

// Count totals results.
func Count(rs []Result) Counts {
	var c Counts
	for _, r := range rs {
		switch r.State {
		case Passed:
			c.Passed++
		case Failed:
			c.Failed++
		default:
			c.Skipped++
		}
	}
	return c
}

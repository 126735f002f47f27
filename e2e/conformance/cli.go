package conformance

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/directlb/directlb/e2e/testbed"
)

// CLIConfig is dlb-conformance's configuration.
type CLIConfig struct {
	Columns []string
	Suites  []string
	BinDir  string
	Chart   string
	OutDir  string
	// Timeout bounds each suite's run.
	Timeout time.Duration
	// Report is the document whose results section is rewritten from
	// every result under OutDir; empty leaves it.
	Report string
	// Keep leaves the last column's bed up.
	Keep bool
}

// DefaultCLIConfig is what 'make conformance' runs.
func DefaultCLIConfig() CLIConfig {
	return CLIConfig{
		Columns: []string{string(Control), string(DirectLB)},
		Suites:  []string{Services.Name, Node.Name, Network.Name},
		BinDir:  "bin",
		Chart:   "charts/directlb",
		OutDir:  "bin/conformance",
		Timeout: 40 * time.Minute,
		Report:  "docs/conformance.md",
	}
}

// BindFlags binds the configuration to flags.
func (c *CLIConfig) BindFlags(fs *pflag.FlagSet) {
	fs.StringSliceVar(&c.Columns, "columns", c.Columns, "columns to run, in order: control (kube-proxy), directlb (node-agent); --columns= only rewrites the report")
	fs.StringSliceVar(&c.Suites, "suites", c.Suites, "suites to run in each column: services, sig-node, sig-network")
	fs.StringVar(&c.BinDir, "bin-dir", c.BinDir, "directory with e2e.test, ginkgo, kubectl, helm and the test bed's binaries")
	fs.StringVar(&c.Chart, "chart", c.Chart, "the directlb chart the directlb column installs")
	fs.StringVar(&c.OutDir, "out", c.OutDir, "directory for the reports: <column>/<suite>/{junit.xml,ginkgo.log,results.json}")
	fs.DurationVar(&c.Timeout, "timeout", c.Timeout, "bound on each suite's run")
	fs.StringVar(&c.Report, "report", c.Report, "document whose results section is rewritten (empty: none)")
	fs.BoolVar(&c.Keep, "keep", c.Keep, "leave the last column's test bed up")
}

// RunCLI runs every suite in every column, each column on a fresh bed,
// and rewrites the report.
func RunCLI(ctx context.Context, c CLIConfig, w io.Writer) error {
	bin, err := filepath.Abs(c.BinDir)
	if err != nil {
		return err
	}
	var cols []Column
	for _, s := range c.Columns {
		col, err := ParseColumn(s)
		if err != nil {
			return err
		}
		cols = append(cols, col)
	}
	var suites []Suite
	for _, s := range c.Suites {
		su, err := SuiteByName(s)
		if err != nil {
			return err
		}
		suites = append(suites, su)
	}
	var errs []error
	if len(cols) > 0 {
		unlock, err := testbed.Lock(ctx, func(holder string) { fmt.Fprintf(w, "waiting for process %s to release the test bed\n", holder) })
		if err != nil {
			return err
		}
		defer unlock()
	}
	for i, col := range cols {
		cfg := BedConfig(col, bin)
		begin := time.Now()
		t, err := Prepare(ctx, col, cfg, c.Chart)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", col, err))
			break
		}
		fmt.Fprintf(w, "%s: test bed ready in %.0fs\n", col, time.Since(begin).Seconds())
		for _, s := range suites {
			begin := time.Now()
			rs, err := Run(ctx, RunConfig{BinDir: bin, Kubeconfig: t.Kubeconfig, OutDir: filepath.Join(c.OutDir, string(col)), Timeout: c.Timeout}, s)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", col, err))
				continue
			}
			n := Count(rs)
			fmt.Fprintf(w, "%s %s: %d passed, %d failed, %d skipped in %.0fs\n", col, s.Name, n.Passed, n.Failed, n.Skipped, time.Since(begin).Seconds())
			for _, r := range rs {
				if r.State == Failed {
					fmt.Fprintf(w, "  FAILED %s: %s\n", r.Name, r.Message)
				}
			}
			if err := SaveResults(c.OutDir, col, s.Name, rs); err != nil {
				errs = append(errs, err)
			}
		}
		if !c.Keep || i < len(cols)-1 {
			if err := testbed.Down(context.WithoutCancel(ctx), cfg.StateDir); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if c.Report != "" {
		errs = append(errs, writeReport(c))
	}
	return errors.Join(errs...)
}

// writeReport rewrites the report's results from every result under the
// output directory, suites in the order of Suites.
func writeReport(c CLIConfig) error {
	var parts []string
	for _, s := range []Suite{Services, Node, Network} {
		control, err := LoadResults(c.OutDir, Control, s.Name)
		if err != nil {
			return err
		}
		directlb, err := LoadResults(c.OutDir, DirectLB, s.Name)
		if err != nil {
			return err
		}
		if control == nil && directlb == nil {
			continue
		}
		parts = append(parts, Table(s, control, directlb))
	}
	return UpdateDoc(c.Report, strings.Join(parts, "\n"))
}

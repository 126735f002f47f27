// Command dlb-conformance runs upstream Kubernetes e2e suites on the test
// bed under each column (control: kube-proxy; directlb: the chart's
// node-agent) and writes the results table of docs/conformance.md
// ('make conformance').
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/pflag"

	"github.com/directlb/directlb/e2e/conformance"
)

func main() {
	cfg := conformance.DefaultCLIConfig()
	fs := pflag.NewFlagSet("dlb-conformance", pflag.ExitOnError)
	cfg.BindFlags(fs)
	_ = fs.Parse(os.Args[1:])
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := conformance.RunCLI(ctx, cfg, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "dlb-conformance:", strings.TrimSpace(err.Error()))
		os.Exit(1)
	}
}

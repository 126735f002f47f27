// Command localcloud is directlb's embedded cloud: an ELBv2-compatible API
// (AWS Query protocol, SigV4-checked, state on disk) with a real L4
// datapath, health checks, draining and fault injection. See
// docs/localcloud.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/pflag"
	"go.uber.org/zap"

	"github.com/directlb/directlb/pkg/localcloud"
)

func main() {
	cfg := localcloud.DefaultConfig()
	fs := pflag.NewFlagSet("localcloud", pflag.ContinueOnError)
	cfg.BindFlags(fs)
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintln(os.Stderr, "localcloud:", err)
		os.Exit(2)
	}
	log, err := zap.NewProduction()
	if err != nil {
		fmt.Fprintln(os.Stderr, "localcloud:", err)
		os.Exit(1)
	}
	defer log.Sync() //nolint:errcheck
	srv, err := localcloud.New(cfg, log)
	if err != nil {
		log.Fatal("localcloud", zap.Error(err))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := srv.Run(ctx); err != nil {
		log.Fatal("localcloud", zap.Error(err))
	}
}

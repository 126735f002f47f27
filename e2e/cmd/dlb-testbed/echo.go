package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/directlb/directlb/e2e/echo"
	"github.com/spf13/pflag"
	"go.uber.org/zap"
)

// runEcho is `dlb-testbed echo`: the built-in echo server a container runs.
func runEcho(args []string) error {
	cfg := echo.DefaultConfig()
	fs := pflag.NewFlagSet("echo", pflag.ContinueOnError)
	cfg.BindFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	log, err := zap.NewProduction()
	if err != nil {
		return err
	}
	defer func() { _ = log.Sync() }()
	srv, err := echo.Listen(cfg, log)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	return srv.Serve(ctx)
}

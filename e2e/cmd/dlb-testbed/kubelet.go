package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/directlb/directlb/e2e/kubelet"
	"github.com/spf13/pflag"
	"go.uber.org/zap"
)

// runKubelet is `dlb-testbed kubelet`: the kubelet stand-in for one node.
func runKubelet(args []string) error {
	cfg := kubelet.DefaultConfig()
	fs := pflag.NewFlagSet("kubelet", pflag.ContinueOnError)
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
	k, err := kubelet.New(cfg, log)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	return k.Run(ctx)
}

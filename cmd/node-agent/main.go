// Command node-agent replaces kube-proxy on a node: it load-balances
// ClusterIP traffic at the socket level with eBPF. See docs/node-agent.md.
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

	"github.com/directlb/directlb/pkg/agent"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "service" { // offline: reads the pinned maps
		os.Exit(agent.ServiceCommand(os.Args[2:], os.Stdout, os.Stderr))
	}
	cfg := agent.DefaultConfig()
	fs := pflag.NewFlagSet("node-agent", pflag.ContinueOnError)
	cfg.BindFlags(fs)
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	warnings, err := cfg.LoadConfigFile(fs)
	if err != nil {
		fmt.Fprintln(os.Stderr, "node-agent:", err)
		os.Exit(2)
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintln(os.Stderr, "node-agent:", err)
		os.Exit(2)
	}
	log, err := agent.NewLogger(cfg.LogLevel)
	if err != nil {
		fmt.Fprintln(os.Stderr, "node-agent: logger:", err)
		os.Exit(1)
	}
	defer func() { _ = log.Sync() }() // stderr cannot always be synced; nothing to do about it
	for _, w := range warnings {
		log.Warn("--config field ignored", zap.String("config", cfg.ConfigFile), zap.String("field", w.Field), zap.String("value", w.Value), zap.String("reason", w.Reason))
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := agent.Run(ctx, cfg, log); err != nil {
		log.Error("node-agent failed", zap.Error(err))
		_ = log.Sync()
		os.Exit(1)
	}
}

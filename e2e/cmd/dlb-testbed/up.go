package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/directlb/directlb/e2e/testbed"
)

func runUp(args []string) error {
	cfg := testbed.DefaultConfig()
	fs := pflag.NewFlagSet("up", pflag.ContinueOnError)
	cfg.BindFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	cfg.Log = newLogger()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	unlock, err := testbed.Lock(ctx, waitingMessage)
	if err != nil {
		return err
	}
	defer unlock()
	begin := time.Now()
	t, err := testbed.Up(ctx, cfg)
	if err != nil {
		return fmt.Errorf("%w\n(logs in %s/logs; 'dlb-testbed down' removes what was made)", err, cfg.StateDir)
	}
	fmt.Printf("test bed up in %.1fs: %d nodes, apiserver %s\nexport KUBECONFIG=%s\n",
		time.Since(begin).Seconds(), len(t.Nodes), t.APIServer, t.Kubeconfig)
	return nil
}

func waitingMessage(holder string) {
	fmt.Fprintf(os.Stderr, "waiting for process %s to release %s (an e2e run, up or down)\n", holder, testbed.LockFile)
}

func newLogger() *zap.Logger {
	ec := zap.NewDevelopmentEncoderConfig()
	ec.EncodeTime = zapcore.TimeEncoderOfLayout("15:04:05.000")
	return zap.New(zapcore.NewCore(zapcore.NewConsoleEncoder(ec), zapcore.Lock(os.Stderr), zap.InfoLevel))
}

package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/directlb/directlb/e2e/testbed"
)

func runDown(args []string) error {
	stateDir := testbed.DefaultStateDir
	force := false
	fs := pflag.NewFlagSet("down", pflag.ContinueOnError)
	fs.StringVar(&stateDir, "state-dir", stateDir, "the test bed's state dir")
	fs.BoolVar(&force, "force", force, "do not wait for the test bed's lock (an e2e run that hangs holds it)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if !force {
		unlock, err := testbed.Lock(ctx, waitingMessage)
		if err != nil {
			return err
		}
		defer unlock()
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	return testbed.Down(ctx, stateDir)
}

package main

import (
	"context"
	"os"
	"time"

	"github.com/spf13/pflag"

	"github.com/directlb/directlb/e2e/testbed"
)

func runStatus(args []string) error {
	stateDir := testbed.DefaultStateDir
	fs := pflag.NewFlagSet("status", pflag.ContinueOnError)
	fs.StringVar(&stateDir, "state-dir", stateDir, "the test bed's state dir")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return testbed.WriteStatus(ctx, os.Stdout, stateDir)
}

package main

import (
	"context"
	"time"

	"github.com/spf13/pflag"

	"github.com/directlb/directlb/e2e/testbed"
)

func runDown(args []string) error {
	stateDir := testbed.DefaultStateDir
	fs := pflag.NewFlagSet("down", pflag.ContinueOnError)
	fs.StringVar(&stateDir, "state-dir", stateDir, "the test bed's state dir")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return testbed.Down(ctx, stateDir)
}

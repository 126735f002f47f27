package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/directlb/directlb/e2e/bedimages"
)

// runImages is `dlb-testbed images`: the images the test bed's kubelets
// run, as OCI archives for `ctr images import`.
func runImages(args []string) error {
	cfg := bedimages.DefaultConfig()
	fs := pflag.NewFlagSet("images", pflag.ContinueOnError)
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
	begin := time.Now()
	results, err := bedimages.Build(ctx, cfg)
	if err != nil {
		return err
	}
	written := 0
	for _, r := range results {
		if r.Built {
			written++
		}
	}
	fmt.Printf("%d images (%d written, %d unchanged) in %.1fs, listed in %s\n", len(results), written,
		len(results)-written, time.Since(begin).Seconds(), filepath.Join(cfg.OutDir, bedimages.ListFile))
	return nil
}

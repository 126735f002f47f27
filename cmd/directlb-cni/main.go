// directlb-cni is directlb's CNI plugin: the runtime runs it with
// CNI_COMMAND set (docs/cni.md). `directlb-cni install` puts it on a node,
// from the chart's init container.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/spf13/pflag"

	"github.com/directlb/directlb/pkg/cni"
	"github.com/directlb/directlb/pkg/cni/install"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "install" {
		if err := runInstall(os.Args[2:]); err != nil && !errors.Is(err, pflag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "directlb-cni install:", err)
			os.Exit(1)
		}
		return
	}
	p := &cni.Plugin{}
	skel.PluginMainFuncs(p.Funcs(), cni.Versions, cni.About)
}

func runInstall(args []string) error {
	cfg := install.DefaultConfig()
	fs := pflag.NewFlagSet("directlb-cni install", pflag.ContinueOnError)
	cfg.BindFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := install.Run(context.Background(), cfg, os.Getenv); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "installed %s in %s and %s in %s\n", cni.Type, cfg.BinDir, cfg.ConfName, cfg.ConfDir)
	return nil
}

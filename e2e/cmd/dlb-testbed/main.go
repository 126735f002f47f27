// Command dlb-testbed brings the local test bed up and down and builds its
// images.
//
//	dlb-testbed up [flags]        bring the test bed up (control plane, VPC, nodes)
//	dlb-testbed down [flags]      tear everything down; idempotent, also after a crash
//	dlb-testbed status [flags]    print the topology and what runs
//	dlb-testbed images [flags]    build the images for real kubelets as OCI archives
package main

import (
	"fmt"
	"os"
)

var commands = map[string]func(args []string) error{
	"up":     runUp,
	"down":   runDown,
	"status": runStatus,
	"images": runImages,
}

func main() {
	if len(os.Args) < 2 || commands[os.Args[1]] == nil {
		fmt.Fprintln(os.Stderr, "usage: dlb-testbed up|down|status|images [flags]")
		if len(os.Args) >= 2 && (os.Args[1] == "-h" || os.Args[1] == "--help" || os.Args[1] == "help") {
			os.Exit(0)
		}
		os.Exit(2)
	}
	if err := commands[os.Args[1]](os.Args[2:]); err != nil {
		fmt.Fprintf(os.Stderr, "dlb-testbed %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

// Command dlb-testbed brings the local test bed up and down, and is also the
// program the test bed runs for its kubelet stand-ins and echo containers.
//
//	dlb-testbed up [flags]        bring the test bed up (control plane, VPC, nodes)
//	dlb-testbed down [flags]      tear everything down; idempotent, also after a crash
//	dlb-testbed status [flags]    print the topology and what runs
//	dlb-testbed kubelet [flags]   the kubelet stand-in for one node (started by up)
//	dlb-testbed echo [flags]      the built-in echo server a container runs
//	dlb-testbed images [flags]    build the images for real kubelets as OCI archives
package main

import (
	"fmt"
	"os"

	"github.com/directlb/directlb/e2e/echo"
)

var commands = map[string]func(args []string) error{
	"up":      runUp,
	"down":    runDown,
	"status":  runStatus,
	"kubelet": runKubelet,
	"echo":    echo.Command,
	"images":  runImages,
}

func main() {
	if len(os.Args) < 2 || commands[os.Args[1]] == nil {
		fmt.Fprintln(os.Stderr, "usage: dlb-testbed up|down|status|kubelet|echo|images [flags]")
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

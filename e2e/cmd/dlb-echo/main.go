// Command dlb-echo is the echo server of the test bed's example.com/echo
// image (see e2e/echo): on a real kubelet it takes its pod name from the
// hostname and its ports from ECHO_TCP_PORTS and ECHO_UDP_PORTS.
package main

import (
	"fmt"
	"os"

	"github.com/directlb/directlb/e2e/echo"
)

func main() {
	if err := echo.Command(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "dlb-echo:", err)
		os.Exit(1)
	}
}

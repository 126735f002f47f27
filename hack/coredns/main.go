// Command coredns is CoreDNS with only the plugins the test bed's cluster
// DNS uses (the Corefile in e2e/testbed/clusterdns.go), so that it builds in
// a fraction of the time of the full plugin set. Its own module keeps
// CoreDNS's dependencies out of the Kubernetes tools module.
package main

import (
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

func main() {
	coremain.Run()
}

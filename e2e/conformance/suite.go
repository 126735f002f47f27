// Package conformance runs the upstream Kubernetes e2e suite (e2e.test
// from the pinned k8s.io/kubernetes, through ginkgo) on the test bed, once
// per column: the control (real kube-proxy on every node) and directlb
// (the chart with node-agent as the kube-proxy replacement), and records
// each test's result (docs/conformance.md).
package conformance

import (
	"fmt"
	"strings"
)

// Skip is a test-name pattern left out of a suite, and why.
type Skip struct {
	Pattern, Reason string
}

// Suite is a set of upstream tests: those whose full name matches Focus
// and none of Skips.
type Suite struct {
	Name  string
	Focus string
	Skips []Skip
	// Procs is how many ginkgo processes run the suite's tests in parallel.
	Procs int
}

// SkipRegexp is the suite's skips as one ginkgo --skip expression.
func (s Suite) SkipRegexp() string {
	var ps []string
	for _, sk := range s.Skips {
		ps = append(ps, sk.Pattern)
	}
	return strings.Join(ps, "|")
}

// commonSkips are left out of every suite: they need a feature gate the
// bed does not turn on, or the cluster to themselves, or to break it.
var commonSkips = []Skip{
	{`\[Alpha\]|\[Beta\]|\[Feature:|Experimental`, "needs a feature gate or an alpha/beta API the bed does not turn on (as Cilium's and kube-proxy's CI)"},
	{`\[Disruptive\]|\[Serial\]`, "restarts or breaks cluster components, or needs the cluster to itself (as Cilium's CI)"},
}

// networkSkips are Cilium's kube-proxy-replacement skips for
// [sig-network] (its conformance workflow), each with what it needs.
var networkSkips = []Skip{
	{`KubeProxy|kube-proxy`, "tests kube-proxy itself (its metrics, flags, conntrack cleanup), which the directlb column does not run"},
	{`ExternalIP`, "externalIPs routed from outside the cluster"},
	{`LoadBalancer`, "a cloud provider's service controller; directlb provisions only its own class (docs/lb-controller.md)"},
	{`GCE|\[Provider:`, "a specific cloud provider"},
	{`NetworkPolicy`, "a network policy implementation; neither column has one"},
	{`rejected`, "REJECT for Services without endpoints (kube-proxy's iptables semantics; Cilium skips it too)"},
	{`externalTrafficPolicy`, "externalTrafficPolicy Local through a cloud load balancer"},
	{`SCTPConnectivity|SCTP`, "SCTP, which the bed's kernel module set and directlb do not offer"},
	{`IPv6|DualStack`, "the bed is IPv4-only"},
}

// Services is the gate CI holds directlb to: the 15 upstream
// "[sig-network] Services ... [Conformance]" tests of the pinned release.
var Services = Suite{
	Name:  "services",
	Focus: `\[sig-network\] Services .*\[Conformance\]`,
	Skips: commonSkips,
	Procs: 3,
}

// Network is the whole [sig-network] suite with Cilium's skips.
var Network = Suite{
	Name:  "sig-network",
	Focus: `\[sig-network\]`,
	Skips: append(append([]Skip{}, commonSkips...), networkSkips...),
	Procs: 4,
}

// Node is the [sig-node] subset directlb's claims rest on: readiness
// gates, readiness probes, preStop hooks and graceful termination.
var Node = Suite{
	Name: "sig-node",
	Focus: `\[sig-node\] (Pods should support pod readiness gates|PreStop|` +
		`Container Lifecycle Hook when create a pod with lifecycle hook should execute prestop|` +
		`Probing container .*readiness|Pods Extended Delete Grace Period|Lifecycle Sleep Hook)`,
	Skips: append(append([]Skip{}, commonSkips...), imageSkips...),
	Procs: 3,
}

// imageSkips need an image the bed cannot build: there is no registry, and
// only agnhost, busybox and pause of upstream's test images are made
// locally (docs/testbed.md).
var imageSkips = []Skip{
	{`graceful pod terminated should wait until preStop hook completes the process`,
		"runs nginx:1.15-4, which the bed cannot build; the same preStop-during-grace behaviour is checked by [sig-node] PreStop should call prestop when killing a pod [Conformance] and by e2e TestPodPreStopKeepsServing"},
}

// Suites are the suites by name.
var Suites = map[string]Suite{Services.Name: Services, Network.Name: Network, Node.Name: Node}

// SuiteByName returns the named suite.
func SuiteByName(name string) (Suite, error) {
	s, ok := Suites[name]
	if !ok {
		return Suite{}, fmt.Errorf("suite %q: want one of services, sig-network, sig-node", name)
	}
	return s, nil
}

// Package proxy is the node agent's control plane for Service load
// balancing: it watches Services, EndpointSlices and Nodes, decides which
// endpoints serve each Service's ClusterIPs, NodePorts, externalIPs and
// load-balancer IPs on this node with kube-proxy's rules, and programs the
// result into the datapath incrementally.
package proxy

import (
	"net/netip"
	"slices"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/directlb/directlb/pkg/datapath"
)

// Labels kube-proxy honours; a Service carrying either is not ours.
const (
	LabelServiceProxyName = "service.kubernetes.io/service-proxy-name"
	LabelHeadless         = "service.kubernetes.io/headless"
)

// ServiceSelector is the label selector kube-proxy uses for its Service
// informer; the agent uses the same one.
const ServiceSelector = "!" + LabelServiceProxyName + ",!" + LabelHeadless

// DefaultAffinityTimeout is Kubernetes' default for sessionAffinity ClientIP.
const DefaultAffinityTimeout = 10800 * time.Second

// Handled reports whether the agent programs this Service at all:
// ExternalName and headless Services, and those another proxy owns
// (service-proxy-name label), are skipped, as kube-proxy skips them.
func Handled(svc *v1.Service) bool {
	if svc == nil {
		return false
	}
	if _, ok := svc.Labels[LabelServiceProxyName]; ok {
		return false
	}
	if _, ok := svc.Labels[LabelHeadless]; ok {
		return false
	}
	if svc.Spec.Type == v1.ServiceTypeExternalName {
		return false
	}
	if svc.Spec.ClusterIP == "" || svc.Spec.ClusterIP == v1.ClusterIPNone {
		return false
	}
	return true
}

func toProtocol(p v1.Protocol) (datapath.Protocol, bool) {
	switch p {
	case v1.ProtocolTCP, "":
		return datapath.TCP, true
	case v1.ProtocolUDP:
		return datapath.UDP, true
	}
	return 0, false
}

// endpointState is one endpoint's address with its conditions and its
// topology hints.
type endpointState struct {
	addr        netip.AddrPort
	ready       bool
	serving     bool
	terminating bool
	local       bool
	// zoneHints and nodeHints are the EndpointSlice controller's hints
	// (set from the Service's trafficDistribution): the zones and nodes
	// whose traffic this endpoint takes.
	zoneHints []string
	nodeHints []string
}

// ThisNode is what the endpoint choice needs to know of the node the agent
// runs on: its name (local endpoints, node hints) and its zone, the
// topology.kubernetes.io/zone label of its Node (zone hints).
type ThisNode struct {
	Name string
	Zone string
}

// Desired returns the datapath Services that svc needs on node nodeName,
// given the EndpointSlices that belong to it: one per ClusterIP × port and
// one address entry per ClusterIP; one NodePort frontend per port with a
// nodePort; one per externalIP × port and per load-balancer ingress IP ×
// port (not for ipMode Proxy, whose load balancer must see the traffic,
// nor while loadBalancerSourceRanges is set, which the load balancer
// enforces and the socket hooks do not). Which endpoints serve follows
// kube-proxy's CategorizeEndpoints:
//   - ready endpoints serve, terminating or not (the EndpointSlice
//     controller marks terminating pods ready only for
//     publishNotReadyAddresses Services, which then keep all of them);
//   - if none is ready, the serving-and-terminating ones serve (KEP-1669),
//     so a rollout that leaves only terminating pods does not drop traffic;
//   - topology hints (trafficDistribution PreferSameNode / PreferSameZone,
//     or the topology-mode annotation) narrow the ready endpoints to those
//     hinted for this node, else for its zone, when every ready endpoint
//     carries such hints and one of them names this node (zone); otherwise
//     they are ignored, as kube-proxy ignores them;
//   - internalTrafficPolicy Local keeps only endpoints on this node, with
//     the same fallback among them; with none here while the Service has
//     usable endpoints elsewhere, its traffic is dropped (Drop), as
//     kube-proxy drops it;
//   - with no usable endpoint anywhere the Service is still programmed,
//     with none, so that connections are refused at once;
//   - a port the ClusterIP does not serve is refused (the address entry),
//     as kube-proxy's nftables mode rejects it;
//   - NodePorts, externalIPs and load-balancer IPs reached from this node
//     (its processes and its pods: the socket hooks see nothing else) use
//     every usable endpoint of the cluster whatever the traffic policies
//     say: kube-proxy sends traffic from the node itself and from pods to
//     these "external" destinations to the Service's cluster-wide
//     endpoints, externalTrafficPolicy Local applying only to traffic
//     from outside, and internalTrafficPolicy only to ClusterIPs.
func Desired(svc *v1.Service, slices []*discoveryv1.EndpointSlice, node ThisNode) []datapath.Service {
	if !Handled(svc) {
		return nil
	}
	ips := ipv4ClusterIPs(svc)
	if len(ips) == 0 {
		return nil
	}
	timeout := affinityTimeout(svc)
	local := svc.Spec.InternalTrafficPolicy != nil && *svc.Spec.InternalTrafficPolicy == v1.ServiceInternalTrafficPolicyLocal

	var out []datapath.Service
	for _, port := range svc.Spec.Ports {
		proto, ok := toProtocol(port.Protocol)
		if !ok {
			continue // SCTP is not translated
		}
		eps := endpointsFor(slices, port, node.Name)
		backends, drop := chooseEndpoints(eps, local, node)
		for _, ip := range ips {
			out = append(out, datapath.Service{
				Frontend:        datapath.Frontend{Addr: ip, Port: uint16(port.Port), Proto: proto},
				Backends:        backends,
				AffinityTimeout: timeout,
				Drop:            drop,
			})
		}
		var cluster []netip.AddrPort
		for i, fe := range externalFrontends(svc, port, proto, ips) {
			if i == 0 {
				cluster = clusterEndpoints(eps, node)
			}
			out = append(out, datapath.Service{Frontend: fe, Backends: cluster, AffinityTimeout: timeout})
		}
	}
	for _, ip := range ips {
		out = append(out, datapath.Service{Frontend: datapath.AddressFrontend(ip)})
	}
	return out
}

// DesiredNorthSouth returns the datapath Services for traffic that comes
// from outside the node to its NodePorts, externalIPs and load-balancer IPs
// (the tc programs; external-scope frontends). externalTrafficPolicy
// decides, as kube-proxy applies it to external traffic:
//   - Cluster: every usable endpoint, and the client is SNATed to the node
//     when the endpoint is on another node (so that the reply comes back);
//   - Local: this node's usable endpoints (with the terminating fallback
//     among them) and the client's address kept; none here while there are
//     some elsewhere drops the traffic, so a load balancer's health check
//     (healthCheckNodePort) takes the node out.
//
// With no usable endpoint anywhere the frontend has none, and the node's
// stack refuses the connection as it refuses a closed port.
func DesiredNorthSouth(svc *v1.Service, eps []*discoveryv1.EndpointSlice, node ThisNode) []datapath.Service {
	if !Handled(svc) {
		return nil
	}
	ips := ipv4ClusterIPs(svc)
	if len(ips) == 0 {
		return nil
	}
	timeout := affinityTimeout(svc)
	local := svc.Spec.ExternalTrafficPolicy == v1.ServiceExternalTrafficPolicyLocal
	var out []datapath.Service
	for _, port := range svc.Spec.Ports {
		proto, ok := toProtocol(port.Protocol)
		if !ok {
			continue
		}
		fes := externalFrontends(svc, port, proto, ips)
		if len(fes) == 0 {
			continue
		}
		backends, drop := chooseEndpoints(endpointsFor(eps, port, node.Name), local, node)
		for _, fe := range fes {
			out = append(out, datapath.Service{
				Frontend:        fe.External(),
				Backends:        backends,
				AffinityTimeout: timeout,
				Drop:            drop,
				SNAT:            !local,
			})
		}
	}
	return out
}

// externalFrontends are the frontends of one Service port that are not
// ClusterIPs: its NodePort, its externalIPs and its load-balancer ingress
// IPs (IPv4 only, as the ClusterIPs). An address that is also one of the
// Service's ClusterIPs is left to the ClusterIP frontend.
func externalFrontends(svc *v1.Service, port v1.ServicePort, proto datapath.Protocol, clusterIPs []netip.Addr) []datapath.Frontend {
	var out []datapath.Frontend
	if (svc.Spec.Type == v1.ServiceTypeNodePort || svc.Spec.Type == v1.ServiceTypeLoadBalancer) && port.NodePort > 0 && port.NodePort <= 65535 {
		out = append(out, datapath.NodePortFrontend(uint16(port.NodePort), proto))
	}
	add := func(s string) {
		a, err := netip.ParseAddr(s)
		if err != nil || !a.Is4() || a.IsUnspecified() || slices.Contains(clusterIPs, a) {
			return
		}
		fe := datapath.Frontend{Addr: a, Port: uint16(port.Port), Proto: proto}
		if !slices.Contains(out, fe) {
			out = append(out, fe)
		}
	}
	for _, ip := range svc.Spec.ExternalIPs {
		add(ip)
	}
	if svc.Spec.Type == v1.ServiceTypeLoadBalancer && len(svc.Spec.LoadBalancerSourceRanges) == 0 {
		for _, ing := range svc.Status.LoadBalancer.Ingress {
			if ing.IPMode != nil && *ing.IPMode == v1.LoadBalancerIPModeProxy {
				continue
			}
			add(ing.IP)
		}
	}
	return out
}

func clusterIPs(svc *v1.Service) []string {
	if len(svc.Spec.ClusterIPs) > 0 {
		return svc.Spec.ClusterIPs
	}
	return []string{svc.Spec.ClusterIP}
}

// endpointsFor collects the IPv4 endpoints of the slices for one Service
// port: the slice port with the same name and protocol.
func endpointsFor(eps []*discoveryv1.EndpointSlice, port v1.ServicePort, nodeName string) []endpointState {
	proto := port.Protocol
	if proto == "" {
		proto = v1.ProtocolTCP
	}
	var out []endpointState
	for _, s := range eps {
		if s == nil || s.AddressType != discoveryv1.AddressTypeIPv4 {
			continue
		}
		var target int32
		for _, p := range s.Ports {
			name, pproto := "", v1.ProtocolTCP
			if p.Name != nil {
				name = *p.Name
			}
			if p.Protocol != nil {
				pproto = *p.Protocol
			}
			if name == port.Name && pproto == proto && p.Port != nil {
				target = *p.Port
				break
			}
		}
		if target <= 0 || target > 65535 {
			continue
		}
		for _, ep := range s.Endpoints {
			if len(ep.Addresses) == 0 {
				continue
			}
			a, err := netip.ParseAddr(ep.Addresses[0])
			if err != nil || !a.Is4() {
				continue
			}
			// Conditions as discovery/v1 defines them and kube-proxy
			// reads them: nil ready and nil serving mean true, nil
			// terminating means false. (v1beta1 said a nil serving
			// defers to ready; v1 and kube-proxy take it as true.)
			ready := ep.Conditions.Ready == nil || *ep.Conditions.Ready
			serving := ep.Conditions.Serving == nil || *ep.Conditions.Serving
			terminating := ep.Conditions.Terminating != nil && *ep.Conditions.Terminating
			st := endpointState{
				addr:        netip.AddrPortFrom(a, uint16(target)),
				ready:       ready,
				serving:     serving,
				terminating: terminating,
				local:       ep.NodeName != nil && *ep.NodeName == nodeName,
			}
			if ep.Hints != nil {
				for _, z := range ep.Hints.ForZones {
					st.zoneHints = append(st.zoneHints, z.Name)
				}
				for _, n := range ep.Hints.ForNodes {
					st.nodeHints = append(st.nodeHints, n.Name)
				}
			}
			out = append(out, st)
		}
	}
	return out
}

// chooseEndpoints returns the endpoints that serve, and whether traffic is
// to be dropped because none of them is on this node while some elsewhere
// could serve (local: internalTrafficPolicy, or externalTrafficPolicy for
// traffic from outside, Local).
func chooseEndpoints(eps []endpointState, local bool, node ThisNode) ([]netip.AddrPort, bool) {
	if !local {
		return clusterEndpoints(eps, node), false
	}
	mine := usableEndpoints(slices.DeleteFunc(slices.Clone(eps), func(e endpointState) bool { return !e.local }), nil)
	return mine, len(mine) == 0 && len(usableEndpoints(eps, nil)) > 0
}

// clusterEndpoints are the endpoints of traffic that may go to any node:
// the ready ones the topology hints leave for this node, or if there is
// none the serving-and-terminating ones.
func clusterEndpoints(eps []endpointState, node ThisNode) []netip.AddrPort {
	return usableEndpoints(eps, topologyFilter(eps, node))
}

// topologyFilter returns which ready endpoints the topology hints leave
// for this node, or nil when the hints do not apply: node hints when every
// ready endpoint has some and one names this node, else zone hints on the
// same terms (kube-proxy's topologyModeFromHints).
func topologyFilter(eps []endpointState, node ThisNode) func(endpointState) bool {
	anyReady, allNode, forNode, allZone, forZone := false, true, false, true, false
	for _, e := range eps {
		if !e.ready {
			continue
		}
		anyReady = true
		if len(e.nodeHints) == 0 {
			allNode = false
		} else if slices.Contains(e.nodeHints, node.Name) {
			forNode = true
		}
		if len(e.zoneHints) == 0 {
			allZone = false
		} else if node.Zone != "" && slices.Contains(e.zoneHints, node.Zone) {
			forZone = true
		}
	}
	switch {
	case !anyReady:
		return nil
	case allNode && forNode:
		return func(e endpointState) bool { return slices.Contains(e.nodeHints, node.Name) }
	case allZone && forZone:
		return func(e endpointState) bool { return slices.Contains(e.zoneHints, node.Zone) }
	}
	return nil
}

// usableEndpoints are the ready endpoints (those keep allows, all when it
// is nil), or if there is none the serving-and-terminating ones, sorted
// and deduplicated.
func usableEndpoints(eps []endpointState, keep func(endpointState) bool) []netip.AddrPort {
	var ready, fallback []netip.AddrPort
	for _, e := range eps {
		switch {
		case e.ready:
			if keep == nil || keep(e) {
				ready = append(ready, e.addr)
			}
		case e.serving && e.terminating:
			fallback = append(fallback, e.addr)
		}
	}
	chosen := ready
	if len(chosen) == 0 {
		chosen = fallback
	}
	slices.SortFunc(chosen, func(a, b netip.AddrPort) int { return a.Compare(b) })
	return slices.Compact(chosen)
}

// serviceName returns the Service an EndpointSlice belongs to.
func serviceName(s *discoveryv1.EndpointSlice) (types.NamespacedName, bool) {
	name := s.Labels[discoveryv1.LabelServiceName]
	if name == "" || strings.Contains(name, "/") {
		return types.NamespacedName{}, false
	}
	return types.NamespacedName{Namespace: s.Namespace, Name: name}, true
}

// ipv4ClusterIPs are the Service's IPv4 ClusterIPs (IPv6 frontends are not
// programmed yet).
func ipv4ClusterIPs(svc *v1.Service) []netip.Addr {
	var ips []netip.Addr
	for _, s := range clusterIPs(svc) {
		if a, err := netip.ParseAddr(s); err == nil && a.Is4() {
			ips = append(ips, a)
		}
	}
	return ips
}

// affinityTimeout is the Service's ClientIP affinity timeout; zero means
// no affinity.
func affinityTimeout(svc *v1.Service) time.Duration {
	if svc.Spec.SessionAffinity != v1.ServiceAffinityClientIP {
		return 0
	}
	if c := svc.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil {
		return time.Duration(*c.ClientIP.TimeoutSeconds) * time.Second
	}
	return DefaultAffinityTimeout
}

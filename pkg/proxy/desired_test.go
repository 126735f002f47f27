package proxy

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/directlb/directlb/pkg/datapath"
)

const thisNode = "node-1"

func service(mut ...func(*v1.Service)) *v1.Service {
	s := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web"},
		Spec: v1.ServiceSpec{
			Type:       v1.ServiceTypeClusterIP,
			ClusterIP:  "10.96.0.10",
			ClusterIPs: []string{"10.96.0.10"},
			Ports:      []v1.ServicePort{{Name: "http", Port: 80, Protocol: v1.ProtocolTCP}},
		},
	}
	for _, m := range mut {
		m(s)
	}
	return s
}

type ep struct {
	addr                        string
	node                        string
	ready, serving, terminating *bool
	// forZones and forNodes are the endpoint's topology hints.
	forZones, forNodes []string
}

func slice(name string, port int32, eps ...ep) *discoveryv1.EndpointSlice {
	s := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "ns", Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To(port), Protocol: ptr.To(v1.ProtocolTCP)}},
	}
	for _, e := range eps {
		node := e.node
		if node == "" {
			node = thisNode
		}
		var hints *discoveryv1.EndpointHints
		if e.forZones != nil || e.forNodes != nil {
			hints = &discoveryv1.EndpointHints{}
			for _, z := range e.forZones {
				hints.ForZones = append(hints.ForZones, discoveryv1.ForZone{Name: z})
			}
			for _, n := range e.forNodes {
				hints.ForNodes = append(hints.ForNodes, discoveryv1.ForNode{Name: n})
			}
		}
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{e.addr},
			NodeName:   ptr.To(node),
			Conditions: discoveryv1.EndpointConditions{Ready: e.ready, Serving: e.serving, Terminating: e.terminating},
			Hints:      hints,
		})
	}
	return s
}

var (
	yes = ptr.To(true)
	no  = ptr.To(false)
)

func ready(addr, node string) ep {
	return ep{addr: addr, node: node, ready: yes, serving: yes, terminating: no}
}
func terminating(addr, node string, serving bool) ep {
	return ep{addr: addr, node: node, ready: no, serving: ptr.To(serving), terminating: yes}
}

func backends(s ...string) []netip.AddrPort {
	out := []netip.AddrPort{}
	for _, a := range s {
		out = append(out, netip.MustParseAddrPort(a))
	}
	return out
}

func tcp80(bs []netip.AddrPort) []datapath.Service {
	return []datapath.Service{{Frontend: datapath.Frontend{Addr: netip.MustParseAddr("10.96.0.10"), Port: 80, Proto: datapath.TCP}, Backends: bs}}
}

// desiredCase is a Service and its EndpointSlices, and the datapath Services
// Desired should program for them.
type desiredCase struct {
	name   string
	svc    *v1.Service
	slices []*discoveryv1.EndpointSlice
	want   []datapath.Service
}

// desiredCases: the ClusterIP, as kube-proxy's CategorizeEndpoints picks
// its endpoints.
var desiredCases = []desiredCase{
	{
		name:   "ready endpoints from two slices, deduplicated and sorted",
		svc:    service(),
		slices: []*discoveryv1.EndpointSlice{slice("a", 8080, ready("10.1.0.2", ""), ready("10.1.0.1", "node-2")), slice("b", 8080, ready("10.1.0.1", "node-2"))},
		want:   tcp80(backends("10.1.0.1:8080", "10.1.0.2:8080")),
	},
	{
		name:   "nil conditions mean ready",
		svc:    service(),
		slices: []*discoveryv1.EndpointSlice{slice("a", 8080, ep{addr: "10.1.0.1"})},
		want:   tcp80(backends("10.1.0.1:8080")),
	},
	{
		name:   "not ready and terminating are left out while one is ready",
		svc:    service(),
		slices: []*discoveryv1.EndpointSlice{slice("a", 8080, ready("10.1.0.1", ""), terminating("10.1.0.2", "", true), ep{addr: "10.1.0.3", ready: no, serving: no, terminating: no})},
		want:   tcp80(backends("10.1.0.1:8080")),
	},
	{
		name:   "serving terminating endpoints serve when none is ready (KEP-1669)",
		svc:    service(),
		slices: []*discoveryv1.EndpointSlice{slice("a", 8080, terminating("10.1.0.2", "", true), terminating("10.1.0.3", "", false), ep{addr: "10.1.0.4", ready: no, serving: no})},
		want:   tcp80(backends("10.1.0.2:8080")),
	},
	{
		name:   "no endpoints: programmed empty, so it refuses",
		svc:    service(),
		slices: nil,
		want:   tcp80(backends()),
	},
	{
		name: "internalTrafficPolicy Local keeps this node's endpoints",
		svc: service(func(s *v1.Service) {
			s.Spec.InternalTrafficPolicy = ptr.To(v1.ServiceInternalTrafficPolicyLocal)
		}),
		slices: []*discoveryv1.EndpointSlice{slice("a", 8080, ready("10.1.0.1", "node-2"), ready("10.1.0.2", thisNode))},
		want:   tcp80(backends("10.1.0.2:8080")),
	},
	{
		name: "Local: the terminating fallback applies among local endpoints",
		svc: service(func(s *v1.Service) {
			s.Spec.InternalTrafficPolicy = ptr.To(v1.ServiceInternalTrafficPolicyLocal)
		}),
		slices: []*discoveryv1.EndpointSlice{slice("a", 8080, ready("10.1.0.1", "node-2"), terminating("10.1.0.2", thisNode, true))},
		want:   tcp80(backends("10.1.0.2:8080")),
	},
	// The rows below are kube-proxy's behaviour where the issue found
	// node-agent's different (pkg/proxy CategorizeEndpoints and the
	// iptables/nftables proxiers' reject/drop rules).
	{
		name: "Local with no local endpoint but some elsewhere: dropped, not refused",
		svc: service(func(s *v1.Service) {
			s.Spec.InternalTrafficPolicy = ptr.To(v1.ServiceInternalTrafficPolicyLocal)
		}),
		slices: []*discoveryv1.EndpointSlice{slice("a", 8080, ready("10.1.0.1", "node-2"))},
		want:   []datapath.Service{{Frontend: tcp80(nil)[0].Frontend, Drop: true}},
	},
	{
		name: "Local with a serving terminating endpoint elsewhere only: dropped",
		svc: service(func(s *v1.Service) {
			s.Spec.InternalTrafficPolicy = ptr.To(v1.ServiceInternalTrafficPolicyLocal)
		}),
		slices: []*discoveryv1.EndpointSlice{slice("a", 8080, terminating("10.1.0.1", "node-2", true))},
		want:   []datapath.Service{{Frontend: tcp80(nil)[0].Frontend, Drop: true}},
	},
	{
		name: "Local with no usable endpoint anywhere: refused",
		svc: service(func(s *v1.Service) {
			s.Spec.InternalTrafficPolicy = ptr.To(v1.ServiceInternalTrafficPolicyLocal)
		}),
		slices: []*discoveryv1.EndpointSlice{slice("a", 8080, terminating("10.1.0.1", "node-2", false), ep{addr: "10.1.0.2", node: "node-2", ready: no, serving: no, terminating: no})},
		want:   tcp80(backends()),
	},
	{
		name: "publishNotReadyAddresses: ready terminating endpoints serve with the live one",
		svc:  service(func(s *v1.Service) { s.Spec.PublishNotReadyAddresses = true }),
		slices: []*discoveryv1.EndpointSlice{slice("a", 8080,
			ready("10.1.0.1", ""),
			ep{addr: "10.1.0.2", ready: yes, serving: yes, terminating: yes},
			ep{addr: "10.1.0.3", ready: yes, serving: no, terminating: yes})},
		want: tcp80(backends("10.1.0.1:8080", "10.1.0.2:8080", "10.1.0.3:8080")),
	},
	{
		name:   "ready wins over the terminating state without publishNotReadyAddresses too",
		svc:    service(),
		slices: []*discoveryv1.EndpointSlice{slice("a", 8080, ep{addr: "10.1.0.2", ready: yes, terminating: yes}, terminating("10.1.0.3", "", true))},
		want:   tcp80(backends("10.1.0.2:8080")),
	},
	{
		name:   "manual slice: not ready, terminating, serving omitted: nil serving is true, so the fallback serves",
		svc:    service(),
		slices: []*discoveryv1.EndpointSlice{slice("a", 8080, ep{addr: "10.1.0.2", ready: no, terminating: yes}, ep{addr: "10.1.0.3", ready: no})},
		want:   tcp80(backends("10.1.0.2:8080")),
	},
	{
		name:   "not ready and not terminating never serves, even as a fallback",
		svc:    service(),
		slices: []*discoveryv1.EndpointSlice{slice("a", 8080, ep{addr: "10.1.0.3", ready: no, serving: yes, terminating: no})},
		want:   tcp80(backends()),
	},
	{
		name:   "port matched by name; other ports of the slice ignored",
		svc:    service(func(s *v1.Service) { s.Spec.Ports[0].Name = "metrics" }),
		slices: []*discoveryv1.EndpointSlice{slice("a", 8080, ready("10.1.0.1", ""))},
		want:   tcp80(backends()),
	},
	{
		name: "session affinity ClientIP with its timeout",
		svc: service(func(s *v1.Service) {
			s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
			s.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr.To[int32](30)}}
		}),
		slices: []*discoveryv1.EndpointSlice{slice("a", 8080, ready("10.1.0.1", ""))},
		want: []datapath.Service{{
			Frontend: datapath.Frontend{Addr: netip.MustParseAddr("10.96.0.10"), Port: 80, Proto: datapath.TCP},
			Backends: backends("10.1.0.1:8080"), AffinityTimeout: 30 * time.Second,
		}},
	},
	{
		name: "UDP and SCTP ports: UDP programmed, SCTP skipped",
		svc: service(func(s *v1.Service) {
			s.Spec.Ports = []v1.ServicePort{{Name: "dns", Port: 53, Protocol: v1.ProtocolUDP}, {Name: "sctp", Port: 99, Protocol: v1.ProtocolSCTP}}
		}),
		slices: []*discoveryv1.EndpointSlice{{
			ObjectMeta:  metav1.ObjectMeta{Namespace: "ns", Name: "a"},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("dns"), Port: ptr.To[int32](5353), Protocol: ptr.To(v1.ProtocolUDP)}, {Name: ptr.To("sctp"), Port: ptr.To[int32](99), Protocol: ptr.To(v1.ProtocolSCTP)}},
			Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.1.0.1"}}},
		}},
		want: []datapath.Service{{Frontend: datapath.Frontend{Addr: netip.MustParseAddr("10.96.0.10"), Port: 53, Proto: datapath.UDP}, Backends: backends("10.1.0.1:5353")}},
	},
	{
		name: "IPv6 slices and addresses are ignored",
		svc:  service(func(s *v1.Service) { s.Spec.ClusterIPs = []string{"10.96.0.10", "fd00::10"} }),
		slices: []*discoveryv1.EndpointSlice{func() *discoveryv1.EndpointSlice {
			s := slice("a", 8080, ep{addr: "fd00::1"})
			s.AddressType = discoveryv1.AddressTypeIPv6
			return s
		}()},
		want: tcp80(backends()),
	},
	{
		name: "headless Service ignored",
		svc: service(func(s *v1.Service) {
			s.Spec.ClusterIP = v1.ClusterIPNone
			s.Spec.ClusterIPs = []string{v1.ClusterIPNone}
		}),
		slices: []*discoveryv1.EndpointSlice{slice("a", 8080, ready("10.1.0.1", ""))},
	},
	{
		name:   "ExternalName ignored",
		svc:    service(func(s *v1.Service) { s.Spec.Type = v1.ServiceTypeExternalName; s.Spec.ExternalName = "example.com" }),
		slices: nil,
	},
	{
		name:   "service-proxy-name label: another proxy's Service",
		svc:    service(func(s *v1.Service) { s.Labels = map[string]string{LabelServiceProxyName: "other"} }),
		slices: []*discoveryv1.EndpointSlice{slice("a", 8080, ready("10.1.0.1", ""))},
	},
	{
		name:   "headless label ignored",
		svc:    service(func(s *v1.Service) { s.Labels = map[string]string{LabelHeadless: ""} }),
		slices: []*discoveryv1.EndpointSlice{slice("a", 8080, ready("10.1.0.1", ""))},
	},
}

func TestDesired(t *testing.T) {
	for _, c := range desiredCases {
		t.Run(c.name, func(t *testing.T) {
			want := c.want
			if want != nil {
				// Every programmed ClusterIP has its address entry.
				want = append(slices.Clone(want), datapath.Service{Frontend: datapath.AddressFrontend(netip.MustParseAddr("10.96.0.10"))})
			}
			got := Desired(c.svc, c.slices, ThisNode{Name: thisNode})
			if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b }), cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b }), cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

// externalClusterIP is the ClusterIP of service().
var externalClusterIP = netip.MustParseAddr("10.96.0.10")

// tcpAt is the TCP frontend at addr:port.
func tcpAt(addr string, port uint16) datapath.Frontend {
	return datapath.Frontend{Addr: netip.MustParseAddr(addr), Port: port, Proto: datapath.TCP}
}

// withNodePort makes service() a NodePort Service on 30080.
func withNodePort(s *v1.Service) {
	s.Spec.Type = v1.ServiceTypeNodePort
	s.Spec.Ports[0].NodePort = 30080
}

// withLBIngress makes service() a LoadBalancer Service with these ingress
// points.
func withLBIngress(ing ...v1.LoadBalancerIngress) func(*v1.Service) {
	return func(s *v1.Service) {
		withNodePort(s)
		s.Spec.Type = v1.ServiceTypeLoadBalancer
		s.Status.LoadBalancer.Ingress = ing
	}
}

var (
	externalTwoNodes = []*discoveryv1.EndpointSlice{slice("a", 8080, ready("10.1.0.1", "node-2"), ready("10.1.0.2", thisNode))}
	externalAll      = backends("10.1.0.1:8080", "10.1.0.2:8080")
)

// desiredExternalCases: every frontend of a Service as this node's sockets
// reach it.
var desiredExternalCases = []desiredCase{
	{
		name:   "NodePort: the port on every node address, all endpoints",
		svc:    service(withNodePort),
		slices: externalTwoNodes,
		want: []datapath.Service{
			{Frontend: tcpAt("10.96.0.10", 80), Backends: externalAll},
			{Frontend: datapath.NodePortFrontend(30080, datapath.TCP), Backends: externalAll},
		},
	},
	{
		name: "externalTrafficPolicy Local does not apply to the node's own traffic",
		svc: service(withNodePort, func(s *v1.Service) {
			s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
		}),
		slices: []*discoveryv1.EndpointSlice{slice("a", 8080, ready("10.1.0.1", "node-2"))},
		want: []datapath.Service{
			{Frontend: tcpAt("10.96.0.10", 80), Backends: backends("10.1.0.1:8080")},
			{Frontend: datapath.NodePortFrontend(30080, datapath.TCP), Backends: backends("10.1.0.1:8080")},
		},
	},
	{
		name: "internalTrafficPolicy Local applies to the ClusterIP only",
		svc: service(withNodePort, func(s *v1.Service) {
			s.Spec.InternalTrafficPolicy = ptr.To(v1.ServiceInternalTrafficPolicyLocal)
			s.Spec.ExternalIPs = []string{"192.0.2.7"}
		}),
		slices: []*discoveryv1.EndpointSlice{slice("a", 8080, ready("10.1.0.1", "node-2"))},
		want: []datapath.Service{
			{Frontend: tcpAt("10.96.0.10", 80), Drop: true},
			{Frontend: datapath.NodePortFrontend(30080, datapath.TCP), Backends: backends("10.1.0.1:8080")},
			{Frontend: tcpAt("192.0.2.7", 80), Backends: backends("10.1.0.1:8080")},
		},
	},
	{
		name:   "no endpoints: every frontend refuses; the terminating fallback serves them all",
		svc:    service(withNodePort, func(s *v1.Service) { s.Spec.ExternalIPs = []string{"192.0.2.7"} }),
		slices: []*discoveryv1.EndpointSlice{slice("a", 8080, terminating("10.1.0.3", "node-2", true))},
		want: []datapath.Service{
			{Frontend: tcpAt("10.96.0.10", 80), Backends: backends("10.1.0.3:8080")},
			{Frontend: datapath.NodePortFrontend(30080, datapath.TCP), Backends: backends("10.1.0.3:8080")},
			{Frontend: tcpAt("192.0.2.7", 80), Backends: backends("10.1.0.3:8080")},
		},
	},
	{
		name: "session affinity on every frontend",
		svc: service(withNodePort, func(s *v1.Service) {
			s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
		}),
		slices: externalTwoNodes,
		want: []datapath.Service{
			{Frontend: tcpAt("10.96.0.10", 80), Backends: externalAll, AffinityTimeout: DefaultAffinityTimeout},
			{Frontend: datapath.NodePortFrontend(30080, datapath.TCP), Backends: externalAll, AffinityTimeout: DefaultAffinityTimeout},
		},
	},
	{
		name: "externalIPs on a ClusterIP Service; IPv6, bad and duplicate ones skipped",
		svc: service(func(s *v1.Service) {
			s.Spec.ExternalIPs = []string{"192.0.2.7", "2001:db8::1", "nonsense", "192.0.2.7", "10.96.0.10"}
		}),
		slices: externalTwoNodes,
		want: []datapath.Service{
			{Frontend: tcpAt("10.96.0.10", 80), Backends: externalAll},
			{Frontend: tcpAt("192.0.2.7", 80), Backends: externalAll},
		},
	},
	{
		name: "LoadBalancer: ingress IPs (VIP or unset ipMode), not Proxy, not hostnames",
		svc: service(withLBIngress(
			v1.LoadBalancerIngress{IP: "198.51.100.1"},
			v1.LoadBalancerIngress{IP: "198.51.100.2", IPMode: ptr.To(v1.LoadBalancerIPModeVIP)},
			v1.LoadBalancerIngress{IP: "198.51.100.3", IPMode: ptr.To(v1.LoadBalancerIPModeProxy)},
			v1.LoadBalancerIngress{Hostname: "lb.example.com"},
		)),
		slices: externalTwoNodes,
		want: []datapath.Service{
			{Frontend: tcpAt("10.96.0.10", 80), Backends: externalAll},
			{Frontend: datapath.NodePortFrontend(30080, datapath.TCP), Backends: externalAll},
			{Frontend: tcpAt("198.51.100.1", 80), Backends: externalAll},
			{Frontend: tcpAt("198.51.100.2", 80), Backends: externalAll},
		},
	},
	{
		name: "LoadBalancer with loadBalancerSourceRanges: its IPs are left to the load balancer",
		svc: service(withLBIngress(v1.LoadBalancerIngress{IP: "198.51.100.1"}), func(s *v1.Service) {
			s.Spec.LoadBalancerSourceRanges = []string{"203.0.113.0/24"}
		}),
		slices: externalTwoNodes,
		want: []datapath.Service{
			{Frontend: tcpAt("10.96.0.10", 80), Backends: externalAll},
			{Frontend: datapath.NodePortFrontend(30080, datapath.TCP), Backends: externalAll},
		},
	},
	{
		name: "LoadBalancer without node ports (allocateLoadBalancerNodePorts false)",
		svc: service(withLBIngress(v1.LoadBalancerIngress{IP: "198.51.100.1"}), func(s *v1.Service) {
			s.Spec.Ports[0].NodePort = 0
		}),
		slices: externalTwoNodes,
		want: []datapath.Service{
			{Frontend: tcpAt("10.96.0.10", 80), Backends: externalAll},
			{Frontend: tcpAt("198.51.100.1", 80), Backends: externalAll},
		},
	},
	{
		name: "UDP NodePort",
		svc: service(withNodePort, func(s *v1.Service) {
			s.Spec.Ports[0].Protocol = v1.ProtocolUDP
		}),
		slices: []*discoveryv1.EndpointSlice{func() *discoveryv1.EndpointSlice {
			s := slice("a", 5353, ready("10.1.0.1", ""))
			s.Ports[0].Protocol = ptr.To(v1.ProtocolUDP)
			return s
		}()},
		want: []datapath.Service{
			{Frontend: datapath.Frontend{Addr: externalClusterIP, Port: 80, Proto: datapath.UDP}, Backends: backends("10.1.0.1:5353")},
			{Frontend: datapath.NodePortFrontend(30080, datapath.UDP), Backends: backends("10.1.0.1:5353")},
		},
	},
}

// TestDesiredExternal: NodePorts, externalIPs and load-balancer IPs as this
// node's sockets reach them: every usable endpoint of the cluster, whatever
// externalTrafficPolicy and internalTrafficPolicy say (kube-proxy sends
// traffic from the node and its pods to these destinations to the
// cluster-wide endpoints), with the same affinity and fallback as the
// ClusterIP.
func TestDesiredExternal(t *testing.T) {
	for _, c := range desiredExternalCases {
		t.Run(c.name, func(t *testing.T) {
			want := append(slices.Clone(c.want), datapath.Service{Frontend: datapath.AddressFrontend(externalClusterIP)})
			got := Desired(c.svc, c.slices, ThisNode{Name: thisNode})
			if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b }), cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b }), cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

// TestDesiredNorthSouth: traffic from outside the node follows
// externalTrafficPolicy: Cluster uses every endpoint and SNATs, Local this
// node's only, keeps the client, and drops with endpoints elsewhere only.
func TestDesiredNorthSouth(t *testing.T) {
	np := func(mut ...func(*v1.Service)) *v1.Service {
		return service(append([]func(*v1.Service){func(s *v1.Service) {
			s.Spec.Type = v1.ServiceTypeNodePort
			s.Spec.Ports[0].NodePort = 30080
			s.Spec.ExternalIPs = []string{"192.0.2.7"}
		}}, mut...)...)
	}
	localPolicy := func(s *v1.Service) { s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal }
	nodePort := datapath.NodePortFrontend(30080, datapath.TCP).External()
	extIP := datapath.Frontend{Addr: netip.MustParseAddr("192.0.2.7"), Port: 80, Proto: datapath.TCP}.External()
	twoNodes := []*discoveryv1.EndpointSlice{slice("a", 8080, ready("10.1.0.1", "node-2"), ready("10.1.0.2", thisNode))}
	cases := []struct {
		name   string
		svc    *v1.Service
		slices []*discoveryv1.EndpointSlice
		want   []datapath.Service
	}{
		{
			name: "Cluster: all endpoints, SNAT", svc: np(), slices: twoNodes,
			want: []datapath.Service{
				{Frontend: nodePort, Backends: backends("10.1.0.1:8080", "10.1.0.2:8080"), SNAT: true},
				{Frontend: extIP, Backends: backends("10.1.0.1:8080", "10.1.0.2:8080"), SNAT: true},
			},
		},
		{
			name: "Local: this node's endpoints, client kept", svc: np(localPolicy), slices: twoNodes,
			want: []datapath.Service{
				{Frontend: nodePort, Backends: backends("10.1.0.2:8080")},
				{Frontend: extIP, Backends: backends("10.1.0.2:8080")},
			},
		},
		{
			name: "Local with endpoints elsewhere only: dropped", svc: np(localPolicy),
			slices: []*discoveryv1.EndpointSlice{slice("a", 8080, ready("10.1.0.1", "node-2"))},
			want:   []datapath.Service{{Frontend: nodePort, Drop: true}, {Frontend: extIP, Drop: true}},
		},
		{
			name: "Local: the terminating fallback among local endpoints", svc: np(localPolicy),
			slices: []*discoveryv1.EndpointSlice{slice("a", 8080, ready("10.1.0.1", "node-2"), terminating("10.1.0.2", thisNode, true))},
			want: []datapath.Service{
				{Frontend: nodePort, Backends: backends("10.1.0.2:8080")},
				{Frontend: extIP, Backends: backends("10.1.0.2:8080")},
			},
		},
		{
			name: "ClusterIP Service without externalIPs: nothing", svc: service(), slices: twoNodes,
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := DesiredNorthSouth(c.svc, c.slices, ThisNode{Name: thisNode})
			if diff := cmp.Diff(c.want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b }), cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b }), cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

// zoned is a ready endpoint on node with zone and node hints.
func zoned(addr, node string, zones, nodes []string) ep {
	e := ready(addr, node)
	e.forZones, e.forNodes = zones, nodes
	return e
}

var (
	zoneA   = []string{"zone-a"}
	zoneB   = []string{"zone-b"}
	inZoneA = ThisNode{Name: thisNode, Zone: "zone-a"}
)

// topologyCase is a Service, the node, and the ClusterIP's backends Desired
// should pick from the slices' hints.
type topologyCase struct {
	name   string
	svc    *v1.Service
	node   ThisNode
	slices []*discoveryv1.EndpointSlice
	want   []string
}

var topologyCases = []topologyCase{
	{
		name:   "zone hints for this zone keep that zone's endpoints",
		svc:    service(),
		node:   inZoneA,
		slices: []*discoveryv1.EndpointSlice{slice("a", 8080, zoned("10.1.0.1", "node-2", zoneA, nil), zoned("10.1.0.2", "node-3", zoneB, nil), zoned("10.1.0.3", "node-4", zoneA, nil))},
		want:   []string{"10.1.0.1:8080", "10.1.0.3:8080"},
	},
	{
		name:   "no hint names this zone: every ready endpoint",
		svc:    service(),
		node:   ThisNode{Name: thisNode, Zone: "zone-c"},
		slices: []*discoveryv1.EndpointSlice{slice("a", 8080, zoned("10.1.0.1", "node-2", zoneA, nil), zoned("10.1.0.2", "node-3", zoneB, nil))},
		want:   []string{"10.1.0.1:8080", "10.1.0.2:8080"},
	},
	{
		name:   "one ready endpoint without hints: hints ignored",
		svc:    service(),
		node:   inZoneA,
		slices: []*discoveryv1.EndpointSlice{slice("a", 8080, zoned("10.1.0.1", "node-2", zoneA, nil), zoned("10.1.0.2", "node-3", zoneB, nil), ready("10.1.0.3", "node-4"))},
		want:   []string{"10.1.0.1:8080", "10.1.0.2:8080", "10.1.0.3:8080"},
	},
	{
		name:   "a not-ready endpoint without hints does not count",
		svc:    service(),
		node:   inZoneA,
		slices: []*discoveryv1.EndpointSlice{slice("a", 8080, zoned("10.1.0.1", "node-2", zoneA, nil), zoned("10.1.0.2", "node-3", zoneB, nil), terminating("10.1.0.3", "node-4", true))},
		want:   []string{"10.1.0.1:8080"},
	},
	{
		name:   "node without a zone label: zone hints ignored",
		svc:    service(),
		node:   ThisNode{Name: thisNode},
		slices: []*discoveryv1.EndpointSlice{slice("a", 8080, zoned("10.1.0.1", "node-2", zoneA, nil), zoned("10.1.0.2", "node-3", zoneB, nil))},
		want:   []string{"10.1.0.1:8080", "10.1.0.2:8080"},
	},
	{
		name: "node hints naming this node win over zone hints (PreferSameNode)",
		svc:  service(),
		node: inZoneA,
		slices: []*discoveryv1.EndpointSlice{slice("a", 8080,
			zoned("10.1.0.1", thisNode, zoneA, []string{thisNode}), zoned("10.1.0.2", "node-2", zoneA, []string{"node-2"}), zoned("10.1.0.3", "node-3", zoneB, []string{"node-3"}))},
		want: []string{"10.1.0.1:8080"},
	},
	{
		name: "node hints that do not name this node fall back to zone hints",
		svc:  service(),
		node: inZoneA,
		slices: []*discoveryv1.EndpointSlice{slice("a", 8080,
			zoned("10.1.0.2", "node-2", zoneA, []string{"node-2"}), zoned("10.1.0.3", "node-3", zoneB, []string{"node-3"}))},
		want: []string{"10.1.0.2:8080"},
	},
	{
		name: "internalTrafficPolicy Local: this node's endpoints, hints or not",
		svc: service(func(s *v1.Service) {
			s.Spec.InternalTrafficPolicy = ptr.To(v1.ServiceInternalTrafficPolicyLocal)
		}),
		node:   inZoneA,
		slices: []*discoveryv1.EndpointSlice{slice("a", 8080, zoned("10.1.0.1", thisNode, zoneB, nil), zoned("10.1.0.2", "node-2", zoneA, nil))},
		want:   []string{"10.1.0.1:8080"},
	},
}

// TestDesiredTopology: topology hints (what the EndpointSlice controller
// writes for trafficDistribution) narrow the endpoints exactly where
// kube-proxy's CategorizeEndpoints narrows them, and are ignored where it
// ignores them.
func TestDesiredTopology(t *testing.T) {
	for _, c := range topologyCases {
		t.Run(c.name, func(t *testing.T) {
			got := Desired(c.svc, c.slices, c.node)
			if len(got) == 0 {
				t.Fatal("nothing programmed")
			}
			want := backends(c.want...)
			if diff := cmp.Diff(want, got[0].Backends, cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b }), cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("ClusterIP backends (-want +got):\n%s", diff)
			}
		})
	}

	// The node's own sockets to its NodePort, and traffic from outside
	// with externalTrafficPolicy Cluster, use the cluster endpoints, so
	// the hints apply; externalTrafficPolicy Local uses this node's.
	eps := []*discoveryv1.EndpointSlice{slice("a", 8080, zoned("10.1.0.1", thisNode, zoneB, nil), zoned("10.1.0.2", "node-2", zoneA, nil))}
	for _, d := range Desired(service(withNodePort), eps, inZoneA) {
		if d.Frontend == datapath.NodePortFrontend(30080, datapath.TCP) {
			if diff := cmp.Diff(backends("10.1.0.2:8080"), d.Backends, cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); diff != "" {
				t.Errorf("NodePort from the node (-want +got):\n%s", diff)
			}
		}
	}
	for policy, want := range map[v1.ServiceExternalTrafficPolicy][]netip.AddrPort{
		v1.ServiceExternalTrafficPolicyCluster: backends("10.1.0.2:8080"),
		v1.ServiceExternalTrafficPolicyLocal:   backends("10.1.0.1:8080"),
	} {
		svc := service(withNodePort, func(s *v1.Service) { s.Spec.ExternalTrafficPolicy = policy })
		ns := DesiredNorthSouth(svc, eps, inZoneA)
		if len(ns) != 1 {
			t.Fatalf("externalTrafficPolicy %s: %d north-south frontends, want 1", policy, len(ns))
		}
		if diff := cmp.Diff(want, ns[0].Backends, cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); diff != "" {
			t.Errorf("north-south, externalTrafficPolicy %s (-want +got):\n%s", policy, diff)
		}
	}
}

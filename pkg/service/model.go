package service

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/directlb/directlb/pkg/cloud"
)

// ReadinessGatePrefix is the prefix of directlb's pod readiness gate
// condition type; the full type is ReadinessGateType(serviceName).
const ReadinessGatePrefix = "target-health.directlb.io/"

// ReadinessGateType is the pod condition type of the readiness gate for the
// Service named serviceName.
func ReadinessGateType(serviceName string) corev1.PodConditionType {
	return corev1.PodConditionType(ReadinessGatePrefix + serviceName)
}

// LoadBalancerClass is the spec.loadBalancerClass by which a Service is
// claimed for directlb: a cloud provider's own service controller (present
// on every managed cluster) skips Services with a class it does not know,
// so the two never provision the same Service. lb-controller owns it by
// default; owning Services without a class is an explicit opt-in.
const LoadBalancerClass = "service.directlb.io/nlb"

// ClassFilter says which spec.loadBalancerClass values a controller owns.
type ClassFilter struct {
	// Classes are the owned non-empty classes.
	Classes []string
	// Default is whether a Service without a class is owned.
	Default bool
}

// Owns reports whether the filter owns class.
func (f ClassFilter) Owns(class *string) bool {
	if class == nil || *class == "" {
		return f.Default
	}
	return slices.Contains(f.Classes, *class)
}

// Finalizer guards a direct-access Service's cloud resources: lb-controller
// adds it before it makes any and removes it after it deleted them.
const Finalizer = "service.directlb.io/resources"

// Wanted reports whether svc should have a direct-access load balancer now:
// type LoadBalancer, direct-access "true", not being deleted, and an owned
// class — or Adopted.
func Wanted(svc *corev1.Service, f ClassFilter) bool {
	return svc.DeletionTimestamp == nil &&
		svc.Spec.Type == corev1.ServiceTypeLoadBalancer &&
		IsDirectAccess(svc.Annotations) &&
		(f.Owns(svc.Spec.LoadBalancerClass) || (f.Adopts() && Adopted(svc)))
}

// Adopts reports whether a controller with this filter keeps Adopted
// Services: one that owns the documented class (a release with the
// defaults), not one set up for classes of its own beside it.
func (f ClassFilter) Adopts() bool { return slices.Contains(f.Classes, LoadBalancerClass) }

// Adopted reports whether svc sets no class but carries the Finalizer: it
// was claimed while class-less Services were owned (a release from before
// direct access was claimed by class, or one with --manage-default-class).
// It stays directlb's — its class can no longer be set, and letting go
// would delete its load balancer and change its address.
func Adopted(svc *corev1.Service) bool {
	c := svc.Spec.LoadBalancerClass
	return (c == nil || *c == "") && slices.Contains(svc.Finalizers, Finalizer)
}

// Key is "namespace/name", the value of the cloud.TagService tag.
func Key(svc *corev1.Service) string { return svc.Namespace + "/" + svc.Name }

// Config is what the model needs besides the Service.
type Config struct {
	ClusterName string
	// VPCID is the VPC target groups are created in; may be empty where
	// the cloud has a default.
	VPCID string
}

// LoadBalancer is the desired cloud state of one Service.
type LoadBalancer struct {
	Spec         cloud.LoadBalancerSpec
	Listeners    []Listener
	TargetGroups []TargetGroup
	Options      Options
}

// Listener forwards one frontend port to the target group with the same
// PortKey.
type Listener struct {
	Protocol cloud.Protocol
	Port     int32
	// PortKey is the listener's and its target group's cloud.TagPort value.
	PortKey string
	Tags    cloud.Tags
}

// TargetGroup is a desired target group and the Service ports whose
// endpoints are its targets.
type TargetGroup struct {
	// PortKey is "<port>/<protocol>", the cloud.TagPort value.
	PortKey string
	Spec    cloud.TargetGroupSpec
	// Ports are the Service ports it serves: one, or two (TCP and UDP) for
	// a TCP_UDP target group.
	Ports []Port
}

// Port is a Service port, as the target reconciler matches it against
// EndpointSlice ports (by name and protocol).
type Port struct {
	Name       string
	Protocol   corev1.Protocol
	Port       int32
	TargetPort intstr.IntOrString
}

// PortKey is the cloud.TagPort value for a frontend port and protocol.
func PortKey(port int32, p cloud.Protocol) string {
	return strconv.Itoa(int(port)) + "/" + string(p)
}

// Build computes the desired load balancer for svc. It fails with an
// *InvalidConfigError listing every problem in the annotations and ports.
func Build(svc *corev1.Service, cfg Config) (LoadBalancer, error) {
	opts, err := ParseAnnotations(svc.Annotations)
	var problems []FieldError
	var invalid *InvalidConfigError
	if errors.As(err, &invalid) {
		problems = invalid.Problems
	} else if err != nil {
		return LoadBalancer{}, err
	}
	groups, portProblems := groupPorts(svc.Spec.Ports)
	problems = append(problems, portProblems...)
	if len(problems) > 0 {
		return LoadBalancer{}, &InvalidConfigError{Problems: problems}
	}

	owner := cloud.Tags{cloud.TagCluster: cfg.ClusterName, cloud.TagService: Key(svc)}
	lb := LoadBalancer{
		Spec: cloud.LoadBalancerSpec{
			Name:   LoadBalancerName(cfg.ClusterName, svc.Namespace, svc.Name),
			Scheme: opts.Scheme,
			Tags:   owner,
		},
		Options: opts,
	}
	for _, g := range groups {
		key := PortKey(g.port, g.protocol)
		tags := cloud.Tags{cloud.TagPort: key}
		for k, v := range owner {
			tags[k] = v
		}
		lb.Listeners = append(lb.Listeners, Listener{Protocol: g.protocol, Port: g.port, PortKey: key, Tags: tags})
		tgPort := g.ports[0].Port
		if tp := g.ports[0].TargetPort; tp.Type == intstr.Int && tp.IntVal != 0 {
			tgPort = tp.IntVal
		}
		lb.TargetGroups = append(lb.TargetGroups, TargetGroup{
			PortKey: key,
			Spec: cloud.TargetGroupSpec{
				Name:                       targetGroupName(cfg.ClusterName, svc, key, g.protocol, tgPort),
				Protocol:                   g.protocol,
				Port:                       tgPort,
				VPCID:                      cfg.VPCID,
				HealthCheck:                opts.HealthCheck,
				DeregistrationDelaySeconds: opts.DeregistrationDelaySeconds,
				Tags:                       tags,
			},
			Ports: g.ports,
		})
	}
	return lb, nil
}

type portGroup struct {
	port     int32
	protocol cloud.Protocol
	ports    []Port
}

// groupPorts makes one group per frontend port. A TCP and a UDP Service port
// with the same number become one TCP_UDP group (a cloud load balancer has
// one listener per port number); they must then share the target port.
func groupPorts(ports []corev1.ServicePort) ([]portGroup, []FieldError) {
	var groups []portGroup
	var problems []FieldError
	byPort := map[int32]int{}
	for i, sp := range ports {
		field := fmt.Sprintf("spec.ports[%d]", i)
		var proto cloud.Protocol
		switch sp.Protocol {
		case corev1.ProtocolTCP, "":
			proto = cloud.ProtocolTCP
		case corev1.ProtocolUDP:
			proto = cloud.ProtocolUDP
		default:
			problems = append(problems, FieldError{Field: field + ".protocol", Value: string(sp.Protocol),
				Allowed: `direct-access load balancers support "TCP" and "UDP"`})
			continue
		}
		tp := sp.TargetPort
		if tp.Type == intstr.Int && tp.IntVal == 0 {
			tp = intstr.FromInt32(sp.Port)
		}
		p := Port{Name: sp.Name, Protocol: corev1.Protocol(proto), Port: sp.Port, TargetPort: tp}
		j, seen := byPort[sp.Port]
		if !seen {
			byPort[sp.Port] = len(groups)
			groups = append(groups, portGroup{port: sp.Port, protocol: proto, ports: []Port{p}})
			continue
		}
		g := &groups[j]
		if g.protocol == proto || g.protocol == cloud.ProtocolTCPUDP {
			problems = append(problems, FieldError{Field: field + ".port", Value: strconv.Itoa(int(sp.Port)),
				Allowed: "each port number may appear at most once per protocol"})
			continue
		}
		if g.ports[0].TargetPort != tp {
			problems = append(problems, FieldError{Field: field + ".targetPort", Value: tp.String(),
				Allowed: fmt.Sprintf("a TCP and a UDP port with the same number (%d) share one TCP_UDP listener, so they need the same targetPort (%s)",
					sp.Port, g.ports[0].TargetPort.String())})
			continue
		}
		g.protocol = cloud.ProtocolTCPUDP
		g.ports = append(g.ports, p)
	}
	return groups, problems
}

// LoadBalancerName is the cloud name of a Service's load balancer: at most
// 32 characters of [a-z0-9-], deterministic, and unique per cluster,
// namespace and name through a hash suffix.
func LoadBalancerName(cluster, namespace, name string) string {
	return "dlb-" + trim(namespace, 6) + "-" + trim(name, 10) + "-" + hash(cluster, namespace, name)
}

// targetGroupName hashes everything the cloud cannot modify in place
// (protocol and port), so a change makes a new target group with a new name.
func targetGroupName(cluster string, svc *corev1.Service, key string, p cloud.Protocol, port int32) string {
	h := hash(cluster, svc.Namespace, svc.Name, key, string(p), strconv.Itoa(int(port)))
	return "dlb-" + trim(svc.Name, 8) + "-" + strconv.Itoa(int(port)) + "-" + h
}

func trim(s string, n int) string {
	var b strings.Builder
	for _, r := range strings.ToLower(s) {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') || r == '-' {
			b.WriteRune(r)
		}
	}
	out := b.String()
	if len(out) > n {
		out = out[:n]
	}
	return strings.Trim(out, "-")
}

func hash(parts ...string) string {
	h := sha256.Sum256([]byte(strings.Join(parts, "\x00")))
	return hex.EncodeToString(h[:])[:10]
}

// Package cloud is the narrow, context-first interface the directlb
// controllers need from a cloud's load balancer API: load balancers,
// listeners, target groups of target type ip, targets and their health, found
// by ownership tags. Implementations fold pagination into one call.
package cloud

import (
	"context"
	"errors"
	"fmt"
)

// Ownership tags that mark a cloud resource as directlb's.
const (
	TagCluster = "directlb.io/cluster"
	TagService = "directlb.io/service" // "namespace/name"
	// TagPort names the Service port a target group or listener serves.
	TagPort = "directlb.io/port"
)

// Protocol is a listener or target group protocol.
type Protocol string

const (
	ProtocolTCP    Protocol = "TCP"
	ProtocolUDP    Protocol = "UDP"
	ProtocolTCPUDP Protocol = "TCP_UDP"
)

// Tags are a resource's tags.
type Tags map[string]string

// Matches reports whether t holds every key and value of want.
func (t Tags) Matches(want Tags) bool {
	for k, v := range want {
		if got, ok := t[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// HealthCheck is a target group's health check.
type HealthCheck struct {
	Protocol           string // "TCP" or "HTTP"
	Port               string // "traffic-port" or a port number
	Path               string // HTTP only
	IntervalSeconds    int32
	TimeoutSeconds     int32
	HealthyThreshold   int32
	UnhealthyThreshold int32
}

// LoadBalancerSpec is what the caller asks for.
type LoadBalancerSpec struct {
	Name   string
	Scheme string // "internet-facing" or "internal"
	Tags   Tags
}

// LoadBalancer is what the cloud has.
type LoadBalancer struct {
	ARN     string
	Name    string
	Scheme  string
	DNSName string
	// Addresses are the load balancer's IP addresses where the cloud
	// reports them (localcloud does; AWS gives a DNSName).
	Addresses []string
	State     string // "provisioning", "active", "failed"
	Tags      Tags
}

// TargetGroupSpec is what the caller asks for. Targets are of type ip.
type TargetGroupSpec struct {
	Name                       string
	Protocol                   Protocol
	Port                       int32
	VPCID                      string
	HealthCheck                HealthCheck
	DeregistrationDelaySeconds int32
	Tags                       Tags
}

// TargetGroup is what the cloud has.
type TargetGroup struct {
	ARN string
	TargetGroupSpec
	LoadBalancerARNs []string
}

// ListenerSpec is what the caller asks for: forward Protocol/Port on the
// load balancer to one target group.
type ListenerSpec struct {
	LoadBalancerARN string
	Protocol        Protocol
	Port            int32
	TargetGroupARN  string
	Tags            Tags
}

// Listener is what the cloud has.
type Listener struct {
	ARN string
	ListenerSpec
}

// Target is one registered ip target.
type Target struct {
	IP   string
	Port int32
}

func (t Target) String() string { return fmt.Sprintf("%s:%d", t.IP, t.Port) }

// TargetState is the health state of a target, with ELBv2's values.
type TargetState string

const (
	TargetInitial     TargetState = "initial"
	TargetHealthy     TargetState = "healthy"
	TargetUnhealthy   TargetState = "unhealthy"
	TargetDraining    TargetState = "draining"
	TargetUnused      TargetState = "unused"
	TargetUnavailable TargetState = "unavailable"
)

// TargetHealth is a target with its health.
type TargetHealth struct {
	Target
	State       TargetState
	Reason      string
	Description string
}

// LoadBalancers is the load balancer API the controllers use.
type LoadBalancers interface {
	CreateLoadBalancer(ctx context.Context, spec LoadBalancerSpec) (LoadBalancer, error)
	// ListLoadBalancers returns every load balancer whose tags include tags.
	ListLoadBalancers(ctx context.Context, tags Tags) ([]LoadBalancer, error)
	DeleteLoadBalancer(ctx context.Context, arn string) error

	CreateTargetGroup(ctx context.Context, spec TargetGroupSpec) (TargetGroup, error)
	// ListTargetGroups returns every target group whose tags include
	// tags, without its attributes: DeregistrationDelaySeconds is 0 (on
	// AWS an attribute costs a call per group, which a listing of the
	// whole account must not make).
	ListTargetGroups(ctx context.Context, tags Tags) ([]TargetGroup, error)
	// DeregistrationDelay reads one target group's deregistration delay
	// (its deregistration_delay.timeout_seconds attribute).
	DeregistrationDelay(ctx context.Context, arn string) (int32, error)
	// ModifyTargetGroup sets the health check and the deregistration delay.
	ModifyTargetGroup(ctx context.Context, arn string, hc HealthCheck, deregistrationDelaySeconds int32) error
	DeleteTargetGroup(ctx context.Context, arn string) error

	CreateListener(ctx context.Context, spec ListenerSpec) (Listener, error)
	ListListeners(ctx context.Context, loadBalancerARN string) ([]Listener, error)
	ModifyListener(ctx context.Context, arn string, targetGroupARN string) error
	DeleteListener(ctx context.Context, arn string) error

	// RegisterTargets and DeregisterTargets take lists of any length: the
	// implementation splits them into requests the cloud accepts
	// (MaxTargetsPerCall, with InBatches). When a request fails after
	// others went through, the error is a *BatchError saying how many
	// targets, from the start of the list, were applied.
	RegisterTargets(ctx context.Context, targetGroupARN string, targets []Target) error
	DeregisterTargets(ctx context.Context, targetGroupARN string, targets []Target) error
	DescribeTargetHealth(ctx context.Context, targetGroupARN string) ([]TargetHealth, error)
}

// ErrNotFound is wrapped by errors for resources that do not exist.
// Deleting something that is not found is not an error: implementations
// return nil.
var ErrNotFound = errors.New("not found")

// APIError is a cloud API error with its code.
type APIError struct {
	Op        string // the API operation, e.g. "CreateLoadBalancer"
	Code      string // e.g. "Throttling", "ValidationError"
	Message   string
	Retryable bool
}

func (e *APIError) Error() string {
	return fmt.Sprintf("%s: %s: %s", e.Op, e.Code, e.Message)
}

// IsRetryable reports whether err is worth retrying later.
func IsRetryable(err error) bool {
	var ae *APIError
	if errors.As(err, &ae) {
		return ae.Retryable
	}
	return false
}

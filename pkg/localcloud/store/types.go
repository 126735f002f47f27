// Package store holds localcloud's ELBv2 state: load balancers, listeners,
// target groups with their targets, and tags. Every change is validated the
// way ELBv2 validates it and written to disk atomically before it is
// acknowledged, so a restart loses nothing.
package store

import (
	"net/http"
	"time"
)

// LoadBalancer is a network load balancer.
type LoadBalancer struct {
	ARN       string            `json:"arn"`
	Name      string            `json:"name"`
	Scheme    string            `json:"scheme"`
	DNSName   string            `json:"dnsName"`
	Address   string            `json:"address"` // from the LB CIDR
	VPCID     string            `json:"vpcId"`
	State     string            `json:"state"`
	CreatedAt time.Time         `json:"createdAt"`
	Tags      map[string]string `json:"tags,omitempty"`
}

// Listener forwards Protocol/Port on a load balancer to a target group.
type Listener struct {
	ARN             string            `json:"arn"`
	LoadBalancerARN string            `json:"loadBalancerArn"`
	Protocol        string            `json:"protocol"`
	Port            int32             `json:"port"`
	TargetGroupARN  string            `json:"targetGroupArn"`
	Tags            map[string]string `json:"tags,omitempty"`
}

// HealthCheck is a target group's health check configuration.
type HealthCheck struct {
	Protocol           string `json:"protocol"` // TCP or HTTP
	Port               string `json:"port"`     // "traffic-port" or a number
	Path               string `json:"path,omitempty"`
	Matcher            string `json:"matcher,omitempty"` // HTTP codes, e.g. "200-399"
	IntervalSeconds    int32  `json:"intervalSeconds"`
	TimeoutSeconds     int32  `json:"timeoutSeconds"`
	HealthyThreshold   int32  `json:"healthyThreshold"`
	UnhealthyThreshold int32  `json:"unhealthyThreshold"`
}

// Target is a registered ip target. A deregistered target stays in the
// group, draining, until DrainUntil.
type Target struct {
	IP         string    `json:"ip"`
	Port       int32     `json:"port"`
	DrainUntil time.Time `json:"drainUntil,omitzero"`
}

// Draining reports whether the target has been deregistered.
func (t Target) Draining() bool { return !t.DrainUntil.IsZero() }

// TargetGroup is a target group of target type ip.
type TargetGroup struct {
	ARN         string            `json:"arn"`
	Name        string            `json:"name"`
	Protocol    string            `json:"protocol"`
	Port        int32             `json:"port"`
	VPCID       string            `json:"vpcId"`
	HealthCheck HealthCheck       `json:"healthCheck"`
	Attributes  map[string]string `json:"attributes"`
	Targets     []Target          `json:"targets,omitempty"`
	Tags        map[string]string `json:"tags,omitempty"`
}

// Attribute keys localcloud understands.
const (
	AttrDeregistrationDelay = "deregistration_delay.timeout_seconds"
	AttrConnTermination     = "deregistration_delay.connection_termination.enabled"
	AttrPreserveClientIP    = "preserve_client_ip.enabled"
	AttrProxyProtocolV2     = "proxy_protocol_v2.enabled"
	AttrStickinessEnabled   = "stickiness.enabled"
	AttrStickinessType      = "stickiness.type"
)

// DefaultAttributes are a new ip target group's attributes, as on an NLB.
func DefaultAttributes() map[string]string {
	return map[string]string{
		AttrDeregistrationDelay: "300",
		AttrConnTermination:     "false",
		AttrPreserveClientIP:    "false",
		AttrProxyProtocolV2:     "false",
		AttrStickinessEnabled:   "false",
		AttrStickinessType:      "source_ip",
	}
}

// State is everything localcloud knows; it is what goes to disk.
type State struct {
	Seq           int64                    `json:"seq"`
	LoadBalancers map[string]*LoadBalancer `json:"loadBalancers"`
	Listeners     map[string]*Listener     `json:"listeners"`
	TargetGroups  map[string]*TargetGroup  `json:"targetGroups"`
	// NetworkInterfaces are the seeded ENIs (EC2), by ID.
	NetworkInterfaces map[string]*NetworkInterface `json:"networkInterfaces,omitempty"`
}

// Error is an ELBv2 API error: its code, message and HTTP status.
type Error struct {
	Code    string
	Message string
	Status  int
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

func errf(code string, status int, msg string) *Error {
	return &Error{Code: code, Message: msg, Status: status}
}

func validation(msg string) *Error { return errf("ValidationError", http.StatusBadRequest, msg) }

func notFound(code, msg string) *Error { return errf(code, http.StatusBadRequest, msg) }

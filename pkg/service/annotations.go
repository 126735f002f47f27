// Package service is the pure model of directlb's lb-controller: it turns a
// Kubernetes Service and its service.directlb.io/ annotations into the load
// balancer, listeners and target groups the cloud should have. It does no
// I/O.
package service

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/directlb/directlb/pkg/cloud"
)

// AnnotationPrefix is the prefix of every directlb Service annotation.
const AnnotationPrefix = "service.directlb.io/"

// Service annotations; users type these names, keep them stable.
const (
	AnnotationDirectAccess         = AnnotationPrefix + "direct-access"
	AnnotationScheme               = AnnotationPrefix + "scheme"
	AnnotationHCProtocol           = AnnotationPrefix + "healthcheck-protocol"
	AnnotationHCPort               = AnnotationPrefix + "healthcheck-port"
	AnnotationHCPath               = AnnotationPrefix + "healthcheck-path"
	AnnotationHCInterval           = AnnotationPrefix + "healthcheck-interval"
	AnnotationHCTimeout            = AnnotationPrefix + "healthcheck-timeout"
	AnnotationHCHealthyThreshold   = AnnotationPrefix + "healthcheck-healthy-threshold"
	AnnotationHCUnhealthyThreshold = AnnotationPrefix + "healthcheck-unhealthy-threshold"
	AnnotationDeregistrationDelay  = AnnotationPrefix + "deregistration-delay"
	AnnotationReadinessGate        = AnnotationPrefix + "readiness-gate"
)

// Schemes.
const (
	SchemeInternetFacing = "internet-facing"
	SchemeInternal       = "internal"
)

// TrafficPort is the health-check port value meaning "the target's port".
const TrafficPort = "traffic-port"

// Defaults, the same as an AWS Network Load Balancer's for ip targets,
// except a shorter deregistration delay (pods go away often).
const (
	DefaultHCProtocol           = "TCP"
	DefaultHCPath               = "/"
	DefaultHCInterval           = 10
	DefaultHCTimeout            = 6
	DefaultHCHealthyThreshold   = 3
	DefaultHCUnhealthyThreshold = 3
	DefaultDeregistrationDelay  = 20
)

// Options are a Service's directlb annotations, parsed and validated.
type Options struct {
	// DirectAccess is service.directlb.io/direct-access == "true".
	DirectAccess bool
	Scheme       string
	HealthCheck  cloud.HealthCheck
	// DeregistrationDelaySeconds is how long the cloud drains a target.
	DeregistrationDelaySeconds int32
	// ReadinessGate is false only when the user opted out with
	// service.directlb.io/readiness-gate: "false".
	ReadinessGate bool
}

// FieldError is one invalid annotation or Service field.
type FieldError struct {
	// Field is the annotation name or the Service field path.
	Field   string
	Value   string
	Allowed string
}

func (e FieldError) Error() string {
	return fmt.Sprintf("%s: invalid value %q: %s", e.Field, e.Value, e.Allowed)
}

// InvalidConfigError lists every problem found in a Service's
// configuration. It is permanent: retrying without a change to the Service
// cannot help.
type InvalidConfigError struct {
	Problems []FieldError
}

func (e *InvalidConfigError) Error() string {
	msgs := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		msgs[i] = p.Error()
	}
	return strings.Join(msgs, "; ")
}

// IsInvalidConfig reports whether err is (or wraps) an InvalidConfigError.
func IsInvalidConfig(err error) bool {
	var ic *InvalidConfigError
	return errors.As(err, &ic)
}

// IsDirectAccess reports whether annotations ask for direct access. Only the
// exact value "true" does.
func IsDirectAccess(annotations map[string]string) bool {
	return annotations[AnnotationDirectAccess] == "true"
}

// ParseAnnotations parses and validates every directlb annotation at once.
// The error, if any, is an *InvalidConfigError naming every bad annotation.
func ParseAnnotations(annotations map[string]string) (Options, error) {
	p := parser{annotations: annotations}
	o := Options{
		DirectAccess: p.boolean(AnnotationDirectAccess, false),
		Scheme:       p.oneOf(AnnotationScheme, SchemeInternetFacing, SchemeInternetFacing, SchemeInternal),
		HealthCheck: cloud.HealthCheck{
			Protocol:           p.oneOf(AnnotationHCProtocol, DefaultHCProtocol, "TCP", "HTTP"),
			Port:               p.hcPort(),
			IntervalSeconds:    p.integer(AnnotationHCInterval, DefaultHCInterval, 5, 300),
			TimeoutSeconds:     p.integer(AnnotationHCTimeout, DefaultHCTimeout, 2, 120),
			HealthyThreshold:   p.integer(AnnotationHCHealthyThreshold, DefaultHCHealthyThreshold, 2, 10),
			UnhealthyThreshold: p.integer(AnnotationHCUnhealthyThreshold, DefaultHCUnhealthyThreshold, 2, 10),
		},
		DeregistrationDelaySeconds: p.integer(AnnotationDeregistrationDelay, DefaultDeregistrationDelay, 0, 3600),
		ReadinessGate:              p.boolean(AnnotationReadinessGate, true),
	}
	o.HealthCheck.Path = p.hcPath(o.HealthCheck.Protocol)
	if hc := o.HealthCheck; hc.TimeoutSeconds >= hc.IntervalSeconds && p.set(AnnotationHCTimeout) {
		p.fail(AnnotationHCTimeout, annotations[AnnotationHCTimeout],
			fmt.Sprintf("must be less than the health-check interval (%d seconds)", hc.IntervalSeconds))
	}
	if hc := o.HealthCheck; hc.TimeoutSeconds >= hc.IntervalSeconds && !p.set(AnnotationHCTimeout) {
		// The default timeout does not fit a short interval: shrink it.
		o.HealthCheck.TimeoutSeconds = max(2, hc.IntervalSeconds-1)
	}
	if len(p.problems) > 0 {
		return Options{}, &InvalidConfigError{Problems: p.problems}
	}
	return o, nil
}

type parser struct {
	annotations map[string]string
	problems    []FieldError
}

func (p *parser) set(name string) bool {
	_, ok := p.annotations[name]
	return ok
}

func (p *parser) fail(name, value, allowed string) {
	p.problems = append(p.problems, FieldError{Field: name, Value: value, Allowed: allowed})
}

func (p *parser) boolean(name string, def bool) bool {
	v, ok := p.annotations[name]
	if !ok {
		return def
	}
	switch v {
	case "true":
		return true
	case "false":
		return false
	}
	p.fail(name, v, `allowed values are "true" and "false"`)
	return def
}

func (p *parser) oneOf(name, def string, allowed ...string) string {
	v, ok := p.annotations[name]
	if !ok {
		return def
	}
	for _, a := range allowed {
		if v == a {
			return v
		}
	}
	p.fail(name, v, "allowed values are "+quoteJoin(allowed))
	return def
}

func (p *parser) integer(name string, def, lo, hi int32) int32 {
	v, ok := p.annotations[name]
	if !ok {
		return def
	}
	n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 32)
	if err != nil || int32(n) < lo || int32(n) > hi {
		p.fail(name, v, fmt.Sprintf("must be a whole number from %d to %d", lo, hi))
		return def
	}
	return int32(n)
}

func (p *parser) hcPort() string {
	v, ok := p.annotations[AnnotationHCPort]
	if !ok || v == TrafficPort {
		return TrafficPort
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > 65535 {
		p.fail(AnnotationHCPort, v, fmt.Sprintf("must be %q or a port number from 1 to 65535", TrafficPort))
		return TrafficPort
	}
	return strconv.Itoa(n)
}

func (p *parser) hcPath(protocol string) string {
	v, ok := p.annotations[AnnotationHCPath]
	if protocol != "HTTP" {
		if ok {
			p.fail(AnnotationHCPath, v, fmt.Sprintf("is only allowed when %s is \"HTTP\"", AnnotationHCProtocol))
		}
		return ""
	}
	if !ok {
		return DefaultHCPath
	}
	if !strings.HasPrefix(v, "/") || len(v) > 1024 || strings.ContainsAny(v, " \t\r\n") {
		p.fail(AnnotationHCPath, v, "must be an absolute URL path (start with \"/\", no spaces, at most 1024 characters)")
		return DefaultHCPath
	}
	return v
}

func quoteJoin(s []string) string {
	q := make([]string, len(s))
	for i, v := range s {
		q[i] = strconv.Quote(v)
	}
	return strings.Join(q, ", ")
}

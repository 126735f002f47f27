// Package readinessgate holds directlb's pod readiness gates: the mutating
// webhook that adds the gate target-health.directlb.io/<service> (and the
// drain preStop hook) to pods of direct-access Services at creation, and the
// writer that keeps each gate's condition equal to what the cloud load
// balancer reports about the pod's targets.
package readinessgate

import (
	"fmt"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/directlb/directlb/pkg/cloud"
)

// Condition reasons of the gate condition. True: Healthy, FailOpen,
// Released. False: everything else.
const (
	ReasonHealthy             = "Healthy"
	ReasonFailOpen            = "FailOpen"
	ReasonReleased            = "Released"
	ReasonPodIPPending        = "PodIPPending"
	ReasonLoadBalancerPending = "LoadBalancerPending"
	ReasonRegistering         = "Registering"
	ReasonUnhealthy           = "Unhealthy"
	ReasonDraining            = "Draining"
	ReasonUnused              = "Unused"
	ReasonUnavailable         = "Unavailable"
)

// GroupHealth is what the cloud reported for one target group of a
// Service.
type GroupHealth struct {
	// Name is the target group's name, for messages.
	Name    string
	Targets []cloud.TargetHealth
}

// Verdict is the gate condition a pod should have.
type Verdict struct {
	Status  corev1.ConditionStatus
	Reason  string
	Message string
}

// True reports whether the verdict lets the pod turn Ready.
func (v Verdict) True() bool { return v.Status == corev1.ConditionTrue }

// severity orders the False reasons: a pod gets the worst one among its
// target groups.
var severity = map[string]int{
	ReasonHealthy:     0,
	ReasonRegistering: 1,
	ReasonUnused:      2,
	ReasonUnavailable: 3,
	ReasonUnhealthy:   4,
	ReasonDraining:    5,
}

// Evaluate computes the gate of the pod with address podIP from the health
// of every target group of its Service: True only when the pod has at least
// one target in every group and every one of them is healthy.
func Evaluate(podIP string, groups []GroupHealth) Verdict {
	if podIP == "" {
		return Verdict{Status: corev1.ConditionFalse, Reason: ReasonPodIPPending, Message: "the pod has no IP address yet"}
	}
	if len(groups) == 0 {
		return Verdict{Status: corev1.ConditionFalse, Reason: ReasonLoadBalancerPending, Message: "the Service has no target groups yet"}
	}
	worst := ReasonHealthy
	var notes []string
	for _, g := range groups {
		found := false
		for _, t := range g.Targets {
			if t.IP != podIP {
				continue
			}
			found = true
			r := reasonOf(t.State)
			if r != ReasonHealthy {
				notes = append(notes, describe(g.Name, t))
			}
			if severity[r] > severity[worst] {
				worst = r
			}
		}
		if !found {
			notes = append(notes, fmt.Sprintf("%s: not registered yet", g.Name))
			if severity[ReasonRegistering] > severity[worst] {
				worst = ReasonRegistering
			}
		}
	}
	if worst == ReasonHealthy {
		return Verdict{Status: corev1.ConditionTrue, Reason: ReasonHealthy,
			Message: fmt.Sprintf("healthy in %d target group(s)", len(groups))}
	}
	sort.Strings(notes)
	return Verdict{Status: corev1.ConditionFalse, Reason: worst, Message: strings.Join(notes, "; ")}
}

func reasonOf(s cloud.TargetState) string {
	switch s {
	case cloud.TargetHealthy:
		return ReasonHealthy
	case cloud.TargetInitial:
		return ReasonRegistering
	case cloud.TargetUnhealthy:
		return ReasonUnhealthy
	case cloud.TargetDraining:
		return ReasonDraining
	case cloud.TargetUnused:
		return ReasonUnused
	default:
		return ReasonUnavailable
	}
}

func describe(group string, t cloud.TargetHealth) string {
	s := fmt.Sprintf("%s: target %s is %s", group, t.Target, t.State)
	if t.Reason != "" {
		s += " (" + t.Reason + ")"
	}
	return s
}

package store

// The health state every health source shares, and the interface the API
// reads target health through: here, so that the API (pkg/localcloud/api)
// and the health checker (pkg/localcloud/health) both depend on the store
// and not on each other.

// TargetHealthSource reports a registered target's health.
type TargetHealthSource interface {
	// TargetHealth returns the state, reason and description of target t
	// of target group tg.
	TargetHealth(tg TargetGroupWithLBs, t Target) (state, reason, description string)
}

// StaticHealth is the health source when no health checks run (API-only
// mode): registered targets of a group in use are healthy.
type StaticHealth struct{}

// TargetHealth implements TargetHealthSource.
func (StaticHealth) TargetHealth(tg TargetGroupWithLBs, t Target) (string, string, string) {
	if s, r, d, ok := BaseState(tg, t); ok {
		return s, r, d
	}
	return "healthy", "", ""
}

// BaseState returns the state every health source shares: draining for a
// deregistered target, unused for a group no load balancer uses.
func BaseState(tg TargetGroupWithLBs, t Target) (state, reason, description string, ok bool) {
	if t.Draining() {
		return "draining", "Target.DeregistrationInProgress", "Target deregistration is in progress", true
	}
	if len(tg.LoadBalancerARNs) == 0 {
		return "unused", "Target.NotInUse", "Target group is not configured to receive traffic from the load balancer", true
	}
	return "", "", "", false
}

// Package deploy makes the cloud match a service.LoadBalancer: it finds
// what exists by ownership tags, diffs, and creates, modifies or deletes
// load balancers, target groups and listeners. Every pass starts from the
// cloud's state, so a pass cut short at any call heals on the next one
// without duplicates.
package deploy

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/directlb/directlb/pkg/cloud"
	"github.com/directlb/directlb/pkg/service"
)

// Deployer applies desired load balancers to a cloud.
//
// A target group that is no longer wanted (a changed targetPort or
// protocol gives a port a new one; a removed port leaves its group) is
// retired over several passes: once no listener points at it, its targets
// are deregistered, the cloud drains them for the group's deregistration
// delay, and the group is deleted only when it is empty, so flows still on
// it finish. Result.Pending says what a pass waits for; the caller runs
// another pass soon. (The listener itself moves at once: an NLB does not
// health-check a target group no listener uses, so a new group cannot be
// warmed up before the move.)
type Deployer struct {
	Cloud cloud.LoadBalancers
}

// TargetGroup is a desired target group bound to the cloud's ARN.
type TargetGroup struct {
	service.TargetGroup
	ARN string
}

// Result is the state after a successful Deploy.
type Result struct {
	LoadBalancer cloud.LoadBalancer
	TargetGroups []TargetGroup
	// Changed is whether the pass made any mutating call.
	Changed bool
	// Pending lists the stale target groups still draining, and what failed
	// while retiring them (retried on the next pass); empty when the cloud
	// matches.
	Pending []string
}

// PermanentError is an error that retrying without a change to the Service
// cannot fix (a cloud validation error, a name owned by someone else, a
// quota).
type PermanentError struct{ Err error }

func (e *PermanentError) Error() string { return e.Err.Error() }
func (e *PermanentError) Unwrap() error { return e.Err }

// permanentCodes are the cloud error codes retrying cannot fix.
var permanentCodes = []string{
	"ValidationError", "InvalidConfigurationRequest", "InvalidScheme", "InvalidTarget",
	"TooManyLoadBalancers", "TooManyTargetGroups", "TooManyListeners", "TooManyTags",
	"AccessDenied", "UnauthorizedOperation", "OperationNotPermitted",
}

// IsPermanent reports whether err cannot be fixed by retrying.
func IsPermanent(err error) bool {
	var pe *PermanentError
	if errors.As(err, &pe) {
		return true
	}
	var ae *cloud.APIError
	return errors.As(err, &ae) && !ae.Retryable && slices.Contains(permanentCodes, ae.Code)
}

func hasCode(err error, code string) bool {
	var ae *cloud.APIError
	return errors.As(err, &ae) && ae.Code == code
}

// Deploy makes the cloud match want and returns what it has then.
func (d *Deployer) Deploy(ctx context.Context, want service.LoadBalancer) (Result, error) {
	var res Result
	owner := want.Spec.Tags
	lb, err := d.ensureLoadBalancer(ctx, want.Spec, &res)
	if err != nil {
		return res, err
	}
	res.LoadBalancer = lb

	existing, err := d.Cloud.ListTargetGroups(ctx, owner)
	if err != nil {
		return res, fmt.Errorf("list target groups: %w", err)
	}
	kept := map[string]bool{} // ARNs of the existing groups that stay
	for _, w := range want.TargetGroups {
		if tg, ok := reusable(existing, w.Spec, kept); ok {
			// Same port and protocol, another target port: the group
			// stays (each target carries its own port), so a targetPort
			// change never empties the listener's group.
			w.Spec.Name, w.Spec.Port = tg.Name, tg.Port
		}
		arn, err := d.ensureTargetGroup(ctx, w.Spec, existing, &res)
		if err != nil {
			return res, err
		}
		kept[arn] = true
		res.TargetGroups = append(res.TargetGroups, TargetGroup{TargetGroup: w, ARN: arn})
	}

	if err := d.ensureListeners(ctx, lb.ARN, want.Listeners, res.TargetGroups, &res); err != nil {
		return res, err
	}

	// Stale target groups no listener points at any more: drain, then delete.
	for _, tg := range existing {
		if kept[tg.ARN] {
			continue
		}
		// Not fatal: the wanted groups are in place and the caller must
		// hand them to the target reconciler whatever happens here.
		if err := d.retire(ctx, tg, &res); err != nil {
			res.Pending = append(res.Pending, err.Error())
		}
	}
	return res, nil
}

// retire deregisters a stale target group's targets and deletes the group
// once the cloud has drained them all.
func (d *Deployer) retire(ctx context.Context, tg cloud.TargetGroup, res *Result) error {
	th, err := d.Cloud.DescribeTargetHealth(ctx, tg.ARN)
	if errors.Is(err, cloud.ErrNotFound) {
		return nil // already gone
	}
	if err != nil {
		return fmt.Errorf("describe stale target group %s: %w", tg.Name, err)
	}
	var registered []cloud.Target
	for _, h := range th {
		if h.State != cloud.TargetDraining {
			registered = append(registered, h.Target)
		}
	}
	if len(registered) > 0 {
		if err := d.Cloud.DeregisterTargets(ctx, tg.ARN, registered); err != nil {
			return fmt.Errorf("drain stale target group %s: %w", tg.Name, err)
		}
		res.Changed = true
	}
	if len(th) > 0 {
		res.Pending = append(res.Pending, fmt.Sprintf("target group %s drains %d target(s)", tg.Name, len(th)))
		return nil
	}
	if err := d.Cloud.DeleteTargetGroup(ctx, tg.ARN); err != nil && !errors.Is(err, cloud.ErrNotFound) {
		return fmt.Errorf("delete stale target group %s: %w", tg.Name, err)
	}
	res.Changed = true
	return nil
}

func (d *Deployer) ensureLoadBalancer(ctx context.Context, spec cloud.LoadBalancerSpec, res *Result) (cloud.LoadBalancer, error) {
	lbs, err := d.Cloud.ListLoadBalancers(ctx, spec.Tags)
	if err != nil {
		return cloud.LoadBalancer{}, fmt.Errorf("list load balancers: %w", err)
	}
	var found *cloud.LoadBalancer
	for i := range lbs {
		lb := &lbs[i]
		if lb.Name == spec.Name && lb.Scheme == spec.Scheme && found == nil {
			found = lb
			continue
		}
		// A stale one (old name, or a scheme the cloud cannot change in
		// place): its listeners go with it.
		if err := d.Cloud.DeleteLoadBalancer(ctx, lb.ARN); err != nil {
			return cloud.LoadBalancer{}, fmt.Errorf("delete stale load balancer %s: %w", lb.Name, err)
		}
		res.Changed = true
	}
	if found != nil {
		return *found, nil
	}
	lb, err := d.Cloud.CreateLoadBalancer(ctx, spec)
	if err == nil {
		res.Changed = true
		return lb, nil
	}
	if !hasCode(err, "DuplicateLoadBalancerName") {
		return cloud.LoadBalancer{}, fmt.Errorf("create load balancer %s: %w", spec.Name, err)
	}
	// The name is taken but the tag lookup did not find it: not ours.
	return cloud.LoadBalancer{}, &PermanentError{Err: fmt.Errorf(
		"create load balancer %s: the name is in use by a load balancer without this Service's ownership tags: %w", spec.Name, err)}
}

// reusable finds the existing group that serves spec: the one of its name,
// else one for the same Service port and protocol in the same VPC that only
// its target port (part of the name) sets apart. ("" asks for the cloud's
// default VPC, which the group reports by its ID.)
func reusable(existing []cloud.TargetGroup, spec cloud.TargetGroupSpec, kept map[string]bool) (cloud.TargetGroup, bool) {
	for _, tg := range existing {
		if tg.Name == spec.Name {
			return tg, true
		}
	}
	for _, tg := range existing {
		if !kept[tg.ARN] && tg.Tags[cloud.TagPort] == spec.Tags[cloud.TagPort] && tg.Protocol == spec.Protocol && (spec.VPCID == "" || tg.VPCID == spec.VPCID) {
			return tg, true
		}
	}
	return cloud.TargetGroup{}, false
}

func (d *Deployer) ensureTargetGroup(ctx context.Context, spec cloud.TargetGroupSpec, existing []cloud.TargetGroup, res *Result) (string, error) {
	if i := slices.IndexFunc(existing, func(tg cloud.TargetGroup) bool { return tg.Name == spec.Name }); i >= 0 {
		tg := existing[i]
		// Listings carry no attributes; this group's own is one call.
		delay, err := d.Cloud.DeregistrationDelay(ctx, tg.ARN)
		if err != nil {
			return "", fmt.Errorf("read target group %s: %w", spec.Name, err)
		}
		if tg.HealthCheck != spec.HealthCheck || delay != spec.DeregistrationDelaySeconds {
			if err := d.Cloud.ModifyTargetGroup(ctx, tg.ARN, spec.HealthCheck, spec.DeregistrationDelaySeconds); err != nil {
				return "", fmt.Errorf("modify target group %s: %w", spec.Name, err)
			}
			res.Changed = true
		}
		return tg.ARN, nil
	}
	tg, err := d.Cloud.CreateTargetGroup(ctx, spec)
	if err == nil {
		res.Changed = true
		return tg.ARN, nil
	}
	if hasCode(err, "DuplicateTargetGroupName") {
		return "", &PermanentError{Err: fmt.Errorf(
			"create target group %s: the name is in use by a target group without this Service's ownership tags: %w", spec.Name, err)}
	}
	return "", fmt.Errorf("create target group %s: %w", spec.Name, err)
}

func (d *Deployer) ensureListeners(ctx context.Context, lbARN string, want []service.Listener, tgs []TargetGroup, res *Result) error {
	have, err := d.Cloud.ListListeners(ctx, lbARN)
	if err != nil {
		return fmt.Errorf("list listeners: %w", err)
	}
	tgARN := map[string]string{}
	for _, tg := range tgs {
		tgARN[tg.PortKey] = tg.ARN
	}
	byPort := map[int32]cloud.Listener{}
	for _, l := range have {
		keep := slices.ContainsFunc(want, func(w service.Listener) bool { return w.Port == l.Port && w.Protocol == l.Protocol })
		if keep {
			byPort[l.Port] = l
			continue
		}
		if err := d.Cloud.DeleteListener(ctx, l.ARN); err != nil {
			return fmt.Errorf("delete listener %s/%d: %w", l.Protocol, l.Port, err)
		}
		res.Changed = true
	}
	for _, w := range want {
		arn := tgARN[w.PortKey]
		l, ok := byPort[w.Port]
		switch {
		case !ok:
			_, err := d.Cloud.CreateListener(ctx, cloud.ListenerSpec{
				LoadBalancerARN: lbARN, Protocol: w.Protocol, Port: w.Port, TargetGroupARN: arn, Tags: w.Tags,
			})
			if err != nil {
				return fmt.Errorf("create listener %s/%d: %w", w.Protocol, w.Port, err)
			}
			res.Changed = true
		case l.TargetGroupARN != arn:
			if err := d.Cloud.ModifyListener(ctx, l.ARN, arn); err != nil {
				return fmt.Errorf("modify listener %s/%d: %w", w.Protocol, w.Port, err)
			}
			res.Changed = true
		}
	}
	return nil
}

// Delete removes every cloud resource carrying the owner tags, in
// dependency order: load balancers (with their listeners), then target
// groups. It reports whether anything was there.
func (d *Deployer) Delete(ctx context.Context, owner cloud.Tags) (bool, error) {
	lbs, err := d.Cloud.ListLoadBalancers(ctx, owner)
	if err != nil {
		return false, fmt.Errorf("list load balancers: %w", err)
	}
	tgs, err := d.Cloud.ListTargetGroups(ctx, owner)
	if err != nil {
		return false, fmt.Errorf("list target groups: %w", err)
	}
	for _, lb := range lbs {
		listeners, err := d.Cloud.ListListeners(ctx, lb.ARN)
		if err != nil && !errors.Is(err, cloud.ErrNotFound) {
			return true, fmt.Errorf("list listeners of %s: %w", lb.Name, err)
		}
		for _, l := range listeners {
			if err := d.Cloud.DeleteListener(ctx, l.ARN); err != nil {
				return true, fmt.Errorf("delete listener %s/%d of %s: %w", l.Protocol, l.Port, lb.Name, err)
			}
		}
		if err := d.Cloud.DeleteLoadBalancer(ctx, lb.ARN); err != nil {
			return true, fmt.Errorf("delete load balancer %s: %w", lb.Name, err)
		}
	}
	for _, tg := range tgs {
		if err := d.Cloud.DeleteTargetGroup(ctx, tg.ARN); err != nil {
			return true, fmt.Errorf("delete target group %s: %w", tg.Name, err)
		}
	}
	return len(lbs)+len(tgs) > 0, nil
}

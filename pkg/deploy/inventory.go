package deploy

import (
	"context"
	"errors"
	"maps"
	"sync"
	"time"

	"github.com/directlb/directlb/pkg/cloud"
)

// Inventory is a cloud.LoadBalancers that answers ListLoadBalancers and
// ListTargetGroups for one cluster from a cached copy of everything tagged
// with that cluster, refreshed after TTL. On AWS each tag-filtered list
// reads every load balancer or target group of the account plus their tags
// (20 per call), so listing per Service costs O(Services) calls; with the
// inventory, N Services cost one listing per TTL instead of N.
//
// Its own successful calls are written through; a failed mutating call (its
// outcome is unknown) and any not-found drop the cached copy, so the next
// pass reads the truth. It assumes one writer per cluster tag (the leader).
// Every other call passes through.
type Inventory struct {
	cloud.LoadBalancers
	ttl time.Duration

	mu     sync.Mutex
	scopes map[string]*scope // by cluster tag value
}

type scope struct {
	mu      sync.Mutex
	valid   bool
	fetched time.Time
	lbs     map[string]cloud.LoadBalancer // by ARN
	tgs     map[string]cloud.TargetGroup  // by ARN
}

// NewInventory wraps c; a ttl of 0 or less returns c itself.
func NewInventory(c cloud.LoadBalancers, ttl time.Duration) cloud.LoadBalancers {
	if ttl <= 0 {
		return c
	}
	return &Inventory{LoadBalancers: c, ttl: ttl, scopes: map[string]*scope{}}
}

func (inv *Inventory) scope(cluster string) *scope {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	s, ok := inv.scopes[cluster]
	if !ok {
		s = &scope{}
		inv.scopes[cluster] = s
	}
	return s
}

// fresh returns the scope, locked and filled; the caller unlocks it.
func (inv *Inventory) fresh(ctx context.Context, cluster string) (*scope, error) {
	s := inv.scope(cluster)
	s.mu.Lock()
	if s.valid && time.Since(s.fetched) < inv.ttl {
		return s, nil
	}
	owner := cloud.Tags{cloud.TagCluster: cluster}
	lbs, err := inv.LoadBalancers.ListLoadBalancers(ctx, owner)
	if err != nil {
		s.mu.Unlock()
		return nil, err
	}
	tgs, err := inv.LoadBalancers.ListTargetGroups(ctx, owner)
	if err != nil {
		s.mu.Unlock()
		return nil, err
	}
	s.lbs, s.tgs = map[string]cloud.LoadBalancer{}, map[string]cloud.TargetGroup{}
	for _, lb := range lbs {
		s.lbs[lb.ARN] = lb
	}
	for _, tg := range tgs {
		s.tgs[tg.ARN] = tg
	}
	s.valid, s.fetched = true, time.Now()
	return s, nil
}

// update runs f on every filled scope.
func (inv *Inventory) update(f func(*scope)) {
	inv.mu.Lock()
	scopes := make([]*scope, 0, len(inv.scopes))
	for _, s := range inv.scopes {
		scopes = append(scopes, s)
	}
	inv.mu.Unlock()
	for _, s := range scopes {
		s.mu.Lock()
		if s.valid {
			f(s)
		}
		s.mu.Unlock()
	}
}

func (inv *Inventory) invalidate() {
	inv.update(func(s *scope) { s.valid = false })
}

// after records the outcome of a mutating call: f on success, invalidation
// on failure.
func (inv *Inventory) after(err error, f func(*scope)) error {
	if err != nil {
		inv.invalidate()
		return err
	}
	inv.update(f)
	return nil
}

// ListLoadBalancers implements cloud.LoadBalancers.
func (inv *Inventory) ListLoadBalancers(ctx context.Context, tags cloud.Tags) ([]cloud.LoadBalancer, error) {
	cluster, ok := tags[cloud.TagCluster]
	if !ok {
		return inv.LoadBalancers.ListLoadBalancers(ctx, tags)
	}
	s, err := inv.fresh(ctx, cluster)
	if err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	var out []cloud.LoadBalancer
	for _, lb := range s.lbs {
		if lb.Tags.Matches(tags) {
			lb.Tags = maps.Clone(lb.Tags)
			out = append(out, lb)
		}
	}
	return out, nil
}

// ListTargetGroups implements cloud.LoadBalancers.
func (inv *Inventory) ListTargetGroups(ctx context.Context, tags cloud.Tags) ([]cloud.TargetGroup, error) {
	cluster, ok := tags[cloud.TagCluster]
	if !ok {
		return inv.LoadBalancers.ListTargetGroups(ctx, tags)
	}
	s, err := inv.fresh(ctx, cluster)
	if err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	var out []cloud.TargetGroup
	for _, tg := range s.tgs {
		if tg.Tags.Matches(tags) {
			tg.Tags = maps.Clone(tg.Tags)
			out = append(out, tg)
		}
	}
	return out, nil
}

// CreateLoadBalancer implements cloud.LoadBalancers.
func (inv *Inventory) CreateLoadBalancer(ctx context.Context, spec cloud.LoadBalancerSpec) (cloud.LoadBalancer, error) {
	lb, err := inv.LoadBalancers.CreateLoadBalancer(ctx, spec)
	return lb, inv.after(err, func(s *scope) {
		if len(lb.Tags) == 0 {
			lb.Tags = maps.Clone(spec.Tags)
		}
		s.lbs[lb.ARN] = lb
	})
}

// DeleteLoadBalancer implements cloud.LoadBalancers.
func (inv *Inventory) DeleteLoadBalancer(ctx context.Context, arn string) error {
	return inv.after(inv.LoadBalancers.DeleteLoadBalancer(ctx, arn), func(s *scope) { delete(s.lbs, arn) })
}

// CreateTargetGroup implements cloud.LoadBalancers.
func (inv *Inventory) CreateTargetGroup(ctx context.Context, spec cloud.TargetGroupSpec) (cloud.TargetGroup, error) {
	tg, err := inv.LoadBalancers.CreateTargetGroup(ctx, spec)
	return tg, inv.after(err, func(s *scope) {
		if len(tg.Tags) == 0 {
			tg.Tags = maps.Clone(spec.Tags)
		}
		s.tgs[tg.ARN] = tg
	})
}

// ModifyTargetGroup implements cloud.LoadBalancers.
func (inv *Inventory) ModifyTargetGroup(ctx context.Context, arn string, hc cloud.HealthCheck, delay int32) error {
	return inv.after(inv.LoadBalancers.ModifyTargetGroup(ctx, arn, hc, delay), func(s *scope) {
		if tg, ok := s.tgs[arn]; ok {
			tg.HealthCheck = hc // the delay is an attribute, read per group
			s.tgs[arn] = tg
		}
	})
}

// DeleteTargetGroup implements cloud.LoadBalancers.
func (inv *Inventory) DeleteTargetGroup(ctx context.Context, arn string) error {
	return inv.after(inv.LoadBalancers.DeleteTargetGroup(ctx, arn), func(s *scope) { delete(s.tgs, arn) })
}

// DeregistrationDelay implements cloud.LoadBalancers; a not-found means
// the inventory missed a deletion.
func (inv *Inventory) DeregistrationDelay(ctx context.Context, arn string) (int32, error) {
	d, err := inv.LoadBalancers.DeregistrationDelay(ctx, arn)
	if errors.Is(err, cloud.ErrNotFound) {
		inv.invalidate()
	}
	return d, err
}

// ListListeners implements cloud.LoadBalancers; a not-found means the
// inventory missed a deletion.
func (inv *Inventory) ListListeners(ctx context.Context, lbARN string) ([]cloud.Listener, error) {
	ls, err := inv.LoadBalancers.ListListeners(ctx, lbARN)
	if errors.Is(err, cloud.ErrNotFound) {
		inv.invalidate()
	}
	return ls, err
}

// CreateListener implements cloud.LoadBalancers.
func (inv *Inventory) CreateListener(ctx context.Context, spec cloud.ListenerSpec) (cloud.Listener, error) {
	l, err := inv.LoadBalancers.CreateListener(ctx, spec)
	return l, inv.after(err, func(*scope) {})
}

// ModifyListener implements cloud.LoadBalancers.
func (inv *Inventory) ModifyListener(ctx context.Context, arn, tgARN string) error {
	return inv.after(inv.LoadBalancers.ModifyListener(ctx, arn, tgARN), func(*scope) {})
}

// DeleteListener implements cloud.LoadBalancers.
func (inv *Inventory) DeleteListener(ctx context.Context, arn string) error {
	return inv.after(inv.LoadBalancers.DeleteListener(ctx, arn), func(*scope) {})
}

// Package faulty wraps a cloud.LoadBalancers and injects the failures a real
// cloud API has: throttling, 5xx errors and latency, on every operation or
// only on some, and one failing call at a chosen position to stand in for a
// crash between two calls.
package faulty

import (
	"context"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/directlb/directlb/pkg/cloud"
)

// Config says what to inject.
type Config struct {
	// ThrottleRate is the fraction of calls (0..1) that fail with a
	// retryable "Throttling" error before reaching the cloud.
	ThrottleRate float64
	// ServerErrorRate is the fraction of calls that fail with a retryable
	// "InternalFailure" (HTTP 5xx) error before reaching the cloud.
	ServerErrorRate float64
	// Latency is added to every affected call.
	Latency time.Duration
	// Ops limits injection to these operations ("CreateLoadBalancer", ...);
	// empty means every operation.
	Ops []string
	// FailCall, when > 0, makes the FailCall-th affected call (counting
	// from 1) fail with a non-retryable "InjectedCrash" error.
	FailCall int
	// FailAfterApply makes that call reach the cloud first and lose only
	// its response, like a crash after the request was sent.
	FailAfterApply bool
	// Seed makes the random failures repeatable.
	Seed uint64
}

// Cloud is the fault-injecting wrapper.
type Cloud struct {
	inner cloud.LoadBalancers
	cfg   Config

	mu    sync.Mutex
	rnd   *rand.Rand
	calls int
	// Injected counts the failures injected, per error code.
	injected map[string]int
}

var _ cloud.LoadBalancers = (*Cloud)(nil)

// New wraps inner.
func New(inner cloud.LoadBalancers, cfg Config) *Cloud {
	return &Cloud{inner: inner, cfg: cfg, rnd: rand.New(rand.NewPCG(cfg.Seed, 0x9e3779b97f4a7c15)), injected: map[string]int{}}
}

// Injected returns how many failures were injected, per error code.
func (c *Cloud) Injected() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]int, len(c.injected))
	for k, v := range c.injected {
		out[k] = v
	}
	return out
}

// before decides the fate of one call: an error to return without calling
// the cloud, or whether to drop the response after calling it.
func (c *Cloud) before(ctx context.Context, op string) (err error, loseResponse bool) {
	if len(c.cfg.Ops) > 0 && !slices.Contains(c.cfg.Ops, op) {
		return nil, false
	}
	if c.cfg.Latency > 0 {
		t := time.NewTimer(c.cfg.Latency)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err(), false
		case <-t.C:
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls++
	if c.cfg.FailCall > 0 && c.calls == c.cfg.FailCall {
		c.injected["InjectedCrash"]++
		e := &cloud.APIError{Op: op, Code: "InjectedCrash", Message: "injected failure"}
		if c.cfg.FailAfterApply {
			return e, true
		}
		return e, false
	}
	r := c.rnd.Float64()
	switch {
	case r < c.cfg.ThrottleRate:
		c.injected["Throttling"]++
		return &cloud.APIError{Op: op, Code: "Throttling", Message: "Rate exceeded (injected)", Retryable: true}, false
	case r < c.cfg.ThrottleRate+c.cfg.ServerErrorRate:
		c.injected["InternalFailure"]++
		return &cloud.APIError{Op: op, Code: "InternalFailure", Message: "HTTP 500 (injected)", Retryable: true}, false
	}
	return nil, false
}

func do[T any](c *Cloud, ctx context.Context, op string, call func() (T, error)) (T, error) {
	var zero T
	err, lose := c.before(ctx, op)
	if err != nil && !lose {
		return zero, err
	}
	v, cerr := call()
	if lose {
		return zero, err
	}
	return v, cerr
}

func do0(c *Cloud, ctx context.Context, op string, call func() error) error {
	_, err := do(c, ctx, op, func() (struct{}, error) { return struct{}{}, call() })
	return err
}

// CreateLoadBalancer implements cloud.LoadBalancers.
func (c *Cloud) CreateLoadBalancer(ctx context.Context, spec cloud.LoadBalancerSpec) (cloud.LoadBalancer, error) {
	return do(c, ctx, "CreateLoadBalancer", func() (cloud.LoadBalancer, error) { return c.inner.CreateLoadBalancer(ctx, spec) })
}

// ListLoadBalancers implements cloud.LoadBalancers.
func (c *Cloud) ListLoadBalancers(ctx context.Context, tags cloud.Tags) ([]cloud.LoadBalancer, error) {
	return do(c, ctx, "ListLoadBalancers", func() ([]cloud.LoadBalancer, error) { return c.inner.ListLoadBalancers(ctx, tags) })
}

// DeleteLoadBalancer implements cloud.LoadBalancers.
func (c *Cloud) DeleteLoadBalancer(ctx context.Context, arn string) error {
	return do0(c, ctx, "DeleteLoadBalancer", func() error { return c.inner.DeleteLoadBalancer(ctx, arn) })
}

// CreateTargetGroup implements cloud.LoadBalancers.
func (c *Cloud) CreateTargetGroup(ctx context.Context, spec cloud.TargetGroupSpec) (cloud.TargetGroup, error) {
	return do(c, ctx, "CreateTargetGroup", func() (cloud.TargetGroup, error) { return c.inner.CreateTargetGroup(ctx, spec) })
}

// ListTargetGroups implements cloud.LoadBalancers.
func (c *Cloud) ListTargetGroups(ctx context.Context, tags cloud.Tags) ([]cloud.TargetGroup, error) {
	return do(c, ctx, "ListTargetGroups", func() ([]cloud.TargetGroup, error) { return c.inner.ListTargetGroups(ctx, tags) })
}

// DeregistrationDelay implements cloud.LoadBalancers.
func (c *Cloud) DeregistrationDelay(ctx context.Context, arn string) (int32, error) {
	return do(c, ctx, "DeregistrationDelay", func() (int32, error) { return c.inner.DeregistrationDelay(ctx, arn) })
}

// ModifyTargetGroup implements cloud.LoadBalancers.
func (c *Cloud) ModifyTargetGroup(ctx context.Context, arn string, hc cloud.HealthCheck, delay int32) error {
	return do0(c, ctx, "ModifyTargetGroup", func() error { return c.inner.ModifyTargetGroup(ctx, arn, hc, delay) })
}

// DeleteTargetGroup implements cloud.LoadBalancers.
func (c *Cloud) DeleteTargetGroup(ctx context.Context, arn string) error {
	return do0(c, ctx, "DeleteTargetGroup", func() error { return c.inner.DeleteTargetGroup(ctx, arn) })
}

// CreateListener implements cloud.LoadBalancers.
func (c *Cloud) CreateListener(ctx context.Context, spec cloud.ListenerSpec) (cloud.Listener, error) {
	return do(c, ctx, "CreateListener", func() (cloud.Listener, error) { return c.inner.CreateListener(ctx, spec) })
}

// ListListeners implements cloud.LoadBalancers.
func (c *Cloud) ListListeners(ctx context.Context, lbARN string) ([]cloud.Listener, error) {
	return do(c, ctx, "ListListeners", func() ([]cloud.Listener, error) { return c.inner.ListListeners(ctx, lbARN) })
}

// ModifyListener implements cloud.LoadBalancers.
func (c *Cloud) ModifyListener(ctx context.Context, arn, tgARN string) error {
	return do0(c, ctx, "ModifyListener", func() error { return c.inner.ModifyListener(ctx, arn, tgARN) })
}

// DeleteListener implements cloud.LoadBalancers.
func (c *Cloud) DeleteListener(ctx context.Context, arn string) error {
	return do0(c, ctx, "DeleteListener", func() error { return c.inner.DeleteListener(ctx, arn) })
}

// RegisterTargets implements cloud.LoadBalancers.
func (c *Cloud) RegisterTargets(ctx context.Context, tgARN string, targets []cloud.Target) error {
	return do0(c, ctx, "RegisterTargets", func() error { return c.inner.RegisterTargets(ctx, tgARN, targets) })
}

// DeregisterTargets implements cloud.LoadBalancers.
func (c *Cloud) DeregisterTargets(ctx context.Context, tgARN string, targets []cloud.Target) error {
	return do0(c, ctx, "DeregisterTargets", func() error { return c.inner.DeregisterTargets(ctx, tgARN, targets) })
}

// DescribeTargetHealth implements cloud.LoadBalancers.
func (c *Cloud) DescribeTargetHealth(ctx context.Context, tgARN string) ([]cloud.TargetHealth, error) {
	return do(c, ctx, "DescribeTargetHealth", func() ([]cloud.TargetHealth, error) { return c.inner.DescribeTargetHealth(ctx, tgARN) })
}

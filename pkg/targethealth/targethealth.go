// Package targethealth is the lb-controller's one reader of the cloud's
// target health. The target reconciler (what is registered), the gate
// writer (is the pod healthy) and drain (has the pod left) all read
// DescribeTargetHealth through it: per target group, concurrent callers
// share one call (single flight), a result is reused while it is young
// enough for the caller, and a Register/Deregister call invalidates it.
package targethealth

import (
	"context"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/directlb/directlb/pkg/cloud"
	"github.com/directlb/directlb/pkg/deploy"
)

// TargetGroupSource gives a Service's target groups (the lb-controller's
// registry, filled by the Service reconciler's deploy passes).
type TargetGroupSource interface {
	Get(key types.NamespacedName) []deploy.TargetGroup
}

// Reader reads a target group's health. maxAge is how old a result the
// caller accepts (0: the reader's default, its TTL); the result is shared
// and must not be modified.
type Reader interface {
	Read(ctx context.Context, arn string, maxAge time.Duration) ([]cloud.TargetHealth, error)
}

// Describer is the one cloud call the cache makes.
type Describer interface {
	DescribeTargetHealth(ctx context.Context, targetGroupARN string) ([]cloud.TargetHealth, error)
}

// DefaultTTL is how old a result a caller gets unless it asks otherwise.
const DefaultTTL = time.Second

// callTimeout bounds one cloud call, whoever waits for it: a caller that
// goes away does not cancel the call the others share.
const callTimeout = 30 * time.Second

// retain is how long an entry nobody refreshed is kept (for callers that
// accept old results, such as the gate writer's slow regression check).
const retain = 2 * time.Hour

var (
	cloudCalls = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "directlb_target_health_cloud_calls_total",
		Help: "DescribeTargetHealth calls the shared target-health reader made, by result (ok, error).",
	}, []string{"result"})
	cacheReads = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "directlb_target_health_cache_reads_total",
		Help: "Target-health reads served by the shared reader, by how (called: started a cloud call, joined: waited for one in flight, cached: a young enough result).",
	}, []string{"how"})
)

func init() {
	metrics.Registry.MustRegister(cloudCalls, cacheReads)
}

// Cache is the Reader every part of the controller shares.
type Cache struct {
	Cloud Describer
	// TTL is the age a result may have when a caller passes maxAge 0.
	TTL time.Duration
	// Now is the clock (nil: time.Now), for tests.
	Now func() time.Time

	mu sync.Mutex
	// entries holds each target group's last result or call in flight; an
	// entry that leaves the map (invalidated, failed) still answers the
	// callers that hold it.
	entries   map[string]*entry
	lastPrune time.Time
}

type entry struct {
	at      time.Time // when the call started (what the result is at least as new as)
	done    chan struct{}
	targets []cloud.TargetHealth
	err     error
}

// NewCache returns a cache over c with the given TTL (0: DefaultTTL).
func NewCache(c Describer, ttl time.Duration) *Cache {
	if ttl <= 0 {
		ttl = DefaultTTL
	}
	return &Cache{Cloud: c, TTL: ttl}
}

func (c *Cache) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}

// Read returns the target group's health no older than maxAge (0: TTL),
// sharing a call in flight. Errors are not cached: the next caller after a
// failed call makes a new one.
func (c *Cache) Read(ctx context.Context, arn string, maxAge time.Duration) ([]cloud.TargetHealth, error) {
	if maxAge <= 0 {
		maxAge = c.TTL
	}
	c.mu.Lock()
	if c.entries == nil {
		c.entries = map[string]*entry{}
	}
	now := c.now()
	e := c.entries[arn]
	how := "cached"
	switch {
	case e == nil:
		how = "called"
	case !isDone(e.done):
		how = "joined"
	case e.err != nil || now.Sub(e.at) > maxAge:
		how = "called"
	}
	if how == "called" {
		e = &entry{at: now, done: make(chan struct{})}
		c.entries[arn] = e
		go c.call(ctx, arn, e)
	}
	c.pruneLocked(now)
	c.mu.Unlock()
	cacheReads.WithLabelValues(how).Inc()
	select {
	case <-e.done:
		return e.targets, e.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (c *Cache) call(ctx context.Context, arn string, e *entry) {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), callTimeout)
	defer cancel()
	targets, err := c.Cloud.DescribeTargetHealth(cctx, arn)
	result := "ok"
	if err != nil {
		result = "error"
	}
	cloudCalls.WithLabelValues(result).Inc()
	c.mu.Lock()
	e.targets, e.err = targets, err
	if err != nil && c.entries[arn] == e {
		delete(c.entries, arn) // its waiters get the error, the next caller reads again
	}
	c.mu.Unlock()
	close(e.done)
}

// Invalidate drops the target group's result (after a Register or
// Deregister call): the next Read calls the cloud. A call in flight (it
// may have started before the change) still answers its waiters but is not
// kept, and later callers do not join it.
func (c *Cache) Invalidate(arn string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.entries, arn)
}

// Forget drops a target group that is gone.
func (c *Cache) Forget(arn string) { c.Invalidate(arn) }

// pruneLocked drops, every few minutes, results older than retain.
func (c *Cache) pruneLocked(now time.Time) {
	if now.Sub(c.lastPrune) < 10*time.Minute {
		return
	}
	c.lastPrune = now
	for arn, e := range c.entries {
		if isDone(e.done) && now.Sub(e.at) > retain {
			delete(c.entries, arn)
		}
	}
}

func isDone(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

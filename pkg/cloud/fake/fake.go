// Package fake is an in-memory cloud.LoadBalancers for unit tests. It keeps
// the AWS behaviours the controllers depend on: names are unique, a target
// group in use by a listener cannot be deleted, deleting a load balancer
// deletes its listeners, deleting what does not exist succeeds. Lists come
// sorted by ARN, so a pass makes the same calls every run. It counts every
// call per operation and, after Record, logs them in order. ENIs is the
// same for cloud.NetworkInterfaces (networkinterfaces.go).
package fake

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"sort"
	"sync"

	"github.com/directlb/directlb/pkg/cloud"
)

// Cloud is the in-memory cloud. The zero value is not usable; call New.
type Cloud struct {
	mu        sync.Mutex
	seq       int
	lbs       map[string]*cloud.LoadBalancer
	tgs       map[string]*cloud.TargetGroup
	listeners map[string]*cloud.Listener
	targets   map[string]map[cloud.Target]cloud.TargetState
	calls     map[string]int
	recording bool
	log       []string
	// BatchLimit is the most targets one Register/Deregister request
	// takes. Longer lists are split as the AWS client splits them
	// (cloud.InBatches), each request counted as one call. Zero means
	// cloud.MaxTargetsPerCall.
	BatchLimit int
}

var _ cloud.LoadBalancers = (*Cloud)(nil)

// New returns an empty cloud.
func New() *Cloud {
	return &Cloud{
		lbs:       map[string]*cloud.LoadBalancer{},
		tgs:       map[string]*cloud.TargetGroup{},
		listeners: map[string]*cloud.Listener{},
		targets:   map[string]map[cloud.Target]cloud.TargetState{},
		calls:     map[string]int{},
	}
}

// Calls returns how many times each operation was called.
func (c *Cloud) Calls() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.calls)
}

// Record starts the call log afresh: from now on every call is noted, in
// order, with its arguments.
func (c *Cloud) Record() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.recording, c.log = true, nil
}

// Log returns the calls since Record, in order, each as the operation and
// its arguments (without the context) as a JSON array.
func (c *Cloud) Log() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.log)
}

// TotalCalls returns the number of calls of every operation.
func (c *Cloud) TotalCalls() int {
	n := 0
	for _, v := range c.Calls() {
		n += v
	}
	return n
}

// Snapshot is the whole cloud state, sorted by name or port, for tests.
type Snapshot struct {
	LoadBalancers []cloud.LoadBalancer
	TargetGroups  []cloud.TargetGroup
	Listeners     []cloud.Listener
	// Targets maps a target group name to its sorted targets.
	Targets map[string][]cloud.Target
}

// Snapshot returns a copy of the state.
func (c *Cloud) Snapshot() Snapshot {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := Snapshot{Targets: map[string][]cloud.Target{}}
	for _, lb := range c.lbs {
		s.LoadBalancers = append(s.LoadBalancers, copyLB(*lb))
	}
	for _, tg := range c.tgs {
		s.TargetGroups = append(s.TargetGroups, copyTG(*tg))
		ts := slices.Collect(maps.Keys(c.targets[tg.ARN]))
		sortTargets(ts)
		if len(ts) > 0 {
			s.Targets[tg.Name] = ts
		}
	}
	for _, l := range c.listeners {
		cp := *l
		cp.Tags = maps.Clone(l.Tags)
		s.Listeners = append(s.Listeners, cp)
	}
	sort.Slice(s.LoadBalancers, func(i, j int) bool { return s.LoadBalancers[i].Name < s.LoadBalancers[j].Name })
	sort.Slice(s.TargetGroups, func(i, j int) bool { return s.TargetGroups[i].Name < s.TargetGroups[j].Name })
	sort.Slice(s.Listeners, func(i, j int) bool {
		a, b := s.Listeners[i], s.Listeners[j]
		if a.LoadBalancerARN != b.LoadBalancerARN {
			return a.LoadBalancerARN < b.LoadBalancerARN
		}
		return a.Port < b.Port
	})
	return s
}

func sortTargets(ts []cloud.Target) {
	sort.Slice(ts, func(i, j int) bool {
		if ts[i].IP != ts[j].IP {
			return ts[i].IP < ts[j].IP
		}
		return ts[i].Port < ts[j].Port
	})
}

func (c *Cloud) begin(op string, args ...any) func() {
	c.mu.Lock()
	c.calls[op]++
	if c.recording {
		b, err := json.Marshal(args)
		if err != nil {
			b = []byte(err.Error())
		}
		c.log = append(c.log, op+" "+string(b))
	}
	return c.mu.Unlock
}

func (c *Cloud) arn(kind string) string {
	c.seq++
	return fmt.Sprintf("arn:fake:elasticloadbalancing:%s/%d", kind, c.seq)
}

func apiErr(op, code, msg string) error {
	return &cloud.APIError{Op: op, Code: code, Message: msg}
}

func notFound(op, what, arn string) error {
	return fmt.Errorf("%w: %w", cloud.ErrNotFound, apiErr(op, what+"NotFound", arn))
}

func copyLB(lb cloud.LoadBalancer) cloud.LoadBalancer {
	lb.Tags = maps.Clone(lb.Tags)
	lb.Addresses = slices.Clone(lb.Addresses)
	return lb
}

func copyTG(tg cloud.TargetGroup) cloud.TargetGroup {
	tg.Tags = maps.Clone(tg.Tags)
	tg.LoadBalancerARNs = slices.Clone(tg.LoadBalancerARNs)
	return tg
}

// CreateLoadBalancer implements cloud.LoadBalancers.
func (c *Cloud) CreateLoadBalancer(_ context.Context, spec cloud.LoadBalancerSpec) (cloud.LoadBalancer, error) {
	defer c.begin("CreateLoadBalancer", spec)()
	for _, lb := range c.lbs {
		if lb.Name == spec.Name {
			return cloud.LoadBalancer{}, apiErr("CreateLoadBalancer", "DuplicateLoadBalancerName", spec.Name)
		}
	}
	n := c.seq + 1
	lb := &cloud.LoadBalancer{
		ARN: c.arn("loadbalancer/net/" + spec.Name), Name: spec.Name, Scheme: spec.Scheme,
		DNSName:   spec.Name + ".elb.fake",
		Addresses: []string{fmt.Sprintf("198.51.100.%d", n%250+1)},
		State:     "active", Tags: maps.Clone(spec.Tags),
	}
	c.lbs[lb.ARN] = lb
	return copyLB(*lb), nil
}

// ListLoadBalancers implements cloud.LoadBalancers.
func (c *Cloud) ListLoadBalancers(_ context.Context, tags cloud.Tags) ([]cloud.LoadBalancer, error) {
	defer c.begin("ListLoadBalancers", tags)()
	var out []cloud.LoadBalancer
	for _, arn := range slices.Sorted(maps.Keys(c.lbs)) {
		if lb := c.lbs[arn]; lb.Tags.Matches(tags) {
			out = append(out, copyLB(*lb))
		}
	}
	return out, nil
}

// DeleteLoadBalancer implements cloud.LoadBalancers; it deletes the load
// balancer's listeners too.
func (c *Cloud) DeleteLoadBalancer(_ context.Context, arn string) error {
	defer c.begin("DeleteLoadBalancer", arn)()
	if _, ok := c.lbs[arn]; !ok {
		return nil
	}
	for la, l := range c.listeners {
		if l.LoadBalancerARN == arn {
			c.deleteListener(la)
		}
	}
	delete(c.lbs, arn)
	return nil
}

// CreateTargetGroup implements cloud.LoadBalancers.
func (c *Cloud) CreateTargetGroup(_ context.Context, spec cloud.TargetGroupSpec) (cloud.TargetGroup, error) {
	defer c.begin("CreateTargetGroup", spec)()
	for _, tg := range c.tgs {
		if tg.Name == spec.Name {
			return cloud.TargetGroup{}, apiErr("CreateTargetGroup", "DuplicateTargetGroupName", spec.Name)
		}
	}
	tg := &cloud.TargetGroup{ARN: c.arn("targetgroup/" + spec.Name), TargetGroupSpec: spec}
	tg.Tags = maps.Clone(spec.Tags)
	c.tgs[tg.ARN] = tg
	c.targets[tg.ARN] = map[cloud.Target]cloud.TargetState{}
	return copyTG(*tg), nil
}

// ListTargetGroups implements cloud.LoadBalancers.
func (c *Cloud) ListTargetGroups(_ context.Context, tags cloud.Tags) ([]cloud.TargetGroup, error) {
	defer c.begin("ListTargetGroups", tags)()
	var out []cloud.TargetGroup
	for _, arn := range slices.Sorted(maps.Keys(c.tgs)) {
		if tg := c.tgs[arn]; tg.Tags.Matches(tags) {
			t := copyTG(*tg)
			t.DeregistrationDelaySeconds = 0 // an attribute: DeregistrationDelay
			out = append(out, t)
		}
	}
	return out, nil
}

// DeregistrationDelay implements cloud.LoadBalancers.
func (c *Cloud) DeregistrationDelay(_ context.Context, arn string) (int32, error) {
	defer c.begin("DeregistrationDelay", arn)()
	tg, ok := c.tgs[arn]
	if !ok {
		return 0, notFound("DeregistrationDelay", "TargetGroup", arn)
	}
	return tg.DeregistrationDelaySeconds, nil
}

// ModifyTargetGroup implements cloud.LoadBalancers.
func (c *Cloud) ModifyTargetGroup(_ context.Context, arn string, hc cloud.HealthCheck, delay int32) error {
	defer c.begin("ModifyTargetGroup", arn, hc, delay)()
	tg, ok := c.tgs[arn]
	if !ok {
		return notFound("ModifyTargetGroup", "TargetGroup", arn)
	}
	tg.HealthCheck = hc
	tg.DeregistrationDelaySeconds = delay
	return nil
}

// DeleteTargetGroup implements cloud.LoadBalancers.
func (c *Cloud) DeleteTargetGroup(_ context.Context, arn string) error {
	defer c.begin("DeleteTargetGroup", arn)()
	tg, ok := c.tgs[arn]
	if !ok {
		return nil
	}
	if len(tg.LoadBalancerARNs) > 0 {
		return apiErr("DeleteTargetGroup", "ResourceInUse", "target group "+tg.Name+" is in use by a listener")
	}
	delete(c.tgs, arn)
	delete(c.targets, arn)
	return nil
}

// CreateListener implements cloud.LoadBalancers.
func (c *Cloud) CreateListener(_ context.Context, spec cloud.ListenerSpec) (cloud.Listener, error) {
	defer c.begin("CreateListener", spec)()
	if _, ok := c.lbs[spec.LoadBalancerARN]; !ok {
		return cloud.Listener{}, notFound("CreateListener", "LoadBalancer", spec.LoadBalancerARN)
	}
	tg, ok := c.tgs[spec.TargetGroupARN]
	if !ok {
		return cloud.Listener{}, notFound("CreateListener", "TargetGroup", spec.TargetGroupARN)
	}
	if tg.Protocol != spec.Protocol {
		return cloud.Listener{}, apiErr("CreateListener", "ValidationError",
			fmt.Sprintf("listener protocol %s does not match target group protocol %s", spec.Protocol, tg.Protocol))
	}
	for _, l := range c.listeners {
		if l.LoadBalancerARN == spec.LoadBalancerARN && l.Port == spec.Port {
			return cloud.Listener{}, apiErr("CreateListener", "DuplicateListener", fmt.Sprintf("port %d", spec.Port))
		}
	}
	l := &cloud.Listener{ARN: c.arn("listener"), ListenerSpec: spec}
	l.Tags = maps.Clone(spec.Tags)
	c.listeners[l.ARN] = l
	c.attach(tg, spec.LoadBalancerARN)
	return *l, nil
}

func (c *Cloud) attach(tg *cloud.TargetGroup, lbARN string) {
	if !slices.Contains(tg.LoadBalancerARNs, lbARN) {
		tg.LoadBalancerARNs = append(tg.LoadBalancerARNs, lbARN)
	}
}

// detach removes lbARN from the target group unless another listener of
// that load balancer still forwards to it.
func (c *Cloud) detach(tgARN, lbARN string) {
	for _, l := range c.listeners {
		if l.TargetGroupARN == tgARN && l.LoadBalancerARN == lbARN {
			return
		}
	}
	if tg, ok := c.tgs[tgARN]; ok {
		tg.LoadBalancerARNs = slices.DeleteFunc(tg.LoadBalancerARNs, func(a string) bool { return a == lbARN })
	}
}

// ListListeners implements cloud.LoadBalancers.
func (c *Cloud) ListListeners(_ context.Context, lbARN string) ([]cloud.Listener, error) {
	defer c.begin("ListListeners", lbARN)()
	if _, ok := c.lbs[lbARN]; !ok {
		return nil, notFound("ListListeners", "LoadBalancer", lbARN)
	}
	var out []cloud.Listener
	for _, arn := range slices.Sorted(maps.Keys(c.listeners)) {
		if l := c.listeners[arn]; l.LoadBalancerARN == lbARN {
			cp := *l
			cp.Tags = maps.Clone(l.Tags)
			out = append(out, cp)
		}
	}
	return out, nil
}

// ModifyListener implements cloud.LoadBalancers.
func (c *Cloud) ModifyListener(_ context.Context, arn, tgARN string) error {
	defer c.begin("ModifyListener", arn, tgARN)()
	l, ok := c.listeners[arn]
	if !ok {
		return notFound("ModifyListener", "Listener", arn)
	}
	tg, ok := c.tgs[tgARN]
	if !ok {
		return notFound("ModifyListener", "TargetGroup", tgARN)
	}
	if tg.Protocol != l.Protocol {
		return apiErr("ModifyListener", "ValidationError", "protocol mismatch")
	}
	old := l.TargetGroupARN
	l.TargetGroupARN = tgARN
	c.detach(old, l.LoadBalancerARN)
	c.attach(tg, l.LoadBalancerARN)
	return nil
}

// DeleteListener implements cloud.LoadBalancers.
func (c *Cloud) DeleteListener(_ context.Context, arn string) error {
	defer c.begin("DeleteListener", arn)()
	c.deleteListener(arn)
	return nil
}

func (c *Cloud) deleteListener(arn string) {
	l, ok := c.listeners[arn]
	if !ok {
		return
	}
	delete(c.listeners, arn)
	c.detach(l.TargetGroupARN, l.LoadBalancerARN)
}

func (c *Cloud) batchLimit() int {
	if c.BatchLimit == 0 {
		return cloud.MaxTargetsPerCall
	}
	return c.BatchLimit
}

// RegisterTargets implements cloud.LoadBalancers. Targets are healthy at
// once when their group is in use by a load balancer, unused otherwise.
func (c *Cloud) RegisterTargets(_ context.Context, tgARN string, targets []cloud.Target) error {
	return cloud.InBatches(targets, c.batchLimit(), func(batch []cloud.Target) error {
		defer c.begin("RegisterTargets", tgARN, batch)()
		tg, ok := c.tgs[tgARN]
		if !ok {
			return notFound("RegisterTargets", "TargetGroup", tgARN)
		}
		state := cloud.TargetUnused
		if len(tg.LoadBalancerARNs) > 0 {
			state = cloud.TargetHealthy
		}
		for _, t := range batch {
			c.targets[tgARN][t] = state
		}
		return nil
	})
}

// DeregisterTargets implements cloud.LoadBalancers; targets leave at once.
func (c *Cloud) DeregisterTargets(_ context.Context, tgARN string, targets []cloud.Target) error {
	return cloud.InBatches(targets, c.batchLimit(), func(batch []cloud.Target) error {
		defer c.begin("DeregisterTargets", tgARN, batch)()
		if _, ok := c.tgs[tgARN]; !ok {
			return notFound("DeregisterTargets", "TargetGroup", tgARN)
		}
		for _, t := range batch {
			delete(c.targets[tgARN], t)
		}
		return nil
	})
}

// DescribeTargetHealth implements cloud.LoadBalancers.
func (c *Cloud) DescribeTargetHealth(_ context.Context, tgARN string) ([]cloud.TargetHealth, error) {
	defer c.begin("DescribeTargetHealth", tgARN)()
	ts, ok := c.targets[tgARN]
	if !ok {
		return nil, notFound("DescribeTargetHealth", "TargetGroup", tgARN)
	}
	out := make([]cloud.TargetHealth, 0, len(ts))
	for t, s := range ts {
		out = append(out, cloud.TargetHealth{Target: t, State: s})
	}
	return out, nil
}

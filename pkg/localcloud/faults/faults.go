// Package faults decides, per API action, whether a call is throttled,
// fails with a server error or is delayed: injected faults for tests, and
// AWS-like token-bucket rate limits so benchmarks meet the real bound.
package faults

import (
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Any is the action name whose rule applies to every action without its own.
const Any = "*"

// Rule is the faults injected into one action. Fractions are applied
// deterministically: a fraction of 0.5 fails every second call.
type Rule struct {
	Throttle    float64  `json:"throttle,omitempty"`    // fraction answered Throttling (HTTP 400)
	ServerError float64  `json:"serverError,omitempty"` // fraction answered ServiceUnavailable (HTTP 503)
	Latency     Duration `json:"latency,omitempty"`     // added to every call
}

// Limit is a token bucket: Rate tokens a second, Burst at most.
type Limit struct {
	Rate  float64 `json:"rate"`
	Burst int     `json:"burst"`
}

// Spec is the whole fault configuration, as flags and the admin endpoint
// set it.
type Spec struct {
	Rules  map[string]Rule  `json:"rules,omitempty"`
	Limits map[string]Limit `json:"limits,omitempty"`
}

// Duration is a time.Duration that reads and writes JSON as "250ms".
type Duration time.Duration

func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		var n int64
		if err2 := json.Unmarshal(b, &n); err2 != nil {
			return fmt.Errorf("duration: %w", err)
		}
		*d = Duration(n)
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// Describe and mutate action names, for AWSLimits.
var describeActions = []string{
	"DescribeLoadBalancers", "DescribeListeners", "DescribeTargetGroups",
	"DescribeTargetGroupAttributes", "DescribeTargetHealth", "DescribeTags",
}

// AWSLimits are token buckets near the ELBv2 API's published defaults
// (per account and region): Describe* 40 tokens refilled at 10/s,
// RegisterTargets/DeregisterTargets 20 at 4/s, load balancer create/delete
// 10 at 1/s, every other mutating call 20 at 2/s.
func AWSLimits() map[string]Limit {
	m := map[string]Limit{}
	for _, a := range describeActions {
		m[a] = Limit{Rate: 10, Burst: 40}
	}
	for _, a := range []string{"RegisterTargets", "DeregisterTargets"} {
		m[a] = Limit{Rate: 4, Burst: 20}
	}
	for _, a := range []string{"CreateLoadBalancer", "DeleteLoadBalancer"} {
		m[a] = Limit{Rate: 1, Burst: 10}
	}
	for _, a := range []string{"CreateListener", "DeleteListener", "ModifyListener", "CreateTargetGroup",
		"DeleteTargetGroup", "ModifyTargetGroup", "ModifyTargetGroupAttributes", "AddTags", "RemoveTags"} {
		m[a] = Limit{Rate: 2, Burst: 20}
	}
	return m
}

// Validate checks the fractions, latencies and limits.
func (s Spec) Validate() error {
	for a, r := range s.Rules {
		if r.Throttle < 0 || r.Throttle > 1 || r.ServerError < 0 || r.ServerError > 1 || r.Throttle+r.ServerError > 1 {
			return fmt.Errorf("fault rule %s: fractions must be in [0,1] and sum to at most 1", a)
		}
		if r.Latency < 0 || time.Duration(r.Latency) > time.Minute {
			return fmt.Errorf("fault rule %s: latency must be in [0,1m]", a)
		}
	}
	for a, l := range s.Limits {
		if l.Rate <= 0 || l.Burst < 1 {
			return fmt.Errorf("rate limit %s: rate must be > 0 and burst >= 1", a)
		}
	}
	return nil
}

// Outcome is what happens to one call.
type Outcome int

const (
	Pass        Outcome = iota
	Throttled           // injected throttling
	RateLimited         // over the action's token bucket
	ServerError         // injected 5xx
)

type actionState struct {
	calls   float64 // calls seen, for the deterministic fractions
	limiter *rate.Limiter
}

// Injector applies a Spec. Safe for concurrent use.
type Injector struct {
	mu     sync.Mutex
	spec   Spec
	state  map[string]*actionState
	counts map[string]map[string]int64 // action -> outcome -> count
}

// New returns an Injector for spec.
func New(spec Spec) *Injector {
	in := &Injector{}
	in.Set(spec)
	return in
}

// Set replaces the configuration; rate-limit buckets start full.
func (in *Injector) Set(spec Spec) {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.spec = spec
	in.state = map[string]*actionState{}
	if in.counts == nil {
		in.counts = map[string]map[string]int64{}
	}
}

// Spec returns the current configuration.
func (in *Injector) Spec() Spec {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.spec
}

// Counts returns how many calls per action ended in each outcome.
func (in *Injector) Counts() map[string]map[string]int64 {
	in.mu.Lock()
	defer in.mu.Unlock()
	out := map[string]map[string]int64{}
	for a, m := range in.counts {
		out[a] = map[string]int64{}
		for k, v := range m {
			out[a][k] = v
		}
	}
	return out
}

func (o Outcome) String() string {
	switch o {
	case Throttled:
		return "throttled"
	case RateLimited:
		return "rateLimited"
	case ServerError:
		return "serverError"
	}
	return "pass"
}

// Decide returns the outcome of one call to action and the latency to add.
func (in *Injector) Decide(action string, now time.Time) (Outcome, time.Duration) {
	in.mu.Lock()
	defer in.mu.Unlock()
	rule, ok := in.spec.Rules[action]
	if !ok {
		rule = in.spec.Rules[Any]
	}
	st := in.state[action]
	if st == nil {
		st = &actionState{}
		lim, ok := in.spec.Limits[action]
		if !ok {
			lim, ok = in.spec.Limits[Any]
		}
		if ok {
			st.limiter = rate.NewLimiter(rate.Limit(lim.Rate), lim.Burst)
		}
		in.state[action] = st
	}
	out := Pass
	// Error diffusion: call n fails when ceil(n*f) grows, so exactly a
	// fraction f of calls fail, spread evenly, starting with the first.
	prev := st.calls
	st.calls++
	switch {
	case crossed(prev, st.calls, rule.Throttle):
		out = Throttled
	case crossed(prev, st.calls, rule.Throttle+rule.ServerError) && rule.ServerError > 0:
		out = ServerError
	case st.limiter != nil && !st.limiter.AllowN(now, 1):
		out = RateLimited
	}
	if in.counts[action] == nil {
		in.counts[action] = map[string]int64{}
	}
	in.counts[action][out.String()]++
	return out, time.Duration(rule.Latency)
}

// crossed reports whether ceil(n*f) grew from prev to n, i.e. whether this
// call falls in the failing fraction f: the first call fails, then one in
// every 1/f. Throttle and server error share the sequence: with fractions t
// and e, a call fails with throttle if it crosses t and with a server error
// if it crosses t+e but not t.
func crossed(prev, n, f float64) bool {
	if f <= 0 {
		return false
	}
	const eps = 1e-9
	return math.Ceil(n*f-eps) > math.Ceil(prev*f-eps)
}

// ParseRules builds rules from flag maps: throttle and serverError map an
// action (or *) to a fraction, latency maps it to a duration.
func ParseRules(throttle, serverError, latency map[string]string) (map[string]Rule, error) {
	rules := map[string]Rule{}
	for a, v := range throttle {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return nil, fmt.Errorf("throttle fraction for %s: %w", a, err)
		}
		r := rules[a]
		r.Throttle = f
		rules[a] = r
	}
	for a, v := range serverError {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return nil, fmt.Errorf("server error fraction for %s: %w", a, err)
		}
		r := rules[a]
		r.ServerError = f
		rules[a] = r
	}
	for a, v := range latency {
		d, err := time.ParseDuration(v)
		if err != nil {
			return nil, fmt.Errorf("latency for %s: %w", a, err)
		}
		r := rules[a]
		r.Latency = Duration(d)
		rules[a] = r
	}
	return rules, nil
}

// ParseLimits parses "rate:burst" values per action.
func ParseLimits(m map[string]string) (map[string]Limit, error) {
	out := map[string]Limit{}
	for a, v := range m {
		rs, bs, ok := strings.Cut(v, ":")
		if !ok {
			return nil, fmt.Errorf("rate limit for %s: %q is not rate:burst", a, v)
		}
		r, err := strconv.ParseFloat(rs, 64)
		if err != nil {
			return nil, fmt.Errorf("rate limit for %s: %w", a, err)
		}
		b, err := strconv.Atoi(bs)
		if err != nil {
			return nil, fmt.Errorf("rate limit burst for %s: %w", a, err)
		}
		out[a] = Limit{Rate: r, Burst: b}
	}
	return out, nil
}

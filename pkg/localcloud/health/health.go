// Package health runs the target health checks of localcloud's target
// groups (TCP connect or HTTP GET, with interval, timeout and thresholds)
// and tracks each target's state: initial, then healthy or unhealthy.
// States are saved on every transition so a restart resumes them.
package health

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/directlb/directlb/pkg/localcloud/store"
)

// States a health check reports.
const (
	Initial   = "initial"
	Healthy   = "healthy"
	Unhealthy = "unhealthy"
)

// Config configures a Checker.
type Config struct {
	Log *zap.Logger
	// StatePath is where states are saved; empty saves nothing.
	StatePath string
}

type key struct {
	TG   string
	IP   string
	Port int32
}

func (k key) String() string { return fmt.Sprintf("%s|%s:%d", k.TG, k.IP, k.Port) }

// Status is a target's health.
type Status struct {
	State  string `json:"state"`
	Reason string `json:"reason,omitempty"`
	Detail string `json:"detail,omitempty"`
}

type probe struct {
	hc     store.HealthCheck
	cancel context.CancelFunc
	done   chan struct{}
}

// Checker runs health checks. Safe for concurrent use.
type Checker struct {
	cfg     Config
	mu      sync.Mutex
	probes  map[key]*probe
	status  map[key]Status
	changes chan struct{}
	client  *http.Client
}

// New returns a Checker, with states restored from cfg.StatePath.
func New(cfg Config) *Checker {
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	c := &Checker{
		cfg:     cfg,
		probes:  map[key]*probe{},
		status:  map[key]Status{},
		changes: make(chan struct{}, 1),
		client: &http.Client{
			Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil},
			CheckRedirect: func(*http.Request, []*http.Request) error {
				return http.ErrUseLastResponse
			},
		},
	}
	if cfg.StatePath != "" {
		if b, err := os.ReadFile(cfg.StatePath); err == nil {
			saved := map[string]Status{}
			if err := json.Unmarshal(b, &saved); err != nil {
				cfg.Log.Warn("ignoring unreadable health state", zap.String("path", cfg.StatePath), zap.Error(err))
			}
			for k, st := range saved {
				if kk, ok := parseKey(k); ok {
					c.status[kk] = st
				}
			}
		}
	}
	return c
}

func parseKey(s string) (key, bool) {
	tg, addr, ok := strings.Cut(s, "|")
	if !ok {
		return key{}, false
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return key{}, false
	}
	p, err := strconv.Atoi(port)
	if err != nil {
		return key{}, false
	}
	return key{TG: tg, IP: host, Port: int32(p)}, true
}

// Changes receives a value after target states change.
func (c *Checker) Changes() <-chan struct{} { return c.changes }

// Sync starts checks for every active target of a target group in use,
// restarts those whose check changed, and stops the rest.
func (c *Checker) Sync(st store.State) {
	want := map[key]store.HealthCheck{}
	inUse := map[string]bool{}
	for _, l := range st.Listeners {
		inUse[l.TargetGroupARN] = true
	}
	for _, tg := range st.TargetGroups {
		if !inUse[tg.ARN] {
			continue
		}
		for _, t := range tg.Targets {
			if !t.Draining() {
				want[key{TG: tg.ARN, IP: t.IP, Port: t.Port}] = tg.HealthCheck
			}
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	changed := false
	for k, p := range c.probes {
		if hc, ok := want[k]; !ok || hc != p.hc {
			p.cancel()
			delete(c.probes, k)
			if !ok {
				delete(c.status, k)
				changed = true
			}
		}
	}
	for k, hc := range want {
		if _, ok := c.probes[k]; ok {
			continue
		}
		if _, ok := c.status[k]; !ok {
			c.status[k] = Status{State: Initial, Reason: "Elb.InitialHealthChecking", Detail: "Initial health checks in progress"}
			changed = true
		}
		ctx, cancel := context.WithCancel(context.Background())
		p := &probe{hc: hc, cancel: cancel, done: make(chan struct{})}
		c.probes[k] = p
		go c.run(ctx, k, p)
	}
	if changed {
		c.saveLocked()
	}
}

// Close stops every check.
func (c *Checker) Close() {
	c.mu.Lock()
	probes := c.probes
	c.probes = map[key]*probe{}
	c.mu.Unlock()
	for _, p := range probes {
		p.cancel()
		<-p.done
	}
}

// Status returns a target's health; ok is false if it is not checked.
func (c *Checker) Status(tgARN string, t store.Target) (Status, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s, ok := c.status[key{TG: tgARN, IP: t.IP, Port: t.Port}]
	return s, ok
}

// Healthy reports whether the target passed its health checks.
func (c *Checker) Healthy(tgARN string, t store.Target) bool {
	s, ok := c.Status(tgARN, t)
	return ok && s.State == Healthy
}

// TargetHealth implements store.TargetHealthSource.
func (c *Checker) TargetHealth(tg store.TargetGroupWithLBs, t store.Target) (string, string, string) {
	if s, r, d, ok := store.BaseState(tg, t); ok {
		return s, r, d
	}
	s, ok := c.Status(tg.ARN, t)
	if !ok {
		return Initial, "Elb.InitialHealthChecking", "Initial health checks in progress"
	}
	return s.State, s.Reason, s.Detail
}

func (c *Checker) run(ctx context.Context, k key, p *probe) {
	defer close(p.done)
	interval := time.Duration(p.hc.IntervalSeconds) * time.Second
	okRun, failRun := 0, 0
	for {
		err := c.check(ctx, k, p.hc)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			okRun, failRun = okRun+1, 0
		} else {
			okRun, failRun = 0, failRun+1
		}
		c.observe(k, p, okRun, failRun, err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(interval):
		}
	}
}

type codeMismatch struct{ code int }

func (e codeMismatch) Error() string {
	return fmt.Sprintf("health checks failed with these codes: [%d]", e.code)
}

func (c *Checker) check(ctx context.Context, k key, hc store.HealthCheck) error {
	port := strconv.Itoa(int(k.Port))
	if hc.Port != "traffic-port" {
		port = hc.Port
	}
	addr := net.JoinHostPort(k.IP, port)
	ctx, cancel := context.WithTimeout(ctx, time.Duration(hc.TimeoutSeconds)*time.Second)
	defer cancel()
	if hc.Protocol == "HTTP" {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+hc.Path, nil)
		if err != nil {
			return err
		}
		req.Header.Set("User-Agent", "ELB-HealthChecker/2.0")
		resp, err := c.client.Do(req)
		if err != nil {
			return err
		}
		_ = resp.Body.Close()
		if !matches(hc.Matcher, resp.StatusCode) {
			return codeMismatch{resp.StatusCode}
		}
		return nil
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	return conn.Close()
}

// matches reports whether code is in a matcher like "200", "200,202" or "200-399".
func matches(matcher string, code int) bool {
	if matcher == "" {
		matcher = "200-399"
	}
	for _, part := range strings.Split(matcher, ",") {
		lo, hi, isRange := strings.Cut(strings.TrimSpace(part), "-")
		l, err := strconv.Atoi(lo)
		if err != nil {
			continue
		}
		h := l
		if isRange {
			if h, err = strconv.Atoi(hi); err != nil {
				continue
			}
		}
		if code >= l && code <= h {
			return true
		}
	}
	return false
}

func (c *Checker) observe(k key, p *probe, okRun, failRun int, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.probes[k] != p {
		return // stopped or replaced meanwhile
	}
	cur := c.status[k]
	next := cur
	switch {
	case err == nil && okRun >= int(p.hc.HealthyThreshold):
		next = Status{State: Healthy}
	case err != nil && failRun >= int(p.hc.UnhealthyThreshold):
		next = Status{State: Unhealthy, Reason: "Target.FailedHealthChecks", Detail: "Health checks failed"}
		var cm codeMismatch
		var ne net.Error
		switch {
		case errors.As(err, &cm):
			next.Reason, next.Detail = "Target.ResponseCodeMismatch", cm.Error()
		case errors.As(err, &ne) && ne.Timeout(), errors.Is(err, context.DeadlineExceeded):
			next.Reason, next.Detail = "Target.Timeout", "Request timed out"
		}
	}
	if next == cur {
		return
	}
	c.status[k] = next
	c.cfg.Log.Info("target health changed", zap.String("targetGroup", k.TG),
		zap.String("target", net.JoinHostPort(k.IP, strconv.Itoa(int(k.Port)))),
		zap.String("from", cur.State), zap.String("to", next.State), zap.String("reason", next.Reason))
	c.saveLocked()
	select {
	case c.changes <- struct{}{}:
	default:
	}
}

func (c *Checker) saveLocked() {
	if c.cfg.StatePath == "" {
		return
	}
	out := make(map[string]Status, len(c.status))
	for k, s := range c.status {
		out[k.String()] = s
	}
	b, _ := json.Marshal(out)
	if err := store.WriteFileAtomic(c.cfg.StatePath, b); err != nil {
		c.cfg.Log.Error("save health state", zap.String("path", c.cfg.StatePath), zap.Error(err))
	}
}

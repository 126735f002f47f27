package store

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

type clock struct{ now time.Time }

func (c *clock) Now() time.Time { return c.now }

func open(t *testing.T, dir string, c *clock) *Store {
	t.Helper()
	s, err := Open(Config{Dir: dir, Region: "r1", LBCIDR: netip.MustParsePrefix("198.51.100.0/30"), Now: c.Now, MaxTargetsPerCall: 3})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func code(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	if err != nil {
		return "other: " + err.Error()
	}
	return ""
}

func TestLoadBalancerLifecycleAndPersistence(t *testing.T) {
	dir := t.TempDir()
	c := &clock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	s := open(t, dir, c)

	a, err := s.CreateLoadBalancer("a", "", map[string]string{"k": "v"})
	if err != nil {
		t.Fatal(err)
	}
	again, err := s.CreateLoadBalancer("a", "internet-facing", nil)
	if err != nil || again.ARN != a.ARN {
		t.Errorf("same name and settings: %v %v; want the same load balancer", again.ARN, err)
	}
	if _, err := s.CreateLoadBalancer("a", "internal", nil); code(err) != "DuplicateLoadBalancerName" {
		t.Errorf("same name, other scheme: %v", err)
	}
	b, err := s.CreateLoadBalancer("b", "internal", nil)
	if err != nil {
		t.Fatal(err)
	}
	// A /30 has two usable addresses.
	if got := []string{a.Address, b.Address}; !cmp.Equal(got, []string{"198.51.100.1", "198.51.100.2"}) {
		t.Errorf("addresses %v", got)
	}
	if _, err := s.CreateLoadBalancer("c", "", nil); code(err) != "TooManyLoadBalancers" {
		t.Errorf("third load balancer in a /30: %v", err)
	}

	tg, err := s.CreateTargetGroup("tg", "TCP", 80, "vpc", DefaultHealthCheck(), nil)
	if err != nil {
		t.Fatal(err)
	}
	l, err := s.CreateListener(a.ARN, "TCP", 80, tg.ARN, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateListener(b.ARN, "TCP", 80, tg.ARN, nil); code(err) != "TargetGroupAssociationLimit" {
		t.Errorf("target group on a second load balancer: %v", err)
	}
	if _, err := s.CreateListener(a.ARN, "UDP", 80, tg.ARN, nil); code(err) != "ValidationError" {
		t.Errorf("UDP listener to a TCP group: %v", err)
	}
	if err := s.RegisterTargets(tg.ARN, []Target{{IP: "10.0.0.1"}, {IP: "10.0.0.2", Port: 81}}); err != nil {
		t.Fatal(err)
	}

	// Reopen: everything is there.
	s2 := open(t, dir, c)
	if diff := cmp.Diff(s.Snapshot(), s2.Snapshot()); diff != "" {
		t.Errorf("state after reopen (-before +after):\n%s", diff)
	}
	if err := s2.DeleteTargetGroup(tg.ARN); code(err) != "ResourceInUse" {
		t.Errorf("delete target group in use: %v", err)
	}
	if err := s2.DeleteLoadBalancer(a.ARN); err != nil {
		t.Fatal(err)
	}
	if _, err := s2.DescribeListeners("", []string{l.ARN}); code(err) != "ListenerNotFound" {
		t.Errorf("listener after its load balancer was deleted: %v", err)
	}
	if err := s2.DeleteLoadBalancer(a.ARN); err != nil {
		t.Errorf("deleting a deleted load balancer: %v, want nil", err)
	}
	if err := s2.DeleteTargetGroup(tg.ARN); err != nil {
		t.Fatal(err)
	}
}

func TestTargetsAndDraining(t *testing.T) {
	c := &clock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	s := open(t, "", c)
	tg, err := s.CreateTargetGroup("tg", "TCP", 80, "", DefaultHealthCheck(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.ModifyTargetGroupAttributes(tg.ARN, map[string]string{AttrDeregistrationDelay: "10"}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		targets []Target
		code    string
	}{
		{"too many in one call", []Target{{IP: "10.0.0.1"}, {IP: "10.0.0.2"}, {IP: "10.0.0.3"}, {IP: "10.0.0.4"}}, "ValidationError"},
		{"not an address", []Target{{IP: "i-123"}}, "InvalidTarget"},
		{"bad port", []Target{{IP: "10.0.0.1", Port: 70000}}, "InvalidTarget"},
		{"none", nil, "ValidationError"},
		{"ok", []Target{{IP: "10.0.0.1"}, {IP: "10.0.0.2"}}, ""},
		{"again is a no-op", []Target{{IP: "10.0.0.1"}}, ""},
	} {
		if got := code(s.RegisterTargets(tg.ARN, tc.targets)); got != tc.code {
			t.Errorf("%s: code %q, want %q", tc.name, got, tc.code)
		}
	}
	if err := s.DeregisterTargets(tg.ARN, []Target{{IP: "10.0.0.1"}, {IP: "10.9.9.9"}}); err != nil {
		t.Fatal(err)
	}
	got, _ := s.GetTargetGroup(tg.ARN)
	want := []Target{{IP: "10.0.0.1", Port: 80, DrainUntil: c.now.Add(10 * time.Second)}, {IP: "10.0.0.2", Port: 80}}
	if diff := cmp.Diff(want, got.Targets); diff != "" {
		t.Errorf("after deregister (-want +got):\n%s", diff)
	}
	c.now = c.now.Add(9 * time.Second)
	next, _ := s.ExpireDrains()
	if !next.Equal(want[0].DrainUntil) {
		t.Errorf("next expiry %v, want %v", next, want[0].DrainUntil)
	}
	c.now = c.now.Add(time.Second)
	if next, _ := s.ExpireDrains(); !next.IsZero() {
		t.Errorf("next expiry %v after the last drain ended", next)
	}
	got, _ = s.GetTargetGroup(tg.ARN)
	if diff := cmp.Diff([]Target{{IP: "10.0.0.2", Port: 80}}, got.Targets); diff != "" {
		t.Errorf("after the delay (-want +got):\n%s", diff)
	}
	// Re-registering a draining target makes it active again.
	_ = s.DeregisterTargets(tg.ARN, []Target{{IP: "10.0.0.2"}})
	_ = s.RegisterTargets(tg.ARN, []Target{{IP: "10.0.0.2"}})
	got, _ = s.GetTargetGroup(tg.ARN)
	if len(got.Targets) != 1 || got.Targets[0].Draining() {
		t.Errorf("re-registered target: %+v", got.Targets)
	}
}

func TestValidation(t *testing.T) {
	s := open(t, "", &clock{now: time.Now()})
	hc := DefaultHealthCheck()
	httpHC := hc
	httpHC.Protocol, httpHC.Path = "HTTP", "/healthz"
	for _, tc := range []struct {
		name string
		err  error
		code string
	}{
		{"lb name with a dot", func() error { _, err := s.CreateLoadBalancer("a.b", "", nil); return err }(), "ValidationError"},
		{"lb name too long", func() error { _, err := s.CreateLoadBalancer("a23456789012345678901234567890123", "", nil); return err }(), "ValidationError"},
		{"bad scheme", func() error { _, err := s.CreateLoadBalancer("x", "public", nil); return err }(), "InvalidScheme"},
		{"tg protocol HTTP", func() error { _, err := s.CreateTargetGroup("x", "HTTP", 80, "", hc, nil); return err }(), "ValidationError"},
		{"tg port 0", func() error { _, err := s.CreateTargetGroup("x", "TCP", 0, "", hc, nil); return err }(), "ValidationError"},
		{"http check without path", func() error {
			h := hc
			h.Protocol = "HTTP"
			_, err := s.CreateTargetGroup("x", "TCP", 80, "", h, nil)
			return err
		}(), "ValidationError"},
		{"http check ok", func() error { _, err := s.CreateTargetGroup("x", "TCP", 80, "", httpHC, nil); return err }(), ""},
		{"timeout over interval", func() error {
			h := hc
			h.TimeoutSeconds = h.IntervalSeconds + 1
			_, err := s.CreateTargetGroup("y", "TCP", 80, "", h, nil)
			return err
		}(), "ValidationError"},
		{"unknown attribute", func() error {
			_, err := s.ModifyTargetGroupAttributes("arn:x", map[string]string{"foo": "1"})
			return err
		}(), "ValidationError"},
		{"describe tags of 21", func() error { _, err := s.DescribeTags(make([]string, 21)); return err }(), "ValidationError"},
		{"tags of a missing group", func() error {
			return s.AddTags([]string{"arn:aws:elasticloadbalancing:r1:0:targetgroup/x/1"}, map[string]string{"a": "b"})
		}(), "TargetGroupNotFound"},
	} {
		if got := code(tc.err); got != tc.code {
			t.Errorf("%s: code %q (%v), want %q", tc.name, got, tc.err, tc.code)
		}
	}
}

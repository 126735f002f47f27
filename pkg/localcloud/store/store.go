package store

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Config configures a Store.
type Config struct {
	// Dir is where state.json lives. Empty keeps state in memory only.
	Dir string
	// Region and AccountID go into ARNs.
	Region    string
	AccountID string
	// LBCIDR is where load balancer addresses come from.
	LBCIDR netip.Prefix
	// MaxTargetsPerCall bounds RegisterTargets/DeregisterTargets requests.
	MaxTargetsPerCall int
	// MaxTargetsPerGroup bounds a target group's size.
	MaxTargetsPerGroup int
	// Now is the clock; time.Now if nil.
	Now func() time.Time
}

const stateFile = "state.json"

// Store is the state, safe for concurrent use.
type Store struct {
	cfg  Config
	mu   sync.Mutex
	st   State
	subs []chan struct{}
}

// Open loads the state from cfg.Dir (or starts empty).
func Open(cfg Config) (*Store, error) {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.MaxTargetsPerCall == 0 {
		cfg.MaxTargetsPerCall = 200
	}
	if cfg.MaxTargetsPerGroup == 0 {
		cfg.MaxTargetsPerGroup = 1000
	}
	if cfg.AccountID == "" {
		cfg.AccountID = "000000000000"
	}
	s := &Store{cfg: cfg, st: State{
		LoadBalancers: map[string]*LoadBalancer{},
		Listeners:     map[string]*Listener{},
		TargetGroups:  map[string]*TargetGroup{},
	}}
	if cfg.Dir == "" {
		return s, nil
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("create state dir: %w", err)
	}
	b, err := os.ReadFile(filepath.Join(cfg.Dir, stateFile))
	if errors.Is(err, os.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read state: %w", err)
	}
	if err := json.Unmarshal(b, &s.st); err != nil {
		return nil, fmt.Errorf("decode state %s: %w", filepath.Join(cfg.Dir, stateFile), err)
	}
	if s.st.LoadBalancers == nil {
		s.st.LoadBalancers = map[string]*LoadBalancer{}
	}
	if s.st.Listeners == nil {
		s.st.Listeners = map[string]*Listener{}
	}
	if s.st.TargetGroups == nil {
		s.st.TargetGroups = map[string]*TargetGroup{}
	}
	return s, nil
}

// WriteFileAtomic writes data to path through a synced temporary file and
// a rename, so a reader sees the old or the new content, never a mix.
func WriteFileAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	if _, err := f.Write(data); err != nil {
		_ = f.Close()
		_ = os.Remove(tmp)
		return err
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		_ = os.Remove(tmp)
		return err
	}
	if err := f.Close(); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return nil
}

// commit persists the state and tells subscribers. Called with mu held.
func (s *Store) commit() error {
	for _, c := range s.subs {
		select {
		case c <- struct{}{}:
		default:
		}
	}
	if s.cfg.Dir == "" {
		return nil
	}
	b, err := json.Marshal(&s.st)
	if err != nil {
		return fmt.Errorf("encode state: %w", err)
	}
	if err := WriteFileAtomic(filepath.Join(s.cfg.Dir, stateFile), b); err != nil {
		return &Error{Code: "InternalFailure", Status: 500, Message: fmt.Sprintf("persist state: %v", err)}
	}
	return nil
}

// Subscribe returns a channel that receives a value after every change.
// Changes coalesce: one value may stand for several.
func (s *Store) Subscribe() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := make(chan struct{}, 1)
	s.subs = append(s.subs, c)
	return c
}

// Snapshot returns a deep copy of the state.
func (s *Store) Snapshot() State {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, _ := json.Marshal(&s.st)
	var out State
	_ = json.Unmarshal(b, &out)
	return out
}

func (s *Store) newID() string {
	s.st.Seq++
	var r [4]byte
	_, _ = rand.Read(r[:])
	return fmt.Sprintf("%08x%s", s.st.Seq, hex.EncodeToString(r[:]))
}

func (s *Store) arn(resource string) string {
	return fmt.Sprintf("arn:aws:elasticloadbalancing:%s:%s:%s", s.cfg.Region, s.cfg.AccountID, resource)
}

func copyTags(t map[string]string) map[string]string {
	if len(t) == 0 {
		return nil
	}
	out := make(map[string]string, len(t))
	for k, v := range t {
		out[k] = v
	}
	return out
}

func validName(name string) bool {
	if len(name) < 1 || len(name) > 32 || name[0] == '-' || name[len(name)-1] == '-' {
		return false
	}
	for _, c := range name {
		if (c < 'a' || c > 'z') && (c < 'A' || c > 'Z') && (c < '0' || c > '9') && c != '-' {
			return false
		}
	}
	return true
}

func (s *Store) allocAddress() (string, error) {
	used := map[string]bool{}
	for _, lb := range s.st.LoadBalancers {
		used[lb.Address] = true
	}
	p := s.cfg.LBCIDR.Masked()
	if !p.IsValid() {
		return "", nil
	}
	a := p.Addr().Next() // skip the network address
	for ; p.Contains(a); a = a.Next() {
		if !p.Contains(a.Next()) {
			break // the broadcast address
		}
		if !used[a.String()] {
			return a.String(), nil
		}
	}
	return "", errf("TooManyLoadBalancers", 400, fmt.Sprintf("no free address in %s", p))
}

// ---- load balancers ----

// CreateLoadBalancer creates a network load balancer, or returns the one
// with the same name and settings.
func (s *Store) CreateLoadBalancer(name, scheme string, tags map[string]string) (LoadBalancer, error) {
	if !validName(name) {
		return LoadBalancer{}, validation(fmt.Sprintf("load balancer name %q: 1-32 alphanumeric characters or hyphens, not starting or ending with a hyphen", name))
	}
	if scheme == "" {
		scheme = "internet-facing"
	}
	if scheme != "internet-facing" && scheme != "internal" {
		return LoadBalancer{}, errf("InvalidScheme", 400, fmt.Sprintf("scheme %q is not internet-facing or internal", scheme))
	}
	if err := checkTags(nil, tags); err != nil {
		return LoadBalancer{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, lb := range s.st.LoadBalancers {
		if lb.Name == name {
			if lb.Scheme == scheme {
				return *lb, nil
			}
			return LoadBalancer{}, errf("DuplicateLoadBalancerName", 400, fmt.Sprintf("a load balancer named %q already exists with other settings", name))
		}
	}
	addr, err := s.allocAddress()
	if err != nil {
		return LoadBalancer{}, err
	}
	id := s.newID()
	lb := &LoadBalancer{
		ARN:       s.arn("loadbalancer/net/" + name + "/" + id),
		Name:      name,
		Scheme:    scheme,
		DNSName:   fmt.Sprintf("%s-%s.elb.%s.localcloud", name, id[:8], s.cfg.Region),
		Address:   addr,
		VPCID:     "vpc-localcloud",
		State:     "active",
		CreatedAt: s.cfg.Now().UTC().Truncate(time.Millisecond),
		Tags:      copyTags(tags),
	}
	s.st.LoadBalancers[lb.ARN] = lb
	return *lb, s.commit()
}

// DescribeLoadBalancers returns the named load balancers, or all of them,
// in creation order.
func (s *Store) DescribeLoadBalancers(arns, names []string) ([]LoadBalancer, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []LoadBalancer
	switch {
	case len(arns) > 0:
		for _, a := range arns {
			lb, ok := s.st.LoadBalancers[a]
			if !ok {
				return nil, notFound("LoadBalancerNotFound", fmt.Sprintf("load balancer %q not found", a))
			}
			out = append(out, *lb)
		}
	case len(names) > 0:
		for _, n := range names {
			found := false
			for _, lb := range s.st.LoadBalancers {
				if lb.Name == n {
					out = append(out, *lb)
					found = true
				}
			}
			if !found {
				return nil, notFound("LoadBalancerNotFound", fmt.Sprintf("load balancer %q not found", n))
			}
		}
	default:
		for _, lb := range s.st.LoadBalancers {
			out = append(out, *lb)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ARN < out[j].ARN })
	return out, nil
}

// DeleteLoadBalancer deletes a load balancer and its listeners. Deleting
// one that does not exist succeeds, as on AWS.
func (s *Store) DeleteLoadBalancer(arn string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.st.LoadBalancers[arn]; !ok {
		return nil
	}
	delete(s.st.LoadBalancers, arn)
	for la, l := range s.st.Listeners {
		if l.LoadBalancerARN == arn {
			delete(s.st.Listeners, la)
		}
	}
	return s.commit()
}

// ---- listeners ----

func listenerCompatible(listener, tg string) bool { return listener == tg }

// CreateListener creates a listener forwarding to one target group, or
// returns the identical one that exists.
func (s *Store) CreateListener(lbARN, protocol string, port int32, tgARN string, tags map[string]string) (Listener, error) {
	if protocol != "TCP" && protocol != "UDP" && protocol != "TCP_UDP" {
		return Listener{}, validation(fmt.Sprintf("listener protocol %q: localcloud supports TCP, UDP and TCP_UDP", protocol))
	}
	if port < 1 || port > 65535 {
		return Listener{}, validation(fmt.Sprintf("listener port %d out of range 1-65535", port))
	}
	if err := checkTags(nil, tags); err != nil {
		return Listener{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	lb, ok := s.st.LoadBalancers[lbARN]
	if !ok {
		return Listener{}, notFound("LoadBalancerNotFound", fmt.Sprintf("load balancer %q not found", lbARN))
	}
	if err := s.checkForwardTarget(lb.ARN, protocol, tgARN); err != nil {
		return Listener{}, err
	}
	for _, l := range s.st.Listeners {
		if l.LoadBalancerARN == lbARN && l.Port == port {
			if l.Protocol == protocol && l.TargetGroupARN == tgARN {
				return *l, nil
			}
			return Listener{}, errf("DuplicateListener", 400, fmt.Sprintf("a listener on port %d already exists", port))
		}
	}
	l := &Listener{
		ARN:             s.arn(fmt.Sprintf("listener/net/%s/%s/%s", lb.Name, lbID(lb.ARN), s.newID())),
		LoadBalancerARN: lbARN,
		Protocol:        protocol,
		Port:            port,
		TargetGroupARN:  tgARN,
		Tags:            copyTags(tags),
	}
	s.st.Listeners[l.ARN] = l
	return *l, s.commit()
}

func lbID(arn string) string {
	for i := len(arn) - 1; i >= 0; i-- {
		if arn[i] == '/' {
			return arn[i+1:]
		}
	}
	return arn
}

// checkForwardTarget checks that a listener of lbARN may forward to tgARN.
func (s *Store) checkForwardTarget(lbARN, protocol, tgARN string) error {
	tg, ok := s.st.TargetGroups[tgARN]
	if !ok {
		return notFound("TargetGroupNotFound", fmt.Sprintf("target group %q not found", tgARN))
	}
	if !listenerCompatible(protocol, tg.Protocol) {
		return validation(fmt.Sprintf("listener protocol %s does not match target group protocol %s", protocol, tg.Protocol))
	}
	for _, l := range s.st.Listeners {
		if l.TargetGroupARN == tgARN && l.LoadBalancerARN != lbARN {
			return errf("TargetGroupAssociationLimit", 400, fmt.Sprintf("target group %q is already used by load balancer %q", tgARN, l.LoadBalancerARN))
		}
	}
	return nil
}

// DescribeListeners returns the given listeners, or those of a load balancer.
func (s *Store) DescribeListeners(lbARN string, arns []string) ([]Listener, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Listener
	if len(arns) > 0 {
		for _, a := range arns {
			l, ok := s.st.Listeners[a]
			if !ok {
				return nil, notFound("ListenerNotFound", fmt.Sprintf("listener %q not found", a))
			}
			out = append(out, *l)
		}
	} else {
		if lbARN == "" {
			return nil, validation("a load balancer ARN or listener ARNs must be specified")
		}
		if _, ok := s.st.LoadBalancers[lbARN]; !ok {
			return nil, notFound("LoadBalancerNotFound", fmt.Sprintf("load balancer %q not found", lbARN))
		}
		for _, l := range s.st.Listeners {
			if l.LoadBalancerARN == lbARN {
				out = append(out, *l)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ARN < out[j].ARN })
	return out, nil
}

// ModifyListener changes a listener's port, protocol (when not empty/zero)
// and target group (when not empty).
func (s *Store) ModifyListener(arn, protocol string, port int32, tgARN string) (Listener, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	l, ok := s.st.Listeners[arn]
	if !ok {
		return Listener{}, notFound("ListenerNotFound", fmt.Sprintf("listener %q not found", arn))
	}
	next := *l
	if protocol != "" {
		next.Protocol = protocol
	}
	if port != 0 {
		if port < 1 || port > 65535 {
			return Listener{}, validation(fmt.Sprintf("listener port %d out of range 1-65535", port))
		}
		for _, o := range s.st.Listeners {
			if o.ARN != arn && o.LoadBalancerARN == l.LoadBalancerARN && o.Port == port {
				return Listener{}, errf("DuplicateListener", 400, fmt.Sprintf("a listener on port %d already exists", port))
			}
		}
		next.Port = port
	}
	if tgARN != "" {
		next.TargetGroupARN = tgARN
	}
	if err := s.checkForwardTarget(l.LoadBalancerARN, next.Protocol, next.TargetGroupARN); err != nil {
		return Listener{}, err
	}
	*l = next
	return *l, s.commit()
}

// DeleteListener deletes a listener.
func (s *Store) DeleteListener(arn string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.st.Listeners[arn]; !ok {
		return notFound("ListenerNotFound", fmt.Sprintf("listener %q not found", arn))
	}
	delete(s.st.Listeners, arn)
	return s.commit()
}

// ---- target groups ----

// DefaultHealthCheck is an NLB target group's default health check.
func DefaultHealthCheck() HealthCheck {
	return HealthCheck{
		Protocol:           "TCP",
		Port:               "traffic-port",
		IntervalSeconds:    30,
		TimeoutSeconds:     10,
		HealthyThreshold:   5,
		UnhealthyThreshold: 2,
	}
}

// ValidateHealthCheck checks hc the way localcloud accepts it.
func ValidateHealthCheck(hc HealthCheck) error {
	switch hc.Protocol {
	case "TCP":
		if hc.Path != "" {
			return validation("a health check path is only valid for HTTP health checks")
		}
	case "HTTP":
		if hc.Path == "" || hc.Path[0] != '/' {
			return validation(fmt.Sprintf("health check path %q must start with /", hc.Path))
		}
	default:
		return validation(fmt.Sprintf("health check protocol %q: localcloud supports TCP and HTTP", hc.Protocol))
	}
	if hc.Port != "traffic-port" {
		var p int
		if _, err := fmt.Sscanf(hc.Port, "%d", &p); err != nil || p < 1 || p > 65535 || fmt.Sprint(p) != hc.Port {
			return validation(fmt.Sprintf("health check port %q is not traffic-port or 1-65535", hc.Port))
		}
	}
	if hc.IntervalSeconds < 1 || hc.IntervalSeconds > 300 {
		return validation(fmt.Sprintf("health check interval %d out of range 1-300", hc.IntervalSeconds))
	}
	if hc.TimeoutSeconds < 1 || hc.TimeoutSeconds > 120 {
		return validation(fmt.Sprintf("health check timeout %d out of range 1-120", hc.TimeoutSeconds))
	}
	if hc.TimeoutSeconds > hc.IntervalSeconds {
		return validation(fmt.Sprintf("health check timeout %d must not exceed the interval %d", hc.TimeoutSeconds, hc.IntervalSeconds))
	}
	if hc.HealthyThreshold < 2 || hc.HealthyThreshold > 10 || hc.UnhealthyThreshold < 2 || hc.UnhealthyThreshold > 10 {
		return validation("health check thresholds must be in 2-10")
	}
	return nil
}

// CreateTargetGroup creates a target group of type ip, or returns the one
// with the same name and settings.
func (s *Store) CreateTargetGroup(name, protocol string, port int32, vpcID string, hc HealthCheck, tags map[string]string) (TargetGroup, error) {
	if !validName(name) {
		return TargetGroup{}, validation(fmt.Sprintf("target group name %q: 1-32 alphanumeric characters or hyphens, not starting or ending with a hyphen", name))
	}
	if protocol != "TCP" && protocol != "UDP" && protocol != "TCP_UDP" {
		return TargetGroup{}, validation(fmt.Sprintf("target group protocol %q: localcloud supports TCP, UDP and TCP_UDP", protocol))
	}
	if port < 1 || port > 65535 {
		return TargetGroup{}, validation(fmt.Sprintf("target group port %d out of range 1-65535", port))
	}
	if err := ValidateHealthCheck(hc); err != nil {
		return TargetGroup{}, err
	}
	if err := checkTags(nil, tags); err != nil {
		return TargetGroup{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, tg := range s.st.TargetGroups {
		if tg.Name == name {
			if tg.Protocol == protocol && tg.Port == port && tg.HealthCheck == hc {
				return *tg, nil
			}
			return TargetGroup{}, errf("DuplicateTargetGroupName", 400, fmt.Sprintf("a target group named %q already exists with other settings", name))
		}
	}
	tg := &TargetGroup{
		ARN:         s.arn("targetgroup/" + name + "/" + s.newID()),
		Name:        name,
		Protocol:    protocol,
		Port:        port,
		VPCID:       vpcID,
		HealthCheck: hc,
		Attributes:  DefaultAttributes(),
		Tags:        copyTags(tags),
	}
	s.st.TargetGroups[tg.ARN] = tg
	return cloneTG(tg), s.commit()
}

func cloneTG(tg *TargetGroup) TargetGroup {
	out := *tg
	out.Targets = append([]Target(nil), tg.Targets...)
	out.Attributes = copyTags(tg.Attributes)
	out.Tags = copyTags(tg.Tags)
	return out
}

// LoadBalancerARNs returns the load balancers that use tgARN through a listener.
func (st *State) LoadBalancerARNs(tgARN string) []string {
	seen := map[string]bool{}
	var out []string
	for _, l := range st.Listeners {
		if l.TargetGroupARN == tgARN && !seen[l.LoadBalancerARN] {
			seen[l.LoadBalancerARN] = true
			out = append(out, l.LoadBalancerARN)
		}
	}
	sort.Strings(out)
	return out
}

// TargetGroupWithLBs is a target group and the load balancers using it.
type TargetGroupWithLBs struct {
	TargetGroup
	LoadBalancerARNs []string
}

// DescribeTargetGroups returns the given target groups, those of a load
// balancer, or all of them.
func (s *Store) DescribeTargetGroups(lbARN string, arns, names []string) ([]TargetGroupWithLBs, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var tgs []*TargetGroup
	switch {
	case len(arns) > 0:
		for _, a := range arns {
			tg, ok := s.st.TargetGroups[a]
			if !ok {
				return nil, notFound("TargetGroupNotFound", fmt.Sprintf("target group %q not found", a))
			}
			tgs = append(tgs, tg)
		}
	case len(names) > 0:
		for _, n := range names {
			found := false
			for _, tg := range s.st.TargetGroups {
				if tg.Name == n {
					tgs = append(tgs, tg)
					found = true
				}
			}
			if !found {
				return nil, notFound("TargetGroupNotFound", fmt.Sprintf("target group %q not found", n))
			}
		}
	case lbARN != "":
		if _, ok := s.st.LoadBalancers[lbARN]; !ok {
			return nil, notFound("LoadBalancerNotFound", fmt.Sprintf("load balancer %q not found", lbARN))
		}
		for _, l := range s.st.Listeners {
			if l.LoadBalancerARN == lbARN {
				if tg, ok := s.st.TargetGroups[l.TargetGroupARN]; ok {
					tgs = append(tgs, tg)
				}
			}
		}
	default:
		for _, tg := range s.st.TargetGroups {
			tgs = append(tgs, tg)
		}
	}
	seen := map[string]bool{}
	var out []TargetGroupWithLBs
	for _, tg := range tgs {
		if seen[tg.ARN] {
			continue
		}
		seen[tg.ARN] = true
		out = append(out, TargetGroupWithLBs{TargetGroup: cloneTG(tg), LoadBalancerARNs: s.st.LoadBalancerARNs(tg.ARN)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ARN < out[j].ARN })
	return out, nil
}

// GetTargetGroup returns one target group.
func (s *Store) GetTargetGroup(arn string) (TargetGroupWithLBs, error) {
	tgs, err := s.DescribeTargetGroups("", []string{arn}, nil)
	if err != nil {
		return TargetGroupWithLBs{}, err
	}
	return tgs[0], nil
}

// ModifyTargetGroup applies update to the target group's health check.
func (s *Store) ModifyTargetGroup(arn string, update func(*HealthCheck)) (TargetGroup, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	tg, ok := s.st.TargetGroups[arn]
	if !ok {
		return TargetGroup{}, notFound("TargetGroupNotFound", fmt.Sprintf("target group %q not found", arn))
	}
	hc := tg.HealthCheck
	update(&hc)
	if hc.Protocol == "TCP" {
		hc.Path, hc.Matcher = "", ""
	} else if hc.Matcher == "" {
		hc.Matcher = "200-399"
	}
	if err := ValidateHealthCheck(hc); err != nil {
		return TargetGroup{}, err
	}
	tg.HealthCheck = hc
	return cloneTG(tg), s.commit()
}

// ModifyTargetGroupAttributes sets attributes and returns them all.
func (s *Store) ModifyTargetGroupAttributes(arn string, attrs map[string]string) (map[string]string, error) {
	for k, v := range attrs {
		switch k {
		case AttrDeregistrationDelay:
			var n int
			if _, err := fmt.Sscanf(v, "%d", &n); err != nil || n < 0 || n > 3600 || fmt.Sprint(n) != v {
				return nil, validation(fmt.Sprintf("%s %q must be 0-3600", k, v))
			}
		case AttrConnTermination, AttrPreserveClientIP, AttrProxyProtocolV2, AttrStickinessEnabled:
			if v != "true" && v != "false" {
				return nil, validation(fmt.Sprintf("%s %q must be true or false", k, v))
			}
		case AttrStickinessType:
			if v != "source_ip" {
				return nil, validation(fmt.Sprintf("%s %q must be source_ip", k, v))
			}
		default:
			return nil, validation(fmt.Sprintf("attribute %q is not supported", k))
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	tg, ok := s.st.TargetGroups[arn]
	if !ok {
		return nil, notFound("TargetGroupNotFound", fmt.Sprintf("target group %q not found", arn))
	}
	if tg.Attributes == nil {
		tg.Attributes = DefaultAttributes()
	}
	for k, v := range attrs {
		tg.Attributes[k] = v
	}
	return copyTags(tg.Attributes), s.commit()
}

// DescribeTargetGroupAttributes returns a target group's attributes.
func (s *Store) DescribeTargetGroupAttributes(arn string) (map[string]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	tg, ok := s.st.TargetGroups[arn]
	if !ok {
		return nil, notFound("TargetGroupNotFound", fmt.Sprintf("target group %q not found", arn))
	}
	return copyTags(tg.Attributes), nil
}

// DeleteTargetGroup deletes a target group that no listener uses. Deleting
// one that does not exist succeeds.
func (s *Store) DeleteTargetGroup(arn string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.st.TargetGroups[arn]; !ok {
		return nil
	}
	for _, l := range s.st.Listeners {
		if l.TargetGroupARN == arn {
			return errf("ResourceInUse", 400, fmt.Sprintf("target group %q is currently in use by a listener", arn))
		}
	}
	delete(s.st.TargetGroups, arn)
	return s.commit()
}

// ---- targets ----

func (s *Store) checkTargets(tg *TargetGroup, targets []Target) error {
	if len(targets) == 0 {
		return validation("at least one target must be specified")
	}
	if len(targets) > s.cfg.MaxTargetsPerCall {
		return validation(fmt.Sprintf("%d targets in one call; at most %d", len(targets), s.cfg.MaxTargetsPerCall))
	}
	for _, t := range targets {
		a, err := netip.ParseAddr(t.IP)
		if err != nil || !a.Is4() {
			return errf("InvalidTarget", 400, fmt.Sprintf("target %q is not an IPv4 address", t.IP))
		}
		if t.Port < 1 || t.Port > 65535 {
			return errf("InvalidTarget", 400, fmt.Sprintf("target %s port %d out of range", t.IP, t.Port))
		}
	}
	return nil
}

func withDefaultPort(tg *TargetGroup, targets []Target) []Target {
	out := make([]Target, len(targets))
	for i, t := range targets {
		if t.Port == 0 {
			t.Port = tg.Port
		}
		out[i] = Target{IP: t.IP, Port: t.Port}
	}
	return out
}

// RegisterTargets registers targets; a draining target becomes active again.
func (s *Store) RegisterTargets(arn string, targets []Target) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	tg, ok := s.st.TargetGroups[arn]
	if !ok {
		return notFound("TargetGroupNotFound", fmt.Sprintf("target group %q not found", arn))
	}
	targets = withDefaultPort(tg, targets)
	if err := s.checkTargets(tg, targets); err != nil {
		return err
	}
	idx := map[Target]int{}
	for i, t := range tg.Targets {
		idx[Target{IP: t.IP, Port: t.Port}] = i
	}
	var add []Target
	changed := false
	for _, t := range targets {
		if i, ok := idx[t]; ok {
			if tg.Targets[i].Draining() {
				tg.Targets[i].DrainUntil = time.Time{}
				changed = true
			}
			continue
		}
		idx[t] = -1
		add = append(add, t)
	}
	if len(tg.Targets)+len(add) > s.cfg.MaxTargetsPerGroup {
		return errf("TooManyTargets", 400, fmt.Sprintf("target group %q would have more than %d targets", arn, s.cfg.MaxTargetsPerGroup))
	}
	if len(add) == 0 && !changed {
		return nil
	}
	tg.Targets = append(tg.Targets, add...)
	return s.commit()
}

// DeregisterTargets starts draining targets for the group's deregistration
// delay; with a delay of 0 they go at once. Unknown targets are ignored.
func (s *Store) DeregisterTargets(arn string, targets []Target) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	tg, ok := s.st.TargetGroups[arn]
	if !ok {
		return notFound("TargetGroupNotFound", fmt.Sprintf("target group %q not found", arn))
	}
	targets = withDefaultPort(tg, targets)
	if err := s.checkTargets(tg, targets); err != nil {
		return err
	}
	delay, err := strconv.Atoi(tg.Attributes[AttrDeregistrationDelay])
	if err != nil {
		delay = 300
	}
	until := s.cfg.Now().Add(time.Duration(delay) * time.Second).UTC()
	drop := map[Target]bool{}
	for _, t := range targets {
		drop[t] = true
	}
	changed := false
	kept := tg.Targets[:0]
	for _, t := range tg.Targets {
		if drop[Target{IP: t.IP, Port: t.Port}] && !t.Draining() {
			changed = true
			if delay == 0 {
				continue
			}
			t.DrainUntil = until
		}
		kept = append(kept, t)
	}
	tg.Targets = kept
	if !changed {
		return nil
	}
	return s.commit()
}

// ExpireDrains removes targets whose deregistration delay has ended. It
// returns the time of the next expiry (zero if none).
func (s *Store) ExpireDrains() (time.Time, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.cfg.Now()
	var next time.Time
	changed := false
	for _, tg := range s.st.TargetGroups {
		kept := tg.Targets[:0]
		for _, t := range tg.Targets {
			if t.Draining() && !t.DrainUntil.After(now) {
				changed = true
				continue
			}
			if t.Draining() && (next.IsZero() || t.DrainUntil.Before(next)) {
				next = t.DrainUntil
			}
			kept = append(kept, t)
		}
		tg.Targets = kept
	}
	if !changed {
		return next, nil
	}
	return next, s.commit()
}

// ---- tags ----

const maxTags = 50

func checkTags(existing, add map[string]string) error {
	n := len(existing)
	for k, v := range add {
		if k == "" || len(k) > 128 || len(v) > 256 {
			return validation(fmt.Sprintf("tag %q: key must be 1-128 characters and value at most 256", k))
		}
		if _, ok := existing[k]; !ok {
			n++
		}
	}
	if n > maxTags {
		return errf("TooManyTags", 400, fmt.Sprintf("more than %d tags", maxTags))
	}
	return nil
}

func (s *Store) tagsOf(arn string) (*map[string]string, error) {
	if lb, ok := s.st.LoadBalancers[arn]; ok {
		return &lb.Tags, nil
	}
	if tg, ok := s.st.TargetGroups[arn]; ok {
		return &tg.Tags, nil
	}
	if l, ok := s.st.Listeners[arn]; ok {
		return &l.Tags, nil
	}
	return nil, notFound(notFoundCodeFor(arn), fmt.Sprintf("resource %q not found", arn))
}

func notFoundCodeFor(arn string) string {
	switch {
	case contains(arn, ":targetgroup/"):
		return "TargetGroupNotFound"
	case contains(arn, ":listener/"):
		return "ListenerNotFound"
	case contains(arn, ":loadbalancer/"):
		return "LoadBalancerNotFound"
	}
	return "ValidationError"
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }

// AddTags adds or overwrites tags on resources.
func (s *Store) AddTags(arns []string, tags map[string]string) error {
	if len(arns) == 0 || len(tags) == 0 {
		return validation("resource ARNs and tags must be specified")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var ptrs []*map[string]string
	for _, a := range arns {
		p, err := s.tagsOf(a)
		if err != nil {
			return err
		}
		if err := checkTags(*p, tags); err != nil {
			return err
		}
		ptrs = append(ptrs, p)
	}
	for _, p := range ptrs {
		if *p == nil {
			*p = map[string]string{}
		}
		for k, v := range tags {
			(*p)[k] = v
		}
	}
	return s.commit()
}

// RemoveTags removes tag keys from resources.
func (s *Store) RemoveTags(arns, keys []string) error {
	if len(arns) == 0 || len(keys) == 0 {
		return validation("resource ARNs and tag keys must be specified")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var ptrs []*map[string]string
	for _, a := range arns {
		p, err := s.tagsOf(a)
		if err != nil {
			return err
		}
		ptrs = append(ptrs, p)
	}
	for _, p := range ptrs {
		for _, k := range keys {
			delete(*p, k)
		}
	}
	return s.commit()
}

// DescribeTags returns the tags of up to 20 resources.
func (s *Store) DescribeTags(arns []string) ([]map[string]string, error) {
	if len(arns) == 0 || len(arns) > 20 {
		return nil, validation(fmt.Sprintf("%d resource ARNs; 1-20 are allowed", len(arns)))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []map[string]string
	for _, a := range arns {
		p, err := s.tagsOf(a)
		if err != nil {
			return nil, err
		}
		out = append(out, copyTags(*p))
	}
	return out, nil
}

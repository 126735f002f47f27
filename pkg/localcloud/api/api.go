// Package api serves the ELBv2 API over the AWS Query protocol: form-encoded
// Action=... requests, SigV4-checked, answered with the XML that
// aws-sdk-go-v2 and the AWS CLI parse, and AWS-shaped errors.
package api

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/xml"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/directlb/directlb/pkg/localcloud/faults"
	"github.com/directlb/directlb/pkg/localcloud/sigv4"
	"github.com/directlb/directlb/pkg/localcloud/store"
)

// Config configures the API handler.
type Config struct {
	Store       *store.Store
	Health      store.TargetHealthSource
	Faults      *faults.Injector
	Credentials sigv4.Credentials
	// MaxPageSize is the page size when a request gives none (AWS: 400).
	MaxPageSize int
	Log         *zap.Logger
	Registerer  prometheus.Registerer
	Now         func() time.Time
}

// Handler serves the API.
type Handler struct {
	cfg      Config
	calls    *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

// New returns the API handler.
func New(cfg Config) (*Handler, error) {
	if cfg.Health == nil {
		cfg.Health = store.StaticHealth{}
	}
	if cfg.Faults == nil {
		cfg.Faults = faults.New(faults.Spec{})
	}
	if cfg.MaxPageSize == 0 {
		cfg.MaxPageSize = 400
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	h := &Handler{
		cfg: cfg,
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "localcloud_api_requests_total",
			Help: "ELBv2 API requests by action and result code (OK or the error code).",
		}, []string{"action", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "localcloud_api_request_duration_seconds",
			Help:    "ELBv2 API request handling time, including injected latency.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 4, 8),
		}, []string{"action"}),
	}
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{h.calls, h.duration} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("register api metrics: %w", err)
			}
		}
	}
	return h, nil
}

// apiError is an error answered to the client.
type apiError struct {
	Code    string
	Message string
	Status  int
}

func (e *apiError) Error() string { return e.Code + ": " + e.Message }

func apiErr(code string, status int, msg string) *apiError {
	return &apiError{Code: code, Message: msg, Status: status}
}

func validationErr(msg string) *apiError { return apiErr("ValidationError", 400, msg) }

func newRequestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

type action func(ctx context.Context, p params) (any, error)

func (h *Handler) actions() map[string]action {
	return map[string]action{
		"CreateLoadBalancer":            h.createLoadBalancer,
		"DescribeLoadBalancers":         h.describeLoadBalancers,
		"DeleteLoadBalancer":            h.deleteLoadBalancer,
		"CreateListener":                h.createListener,
		"DescribeListeners":             h.describeListeners,
		"ModifyListener":                h.modifyListener,
		"DeleteListener":                h.deleteListener,
		"CreateTargetGroup":             h.createTargetGroup,
		"DescribeTargetGroups":          h.describeTargetGroups,
		"ModifyTargetGroup":             h.modifyTargetGroup,
		"ModifyTargetGroupAttributes":   h.modifyTargetGroupAttributes,
		"DescribeTargetGroupAttributes": h.describeTargetGroupAttributes,
		"DeleteTargetGroup":             h.deleteTargetGroup,
		"RegisterTargets":               h.registerTargets,
		"DeregisterTargets":             h.deregisterTargets,
		"DescribeTargetHealth":          h.describeTargetHealth,
		"AddTags":                       h.addTags,
		"RemoveTags":                    h.removeTags,
		"DescribeTags":                  h.describeTags,
	}
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	q := &request{h: h, w: w, id: newRequestID(), action: "Unknown", code: "OK"}
	defer func() {
		h.calls.WithLabelValues(q.action, q.code).Inc()
		h.duration.WithLabelValues(q.action).Observe(time.Since(start).Seconds())
	}()
	if r.Method != http.MethodPost && r.Method != http.MethodGet {
		q.action = "Invalid"
		q.fail(apiErr("InvalidAction", 400, "use POST with a form-encoded body"))
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 8<<20)
	act, p, ok := h.route(q, r)
	if !ok || !h.injectFault(q, r) {
		return
	}
	result, err := act(r.Context(), p)
	if err != nil {
		q.fail(err)
		return
	}
	if q.ec2 {
		writeEC2Result(w, q.action, result, q.id)
		return
	}
	writeResult(w, q.action, result, q.id)
}

// request is one API request as ServeHTTP answers it.
type request struct {
	h  *Handler
	w  http.ResponseWriter
	id string
	// action and code label the request's metrics.
	action, code string
	// ec2 says the request is for the EC2 API: its errors and results
	// take EC2's shape.
	ec2 bool
}

// fail answers with err as an AWS-shaped error and logs it.
func (q *request) fail(err error) {
	ae := toAPIError(err)
	q.code = ae.Code
	q.h.cfg.Log.Info("api error", zap.String("action", q.action), zap.String("code", ae.Code),
		zap.String("message", ae.Message), zap.String("requestId", q.id))
	if q.ec2 {
		writeEC2Error(q.w, ae, q.id)
		return
	}
	writeError(q.w, ae, q.id)
}

// route checks the signature, parses the form and finds the action and
// its API; when it fails it has answered, and ok is false.
func (h *Handler) route(q *request, r *http.Request) (act action, p params, ok bool) {
	// Verify reads the body and puts it back (or leaves it unread when it
	// refuses early), so the form can be parsed either way: it says which
	// API, and so which error shape, the request is for.
	authErr := sigv4.Verify(r, h.cfg.Credentials, h.cfg.Now())
	formErr := r.ParseForm()
	p = params(r.Form)
	name := p.str("Action")
	act, isELB := h.actions()[name]
	ec2Act, isEC2 := h.ec2Actions()[name]
	q.ec2 = isEC2 || (!isELB && p.str("Version") == EC2Version)
	if authErr != nil {
		q.fail(authError(authErr, q.ec2))
		return nil, nil, false
	}
	if formErr != nil {
		q.fail(apiErr("MalformedQueryString", 400, formErr.Error()))
		return nil, nil, false
	}
	wantVersion := "2015-12-01"
	switch {
	case isEC2:
		act, wantVersion = ec2Act, EC2Version
	case !isELB:
		q.fail(apiErr("InvalidAction", 400, fmt.Sprintf("action %q is not valid for this web service", name)))
		return nil, nil, false
	}
	q.action = name
	if v := p.str("Version"); v != "" && v != wantVersion {
		q.fail(apiErr("InvalidParameterValue", 400, fmt.Sprintf("version %q: localcloud speaks %s for %s", v, wantVersion, name)))
		return nil, nil, false
	}
	return act, p, true
}

// authError is the API error for a refused signature; EC2 calls an
// unknown key AuthFailure.
func authError(err error, ec2 bool) error {
	var se *sigv4.Error
	if !errors.As(err, &se) {
		return err
	}
	c := se.Code
	if ec2 && c == "InvalidClientTokenId" {
		c = "AuthFailure" // EC2's code for an unknown key
	}
	return apiErr(c, http.StatusForbidden, se.Message)
}

// injectFault applies the fault injector's decision for the request's
// action: a delay, then a throttle or server error. It returns whether the
// request goes on (false: it has been answered, or the client left).
func (h *Handler) injectFault(q *request, r *http.Request) bool {
	outcome, delay := h.cfg.Faults.Decide(q.action, time.Now())
	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-r.Context().Done():
			return false
		}
	}
	switch outcome {
	case faults.Throttled, faults.RateLimited:
		if q.ec2 {
			q.fail(apiErr("RequestLimitExceeded", 503, "Request limit exceeded."))
		} else {
			q.fail(apiErr("Throttling", 400, "Rate exceeded"))
		}
		return false
	case faults.ServerError:
		q.fail(apiErr("ServiceUnavailable", 503, "Service is unavailable (injected fault)"))
		return false
	}
	return true
}

func toAPIError(err error) *apiError {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae
	}
	var se *store.Error
	if errors.As(err, &se) {
		return &apiError{Code: se.Code, Message: se.Message, Status: se.Status}
	}
	return &apiError{Code: "InternalFailure", Message: err.Error(), Status: 500}
}

func writeError(w http.ResponseWriter, e *apiError, reqID string) {
	typ := "Sender"
	if e.Status >= 500 {
		typ = "Receiver"
	}
	body, _ := xml.Marshal(xError{Xmlns: Namespace, Type: typ, Code: e.Code, Message: e.Message, RequestID: reqID})
	w.Header().Set("Content-Type", "text/xml")
	w.Header().Set("X-Amzn-Requestid", reqID)
	w.WriteHeader(e.Status)
	_, _ = w.Write([]byte(xml.Header))
	_, _ = w.Write(body)
}

func writeResult(w http.ResponseWriter, action string, result any, reqID string) {
	var buf bytes.Buffer
	buf.WriteString(xml.Header)
	fmt.Fprintf(&buf, "<%sResponse xmlns=%q>", action, Namespace)
	enc := xml.NewEncoder(&buf)
	if err := enc.EncodeElement(result, xml.StartElement{Name: xml.Name{Local: action + "Result"}}); err != nil {
		writeError(w, &apiError{Code: "InternalFailure", Message: err.Error(), Status: 500}, reqID)
		return
	}
	fmt.Fprintf(&buf, "<ResponseMetadata><RequestId>%s</RequestId></ResponseMetadata></%sResponse>", reqID, action)
	w.Header().Set("Content-Type", "text/xml")
	w.Header().Set("X-Amzn-Requestid", reqID)
	_, _ = w.Write(buf.Bytes())
}

// ---- pagination ----

func (h *Handler) pageSize(p params) (int, error) {
	n, ok, err := p.int32("PageSize")
	if err != nil {
		return 0, err
	}
	if !ok {
		return h.cfg.MaxPageSize, nil
	}
	if n < 1 || n > 400 {
		return 0, validationErr(fmt.Sprintf("page size %d out of range 1-400", n))
	}
	return int(n), nil
}

// page returns the page of items (sorted by key) after marker, and the
// marker of the next page. Markers are the last key returned, encoded.
func page[T any](items []T, key func(T) string, marker string, size int) ([]T, string, error) {
	start := 0
	if marker != "" {
		b, err := base64.RawURLEncoding.DecodeString(marker)
		if err != nil {
			return nil, "", validationErr(fmt.Sprintf("invalid marker %q", marker))
		}
		last := string(b)
		for start < len(items) && key(items[start]) <= last {
			start++
		}
	}
	end := min(start+size, len(items))
	next := ""
	if end < len(items) {
		next = base64.RawURLEncoding.EncodeToString([]byte(key(items[end-1])))
	}
	return items[start:end], next, nil
}

// ---- load balancers ----

func (h *Handler) createLoadBalancer(_ context.Context, p params) (any, error) {
	if t := p.str("Type"); t != "" && t != "network" {
		return nil, validationErr(fmt.Sprintf("load balancer type %q: localcloud supports network", t))
	}
	tags, err := p.tags("Tags")
	if err != nil {
		return nil, err
	}
	lb, err := h.cfg.Store.CreateLoadBalancer(p.str("Name"), p.str("Scheme"), tags)
	if err != nil {
		return nil, err
	}
	return describeLoadBalancersResult{LoadBalancers: list([]xLoadBalancer{toXLB(lb)})}, nil
}

func (h *Handler) describeLoadBalancers(_ context.Context, p params) (any, error) {
	size, err := h.pageSize(p)
	if err != nil {
		return nil, err
	}
	lbs, err := h.cfg.Store.DescribeLoadBalancers(p.list("LoadBalancerArns"), p.list("Names"))
	if err != nil {
		return nil, err
	}
	pg, next, err := page(lbs, func(lb store.LoadBalancer) string { return lb.ARN }, p.str("Marker"), size)
	if err != nil {
		return nil, err
	}
	out := make([]xLoadBalancer, 0, len(pg))
	for _, lb := range pg {
		out = append(out, toXLB(lb))
	}
	return describeLoadBalancersResult{LoadBalancers: list(out), NextMarker: next}, nil
}

func (h *Handler) deleteLoadBalancer(_ context.Context, p params) (any, error) {
	arn := p.str("LoadBalancerArn")
	if arn == "" {
		return nil, validationErr("LoadBalancerArn is required")
	}
	return emptyResult{}, h.cfg.Store.DeleteLoadBalancer(arn)
}

// ---- listeners ----

func (h *Handler) createListener(_ context.Context, p params) (any, error) {
	port, ok, err := p.int32("Port")
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, validationErr("Port is required")
	}
	tg, ok, err := p.forwardTarget()
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, validationErr("DefaultActions is required")
	}
	tags, err := p.tags("Tags")
	if err != nil {
		return nil, err
	}
	l, err := h.cfg.Store.CreateListener(p.str("LoadBalancerArn"), p.str("Protocol"), port, tg, tags)
	if err != nil {
		return nil, err
	}
	return describeListenersResult{Listeners: list([]xListener{toXListener(l)})}, nil
}

func (h *Handler) describeListeners(_ context.Context, p params) (any, error) {
	size, err := h.pageSize(p)
	if err != nil {
		return nil, err
	}
	ls, err := h.cfg.Store.DescribeListeners(p.str("LoadBalancerArn"), p.list("ListenerArns"))
	if err != nil {
		return nil, err
	}
	pg, next, err := page(ls, func(l store.Listener) string { return l.ARN }, p.str("Marker"), size)
	if err != nil {
		return nil, err
	}
	out := make([]xListener, 0, len(pg))
	for _, l := range pg {
		out = append(out, toXListener(l))
	}
	return describeListenersResult{Listeners: list(out), NextMarker: next}, nil
}

func (h *Handler) modifyListener(_ context.Context, p params) (any, error) {
	port, _, err := p.int32("Port")
	if err != nil {
		return nil, err
	}
	tg, _, err := p.forwardTarget()
	if err != nil {
		return nil, err
	}
	l, err := h.cfg.Store.ModifyListener(p.str("ListenerArn"), p.str("Protocol"), port, tg)
	if err != nil {
		return nil, err
	}
	return describeListenersResult{Listeners: list([]xListener{toXListener(l)})}, nil
}

func (h *Handler) deleteListener(_ context.Context, p params) (any, error) {
	return emptyResult{}, h.cfg.Store.DeleteListener(p.str("ListenerArn"))
}

// ---- target groups ----

func (p params) healthCheckUpdate(hc *store.HealthCheck) error {
	if v := p.str("HealthCheckEnabled"); v == "false" {
		return validationErr("localcloud does not support disabling health checks on ip target groups")
	}
	if v := p.str("HealthCheckProtocol"); v != "" {
		hc.Protocol = v
	}
	if v := p.str("HealthCheckPort"); v != "" {
		hc.Port = v
	}
	if v := p.str("HealthCheckPath"); v != "" {
		hc.Path = v
	}
	if v := p.str("Matcher.HttpCode"); v != "" {
		hc.Matcher = v
	}
	for k, dst := range map[string]*int32{
		"HealthCheckIntervalSeconds": &hc.IntervalSeconds,
		"HealthCheckTimeoutSeconds":  &hc.TimeoutSeconds,
		"HealthyThresholdCount":      &hc.HealthyThreshold,
		"UnhealthyThresholdCount":    &hc.UnhealthyThreshold,
	} {
		n, ok, err := p.int32(k)
		if err != nil {
			return err
		}
		if ok {
			*dst = n
		}
	}
	return nil
}

func (h *Handler) createTargetGroup(_ context.Context, p params) (any, error) {
	if t := p.str("TargetType"); t != "ip" {
		return nil, validationErr(fmt.Sprintf("target type %q: localcloud supports ip", t))
	}
	port, ok, err := p.int32("Port")
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, validationErr("Port is required")
	}
	hc := store.DefaultHealthCheck()
	if err := p.healthCheckUpdate(&hc); err != nil {
		return nil, err
	}
	if hc.Protocol == "HTTP" {
		if hc.Path == "" {
			hc.Path = "/"
		}
		if hc.Matcher == "" {
			hc.Matcher = "200-399"
		}
		if p.str("HealthCheckTimeoutSeconds") == "" {
			hc.TimeoutSeconds = min(6, hc.IntervalSeconds)
		}
	}
	if p.str("HealthCheckTimeoutSeconds") == "" && hc.TimeoutSeconds > hc.IntervalSeconds {
		hc.TimeoutSeconds = hc.IntervalSeconds
	}
	tags, err := p.tags("Tags")
	if err != nil {
		return nil, err
	}
	tg, err := h.cfg.Store.CreateTargetGroup(p.str("Name"), p.str("Protocol"), port, p.str("VpcId"), hc, tags)
	if err != nil {
		return nil, err
	}
	return describeTargetGroupsResult{TargetGroups: list([]xTargetGroup{toXTG(store.TargetGroupWithLBs{TargetGroup: tg})})}, nil
}

func (h *Handler) describeTargetGroups(_ context.Context, p params) (any, error) {
	size, err := h.pageSize(p)
	if err != nil {
		return nil, err
	}
	tgs, err := h.cfg.Store.DescribeTargetGroups(p.str("LoadBalancerArn"), p.list("TargetGroupArns"), p.list("Names"))
	if err != nil {
		return nil, err
	}
	pg, next, err := page(tgs, func(tg store.TargetGroupWithLBs) string { return tg.ARN }, p.str("Marker"), size)
	if err != nil {
		return nil, err
	}
	out := make([]xTargetGroup, 0, len(pg))
	for _, tg := range pg {
		out = append(out, toXTG(tg))
	}
	return describeTargetGroupsResult{TargetGroups: list(out), NextMarker: next}, nil
}

func (h *Handler) modifyTargetGroup(_ context.Context, p params) (any, error) {
	var perr error
	tg, err := h.cfg.Store.ModifyTargetGroup(p.str("TargetGroupArn"), func(hc *store.HealthCheck) {
		perr = p.healthCheckUpdate(hc)
	})
	if perr != nil {
		return nil, perr
	}
	if err != nil {
		return nil, err
	}
	full, err := h.cfg.Store.GetTargetGroup(tg.ARN)
	if err != nil {
		return nil, err
	}
	return describeTargetGroupsResult{TargetGroups: list([]xTargetGroup{toXTG(full)})}, nil
}

func (h *Handler) modifyTargetGroupAttributes(_ context.Context, p params) (any, error) {
	attrs := p.attributes("Attributes")
	if len(attrs) == 0 {
		return nil, validationErr("Attributes is required")
	}
	all, err := h.cfg.Store.ModifyTargetGroupAttributes(p.str("TargetGroupArn"), attrs)
	if err != nil {
		return nil, err
	}
	return attributesResult{Attributes: toXAttributes(all)}, nil
}

func (h *Handler) describeTargetGroupAttributes(_ context.Context, p params) (any, error) {
	all, err := h.cfg.Store.DescribeTargetGroupAttributes(p.str("TargetGroupArn"))
	if err != nil {
		return nil, err
	}
	return attributesResult{Attributes: toXAttributes(all)}, nil
}

func (h *Handler) deleteTargetGroup(_ context.Context, p params) (any, error) {
	arn := p.str("TargetGroupArn")
	if arn == "" {
		return nil, validationErr("TargetGroupArn is required")
	}
	return emptyResult{}, h.cfg.Store.DeleteTargetGroup(arn)
}

// ---- targets ----

func (h *Handler) registerTargets(_ context.Context, p params) (any, error) {
	ts, err := p.targets("Targets")
	if err != nil {
		return nil, err
	}
	return emptyResult{}, h.cfg.Store.RegisterTargets(p.str("TargetGroupArn"), ts)
}

func (h *Handler) deregisterTargets(_ context.Context, p params) (any, error) {
	ts, err := p.targets("Targets")
	if err != nil {
		return nil, err
	}
	return emptyResult{}, h.cfg.Store.DeregisterTargets(p.str("TargetGroupArn"), ts)
}

func (h *Handler) describeTargetHealth(_ context.Context, p params) (any, error) {
	tg, err := h.cfg.Store.GetTargetGroup(p.str("TargetGroupArn"))
	if err != nil {
		return nil, err
	}
	want, err := p.targets("Targets")
	if err != nil {
		return nil, err
	}
	registered := map[store.Target]store.Target{}
	for _, t := range tg.Targets {
		registered[store.Target{IP: t.IP, Port: t.Port}] = t
	}
	var out []xTargetHealthDescription
	describe := func(t store.Target) {
		state, reason, desc := h.cfg.Health.TargetHealth(tg, t)
		out = append(out, xTargetHealthDescription{
			Target:          xTarget{Id: t.IP, Port: t.Port, AvailabilityZone: zone},
			HealthCheckPort: healthCheckPort(tg.TargetGroup, t),
			TargetHealth:    xTargetHealth{State: state, Reason: reason, Description: desc},
		})
	}
	if len(want) == 0 {
		for _, t := range tg.Targets {
			describe(t)
		}
	} else {
		for _, w := range want {
			if w.Port == 0 {
				w.Port = tg.Port
			}
			if t, ok := registered[w]; ok {
				describe(t)
				continue
			}
			out = append(out, xTargetHealthDescription{
				Target:          xTarget{Id: w.IP, Port: w.Port},
				HealthCheckPort: healthCheckPort(tg.TargetGroup, w),
				TargetHealth:    xTargetHealth{State: "unused", Reason: "Target.NotRegistered", Description: "Target is not registered to the target group"},
			})
		}
	}
	return describeTargetHealthResult{TargetHealthDescriptions: list(out)}, nil
}

// ---- tags ----

func (h *Handler) addTags(_ context.Context, p params) (any, error) {
	tags, err := p.tags("Tags")
	if err != nil {
		return nil, err
	}
	return emptyResult{}, h.cfg.Store.AddTags(p.list("ResourceArns"), tags)
}

func (h *Handler) removeTags(_ context.Context, p params) (any, error) {
	return emptyResult{}, h.cfg.Store.RemoveTags(p.list("ResourceArns"), p.list("TagKeys"))
}

func (h *Handler) describeTags(_ context.Context, p params) (any, error) {
	arns := p.list("ResourceArns")
	all, err := h.cfg.Store.DescribeTags(arns)
	if err != nil {
		return nil, err
	}
	out := make([]xTagDescription, 0, len(arns))
	for i, a := range arns {
		out = append(out, xTagDescription{ResourceArn: a, Tags: toXTags(all[i])})
	}
	return describeTagsResult{TagDescriptions: list(out)}, nil
}

// Actions lists the supported action names.
func (h *Handler) Actions() []string {
	var out []string
	for a := range h.actions() {
		out = append(out, a)
	}
	for a := range h.ec2Actions() {
		out = append(out, a)
	}
	return out
}

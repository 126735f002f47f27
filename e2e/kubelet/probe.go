package kubelet

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// ProbeSettings are a probe's timing with the kubelet's defaults applied.
type ProbeSettings struct {
	InitialDelay     time.Duration
	Period           time.Duration
	Timeout          time.Duration
	SuccessThreshold int
	FailureThreshold int
}

// SettingsOf applies the API defaults (period 10 s, timeout 1 s, success 1,
// failure 3) to a probe.
func SettingsOf(p *v1.Probe) ProbeSettings {
	s := ProbeSettings{
		InitialDelay:     time.Duration(p.InitialDelaySeconds) * time.Second,
		Period:           10 * time.Second,
		Timeout:          time.Second,
		SuccessThreshold: 1,
		FailureThreshold: 3,
	}
	if p.PeriodSeconds > 0 {
		s.Period = time.Duration(p.PeriodSeconds) * time.Second
	}
	if p.TimeoutSeconds > 0 {
		s.Timeout = time.Duration(p.TimeoutSeconds) * time.Second
	}
	if p.SuccessThreshold > 0 {
		s.SuccessThreshold = int(p.SuccessThreshold)
	}
	if p.FailureThreshold > 0 {
		s.FailureThreshold = int(p.FailureThreshold)
	}
	return s
}

// ReadinessState is a readiness probe's result as the kubelet keeps it: not
// ready at first; it turns ready after SuccessThreshold consecutive
// successes and not ready after FailureThreshold consecutive failures.
type ReadinessState struct {
	Ready     bool
	successes int
	failures  int
}

// Observe records one probe result and reports whether Ready changed.
func (r *ReadinessState) Observe(ok bool, s ProbeSettings) bool {
	if ok {
		r.failures = 0
		r.successes++
		if !r.Ready && r.successes >= s.SuccessThreshold {
			r.Ready = true
			return true
		}
		return false
	}
	r.successes = 0
	r.failures++
	if r.Ready && r.failures >= s.FailureThreshold {
		r.Ready = false
		return true
	}
	return false
}

// Dialer dials from a network namespace (the node's, for probes).
type Dialer func(ctx context.Context, network, address string) (net.Conn, error)

// Prober runs one probe action against a pod.
type Prober struct {
	Dial Dialer
	// Exec runs an exec probe's command in the container's context and
	// returns its exit code.
	Exec func(ctx context.Context, cmd []string) (int, error)
}

// Probe runs the probe's action once; a nil error is success.
func (p *Prober) Probe(ctx context.Context, probe *v1.Probe, podIP string, container *v1.Container) error {
	ctx, cancel := context.WithTimeout(ctx, SettingsOf(probe).Timeout)
	defer cancel()
	switch {
	case probe.HTTPGet != nil:
		return p.httpGet(ctx, probe.HTTPGet, podIP, container)
	case probe.TCPSocket != nil:
		port, err := resolvePort(probe.TCPSocket.Port, container)
		if err != nil {
			return err
		}
		host := probe.TCPSocket.Host
		if host == "" {
			host = podIP
		}
		c, err := p.Dial(ctx, "tcp", net.JoinHostPort(host, strconv.Itoa(port)))
		if err != nil {
			return fmt.Errorf("tcp probe: %w", err)
		}
		return c.Close()
	case probe.Exec != nil:
		if p.Exec == nil {
			return fmt.Errorf("exec probes are not supported here")
		}
		code, err := p.Exec(ctx, probe.Exec.Command)
		if err != nil {
			return fmt.Errorf("exec probe: %w", err)
		}
		if code != 0 {
			return fmt.Errorf("exec probe: exit code %d", code)
		}
		return nil
	default:
		return fmt.Errorf("probe has no supported action (httpGet, tcpSocket, exec)")
	}
}

// HTTPGet performs an httpGet action (probe or preStop hook) from the
// dialer's namespace; 200-399 is success.
func (p *Prober) httpGet(ctx context.Context, h *v1.HTTPGetAction, podIP string, container *v1.Container) error {
	port, err := resolvePort(h.Port, container)
	if err != nil {
		return err
	}
	host := h.Host
	if host == "" {
		host = podIP
	}
	scheme := "http"
	if h.Scheme == v1.URISchemeHTTPS {
		scheme = "https"
	}
	u := url.URL{Scheme: scheme, Host: net.JoinHostPort(host, strconv.Itoa(port)), Path: h.Path}
	if u.Path == "" {
		u.Path = "/"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return err
	}
	req.Header.Set("User-Agent", "kube-probe/1.36")
	for _, hd := range h.HTTPHeaders {
		if hd.Name == "Host" {
			req.Host = hd.Value
			continue
		}
		req.Header.Add(hd.Name, hd.Value)
	}
	tr := &http.Transport{
		DialContext:       p.Dial,
		DisableKeepAlives: true,
		TLSClientConfig:   &tls.Config{InsecureSkipVerify: true}, // as the kubelet: probes do not verify
	}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return fmt.Errorf("http probe: %w", err)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 10<<10))
	_ = resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode >= 400 {
		return fmt.Errorf("http probe: status %d", resp.StatusCode)
	}
	return nil
}

// resolvePort resolves a numeric or named port against the container.
func resolvePort(p intstr.IntOrString, c *v1.Container) (int, error) {
	if p.Type == intstr.Int {
		if p.IntVal <= 0 || p.IntVal > 65535 {
			return 0, fmt.Errorf("port %d out of range", p.IntVal)
		}
		return int(p.IntVal), nil
	}
	if c != nil {
		for _, cp := range c.Ports {
			if cp.Name == p.StrVal {
				return int(cp.ContainerPort), nil
			}
		}
	}
	if n, err := strconv.Atoi(p.StrVal); err == nil && n > 0 && n <= 65535 {
		return n, nil
	}
	return 0, fmt.Errorf("port %q not found in container", p.StrVal)
}

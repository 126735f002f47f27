// Package echo is the test bed's echo server, the program of the
// example.com/echo image (e2e/cmd/dlb-echo) the e2e tests' pods run.
//
// On every TCP port it serves HTTP:
//
//	GET /                         the pod name and a newline (after the configured delay)
//	GET /healthz                  the configured health status, 200 by default (after the delay)
//	GET /control/health?status=N  make /healthz answer N from now on (e.g. 500 to fail a readiness probe)
//	GET /control/delay?ms=N       delay / and /healthz by N milliseconds from now on
//
// On every UDP port it answers each datagram with the pod name, a newline and
// the datagram's payload.
//
// When its context ends (SIGTERM in the command), it closes its listeners at
// once, as a naive application would, lets in-flight requests finish (a
// keep-alive connection gets its in-flight answer, then is closed) and returns.
package echo

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spf13/pflag"
	"go.uber.org/zap"
)

// Environment variables the echo server reads as defaults for its flags, so a
// pod spec can start a pod unhealthy or slow.
const (
	EnvPodName      = "POD_NAME"
	EnvTCPPorts     = "ECHO_TCP_PORTS"
	EnvUDPPorts     = "ECHO_UDP_PORTS"
	EnvHealthStatus = "ECHO_HEALTH_STATUS"
	EnvDelayMS      = "ECHO_DELAY_MS"
)

// Config is the echo server's configuration.
type Config struct {
	// PodName is what / answers and what prefixes UDP replies.
	PodName string
	// TCPPorts get an HTTP server each; UDPPorts a UDP echo each.
	TCPPorts []int
	UDPPorts []int
	// HealthStatus is the initial status of /healthz.
	HealthStatus int
	// Delay is the initial delay of / and /healthz.
	Delay time.Duration
	// ListenHost is the address to listen on; empty means every address.
	ListenHost string
	// ShutdownTimeout bounds how long in-flight requests may take after the
	// context ends.
	ShutdownTimeout time.Duration
}

// DefaultConfig returns the configuration with defaults taken from the
// environment (POD_NAME, ECHO_TCP_PORTS, ECHO_UDP_PORTS, ECHO_HEALTH_STATUS,
// ECHO_DELAY_MS).
func DefaultConfig() Config {
	c := Config{HealthStatus: http.StatusOK, ShutdownTimeout: time.Minute}
	c.PodName = os.Getenv(EnvPodName)
	if c.PodName == "" {
		c.PodName, _ = os.Hostname()
	}
	c.TCPPorts, _ = parsePorts(os.Getenv(EnvTCPPorts))
	c.UDPPorts, _ = parsePorts(os.Getenv(EnvUDPPorts))
	if v, err := strconv.Atoi(os.Getenv(EnvHealthStatus)); err == nil {
		c.HealthStatus = v
	}
	if v, err := strconv.Atoi(os.Getenv(EnvDelayMS)); err == nil {
		c.Delay = time.Duration(v) * time.Millisecond
	}
	return c
}

func parsePorts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' }) {
		p, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("parse port %q: %w", f, err)
		}
		out = append(out, p)
	}
	return out, nil
}

// BindFlags binds the configuration to flags; the current values are the
// defaults.
func (c *Config) BindFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.PodName, "pod-name", c.PodName, "pod name that / answers and UDP replies start with (env "+EnvPodName+")")
	fs.IntSliceVar(&c.TCPPorts, "tcp", c.TCPPorts, "TCP ports to serve HTTP on (env "+EnvTCPPorts+")")
	fs.IntSliceVar(&c.UDPPorts, "udp", c.UDPPorts, "UDP ports to echo on (env "+EnvUDPPorts+")")
	fs.IntVar(&c.HealthStatus, "health-status", c.HealthStatus, "initial status code of /healthz (env "+EnvHealthStatus+")")
	fs.DurationVar(&c.Delay, "delay", c.Delay, "initial delay of / and /healthz (env "+EnvDelayMS+" in milliseconds)")
	fs.StringVar(&c.ListenHost, "listen-host", c.ListenHost, "address to listen on (default: all)")
	fs.DurationVar(&c.ShutdownTimeout, "shutdown-timeout", c.ShutdownTimeout, "how long in-flight requests may take after SIGTERM")
}

// Validate checks the configuration.
func (c *Config) Validate() error {
	if c.PodName == "" {
		return errors.New("pod name is empty")
	}
	for _, p := range append(append([]int{}, c.TCPPorts...), c.UDPPorts...) {
		if p < 0 || p > 65535 { // 0: an ephemeral port
			return fmt.Errorf("port %d out of range", p)
		}
	}
	if c.HealthStatus < 100 || c.HealthStatus > 999 {
		return fmt.Errorf("health status %d out of range", c.HealthStatus)
	}
	if c.Delay < 0 {
		return fmt.Errorf("delay %s is negative", c.Delay)
	}
	return nil
}

// Server is a running echo server.
type Server struct {
	cfg    Config
	log    *zap.Logger
	health atomic.Int64
	delay  atomic.Int64 // nanoseconds

	tcp []net.Listener
	udp []net.PacketConn
}

// Listen opens every listener; nothing is served until Serve.
func Listen(cfg Config, log *zap.Logger) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: log}
	s.health.Store(int64(cfg.HealthStatus))
	s.delay.Store(int64(cfg.Delay))
	for _, p := range cfg.TCPPorts {
		l, err := net.Listen("tcp", net.JoinHostPort(cfg.ListenHost, strconv.Itoa(p)))
		if err != nil {
			s.closeAll()
			return nil, fmt.Errorf("listen tcp %d: %w", p, err)
		}
		s.tcp = append(s.tcp, l)
	}
	for _, p := range cfg.UDPPorts {
		c, err := net.ListenPacket("udp", net.JoinHostPort(cfg.ListenHost, strconv.Itoa(p)))
		if err != nil {
			s.closeAll()
			return nil, fmt.Errorf("listen udp %d: %w", p, err)
		}
		s.udp = append(s.udp, c)
	}
	return s, nil
}

// TCPAddrs returns the addresses of the TCP listeners (useful with port 0).
func (s *Server) TCPAddrs() []net.Addr {
	var out []net.Addr
	for _, l := range s.tcp {
		out = append(out, l.Addr())
	}
	return out
}

// UDPAddrs returns the addresses of the UDP sockets.
func (s *Server) UDPAddrs() []net.Addr {
	var out []net.Addr
	for _, c := range s.udp {
		out = append(out, c.LocalAddr())
	}
	return out
}

func (s *Server) closeAll() {
	for _, l := range s.tcp {
		_ = l.Close()
	}
	for _, c := range s.udp {
		_ = c.Close()
	}
}

// Handler is the HTTP handler every TCP port serves.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		if !s.wait(r.Context()) {
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintf(w, "%s\n", s.cfg.PodName)
	})
	// /client answers the address the connection came from, as the pod
	// sees it: tests use it to show that nothing rewrote the source.
	mux.HandleFunc("/client", func(w http.ResponseWriter, r *http.Request) {
		host, _, err := net.SplitHostPort(r.RemoteAddr)
		if err != nil {
			host = r.RemoteAddr
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintf(w, "%s\n", host)
	})
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		if !s.wait(r.Context()) {
			return
		}
		code := int(s.health.Load())
		w.WriteHeader(code)
		fmt.Fprintf(w, "%d\n", code)
	})
	mux.HandleFunc("/control/health", func(w http.ResponseWriter, r *http.Request) {
		code, err := strconv.Atoi(r.URL.Query().Get("status"))
		if err != nil || code < 100 || code > 999 {
			http.Error(w, "status must be an HTTP status code", http.StatusBadRequest)
			return
		}
		s.health.Store(int64(code))
		s.log.Info("health status changed", zap.Int("status", code))
		fmt.Fprintf(w, "health %d\n", code)
	})
	mux.HandleFunc("/control/delay", func(w http.ResponseWriter, r *http.Request) {
		ms, err := strconv.Atoi(r.URL.Query().Get("ms"))
		if err != nil || ms < 0 {
			http.Error(w, "ms must be a non-negative integer", http.StatusBadRequest)
			return
		}
		s.delay.Store(int64(time.Duration(ms) * time.Millisecond))
		s.log.Info("delay changed", zap.Int("ms", ms))
		fmt.Fprintf(w, "delay %dms\n", ms)
	})
	return mux
}

// wait sleeps the configured delay; false if the request went away first.
func (s *Server) wait(ctx context.Context) bool {
	d := time.Duration(s.delay.Load())
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// Serve serves until ctx ends, then closes the listeners at once, waits for
// in-flight HTTP requests (at most ShutdownTimeout) and returns.
func (s *Server) Serve(ctx context.Context) error {
	srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 30 * time.Second}
	errc := make(chan error, len(s.tcp))
	for _, l := range s.tcp {
		go func() {
			if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("serve %s: %w", l.Addr(), err)
			}
		}()
	}
	var wg sync.WaitGroup
	for _, c := range s.udp {
		wg.Go(func() { s.serveUDP(c) })
	}
	s.log.Info("echo serving", zap.String("pod", s.cfg.PodName), zap.Ints("tcp", s.cfg.TCPPorts), zap.Ints("udp", s.cfg.UDPPorts))

	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
	}
	s.log.Info("echo shutting down: listeners closed, finishing in-flight requests")
	for _, c := range s.udp {
		_ = c.Close()
	}
	sctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
	defer cancel()
	// Shutdown closes the listeners first, then waits for active
	// connections to finish their request and closes them.
	if err := srv.Shutdown(sctx); err != nil && serveErr == nil {
		serveErr = fmt.Errorf("shutdown: %w", err)
	}
	wg.Wait()
	return serveErr
}

func (s *Server) serveUDP(c net.PacketConn) {
	buf := make([]byte, 65535)
	prefix := []byte(s.cfg.PodName + "\n")
	for {
		n, addr, err := c.ReadFrom(buf)
		if err != nil {
			return
		}
		reply := append(append([]byte{}, prefix...), buf[:n]...)
		if _, err := c.WriteTo(reply, addr); err != nil {
			s.log.Debug("udp reply", zap.Error(err))
		}
	}
}

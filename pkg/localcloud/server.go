package localcloud

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/directlb/directlb/pkg/localcloud/api"
	"github.com/directlb/directlb/pkg/localcloud/datapath"
	"github.com/directlb/directlb/pkg/localcloud/faults"
	"github.com/directlb/directlb/pkg/localcloud/health"
	"github.com/directlb/directlb/pkg/localcloud/sigv4"
	"github.com/directlb/directlb/pkg/localcloud/store"
)

// Server is a running localcloud.
type Server struct {
	cfg     Config
	log     *zap.Logger
	store   *store.Store
	faults  *faults.Injector
	checker *health.Checker
	dp      *datapath.Datapath
	reg     *prometheus.Registry

	apiLn, adminLn net.Listener
	servers        []*http.Server
	cancel         context.CancelFunc
	wg             sync.WaitGroup
}

// New opens the state and builds the server; Start makes it serve.
func New(cfg Config, log *zap.Logger) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	spec, _ := cfg.FaultSpec()
	st, err := store.Open(store.Config{
		Dir:    cfg.StateDir,
		Region: cfg.Region,
		LBCIDR: netip.MustParsePrefix(cfg.LBCIDR),
	})
	if err != nil {
		return nil, fmt.Errorf("open state: %w", err)
	}
	if cfg.NetworkInterfacesFile != "" {
		if err := seedNetworkInterfaces(st, cfg.NetworkInterfacesFile); err != nil {
			return nil, err
		}
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	s := &Server{cfg: cfg, log: log, store: st, faults: faults.New(spec), reg: reg}
	return s, nil
}

// Store returns the state (tests and benchmarks read it).
func (s *Server) Store() *store.Store { return s.store }

// Faults returns the fault injector.
func (s *Server) Faults() *faults.Injector { return s.faults }

// Addr is the API's address once started.
func (s *Server) Addr() string { return s.apiLn.Addr().String() }

// AdminAddr is the admin endpoint's address (the API's when shared).
func (s *Server) AdminAddr() string {
	if s.adminLn != nil {
		return s.adminLn.Addr().String()
	}
	return s.Addr()
}

// Start starts health checks, the datapath and the HTTP servers.
func (s *Server) Start(ctx context.Context) error {
	ctx, s.cancel = context.WithCancel(ctx)
	var healthSrc store.TargetHealthSource = store.StaticHealth{}
	if s.cfg.Datapath {
		var statePath string
		if s.cfg.StateDir != "" {
			statePath = s.cfg.StateDir + "/health.json"
		}
		s.checker = health.New(health.Config{Log: s.log.Named("health"), StatePath: statePath})
		healthSrc = s.checker
		dp, err := datapath.New(datapath.Config{
			Interface:      s.cfg.DatapathInterface,
			LBCIDR:         netip.MustParsePrefix(s.cfg.LBCIDR).Masked(),
			Selection:      s.cfg.TargetSelection,
			Fallback:       s.cfg.ConnectFallback,
			UDPIdleTimeout: s.cfg.UDPIdleTimeout,
			Health:         s.checker,
			Log:            s.log.Named("datapath"),
			Registerer:     s.reg,
		})
		if err != nil {
			s.cancel()
			return fmt.Errorf("start datapath: %w", err)
		}
		s.dp = dp
	}
	h, err := api.New(api.Config{
		Store:       s.store,
		Health:      healthSrc,
		Faults:      s.faults,
		Credentials: sigv4.Credentials{AccessKeyID: s.cfg.AccessKeyID, SecretAccessKey: s.cfg.SecretAccessKey},
		MaxPageSize: s.cfg.MaxPageSize,
		Log:         s.log.Named("api"),
		Registerer:  s.reg,
	})
	if err != nil {
		s.cancel()
		return err
	}
	s.apiLn, err = net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		s.cancel()
		return fmt.Errorf("listen %s: %w", s.cfg.Listen, err)
	}
	admin := s.adminMux()
	apiMux := http.NewServeMux()
	apiMux.Handle("/", h)
	if s.cfg.AdminListen == "" {
		apiMux.Handle("/admin/", admin)
		apiMux.Handle("/metrics", admin)
	} else {
		s.adminLn, err = net.Listen("tcp", s.cfg.AdminListen)
		if err != nil {
			_ = s.apiLn.Close()
			s.cancel()
			return fmt.Errorf("listen %s: %w", s.cfg.AdminListen, err)
		}
		s.serve(s.adminLn, admin)
	}
	s.serve(s.apiLn, apiMux)

	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.reconcileLoop(ctx)
	}()
	s.log.Info("localcloud serving", zap.String("api", s.Addr()), zap.String("admin", s.AdminAddr()),
		zap.Bool("datapath", s.cfg.Datapath), zap.String("stateDir", s.cfg.StateDir))
	return nil
}

func (s *Server) serve(ln net.Listener, h http.Handler) {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	s.servers = append(s.servers, srv)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("http server stopped", zap.String("addr", ln.Addr().String()), zap.Error(err))
		}
	}()
}

// reconcileLoop ends deregistration delays and, with the datapath on,
// keeps health checks and the datapath in line with the state.
func (s *Server) reconcileLoop(ctx context.Context) {
	changes := s.store.Subscribe()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		next, err := s.store.ExpireDrains()
		if err != nil {
			s.log.Error("expire draining targets", zap.Error(err))
			next = time.Now().Add(time.Second)
		}
		var healthChanges <-chan struct{}
		if s.dp != nil {
			snap := s.store.Snapshot()
			s.checker.Sync(snap)
			if err := s.dp.Sync(snap); err != nil {
				s.log.Error("datapath sync", zap.Error(err))
				if next.IsZero() || time.Until(next) > time.Second {
					next = time.Now().Add(time.Second)
				}
			}
			healthChanges = s.checker.Changes()
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		var tc <-chan time.Time
		if !next.IsZero() {
			timer.Reset(max(time.Until(next), 0))
			tc = timer.C
		}
		select {
		case <-ctx.Done():
			return
		case <-changes:
		case <-healthChanges:
		case <-tc:
		}
	}
}

// Close stops serving. Load balancer addresses stay on the interface so a
// restart finds them; listeners and health checks stop.
func (s *Server) Close() error {
	if s.cancel != nil {
		s.cancel()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	for _, srv := range s.servers {
		_ = srv.Shutdown(ctx)
	}
	s.wg.Wait()
	if s.checker != nil {
		s.checker.Close()
	}
	if s.dp != nil {
		s.dp.Close()
	}
	return nil
}

// Run starts the server and serves until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	if err := s.Start(ctx); err != nil {
		return err
	}
	<-ctx.Done()
	return s.Close()
}

// ---- admin ----

// AdminTarget is a target as the admin endpoint shows it.
type AdminTarget struct {
	IP                string    `json:"ip"`
	Port              int32     `json:"port"`
	State             string    `json:"state"`
	Reason            string    `json:"reason,omitempty"`
	DrainUntil        time.Time `json:"drainUntil,omitzero"`
	ActiveConnections int64     `json:"activeConnections"`
}

// AdminTargetGroup is a target group as the admin endpoint shows it.
type AdminTargetGroup struct {
	store.TargetGroup
	Targets          []AdminTarget `json:"targets"`
	LoadBalancerARNs []string      `json:"loadBalancerArns"`
}

// AdminState is GET /admin/state.
type AdminState struct {
	LoadBalancers []store.LoadBalancer              `json:"loadBalancers"`
	Listeners     []store.Listener                  `json:"listeners"`
	TargetGroups  []AdminTargetGroup                `json:"targetGroups"`
	APICalls      map[string]map[string]int64       `json:"apiCalls"`
	Datapath      map[string]datapath.ListenerStats `json:"datapath,omitempty"`
	// NetworkInterfaces are the ENIs (EC2) with their assigned addresses.
	NetworkInterfaces []store.NetworkInterface `json:"networkInterfaces"`
}

func (s *Server) adminState() AdminState {
	snap := s.store.Snapshot()
	var health store.TargetHealthSource = store.StaticHealth{}
	if s.checker != nil {
		health = s.checker
	}
	out := AdminState{APICalls: s.faults.Counts(), NetworkInterfaces: s.networkInterfaces(snap)}
	for _, lb := range snap.LoadBalancers {
		out.LoadBalancers = append(out.LoadBalancers, *lb)
	}
	sort.Slice(out.LoadBalancers, func(i, j int) bool { return out.LoadBalancers[i].ARN < out.LoadBalancers[j].ARN })
	for _, l := range snap.Listeners {
		out.Listeners = append(out.Listeners, *l)
	}
	sort.Slice(out.Listeners, func(i, j int) bool { return out.Listeners[i].ARN < out.Listeners[j].ARN })
	var conns map[string]int64
	if s.dp != nil {
		out.Datapath = s.dp.Stats()
		conns = s.dp.ActiveByTarget()
	}
	for _, tg := range snap.TargetGroups {
		withLBs := store.TargetGroupWithLBs{TargetGroup: *tg, LoadBalancerARNs: snap.LoadBalancerARNs(tg.ARN)}
		atg := AdminTargetGroup{TargetGroup: *tg, LoadBalancerARNs: withLBs.LoadBalancerARNs, Targets: []AdminTarget{}}
		for _, t := range tg.Targets {
			state, reason, _ := health.TargetHealth(withLBs, t)
			atg.Targets = append(atg.Targets, AdminTarget{
				IP: t.IP, Port: t.Port, State: state, Reason: reason, DrainUntil: t.DrainUntil,
				ActiveConnections: conns[datapath.TargetKey(tg.ARN, t.IP, t.Port)],
			})
		}
		out.TargetGroups = append(out.TargetGroups, atg)
	}
	sort.Slice(out.TargetGroups, func(i, j int) bool { return out.TargetGroups[i].ARN < out.TargetGroups[j].ARN })
	return out
}

func (s *Server) adminMux() http.Handler {
	mux := http.NewServeMux()
	writeJSON := func(w http.ResponseWriter, v any) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(v)
	}
	mux.HandleFunc("GET /admin/state", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, s.adminState())
	})
	mux.HandleFunc("GET /admin/faults", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, s.faults.Spec())
	})
	mux.HandleFunc("PUT /admin/faults", func(w http.ResponseWriter, r *http.Request) {
		var spec faults.Spec
		b, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if err == nil {
			err = json.Unmarshal(b, &spec)
		}
		if err == nil {
			err = spec.Validate()
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		s.faults.Set(spec)
		s.log.Info("faults replaced", zap.Int("rules", len(spec.Rules)), zap.Int("limits", len(spec.Limits)))
		writeJSON(w, spec)
	})
	mux.HandleFunc("GET /admin/network-interfaces", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, s.networkInterfaces(s.store.Snapshot()))
	})
	mux.HandleFunc("PUT /admin/network-interfaces/{id}", func(w http.ResponseWriter, r *http.Request) {
		var ni store.NetworkInterface
		b, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if err == nil {
			err = json.Unmarshal(b, &ni)
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if ni.ID == "" {
			ni.ID = r.PathValue("id")
		}
		if ni.ID != r.PathValue("id") {
			http.Error(w, fmt.Sprintf("id %q in the body is not %q of the path", ni.ID, r.PathValue("id")), http.StatusBadRequest)
			return
		}
		out, err := s.store.PutNetworkInterface(ni)
		if err != nil {
			writeStoreError(w, err)
			return
		}
		s.log.Info("network interface put", zap.String("networkInterface", out.ID), zap.String("instance", out.InstanceID),
			zap.Int32("deviceIndex", out.DeviceIndex))
		writeJSON(w, out)
	})
	mux.HandleFunc("DELETE /admin/network-interfaces/{id}", func(w http.ResponseWriter, r *http.Request) {
		if err := s.store.DeleteNetworkInterface(r.PathValue("id")); err != nil {
			writeStoreError(w, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{}))
	return mux
}

func (s *Server) networkInterfaces(snap store.State) []store.NetworkInterface {
	out := []store.NetworkInterface{}
	for _, ni := range snap.NetworkInterfaces {
		out = append(out, *ni)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

func writeStoreError(w http.ResponseWriter, err error) {
	status := http.StatusInternalServerError
	var se *store.Error
	if errors.As(err, &se) {
		status = se.Status
	}
	http.Error(w, err.Error(), status)
}

// seedNetworkInterfaces creates or updates the ENIs listed in path (a JSON
// array of store.NetworkInterface).
func seedNetworkInterfaces(st *store.Store, path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read network interfaces: %w", err)
	}
	var enis []store.NetworkInterface
	if err := json.Unmarshal(b, &enis); err != nil {
		return fmt.Errorf("decode network interfaces %s: %w", path, err)
	}
	for _, ni := range enis {
		if _, err := st.PutNetworkInterface(ni); err != nil {
			return fmt.Errorf("seed network interface %s: %w", ni.ID, err)
		}
	}
	return nil
}

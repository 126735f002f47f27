package proxy

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the agent's sync metrics. Names follow kube-proxy's where the
// meaning is the same, so dashboards built for kube-proxy keep working.
type Metrics struct {
	SyncDuration                prometheus.Histogram
	NetworkProgrammingDuration  prometheus.Histogram
	LastSyncTimestamp           prometheus.Gauge
	EndpointChangesTotal        prometheus.Counter
	EndpointChangesPending      prometheus.Gauge
	ServiceChangesTotal         prometheus.Counter
	ServiceChangesPending       prometheus.Gauge
	SyncFailuresTotal           prometheus.Counter
	MapWritesTotal              prometheus.Counter
	ProgrammedServices          prometheus.Gauge
	ServicesNotProgrammed       prometheus.Gauge
	ServiceProgramFailuresTotal prometheus.Counter
	UDPSocketsDestroyedTotal    prometheus.Counter
	SocketDestroyFailuresTotal  prometheus.Counter
	// Health check node ports (ServiceHealthServer).
	HealthCheckNodePorts           prometheus.Gauge
	HealthCheckNodePortsFailed     prometheus.Gauge
	HealthCheckListenFailuresTotal prometheus.Counter
}

// NewMetrics creates the metrics and registers them with reg (if not nil).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		SyncDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Subsystem: "kubeproxy", Name: "sync_proxy_rules_duration_seconds",
			Help:    "SyncProxyRules latency in seconds: one batch of changes written to the BPF maps.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 18),
		}),
		NetworkProgrammingDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Subsystem: "kubeproxy", Name: "network_programming_duration_seconds",
			Help: "In-cluster network programming latency in seconds: from an EndpointSlice's last-change-trigger-time to programmed.",
			Buckets: append(prometheus.LinearBuckets(0.001, 0.001, 9),
				prometheus.ExponentialBuckets(0.01, 2, 14)...),
		}),
		LastSyncTimestamp: prometheus.NewGauge(prometheus.GaugeOpts{
			Subsystem: "kubeproxy", Name: "sync_proxy_rules_last_timestamp_seconds",
			Help: "The last time the datapath was successfully programmed.",
		}),
		EndpointChangesTotal: prometheus.NewCounter(prometheus.CounterOpts{
			Subsystem: "kubeproxy", Name: "sync_proxy_rules_endpoint_changes_total",
			Help: "Cumulative EndpointSlice changes seen.",
		}),
		EndpointChangesPending: prometheus.NewGauge(prometheus.GaugeOpts{
			Subsystem: "kubeproxy", Name: "sync_proxy_rules_endpoint_changes_pending",
			Help: "EndpointSlice changes not yet programmed.",
		}),
		ServiceChangesTotal: prometheus.NewCounter(prometheus.CounterOpts{
			Subsystem: "kubeproxy", Name: "sync_proxy_rules_service_changes_total",
			Help: "Cumulative Service changes seen.",
		}),
		ServiceChangesPending: prometheus.NewGauge(prometheus.GaugeOpts{
			Subsystem: "kubeproxy", Name: "sync_proxy_rules_service_changes_pending",
			Help: "Service changes not yet programmed.",
		}),
		SyncFailuresTotal: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "directlb", Subsystem: "node_agent", Name: "sync_failures_total",
			Help: "Syncs that failed to write the BPF maps (each is retried with a full sync).",
		}),
		MapWritesTotal: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "directlb", Subsystem: "node_agent", Name: "bpf_map_writes_total",
			Help: "BPF map entries written or deleted.",
		}),
		ProgrammedServices: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "directlb", Subsystem: "node_agent", Name: "programmed_frontends",
			Help: "ClusterIP frontends (IP, port, protocol) programmed in the datapath.",
		}),
		ServicesNotProgrammed: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "directlb", Subsystem: "node_agent", Name: "services_not_programmed",
			Help: "Services whose last write to the BPF maps failed (a full map, say); they keep their earlier state, are logged by name and retried.",
		}),
		ServiceProgramFailuresTotal: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "directlb", Subsystem: "node_agent", Name: "service_program_failures_total",
			Help: "Writes of one Service to the BPF maps that failed after its batch failed.",
		}),
		UDPSocketsDestroyedTotal: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "directlb", Subsystem: "node_agent", Name: "udp_sockets_destroyed_total",
			Help: "Connected UDP sockets destroyed because the backend they were translated to left its Service.",
		}),
		SocketDestroyFailuresTotal: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "directlb", Subsystem: "node_agent", Name: "socket_destroy_failures_total",
			Help: "Runs of the UDP socket iterator (after a sync that removed backends) that failed in at least one network namespace.",
		}),
		HealthCheckNodePorts: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "directlb", Subsystem: "node_agent", Name: "health_check_node_ports",
			Help: "healthCheckNodePorts served (externalTrafficPolicy Local Services).",
		}),
		HealthCheckNodePortsFailed: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "directlb", Subsystem: "node_agent", Name: "health_check_node_ports_failed",
			Help: "healthCheckNodePorts that could not be opened (a port in use, say); retried.",
		}),
		HealthCheckListenFailuresTotal: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "directlb", Subsystem: "node_agent", Name: "health_check_listen_failures_total",
			Help: "Attempts to open a healthCheckNodePort that failed.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.SyncDuration, m.NetworkProgrammingDuration, m.LastSyncTimestamp,
			m.EndpointChangesTotal, m.EndpointChangesPending, m.ServiceChangesTotal,
			m.ServiceChangesPending, m.SyncFailuresTotal, m.MapWritesTotal, m.ProgrammedServices,
			m.ServicesNotProgrammed, m.ServiceProgramFailuresTotal, m.UDPSocketsDestroyedTotal,
			m.SocketDestroyFailuresTotal,
			m.HealthCheckNodePorts, m.HealthCheckNodePortsFailed, m.HealthCheckListenFailuresTotal)
	}
	return m
}

// MapFill reports, per BPF map, its entries, its capacity and the ratio of
// the two, read at each scrape: directlb_node_agent_bpf_map_entries,
// _bpf_map_capacity and _bpf_map_fill_ratio, labelled map.
type MapFill struct {
	// Capacity is each map's max entries.
	Capacity map[string]uint32
	// Entries counts the maps' entries (those it knows).
	Entries func() map[string]int
}

var (
	mapEntriesDesc  = prometheus.NewDesc("directlb_node_agent_bpf_map_entries", "Entries in a BPF map.", []string{"map"}, nil)
	mapCapacityDesc = prometheus.NewDesc("directlb_node_agent_bpf_map_capacity", "A BPF map's max entries.", []string{"map"}, nil)
	mapFillDesc     = prometheus.NewDesc("directlb_node_agent_bpf_map_fill_ratio", "Entries over max entries of a BPF map; an LRU map evicts near 1, a hash map refuses writes at 1.", []string{"map"}, nil)
)

// Describe implements prometheus.Collector.
func (f *MapFill) Describe(ch chan<- *prometheus.Desc) {
	ch <- mapEntriesDesc
	ch <- mapCapacityDesc
	ch <- mapFillDesc
}

// Collect implements prometheus.Collector.
func (f *MapFill) Collect(ch chan<- prometheus.Metric) {
	for name, c := range f.Capacity {
		ch <- prometheus.MustNewConstMetric(mapCapacityDesc, prometheus.GaugeValue, float64(c), name)
	}
	for name, n := range f.Entries() {
		ch <- prometheus.MustNewConstMetric(mapEntriesDesc, prometheus.GaugeValue, float64(n), name)
		if c := f.Capacity[name]; c > 0 {
			ch <- prometheus.MustNewConstMetric(mapFillDesc, prometheus.GaugeValue, float64(n)/float64(c), name)
		}
	}
}

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
		LastSyncTimestamp: kubeProxyGauge("sync_proxy_rules_last_timestamp_seconds",
			"The last time the datapath was successfully programmed."),
		EndpointChangesTotal: kubeProxyCounter("sync_proxy_rules_endpoint_changes_total",
			"Cumulative EndpointSlice changes seen."),
		EndpointChangesPending: kubeProxyGauge("sync_proxy_rules_endpoint_changes_pending",
			"EndpointSlice changes not yet programmed."),
		ServiceChangesTotal: kubeProxyCounter("sync_proxy_rules_service_changes_total",
			"Cumulative Service changes seen."),
		ServiceChangesPending: kubeProxyGauge("sync_proxy_rules_service_changes_pending",
			"Service changes not yet programmed."),
		SyncFailuresTotal: agentCounter("sync_failures_total",
			"Syncs that failed to write the BPF maps (each is retried with a full sync)."),
		MapWritesTotal: agentCounter("bpf_map_writes_total",
			"BPF map entries written or deleted."),
		ProgrammedServices: agentGauge("programmed_frontends",
			"ClusterIP frontends (IP, port, protocol) programmed in the datapath."),
		ServicesNotProgrammed: agentGauge("services_not_programmed",
			"Services whose last write to the BPF maps failed (a full map, say); they keep their earlier state, are logged by name and retried."),
		ServiceProgramFailuresTotal: agentCounter("service_program_failures_total",
			"Writes of one Service to the BPF maps that failed after its batch failed."),
		UDPSocketsDestroyedTotal: agentCounter("udp_sockets_destroyed_total",
			"Connected UDP sockets destroyed because the backend they were translated to left its Service."),
		SocketDestroyFailuresTotal: agentCounter("socket_destroy_failures_total",
			"Runs of the UDP socket iterator (after a sync that removed backends) that failed in at least one network namespace."),
		HealthCheckNodePorts: agentGauge("health_check_node_ports",
			"healthCheckNodePorts served (externalTrafficPolicy Local Services)."),
		HealthCheckNodePortsFailed: agentGauge("health_check_node_ports_failed",
			"healthCheckNodePorts that could not be opened (a port in use, say); retried."),
		HealthCheckListenFailuresTotal: agentCounter("health_check_listen_failures_total",
			"Attempts to open a healthCheckNodePort that failed."),
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

// kubeProxyGauge and kubeProxyCounter are metrics under kube-proxy's
// names (kubeproxy_...); agentGauge and agentCounter under the agent's own
// (directlb_node_agent_...).
func kubeProxyGauge(name, help string) prometheus.Gauge {
	return prometheus.NewGauge(prometheus.GaugeOpts{Subsystem: "kubeproxy", Name: name, Help: help})
}

func kubeProxyCounter(name, help string) prometheus.Counter {
	return prometheus.NewCounter(prometheus.CounterOpts{Subsystem: "kubeproxy", Name: name, Help: help})
}

func agentGauge(name, help string) prometheus.Gauge {
	return prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "directlb", Subsystem: "node_agent", Name: name, Help: help})
}

func agentCounter(name, help string) prometheus.Counter {
	return prometheus.NewCounter(prometheus.CounterOpts{Namespace: "directlb", Subsystem: "node_agent", Name: name, Help: help})
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

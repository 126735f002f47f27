package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/pflag"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kubeproxyv1alpha1 "k8s.io/kube-proxy/config/v1alpha1"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"

	"github.com/directlb/directlb/pkg/proxy"
)

// KubeProxyConfiguration is kube-proxy's configuration file type.
type KubeProxyConfiguration = kubeproxyv1alpha1.KubeProxyConfiguration

// ConfigWarning is a field of a --config file that node-agent ignores.
type ConfigWarning struct {
	Field  string
	Value  string
	Reason string
}

// ReadKubeProxyConfiguration reads a kubeproxy.config.k8s.io/v1alpha1
// KubeProxyConfiguration (YAML or JSON) strictly: an unknown or duplicate
// field is an error naming it.
func ReadKubeProxyConfiguration(path string) (*KubeProxyConfiguration, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read --config: %w", err)
	}
	return DecodeKubeProxyConfiguration(data)
}

// DecodeKubeProxyConfiguration decodes a KubeProxyConfiguration strictly.
func DecodeKubeProxyConfiguration(data []byte) (*KubeProxyConfiguration, error) {
	j, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return nil, fmt.Errorf("--config: %w", err)
	}
	var tm metav1.TypeMeta
	if err := json.Unmarshal(j, &tm); err != nil {
		return nil, fmt.Errorf("--config: %w", err)
	}
	if want := kubeproxyv1alpha1.SchemeGroupVersion.String(); tm.APIVersion != want || tm.Kind != "KubeProxyConfiguration" {
		return nil, fmt.Errorf("--config: apiVersion %q kind %q: want %s KubeProxyConfiguration", tm.APIVersion, tm.Kind, want)
	}
	// Case-sensitive, unknown and duplicate fields named with their
	// path, as the apiserver's strict decoding.
	var kpc KubeProxyConfiguration
	strict, err := kjson.UnmarshalStrict(j, &kpc, kjson.DisallowUnknownFields)
	if err != nil {
		return nil, fmt.Errorf("--config: %w", err)
	}
	if len(strict) > 0 {
		return nil, fmt.Errorf("--config: %w", errors.Join(strict...))
	}
	return &kpc, nil
}

// LoadConfigFile applies --config, if given, to c: a field of the file
// sets its flag unless that flag was given on the command line (fs), and
// an empty field leaves the flag as it is. It returns the fields that are
// ignored.
func (c *Config) LoadConfigFile(fs *pflag.FlagSet) ([]ConfigWarning, error) {
	if c.ConfigFile == "" {
		return nil, nil
	}
	kpc, err := ReadKubeProxyConfiguration(c.ConfigFile)
	if err != nil {
		return nil, err
	}
	w, err := c.ApplyKubeProxyConfiguration(kpc, fs.Changed)
	if err != nil {
		return nil, fmt.Errorf("--config %s: %w", c.ConfigFile, err)
	}
	return w, nil
}

// Ports kube-proxy appends to a bind address given without one.
const (
	kubeProxyHealthzPort = "10256"
	kubeProxyMetricsPort = "10249"
)

// ApplyKubeProxyConfiguration maps the fields of kpc that mean something
// for node-agent onto c, leaving those whose flag explicit reports as given
// on the command line. Fields that do not apply are ignored when they hold
// kube-proxy's default (or are empty) and otherwise returned as warnings;
// those whose meaning node-agent would silently break are errors.
// See docs/node-agent.md ("--config").
func (c *Config) ApplyKubeProxyConfiguration(kpc *KubeProxyConfiguration, explicit func(flag string) bool) ([]ConfigWarning, error) {
	if err := checkKubeProxyConfiguration(kpc); err != nil {
		return nil, err
	}
	set := func(flag string, empty bool, apply func()) {
		if !empty && !explicit(flag) {
			apply()
		}
	}
	cc := kpc.ClientConnection
	set("kubeconfig", cc.Kubeconfig == "", func() { c.Kubeconfig = cc.Kubeconfig })
	set("kube-api-qps", cc.QPS == 0, func() { c.KubeAPIQPS = cc.QPS })
	set("kube-api-burst", cc.Burst == 0, func() { c.KubeAPIBurst = int(cc.Burst) })
	set("hostname-override", kpc.HostnameOverride == "", func() { c.HostnameOverride = kpc.HostnameOverride })
	set("cluster-cidr", kpc.ClusterCIDR == "", func() { c.ClusterCIDR = kpc.ClusterCIDR })
	set("nodeport-addresses", len(kpc.NodePortAddresses) == 0, func() { c.NodePortAddresses = slices.Clone(kpc.NodePortAddresses) })
	set("healthz-bind-address", kpc.HealthzBindAddress == "", func() { c.HealthzBindAddress = withPort(kpc.HealthzBindAddress, kubeProxyHealthzPort) })
	set("metrics-bind-address", kpc.MetricsBindAddress == "", func() { c.MetricsBindAddress = withPort(kpc.MetricsBindAddress, kubeProxyMetricsPort) })
	return ignoredFields(kpc), nil
}

// withPort appends port to a bind address that has none, as kube-proxy
// does ("0.0.0.0" → "0.0.0.0:10256").
func withPort(addr, port string) string {
	if _, _, err := net.SplitHostPort(addr); err == nil {
		return addr
	}
	if strings.Count(addr, ":") > 1 && !strings.HasPrefix(addr, "[") {
		return net.JoinHostPort(addr, port) // a bare IPv6 address
	}
	return net.JoinHostPort(strings.Trim(addr, "[]"), port)
}

// checkKubeProxyConfiguration refuses what node-agent cannot honour, and
// checks the mapped fields, naming each by its field.
func checkKubeProxyConfiguration(kpc *KubeProxyConfiguration) error {
	switch kpc.Mode {
	case "", "iptables", "nftables", "ipvs":
		// node-agent replaces whichever mode it was.
	default:
		return fmt.Errorf("mode %q: node-agent replaces kube-proxy's Linux modes (\"\", iptables, nftables, ipvs) with eBPF; %q is not one", kpc.Mode, kpc.Mode)
	}
	if kpc.IPTables.MasqueradeAll {
		return fmt.Errorf("iptables.masqueradeAll: true asks for every Service connection to be SNATed; node-agent translates at the socket and never masquerades ClusterIP traffic")
	}
	if kpc.NFTables.MasqueradeAll {
		return fmt.Errorf("nftables.masqueradeAll: true asks for every Service connection to be SNATed; node-agent translates at the socket and never masquerades ClusterIP traffic")
	}
	if kpc.WindowsRunAsService {
		return fmt.Errorf("windowsRunAsService: node-agent runs on Linux only")
	}
	for _, s := range strings.Split(kpc.ClusterCIDR, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		if _, _, err := net.ParseCIDR(s); err != nil {
			return fmt.Errorf("clusterCIDR %q: %w", kpc.ClusterCIDR, err)
		}
	}
	if _, err := proxy.ParseNodePortAddresses(kpc.NodePortAddresses); err != nil {
		return fmt.Errorf("nodePortAddresses: %w", err)
	}
	for field, v := range map[string]string{"healthzBindAddress": kpc.HealthzBindAddress, "metricsBindAddress": kpc.MetricsBindAddress} {
		if v == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(withPort(v, "1")); err != nil {
			return fmt.Errorf("%s %q: %w", field, v, err)
		}
	}
	if kpc.ClientConnection.QPS < 0 || kpc.ClientConnection.Burst < 0 {
		return fmt.Errorf("clientConnection.qps %v, burst %d: must not be negative", kpc.ClientConnection.QPS, kpc.ClientConnection.Burst)
	}
	return nil
}

// ignoredFields lists the fields that do not apply to node-agent and hold
// something else than empty or kube-proxy's default (as kube-proxy
// --write-config-to writes it), so that a file kube-proxy wrote gives no
// warning.
func ignoredFields(kpc *KubeProxyConfiguration) []ConfigWarning {
	var out []ConfigWarning
	warn := func(ignored bool, field string, v any, reason string) {
		if ignored {
			out = append(out, ConfigWarning{Field: field, Value: fmt.Sprint(v), Reason: reason})
		}
	}
	dur := func(d metav1.Duration, defaults ...time.Duration) bool {
		return d.Duration != 0 && !slices.Contains(defaults, d.Duration)
	}
	ptrNot := func(p *int32, def int32) bool { return p != nil && *p != def }
	durPtrNot := func(p *metav1.Duration, def time.Duration) bool { return p != nil && p.Duration != def }

	const noSync = "node-agent programs each change after --sync-window; it has no periodic resync"
	const noMark = "node-agent does not mark packets"
	warn(dur(kpc.IPTables.SyncPeriod, 30*time.Second), "iptables.syncPeriod", kpc.IPTables.SyncPeriod.Duration, noSync)
	warn(dur(kpc.IPTables.MinSyncPeriod, time.Second), "iptables.minSyncPeriod", kpc.IPTables.MinSyncPeriod.Duration, noSync)
	warn(ptrNot(kpc.IPTables.MasqueradeBit, 14), "iptables.masqueradeBit", deref(kpc.IPTables.MasqueradeBit), noMark)
	warn(dur(kpc.NFTables.SyncPeriod, 30*time.Second), "nftables.syncPeriod", kpc.NFTables.SyncPeriod.Duration, noSync)
	warn(dur(kpc.NFTables.MinSyncPeriod, time.Second), "nftables.minSyncPeriod", kpc.NFTables.MinSyncPeriod.Duration, noSync)
	warn(ptrNot(kpc.NFTables.MasqueradeBit, 14), "nftables.masqueradeBit", deref(kpc.NFTables.MasqueradeBit), noMark)

	const noIPVS = "node-agent has no IPVS; its eBPF tables pick backends at random"
	warn(dur(kpc.IPVS.SyncPeriod, 30*time.Second), "ipvs.syncPeriod", kpc.IPVS.SyncPeriod.Duration, noSync)
	warn(dur(kpc.IPVS.MinSyncPeriod, time.Second), "ipvs.minSyncPeriod", kpc.IPVS.MinSyncPeriod.Duration, noSync)
	warn(kpc.IPVS.Scheduler != "", "ipvs.scheduler", kpc.IPVS.Scheduler, noIPVS)
	warn(len(kpc.IPVS.ExcludeCIDRs) > 0, "ipvs.excludeCIDRs", kpc.IPVS.ExcludeCIDRs, noIPVS)
	warn(kpc.IPVS.StrictARP, "ipvs.strictARP", true, "node-agent adds no addresses to a dummy interface, so there is no ARP to restrict")
	warn(kpc.IPVS.TCPTimeout.Duration != 0, "ipvs.tcpTimeout", kpc.IPVS.TCPTimeout.Duration, noIPVS)
	warn(kpc.IPVS.TCPFinTimeout.Duration != 0, "ipvs.tcpFinTimeout", kpc.IPVS.TCPFinTimeout.Duration, noIPVS)
	warn(kpc.IPVS.UDPTimeout.Duration != 0, "ipvs.udpTimeout", kpc.IPVS.UDPTimeout.Duration, noIPVS)

	const noWin = "Windows only"
	wk := kpc.Winkernel
	warn(wk.NetworkName != "", "winkernel.networkName", wk.NetworkName, noWin)
	warn(wk.SourceVip != "", "winkernel.sourceVip", wk.SourceVip, noWin)
	warn(wk.EnableDSR, "winkernel.enableDSR", true, noWin)
	warn(wk.RootHnsEndpointName != "", "winkernel.rootHnsEndpointName", wk.RootHnsEndpointName, noWin)
	warn(wk.ForwardHealthCheckVip, "winkernel.forwardHealthCheckVip", true, noWin)

	const noCT = "node-agent neither uses nor tunes the kernel's conntrack (ClusterIPs are translated at the socket; north-south flows are in its own dlb_nat4)"
	ct := kpc.Conntrack
	warn(ptrNot(ct.MaxPerCore, 32768), "conntrack.maxPerCore", deref(ct.MaxPerCore), noCT)
	warn(ptrNot(ct.Min, 131072), "conntrack.min", deref(ct.Min), noCT)
	warn(durPtrNot(ct.TCPEstablishedTimeout, 24*time.Hour), "conntrack.tcpEstablishedTimeout", derefDur(ct.TCPEstablishedTimeout), noCT)
	warn(durPtrNot(ct.TCPCloseWaitTimeout, time.Hour), "conntrack.tcpCloseWaitTimeout", derefDur(ct.TCPCloseWaitTimeout), noCT)
	warn(ct.TCPBeLiberal, "conntrack.tcpBeLiberal", true, noCT)
	warn(ct.UDPTimeout.Duration != 0, "conntrack.udpTimeout", ct.UDPTimeout.Duration, noCT)
	warn(ct.UDPStreamTimeout.Duration != 0, "conntrack.udpStreamTimeout", ct.UDPStreamTimeout.Duration, noCT)

	const local = "node-agent needs no local-traffic detector: the socket hooks see only this node's processes and pods"
	warn(kpc.DetectLocalMode != "" && kpc.DetectLocalMode != "ClusterCIDR", "detectLocalMode", kpc.DetectLocalMode, local)
	warn(kpc.DetectLocal.BridgeInterface != "", "detectLocal.bridgeInterface", kpc.DetectLocal.BridgeInterface, local)
	warn(kpc.DetectLocal.InterfaceNamePrefix != "", "detectLocal.interfaceNamePrefix", kpc.DetectLocal.InterfaceNamePrefix, local)

	warn(ptrNot(kpc.OOMScoreAdj, -999), "oomScoreAdj", deref(kpc.OOMScoreAdj), "node-agent leaves its OOM score to the kubelet (the DaemonSet's priority)")
	warn(kpc.PortRange != "", "portRange", kpc.PortRange, "the userspace proxy's; node-agent has none")
	warn(dur(kpc.ConfigSyncPeriod, 15*time.Minute), "configSyncPeriod", kpc.ConfigSyncPeriod.Duration, "node-agent's informers do not resync; it reacts to every event")
	warn(kpc.BindAddress != "" && kpc.BindAddress != "0.0.0.0" && kpc.BindAddress != "::", "bindAddress", kpc.BindAddress, "deprecated in kube-proxy; set healthzBindAddress and metricsBindAddress")
	warn(kpc.EnableProfiling, "enableProfiling", true, "node-agent serves no /debug/pprof")
	warn(kpc.ShowHiddenMetricsForVersion != "", "showHiddenMetricsForVersion", kpc.ShowHiddenMetricsForVersion, "node-agent has no hidden metrics")
	warn(len(kpc.FeatureGates) > 0, "featureGates", kpc.FeatureGates, "kube-proxy's feature gates do not apply")
	warn(cc(kpc.ClientConnection.ContentType), "clientConnection.contentType", kpc.ClientConnection.ContentType, "node-agent uses client-go's default content type")
	warn(kpc.ClientConnection.AcceptContentTypes != "", "clientConnection.acceptContentTypes", kpc.ClientConnection.AcceptContentTypes, "node-agent uses client-go's default content type")
	warn(kpc.Logging.Verbosity != 0, "logging.verbosity", kpc.Logging.Verbosity, "use --log-level (node-agent logs JSON through zap)")
	warn(len(kpc.Logging.VModule) > 0, "logging.vmodule", kpc.Logging.VModule, "use --log-level (node-agent logs JSON through zap)")
	return out
}

func cc(contentType string) bool {
	return contentType != "" && contentType != "application/vnd.kubernetes.protobuf" && contentType != "application/json"
}

func deref(p *int32) int32 {
	if p == nil {
		return 0
	}
	return *p
}

func derefDur(p *metav1.Duration) time.Duration {
	if p == nil {
		return 0
	}
	return p.Duration
}

// KubeProxyConfiguration returns the fields of c that a
// KubeProxyConfiguration carries (--write-config-to); every other field is
// left empty, which node-agent reads back as "not set".
func (c *Config) KubeProxyConfiguration() *KubeProxyConfiguration {
	kpc := &KubeProxyConfiguration{
		TypeMeta:           metav1.TypeMeta{APIVersion: kubeproxyv1alpha1.SchemeGroupVersion.String(), Kind: "KubeProxyConfiguration"},
		HostnameOverride:   c.HostnameOverride,
		HealthzBindAddress: c.HealthzBindAddress,
		MetricsBindAddress: c.MetricsBindAddress,
		ClusterCIDR:        c.ClusterCIDR,
		NodePortAddresses:  slices.Clone(c.NodePortAddresses),
	}
	kpc.ClientConnection.Kubeconfig = c.Kubeconfig
	kpc.ClientConnection.QPS = c.KubeAPIQPS
	kpc.ClientConnection.Burst = int32(c.KubeAPIBurst)
	return kpc
}

// WriteConfigFile writes c's KubeProxyConfiguration to path as YAML, with
// only the fields that are set: every other one means "not set" to
// node-agent and would only be noise.
func WriteConfigFile(path string, c Config) error {
	j, err := json.Marshal(c.KubeProxyConfiguration())
	if err != nil {
		return fmt.Errorf("encode configuration: %w", err)
	}
	var m map[string]any
	if err := json.Unmarshal(j, &m); err != nil {
		return fmt.Errorf("encode configuration: %w", err)
	}
	prune(m)
	data, err := yaml.Marshal(m)
	if err != nil {
		return fmt.Errorf("encode configuration: %w", err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		return fmt.Errorf("--write-config-to: %w", err)
	}
	return nil
}

// prune drops the empty values of a decoded JSON object, recursively:
// null, "", false, 0, a zero duration or quantity, and objects and lists
// left empty.
func prune(m map[string]any) {
	for k, v := range m {
		switch x := v.(type) {
		case map[string]any:
			prune(x)
			if len(x) == 0 {
				delete(m, k)
			}
		case []any:
			if len(x) == 0 {
				delete(m, k)
			}
		case nil:
			delete(m, k)
		case string:
			if x == "" || x == "0s" || x == "0" {
				delete(m, k)
			}
		case bool:
			if !x {
				delete(m, k)
			}
		case float64:
			if x == 0 {
				delete(m, k)
			}
		}
	}
}

package agent

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/spf13/pflag"
)

var update = flag.Bool("update", false, "rewrite golden files")

// mapped is the part of Config a KubeProxyConfiguration sets.
type mapped struct {
	Kubeconfig, HostnameOverride, ClusterCIDR string
	NodePortAddresses                         []string
	HealthzBindAddress, MetricsBindAddress    string
	QPS                                       float32
	Burst                                     int
}

func mappedOf(c Config) mapped {
	return mapped{c.Kubeconfig, c.HostnameOverride, c.ClusterCIDR, c.NodePortAddresses, c.HealthzBindAddress, c.MetricsBindAddress, c.KubeAPIQPS, c.KubeAPIBurst}
}

func noFlags(string) bool { return false }

// TestKubeProxyWrittenConfigurations: files written by the pinned
// kube-proxy (v1.36.3 --write-config-to, in testdata) are accepted without a
// warning, and their fields land on node-agent's flags.
func TestKubeProxyWrittenConfigurations(t *testing.T) {
	cases := []struct {
		file string
		want mapped
	}{
		{file: "kube-proxy-iptables.yaml", want: mapped{HealthzBindAddress: "0.0.0.0:10256", MetricsBindAddress: "127.0.0.1:10249", QPS: 5, Burst: 10}},
		{file: "kube-proxy-nftables.yaml", want: mapped{NodePortAddresses: []string{"primary"}, HealthzBindAddress: "0.0.0.0:10256", MetricsBindAddress: "127.0.0.1:10249", QPS: 5, Burst: 10}},
		{file: "kube-proxy-custom.yaml", want: mapped{
			Kubeconfig: "/var/lib/kube-proxy/kubeconfig", HostnameOverride: "node-1", ClusterCIDR: "10.100.0.0/16",
			NodePortAddresses: []string{"10.0.0.0/8"}, HealthzBindAddress: "0.0.0.0:10256", MetricsBindAddress: "0.0.0.0:10249", QPS: 20, Burst: 40,
		}},
	}
	for _, c := range cases {
		t.Run(c.file, func(t *testing.T) {
			kpc, err := ReadKubeProxyConfiguration(filepath.Join("testdata", c.file))
			if err != nil {
				t.Fatal(err)
			}
			cfg := DefaultConfig()
			w, err := cfg.ApplyKubeProxyConfiguration(kpc, noFlags)
			if err != nil {
				t.Fatal(err)
			}
			if len(w) != 0 {
				t.Errorf("warnings for a file kube-proxy wrote: %+v", w)
			}
			if diff := cmp.Diff(c.want, mappedOf(cfg)); diff != "" {
				t.Errorf("mapped (-want +got):\n%s", diff)
			}
			if err := cfg.Validate(); err != nil {
				t.Errorf("validate: %v", err)
			}
		})
	}
}

const header = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n"

func TestKubeProxyConfigurationMapping(t *testing.T) {
	def := mappedOf(DefaultConfig())
	cases := []struct {
		name string
		yaml string
		want func(*mapped)
	}{
		{name: "empty: flags keep their defaults", yaml: header, want: func(*mapped) {}},
		{name: "bind addresses without a port get kube-proxy's", yaml: header + "healthzBindAddress: 10.0.0.1\nmetricsBindAddress: '::1'\n", want: func(m *mapped) {
			m.HealthzBindAddress, m.MetricsBindAddress = "10.0.0.1:10256", "[::1]:10249"
		}},
		{name: "every mapped field", yaml: header + `clientConnection: {kubeconfig: /k, qps: 7, burst: 9}
hostnameOverride: node-9
clusterCIDR: 10.100.0.0/16,fd00::/48
nodePortAddresses: [10.0.0.0/8, primary]
healthzBindAddress: 127.0.0.1:20256
metricsBindAddress: 127.0.0.1:20249
`, want: func(m *mapped) {
			*m = mapped{"/k", "node-9", "10.100.0.0/16,fd00::/48", []string{"10.0.0.0/8", "primary"}, "127.0.0.1:20256", "127.0.0.1:20249", 7, 9}
		}},
		{name: "JSON too", yaml: `{"apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration", "clusterCIDR": "10.1.0.0/16"}`, want: func(m *mapped) { m.ClusterCIDR = "10.1.0.0/16" }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			kpc, err := DecodeKubeProxyConfiguration([]byte(c.yaml))
			if err != nil {
				t.Fatal(err)
			}
			cfg := DefaultConfig()
			if _, err := cfg.ApplyKubeProxyConfiguration(kpc, noFlags); err != nil {
				t.Fatal(err)
			}
			want := def
			want.NodePortAddresses = nil
			c.want(&want)
			if diff := cmp.Diff(want, mappedOf(cfg)); diff != "" {
				t.Errorf("mapped (-want +got):\n%s", diff)
			}
		})
	}
}

func TestKubeProxyConfigurationRefused(t *testing.T) {
	cases := []struct {
		name, yaml, wantErr string
	}{
		{name: "unknown field", yaml: header + "clusterCidr: 10.0.0.0/8\n", wantErr: `unknown field "clusterCidr"`}, // encoding/json would take it for clusterCIDR
		{name: "unknown nested field", yaml: header + "iptables: {masqueradeBits: 14}\n", wantErr: `unknown field "iptables.masqueradeBits"`},
		{name: "duplicate field", yaml: header + "clusterCIDR: 10.0.0.0/8\nclusterCIDR: 10.1.0.0/16\n", wantErr: `"clusterCIDR"`},
		{name: "wrong kind", yaml: "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeletConfiguration\n", wantErr: "kind"},
		{name: "wrong version", yaml: "apiVersion: kubeproxy.config.k8s.io/v1beta1\nkind: KubeProxyConfiguration\n", wantErr: "apiVersion"},
		{name: "Windows mode", yaml: header + "mode: kernelspace\n", wantErr: "mode"},
		{name: "masquerade all (iptables)", yaml: header + "iptables: {masqueradeAll: true}\n", wantErr: "iptables.masqueradeAll"},
		{name: "masquerade all (nftables)", yaml: header + "nftables: {masqueradeAll: true}\n", wantErr: "nftables.masqueradeAll"},
		{name: "Windows service", yaml: header + "windowsRunAsService: true\n", wantErr: "windowsRunAsService"},
		{name: "bad cluster CIDR", yaml: header + "clusterCIDR: 10.0.0.1\n", wantErr: "clusterCIDR"},
		{name: "bad nodePortAddresses", yaml: header + "nodePortAddresses: [10.0.0.1]\n", wantErr: "nodePortAddresses"},
		{name: "bad healthz address", yaml: header + "healthzBindAddress: 'a:b:c]'\n", wantErr: "healthzBindAddress"},
		{name: "negative qps", yaml: header + "clientConnection: {qps: -1}\n", wantErr: "clientConnection.qps"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			kpc, err := DecodeKubeProxyConfiguration([]byte(c.yaml))
			if err == nil {
				cfg := DefaultConfig()
				_, err = cfg.ApplyKubeProxyConfiguration(kpc, noFlags)
			}
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Fatalf("error %v, want one naming %s", err, c.wantErr)
			}
		})
	}
}

func TestKubeProxyConfigurationIgnored(t *testing.T) {
	cases := []struct {
		name, yaml string
		want       []string
	}{
		{name: "modes node-agent replaces", yaml: header + "mode: ipvs\n"},
		{name: "kube-proxy's defaults", yaml: header + "iptables: {syncPeriod: 30s, minSyncPeriod: 1s, masqueradeBit: 14, localhostNodePorts: true}\nconntrack: {maxPerCore: 32768, min: 131072}\noomScoreAdj: -999\nconfigSyncPeriod: 15m\n"},
		{name: "sync periods", yaml: header + "nftables: {syncPeriod: 1m, minSyncPeriod: 5s}\n", want: []string{"nftables.syncPeriod", "nftables.minSyncPeriod"}},
		{name: "ipvs", yaml: header + "mode: ipvs\nipvs: {scheduler: rr, strictARP: true, excludeCIDRs: [10.0.0.0/8], tcpTimeout: 5s}\n", want: []string{"ipvs.scheduler", "ipvs.excludeCIDRs", "ipvs.strictARP", "ipvs.tcpTimeout"}},
		{name: "conntrack", yaml: header + "conntrack: {maxPerCore: 0, tcpBeLiberal: true, udpTimeout: 30s}\n", want: []string{"conntrack.maxPerCore", "conntrack.tcpBeLiberal", "conntrack.udpTimeout"}},
		{name: "local detection", yaml: header + "detectLocalMode: InterfaceNamePrefix\ndetectLocal: {interfaceNamePrefix: veth}\n", want: []string{"detectLocalMode", "detectLocal.interfaceNamePrefix"}},
		{name: "the rest", yaml: header + "oomScoreAdj: 0\nenableProfiling: true\nfeatureGates: {Foo: true}\nbindAddress: 10.0.0.1\nlogging: {verbosity: 4}\niptables: {masqueradeBit: 15}\n",
			want: []string{"iptables.masqueradeBit", "oomScoreAdj", "bindAddress", "enableProfiling", "featureGates", "logging.verbosity"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			kpc, err := DecodeKubeProxyConfiguration([]byte(c.yaml))
			if err != nil {
				t.Fatal(err)
			}
			cfg := DefaultConfig()
			ws, err := cfg.ApplyKubeProxyConfiguration(kpc, noFlags)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, w := range ws {
				if w.Reason == "" {
					t.Errorf("%s: no reason", w.Field)
				}
				got = append(got, w.Field)
			}
			if diff := cmp.Diff(c.want, got); diff != "" {
				t.Errorf("ignored fields (-want +got):\n%s", diff)
			}
		})
	}
}

// TestFlagsOverrideConfigFile: defaults < --config < flags on the command
// line.
func TestFlagsOverrideConfigFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kube-proxy.yaml")
	if err := os.WriteFile(path, []byte(header+"clusterCIDR: 10.100.0.0/16\nhostnameOverride: from-file\nmetricsBindAddress: 127.0.0.1:10249\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	cfg.BindFlags(fs)
	if err := fs.Parse([]string{"--config=" + path, "--cluster-cidr=10.200.0.0/16", "--metrics-bind-address="}); err != nil {
		t.Fatal(err)
	}
	if _, err := cfg.LoadConfigFile(fs); err != nil {
		t.Fatal(err)
	}
	if cfg.ClusterCIDR != "10.200.0.0/16" || cfg.HostnameOverride != "from-file" || cfg.MetricsBindAddress != "" || cfg.HealthzBindAddress != ":10256" {
		t.Errorf("cluster CIDR %q (flag wins), hostname %q (file), metrics %q (flag: off), healthz %q (default)", cfg.ClusterCIDR, cfg.HostnameOverride, cfg.MetricsBindAddress, cfg.HealthzBindAddress)
	}
}

// TestWriteConfigRoundTrip: --write-config-to writes the golden file, and
// reading it back gives the same configuration.
func TestWriteConfigRoundTrip(t *testing.T) {
	cfg := DefaultConfig()
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	cfg.BindFlags(fs)
	if err := fs.Parse([]string{"--kubeconfig=/etc/k", "--hostname-override=node-1", "--cluster-cidr=10.100.0.0/16", "--nodeport-addresses=10.0.0.0/8",
		"--metrics-bind-address=127.0.0.1:10249", "--kube-api-qps=20"}); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "out.yaml")
	if err := WriteConfigFile(path, cfg); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "write-config.golden.yaml")
	if *update {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(string(want), string(got)); diff != "" {
		t.Errorf("written (-golden +got; go test -update rewrites it):\n%s", diff)
	}
	kpc, err := ReadKubeProxyConfiguration(path)
	if err != nil {
		t.Fatal(err)
	}
	back := DefaultConfig()
	ws, err := back.ApplyKubeProxyConfiguration(kpc, noFlags)
	if err != nil || len(ws) != 0 {
		t.Fatalf("read back: %v, warnings %+v", err, ws)
	}
	if diff := cmp.Diff(mappedOf(cfg), mappedOf(back)); diff != "" {
		t.Errorf("round trip (-written +read):\n%s", diff)
	}
}

package testbed

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func TestPlanNodes(t *testing.T) {
	cfg := DefaultConfig()
	cfg.StateDir = "/run/x"
	cfg.Nodes = 2
	got := Plan(cfg)
	want := []Node{
		{Name: "node-1", NetNS: "dlb-node-1", Cgroup: CgroupRoot + "/node-1", KubeletCgroup: CgroupRoot + "/node-1/kubelet", Runtime: &NodeRuntime{
			ContainerdSocket: "/run/x/nodes/node-1/containerd/containerd.sock",
			KubeletRootDir:   "/run/x/nodes/node-1/kubelet",
			PodLogsDir:       "/run/x/nodes/node-1/pod-logs",
			CNIConfDir:       "/run/x/nodes/node-1/cni/net.d",
			CNIBinDir:        "/run/x/nodes/node-1/cni/bin",
			CgroupRoot:       "/directlb/node-1",
		}, ENIs: []ENI{
			{ID: "eni-node1-0", Device: "eth0", MAC: "02:d1:0a:64:01:0a", Addr: netip.MustParsePrefix("10.100.1.10/16"), PodRange: netip.MustParsePrefix("10.100.1.64/26"), Gateway: VPCGateway, DeviceIdx: 0},
			{ID: "eni-node1-1", Device: "eth1", MAC: "02:d1:0a:64:01:0b", Addr: netip.MustParsePrefix("10.100.1.11/16"), PodRange: netip.MustParsePrefix("10.100.1.128/26"), Gateway: VPCGateway, DeviceIdx: 1},
		}},
		{Name: "node-2", NetNS: "dlb-node-2", Cgroup: CgroupRoot + "/node-2", KubeletCgroup: CgroupRoot + "/node-2/kubelet", Runtime: &NodeRuntime{
			ContainerdSocket: "/run/x/nodes/node-2/containerd/containerd.sock",
			KubeletRootDir:   "/run/x/nodes/node-2/kubelet",
			PodLogsDir:       "/run/x/nodes/node-2/pod-logs",
			CNIConfDir:       "/run/x/nodes/node-2/cni/net.d",
			CNIBinDir:        "/run/x/nodes/node-2/cni/bin",
			CgroupRoot:       "/directlb/node-2",
		}, ENIs: []ENI{
			{ID: "eni-node2-0", Device: "eth0", MAC: "02:d1:0a:64:02:0a", Addr: netip.MustParsePrefix("10.100.2.10/16"), PodRange: netip.MustParsePrefix("10.100.2.64/26"), Gateway: VPCGateway, DeviceIdx: 0},
			{ID: "eni-node2-1", Device: "eth1", MAC: "02:d1:0a:64:02:0b", Addr: netip.MustParsePrefix("10.100.2.11/16"), PodRange: netip.MustParsePrefix("10.100.2.128/26"), Gateway: VPCGateway, DeviceIdx: 1},
		}},
	}
	if diff := cmp.Diff(want, got.Nodes, cmpopts.EquateComparable(netip.Addr{}, netip.Prefix{})); diff != "" {
		t.Errorf("nodes (-want +got):\n%s", diff)
	}
	for _, c := range []struct{ name, got, want string }{
		{"kubeconfig", got.Kubeconfig, "/run/x/kubeconfig"},
		{"vpc kubeconfig", got.VPCKubeconfig, "/run/x/kubeconfig-vpc"},
		{"apiserver", got.APIServer, "https://10.100.0.2:6443"},
		{"localcloud on", got.LocalcloudURL, "http://10.100.0.3:4566"},
	} {
		if c.got != c.want {
			t.Errorf("%s = %q, want %q", c.name, c.got, c.want)
		}
	}
}

// Every address the plan hands out is inside the VPC, unique, and no ENI
// address falls in a pod range (the fabric must know one owner per address).
func TestPlanAddressesDisjoint(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Nodes = 200
	p := Plan(cfg)
	seen := map[netip.Addr]string{HostAddr: "host", CloudAddr: "cloud", VPCGateway: "gateway"}
	var ranges []netip.Prefix
	for _, n := range p.Nodes {
		for _, e := range n.ENIs {
			if !p.VPC.Contains(e.Addr.Addr()) || !p.VPC.Contains(e.PodRange.Addr()) {
				t.Errorf("%s: %s / %s outside VPC %s", e.ID, e.Addr, e.PodRange, p.VPC)
			}
			if o, dup := seen[e.Addr.Addr()]; dup {
				t.Errorf("%s: address %s also used by %s", e.ID, e.Addr.Addr(), o)
			}
			seen[e.Addr.Addr()] = e.ID
			for _, r := range ranges {
				if r.Overlaps(e.PodRange) {
					t.Errorf("%s: pod range %s overlaps %s", e.ID, e.PodRange, r)
				}
			}
			ranges = append(ranges, e.PodRange)
		}
	}
	for a, owner := range seen {
		for _, r := range ranges {
			if r.Contains(a) {
				t.Errorf("address %s of %s is inside pod range %s", a, owner, r)
			}
		}
	}
}

func TestConfigValidate(t *testing.T) {
	for _, c := range []struct {
		name    string
		mutate  func(*Config)
		wantErr bool
	}{
		{"default", func(*Config) {}, false},
		{"zero nodes", func(c *Config) { c.Nodes = 0 }, true},
		{"too many nodes", func(c *Config) { c.Nodes = 201 }, true},
		{"root state dir", func(c *Config) { c.StateDir = "/" }, true},
		{"no timeout", func(c *Config) { c.Timeout = 0 }, true},
		{"kube-proxy", func(c *Config) { c.KubeProxy = true }, false},
		{"kube-proxy without kubelets", func(c *Config) { c.KubeProxy, c.Kubelets, c.Localcloud = true, false, false }, true},
		// Cluster DNS is on by default and simply left out without kubelets.
		{"no kubelets, cluster DNS on", func(c *Config) { c.Kubelets, c.Localcloud = false, false }, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := DefaultConfig()
			c.mutate(&cfg)
			if err := cfg.Validate(); (err != nil) != c.wantErr {
				t.Errorf("Validate() = %v, want error %v", err, c.wantErr)
			}
		})
	}
}

func TestSourceDestRuleset(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Nodes = 1
	got := srcDstRuleset(ownership(Plan(cfg)))
	want := `table bridge directlb_srcdst
delete table bridge directlb_srcdst
table bridge directlb_srcdst {
	chain prerouting {
		type filter hook prerouting priority -200; policy accept;
		ether type != ip accept
		iifname "host" ip saddr { 10.100.0.2 } accept
		iifname "host" counter drop
		iifname "cloud" ip saddr { 10.100.0.3, 198.51.100.0/24 } accept
		iifname "cloud" counter drop
		iifname "n1e0" ip saddr { 10.100.1.10, 10.100.1.64/26 } accept
		iifname "n1e0" counter drop
		iifname "n1e1" ip saddr { 10.100.1.11, 10.100.1.128/26 } accept
		iifname "n1e1" counter drop
	}
}
`
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("ruleset (-want +got):\n%s", diff)
	}
}

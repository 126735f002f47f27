package testbed

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
)

// Addresses of the test bed (docs/testbed.md).
var (
	VPCCIDR          = netip.MustParsePrefix("10.100.0.0/16")
	VPCGateway       = netip.MustParseAddr("10.100.0.1")
	HostAddr         = netip.MustParseAddr("10.100.0.2")
	CloudAddr        = netip.MustParseAddr("10.100.0.3")
	LoadBalancerCIDR = netip.MustParsePrefix("198.51.100.0/24")
	ServiceCIDR      = netip.MustParsePrefix("10.96.0.0/16")
)

const (
	apiServerPort  = 6443
	localcloudPort = 4566
	// localcloudAdminPort is localcloud's /admin and /metrics listener, on
	// the cloud namespace's loopback only: not reachable from a pod or node.
	localcloudAdminPort = 4567
	etcdClientURL       = "http://127.0.0.1:2379"
	etcdPeerURL         = "http://127.0.0.1:2380"
)

// TopologyFile is the name of the topology inside the state dir.
const TopologyFile = "topology.json"

// Plan computes the topology for cfg without touching the machine.
func Plan(cfg Config) *Topology {
	t := &Topology{
		StateDir:           cfg.StateDir,
		Kubeconfig:         filepath.Join(cfg.StateDir, "kubeconfig"),
		VPCKubeconfig:      filepath.Join(cfg.StateDir, "kubeconfig-vpc"),
		APIServer:          fmt.Sprintf("https://%s:%d", HostAddr, apiServerPort),
		VPC:                VPCCIDR,
		Gateway:            VPCGateway,
		VPCNetNS:           VPCNetNS,
		HostAddr:           HostAddr,
		ServiceCIDR:        ServiceCIDR,
		CgroupRoot:         CgroupRoot,
		SourceDestCheck:    cfg.SourceDestCheck,
		BinDir:             cfg.BinDir,
		ControlPlaneCgroup: filepath.Join(CgroupRoot, "control-plane"),
		CloudNetNS:         CloudNetNS,
		CloudAddr:          CloudAddr,
		CloudCgroup:        filepath.Join(CgroupRoot, "cloud"),
		LoadBalancerCIDR:   LoadBalancerCIDR,
	}
	if cfg.Localcloud {
		t.LocalcloudURL = fmt.Sprintf("http://%s:%d", CloudAddr, localcloudPort)
		t.LocalcloudAdminURL = fmt.Sprintf("http://127.0.0.1:%d", localcloudAdminPort)
	}
	for i := 1; i <= cfg.Nodes; i++ {
		name := fmt.Sprintf("node-%d", i)
		n := Node{
			Name:          name,
			NetNS:         NamePrefix + name,
			Cgroup:        filepath.Join(CgroupRoot, name),
			KubeletCgroup: filepath.Join(CgroupRoot, name, "kubelet"),
		}
		for idx := range 2 {
			host := byte(10 + idx)       // .10 primary, .11 secondary
			podBase := byte(64 + 64*idx) // .64/26 primary, .128/26 secondary
			n.ENIs = append(n.ENIs, ENI{
				ID:        fmt.Sprintf("eni-node%d-%d", i, idx),
				Device:    fmt.Sprintf("eth%d", idx),
				MAC:       vpcMAC(byte(i), host),
				Addr:      netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 100, byte(i), host}), VPCCIDR.Bits()),
				PodRange:  netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 100, byte(i), podBase}), 26),
				Gateway:   VPCGateway,
				DeviceIdx: idx,
			})
		}
		if cfg.Kubelets {
			planRuntime(t, &n)
		}
		t.Nodes = append(t.Nodes, n)
	}
	return t
}

// vpcMAC is the fixed MAC of the VPC port with address 10.100.<a>.<b>:
// locally administered 02:d1 followed by the address's four bytes in hex.
func vpcMAC(a, b byte) string {
	return fmt.Sprintf("02:d1:0a:64:%02x:%02x", a, b)
}

// vpcPortName is the name of the bridge port, inside the VPC namespace, of
// a node's ENI: "n<node>e<idx>".
func vpcPortName(node, idx int) string {
	return fmt.Sprintf("n%de%d", node, idx)
}

// Save writes the topology to <StateDir>/topology.json.
func (t *Topology) Save() error {
	b, err := json.MarshalIndent(t, "", "  ")
	if err != nil {
		return fmt.Errorf("encode topology: %w", err)
	}
	p := filepath.Join(t.StateDir, TopologyFile)
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write topology: %w", err)
	}
	if err := os.Rename(tmp, p); err != nil {
		return fmt.Errorf("write topology: %w", err)
	}
	return nil
}

// Load reads a topology written by 'up' from a state dir or a topology.json
// path.
func Load(path string) (*Topology, error) {
	if st, err := os.Stat(path); err == nil && st.IsDir() {
		path = filepath.Join(path, TopologyFile)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read topology: %w", err)
	}
	var t Topology
	if err := json.Unmarshal(b, &t); err != nil {
		return nil, fmt.Errorf("decode topology %s: %w", path, err)
	}
	return &t, nil
}

// Node returns the node with the given name.
func (t *Topology) Node(name string) (*Node, bool) {
	for i := range t.Nodes {
		if t.Nodes[i].Name == name {
			return &t.Nodes[i], true
		}
	}
	return nil, false
}

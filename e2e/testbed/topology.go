package testbed

import "net/netip"

// Topology is the test bed's layout as 'up' made it. It is written as JSON to
// <state dir>/topology.json so that other processes (the kubelets' tests,
// tests, 'down') read the same picture.
type Topology struct {
	// StateDir holds the topology, kubeconfig, certificates, logs, pid files
	// and per-node state.
	StateDir string `json:"stateDir"`
	// Kubeconfig is the admin kubeconfig (cluster-admin, client certificate).
	Kubeconfig string `json:"kubeconfig"`
	// APIServer is the apiserver's URL as pods and the host reach it.
	APIServer string `json:"apiServer"`
	// VPC is the VPC's CIDR; Gateway is the VPC router's address on it.
	VPC     netip.Prefix `json:"vpc"`
	Gateway netip.Addr   `json:"gateway"`
	// VPCNetNS is the name of the network namespace that holds the VPC
	// bridge (a file under /run/netns).
	VPCNetNS string `json:"vpcNetns"`
	// HostAddr is the host's own address on the VPC.
	HostAddr netip.Addr `json:"hostAddr"`
	// ServiceCIDR is the apiserver's --service-cluster-ip-range.
	ServiceCIDR netip.Prefix `json:"serviceCIDR"`
	// CgroupRoot is the cgroup v2 directory under which every node has a
	// subtree (e.g. /sys/fs/cgroup/unified/directlb).
	CgroupRoot string `json:"cgroupRoot"`
	// SourceDestCheck is whether the VPC drops frames whose source address
	// is not owned by the ENI they came from.
	SourceDestCheck bool   `json:"sourceDestCheck"`
	Nodes           []Node `json:"nodes"`

	// VPCKubeconfig is the same admin identity as Kubeconfig, but its server
	// is APIServer (https://10.100.0.2:6443), which also answers from inside
	// the node, pod and cloud namespaces.
	VPCKubeconfig string `json:"vpcKubeconfig"`
	// BinDir holds the Kubernetes binaries and the project's binaries.
	BinDir string `json:"binDir"`
	// ControlPlaneCgroup holds etcd, kube-apiserver, kube-controller-manager
	// and kube-scheduler.
	ControlPlaneCgroup string `json:"controlPlaneCgroup"`
	// CloudNetNS is the namespace of the cloud (localcloud and its load
	// balancer addresses); CloudAddr is its address on the VPC.
	CloudNetNS string     `json:"cloudNetns"`
	CloudAddr  netip.Addr `json:"cloudAddr"`
	// CloudCgroup holds localcloud.
	CloudCgroup string `json:"cloudCgroup"`
	// LoadBalancerCIDR is where load-balancer addresses come from; the host
	// and the VPC route it to CloudAddr.
	LoadBalancerCIDR netip.Prefix `json:"loadBalancerCIDR"`
	// LocalcloudURL is localcloud's API endpoint, empty when 'up' did not
	// start localcloud.
	LocalcloudURL string `json:"localcloudURL,omitempty"`
	// LocalcloudAdminURL is localcloud's /admin (fault injection, ENI
	// ownership, state) and /metrics, on the loopback of CloudNetNS: reach
	// it from inside that namespace (nsenter --net=/run/netns/dlb-cloud).
	// Pods and nodes cannot: /admin on LocalcloudURL is 404.
	LocalcloudAdminURL string `json:"localcloudAdminURL,omitempty"`
}

// Node is one test-bed node: a network namespace with two ENIs on the VPC
// and a cgroup v2 subtree.
type Node struct {
	Name string `json:"name"`
	// NetNS is the name of the node's network namespace (under /run/netns).
	NetNS string `json:"netns"`
	// Cgroup is the node's cgroup v2 directory; pods go in children of it.
	Cgroup string `json:"cgroup"`
	// ENIs: index 0 is the primary ENI (eth0, holds the node's InternalIP),
	// index 1 the secondary (eth1).
	ENIs []ENI `json:"enis"`
	// KubeletCgroup holds the node's kubelet and containerd, a child of
	// Cgroup.
	KubeletCgroup string `json:"kubeletCgroup"`
	// Runtime is set when the node runs a real kubelet and containerd.
	Runtime *NodeRuntime `json:"runtime,omitempty"`
}

// ENI is one elastic network interface of a node.
type ENI struct {
	ID        string       `json:"id"`        // e.g. eni-node1-0
	Device    string       `json:"device"`    // eth0, eth1 inside the node netns
	MAC       string       `json:"mac"`       // fixed, so the VPC can check sources
	Addr      netip.Prefix `json:"addr"`      // the ENI's primary address with the VPC prefix length
	PodRange  netip.Prefix `json:"podRange"`  // secondary addresses this ENI may give to pods
	Gateway   netip.Addr   `json:"gateway"`   // the subnet's router
	DeviceIdx int          `json:"deviceIdx"` // 0 primary, 1 secondary
}

package cni_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/directlb/directlb/internal/namedns"
	"github.com/directlb/directlb/internal/netnstest"
	"github.com/directlb/directlb/internal/privileged"
	"github.com/directlb/directlb/pkg/cloud"
	"github.com/directlb/directlb/pkg/cloud/fake"
	"github.com/directlb/directlb/pkg/cni"
)

var (
	mac0 = net.HardwareAddr{0x02, 0xd1, 0, 0, 1, 0}
	mac1 = net.HardwareAddr{0x02, 0xd1, 0, 0, 1, 1}
	seq  atomic.Int32
)

// node is a small VPC of the test's own: a node namespace with two ENIs
// whose devices carry the cloud's MACs (eth0 a veth to nowhere, eth1 a veth into a
// "vpc" namespace that stands in for the subnet, 10.0.1.1/24 there), and
// the fake cloud that knows them. The plugin runs in the node namespace,
// as the runtime runs it.
type node struct {
	name, vpc string
	h, vpcH   *netlink.Handle
	cloud     *fake.ENIs
	dataDir   string
}

func newNode(t *testing.T) *node {
	t.Helper()
	return newNodeWith(t, mac0, mac1, "10.0.0.10/24", "10.0.1.11/24")
}

// newNodeWith is newNode with the ENI devices' MACs and addresses given.
func newNodeWith(t *testing.T, mac0, mac1 net.HardwareAddr, addr0, addr1 string) *node {
	t.Helper()
	privileged.Require(t, "creates network namespaces, veths and proxy neighbours")
	base := fmt.Sprintf("cnitest-%d-%d", os.Getpid(), seq.Add(1))
	n := &node{name: base + "-node", vpc: base + "-vpc", dataDir: t.TempDir()}
	n.h, n.vpcH = netnstest.New(t, n.name), netnstest.New(t, n.vpc)

	// This kernel may lack dummy links: eth0 is a veth whose peer, in the
	// node namespace, stays down.
	must(t, n.h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0", HardwareAddr: mac0}, PeerName: "eth0-peer"}))
	eth0, err := n.h.LinkByName("eth0")
	must(t, err)
	must(t, n.h.LinkSetUp(eth0))
	must(t, n.h.AddrAdd(eth0, addr(addr0)))
	vpcNS, err := namedns.Open(n.vpc)
	must(t, err)
	defer vpcNS.Close()
	must(t, n.h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth1", HardwareAddr: mac1}, PeerName: "vpc0", PeerNamespace: netlink.NsFd(int(vpcNS))}))
	eth1, err := n.h.LinkByName("eth1")
	must(t, err)
	must(t, n.h.LinkSetUp(eth1))
	must(t, n.h.AddrAdd(eth1, addr(addr1)))
	vpc0, err := n.vpcH.LinkByName("vpc0")
	must(t, err)
	must(t, n.vpcH.LinkSetUp(vpc0))
	must(t, n.vpcH.AddrAdd(vpc0, addr("10.0.1.1/24")))

	eni := func(i int, mac net.HardwareAddr, primary, pool string) fake.ENISpec {
		return fake.ENISpec{NetworkInterface: cloud.NetworkInterface{
			ID: fmt.Sprintf("eni-%d", i), InstanceID: "node-1", DeviceIndex: i, MAC: mac.String(),
			PrivateIP: netip.MustParseAddr(primary),
		}, Pool: netip.MustParsePrefix(pool)}
	}
	n.cloud = fake.NewENIs(eni(0, mac0, "10.0.0.10", "10.0.0.64/29"), eni(1, mac1, "10.0.1.11", "10.0.1.64/29"))
	return n
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func addr(p string) *netlink.Addr {
	a, err := netlink.ParseAddr(p)
	if err != nil {
		panic(err)
	}
	return a
}

// conf is the plugin's conflist entry as the runtime passes it.
func (n *node) conf(warm, first int) []byte { return confIn(n.dataDir, warm, first) }

func confIn(dir string, warm, first int) []byte {
	return fmt.Appendf(nil, `{"cniVersion":"1.1.0","name":"directlb","type":"directlb-cni","instanceID":"node-1",
		"aws":{"region":"us-east-1","endpoint":"http://127.0.0.1:9"},"dataDir":%q,"warmIPTarget":%d,"firstENI":%d,
		"logFile":%q,"logLevel":"debug"}`, dir, warm, first, filepath.Join(dir, "cni.log"))
}

// pod is a pod's sandbox: its network namespace and the CNI arguments.
func (n *node) pod(t *testing.T, name, containerID string) *skel.CmdArgs {
	t.Helper()
	ns := fmt.Sprintf("%s-pod-%d", n.name, seq.Add(1))
	netnstest.New(t, ns)
	return &skel.CmdArgs{ContainerID: containerID, Netns: namedns.Path(ns), IfName: "eth0",
		Args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=" + name + ";K8S_POD_UID=u-" + name}
}

func (n *node) pluginMain(stdin []byte) error {
	if n.cloud == nil {
		return pluginMain(stdin, nil)
	}
	return pluginMain(stdin, n.cloud)
}

// pluginMain is the binary's main through skel, with stdin the
// configuration and c for EC2 (nil: pkg/cloud/aws, as the binary).
func pluginMain(stdin []byte, c cloud.NetworkInterfaces) error {
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	if _, err := w.Write(stdin); err != nil {
		return err
	}
	w.Close()
	old := os.Stdin
	os.Stdin = r
	defer func() { os.Stdin = old; r.Close() }()
	p := &cni.Plugin{}
	if c != nil {
		p.NewCloud = func(context.Context, *cni.Settings) (cloud.NetworkInterfaces, error) { return c, nil }
	}
	if e := skel.PluginMainFuncsWithError(p.Funcs(), cni.Versions, cni.About); e != nil {
		return e
	}
	return nil
}

// inNode runs fn in the node namespace with CNI_ARGS set.
func (n *node) inNode(t *testing.T, cniArgs string, fn func() error) error {
	t.Helper()
	t.Setenv("CNI_ARGS", cniArgs)
	return namedns.Do(n.name, fn)
}

func (n *node) add(t *testing.T, args *skel.CmdArgs, conf []byte) (*types100.Result, error) {
	t.Helper()
	args.StdinData = conf
	var res types.Result
	err := n.inNode(t, args.Args, func() error {
		var err error
		res, _, err = testutils.CmdAddWithArgs(args, func() error { return n.pluginMain(conf) })
		return err
	})
	if err != nil {
		return nil, err
	}
	return types100.NewResultFromResult(res)
}

func (n *node) check(t *testing.T, args *skel.CmdArgs, conf []byte, prev *types100.Result) error {
	t.Helper()
	if prev != nil {
		conf = withPrevResult(t, conf, prev)
	}
	return n.inNode(t, args.Args, func() error {
		return testutils.CmdCheckWithArgs(args, func() error { return n.pluginMain(conf) })
	})
}

func (n *node) del(t *testing.T, args *skel.CmdArgs, conf []byte) error {
	t.Helper()
	return n.inNode(t, args.Args, func() error {
		return testutils.CmdDelWithArgs(args, func() error { return n.pluginMain(conf) })
	})
}

func withPrevResult(t *testing.T, conf []byte, prev *types100.Result) []byte {
	t.Helper()
	var m map[string]any
	must(t, json.Unmarshal(conf, &m))
	b, err := json.Marshal(prev)
	must(t, err)
	var p map[string]any
	must(t, json.Unmarshal(b, &p))
	m["prevResult"] = p
	out, err := json.Marshal(m)
	must(t, err)
	return out
}

func sysctl(t *testing.T, ns, key string) string {
	t.Helper()
	var v []byte
	must(t, namedns.Do(ns, func() error {
		var err error
		v, err = os.ReadFile("/proc/sys/net/" + key)
		return err
	}))
	return strings.TrimSpace(string(v))
}

// hostVeths lists the plugin's veths in the node namespace.
func (n *node) hostVeths(t *testing.T) []string {
	t.Helper()
	links, err := n.h.LinkList()
	must(t, err)
	var out []string
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, "dlb") {
			out = append(out, l.Attrs().Name)
		}
	}
	return out
}

func (n *node) proxied(t *testing.T, dev string) []string {
	t.Helper()
	l, err := n.h.LinkByName(dev)
	must(t, err)
	ns, err := n.h.NeighProxyList(l.Attrs().Index, unix.AF_INET)
	must(t, err)
	var out []string
	for _, e := range ns {
		if e.LinkIndex == l.Attrs().Index {
			out = append(out, e.IP.String())
		}
	}
	slices.Sort(out)
	return out
}

// serveOnce listens on ip:port inside the pod and answers one connection
// with "hello".
func serveOnce(t *testing.T, netnsPath, ip string) {
	t.Helper()
	var ln net.Listener
	must(t, namedns.Do(filepath.Base(netnsPath), func() error {
		var err error
		ln, err = net.Listen("tcp", net.JoinHostPort(ip, "8080"))
		return err
	}))
	t.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err == nil {
			_, _ = c.Write([]byte("hello"))
			c.Close()
		}
	}()
}

func (n *node) dialFromVPC(t *testing.T, ip string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	c, err := namedns.Dialer(n.vpc)(ctx, "tcp", net.JoinHostPort(ip, "8080"))
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(c)
	return string(b), err
}

package agent

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	kfake "k8s.io/client-go/kubernetes/fake"

	"github.com/directlb/directlb/internal/privileged"
	"github.com/directlb/directlb/pkg/cloud"
	cloudaws "github.com/directlb/directlb/pkg/cloud/aws"
	"github.com/directlb/directlb/pkg/eni"
	"github.com/directlb/directlb/pkg/localcloud"
	"github.com/directlb/directlb/pkg/localcloud/faults"
	"github.com/directlb/directlb/pkg/localcloud/store"
)

var addrCmp = cmp.Comparer(func(a, b netip.Addr) bool { return a == b })
var prefixCmp = cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })

func a(s string) netip.Addr   { return netip.MustParseAddr(s) }
func p(s string) netip.Prefix { return netip.MustParsePrefix(s) }

// nodeLinks are node-1's links as the test bed makes them.
var nodeLinks = []eni.Link{
	{Name: "lo", Addrs: nil},
	{Name: "eth0", MAC: "02:d1:00:00:01:00", Addrs: []netip.Prefix{p("10.100.1.10/16")}},
	{Name: "eth1", MAC: "02:d1:00:00:01:01", Addrs: []netip.Prefix{p("10.100.1.11/16")}},
	{Name: "dlb1234abcd", MAC: "0a:00:00:00:00:09", Addrs: []netip.Prefix{p("169.254.1.1/32")}},
}

func TestMapCloudENIs(t *testing.T) {
	primary := cloud.NetworkInterface{ID: "eni-node1-0", DeviceIndex: 0, MAC: "02:D1:00:00:01:00", PrivateIP: a("10.100.1.10"), SecondaryIPs: []netip.Addr{a("10.100.1.64")}}
	secondary := cloud.NetworkInterface{ID: "eni-node1-1", DeviceIndex: 1, MAC: "02:d1:00:00:01:01", PrivateIP: a("10.100.1.11"), SecondaryIPs: []netip.Addr{a("10.100.1.128"), a("10.100.1.129")}}
	eth0 := eni.ENI{Index: 0, Device: "eth0", Address: p("10.100.1.10/16"), Gateway: a("10.100.0.1")}
	eth1 := eni.ENI{Index: 1, Device: "eth1", Address: p("10.100.1.11/16"), Gateway: a("10.100.0.1")}
	for _, tc := range []struct {
		name    string
		nis     []cloud.NetworkInterface
		links   []eni.Link
		devices []string
		gateway netip.Addr
		want    ENIMapping
	}{
		{
			name: "both ENIs by MAC (any case), owners from secondary addresses",
			nis:  []cloud.NetworkInterface{secondary, primary},
			want: ENIMapping{
				ENIs:      []eni.ENI{eth0, eth1},
				Owners:    map[netip.Addr]string{a("10.100.1.64"): "eth0", a("10.100.1.128"): "eth1", a("10.100.1.129"): "eth1"},
				Unmatched: map[string]string{},
			},
		},
		{
			name: "device index from the cloud, not the link name",
			nis:  []cloud.NetworkInterface{{ID: "eni-x", DeviceIndex: 3, MAC: "02:d1:00:00:01:01", PrivateIP: a("10.100.1.11")}},
			want: ENIMapping{
				ENIs:      []eni.ENI{{Index: 3, Device: "eth1", Address: p("10.100.1.11/16"), Gateway: a("10.100.0.1")}},
				Owners:    map[netip.Addr]string{},
				Unmatched: map[string]string{},
			},
		},
		{
			name: "an ENI not attached here and one whose link lacks its address are left out",
			nis: []cloud.NetworkInterface{primary,
				{ID: "eni-elsewhere", DeviceIndex: 2, MAC: "02:d1:00:00:09:09", PrivateIP: a("10.100.9.10"), SecondaryIPs: []netip.Addr{a("10.100.9.128")}},
				{ID: "eni-noaddr", DeviceIndex: 1, MAC: "02:d1:00:00:01:01", PrivateIP: a("10.100.1.99")}},
			want: ENIMapping{
				ENIs:   []eni.ENI{eth0},
				Owners: map[netip.Addr]string{a("10.100.1.64"): "eth0"},
				Unmatched: map[string]string{
					"eni-elsewhere": "no local link with MAC 02:d1:00:00:09:09",
					"eni-noaddr":    "link eth1 does not carry the primary address 10.100.1.99",
				},
			},
		},
		{
			name:    "--eni-devices limits the links, --eni-gateway wins",
			nis:     []cloud.NetworkInterface{primary, secondary},
			devices: []string{"eth1"},
			gateway: a("10.100.0.254"),
			want: ENIMapping{
				ENIs:      []eni.ENI{{Index: 1, Device: "eth1", Address: p("10.100.1.11/16"), Gateway: a("10.100.0.254")}},
				Owners:    map[netip.Addr]string{a("10.100.1.128"): "eth1", a("10.100.1.129"): "eth1"},
				Unmatched: map[string]string{"eni-node1-0": "no local link with MAC 02:D1:00:00:01:00"},
			},
		},
		{
			name: "no ENIs",
			want: ENIMapping{Owners: map[netip.Addr]string{}, Unmatched: map[string]string{}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			links := tc.links
			if links == nil {
				links = nodeLinks
			}
			got := MapCloudENIs(tc.nis, links, tc.devices, tc.gateway, a("10.100.0.1"))
			if diff := cmp.Diff(tc.want, got, addrCmp, prefixCmp); diff != "" {
				t.Errorf("MapCloudENIs (-want +got):\n%s", diff)
			}
		})
	}
}

func TestInstanceIDFromProviderID(t *testing.T) {
	for in, want := range map[string]string{
		"aws:///us-east-1a/i-0123456789abcdef0": "i-0123456789abcdef0",
		"directlb-testbed:///node-1":            "node-1",
		"":                                      "",
		"plain":                                 "plain",
	} {
		if got := InstanceIDFromProviderID(in); got != want {
			t.Errorf("InstanceIDFromProviderID(%q) = %q, want %q", in, got, want)
		}
	}
}

const (
	agentTestKey    = "AKIDAGENT"
	agentTestSecret = "agent-secret"
)

// testCloud runs localcloud's API (no datapath) with node-1's ENIs and
// returns it with an EC2 client on it.
func testCloud(t *testing.T) (*localcloud.Server, *cloudaws.Client) {
	t.Helper()
	cfg := localcloud.DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.StateDir = ""
	cfg.Datapath = false
	cfg.AccessKeyID, cfg.SecretAccessKey = agentTestKey, agentTestSecret
	srv, err := localcloud.New(cfg, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	for _, ni := range []store.NetworkInterface{
		{ID: "eni-node1-0", InstanceID: "node-1", DeviceIndex: 0, MAC: "02:d1:00:00:01:00", SubnetCIDR: "10.100.0.0/16", PrivateIP: "10.100.1.10", Pool: "10.100.1.64/26"},
		{ID: "eni-node1-1", InstanceID: "node-1", DeviceIndex: 1, MAC: "02:d1:00:00:01:01", SubnetCIDR: "10.100.0.0/16", PrivateIP: "10.100.1.11", Pool: "10.100.1.128/26"},
		{ID: "eni-node9-0", InstanceID: "node-9", DeviceIndex: 0, MAC: "02:d1:00:00:09:00", SubnetCIDR: "10.100.0.0/16", PrivateIP: "10.100.9.10"},
	} {
		if _, err := srv.Store().PutNetworkInterface(ni); err != nil {
			t.Fatal(err)
		}
	}
	return srv, newTestEC2(t, "http://"+srv.Addr())
}

func newTestEC2(t *testing.T, endpoint string) *cloudaws.Client {
	t.Helper()
	ac := cloudaws.DefaultConfig()
	ac.Region, ac.Endpoint = "us-east-1", endpoint
	ac.MaxAttempts, ac.MaxBackoff = 3, 10*time.Millisecond
	ac.Credentials = credentials.NewStaticCredentialsProvider(agentTestKey, agentTestSecret, "")
	c, err := cloudaws.New(context.Background(), ac)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestResolveENIs(t *testing.T) {
	ctx := context.Background()
	srv, ec2 := testCloud(t)
	if _, err := ec2.AssignPrivateIPs(ctx, "eni-node1-1", []netip.Addr{a("10.100.1.130")}, 0); err != nil {
		t.Fatal(err)
	}
	// A client for a port nothing listens on: the cloud is down.
	down := newTestEC2(t, "http://127.0.0.1:1")

	linkENIs := []eni.ENI{
		{Index: 0, Device: "eth0", Address: p("10.100.1.10/16"), Gateway: a("10.100.0.1")},
		{Index: 1, Device: "eth1", Address: p("10.100.1.11/16"), Gateway: a("10.100.0.1")},
	}
	proxyOwned := map[netip.Addr]string{a("10.100.1.140"): "eth1"}
	for _, tc := range []struct {
		name       string
		cfg        ENISourceConfig
		wantSource string
		wantReason string // substring; "" means none
		wantErr    string
		wantOwners map[netip.Addr]string
	}{
		{name: "links asked for", cfg: ENISourceConfig{Source: ENISourceLinks, Cloud: ec2, InstanceID: "node-1"},
			wantSource: ENISourceLinks, wantOwners: proxyOwned},
		{name: "auto, EC2 answers", cfg: ENISourceConfig{Source: ENISourceAuto, Cloud: ec2, InstanceID: "node-1"},
			wantSource: ENISourceEC2, wantOwners: map[netip.Addr]string{a("10.100.1.130"): "eth1"}},
		{name: "ec2, EC2 answers", cfg: ENISourceConfig{Source: ENISourceEC2, Cloud: ec2, InstanceID: "node-1"},
			wantSource: ENISourceEC2, wantOwners: map[netip.Addr]string{a("10.100.1.130"): "eth1"}},
		{name: "auto, no cloud configured", cfg: ENISourceConfig{Source: ENISourceAuto, NoCloudReason: "neither --aws-endpoint nor a region"},
			wantSource: ENISourceLinks, wantReason: "no cloud configured: neither --aws-endpoint nor a region", wantOwners: proxyOwned},
		{name: "auto, no instance ID", cfg: ENISourceConfig{Source: ENISourceAuto, Cloud: ec2, NoInstanceReason: "Node node-1 has no spec.providerID"},
			wantSource: ENISourceLinks, wantReason: "no instance ID: Node node-1 has no spec.providerID", wantOwners: proxyOwned},
		{name: "auto, ENIs of another instance only", cfg: ENISourceConfig{Source: ENISourceAuto, Cloud: ec2, InstanceID: "node-9"},
			wantSource: ENISourceLinks, wantReason: "instance node-9: EC2 lists 1 ENIs, none on a local link", wantOwners: proxyOwned},
		{name: "auto, cloud down", cfg: ENISourceConfig{Source: ENISourceAuto, Cloud: down, InstanceID: "node-1"},
			wantSource: ENISourceLinks, wantReason: "describe network interfaces of instance node-1", wantOwners: proxyOwned},
		{name: "ec2, cloud down", cfg: ENISourceConfig{Source: ENISourceEC2, Cloud: down, InstanceID: "node-1"},
			wantErr: "describe network interfaces of instance node-1"},
		{name: "ec2, no cloud", cfg: ENISourceConfig{Source: ENISourceEC2, NoCloudReason: "no region"},
			wantErr: "no cloud configured: no region"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.Links, tc.cfg.DefaultGateway, tc.cfg.Logger = nodeLinks, a("10.100.0.1"), zaptest.NewLogger(t)
			tc.cfg.Timeout = 5 * time.Second
			got, err := ResolveENIs(ctx, tc.cfg, func([]eni.ENI) func() (map[netip.Addr]string, error) {
				return func() (map[netip.Addr]string, error) { return proxyOwned, nil }
			})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one with %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.Source != tc.wantSource {
				t.Errorf("source %q, want %q", got.Source, tc.wantSource)
			}
			if (tc.wantReason == "") != (got.Reason == "") || !strings.Contains(got.Reason, tc.wantReason) {
				t.Errorf("reason %q, want one with %q", got.Reason, tc.wantReason)
			}
			if diff := cmp.Diff(linkENIs, got.ENIs, addrCmp, prefixCmp); diff != "" {
				t.Errorf("ENIs (-want +got):\n%s", diff)
			}
			owners, err := got.Owners()
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.wantOwners, owners, addrCmp); diff != "" {
				t.Errorf("owners (-want +got):\n%s", diff)
			}
		})
	}

	// With EC2 as the source, owners follow the cloud's assignments, and
	// keep the last answer while EC2 fails.
	src, err := ResolveENIs(ctx, ENISourceConfig{Source: ENISourceEC2, Cloud: ec2, InstanceID: "node-1", Links: nodeLinks, Logger: zaptest.NewLogger(t)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ec2.AssignPrivateIPs(ctx, "eni-node1-0", []netip.Addr{a("10.100.1.64")}, 0); err != nil {
		t.Fatal(err)
	}
	if err := ec2.UnassignPrivateIPs(ctx, "eni-node1-1", []netip.Addr{a("10.100.1.130")}); err != nil {
		t.Fatal(err)
	}
	if _, err := ec2.AssignPrivateIPs(ctx, "eni-node1-1", []netip.Addr{a("10.100.1.131")}, 0); err != nil {
		t.Fatal(err)
	}
	want := map[netip.Addr]string{a("10.100.1.64"): "eth0", a("10.100.1.131"): "eth1"}
	owners, err := src.Owners()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, owners, addrCmp); diff != "" {
		t.Errorf("owners after assign/unassign (-want +got):\n%s", diff)
	}
	srv.Faults().Set(faults.Spec{Rules: map[string]faults.Rule{"DescribeNetworkInterfaces": {ServerError: 1}}})
	owners, err = src.Owners()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, owners, addrCmp); diff != "" {
		t.Errorf("owners while EC2 fails: not the last answer (-want +got):\n%s", diff)
	}
	if n := srv.Faults().Counts()["DescribeNetworkInterfaces"]["serverError"]; n == 0 {
		t.Error("the failing DescribeNetworkInterfaces was not called")
	}
}

// addENILinks adds eth<i> with macs[i] and 10.100.1.<10+i>/16 (a veth
// whose peer stays in the namespace), up.
func addENILinks(t *testing.T, h *netlink.Handle, macs ...string) {
	t.Helper()
	for i, mac := range macs {
		hw, _ := net.ParseMAC(mac)
		dev := fmt.Sprintf("eth%d", i)
		if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: dev, HardwareAddr: hw}, PeerName: fmt.Sprintf("peer%d", i)}); err != nil {
			t.Fatal(err)
		}
		for _, d := range []string{dev, fmt.Sprintf("peer%d", i)} {
			l, _ := h.LinkByName(d)
			if err := h.LinkSetUp(l); err != nil {
				t.Fatal(err)
			}
		}
		l, _ := h.LinkByName(dev)
		if err := h.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: net.IPv4(10, 100, 1, byte(10+i)), Mask: net.CIDRMask(16, 32)}}); err != nil {
			t.Fatal(err)
		}
	}
}

// TestENIRoutingFromEC2Privileged maps localcloud's ENIs to the links of
// a namespace of its own by MAC, and routes pods by the addresses EC2
// says each ENI holds: moving an address between ENIs in the cloud moves
// the pod's rule.
func TestENIRoutingFromEC2Privileged(t *testing.T) {
	privileged.Require(t, "creates a network namespace")
	ctx := context.Background()
	_, ec2 := testCloud(t)
	h := newTestNetns(t, "dlbt-agent-ec2")
	addENILinks(t, h, "02:d1:00:00:01:00", "02:d1:00:00:01:01")
	if _, err := ec2.AssignPrivateIPs(ctx, "eni-node1-1", []netip.Addr{a("10.100.1.130")}, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := ec2.AssignPrivateIPs(ctx, "eni-node1-0", []netip.Addr{a("10.100.1.64")}, 0); err != nil {
		t.Fatal(err)
	}

	links, defGw, err := eni.Links(h)
	if err != nil {
		t.Fatal(err)
	}
	src, err := ResolveENIs(ctx, ENISourceConfig{Source: ENISourceAuto, Cloud: ec2, InstanceID: "node-1", Links: links, DefaultGateway: defGw, Logger: zaptest.NewLogger(t)},
		func(enis []eni.ENI) func() (map[netip.Addr]string, error) {
			return func() (map[netip.Addr]string, error) { return eni.ProxyOwners(h, enis) }
		})
	if err != nil {
		t.Fatal(err)
	}
	if src.Source != ENISourceEC2 {
		t.Fatalf("source %q (%s), want ec2", src.Source, src.Reason)
	}
	wantENIs := []eni.ENI{
		{Index: 0, Device: "eth0", Address: p("10.100.1.10/16"), Gateway: a("10.100.0.1")},
		{Index: 1, Device: "eth1", Address: p("10.100.1.11/16"), Gateway: a("10.100.0.1")},
	}
	if diff := cmp.Diff(wantENIs, src.ENIs, addrCmp, prefixCmp); diff != "" {
		t.Fatalf("ENIs from EC2 and links (-want +got):\n%s", diff)
	}
	r, err := eni.New(eni.Config{Handle: h, ENIs: src.ENIs})
	if err != nil {
		t.Fatal(err)
	}
	client := kfake.NewClientset(pod("a", "10.100.1.130", nil), pod("b", "10.100.1.64", nil), pod("not-in-ec2", "10.100.1.140", nil))
	er := &ENIRouting{Client: client, NodeName: "node-1", Router: r, Resync: 100 * time.Millisecond, Logger: zaptest.NewLogger(t), Owners: src.Owners}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- er.Run(rctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		if err := eni.Cleanup(h); err != nil {
			t.Errorf("Cleanup: %v", err)
		}
	}()
	waitFromRules(t, h, []string{"from 10.100.1.130/32 lookup 101", "from 10.100.1.64/32 lookup 100"})

	// The cloud moves 10.100.1.130 to the primary ENI: the next resync
	// follows.
	if _, err := ec2.AssignPrivateIPs(ctx, "eni-node1-0", []netip.Addr{a("10.100.1.140")}, 0); err != nil {
		t.Fatal(err)
	}
	if err := ec2.UnassignPrivateIPs(ctx, "eni-node1-1", []netip.Addr{a("10.100.1.130")}); err != nil {
		t.Fatal(err)
	}
	if _, err := ec2.AssignPrivateIPs(ctx, "eni-node1-0", []netip.Addr{a("10.100.1.130")}, 0); err != nil {
		t.Fatal(err)
	}
	waitFromRules(t, h, []string{"from 10.100.1.130/32 lookup 100", "from 10.100.1.140/32 lookup 100", "from 10.100.1.64/32 lookup 100"})
}

package eni

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/zap/zaptest"

	"github.com/directlb/directlb/pkg/cloud"
	"github.com/directlb/directlb/pkg/localcloud/faults"
	"github.com/directlb/directlb/pkg/localcloud/localcloudtest"
)

var addrCmp = cmp.Comparer(func(a, b netip.Addr) bool { return a == b })
var prefixCmp = cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })

func a(s string) netip.Addr   { return netip.MustParseAddr(s) }
func p(s string) netip.Prefix { return netip.MustParsePrefix(s) }

// nodeLinks are node-1's links as the test bed makes them.
var nodeLinks = []Link{
	{Name: "lo", Addrs: nil},
	{Name: "eth0", MAC: "02:d1:00:00:01:00", Addrs: []netip.Prefix{p("10.100.1.10/16")}},
	{Name: "eth1", MAC: "02:d1:00:00:01:01", Addrs: []netip.Prefix{p("10.100.1.11/16")}},
	{Name: "dlb1234abcd", MAC: "0a:00:00:00:00:09", Addrs: []netip.Prefix{p("169.254.1.1/32")}},
}

// fakeNode is a Node with fixed links and proxy neighbour owners.
type fakeNode struct {
	links  []Link
	defGw  netip.Addr
	owners map[netip.Addr]string
}

func (n fakeNode) Links() ([]Link, netip.Addr, error) { return n.links, n.defGw, nil }

func (n fakeNode) ProxyOwners([]ENI) (map[netip.Addr]string, error) { return n.owners, nil }

func TestMapCloud(t *testing.T) {
	primary := cloud.NetworkInterface{ID: "eni-node1-0", DeviceIndex: 0, MAC: "02:D1:00:00:01:00", PrivateIP: a("10.100.1.10"), SecondaryIPs: []netip.Addr{a("10.100.1.64")}}
	secondary := cloud.NetworkInterface{ID: "eni-node1-1", DeviceIndex: 1, MAC: "02:d1:00:00:01:01", PrivateIP: a("10.100.1.11"), SecondaryIPs: []netip.Addr{a("10.100.1.128"), a("10.100.1.129")}}
	eth0 := ENI{Index: 0, Device: "eth0", Address: p("10.100.1.10/16"), Gateway: a("10.100.0.1")}
	eth1 := ENI{Index: 1, Device: "eth1", Address: p("10.100.1.11/16"), Gateway: a("10.100.0.1")}
	for _, tc := range []struct {
		name    string
		nis     []cloud.NetworkInterface
		links   []Link
		devices []string
		gateway netip.Addr
		want    Mapping
	}{
		{
			name: "both ENIs by MAC (any case), owners from secondary addresses",
			nis:  []cloud.NetworkInterface{secondary, primary},
			want: Mapping{
				ENIs:      []ENI{eth0, eth1},
				Owners:    map[netip.Addr]string{a("10.100.1.64"): "eth0", a("10.100.1.128"): "eth1", a("10.100.1.129"): "eth1"},
				Unmatched: map[string]string{},
			},
		},
		{
			name: "device index from the cloud, not the link name",
			nis:  []cloud.NetworkInterface{{ID: "eni-x", DeviceIndex: 3, MAC: "02:d1:00:00:01:01", PrivateIP: a("10.100.1.11")}},
			want: Mapping{
				ENIs:      []ENI{{Index: 3, Device: "eth1", Address: p("10.100.1.11/16"), Gateway: a("10.100.0.1")}},
				Owners:    map[netip.Addr]string{},
				Unmatched: map[string]string{},
			},
		},
		{
			name: "an ENI not attached here and one whose link lacks its address are left out",
			nis: []cloud.NetworkInterface{primary,
				{ID: "eni-elsewhere", DeviceIndex: 2, MAC: "02:d1:00:00:09:09", PrivateIP: a("10.100.9.10"), SecondaryIPs: []netip.Addr{a("10.100.9.128")}},
				{ID: "eni-noaddr", DeviceIndex: 1, MAC: "02:d1:00:00:01:01", PrivateIP: a("10.100.1.99")}},
			want: Mapping{
				ENIs:   []ENI{eth0},
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
			want: Mapping{
				ENIs:      []ENI{{Index: 1, Device: "eth1", Address: p("10.100.1.11/16"), Gateway: a("10.100.0.254")}},
				Owners:    map[netip.Addr]string{a("10.100.1.128"): "eth1", a("10.100.1.129"): "eth1"},
				Unmatched: map[string]string{"eni-node1-0": "no local link with MAC 02:D1:00:00:01:00"},
			},
		},
		{
			name: "no ENIs",
			want: Mapping{Owners: map[netip.Addr]string{}, Unmatched: map[string]string{}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			links := tc.links
			if links == nil {
				links = nodeLinks
			}
			got := MapCloud(tc.nis, links, tc.devices, tc.gateway, a("10.100.0.1"))
			if diff := cmp.Diff(tc.want, got, addrCmp, prefixCmp); diff != "" {
				t.Errorf("MapCloud (-want +got):\n%s", diff)
			}
		})
	}
}

func TestResolve(t *testing.T) {
	ctx := context.Background()
	_, ec2 := localcloudtest.ENICloud(t)
	if _, err := ec2.AssignPrivateIPs(ctx, "eni-node1-1", []netip.Addr{a("10.100.1.130")}, 0); err != nil {
		t.Fatal(err)
	}
	// A client for a port nothing listens on: the cloud is down.
	down := localcloudtest.EC2Client(t, "http://127.0.0.1:1")

	linkENIs := []ENI{
		{Index: 0, Device: "eth0", Address: p("10.100.1.10/16"), Gateway: a("10.100.0.1")},
		{Index: 1, Device: "eth1", Address: p("10.100.1.11/16"), Gateway: a("10.100.0.1")},
	}
	proxyOwned := map[netip.Addr]string{a("10.100.1.140"): "eth1"}
	for _, tc := range []struct {
		name       string
		cfg        ResolveConfig
		wantSource string
		wantReason string // substring; "" means none
		wantErr    string
		wantOwners map[netip.Addr]string
	}{
		{name: "links asked for", cfg: ResolveConfig{Source: SourceLinks, Cloud: ec2, InstanceID: "node-1"},
			wantSource: SourceLinks, wantOwners: proxyOwned},
		{name: "auto, EC2 answers", cfg: ResolveConfig{Source: SourceAuto, Cloud: ec2, InstanceID: "node-1"},
			wantSource: SourceEC2, wantOwners: map[netip.Addr]string{a("10.100.1.130"): "eth1"}},
		{name: "ec2, EC2 answers", cfg: ResolveConfig{Source: SourceEC2, Cloud: ec2, InstanceID: "node-1"},
			wantSource: SourceEC2, wantOwners: map[netip.Addr]string{a("10.100.1.130"): "eth1"}},
		{name: "auto, no cloud configured", cfg: ResolveConfig{Source: SourceAuto, NoCloudReason: "neither --aws-endpoint nor a region"},
			wantSource: SourceLinks, wantReason: "no cloud configured: neither --aws-endpoint nor a region", wantOwners: proxyOwned},
		{name: "auto, no instance ID", cfg: ResolveConfig{Source: SourceAuto, Cloud: ec2, NoInstanceReason: "Node node-1 has no spec.providerID"},
			wantSource: SourceLinks, wantReason: "no instance ID: Node node-1 has no spec.providerID", wantOwners: proxyOwned},
		{name: "auto, ENIs of another instance only", cfg: ResolveConfig{Source: SourceAuto, Cloud: ec2, InstanceID: "node-9"},
			wantSource: SourceLinks, wantReason: "instance node-9: EC2 lists 1 ENIs, none on a local link", wantOwners: proxyOwned},
		{name: "auto, cloud down", cfg: ResolveConfig{Source: SourceAuto, Cloud: down, InstanceID: "node-1"},
			wantSource: SourceLinks, wantReason: "describe network interfaces of instance node-1", wantOwners: proxyOwned},
		{name: "ec2, cloud down", cfg: ResolveConfig{Source: SourceEC2, Cloud: down, InstanceID: "node-1"},
			wantErr: "describe network interfaces of instance node-1"},
		{name: "ec2, no cloud", cfg: ResolveConfig{Source: SourceEC2, NoCloudReason: "no region"},
			wantErr: "no cloud configured: no region"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.Node, tc.cfg.Logger = fakeNode{links: nodeLinks, defGw: a("10.100.0.1"), owners: proxyOwned}, zaptest.NewLogger(t)
			tc.cfg.Timeout = 5 * time.Second
			got, err := Resolve(ctx, tc.cfg)
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
}

// TestResolveEC2Owners: with EC2 as the source, owners follow the cloud's
// assignments, and keep the last answer while EC2 fails.
func TestResolveEC2Owners(t *testing.T) {
	ctx := context.Background()
	srv, ec2 := localcloudtest.ENICloud(t)
	if _, err := ec2.AssignPrivateIPs(ctx, "eni-node1-1", []netip.Addr{a("10.100.1.130")}, 0); err != nil {
		t.Fatal(err)
	}
	src, err := Resolve(ctx, ResolveConfig{Source: SourceEC2, Cloud: ec2, InstanceID: "node-1", Node: fakeNode{links: nodeLinks}, Logger: zaptest.NewLogger(t)})
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

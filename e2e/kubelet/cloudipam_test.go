package kubelet

import (
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/directlb/directlb/e2e/testbed"
	"github.com/directlb/directlb/pkg/cloud"
	"github.com/directlb/directlb/pkg/localcloud"
)

// TestCloudIPAM seeds an API-only localcloud with the planned test bed's
// ENIs the way 'dlb-testbed up --localcloud' does (the seed file) and
// records pod addresses through it.
func TestCloudIPAM(t *testing.T) {
	ctx := context.Background()
	tcfg := testbed.DefaultConfig()
	tcfg.StateDir = t.TempDir()
	tcfg.Nodes = 2
	topo := testbed.Plan(tcfg)
	b, err := json.Marshal(testbed.CloudENIs(topo))
	if err != nil {
		t.Fatal(err)
	}
	seed := filepath.Join(t.TempDir(), testbed.LocalcloudENIsFile)
	if err := os.WriteFile(seed, b, 0o600); err != nil {
		t.Fatal(err)
	}
	lc := localcloud.DefaultConfig()
	lc.Listen, lc.StateDir, lc.Datapath, lc.NetworkInterfacesFile = "127.0.0.1:0", "", false, seed
	srv, err := localcloud.New(lc, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })

	ipam, err := NewCloudIPAM(ctx, "http://"+srv.Addr(), zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	type eniView struct {
		ID, MAC, Primary string
		Device           int
		Secondary        []string
	}
	node1 := func() []eniView {
		t.Helper()
		nis, err := ipam.ENIs.InstanceNetworkInterfaces(ctx, "node-1")
		if err != nil {
			t.Fatal(err)
		}
		var out []eniView
		for _, n := range nis {
			v := eniView{ID: n.ID, MAC: n.MAC, Primary: n.PrivateIP.String(), Device: n.DeviceIndex}
			for _, s := range n.SecondaryIPs {
				v.Secondary = append(v.Secondary, s.String())
			}
			out = append(out, v)
		}
		return out
	}
	// The instance is the node's name, the MACs and addresses the topology's.
	want := []eniView{
		{ID: "eni-node1-0", MAC: "02:d1:0a:64:01:0a", Primary: "10.100.1.10", Device: 0},
		{ID: "eni-node1-1", MAC: "02:d1:0a:64:01:0b", Primary: "10.100.1.11", Device: 1},
	}
	if diff := cmp.Diff(want, node1()); diff != "" {
		t.Fatalf("node-1's ENIs as seeded (-want +got):\n%s", diff)
	}

	for _, ip := range []string{"10.100.1.128", "10.100.1.129"} {
		if err := ipam.Assign(ctx, "eni-node1-1", netip.MustParseAddr(ip)); err != nil {
			t.Fatal(err)
		}
	}
	if err := ipam.Assign(ctx, "eni-node1-0", netip.MustParseAddr("10.100.1.64")); err != nil {
		t.Fatal(err)
	}
	// Again (a sandbox set up twice): no-op.
	if err := ipam.Assign(ctx, "eni-node1-1", netip.MustParseAddr("10.100.1.128")); err != nil {
		t.Fatalf("assign again: %v", err)
	}
	want[0].Secondary = []string{"10.100.1.64"}
	want[1].Secondary = []string{"10.100.1.128", "10.100.1.129"}
	if diff := cmp.Diff(want, node1()); diff != "" {
		t.Errorf("after assign (-want +got):\n%s", diff)
	}
	ipam.Unassign(ctx, "eni-node1-1", netip.MustParseAddr("10.100.1.128"))
	ipam.Unassign(ctx, "eni-node1-1", netip.MustParseAddr("10.100.1.128")) // twice: nothing left to do
	want[1].Secondary = []string{"10.100.1.129"}
	if diff := cmp.Diff(want, node1()); diff != "" {
		t.Errorf("after unassign (-want +got):\n%s", diff)
	}
	// Another ENI's address: refused, and the sandbox setup fails with it.
	err = ipam.Assign(ctx, "eni-node2-0", netip.MustParseAddr("10.100.1.129"))
	var ae *cloud.APIError
	if !errors.As(err, &ae) || ae.Code != "InvalidIPAddress.InUse" {
		t.Errorf("assign a held address to another ENI: %v, want InvalidIPAddress.InUse", err)
	}
}

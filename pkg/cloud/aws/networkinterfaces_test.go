package aws_test

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/directlb/directlb/pkg/cloud"
	cloudaws "github.com/directlb/directlb/pkg/cloud/aws"
	"github.com/directlb/directlb/pkg/localcloud"
	"github.com/directlb/directlb/pkg/localcloud/faults"
	"github.com/directlb/directlb/pkg/localcloud/store"
)

func seedENIs(t *testing.T, srv *localcloud.Server) {
	t.Helper()
	for _, ni := range []store.NetworkInterface{
		{ID: "eni-n1-0", InstanceID: "node-1", DeviceIndex: 0, MAC: "02:D1:00:00:01:00", SubnetCIDR: "10.100.0.0/16", PrivateIP: "10.100.1.10", Pool: "10.100.1.64/26"},
		{ID: "eni-n1-1", InstanceID: "node-1", DeviceIndex: 1, MAC: "02:d1:00:00:01:01", SubnetCIDR: "10.100.0.0/16", PrivateIP: "10.100.1.11", Pool: "10.100.1.128/26", AddressLimit: 4},
		{ID: "eni-n2-0", InstanceID: "node-2", DeviceIndex: 0, MAC: "02:d1:00:00:02:00", SubnetCIDR: "10.100.0.0/16", PrivateIP: "10.100.2.10", Pool: "10.100.2.64/26"},
	} {
		if _, err := srv.Store().PutNetworkInterface(ni); err != nil {
			t.Fatal(err)
		}
	}
}

func addrs(s ...string) []netip.Addr {
	var out []netip.Addr
	for _, a := range s {
		out = append(out, netip.MustParseAddr(a))
	}
	return out
}

// eniStep is one call in TestNetworkInterfaces and what it should leave behind.
type eniStep struct {
	name      string
	do        func(ctx context.Context, c *cloudaws.Client) ([]netip.Addr, error)
	want      []netip.Addr
	wantCode  string
	secondary []netip.Addr // eni-n1-1's secondary addresses afterwards
}

// eniSteps run in order against one localcloud: each sees what the ones
// before it left.
var eniSteps = []eniStep{
	{name: "assign explicit", do: func(ctx context.Context, c *cloudaws.Client) ([]netip.Addr, error) {
		return c.AssignPrivateIPs(ctx, "eni-n1-1", addrs("10.100.1.130"), 0)
	}, want: addrs("10.100.1.130"), secondary: addrs("10.100.1.130")},
	{name: "assign by count", do: func(ctx context.Context, c *cloudaws.Client) ([]netip.Addr, error) {
		return c.AssignPrivateIPs(ctx, "eni-n1-1", nil, 2)
	}, want: addrs("10.100.1.128", "10.100.1.129"), secondary: addrs("10.100.1.130", "10.100.1.128", "10.100.1.129")},
	{name: "over the limit", do: func(ctx context.Context, c *cloudaws.Client) ([]netip.Addr, error) {
		return c.AssignPrivateIPs(ctx, "eni-n1-1", nil, 1)
	}, wantCode: "PrivateIpAddressLimitExceeded", secondary: addrs("10.100.1.130", "10.100.1.128", "10.100.1.129")},
	{name: "in use on another ENI", do: func(ctx context.Context, c *cloudaws.Client) ([]netip.Addr, error) {
		return c.AssignPrivateIPs(ctx, "eni-n2-0", addrs("10.100.1.130"), 0)
	}, wantCode: "InvalidIPAddress.InUse", secondary: addrs("10.100.1.130", "10.100.1.128", "10.100.1.129")},
	{name: "unassign one held and one not", do: func(ctx context.Context, c *cloudaws.Client) ([]netip.Addr, error) {
		return nil, c.UnassignPrivateIPs(ctx, "eni-n1-1", addrs("10.100.1.128", "10.100.1.199"))
	}, secondary: addrs("10.100.1.130", "10.100.1.129")},
	{name: "unassign again (idempotent)", do: func(ctx context.Context, c *cloudaws.Client) ([]netip.Addr, error) {
		return nil, c.UnassignPrivateIPs(ctx, "eni-n1-1", addrs("10.100.1.128"))
	}, secondary: addrs("10.100.1.130", "10.100.1.129")},
	{name: "unassign the primary is refused", do: func(ctx context.Context, c *cloudaws.Client) ([]netip.Addr, error) {
		return nil, c.UnassignPrivateIPs(ctx, "eni-n1-1", addrs("10.100.1.11"))
	}, wantCode: "InvalidParameterValue", secondary: addrs("10.100.1.130", "10.100.1.129")},
	{name: "unassign from a missing ENI", do: func(ctx context.Context, c *cloudaws.Client) ([]netip.Addr, error) {
		return nil, c.UnassignPrivateIPs(ctx, "eni-gone", addrs("10.100.1.128"))
	}, secondary: addrs("10.100.1.130", "10.100.1.129")},
	{name: "assign to a missing ENI", do: func(ctx context.Context, c *cloudaws.Client) ([]netip.Addr, error) {
		return c.AssignPrivateIPs(ctx, "eni-gone", nil, 1)
	}, wantCode: "InvalidNetworkInterfaceID.NotFound", secondary: addrs("10.100.1.130", "10.100.1.129")},
}

func TestNetworkInterfaces(t *testing.T) {
	ctx := context.Background()
	srv := startLocalcloud(t)
	seedENIs(t, srv)
	// Every EC2 call is throttled once first: the retryer goes through it.
	srv.Faults().Set(faults.Spec{Rules: map[string]faults.Rule{"*": {Throttle: 0.5}}})
	reg := prometheus.NewRegistry()
	c := newClient(t, srv, clientOpts{pageSize: 5, reg: reg})

	eniN1 := func() []cloud.NetworkInterface {
		t.Helper()
		got, err := c.InstanceNetworkInterfaces(ctx, "node-1")
		if err != nil {
			t.Fatalf("InstanceNetworkInterfaces: %v", err)
		}
		return got
	}
	want := []cloud.NetworkInterface{
		{ID: "eni-n1-0", InstanceID: "node-1", DeviceIndex: 0, MAC: "02:d1:00:00:01:00", PrivateIP: netip.MustParseAddr("10.100.1.10"), SubnetID: "subnet-localcloud"},
		{ID: "eni-n1-1", InstanceID: "node-1", DeviceIndex: 1, MAC: "02:d1:00:00:01:01", PrivateIP: netip.MustParseAddr("10.100.1.11"), SubnetID: "subnet-localcloud"},
	}
	if diff := cmp.Diff(want, eniN1(), cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("ENIs of node-1 (-want +got):\n%s", diff)
	}

	for _, step := range eniSteps {
		got, err := step.do(ctx, c)
		var ae *cloud.APIError
		switch {
		case step.wantCode == "" && err != nil:
			t.Fatalf("%s: %v", step.name, err)
		case step.wantCode != "" && (!errors.As(err, &ae) || ae.Code != step.wantCode || ae.Retryable):
			t.Fatalf("%s: %v, want permanent %s", step.name, err, step.wantCode)
		}
		if diff := cmp.Diff(step.want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
			t.Errorf("%s: assigned (-want +got):\n%s", step.name, diff)
		}
		if diff := cmp.Diff(step.secondary, eniN1()[1].SecondaryIPs, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
			t.Errorf("%s: eni-n1-1 secondary addresses (-want +got):\n%s", step.name, diff)
		}
	}
	_, err := c.AssignPrivateIPs(ctx, "eni-gone", nil, 1)
	if !errors.Is(err, cloud.ErrNotFound) {
		t.Errorf("missing ENI: %v does not wrap cloud.ErrNotFound", err)
	}
	if got := counterValue(t, reg, "directlb_cloud_api_throttled_total", "DescribeNetworkInterfaces"); got == 0 {
		t.Errorf("no DescribeNetworkInterfaces attempt was throttled; the retry was not exercised")
	}
	none, err := c.InstanceNetworkInterfaces(ctx, "node-9")
	if err != nil || len(none) != 0 {
		t.Errorf("unknown instance: %v, %v; want none, no error", none, err)
	}
}

func TestNetworkInterfacesPaging(t *testing.T) {
	srv := startLocalcloud(t)
	var want []string
	for i := range 7 {
		ni := store.NetworkInterface{ID: "eni-p" + string(rune('a'+i)), InstanceID: "i-many", DeviceIndex: int32(6 - i),
			MAC: "02:00:00:00:00:0" + string(rune('1'+i)), SubnetCIDR: "10.0.0.0/16", PrivateIP: netip.AddrFrom4([4]byte{10, 0, 1, byte(10 + i)}).String()}
		if _, err := srv.Store().PutNetworkInterface(ni); err != nil {
			t.Fatal(err)
		}
		want = append([]string{ni.ID}, want...)
	}
	c := newClient(t, srv, clientOpts{pageSize: 5})
	got, err := c.InstanceNetworkInterfaces(context.Background(), "i-many")
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, n := range got {
		ids = append(ids, n.ID)
	}
	if diff := cmp.Diff(want, ids); diff != "" {
		t.Errorf("7 ENIs over pages of 5, by device index (-want +got):\n%s", diff)
	}
	if n := srv.Faults().Counts()["DescribeNetworkInterfaces"]["pass"]; n != 2 {
		t.Errorf("DescribeNetworkInterfaces calls = %d, want 2 pages", n)
	}
}

// TestSharedCredentialsFile signs with the key in Config.SharedCredentialsFile
// (directlb-cni's way to credentials), and refuses a file that is not there
// instead of going on down the chain.
func TestSharedCredentialsFile(t *testing.T) {
	for _, env := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"} {
		t.Setenv(env, "")
	}
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(t.TempDir(), "none"))
	srv := startLocalcloud(t)
	seedENIs(t, srv)
	file := filepath.Join(t.TempDir(), "credentials")
	if err := os.WriteFile(file, []byte("[default]\naws_access_key_id = "+testKey+"\naws_secret_access_key = "+testSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := cloudaws.DefaultConfig()
	cfg.Region, cfg.Endpoint, cfg.MaxAttempts = "us-east-1", "http://"+srv.Addr(), 1
	cfg.SharedCredentialsFile = file
	c, err := cloudaws.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := c.InstanceNetworkInterfaces(context.Background(), "node-1"); err != nil || len(got) != 2 {
		t.Fatalf("InstanceNetworkInterfaces signed from the file: %d ENIs, %v", len(got), err)
	}
	cfg.SharedCredentialsFile = file + ".missing"
	if _, err := cloudaws.New(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "shared credentials file") {
		t.Errorf("New with a missing credentials file: %v; want an error naming it", err)
	}
}

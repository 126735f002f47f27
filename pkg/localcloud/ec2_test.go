package localcloud_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/smithy-go"
	"github.com/google/go-cmp/cmp"
	"go.uber.org/zap"

	"github.com/directlb/directlb/pkg/localcloud"
	"github.com/directlb/directlb/pkg/localcloud/store"
)

const (
	ec2TestKey    = "AKIDEC2TEST"
	ec2TestSecret = "ec2-test-secret"
)

// testENIs is two nodes with two ENIs each, as the test bed lays them out
// (the second node's secondary ENI has a small limit).
const testENIs = `[
 {"id":"eni-node1-0","instanceId":"node-1","deviceIndex":0,"macAddress":"02:d1:00:00:01:00","subnetCidr":"10.100.0.0/16","privateIpAddress":"10.100.1.10","pool":"10.100.1.64/26","description":"node-1 primary","tags":{"directlb.io/node":"node-1"}},
 {"id":"eni-node1-1","instanceId":"node-1","deviceIndex":1,"macAddress":"02:d1:00:00:01:01","subnetCidr":"10.100.0.0/16","privateIpAddress":"10.100.1.11","pool":"10.100.1.128/26","tags":{"directlb.io/node":"node-1"}},
 {"id":"eni-node2-0","instanceId":"node-2","deviceIndex":0,"macAddress":"02:d1:00:00:02:00","subnetCidr":"10.100.0.0/16","privateIpAddress":"10.100.2.10","pool":"10.100.2.64/26"},
 {"id":"eni-node2-1","instanceId":"node-2","deviceIndex":1,"macAddress":"02:d1:00:00:02:01","subnetCidr":"10.100.0.0/16","privateIpAddress":"10.100.2.11","pool":"10.100.2.128/30","addressLimit":3}
]`

func startEC2Localcloud(t *testing.T, stateDir string, seed bool) *localcloud.Server {
	t.Helper()
	cfg := localcloud.DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.StateDir = stateDir
	cfg.Datapath = false
	cfg.AccessKeyID, cfg.SecretAccessKey = ec2TestKey, ec2TestSecret
	cfg.FaultThrottle = map[string]string{"UnassignPrivateIpAddresses": "0.5"}
	if seed {
		f := filepath.Join(t.TempDir(), "enis.json")
		if err := os.WriteFile(f, []byte(testENIs), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg.NetworkInterfacesFile = f
	}
	srv, err := localcloud.New(cfg, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return srv
}

func ec2Client(srv *localcloud.Server, secret string) *ec2.Client {
	return ec2.New(ec2.Options{
		Region:       "us-east-1",
		BaseEndpoint: awssdk.String("http://" + srv.Addr()),
		Credentials:  credentials.NewStaticCredentialsProvider(ec2TestKey, secret, ""),
		Retryer: retry.NewStandard(func(o *retry.StandardOptions) {
			o.MaxBackoff = 10 * time.Millisecond
		}),
	})
}

// eniView is what the tests compare: the SDK's parse of an ENI.
type eniView struct {
	ID, Instance, MAC, Primary string
	Device                     int32
	Secondary                  []string
	Tags                       map[string]string
}

func view(ns []ec2types.NetworkInterface) []eniView {
	var out []eniView
	for _, n := range ns {
		v := eniView{ID: awssdk.ToString(n.NetworkInterfaceId), MAC: awssdk.ToString(n.MacAddress), Primary: awssdk.ToString(n.PrivateIpAddress)}
		if n.Attachment != nil {
			v.Instance = awssdk.ToString(n.Attachment.InstanceId)
			v.Device = awssdk.ToInt32(n.Attachment.DeviceIndex)
		}
		for _, a := range n.PrivateIpAddresses {
			if !awssdk.ToBool(a.Primary) {
				v.Secondary = append(v.Secondary, awssdk.ToString(a.PrivateIpAddress))
			}
		}
		for _, tg := range n.TagSet {
			if v.Tags == nil {
				v.Tags = map[string]string{}
			}
			v.Tags[awssdk.ToString(tg.Key)] = awssdk.ToString(tg.Value)
		}
		out = append(out, v)
	}
	return out
}

func errCode(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	if err != nil {
		return "non-API error: " + err.Error()
	}
	return ""
}

func filter(name string, values ...string) ec2types.Filter {
	return ec2types.Filter{Name: awssdk.String(name), Values: values}
}

// ec2Step is one EC2 call in TestEC2NetworkInterfaces and what it should give.
type ec2Step struct {
	name     string
	call     func(ctx context.Context, c *ec2.Client) (any, error)
	want     any
	wantCode string
}

// ec2Steps run in order: each sees the assignments of the ones before.
var ec2Steps = []ec2Step{
	{
		name: "describe by instance",
		call: func(ctx context.Context, c *ec2.Client) (any, error) {
			out, err := c.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{Filters: []ec2types.Filter{filter("attachment.instance-id", "node-1")}})
			if err != nil {
				return nil, err
			}
			return view(out.NetworkInterfaces), nil
		},
		want: []eniView{
			{ID: "eni-node1-0", Instance: "node-1", MAC: "02:d1:00:00:01:00", Primary: "10.100.1.10", Device: 0, Tags: map[string]string{"directlb.io/node": "node-1"}},
			{ID: "eni-node1-1", Instance: "node-1", MAC: "02:d1:00:00:01:01", Primary: "10.100.1.11", Device: 1, Tags: map[string]string{"directlb.io/node": "node-1"}},
		},
	},
	{
		name: "assign two by count from the pool",
		call: func(ctx context.Context, c *ec2.Client) (any, error) {
			out, err := c.AssignPrivateIpAddresses(ctx, &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: awssdk.String("eni-node1-1"), SecondaryPrivateIpAddressCount: awssdk.Int32(2)})
			if err != nil {
				return nil, err
			}
			var got []string
			for _, a := range out.AssignedPrivateIpAddresses {
				got = append(got, awssdk.ToString(a.PrivateIpAddress))
			}
			return append(got, awssdk.ToString(out.NetworkInterfaceId)), nil
		},
		want: []string{"10.100.1.128", "10.100.1.129", "eni-node1-1"},
	},
	{
		name: "assign explicit addresses",
		call: func(ctx context.Context, c *ec2.Client) (any, error) {
			_, err := c.AssignPrivateIpAddresses(ctx, &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: awssdk.String("eni-node1-1"), PrivateIpAddresses: []string{"10.100.1.200", "10.100.1.201"}})
			return nil, err
		},
	},
	{
		name: "describe by address and by ID",
		call: func(ctx context.Context, c *ec2.Client) (any, error) {
			a, err := c.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{Filters: []ec2types.Filter{filter("addresses.private-ip-address", "10.100.1.201")}})
			if err != nil {
				return nil, err
			}
			b, err := c.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{NetworkInterfaceIds: []string{"eni-node1-1"}, Filters: []ec2types.Filter{filter("private-ip-address", "10.100.1.11")}})
			if err != nil {
				return nil, err
			}
			return append(view(a.NetworkInterfaces), view(b.NetworkInterfaces)...), nil
		},
		want: []eniView{
			{ID: "eni-node1-1", Instance: "node-1", MAC: "02:d1:00:00:01:01", Primary: "10.100.1.11", Device: 1, Secondary: []string{"10.100.1.128", "10.100.1.129", "10.100.1.200", "10.100.1.201"}, Tags: map[string]string{"directlb.io/node": "node-1"}},
			{ID: "eni-node1-1", Instance: "node-1", MAC: "02:d1:00:00:01:01", Primary: "10.100.1.11", Device: 1, Secondary: []string{"10.100.1.128", "10.100.1.129", "10.100.1.200", "10.100.1.201"}, Tags: map[string]string{"directlb.io/node": "node-1"}},
		},
	},
	{
		name: "describe by tag and wildcard description",
		call: func(ctx context.Context, c *ec2.Client) (any, error) {
			a, err := c.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{Filters: []ec2types.Filter{filter("tag:directlb.io/node", "node-1"), filter("description", "*primary")}})
			if err != nil {
				return nil, err
			}
			var ids []string
			for _, v := range view(a.NetworkInterfaces) {
				ids = append(ids, v.ID)
			}
			return ids, nil
		},
		want: []string{"eni-node1-0"},
	},
	{
		name: "address in use on another ENI",
		call: func(ctx context.Context, c *ec2.Client) (any, error) {
			_, err := c.AssignPrivateIpAddresses(ctx, &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: awssdk.String("eni-node1-0"), PrivateIpAddresses: []string{"10.100.1.200"}})
			return nil, err
		},
		wantCode: "InvalidIPAddress.InUse",
	},
	{
		name: "primary address of another ENI is in use even with reassignment",
		call: func(ctx context.Context, c *ec2.Client) (any, error) {
			_, err := c.AssignPrivateIpAddresses(ctx, &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: awssdk.String("eni-node1-0"), PrivateIpAddresses: []string{"10.100.2.10"}, AllowReassignment: awssdk.Bool(true)})
			return nil, err
		},
		wantCode: "InvalidIPAddress.InUse",
	},
	{
		name: "reassignment moves a secondary address",
		call: func(ctx context.Context, c *ec2.Client) (any, error) {
			if _, err := c.AssignPrivateIpAddresses(ctx, &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: awssdk.String("eni-node1-0"), PrivateIpAddresses: []string{"10.100.1.201"}, AllowReassignment: awssdk.Bool(true)}); err != nil {
				return nil, err
			}
			out, err := c.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{NetworkInterfaceIds: []string{"eni-node1-0", "eni-node1-1"}})
			if err != nil {
				return nil, err
			}
			got := map[string][]string{}
			for _, v := range view(out.NetworkInterfaces) {
				got[v.ID] = v.Secondary
			}
			return got, nil
		},
		want: map[string][]string{"eni-node1-0": {"10.100.1.201"}, "eni-node1-1": {"10.100.1.128", "10.100.1.129", "10.100.1.200"}},
	},
	{
		name: "limit exceeded by count",
		call: func(ctx context.Context, c *ec2.Client) (any, error) {
			_, err := c.AssignPrivateIpAddresses(ctx, &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: awssdk.String("eni-node2-1"), SecondaryPrivateIpAddressCount: awssdk.Int32(3)})
			return nil, err
		},
		wantCode: "PrivateIpAddressLimitExceeded",
	},
	{
		name: "limit exceeded by explicit addresses",
		call: func(ctx context.Context, c *ec2.Client) (any, error) {
			_, err := c.AssignPrivateIpAddresses(ctx, &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: awssdk.String("eni-node2-1"), PrivateIpAddresses: []string{"10.100.2.50", "10.100.2.51", "10.100.2.52"}})
			return nil, err
		},
		wantCode: "PrivateIpAddressLimitExceeded",
	},
	{
		name: "address outside the subnet",
		call: func(ctx context.Context, c *ec2.Client) (any, error) {
			_, err := c.AssignPrivateIpAddresses(ctx, &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: awssdk.String("eni-node2-1"), PrivateIpAddresses: []string{"192.0.2.7"}})
			return nil, err
		},
		wantCode: "InvalidParameterValue",
	},
	{
		name: "count and addresses together",
		call: func(ctx context.Context, c *ec2.Client) (any, error) {
			_, err := c.AssignPrivateIpAddresses(ctx, &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: awssdk.String("eni-node2-1"), PrivateIpAddresses: []string{"10.100.2.50"}, SecondaryPrivateIpAddressCount: awssdk.Int32(1)})
			return nil, err
		},
		wantCode: "InvalidParameterCombination",
	},
	{
		name: "assign on an unknown ENI",
		call: func(ctx context.Context, c *ec2.Client) (any, error) {
			_, err := c.AssignPrivateIpAddresses(ctx, &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: awssdk.String("eni-nope"), SecondaryPrivateIpAddressCount: awssdk.Int32(1)})
			return nil, err
		},
		wantCode: "InvalidNetworkInterfaceID.NotFound",
	},
	{
		name: "describe an unknown ENI",
		call: func(ctx context.Context, c *ec2.Client) (any, error) {
			_, err := c.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{NetworkInterfaceIds: []string{"eni-node1-0", "eni-nope"}})
			return nil, err
		},
		wantCode: "InvalidNetworkInterfaceID.NotFound",
	},
	{
		name: "malformed ENI ID",
		call: func(ctx context.Context, c *ec2.Client) (any, error) {
			_, err := c.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{NetworkInterfaceIds: []string{"node1"}})
			return nil, err
		},
		wantCode: "InvalidNetworkInterfaceID.Malformed",
	},
	{
		name: "unknown filter",
		call: func(ctx context.Context, c *ec2.Client) (any, error) {
			_, err := c.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{Filters: []ec2types.Filter{filter("flavour", "x")}})
			return nil, err
		},
		wantCode: "InvalidParameterValue",
	},
	{
		name: "unassign an address the ENI does not hold",
		call: func(ctx context.Context, c *ec2.Client) (any, error) {
			_, err := c.UnassignPrivateIpAddresses(ctx, &ec2.UnassignPrivateIpAddressesInput{NetworkInterfaceId: awssdk.String("eni-node1-1"), PrivateIpAddresses: []string{"10.100.1.128", "10.100.1.201"}})
			return nil, err
		},
		wantCode: "InvalidParameterValue",
	},
	{
		name: "unassign the primary address",
		call: func(ctx context.Context, c *ec2.Client) (any, error) {
			_, err := c.UnassignPrivateIpAddresses(ctx, &ec2.UnassignPrivateIpAddressesInput{NetworkInterfaceId: awssdk.String("eni-node1-1"), PrivateIpAddresses: []string{"10.100.1.11"}})
			return nil, err
		},
		wantCode: "InvalidParameterValue",
	},
	{
		// The server throttles every other Unassign call: the SDK
		// retries through RequestLimitExceeded.
		name: "unassign (retried through a throttle)",
		call: func(ctx context.Context, c *ec2.Client) (any, error) {
			_, err := c.UnassignPrivateIpAddresses(ctx, &ec2.UnassignPrivateIpAddressesInput{NetworkInterfaceId: awssdk.String("eni-node1-1"), PrivateIpAddresses: []string{"10.100.1.128"}})
			return nil, err
		},
	},
	{
		name: "a freed address is handed out again",
		call: func(ctx context.Context, c *ec2.Client) (any, error) {
			out, err := c.AssignPrivateIpAddresses(ctx, &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: awssdk.String("eni-node1-1"), SecondaryPrivateIpAddressCount: awssdk.Int32(2)})
			if err != nil {
				return nil, err
			}
			var got []string
			for _, a := range out.AssignedPrivateIpAddresses {
				got = append(got, awssdk.ToString(a.PrivateIpAddress))
			}
			return got, nil
		},
		want: []string{"10.100.1.128", "10.100.1.130"},
	},
	{
		name: "pool exhausted",
		call: func(ctx context.Context, c *ec2.Client) (any, error) {
			// 10.100.2.128/30: four addresses, all usable in a /16.
			if _, err := c.AssignPrivateIpAddresses(ctx, &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: awssdk.String("eni-node2-1"), PrivateIpAddresses: []string{"10.100.2.129", "10.100.2.130"}}); err != nil {
				return nil, err
			}
			_, err := c.UnassignPrivateIpAddresses(ctx, &ec2.UnassignPrivateIpAddressesInput{NetworkInterfaceId: awssdk.String("eni-node2-1"), PrivateIpAddresses: []string{"10.100.2.129"}})
			if err != nil {
				return nil, err
			}
			// One free slot under the limit (3), and the pool still has .128 and .131.
			out, err := c.AssignPrivateIpAddresses(ctx, &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: awssdk.String("eni-node2-1"), SecondaryPrivateIpAddressCount: awssdk.Int32(1)})
			if err != nil {
				return nil, err
			}
			return awssdk.ToString(out.AssignedPrivateIpAddresses[0].PrivateIpAddress), nil
		},
		want: "10.100.2.128",
	},
}

func TestEC2NetworkInterfaces(t *testing.T) {
	dir := t.TempDir()
	srv := startEC2Localcloud(t, dir, true)
	c := ec2Client(srv, ec2TestSecret)
	ctx := context.Background()

	for _, s := range ec2Steps {
		got, err := s.call(ctx, c)
		if code := errCode(err); code != s.wantCode {
			t.Fatalf("%s: error code %q, want %q (%v)", s.name, code, s.wantCode, err)
		}
		if s.want != nil {
			if diff := cmp.Diff(s.want, got); diff != "" {
				t.Errorf("%s (-want +got):\n%s", s.name, diff)
			}
		}
	}

	if n := srv.Faults().Counts()["UnassignPrivateIpAddresses"]["throttled"]; n == 0 {
		t.Errorf("no UnassignPrivateIpAddresses call was throttled; the retry through RequestLimitExceeded was not exercised")
	}

	// Restart on the same state dir without the seed file: ENIs and
	// assignments are all there.
	before := srv.Store().Snapshot().NetworkInterfaces
	srv.Close()
	srv2 := startEC2Localcloud(t, dir, false)
	c2 := ec2Client(srv2, ec2TestSecret)
	out, err := c2.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string][]string{}
	for _, v := range view(out.NetworkInterfaces) {
		got[v.ID] = v.Secondary
	}
	want := map[string][]string{}
	for id, ni := range before {
		want[id] = ni.SecondaryIPs
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("after restart (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"10.100.1.129", "10.100.1.200", "10.100.1.128", "10.100.1.130"}, got["eni-node1-1"]); diff != "" {
		t.Errorf("eni-node1-1 after restart (-want +got):\n%s", diff)
	}
}

func TestEC2Pagination(t *testing.T) {
	srv := startEC2Localcloud(t, "", false)
	admin := "http://" + srv.AdminAddr()
	var want []string
	for i := range 12 {
		id := fmt.Sprintf("eni-p%02d", i)
		body := fmt.Sprintf(`{"instanceId":"i-1","deviceIndex":%d,"macAddress":"02:00:00:00:00:%02x","subnetCidr":"10.0.0.0/16","privateIpAddress":"10.0.1.%d"}`, i, i, 10+i)
		req, _ := http.NewRequest(http.MethodPut, admin+"/admin/network-interfaces/"+id, strings.NewReader(body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("PUT %s: %d %s", id, resp.StatusCode, b)
		}
		want = append(want, id)
	}
	c := ec2Client(srv, ec2TestSecret)
	p := ec2.NewDescribeNetworkInterfacesPaginator(c, &ec2.DescribeNetworkInterfacesInput{MaxResults: awssdk.Int32(5)})
	var got []string
	pages := 0
	for p.HasMorePages() {
		out, err := p.NextPage(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		pages++
		for _, v := range view(out.NetworkInterfaces) {
			got = append(got, v.ID)
		}
	}
	sort.Strings(want)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("paged IDs (-want +got):\n%s", diff)
	}
	if pages != 3 {
		t.Errorf("pages = %d, want 3", pages)
	}
	_, err := c.DescribeNetworkInterfaces(context.Background(), &ec2.DescribeNetworkInterfacesInput{MaxResults: awssdk.Int32(4)})
	if code := errCode(err); code != "InvalidParameterValue" {
		t.Errorf("MaxResults 4: code %q, want InvalidParameterValue", code)
	}
}

func TestEC2Errors(t *testing.T) {
	srv := startEC2Localcloud(t, "", true)
	ctx := context.Background()
	for _, tc := range []struct {
		name     string
		client   *ec2.Client
		wantCode string
	}{
		{name: "right secret", client: ec2Client(srv, ec2TestSecret)},
		{name: "wrong secret", client: ec2Client(srv, "not-the-secret"), wantCode: "SignatureDoesNotMatch"},
		{name: "unknown key", client: ec2.New(ec2.Options{Region: "us-east-1", BaseEndpoint: awssdk.String("http://" + srv.Addr()),
			Credentials: credentials.NewStaticCredentialsProvider("AKIDOTHER", ec2TestSecret, "")}), wantCode: "AuthFailure"},
		{name: "anonymous", client: ec2.New(ec2.Options{Region: "us-east-1", BaseEndpoint: awssdk.String("http://" + srv.Addr()),
			Credentials: awssdk.AnonymousCredentials{}}), wantCode: "MissingAuthenticationToken"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.client.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{})
			if code := errCode(err); code != tc.wantCode {
				t.Errorf("code %q, want %q (%v)", code, tc.wantCode, err)
			}
		})
	}

	// The raw shapes: EC2's <Response><Errors> for EC2 actions, ELBv2's
	// <ErrorResponse> for ELBv2 ones, and the EC2 result's namespace and
	// requestId.
	raw := func(body string) (int, string) {
		req, _ := http.NewRequest(http.MethodPost, "http://"+srv.Addr()+"/", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = resp.Body.Close() }()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, tc := range []struct {
		body, want string
	}{
		{"Action=DescribeNetworkInterfaces&Version=2016-11-15", "<Response><Errors><Error><Code>MissingAuthenticationToken</Code>"},
		{"Action=DescribeLoadBalancers&Version=2015-12-01", "<ErrorResponse"},
	} {
		code, body := raw(tc.body)
		if code != http.StatusForbidden || !strings.Contains(body, tc.want) || (strings.HasPrefix(tc.want, "<Response>") && !strings.Contains(body, "<RequestID>")) {
			t.Errorf("%s: %d %s, want 403 with %s", tc.body, code, body, tc.want)
		}
	}

	// The admin view lists the seeded ENIs; a bad seed is refused.
	resp, err := http.Get("http://" + srv.AdminAddr() + "/admin/network-interfaces")
	if err != nil {
		t.Fatal(err)
	}
	var enis []store.NetworkInterface
	if err := json.NewDecoder(resp.Body).Decode(&enis); err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if len(enis) != 4 || enis[0].AddressLimit != 65 || enis[3].AddressLimit != 3 {
		t.Errorf("admin ENIs: %+v, want 4 with limits 65 (a /26 pool + primary) and 3", enis)
	}
	for _, bad := range []string{
		`{"instanceId":"i-1","macAddress":"02:00:00:00:00:01","subnetCidr":"10.0.0.0/16","privateIpAddress":"10.1.0.1"}`,      // primary outside the subnet
		`{"instanceId":"i-1","macAddress":"nope","subnetCidr":"10.0.0.0/16","privateIpAddress":"10.0.0.9"}`,                   // bad MAC
		`{"instanceId":"i-1","macAddress":"02:00:00:00:00:01","subnetCidr":"10.100.0.0/16","privateIpAddress":"10.100.1.10"}`, // another ENI's primary
	} {
		req, _ := http.NewRequest(http.MethodPut, "http://"+srv.AdminAddr()+"/admin/network-interfaces/eni-bad", strings.NewReader(bad))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("PUT %s: %d, want 400", bad, resp.StatusCode)
		}
	}
}

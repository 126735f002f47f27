package localcloudtest

import (
	"context"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/credentials"
	"go.uber.org/zap"

	cloudaws "github.com/directlb/directlb/pkg/cloud/aws"
	"github.com/directlb/directlb/pkg/localcloud"
	"github.com/directlb/directlb/pkg/localcloud/store"
)

// ENICloud runs localcloud's API in-process (no datapath, no namespaces,
// so no Main needed) on a free loopback port, closed in t.Cleanup, with
// node-1's ENIs as the test bed makes them (eni-node1-0: device 0, MAC
// 02:d1:00:00:01:00, 10.100.1.10, pool 10.100.1.64/26; eni-node1-1: device
// 1, MAC 02:d1:00:00:01:01, 10.100.1.11, pool 10.100.1.128/26) and node-9's
// primary ENI. It returns the server and an EC2 client on it.
func ENICloud(t testing.TB) (*localcloud.Server, *cloudaws.Client) {
	t.Helper()
	cfg := localcloud.DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.StateDir = ""
	cfg.Datapath = false
	cfg.AccessKeyID, cfg.SecretAccessKey = AccessKeyID, SecretAccessKey
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
	return srv, EC2Client(t, "http://"+srv.Addr())
}

// EC2Client is an EC2 client of endpoint with the test credentials and
// quick retries (3 attempts, 10 ms backoff).
func EC2Client(t testing.TB, endpoint string) *cloudaws.Client {
	t.Helper()
	ac := cloudaws.DefaultConfig()
	ac.Region, ac.Endpoint = "us-east-1", endpoint
	ac.MaxAttempts, ac.MaxBackoff = 3, 10*time.Millisecond
	ac.Credentials = credentials.NewStaticCredentialsProvider(AccessKeyID, SecretAccessKey, "")
	c, err := cloudaws.New(context.Background(), ac)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

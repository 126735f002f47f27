package localcloud_test

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap"

	"github.com/directlb/directlb/pkg/localcloud"
	"github.com/directlb/directlb/pkg/localcloud/store"
)

// awsCLI finds the Debian AWS CLI (/usr/bin/aws), else any aws on PATH.
func awsCLI(t *testing.T) string {
	t.Helper()
	if _, err := os.Stat("/usr/bin/aws"); err == nil {
		return "/usr/bin/aws"
	}
	p, err := exec.LookPath("aws")
	if err != nil {
		t.Skip("the AWS CLI (Debian package awscli) is not installed")
	}
	return p
}

// cliRunner runs the AWS CLI against one localcloud.
type cliRunner struct {
	t    *testing.T // TestAWSCLI: output that is not JSON fails it
	cli  string
	srv  *localcloud.Server
	home string
}

// run runs the CLI; svc is the CLI's service: elbv2 or ec2.
func (r *cliRunner) run(secret, svc string, args ...string) (map[string]any, string, error) {
	t, cli, srv, home := r.t, r.cli, r.srv, r.home
	cmd := exec.Command(cli, append([]string{svc, "--endpoint-url", "http://" + srv.Addr(), "--output", "json"}, args...)...)
	cmd.Env = []string{
		"PATH=" + os.Getenv("PATH"), "HOME=" + home,
		"AWS_ACCESS_KEY_ID=AKIDCLI", "AWS_SECRET_ACCESS_KEY=" + secret, "AWS_DEFAULT_REGION=us-east-1",
		"AWS_CONFIG_FILE=" + filepath.Join(home, "config"), "AWS_SHARED_CREDENTIALS_FILE=" + filepath.Join(home, "credentials"),
		"AWS_EC2_METADATA_DISABLED=true", "AWS_PAGER=",
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return nil, string(out), err
	}
	var v map[string]any
	if len(strings.TrimSpace(string(out))) > 0 {
		if err := json.Unmarshal(out, &v); err != nil {
			t.Fatalf("aws %s: output is not JSON: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	return v, string(out), nil
}

func (r *cliRunner) mustSvc(t *testing.T, svc string, args ...string) map[string]any {
	t.Helper()
	v, out, err := r.run("cli-secret", svc, args...)
	if err != nil {
		t.Fatalf("aws %s %s: %v: %s", svc, strings.Join(args, " "), err, out)
	}
	return v
}

func (r *cliRunner) must(t *testing.T, args ...string) map[string]any {
	t.Helper()
	return r.mustSvc(t, "elbv2", args...)
}

// first returns field of the first item in v[list].
func first(t *testing.T, v map[string]any, list, field string) string {
	t.Helper()
	items, _ := v[list].([]any)
	if len(items) == 0 {
		t.Fatalf("no %s in %v", list, v)
	}
	s, _ := items[0].(map[string]any)[field].(string)
	return s
}

func TestAWSCLI(t *testing.T) {
	cli := awsCLI(t)
	cfg := localcloud.DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.StateDir = t.TempDir()
	cfg.Datapath = false
	cfg.AccessKeyID, cfg.SecretAccessKey = "AKIDCLI", "cli-secret"
	srv, err := localcloud.New(cfg, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	home := t.TempDir()
	r := &cliRunner{t: t, cli: cli, srv: srv, home: home}

	lbARN := first(t, r.must(t, "create-load-balancer", "--name", "cli", "--type", "network", "--tags", "Key=directlb.io/cluster,Value=cli"), "LoadBalancers", "LoadBalancerArn")
	// The rest of the setup through the store: each CLI run costs seconds.
	st := srv.Store()
	hc := store.DefaultHealthCheck()
	tg, err := st.CreateTargetGroup("cli-tg", "TCP", 8080, "vpc-1", hc, nil)
	if err != nil {
		t.Fatal(err)
	}
	tgARN := tg.ARN
	if _, err := st.CreateListener(lbARN, "TCP", 80, tgARN, nil); err != nil {
		t.Fatal(err)
	}
	if err := st.RegisterTargets(tgARN, []store.Target{{IP: "10.100.1.70", Port: 8080}, {IP: "10.100.2.70", Port: 8080}}); err != nil {
		t.Fatal(err)
	}

	for _, ni := range []store.NetworkInterface{
		{ID: "eni-cli-0", InstanceID: "node-1", MAC: "02:d1:0a:64:01:0a", SubnetCIDR: "10.100.0.0/16", PrivateIP: "10.100.1.10", Pool: "10.100.1.64/26"},
		{ID: "eni-cli-1", InstanceID: "node-1", DeviceIndex: 1, MAC: "02:d1:0a:64:01:0b", SubnetCIDR: "10.100.0.0/16", PrivateIP: "10.100.1.11", Pool: "10.100.1.128/26"},
	} {
		if _, err := st.PutNetworkInterface(ni); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := st.AssignPrivateIPs("eni-cli-0", []string{"10.100.1.70"}, 0, false); err != nil {
		t.Fatal(err)
	}

	// The CLI runs are independent: run them side by side.
	t.Run("ec2-describe-network-interfaces", func(t *testing.T) { cliDescribeNetworkInterfaces(t, r) })
	t.Run("ec2-assign-private-ip-addresses", func(t *testing.T) { cliAssignPrivateIPAddresses(t, r) })
	t.Run("ec2-not-found", func(t *testing.T) { cliEC2NotFound(t, r) })
	t.Run("describe-load-balancers", func(t *testing.T) { cliDescribeLoadBalancers(t, r) })
	t.Run("describe-target-health", func(t *testing.T) { cliDescribeTargetHealth(t, r, tgARN) })
	// Errors come back in the shape the CLI understands.
	t.Run("not-found", func(t *testing.T) { cliELBNotFound(t, r, tgARN) })
	t.Run("wrong-secret", func(t *testing.T) { cliWrongSecret(t, r) })
}

func cliDescribeNetworkInterfaces(t *testing.T, r *cliRunner) {
	t.Parallel()
	v := r.mustSvc(t, "ec2", "describe-network-interfaces", "--filters", "Name=attachment.instance-id,Values=node-1", "Name=addresses.private-ip-address,Values=10.100.1.70")
	nis, _ := v["NetworkInterfaces"].([]any)
	if len(nis) != 1 {
		t.Fatalf("describe-network-interfaces: %d ENIs, want 1: %v", len(nis), v)
	}
	ni := nis[0].(map[string]any)
	var addrs []string
	for _, a := range ni["PrivateIpAddresses"].([]any) {
		addrs = append(addrs, a.(map[string]any)["PrivateIpAddress"].(string))
	}
	att, _ := ni["Attachment"].(map[string]any)
	if ni["NetworkInterfaceId"] != "eni-cli-0" || ni["MacAddress"] != "02:d1:0a:64:01:0a" || att["InstanceId"] != "node-1" ||
		strings.Join(addrs, ",") != "10.100.1.10,10.100.1.70" {
		t.Errorf("describe-network-interfaces: %v", ni)
	}
}

func cliAssignPrivateIPAddresses(t *testing.T, r *cliRunner) {
	t.Parallel()
	v := r.mustSvc(t, "ec2", "assign-private-ip-addresses", "--network-interface-id", "eni-cli-1", "--secondary-private-ip-address-count", "2")
	got, _ := v["AssignedPrivateIpAddresses"].([]any)
	if len(got) != 2 || got[0].(map[string]any)["PrivateIpAddress"] != "10.100.1.128" {
		t.Errorf("assign-private-ip-addresses: %v, want 10.100.1.128 and .129", v)
	}
}

func cliEC2NotFound(t *testing.T, r *cliRunner) {
	t.Parallel()
	if _, out, err := r.run("cli-secret", "ec2", "unassign-private-ip-addresses", "--network-interface-id", "eni-nope", "--private-ip-addresses", "10.100.1.70"); err == nil || !strings.Contains(out, "InvalidNetworkInterfaceID.NotFound") {
		t.Errorf("unassign on an unknown ENI: %v %s; want InvalidNetworkInterfaceID.NotFound", err, out)
	}
}

func cliDescribeLoadBalancers(t *testing.T, r *cliRunner) {
	t.Parallel()
	lbs := r.must(t, "describe-load-balancers")
	if name := first(t, lbs, "LoadBalancers", "LoadBalancerName"); name != "cli" {
		t.Errorf("describe-load-balancers: name %q, want cli", name)
	}
}

func cliDescribeTargetHealth(t *testing.T, r *cliRunner, tgARN string) {
	t.Parallel()
	th := r.must(t, "describe-target-health", "--target-group-arn", tgARN)
	descs, _ := th["TargetHealthDescriptions"].([]any)
	if len(descs) != 2 {
		t.Fatalf("describe-target-health: %d targets, want 2: %v", len(descs), th)
	}
	for _, d := range descs {
		dm := d.(map[string]any)
		state := dm["TargetHealth"].(map[string]any)["State"]
		if state != "healthy" {
			t.Errorf("describe-target-health: %v state %v, want healthy (API-only)", dm["Target"], state)
		}
	}
}

func cliELBNotFound(t *testing.T, r *cliRunner, tgARN string) {
	t.Parallel()
	if _, out, err := r.run("cli-secret", "elbv2", "describe-target-health", "--target-group-arn", tgARN+"x"); err == nil || !strings.Contains(out, "TargetGroupNotFound") {
		t.Errorf("describe-target-health of an unknown group: %v %s; want TargetGroupNotFound", err, out)
	}
}

func cliWrongSecret(t *testing.T, r *cliRunner) {
	t.Parallel()
	if _, out, err := r.run("wrong", "elbv2", "describe-load-balancers"); err == nil || !strings.Contains(out, "SignatureDoesNotMatch") {
		t.Errorf("wrong secret: %v %s; want SignatureDoesNotMatch", err, out)
	}
}

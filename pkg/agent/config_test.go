package agent

import (
	"strings"
	"testing"

	"github.com/spf13/pflag"

	cloudaws "github.com/directlb/directlb/pkg/cloud/aws"
)

func TestConfigValidate(t *testing.T) {
	cases := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{name: "defaults", args: nil},
		{name: "all flags", args: []string{"--kubeconfig=/k", "--hostname-override=Node-1", "--cgroup-root=/sys/fs/cgroup/unified/directlb/node-1", "--bpf-root=/sys/fs/bpf/directlb/node-1", "--cluster-cidr=10.100.0.0/16", "--metrics-bind-address=127.0.0.1:0", "--healthz-bind-address=", "--k8s-service-host=10.100.0.2", "--k8s-service-port=6443"}},
		{name: "relative bpf root", args: []string{"--bpf-root=bpf"}, wantErr: "--bpf-root"},
		{name: "bad cidr", args: []string{"--cluster-cidr=10.0.0.0"}, wantErr: "--cluster-cidr"},
		{name: "nodeport addresses", args: []string{"--nodeport-addresses=primary,10.0.0.0/8"}},
		{name: "bad nodeport address", args: []string{"--nodeport-addresses=10.0.0.1"}, wantErr: "--nodeport-addresses"},
		{name: "bad metrics address", args: []string{"--metrics-bind-address=10249"}, wantErr: "--metrics-bind-address"},
		{name: "port without host", args: []string{"--k8s-service-port=6443"}, wantErr: "--k8s-service-host"},
		{name: "bad log level", args: []string{"--log-level=loud"}, wantErr: "--log-level"},
		{name: "eni routing", args: []string{"--eni-routing", "--eni-devices=eth0,eth1", "--eni-gateway=10.100.0.1", "--eni-resync=5s"}},
		{name: "bad eni gateway", args: []string{"--eni-routing", "--eni-gateway=10.100.0.0/16"}, wantErr: "--eni-gateway"},
		{name: "bad eni resync", args: []string{"--eni-resync=0s"}, wantErr: "--eni-resync"},
		{name: "eni source ec2", args: []string{"--eni-routing", "--eni-source=ec2", "--eni-instance-id=i-1", "--aws-region=us-east-1", "--aws-endpoint=http://10.100.0.3:4566", "--aws-max-attempts=3", "--aws-max-backoff=1s"}},
		{name: "bad eni source", args: []string{"--eni-source=imds"}, wantErr: "--eni-source"},
		{name: "bad aws endpoint", args: []string{"--aws-endpoint=10.100.0.3:4566"}, wantErr: "--aws-endpoint"},
		{name: "bad aws attempts", args: []string{"--aws-max-attempts=0"}, wantErr: "--aws-max-attempts"},
		{name: "map sizes", args: []string{"--map-size-services=1048576", "--map-size-backends=524288", "--map-size-revnat=262144", "--map-size-sticky=1024"}},
		{name: "map sizes zero are the defaults", args: []string{"--map-size-services=0", "--map-size-backends=0", "--map-size-revnat=0", "--map-size-sticky=0"}},
		{name: "map size too small", args: []string{"--map-size-services=8"}, wantErr: "--map-size-services 8: want 0 (the default) or 16 to 16777216"},
		{name: "small hash map", args: []string{"--map-size-services=40", "--map-size-backends=16"}},
		{name: "lru map size too small", args: []string{"--map-size-sticky=512"}, wantErr: "--map-size-sticky 512: want 0 (the default) or 1024 to 4194304"},
		{name: "hash map size too big", args: []string{"--map-size-backends=16777217"}, wantErr: "--map-size-backends"},
		{name: "lru map size too big", args: []string{"--map-size-revnat=16777216"}, wantErr: "--map-size-revnat 16777216: want 0 (the default) or 1024 to 4194304"},
		{name: "sticky map size too small", args: []string{"--map-size-sticky=1"}, wantErr: "--map-size-sticky"},
		{name: "cleanup needs only the bpf root", args: []string{"--cleanup", "--cgroup-root="}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := DefaultConfig()
			fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
			cfg.BindFlags(fs)
			if err := fs.Parse(c.args); err != nil {
				t.Fatal(err)
			}
			err := cfg.Validate()
			switch {
			case c.wantErr == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)):
				t.Fatalf("error %v, want one about %s", err, c.wantErr)
			}
		})
	}
}

func TestNodeName(t *testing.T) {
	t.Setenv("NODE_NAME", "from-env")
	c := Config{HostnameOverride: " Node-1 "}
	if n, _ := c.NodeName(); n != "node-1" {
		t.Errorf("override: %q", n)
	}
	c.HostnameOverride = ""
	if n, _ := c.NodeName(); n != "from-env" {
		t.Errorf("env: %q", n)
	}
}

func TestAWSRegionOrDefault(t *testing.T) {
	for _, tc := range []struct {
		name, flag, endpoint, env, defEnv, want string
	}{
		{name: "nothing: no cloud"},
		{name: "flag", flag: "eu-west-1", env: "us-west-2", want: "eu-west-1"},
		{name: "AWS_REGION", env: "us-west-2", defEnv: "eu-west-1", want: "us-west-2"},
		{name: "AWS_DEFAULT_REGION", defEnv: "eu-west-1", want: "eu-west-1"},
		{name: "endpoint alone", endpoint: "http://10.100.0.3:4566", want: "us-east-1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("AWS_REGION", tc.env)
			t.Setenv("AWS_DEFAULT_REGION", tc.defEnv)
			c := Config{AWS: cloudaws.Config{Region: tc.flag, Endpoint: tc.endpoint}}
			if got := c.AWSRegionOrDefault(); got != tc.want {
				t.Errorf("region %q, want %q", got, tc.want)
			}
		})
	}
}

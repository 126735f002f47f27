package cni

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/google/go-cmp/cmp"

	"github.com/directlb/directlb/pkg/cni/ipam"
	"github.com/directlb/directlb/pkg/cni/podnet"
)

func TestLoadConfig(t *testing.T) {
	const minimal = `{"cniVersion":"1.1.0","name":"directlb","type":"directlb-cni","instanceID":"node-1","aws":{"region":"us-east-1"}}`
	c, err := LoadConfig([]byte(minimal))
	if err != nil {
		t.Fatal(err)
	}
	warm := DefaultWarmIPTarget
	want := Settings{
		InstanceID: "node-1", AWS: AWS{Region: "us-east-1", MaxAttempts: DefaultMaxAttempts},
		DataDir: DefaultDataDir, WarmIPTarget: &warm, LogFile: DefaultLogFile, LogLevel: DefaultLogLevel,
		CloudTimeout: Duration{DefaultCloudTimeout},
	}
	if diff := cmp.Diff(want, c.Settings); diff != "" {
		t.Errorf("defaults (-want +got):\n%s", diff)
	}
	if c.Name != "directlb" || c.CNIVersion != "1.1.0" || c.PoolDir() != DefaultDataDir+"/node-1" {
		t.Errorf("standard keys: %+v, pool %s", c.PluginConf, c.PoolDir())
	}

	full := `{"cniVersion":"1.0.0","name":"n","type":"directlb-cni","instanceID":"i-0abc",
		"aws":{"endpoint":"http://10.100.0.3:4566","region":"eu-west-1","sharedCredentialsFile":"/etc/directlb/cni-credentials","maxAttempts":5},
		"dataDir":"/data","warmIPTarget":0,"firstENI":1,"logFile":"/log/cni.log","logLevel":"debug","cloudTimeout":"3s"}`
	c, err = LoadConfig([]byte(full))
	if err != nil {
		t.Fatal(err)
	}
	ac := c.CloudConfig()
	if *c.WarmIPTarget != 0 || c.FirstENI != 1 || c.CloudTimeout.Duration != 3*time.Second || ac.Endpoint != "http://10.100.0.3:4566" ||
		ac.Region != "eu-west-1" || ac.MaxAttempts != 5 || ac.SharedCredentialsFile != "/etc/directlb/cni-credentials" || len(ac.RateLimits) != 0 {
		t.Errorf("full configuration read as %+v, cloud %+v", c.Settings, ac)
	}
}

func TestLoadConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		conf string
		want []string // each in the error
	}{
		{name: "not JSON", conf: `{`, want: []string{"decode directlb-cni configuration"}},
		{name: "no instance, no region", conf: `{"name":"n"}`, want: []string{`instanceID ""`, "aws.region: must not be empty"}},
		{
			name: "every setting wrong",
			conf: `{"name":"n","instanceID":"a/b","aws":{"region":"r","endpoint":"10.0.0.1:4566","sharedCredentialsFile":"creds","maxAttempts":-1},
				"dataDir":"data","warmIPTarget":-1,"firstENI":-2,"logFile":"cni.log","logLevel":"loud","cloudTimeout":"-1s"}`,
			want: []string{`instanceID "a/b"`, `aws.endpoint "10.0.0.1:4566"`, `aws.sharedCredentialsFile "creds"`,
				"aws.maxAttempts -1", `dataDir "data"`, "warmIPTarget -1", "firstENI -2", `logFile "cni.log"`, `logLevel "loud"`, "cloudTimeout -1s"},
		},
		{name: "bad duration", conf: `{"name":"n","instanceID":"i","aws":{"region":"r"},"cloudTimeout":"soon"}`, want: []string{"soon"}},
		{name: "duration not a string", conf: `{"name":"n","instanceID":"i","aws":{"region":"r"},"cloudTimeout":10}`, want: []string{`want a duration such as "10s"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := LoadConfig([]byte(tc.conf))
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestHolderFromArgs(t *testing.T) {
	got := holder(&skel.CmdArgs{ContainerID: "abc", IfName: "eth0",
		Args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-7c9f8b5d4-x2x7q;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u"})
	want := ipam.Holder{ContainerID: "abc", IfName: "eth0", Namespace: "shop", Pod: "web-7c9f8b5d4-x2x7q", Veth: podnet.HostVeth("abc", "eth0")}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("holder (-want +got):\n%s", diff)
	}
	if h := holder(&skel.CmdArgs{ContainerID: "abc", IfName: "net1"}); h.Veth == want.Veth || h.Pod != "" {
		t.Errorf("a second interface of the container: %+v; want its own veth and no pod", h)
	}
}

// TestResultVersions: the ADD result converts to every version the plugin
// advertises (the runtime asks for the conflist's cniVersion).
func TestResultVersions(t *testing.T) {
	r := result(podnet.Attachment{Netns: "/run/netns/p", IfName: "eth0", HostVeth: "dlb01234567", ENIDevice: "eth1", IP: netip.MustParseAddr("10.0.1.64")},
		ipam.Allocation{IP: netip.MustParseAddr("10.0.1.64"), ENIID: "eni-1", MAC: "02:00:00:00:00:01"},
		podnet.Links{HostMAC: "02:aa:00:00:00:01", PodMAC: "02:bb:00:00:00:01", MTU: 9001})
	for _, v := range Versions.SupportedVersions() {
		got, err := r.GetAsVersion(v)
		if err != nil {
			t.Errorf("result as %s: %v", v, err)
			continue
		}
		if got.Version() != v {
			t.Errorf("result as %s says %s", v, got.Version())
		}
	}
}

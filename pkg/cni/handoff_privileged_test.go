package cni_test

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/directlb/directlb/internal/namedns"
	"github.com/directlb/directlb/pkg/eni"
	"github.com/directlb/directlb/pkg/localcloud/localcloudtest"
)

// TestHandOffToNodeAgentPrivileged runs the plugin as the binary does, on
// pkg/cloud/aws against localcloud (signed with a shared credentials
// file), on a node whose devices carry localcloud's node-1 MACs and
// primary addresses, and checks that node-agent's ENI routing (pkg/eni)
// finds the pod's ENI from either source: EC2's secondary addresses
// (MapCloud) and the proxy neighbour entries (ProxyOwners). DEL with
// warmIPTarget 0 takes the address out of localcloud.
func TestHandOffToNodeAgentPrivileged(t *testing.T) {
	for _, env := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"} {
		t.Setenv(env, "")
	}
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(t.TempDir(), "none"))
	srv, ec2 := localcloudtest.ENICloud(t)
	n := newNodeWith(t, net.HardwareAddr{0x02, 0xd1, 0, 0, 1, 0}, net.HardwareAddr{0x02, 0xd1, 0, 0, 1, 1}, "10.100.1.10/16", "10.100.1.11/16")
	n.cloud = nil // the plugin builds its own EC2 client
	creds := filepath.Join(n.dataDir, "credentials")
	must(t, os.WriteFile(creds, fmt.Appendf(nil, "[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n",
		localcloudtest.AccessKeyID, localcloudtest.SecretAccessKey), 0o600))
	conf := []byte(strings.Replace(string(n.conf(0, 1)), `"endpoint":"http://127.0.0.1:9"`,
		fmt.Sprintf(`"endpoint":"http://%s","sharedCredentialsFile":%q`, srv.Addr(), creds), 1))

	args := n.pod(t, "web-7c9f8b5d4-x2x7q", "c1")
	res, err := n.add(t, args, conf)
	if err != nil {
		t.Fatalf("ADD against localcloud: %v", err)
	}
	ip := netip.MustParseAddr(res.IPs[0].Address.IP.String())
	if !netip.MustParsePrefix("10.100.1.128/26").Contains(ip) || res.Interfaces[2].Name != "eth1" {
		t.Fatalf("ADD gave %s on %s; want an address of eni-node1-1's pool on eth1", ip, res.Interfaces[2].Name)
	}

	nis, err := ec2.InstanceNetworkInterfaces(t.Context(), "node-1")
	must(t, err)
	var links []eni.Link
	var gw netip.Addr
	must(t, namedns.Do(n.name, func() error {
		var err error
		links, gw, err = eni.Links(nil)
		return err
	}))
	m := eni.MapCloud(nis, links, nil, netip.Addr{}, gw)
	if got := m.Owners[ip]; got != "eth1" {
		t.Errorf("--eni-source=ec2: node-agent sees %s on %q (unmatched: %v); want eth1", ip, got, m.Unmatched)
	}
	owners, err := eni.ProxyOwners(n.h, m.ENIs)
	must(t, err)
	if got := owners[ip]; got != "eth1" {
		t.Errorf("--eni-source=links: node-agent sees %s on %q; want eth1", ip, got)
	}

	must(t, n.del(t, args, conf))
	nis, err = ec2.InstanceNetworkInterfaces(t.Context(), "node-1")
	must(t, err)
	for _, ni := range nis {
		for _, a := range ni.SecondaryIPs {
			if a == ip {
				t.Errorf("%s still holds %s in localcloud after DEL with warmIPTarget 0", ni.ID, ip)
			}
		}
	}
}

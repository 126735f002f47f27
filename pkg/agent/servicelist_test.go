package agent

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/directlb/directlb/pkg/datapath"
	"github.com/directlb/directlb/pkg/proxy"
)

func addrPorts(s ...string) []netip.AddrPort {
	out := make([]netip.AddrPort, len(s))
	for i, a := range s {
		out[i] = netip.MustParseAddrPort(a)
	}
	return out
}

// TestServiceListFormat: the list from maps programmed with a ClusterIP
// (affinity), its address entry, a drop frontend, a NodePort, an external
// address, and the tc frontends of Cluster (snat) and Local.
func TestServiceListFormat(t *testing.T) {
	maps := datapath.NewFakeMaps()
	lb := datapath.NewLoadBalancer(datapath.LoadBalancerConfig{Maps: maps})
	web := datapath.Frontend{Addr: netip.MustParseAddr("10.96.0.10"), Port: 80, Proto: datapath.TCP}
	lbIP := datapath.Frontend{Addr: netip.MustParseAddr("192.0.2.10"), Port: 80, Proto: datapath.TCP}
	if _, err := lb.Apply([]datapath.Service{
		{Frontend: web, Backends: addrPorts("10.1.0.1:8080", "10.1.0.2:8080"), AffinityTimeout: 3 * time.Hour},
		{Frontend: datapath.AddressFrontend(web.Addr)},
		{Frontend: datapath.Frontend{Addr: netip.MustParseAddr("10.96.0.53"), Port: 53, Proto: datapath.UDP}, Drop: true},
		{Frontend: datapath.AddressFrontend(netip.MustParseAddr("10.96.0.53"))},
		{Frontend: datapath.NodePortFrontend(30080, datapath.TCP), Backends: addrPorts("10.1.0.1:8080")},
		{Frontend: lbIP, Backends: addrPorts("10.1.0.1:8080")},
		{Frontend: datapath.NodePortFrontend(30080, datapath.TCP).External(), Backends: addrPorts("10.1.0.1:8080"), SNAT: true},
		{Frontend: lbIP.External(), Backends: addrPorts("10.1.0.1:8080")},
	}, nil); err != nil {
		t.Fatal(err)
	}
	entries, err := proxy.ReadServiceTable(maps)
	if err != nil {
		t.Fatal(err)
	}
	l := BuildServiceList(entries, map[netip.Addr]datapath.NodeAddressFlags{
		netip.MustParseAddr("10.0.0.2"): datapath.NodeAddressRemote, netip.MustParseAddr("10.0.0.1"): datapath.NodeAddressLocal,
	})
	for i := range l.Frontends {
		l.Frontends[i].ID = uint32(i + 1) // IDs depend on the write order
	}
	var out bytes.Buffer
	if err := WriteServiceList(&out, l); err != nil {
		t.Fatal(err)
	}
	want := `FRONTEND                      TYPE            SVC-ID   BACKENDS                      FLAGS
10.96.0.10/any                ClusterIP       1        <none>                        <none>
10.96.0.10:80/TCP             ClusterIP       2        10.1.0.1:8080,10.1.0.2:8080   affinity=10800s
10.96.0.53/any                ClusterIP       3        <none>                        <none>
10.96.0.53:53/UDP             ClusterIP       4        <none>                        drop
192.0.2.10:80/TCP             ExternalIP/LB   5        10.1.0.1:8080                 <none>
external:192.0.2.10:80/TCP    ExternalIP/LB   6        10.1.0.1:8080                 local
external:nodeport:30080/TCP   NodePort        7        10.1.0.1:8080                 snat
nodeport:30080/TCP            NodePort        8        10.1.0.1:8080                 <none>

NodePorts are served on: 10.0.0.1 (this node), 10.0.0.2
`
	if diff := cmp.Diff(want, out.String()); diff != "" {
		t.Errorf("table (-want +got):\n%s", diff)
	}
	b, err := json.Marshal(l)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{
		`{"frontend":"10.96.0.10:80/TCP","type":"ClusterIP","id":2,"backends":["10.1.0.1:8080","10.1.0.2:8080"],"flags":["affinity"],"affinityTimeoutSeconds":10800}`,
		`"nodeAddresses":[{"address":"10.0.0.1","local":true},{"address":"10.0.0.2","local":false}]`,
	} {
		if !strings.Contains(string(b), s) {
			t.Errorf("json %s\nlacks %s", b, s)
		}
	}
}

func TestServiceCommandUsage(t *testing.T) {
	for _, args := range [][]string{nil, {"show"}, {"list", "-o", "yaml"}, {"list", "--nope"}} {
		var out, errb bytes.Buffer
		if rc := ServiceCommand(args, &out, &errb); rc != 2 || errb.Len() == 0 {
			t.Errorf("service %q: status %d, stderr %q; want 2 and a message", args, rc, errb.String())
		}
	}
	var out, errb bytes.Buffer
	if rc := ServiceCommand([]string{"list", "--bpf-root", t.TempDir()}, &out, &errb); rc != 1 || !strings.Contains(errb.String(), "no pinned map") {
		t.Errorf("service list on an empty root: status %d, stderr %q", rc, errb.String())
	}
}

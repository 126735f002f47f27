//go:build linux

package agent

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/directlb/directlb/internal/privileged"
	"github.com/directlb/directlb/pkg/datapath"
)

// TestServiceListFromPins loads the real datapath into a private bpffs,
// programs a Service with three backends and a node address, closes the
// datapath (the agent is gone; the pins stay), and lists the pins as
// `node-agent service list` does, as a table and as JSON.
func TestServiceListFromPins(t *testing.T) {
	privileged.Require(t, "loads BPF programs and mounts a bpffs")
	privileged.RequireKernel(t, datapath.CheckKernel)
	bpffs := t.TempDir()
	if err := unix.Mount("bpffs", bpffs, "bpf", 0, "mode=0700"); err != nil {
		t.Fatalf("mount bpffs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(bpffs, unix.MNT_DETACH) })
	root := filepath.Join(bpffs, "directlb")
	dp, err := datapath.Load(datapath.Config{BPFRoot: root})
	if err != nil {
		t.Fatal(err)
	}
	defer datapath.Cleanup(root)
	lb := datapath.NewLoadBalancer(datapath.LoadBalancerConfig{Maps: dp.Maps})
	fe := datapath.Frontend{Addr: netip.MustParseAddr("10.96.0.10"), Port: 80, Proto: datapath.TCP}
	if _, err := lb.Apply([]datapath.Service{
		{Frontend: fe, Backends: addrPorts("10.1.0.1:8080", "10.1.0.2:8080", "10.1.0.3:8080")},
		{Frontend: datapath.AddressFrontend(fe.Addr)},
	}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := lb.SetNodeAddresses(map[netip.Addr]datapath.NodeAddressFlags{netip.MustParseAddr("10.0.0.1"): datapath.NodeAddressLocal}); err != nil {
		t.Fatal(err)
	}
	// While the agent holds the maps, and after it is gone.
	if l, err := ReadServiceList(root); err != nil || len(l.Frontends) != 2 {
		t.Errorf("list while the datapath is loaded: %+v, %v", l, err)
	}
	dp.Close()

	var out, errb bytes.Buffer
	if rc := ServiceCommand([]string{"list", "--bpf-root", root}, &out, &errb); rc != 0 {
		t.Fatalf("service list: status %d: %s", rc, errb.String())
	}
	t.Logf("node-agent service list --bpf-root %s:\n%s", root, out.String())
	var line []string
	for _, l := range strings.Split(out.String(), "\n") {
		if f := strings.Fields(l); len(f) > 0 && f[0] == "10.96.0.10:80/TCP" {
			line = f
		}
	}
	if len(line) != 5 || line[1] != "ClusterIP" || line[3] != "10.1.0.1:8080,10.1.0.2:8080,10.1.0.3:8080" {
		t.Errorf("frontend line %q, want ClusterIP with the three backends", line)
	}
	if !strings.Contains(out.String(), "10.96.0.10/any") || !strings.Contains(out.String(), "NodePorts are served on: 10.0.0.1 (this node)") {
		t.Errorf("no address entry or node address in\n%s", out.String())
	}

	out.Reset()
	if rc := ServiceCommand([]string{"list", "--bpf-root", root, "-o", "json"}, &out, &errb); rc != 0 {
		t.Fatalf("service list -o json: status %d: %s", rc, errb.String())
	}
	var l ServiceList
	if err := json.Unmarshal(out.Bytes(), &l); err != nil {
		t.Fatal(err)
	}
	if len(l.Frontends) != 2 || l.Frontends[1].Frontend != "10.96.0.10:80/TCP" || len(l.Frontends[1].Backends) != 3 || l.Frontends[1].ID == 0 {
		t.Errorf("json: %+v", l)
	}
}

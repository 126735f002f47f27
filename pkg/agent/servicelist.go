package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/spf13/pflag"

	"github.com/directlb/directlb/pkg/datapath"
	"github.com/directlb/directlb/pkg/proxy"
)

// ServiceList is what `node-agent service list` prints: the frontends the
// pinned maps hold, and the node addresses NodePorts are served on.
type ServiceList struct {
	Frontends     []ListedFrontend `json:"frontends"`
	NodeAddresses []NodeAddress    `json:"nodeAddresses"`
}

// ListedFrontend is one frontend as the pinned maps hold it. The maps keep
// no Service names; ID is the service ID the agent gave the frontend.
type ListedFrontend struct {
	// Frontend is ip:port/proto, ip/any (a ClusterIP's address entry:
	// its other ports are refused), nodeport:port/proto, or either with
	// external: (the tc programs, traffic from outside the node).
	Frontend string `json:"frontend"`
	// Type is ClusterIP, NodePort, or ExternalIP/LB: an address that is
	// not a ClusterIP is an externalIP or a load-balancer IP, which the
	// maps do not tell apart.
	Type            string   `json:"type"`
	ID              uint32   `json:"id"`
	Backends        []string `json:"backends"`
	Flags           []string `json:"flags,omitempty"`
	AffinityTimeout uint32   `json:"affinityTimeoutSeconds,omitempty"`
	// Missing counts slots whose backend is not in the maps.
	Missing int `json:"missingBackends,omitempty"`
}

// NodeAddress is an address whose NodePorts are translated.
type NodeAddress struct {
	Address string `json:"address"`
	// Local: this node's; else another node's (reached from here through
	// the socket hooks).
	Local bool `json:"local"`
}

// Types of a listed frontend.
const (
	TypeClusterIP  = "ClusterIP"
	TypeNodePort   = "NodePort"
	TypeExternalLB = "ExternalIP/LB"
)

// BuildServiceList turns the maps' table (proxy.ReadServiceTable) and node
// addresses into the list. A frontend is a ClusterIP when its address has
// an address entry (only ClusterIPs get one).
func BuildServiceList(entries []proxy.TableEntry, nodeAddrs map[netip.Addr]datapath.NodeAddressFlags) ServiceList {
	clusterIPs := map[netip.Addr]bool{}
	for _, e := range entries {
		if e.Frontend.IsAddress() {
			clusterIPs[e.Frontend.Addr] = true
		}
	}
	l := ServiceList{Frontends: make([]ListedFrontend, 0, len(entries)), NodeAddresses: []NodeAddress{}}
	for _, e := range entries {
		fe := e.Frontend
		f := ListedFrontend{Frontend: e.Name, ID: e.ID, Backends: make([]string, 0, len(e.Backends)), AffinityTimeout: e.AffinityTimeout, Missing: e.Missing}
		switch {
		case fe.IsNodePort():
			f.Type = TypeNodePort
		case fe.IsAddress() || clusterIPs[fe.Addr]:
			f.Type = TypeClusterIP
		default:
			f.Type = TypeExternalLB
		}
		for _, b := range e.Backends {
			f.Backends = append(f.Backends, strings.TrimSuffix(b, "/"+fe.Proto.String()))
		}
		f.Flags = append(f.Flags, e.Flags...)
		if fe.Scope&datapath.ScopeExternal != 0 && !slices.Contains(e.Flags, "snat") {
			// externalTrafficPolicy Local: the client's address is kept.
			f.Flags = append(f.Flags, "local")
		}
		l.Frontends = append(l.Frontends, f)
	}
	for a, fl := range nodeAddrs {
		l.NodeAddresses = append(l.NodeAddresses, NodeAddress{Address: a.String(), Local: fl&datapath.NodeAddressLocal != 0})
	}
	slices.SortFunc(l.NodeAddresses, func(a, b NodeAddress) int {
		return netip.MustParseAddr(a.Address).Compare(netip.MustParseAddr(b.Address))
	})
	return l
}

// WriteServiceList prints the list as kubectl get does: one frontend a
// line, then the node addresses.
func WriteServiceList(w io.Writer, l ServiceList) error {
	tw := tabwriter.NewWriter(w, 0, 4, 3, ' ', 0)
	fmt.Fprintln(tw, "FRONTEND\tTYPE\tSVC-ID\tBACKENDS\tFLAGS")
	for _, f := range l.Frontends {
		bs := strings.Join(f.Backends, ",")
		if len(f.Backends) == 0 {
			bs = "<none>"
		}
		if f.Missing > 0 {
			bs += fmt.Sprintf(" (+%d missing)", f.Missing)
		}
		flags := make([]string, 0, len(f.Flags))
		for _, fl := range f.Flags {
			if fl == "affinity" && f.AffinityTimeout > 0 {
				fl = fmt.Sprintf("affinity=%ds", f.AffinityTimeout)
			}
			flags = append(flags, fl)
		}
		fs := strings.Join(flags, ",")
		if fs == "" {
			fs = "<none>"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\n", f.Frontend, f.Type, f.ID, bs, fs)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(l.NodeAddresses) > 0 {
		addrs := make([]string, 0, len(l.NodeAddresses))
		for _, a := range l.NodeAddresses {
			if a.Local {
				addrs = append(addrs, a.Address+" (this node)")
			} else {
				addrs = append(addrs, a.Address)
			}
		}
		_, err := fmt.Fprintf(w, "\nNodePorts are served on: %s\n", strings.Join(addrs, ", "))
		return err
	}
	return nil
}

// ReadServiceList opens the maps pinned under bpfRoot read-only and reads
// the list from them; the agent need not run.
func ReadServiceList(bpfRoot string) (ServiceList, error) {
	pm, err := datapath.OpenPinned(bpfRoot)
	if err != nil {
		return ServiceList{}, err
	}
	defer pm.Close()
	entries, err := proxy.ReadServiceTable(pm)
	if err != nil {
		return ServiceList{}, err
	}
	nodeAddrs := map[netip.Addr]datapath.NodeAddressFlags{}
	if err := pm.DumpNodeAddresses(func(a netip.Addr, f datapath.NodeAddressFlags) { nodeAddrs[a] = f }); err != nil {
		return ServiceList{}, err
	}
	return BuildServiceList(entries, nodeAddrs), nil
}

// ServiceCommand runs `node-agent service <args>` and returns the exit
// status: `service list [--bpf-root DIR] [-o table|json]`.
func ServiceCommand(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "list" {
		fmt.Fprintln(stderr, "usage: node-agent service list [--bpf-root DIR] [-o table|json]")
		return 2
	}
	fs := pflag.NewFlagSet("node-agent service list", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	bpfRoot := fs.String("bpf-root", DefaultConfig().BPFRoot, "The agent's --bpf-root: the maps pinned in <bpf-root>/maps are opened read-only (the agent need not run). The maps hold no Service names: SVC-ID is the agent's ID for the frontend; /debug/services on a running agent names the Services.")
	output := fs.StringP("output", "o", "table", "Output format: table or json.")
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(stderr, "node-agent service list:", err)
		return 2
	}
	if *output != "table" && *output != "json" {
		fmt.Fprintf(stderr, "node-agent service list: -o %q: want table or json\n", *output)
		return 2
	}
	l, err := ReadServiceList(*bpfRoot)
	if err != nil {
		fmt.Fprintln(stderr, "node-agent service list:", err)
		return 1
	}
	if *output == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		err = enc.Encode(l)
	} else {
		err = WriteServiceList(stdout, l)
	}
	if err != nil {
		fmt.Fprintln(stderr, "node-agent service list:", err)
		return 1
	}
	return 0
}

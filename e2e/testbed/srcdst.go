package testbed

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"

	"github.com/directlb/directlb/internal/namedns"
)

// srcDstTable is the nftables table (bridge family, in the VPC namespace)
// that implements the VPC's source/destination check.
const srcDstTable = "directlb_srcdst"

// portOwnership says which IPv4 sources may enter the VPC on a bridge port.
type portOwnership struct {
	Port  string
	Owned []netip.Prefix
}

// ownership lists, for every bridge port of the VPC, the addresses it owns:
// an ENI owns its address and its pod range, the host port its address, the
// cloud port its address and the load-balancer range.
func ownership(t *Topology) []portOwnership {
	out := []portOwnership{
		{Port: "host", Owned: []netip.Prefix{netip.PrefixFrom(t.HostAddr, 32)}},
		{Port: "cloud", Owned: []netip.Prefix{netip.PrefixFrom(t.CloudAddr, 32), t.LoadBalancerCIDR}},
	}
	for i, n := range t.Nodes {
		for _, e := range n.ENIs {
			out = append(out, portOwnership{
				Port:  vpcPortName(i+1, e.DeviceIdx),
				Owned: []netip.Prefix{netip.PrefixFrom(e.Addr.Addr(), 32), e.PodRange},
			})
		}
	}
	return out
}

// srcDstRuleset renders the nft script that (re)creates the check: a frame
// carrying IPv4 that enters on a known port with a source the port does not
// own is counted and dropped before the bridge forwards or routes it.
func srcDstRuleset(owners []portOwnership) string {
	var b strings.Builder
	// Declaring then deleting makes the script idempotent.
	fmt.Fprintf(&b, "table bridge %s\ndelete table bridge %s\n", srcDstTable, srcDstTable)
	fmt.Fprintf(&b, "table bridge %s {\n", srcDstTable)
	b.WriteString("\tchain prerouting {\n")
	b.WriteString("\t\ttype filter hook prerouting priority -200; policy accept;\n")
	b.WriteString("\t\tether type != ip accept\n")
	for _, o := range owners {
		set := make([]string, len(o.Owned))
		for i, p := range o.Owned {
			if p.Bits() == 32 {
				set[i] = p.Addr().String()
			} else {
				set[i] = p.Masked().String()
			}
		}
		fmt.Fprintf(&b, "\t\tiifname %q ip saddr { %s } accept\n", o.Port, strings.Join(set, ", "))
		fmt.Fprintf(&b, "\t\tiifname %q counter drop\n", o.Port)
	}
	b.WriteString("\t}\n}\n")
	return b.String()
}

// applySourceDestCheck loads the check into the VPC namespace.
func applySourceDestCheck(ctx context.Context, t *Topology) error {
	return nftInNetNS(ctx, t.VPCNetNS, srcDstRuleset(ownership(t)))
}

// nftInNetNS runs 'nft -f -' with script inside a named network namespace.
func nftInNetNS(ctx context.Context, nsName, script string) error {
	cmd := exec.CommandContext(ctx, "nsenter", "--net="+namedns.Path(nsName), "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("nft in netns %s: %w: %s", nsName, err, strings.TrimSpace(out.String()))
	}
	return nil
}

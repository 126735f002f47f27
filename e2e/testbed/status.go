package testbed

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// WriteStatus prints the test bed's topology, its processes and what the
// apiserver says about the nodes.
func WriteStatus(ctx context.Context, w io.Writer, stateDir string) error {
	t, err := Load(stateDir)
	if err != nil {
		present, perr := Present(stateDir)
		if perr == nil && !present {
			fmt.Fprintln(w, "test bed: down")
			return nil
		}
		return fmt.Errorf("test bed: partly present, no topology (run down): %w", err)
	}
	fmt.Fprintf(w, "state dir    %s\nkubeconfig   %s (host), %s (VPC)\napiserver    %s\nVPC          %s (gateway %s, netns %s)\nhost         %s on %s\ncloud        %s (netns %s, LBs %s)",
		t.StateDir, t.Kubeconfig, t.VPCKubeconfig, t.APIServer, t.VPC, t.Gateway, t.VPCNetNS, t.HostAddr, HostLink, t.CloudAddr, t.CloudNetNS, t.LoadBalancerCIDR)
	if t.LocalcloudURL != "" {
		fmt.Fprintf(w, ", localcloud %s", t.LocalcloudURL)
	}
	fmt.Fprintf(w, "\nsrc/dst check %v\n\n", t.SourceDestCheck)

	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tNETNS\tENI\tDEVICE\tMAC\tADDRESS\tPOD RANGE")
	for _, n := range t.Nodes {
		for _, e := range n.ENIs {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", n.Name, n.NetNS, e.ID, e.Device, e.MAC, e.Addr, e.PodRange)
		}
	}
	tw.Flush()

	pids, err := readPIDFiles(stateDir)
	if err != nil {
		return err
	}
	names := make([]string, 0, len(pids))
	for n := range pids {
		names = append(names, n)
	}
	sort.Strings(names)
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "PROCESS\tPID\tSTATE\tLOG")
	for _, n := range names {
		state := "gone"
		if pidInTestbed(pids[n]) {
			state = "running"
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\n", n, pids[n], state, logPath(stateDir, n))
	}
	tw.Flush()

	cs, err := Clientset(t)
	if err != nil {
		return err
	}
	fmt.Fprintln(w)
	nodes, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		fmt.Fprintf(w, "apiserver: %v\n", err)
		return nil
	}
	fmt.Fprintf(w, "apiserver: %d nodes registered, %d Ready", len(nodes.Items), readyNodes(nodes.Items))
	var list []string
	for _, n := range nodes.Items {
		list = append(list, n.Name)
	}
	if len(list) > 0 {
		fmt.Fprintf(w, " (%s)", strings.Join(list, ", "))
	}
	fmt.Fprintln(w)
	return nil
}

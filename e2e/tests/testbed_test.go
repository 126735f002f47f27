package tests

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/vishvananda/netlink"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/directlb/directlb/e2e/testbed"
	"github.com/directlb/directlb/internal/namedns"
)

// After up, 'kubectl get nodes' lists every node of the topology, Ready,
// with its primary ENI's address as InternalIP.
func TestNodesReady(t *testing.T) {
	b := requireBed(t)
	out := b.MustKubectl(t, "get", "nodes", "--no-headers", "-o", "custom-columns=NAME:.metadata.name,READY:.status.conditions[?(@.type==\"Ready\")].status,IP:.status.addresses[?(@.type==\"InternalIP\")].address")
	var got []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		got = append(got, strings.Join(strings.Fields(line), " "))
	}
	var want []string
	for _, n := range b.Topology.Nodes {
		want = append(want, fmt.Sprintf("%s True %s", n.Name, n.ENIs[0].Addr.Addr()))
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("kubectl get nodes:\n%s\nwant (name ready ip): %q", out, want)
	}
}

// The control plane does what the tests need of it: the ServiceAccount
// controller made the default account and the root CA config map, the
// apiserver signs ServiceAccount tokens, and the "kubernetes" Service is the
// first address of the service range with the apiserver's VPC address as
// its endpoint (pods reach it there).
func TestControlPlane(t *testing.T) {
	b := requireBed(t)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if _, err := b.Client.CoreV1().ConfigMaps(metav1.NamespaceDefault).Get(ctx, "kube-root-ca.crt", metav1.GetOptions{}); err != nil {
		t.Errorf("root CA config map: %v", err)
	}
	tok, err := b.Client.CoreV1().ServiceAccounts(metav1.NamespaceDefault).CreateToken(ctx, "default", &authenticationv1.TokenRequest{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("token request: %v", err)
	}
	review, err := b.Client.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{Spec: authenticationv1.TokenReviewSpec{Token: tok.Status.Token}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("token review: %v", err)
	}
	if !review.Status.Authenticated || review.Status.User.Username != "system:serviceaccount:default:default" {
		t.Errorf("token review: authenticated=%v user=%q error=%q", review.Status.Authenticated, review.Status.User.Username, review.Status.Error)
	}

	svc, err := b.Client.CoreV1().Services(metav1.NamespaceDefault).Get(ctx, "kubernetes", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if want := b.Topology.ServiceCIDR.Addr().Next().String(); svc.Spec.ClusterIP != want {
		t.Errorf("kubernetes Service ClusterIP %s, want %s", svc.Spec.ClusterIP, want)
	}
	slices, err := b.Client.DiscoveryV1().EndpointSlices(metav1.NamespaceDefault).List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=kubernetes"})
	if err != nil {
		t.Fatal(err)
	}
	var addrs []string
	for _, s := range slices.Items {
		for _, e := range s.Endpoints {
			addrs = append(addrs, e.Addresses...)
		}
	}
	if want := b.Topology.HostAddr.String(); len(addrs) != 1 || addrs[0] != want {
		t.Errorf("kubernetes endpoints %v, want [%s]", addrs, want)
	}
}

// A node reaches the apiserver at the host's VPC address, as pods do.
func TestAPIServerFromNode(t *testing.T) {
	b := requireBed(t)
	n := b.Topology.Nodes[0]
	addr := netip.AddrPortFrom(b.Topology.HostAddr, 6443).String()
	err := namedns.Do(n.NetNS, func() error {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			return err
		}
		return c.Close()
	})
	if err != nil {
		t.Errorf("connect to %s from %s: %v", addr, n.NetNS, err)
	}
}

// localcloud's /admin (fault injection, ENI ownership) answers only inside
// the cloud's namespace: from a node (where hostNetwork pods live, and on
// the VPC like every pod) the API answers and /admin is not there, nor is
// the admin listener.
func TestLocalcloudAdminNotOnTheVPC(t *testing.T) {
	b := requireCloud(t)
	get := func(ns, url string) (int, error) {
		c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true, DialContext: namedns.Dialer(ns)}}
		resp, err := c.Get(url)
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	node := b.Topology.Nodes[0].NetNS
	// The API answers (with its own error for an unsigned GET): no admin
	// endpoint behind that path.
	if code, err := get(node, b.Topology.LocalcloudURL+"/admin/state"); err != nil || code == http.StatusOK {
		t.Errorf("GET /admin/state on the API endpoint from %s: %d %v, want the API's error", node, code, err)
	}
	// The admin port on the cloud's VPC address: nothing listens there.
	adminOnVPC := strings.Replace(b.Topology.LocalcloudAdminURL, "127.0.0.1", b.Topology.CloudAddr.String(), 1)
	if _, err := get(node, adminOnVPC+"/admin/state"); err == nil {
		t.Errorf("%s answered from %s: the admin listener is not on the cloud namespace's loopback only", adminOnVPC, node)
	}
	if code, err := get(b.Topology.CloudNetNS, b.Topology.LocalcloudAdminURL+"/admin/state"); err != nil || code != http.StatusOK {
		t.Errorf("GET /admin/state inside %s: %d %v, want 200", b.Topology.CloudNetNS, code, err)
	}
}

// No packet for the test bed's ranges can leave through the host's own
// interfaces, and the VPC has no way out: the host routes every guarded
// range into dlb-host (or to 'unreachable'), and the VPC router has no
// route for an outside address.
func TestHostSafety(t *testing.T) {
	b := requireBed(t)
	host, err := netlink.LinkByName(testbed.HostLink)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"10.100.200.200", "198.51.100.77", "10.96.33.33"} {
		routes, err := netlink.RouteGet(net.ParseIP(a))
		if err != nil {
			t.Errorf("route to %s: %v (only unreachable is acceptable)", a, err)
			continue
		}
		for _, r := range routes {
			if r.LinkIndex != host.Attrs().Index {
				t.Errorf("route to %s leaves via link %d, want %s (%d)", a, r.LinkIndex, testbed.HostLink, host.Attrs().Index)
			}
		}
	}
	// The guard routes stay when dlb-host's routes go.
	all, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Type: 7 /* RTN_UNREACHABLE */}, netlink.RT_FILTER_TYPE)
	if err != nil {
		t.Fatal(err)
	}
	var guarded []string
	for _, r := range all {
		if r.Dst != nil {
			guarded = append(guarded, r.Dst.String())
		}
	}
	for _, p := range []netip.Prefix{b.Topology.VPC, b.Topology.LoadBalancerCIDR, b.Topology.ServiceCIDR} {
		if !slices.Contains(guarded, p.String()) {
			t.Errorf("no unreachable route for %s on the host (have %v)", p, guarded)
		}
	}

	ns, err := namedns.Open(b.Topology.VPCNetNS)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if routes, err := h.RouteGet(net.ParseIP("192.0.2.200")); err == nil {
		t.Errorf("the VPC routes an outside address: %v", routes)
	}
}

// The kubelets run with the sysctls they want, but the host keeps its own:
// each kubelet sees files bind-mounted in its own mount namespace.
func TestHostSysctlsUntouched(t *testing.T) {
	b := requireBed(t)
	if diff := cmp.Diff(hostSysctls, readSysctls()); diff != "" {
		t.Errorf("host sysctls changed while the kubelets ran (-before +now):\n%s", diff)
	}
	pids, err := os.ReadFile(filepath.Join(b.Topology.StateDir, "run", "kubelet-"+b.Topology.Nodes[0].Name+".pid"))
	if err != nil {
		t.Fatal(err)
	}
	b2, err := os.ReadFile(fmt.Sprintf("/proc/%s/root/proc/sys/vm/overcommit_memory", strings.TrimSpace(string(pids))))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(b2)); got != "1" {
		t.Errorf("the kubelet's vm.overcommit_memory is %q, want the 1 it asks for", got)
	}
}

// The controllers and the scheduler work: a Deployment gets a ReplicaSet,
// its pods get created and bound to nodes.
func TestDeploymentScheduled(t *testing.T) {
	b := requireBed(t)
	ns := "e2e-testbed-sched"
	b.MustKubectl(t, "create", "namespace", ns)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_, _ = b.Kubectl(ctx, "delete", "namespace", ns, "--wait=false")
	})
	b.MustKubectl(t, "-n", ns, "create", "deployment", "sched", "--image=example.com/echo:1", "--replicas=2", "--port=8080")
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	var pods []corev1.Pod
	for {
		list, err := b.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=sched"})
		if err == nil {
			pods = pods[:0]
			for _, p := range list.Items {
				if p.Spec.NodeName != "" {
					pods = append(pods, p)
				}
			}
			if len(pods) == 2 {
				break
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("2 pods of the Deployment bound to nodes: have %d: %v", len(pods), context.Cause(ctx))
		case <-time.After(200 * time.Millisecond):
		}
	}
	for _, p := range pods {
		if _, ok := b.Topology.Node(p.Spec.NodeName); !ok {
			t.Errorf("pod %s bound to %q, not a node of the topology", p.Name, p.Spec.NodeName)
		}
	}
}

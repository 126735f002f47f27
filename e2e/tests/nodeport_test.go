package tests

// NodePorts, externalIPs and load-balancer IPs by the node agent, the way a
// user sees them with kube-proxy replaced: one node-agent per node with the
// north-south programs on both ENIs (--nodeport-devices), echo pods spread
// over the nodes, and clients on the host (outside every node), in another
// node's namespace (not in its pods' cgroup: the packets arrive from the
// VPC) and in a pod (the socket hooks).

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/directlb/directlb/e2e/framework"
	"github.com/directlb/directlb/internal/namedns"
)

// npService is a Service of type t with an HTTP port (80 → 8080) and a UDP
// port (53 → 9090) in front of the pods labelled app=echo.
func npService(ns, name string, t corev1.ServiceType, mutate func(*corev1.Service)) *corev1.Service {
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.ServiceSpec{
			Type:     t,
			Selector: map[string]string{"app": "echo"},
			Ports: []corev1.ServicePort{
				{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)},
				{Name: "udp", Port: 53, Protocol: corev1.ProtocolUDP, TargetPort: intstr.FromInt32(9090)},
			},
		},
	}
	if mutate != nil {
		mutate(s)
	}
	return s
}

// npNodePorts returns the Service's HTTP and UDP node ports.
func npNodePorts(t *testing.T, s *corev1.Service) (httpPort, udpPort int32) {
	t.Helper()
	for _, p := range s.Spec.Ports {
		switch p.Protocol {
		case corev1.ProtocolUDP:
			udpPort = p.NodePort
		default:
			httpPort = p.NodePort
		}
	}
	if httpPort == 0 || udpPort == 0 {
		t.Fatalf("service %s: node ports %d/%d", s.Name, httpPort, udpPort)
	}
	return httpPort, udpPort
}

// npUDPIn sends one datagram from inside the network namespace ns (a
// node's, from the host's cgroup) and returns the reply's first line.
func npUDPIn(ns, addr string) (string, error) {
	var reply string
	err := namedns.Do(ns, func() error {
		var err error
		reply, err = framework.UDP(addr, "ping")
		return err
	})
	first, _, _ := strings.Cut(reply, "\n")
	return first, err
}

// npGetIn makes one HTTP GET from inside the network namespace ns.
func npGetIn(ns, url string) (int, string, error) {
	c := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var conn net.Conn
			err := namedns.Do(ns, func() error {
				var err error
				conn, err = (&net.Dialer{Timeout: 2 * time.Second}).DialContext(ctx, network, addr)
				return err
			})
			return conn, err
		}}}
	resp, err := c.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	var b strings.Builder
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		b.WriteString(sc.Text())
	}
	return resp.StatusCode, b.String(), nil
}

// npRun is what the steps of TestNodePort share.
type npRun struct {
	b      *framework.Bed
	ns     string
	ctx    context.Context
	agents *framework.Agents
	client framework.Sandbox
	names  map[string]string // echo pod name → node
	// httpNP and udpNP are the "cluster" Service's node ports.
	httpNP, udpNP int32
}

func TestNodePort(t *testing.T) {
	b := requireBed(t)
	if len(b.Topology.Nodes) < 3 {
		t.Skipf("needs 3 nodes, the test bed has %d", len(b.Topology.Nodes))
	}
	ns := framework.Namespace(t, b, fmt.Sprintf("e2e-nodeport-%d", time.Now().Unix()%100000))
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()

	var devices []string
	for _, e := range b.Topology.Nodes[0].ENIs {
		devices = append(devices, e.Device)
	}
	r := &npRun{b: b, ns: ns, ctx: ctx}
	r.agents = framework.StartAgents(t, b, "--nodeport-devices="+strings.Join(devices, ","))
	npEchoPodsAndClient(t, r)
	npClusterService(t, r)

	// Every node's address answers, from the host, from another node's
	// namespace and from a pod, over TCP and UDP, from the Service's pods.
	t.Run("Cluster", func(t *testing.T) { npCluster(t, r) })
	// externalTrafficPolicy Local: the pod sees the client's own address
	// (no SNAT), and each node answers from its local pod only.
	t.Run("Local", func(t *testing.T) { npLocal(t, r) })
	// The healthCheckNodePort of a LoadBalancer Service with
	// externalTrafficPolicy Local answers kube-proxy's way on every node:
	// 200 with the node's local endpoint count while it has one, 503 once
	// the Service selects none.
	t.Run("HealthCheckNodePort", func(t *testing.T) { npHealthCheckNodePort(t, r) })
	// An externalIP and a load-balancer ingress IP are reached from a pod
	// through the socket hooks, short-circuited to the Service's pods.
	t.Run("ExternalIPAndIngress", func(t *testing.T) { npExternalIPAndIngress(t, r) })
	// An agent restart under NodePort load loses no established
	// connection: keep-alive connections from the host to node-1's
	// NodePort, through the north-south path (NAT state pinned), keep
	// answering while node-1's agent is stopped and started again.
	t.Run("AgentRestart", func(t *testing.T) { npAgentRestart(t, r) })
}

// npEchoPodsAndClient creates the echo Deployment (3 pods) and a client
// pod, and waits for them.
func npEchoPodsAndClient(t *testing.T, r *npRun) {
	b, ns := r.b, r.ns
	labels := map[string]string{"app": "echo"}
	if _, err := b.Client.AppsV1().Deployments(ns).Create(r.ctx, framework.EchoDeployment(ns, 3, labels, nil), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	framework.CreatePod(t, b, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "client", Namespace: ns},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{framework.EchoContainer()}, TerminationGracePeriodSeconds: ptr.To(int64(1))},
	})
	r.client = framework.PodSandbox(t, b, framework.WaitPod(t, b, ns, "client", 90*time.Second, "Ready", framework.Ready))
	var backends []corev1.Pod
	framework.Poll(t, 90*time.Second, "3 echo pods Ready", func(ctx context.Context) (bool, string) {
		var state string
		backends, state = framework.ReadyPods(ctx, b, ns, "app=echo")
		return len(backends) == 3, state
	})
	names := map[string]string{} // pod name → node
	for _, p := range backends {
		names[p.Name] = p.Spec.NodeName
	}
	r.names = names
}

// npClusterService creates the NodePort Service "cluster" and gives the
// agents time to program it.
func npClusterService(t *testing.T, r *npRun) {
	cluster, err := r.b.Client.CoreV1().Services(r.ns).Create(r.ctx, npService(r.ns, "cluster", corev1.ServiceTypeNodePort, nil), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	r.httpNP, r.udpNP = npNodePorts(t, cluster)
	// The agents program a new Service within a sync or so.
	time.Sleep(2 * time.Second)
}

func npCluster(t *testing.T, r *npRun) {
	b, names, client, httpNP, udpNP := r.b, r.names, r.client, r.httpNP, r.udpNP
	for i, n := range b.Topology.Nodes {
		addr := n.ENIs[0].Addr.Addr().String()
		other := b.Topology.Nodes[(i+1)%len(b.Topology.Nodes)]
		httpURL := "http://" + net.JoinHostPort(addr, strconv.Itoa(int(httpNP))) + "/"
		udpAddr := net.JoinHostPort(addr, strconv.Itoa(int(udpNP)))
		var from []string
		framework.Poll(t, 20*time.Second, "NodePort "+httpURL+" from the host", func(context.Context) (bool, string) {
			code, body, err := framework.HTTPGet(httpURL)
			return err == nil && code == http.StatusOK && names[strings.TrimSpace(body)] != "", fmt.Sprintf("%d %q %v", code, body, err)
		})
		for range 6 {
			code, body, err := framework.HTTPGet(httpURL)
			if err != nil || code != http.StatusOK || names[strings.TrimSpace(body)] == "" {
				t.Errorf("host → %s: %d %q %v", httpURL, code, body, err)
			}
			from = append(from, strings.TrimSpace(body))
			code, body, err = npGetIn(other.NetNS, httpURL)
			if err != nil || code != http.StatusOK || names[strings.TrimSpace(body)] == "" {
				t.Errorf("%s → %s: %d %q %v", other.Name, httpURL, code, body, err)
			}
			if reply, err := framework.UDP(udpAddr, "ping"); err != nil || names[strings.SplitN(reply, "\n", 2)[0]] == "" {
				t.Errorf("host → udp %s: %q %v", udpAddr, reply, err)
			}
			if reply, err := npUDPIn(other.NetNS, udpAddr); err != nil || names[reply] == "" {
				t.Errorf("%s → udp %s: %q %v", other.Name, udpAddr, reply, err)
			}
		}
		for _, a := range client.CurlN(t, httpURL, 6) {
			if names[a] == "" {
				t.Errorf("pod → %s: %q, want an echo pod's name", httpURL, a)
			}
		}
		out, err := client.Sh(r.ctx, fmt.Sprintf(`for i in 1 2 3; do echo ping | nc -u -w 1 %s %d | head -1; done`, addr, udpNP))
		if err != nil {
			t.Errorf("pod → udp %s: %v: %s", udpAddr, err, out)
		}
		for _, a := range strings.Fields(out) {
			if names[a] == "" {
				t.Errorf("pod → udp %s: %q, want an echo pod's name", udpAddr, a)
			}
		}
		t.Logf("%s: host's HTTP answers from %v", n.Name, framework.Count(from))
	}
}

func npLocal(t *testing.T, r *npRun) {
	b, ns, names := r.b, r.ns, r.names
	local, err := b.Client.CoreV1().Services(ns).Create(r.ctx, npService(ns, "local", corev1.ServiceTypeNodePort, func(s *corev1.Service) {
		s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
	}), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	httpNP, _ := npNodePorts(t, local)
	host := b.Topology.HostAddr.String()
	for _, n := range b.Topology.Nodes {
		base := "http://" + net.JoinHostPort(n.ENIs[0].Addr.Addr().String(), strconv.Itoa(int(httpNP)))
		framework.Poll(t, 20*time.Second, "Local NodePort "+base+"/client from the host", func(context.Context) (bool, string) {
			code, body, err := framework.HTTPGet(base + "/client")
			return err == nil && code == http.StatusOK && strings.TrimSpace(body) == host, fmt.Sprintf("%d %q %v, want %s", code, body, err, host)
		})
		for range 4 {
			code, body, err := framework.HTTPGet(base + "/")
			if pod := strings.TrimSpace(body); err != nil || code != http.StatusOK || names[pod] != n.Name {
				t.Errorf("host → %s/ (Local): %d %q (on %s) %v, want the pod on %s", base, code, pod, names[pod], err, n.Name)
			}
		}
	}
}

func npHealthCheckNodePort(t *testing.T, r *npRun) {
	b, ns, ctx := r.b, r.ns, r.ctx
	hc, err := b.Client.CoreV1().Services(ns).Create(ctx, npService(ns, "hc", corev1.ServiceTypeLoadBalancer, func(s *corev1.Service) {
		s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
		s.Spec.LoadBalancerClass = ptr.To("example.com/e2e-none")
	}), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if hc.Spec.HealthCheckNodePort == 0 {
		t.Fatal("the apiserver gave the Service no healthCheckNodePort")
	}
	npHealthCheckAnswers(t, b, hc.Spec.HealthCheckNodePort, http.StatusOK, `"localEndpoints": 1`)
	hc.Spec.Selector = map[string]string{"app": "nothing"}
	if _, err := b.Client.CoreV1().Services(ns).Update(ctx, hc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	npHealthCheckAnswers(t, b, hc.Spec.HealthCheckNodePort, http.StatusServiceUnavailable, `"localEndpoints": 0`)
}

// npHealthCheckAnswers waits for the health-check node port on every node
// to answer want with a body that holds body.
func npHealthCheckAnswers(t *testing.T, b *framework.Bed, port int32, want int, body string) {
	for _, n := range b.Topology.Nodes {
		url := "http://" + net.JoinHostPort(n.ENIs[0].Addr.Addr().String(), strconv.Itoa(int(port))) + "/"
		framework.Poll(t, 20*time.Second, fmt.Sprintf("%s answers %d", url, want), func(context.Context) (bool, string) {
			code, got, err := framework.HTTPGet(url)
			return err == nil && code == want && strings.Contains(got, body), fmt.Sprintf("%d %q %v", code, got, err)
		})
	}
}

func npExternalIPAndIngress(t *testing.T, r *npRun) {
	b, ns, ctx, client, names := r.b, r.ns, r.ctx, r.client, r.names
	const extIP, ingressIP = "10.100.250.10", "10.100.250.20"
	if _, err := b.Client.CoreV1().Services(ns).Create(ctx, npService(ns, "external", corev1.ServiceTypeClusterIP, func(s *corev1.Service) {
		s.Spec.ExternalIPs = []string{extIP}
	}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	lb, err := b.Client.CoreV1().Services(ns).Create(ctx, npService(ns, "lb", corev1.ServiceTypeLoadBalancer, func(s *corev1.Service) {
		// A class no controller on the bed owns: this test writes the status.
		s.Spec.LoadBalancerClass = ptr.To("example.com/e2e-none")
	}), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	lb.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: ingressIP}}
	if _, err := b.Client.CoreV1().Services(ns).UpdateStatus(ctx, lb, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, ip := range []string{extIP, ingressIP} {
		url := "http://" + ip + "/"
		framework.Poll(t, 20*time.Second, "pod → "+url, func(context.Context) (bool, string) {
			a := client.CurlN(t, url, 1)
			return names[a[0]] != "", fmt.Sprintf("%q", a)
		})
		for _, a := range client.CurlN(t, url, 6) {
			if names[a] == "" {
				t.Errorf("pod → %s: %q, want an echo pod's name", url, a)
			}
		}
	}
}

func npAgentRestart(t *testing.T, r *npRun) {
	agents := r.agents
	n := r.b.Topology.Nodes[0]
	addr := net.JoinHostPort(n.ENIs[0].Addr.Addr().String(), strconv.Itoa(int(r.httpNP)))
	const conns = 6
	var cs []*bufio.ReadWriter
	for range conns {
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		cs = append(cs, bufio.NewReadWriter(bufio.NewReader(c), bufio.NewWriter(c)))
		_ = c.SetDeadline(time.Now().Add(2 * time.Minute))
	}
	for i := range conns {
		npAsk(t, cs[i], addr, r.names, i, "before the restart")
	}
	a := agents.List[0]
	agents.Stop(a)
	for i := range conns {
		npAsk(t, cs[i], addr, r.names, i, "agent stopped")
	}
	agents.Start(a)
	for i := range conns {
		npAsk(t, cs[i], addr, r.names, i, "after the restart")
	}
}

// npAsk sends one GET on keep-alive connection i (rw) to addr and wants an
// echo pod's name back; when says at which point of the restart.
func npAsk(t *testing.T, rw *bufio.ReadWriter, addr string, names map[string]string, i int, when string) {
	fmt.Fprintf(rw, "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", addr)
	if err := rw.Flush(); err != nil {
		t.Errorf("%s: connection %d: write: %v", when, i, err)
		return
	}
	resp, err := http.ReadResponse(rw.Reader, nil)
	if err != nil {
		t.Errorf("%s: connection %d: %v", when, i, err)
		return
	}
	var body strings.Builder
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		body.WriteString(sc.Text())
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || names[body.String()] == "" {
		t.Errorf("%s: connection %d: %d %q", when, i, resp.StatusCode, body.String())
	}
}

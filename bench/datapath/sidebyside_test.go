//go:build linux

package datapath_test

// The side-by-side: the same apiserver (envtest: etcd + kube-apiserver from
// bin/), the same Services and EndpointSlices, programmed by the node
// agent's control plane into BPF maps and by kube-proxy (bin/kube-proxy,
// the pinned module) in iptables and nftables mode, each kube-proxy in a
// network namespace of its own (dlbt-bench-kp-*) so its rules touch nothing
// else.

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/directlb/directlb/internal/namedns"
	"github.com/directlb/directlb/internal/privileged"
	"github.com/directlb/directlb/internal/testenv"
	"github.com/directlb/directlb/pkg/datapath"
	"github.com/directlb/directlb/pkg/proxy"
)

const (
	sbsNode      = "bench-node"
	sbsBackendIP = "10.250.0.1" // the latency backend, on lo of each netns
	sbsPort      = 8080
)

type sbs struct {
	b          *testing.B
	binDir     string
	env        *envtest.Environment
	rc         *rest.Config
	client     kubernetes.Interface
	kubeconfig []byte
	services   int
	latencyCIP string
}

func newSBS(b *testing.B) *sbs {
	b.Helper()
	if testing.Short() {
		b.Skip("skipping: the side-by-side is long")
	}
	privileged.Require(b, "loads BPF programs and runs kube-proxy in network namespaces")
	binDir := testenv.BinDir()
	if _, err := os.Stat(filepath.Join(binDir, "kube-proxy")); err != nil {
		b.Skipf("needs kube-proxy in %s (make tools): %v", binDir, err)
	}
	env, rc := testenv.StartEnvtest(b, "dlbt-bench-sbs-assets-", func(env *envtest.Environment) {
		env.ControlPlane.GetAPIServer().Configure().Set("service-cluster-ip-range", "10.96.0.0/16")
	})
	user, err := env.ControlPlane.AddUser(envtest.User{Name: "bench", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		b.Fatal(err)
	}
	kc, err := user.KubeConfig()
	if err != nil {
		b.Fatal(err)
	}
	rc = rest.CopyConfig(rc)
	rc.QPS, rc.Burst = 5000, 10000
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		b.Fatal(err)
	}
	// kube-proxy looks its Node up for the node IP; give it one.
	ctx := context.Background()
	node, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: sbsNode}}, metav1.CreateOptions{})
	if err != nil {
		b.Fatal(err)
	}
	node.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "10.250.0.2"}}
	if _, err := cs.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
		b.Fatal(err)
	}
	return &sbs{b: b, binDir: binDir, env: env, rc: rc, client: cs, kubeconfig: kc}
}

// grow creates Services (ClusterIP, port 80) with one EndpointSlice of 10
// ready endpoints each until there are n.
func (s *sbs) grow(n int) {
	s.b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	start := time.Now()
	work := make(chan int)
	errc := make(chan error, 1)
	var wg sync.WaitGroup
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				if err := s.createService(ctx, fmt.Sprintf("svc-%05d", i), i, nil); err != nil {
					select {
					case errc <- err:
					default:
					}
				}
			}
		}()
	}
	for i := s.services; i < n; i++ {
		work <- i
	}
	close(work)
	wg.Wait()
	select {
	case err := <-errc:
		s.b.Fatal(err)
	default:
	}
	s.b.Logf("created Services %d..%d with 10 endpoints each in %s", s.services, n-1, time.Since(start).Round(time.Millisecond))
	s.services = n
}

func sliceFor(name string, addrs []string) *discoveryv1.EndpointSlice {
	sl := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: name, Namespace: "default", Labels: map[string]string{discoveryv1.LabelServiceName: name}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](sbsPort), Protocol: ptr.To(corev1.ProtocolTCP)}},
	}
	for _, a := range addrs {
		sl.Endpoints = append(sl.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{a},
			NodeName:   ptr.To(sbsNode),
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true), Terminating: ptr.To(false)},
		})
	}
	return sl
}

func (s *sbs) createService(ctx context.Context, name string, i int, addrs []string) error {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}}},
	}
	if _, err := s.client.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create service %s: %w", name, err)
	}
	if addrs == nil {
		for j := range 10 {
			k := i*10 + j
			addrs = append(addrs, fmt.Sprintf("10.%d.%d.%d", 128+k>>16, (k>>8)&255, k&255))
		}
	}
	if _, err := s.client.DiscoveryV1().EndpointSlices("default").Create(ctx, sliceFor(name, addrs), metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create endpointslice %s: %w", name, err)
	}
	return nil
}

// changeEndpoint replaces the first endpoint of Service i with addr, with
// the trigger time kube-proxy measures network programming from.
func (s *sbs) changeEndpoint(ctx context.Context, i int, addr string) (time.Time, error) {
	name := fmt.Sprintf("svc-%05d", i)
	sl, err := s.client.DiscoveryV1().EndpointSlices("default").Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return time.Time{}, err
	}
	sl.Endpoints[0].Addresses = []string{addr}
	now := time.Now()
	if sl.Annotations == nil {
		sl.Annotations = map[string]string{}
	}
	sl.Annotations[corev1.EndpointsLastChangeTriggerTime] = now.UTC().Format(time.RFC3339Nano)
	_, err = s.client.DiscoveryV1().EndpointSlices("default").Update(ctx, sl, metav1.UpdateOptions{})
	return now, err
}

// agentRun is the node agent's control plane on real BPF maps.
type agentRun struct {
	lb     *datapath.LoadBalancer
	dp     *datapath.Datapath
	cancel context.CancelFunc
	done   chan error
	took   time.Duration
}

func (s *sbs) startAgent(e *env, name string, attach bool) *agentRun {
	s.b.Helper()
	dp := e.load(s.b, name)
	if attach {
		if err := dp.Attach(); err != nil {
			s.b.Fatal(err)
		}
	}
	lb := datapath.NewLoadBalancer(datapath.LoadBalancerConfig{Maps: dp.Maps})
	cs, err := kubernetes.NewForConfig(s.rc)
	if err != nil {
		s.b.Fatal(err)
	}
	p, err := proxy.New(proxy.Config{Client: cs, NodeName: sbsNode, Programmer: lb, Logger: zap.NewNop()})
	if err != nil {
		s.b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	a := &agentRun{lb: lb, dp: dp, cancel: cancel, done: make(chan error, 1)}
	start := time.Now()
	go func() { a.done <- p.Run(ctx) }()
	select {
	case <-p.Synced():
		a.took = time.Since(start)
	case err := <-a.done:
		s.b.Fatalf("agent control plane: %v", err)
	case <-time.After(5 * time.Minute):
		s.b.Fatal("agent control plane: no initial sync in 5 minutes")
	}
	s.b.Cleanup(func() { cancel(); <-a.done })
	return a
}

// kubeProxy is a kube-proxy process in its own network namespace.
type kubeProxy struct {
	ns   string
	mode string
	cmd  *exec.Cmd
	http *http.Client
	took time.Duration
}

func netnsRun(ns string, args ...string) error {
	out, err := exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s in %s: %w: %s", strings.Join(args, " "), ns, err, out)
	}
	return nil
}

// newNetns makes a namespace with lo up, the latency backend's address on
// lo and a route for the service range (kube-proxy's DNAT happens after
// the first route lookup, so the ClusterIP needs a route).
func newNetns(b *testing.B, prefix string) string {
	b.Helper()
	ns := prefix + suffix()
	if err := namedns.Create(ns); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := namedns.Delete(ns); err != nil {
			b.Error(err)
		}
	})
	for _, args := range [][]string{
		{"ip", "link", "set", "lo", "up"},
		{"ip", "addr", "add", sbsBackendIP + "/32", "dev", "lo"},
		{"ip", "route", "add", "10.96.0.0/12", "dev", "lo"},
	} {
		if err := netnsRun(ns, args...); err != nil {
			b.Fatal(err)
		}
	}
	return ns
}

// listenIn opens a TCP listener inside a network namespace.
func listenIn(ns, addr string) (net.Listener, error) {
	var ln net.Listener
	err := namedns.Do(ns, func() error {
		var err error
		ln, err = net.Listen("tcp4", addr)
		return err
	})
	return ln, err
}

func dialerIn(ns string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := namedns.Do(ns, func() error {
			var err error
			c, err = (&net.Dialer{Timeout: 2 * time.Second}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}

// forward makes the host's apiserver reachable at 127.0.0.1:6443 inside ns.
func forward(b *testing.B, ns, hostAddr string) {
	b.Helper()
	ln, err := listenIn(ns, "127.0.0.1:6443")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				u, err := net.Dial("tcp", hostAddr)
				if err != nil {
					return
				}
				defer u.Close()
				go io.Copy(u, c)
				io.Copy(c, u)
			}()
		}
	}()
}

// startKubeProxy starts kube-proxy in mode in its own namespace and waits
// up to limit for its first full sync; false (kube-proxy killed, took =
// limit) when it does not finish in time.
func (s *sbs) startKubeProxy(mode string, limit time.Duration) (*kubeProxy, bool) {
	s.b.Helper()
	ns := newNetns(s.b, "dlbt-bench-kp-")
	u, err := url.Parse(s.rc.Host)
	if err != nil || u.Host == "" {
		s.b.Fatalf("apiserver address %q: %v", s.rc.Host, err)
	}
	host := u.Host
	forward(s.b, ns, host)
	kc := strings.ReplaceAll(string(s.kubeconfig), host, "127.0.0.1:6443")
	if kc == string(s.kubeconfig) {
		s.b.Fatalf("apiserver %s not found in the kubeconfig", host)
	}
	dir := s.b.TempDir()
	kcPath := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kcPath, []byte(kc), 0o600); err != nil {
		s.b.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(dir, "kube-proxy.log"))
	if err != nil {
		s.b.Fatal(err)
	}
	kp := &kubeProxy{ns: ns, mode: mode, http: &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: dialerIn(ns), DisableKeepAlives: true}}}
	kp.cmd = exec.Command("ip", "netns", "exec", ns, filepath.Join(s.binDir, "kube-proxy"),
		"--kubeconfig="+kcPath, "--proxy-mode="+mode, "--hostname-override="+sbsNode,
		"--cluster-cidr=10.128.0.0/9", "--metrics-bind-address=127.0.0.1:10249",
		"--healthz-bind-address=127.0.0.1:10256", "--conntrack-max-per-core=0", "--v=0")
	kp.cmd.Stdout, kp.cmd.Stderr = logf, logf
	start := time.Now()
	if err := kp.cmd.Start(); err != nil {
		s.b.Fatal(err)
	}
	s.b.Cleanup(func() {
		kp.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { kp.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			kp.cmd.Process.Kill()
			<-done
		}
		logf.Close()
	})
	// The first sync after both informers synced programs everything.
	deadline := time.Now().Add(limit)
	for {
		m, err := kp.metrics()
		if err == nil && m["kubeproxy_sync_proxy_rules_last_timestamp_seconds"] > 0 {
			kp.took = time.Since(start)
			break
		}
		if time.Now().After(deadline) {
			_ = kp.cmd.Process.Kill()
			kp.took = limit
			// Kept for a look after the run (the benchmark log truncates).
			kept := filepath.Join(os.TempDir(), fmt.Sprintf("dlb-bench-kube-proxy-%s-%d.log", mode, s.services))
			if data, err := os.ReadFile(logf.Name()); err == nil {
				_ = os.WriteFile(kept, data, 0o644)
			}
			s.b.Logf("kube-proxy %s after %s (log: %s): %s", mode, limit, kept, syncSummary(logf.Name()))
			return kp, false
		}
		// Fine-grained at first; once it is clearly a long sync, every
		// scrape (each also collects kube-proxy's nfacct counters) would
		// only compete with the sync it measures.
		if time.Since(start) < 10*time.Second {
			time.Sleep(20 * time.Millisecond)
		} else {
			time.Sleep(time.Second)
		}
	}
	return kp, true
}

// syncSummary says from kube-proxy's log whether it was still in its first
// sync or failing and retrying: the count of failed restores and the last
// lines that are not metrics noise.
func syncSummary(path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	var keep []string
	failed := 0
	for _, l := range strings.Split(string(data), "\n") {
		if strings.Contains(l, "nfacct") || strings.TrimSpace(l) == "" {
			continue
		}
		if strings.Contains(l, "Failed to execute iptables-restore") || strings.Contains(l, "sync failed") {
			failed++
		}
		keep = append(keep, l)
	}
	return fmt.Sprintf("%d failed restores/syncs; last lines:\n%s", failed, strings.Join(keep[max(0, len(keep)-15):], "\n"))
}

// metrics reads kube-proxy's unlabelled and IPv4 metrics.
func (kp *kubeProxy) metrics() (map[string]float64, error) {
	resp, err := kp.http.Get("http://127.0.0.1:10249/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		// kube-proxy labels its sync metrics by IP family; keep IPv4's.
		line = strings.Replace(line, `{ip_family="IPv4"}`, "", 1)
		if strings.Contains(line, "{") {
			continue
		}
		f := strings.Fields(line)
		if len(f) == 2 {
			v, _ := strconv.ParseFloat(f[1], 64)
			out[f[0]] = v
		}
	}
	return out, sc.Err()
}

// countRules checks that kube-proxy programmed every Service.
func (kp *kubeProxy) countServices() (int, error) {
	var cmd *exec.Cmd
	if kp.mode == "iptables" {
		cmd = exec.Command("ip", "netns", "exec", kp.ns, "iptables-save", "-t", "nat")
	} else {
		cmd = exec.Command("ip", "netns", "exec", kp.ns, "nft", "list", "table", "ip", "kube-proxy")
	}
	out, err := cmd.Output()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, line := range strings.Split(string(out), "\n") {
		line = strings.TrimSpace(line)
		if (kp.mode == "iptables" && strings.HasPrefix(line, ":KUBE-SVC-")) ||
			(kp.mode == "nftables" && strings.HasPrefix(line, "chain service-")) {
			n++
		}
	}
	return n, nil
}

// endpointChange measures update → programmed for kube-proxy by its own
// network-programming counter (it counts a change once it is in the rules).
func (s *sbs) kubeProxyEndpointChanges(kp *kubeProxy, n int) []time.Duration {
	s.b.Helper()
	ctx := context.Background()
	var lat []time.Duration
	for k := range n {
		before, err := kp.metrics()
		if err != nil {
			s.b.Fatal(err)
		}
		c0 := before["kubeproxy_network_programming_duration_seconds_count"]
		start, err := s.changeEndpoint(ctx, k%s.services, fmt.Sprintf("10.251.%d.%d", k>>8, k&255))
		if err != nil {
			s.b.Fatal(err)
		}
		deadline := start.Add(2 * time.Minute)
		for {
			m, err := kp.metrics()
			if err == nil && m["kubeproxy_network_programming_duration_seconds_count"] > c0 {
				lat = append(lat, time.Since(start))
				break
			}
			if time.Now().After(deadline) {
				// Reported, not fatal: the other figures still count.
				s.b.Logf("kube-proxy %s: endpoint change %d not programmed in 2 minutes; stopping after %d", kp.mode, k, len(lat))
				return lat
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	return lat
}

func (s *sbs) agentEndpointChanges(a *agentRun, n int) []time.Duration {
	s.b.Helper()
	ctx := context.Background()
	var lat []time.Duration
	for k := range n {
		addr := fmt.Sprintf("10.252.%d.%d", k>>8, k&255)
		want := datapath.Backend{Addr: netip.MustParseAddr(addr), Port: sbsPort, Proto: datapath.TCP}
		start, err := s.changeEndpoint(ctx, k%s.services, addr)
		if err != nil {
			s.b.Fatal(err)
		}
		deadline := start.Add(30 * time.Second)
		for {
			if _, ok := a.lb.BackendID(want); ok {
				lat = append(lat, time.Since(start))
				break
			}
			if time.Now().After(deadline) {
				s.b.Fatalf("agent: endpoint change %d not programmed in 30s", k)
			}
			time.Sleep(100 * time.Microsecond)
		}
	}
	return lat
}

func pct(ds []time.Duration, p int) time.Duration {
	ds = slices.Clone(ds)
	slices.Sort(ds)
	return ds[min(len(ds)-1, len(ds)*p/100)]
}

// latencyIn runs the latency helper in ns (and, for the agent, in its
// cgroup) against the ClusterIP and the backend directly.
func (s *sbs) latencyIn(ns string, cgroup string) (cip50, cip99, dir50, dir99 float64) {
	s.b.Helper()
	ln, err := listenIn(ns, sbsBackendIP+":"+strconv.Itoa(sbsPort))
	if err != nil {
		s.b.Fatal(err)
	}
	defer ln.Close()
	go serveOK(ln)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "nsenter", "--net="+namedns.Path(ns), "--", os.Args[0], "-test.run=^$", "-test.bench=^$",
		s.latencyCIP+":80", sbsBackendIP+":"+strconv.Itoa(sbsPort), "2000")
	cmd.Env = append(os.Environ(), helperEnv+"=1")
	if cgroup != "" {
		f, err := os.Open(cgroup)
		if err != nil {
			s.b.Fatal(err)
		}
		defer f.Close()
		cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(f.Fd())}
	}
	out, err := cmd.Output()
	if err != nil {
		s.b.Fatalf("latency helper in %s: %v: %s", ns, err, out)
	}
	f := strings.Fields(string(out))
	if len(f) != 5 {
		s.b.Fatalf("latency helper printed %q", out)
	}
	v := make([]float64, 4)
	for i := range v {
		v[i], _ = strconv.ParseFloat(f[i], 64)
	}
	return v[0], v[1], v[2], v[3]
}

func serveOK(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := bufio.NewReader(c).ReadString('\n'); err == nil {
				c.Write([]byte("OK\n"))
			}
		}()
	}
}

// BenchmarkSideBySide programs 1,000 and then 10,000 Services × 10
// endpoints from one apiserver with the node agent and with kube-proxy
// (iptables, nftables), then measures one endpoint change and connect
// latency at 10,000 Services. kube-proxy's iptables mode at 10,000
// Services takes minutes; it runs only with DLB_BENCH_IPTABLES_10K=1.
func BenchmarkSideBySide(b *testing.B) {
	e := newEnv(b)
	s := newSBS(b)
	for _, n := range []int{1000, 10000} {
		s.grow(n)
		if n == 10000 && s.latencyCIP == "" {
			s.createLatencyService(b)
		}
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) { s.sideBySide(b, e, n) })
	}
}

// createLatencyService creates the Service the latency is measured
// through: its one endpoint listens on lo of each namespace.
func (s *sbs) createLatencyService(b *testing.B) {
	ctx := context.Background()
	if err := s.createService(ctx, "latency", 0, []string{sbsBackendIP}); err != nil {
		b.Fatal(err)
	}
	svc, err := s.client.CoreV1().Services("default").Get(ctx, "latency", metav1.GetOptions{})
	if err != nil {
		b.Fatal(err)
	}
	s.latencyCIP = svc.Spec.ClusterIP
}

// sideBySide is one services=n run: the agent and each kube-proxy mode
// program the n Services; at 10,000 it also measures endpoint changes and
// connect latency.
func (s *sbs) sideBySide(b *testing.B, e *env, n int) {
	s.b = b
	a := s.startAgent(e, fmt.Sprintf("sbs-%d", n), n == 10000)
	b.ReportMetric(float64(a.took.Milliseconds()), "agent-program-ms")
	b.Logf("%d services: agent programmed in %s", n, a.took)
	results := s.programKubeProxies(b, n, a)
	if n != 10000 {
		return
	}
	s.compareEndpointChanges(b, a, results)
	s.compareConnectLatency(b, e, results)
}

// programKubeProxies starts kube-proxy in each mode on the n Services and
// reports how long it took against the agent a; it returns the modes that
// programmed them all within their limit.
func (s *sbs) programKubeProxies(b *testing.B, n int, a *agentRun) map[string]*kubeProxy {
	modes := []string{"iptables", "nftables"}
	results := map[string]*kubeProxy{}
	for _, mode := range modes {
		if mode == "iptables" && n == 10000 && os.Getenv("DLB_BENCH_IPTABLES_10K") != "1" {
			b.Logf("kube-proxy iptables at 10,000 Services skipped (minutes; set DLB_BENCH_IPTABLES_10K=1)")
			continue
		}
		limit := 10 * time.Minute
		if mode == "iptables" && n == 10000 {
			limit = 20 * time.Minute
		}
		kp, ok := s.startKubeProxy(mode, limit)
		if !ok {
			// A result, not a failure: the ratio is a lower bound.
			b.Logf("%d services: kube-proxy %s not programmed within %s (killed)", n, mode, limit)
			b.ReportMetric(float64(limit.Milliseconds()), mode+"-program-ms-min")
			b.ReportMetric(float64(limit)/float64(a.took), mode+"/agent-program-min")
			continue
		}
		got, err := kp.countServices()
		if err != nil {
			b.Fatalf("count %s services: %v", mode, err)
		}
		if want := s.services; got < want {
			b.Fatalf("kube-proxy %s programmed %d services, want %d", mode, got, want)
		}
		results[mode] = kp
		b.ReportMetric(float64(kp.took.Milliseconds()), mode+"-program-ms")
		b.Logf("%d services: kube-proxy %s programmed in %s", n, mode, kp.took)
		b.ReportMetric(float64(kp.took)/float64(a.took), mode+"/agent-program")
	}
	return results
}

// compareEndpointChanges measures one endpoint change through the agent a
// and through each kube-proxy in results.
func (s *sbs) compareEndpointChanges(b *testing.B, a *agentRun, results map[string]*kubeProxy) {
	alat := s.agentEndpointChanges(a, 100)
	b.ReportMetric(float64(pct(alat, 50).Microseconds())/1000, "agent-change-p50-ms")
	b.ReportMetric(float64(pct(alat, 99).Microseconds())/1000, "agent-change-p99-ms")
	b.Logf("agent endpoint change: p50 %s p99 %s (%d)", pct(alat, 50), pct(alat, 99), len(alat))
	for mode, kp := range results {
		lat := s.kubeProxyEndpointChanges(kp, 10)
		if len(lat) == 0 {
			continue
		}
		b.Logf("kube-proxy %s endpoint change: p50 %s p99 %s (%d)", mode, pct(lat, 50), pct(lat, 99), len(lat))
		b.ReportMetric(float64(pct(lat, 50).Microseconds())/1000, mode+"-change-p50-ms")
		b.ReportMetric(float64(pct(lat, 99).Microseconds())/1000, mode+"-change-p99-ms")
	}
}

// compareConnectLatency measures connect latency through the agent's
// hooks (a namespace in e's cgroup) and through each kube-proxy in results.
func (s *sbs) compareConnectLatency(b *testing.B, e *env, results map[string]*kubeProxy) {
	ns := newNetns(b, "dlbt-bench-ag-")
	c50, c99, d50, d99 := s.latencyIn(ns, e.cgroup)
	b.Logf("agent connect: clusterip p50 %.0fµs p99 %.0fµs, direct p50 %.0fµs p99 %.0fµs", c50, c99, d50, d99)
	b.ReportMetric(c50, "agent-connect-p50-µs")
	b.ReportMetric(c50/d50, "agent-connect-p50/direct")
	b.ReportMetric(c99/d99, "agent-connect-p99/direct")
	for mode, kp := range results {
		c50, c99, d50, d99 := s.latencyIn(kp.ns, "")
		b.Logf("kube-proxy %s connect: clusterip p50 %.0fµs p99 %.0fµs, direct p50 %.0fµs p99 %.0fµs", mode, c50, c99, d50, d99)
		b.ReportMetric(c50, mode+"-connect-p50-µs")
		b.ReportMetric(c50/d50, mode+"-connect-p50/direct")
		b.ReportMetric(c99/d99, mode+"-connect-p99/direct")
	}
}

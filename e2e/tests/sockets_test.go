package tests

// What applications see of the node agent's socket translation, with
// clients that behave like real ones: an AF_INET6 socket addressing a
// ClusterIP as ::ffff:a.b.c.d (the JVM's default, other dual-stack
// runtimes), a resolver-style connected UDP client whose backend goes away
// (next to kube-proxy's nftables mode on another node), and Services that
// do not fit into maps made small on purpose.
//
// The clients are this test binary run again (init, skClientEnv) inside a
// pod's or a node's cgroup and network namespace, where the datapath under
// test applies to their sockets; each prints what it saw.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/directlb/directlb/e2e/framework"
	"github.com/directlb/directlb/e2e/testbed"
	"github.com/directlb/directlb/internal/namedns"
)

// skClientEnv names the client a re-executed test binary runs instead of
// the tests (init).
const skClientEnv = "DLB_E2E_SOCKET_CLIENT"

// skClients are the clients; each takes its positional arguments and
// writes what it saw to out.
var skClients = map[string]func(args []string, out io.Writer) error{
	"udp-affinity": skClientUDPAffinity,
	"tcp-get":      skClientTCPGet,
	"dial":         skClientDial,
	"resolver":     skClientResolver,
	"inet6":        skClientInet6,
}

func init() {
	mode := os.Getenv(skClientEnv)
	if mode == "" {
		return
	}
	run, ok := skClients[mode]
	if !ok {
		fmt.Fprintf(os.Stderr, "%s=%s: no such client\n", skClientEnv, mode)
		os.Exit(2)
	}
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", mode, err)
		os.Exit(1)
	}
	os.Exit(0)
}

// skHost is where a node's own processes run: its network namespace and
// the kubelet's cgroup, inside the node's cgroup subtree (so node-agent's
// hooks on that node apply to it).
func skHost(n testbed.Node) framework.Sandbox {
	return framework.Sandbox{NetNS: namedns.Path(n.NetNS), Cgroup: n.KubeletCgroup}
}

// skCommand is the test binary as client mode inside where, started by
// the caller with framework.StartInCgroup.
func skCommand(ctx context.Context, where framework.Sandbox, mode string, args ...string) (*exec.Cmd, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find the test binary: %w", err)
	}
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + where.NetNS, "--", self}, args...)...)
	cmd.Env = append(os.Environ(), skClientEnv+"="+mode)
	cmd.WaitDelay = 5 * time.Second
	return cmd, nil
}

// skRun runs a client to its end (bounded by timeout) and decodes the JSON
// it prints into v.
func skRun(ctx context.Context, where framework.Sandbox, timeout time.Duration, v any, mode string, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd, err := skCommand(ctx, where, mode, args...)
	if err != nil {
		return err
	}
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := framework.StartInCgroup(cmd, where.Cgroup); err != nil {
		return fmt.Errorf("start client %s: %w", mode, err)
	}
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("client %s %v in %s: %w (bound %s): %s%s", mode, args, where.NetNS, err, timeout, stderr.String(), stdout.String())
	}
	if err := json.Unmarshal([]byte(stdout.String()), v); err != nil {
		return fmt.Errorf("client %s printed %q: %w", mode, stdout.String(), err)
	}
	return nil
}

// skArgs reads n positional arguments.
func skArgs(args []string, names ...string) (map[string]string, error) {
	if len(args) != len(names) {
		return nil, fmt.Errorf("want arguments %v, got %q", names, args)
	}
	out := map[string]string{}
	for i, n := range names {
		out[n] = args[i]
	}
	return out, nil
}

func skInt(a map[string]string, name string) int {
	n, _ := strconv.Atoi(a[name])
	return n
}

// skPodOf is the pod name at the start of an echo server's UDP reply
// ("<pod>\n<payload>").
func skPodOf(reply []byte) (pod, payload string) {
	pod, payload, _ = strings.Cut(string(reply), "\n")
	return pod, payload
}

// skErrClass names a socket error the way the tests compare them.
func skErrClass(err error) string {
	var ne net.Error
	switch {
	case err == nil:
		return ""
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, syscall.ECONNABORTED):
		return "aborted"
	case errors.Is(err, syscall.ETIMEDOUT), errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, syscall.EDESTADDRREQ):
		return "destaddrreq"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return "unreachable"
	}
	return "error"
}

// skAffinityResult is what udp-affinity prints.
type skAffinityResult struct {
	Answers   map[string]int `json:"answers"`
	Switches  int            `json:"switches"`
	Failed    int            `json:"failed"`
	Sockets   int64          `json:"sockets"`
	Exchanges int64          `json:"exchanges"`
	Ms        int64          `json:"ms"`
	Errors    []string       `json:"errors,omitempty"`
}

// skClientUDPAffinity: <addr> <exchanges> <goroutines> <per-socket>
// <seconds>. The goroutines share the exchanges; each uses a connected UDP
// socket for per-socket exchanges, then a new one (a new source port: a
// new flow for conntrack, a new translation for the hooks). An exchange is
// one datagram and its echo, sent up to 3 times (1 s each). A switch is an
// answer from another pod than the goroutine's previous answer.
func skClientUDPAffinity(args []string, out io.Writer) error {
	a, err := skArgs(args, "addr", "exchanges", "goroutines", "per-socket", "seconds")
	if err != nil {
		return err
	}
	total, workers, perSocket := int64(skInt(a, "exchanges")), skInt(a, "goroutines"), skInt(a, "per-socket")
	end := time.Now().Add(time.Duration(skInt(a, "seconds")) * time.Second)
	begin := time.Now()
	var next, sockets, done atomic.Int64
	var mu sync.Mutex
	res := skAffinityResult{Answers: map[string]int{}}
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var c net.Conn
			defer func() {
				if c != nil {
					c.Close()
				}
			}()
			buf := make([]byte, 2048)
			last, used := "", 0
			for i := next.Add(1); i <= total && time.Now().Before(end); i = next.Add(1) {
				if c == nil || used == perSocket {
					if c != nil {
						c.Close()
					}
					nc, err := net.Dial("udp", a["addr"])
					if err != nil {
						c = nil
						mu.Lock()
						res.Failed++
						if len(res.Errors) < 10 {
							res.Errors = append(res.Errors, "dial: "+err.Error())
						}
						mu.Unlock()
						continue
					}
					c = nc
					sockets.Add(1)
					used = 0
				}
				used++
				payload := fmt.Sprintf("g%d-x%d", w, i)
				pod, err := skExchange(c, buf, payload, 3, time.Second)
				done.Add(1)
				mu.Lock()
				if err != nil {
					res.Failed++
					if len(res.Errors) < 10 {
						res.Errors = append(res.Errors, err.Error())
					}
				} else {
					res.Answers[pod]++
					if last != "" && pod != last {
						res.Switches++
					}
					last = pod
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	res.Sockets, res.Exchanges, res.Ms = sockets.Load(), done.Load(), time.Since(begin).Milliseconds()
	return json.NewEncoder(out).Encode(res)
}

// skExchange sends payload on the connected socket c and returns the pod
// that echoed it, trying tries times with wait each; replies to other
// payloads (late echoes of earlier exchanges) are skipped.
func skExchange(c net.Conn, buf []byte, payload string, tries int, wait time.Duration) (string, error) {
	var err error
	for range tries {
		if _, err = c.Write([]byte(payload)); err != nil {
			return "", err
		}
		deadline := time.Now().Add(wait)
		_ = c.SetReadDeadline(deadline)
		for {
			var n int
			n, err = c.Read(buf)
			if err != nil {
				break
			}
			if pod, got := skPodOf(buf[:n]); got == payload {
				return pod, nil
			}
		}
		if skErrClass(err) != "timeout" {
			return "", err
		}
	}
	return "", fmt.Errorf("no echo of %s after %d tries: %w", payload, tries, err)
}

// skGetResult is what tcp-get prints: the answers by pod, failures as
// "ERR:<class>".
type skGetResult struct {
	Answers map[string]int `json:"answers"`
	Errors  []string       `json:"errors,omitempty"`
}

// skClientTCPGet: <url> <n>. n GETs, a new connection each, 2 s each.
func skClientTCPGet(args []string, out io.Writer) error {
	a, err := skArgs(args, "url", "n")
	if err != nil {
		return err
	}
	res := skGetResult{Answers: map[string]int{}}
	c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	for range skInt(a, "n") {
		body, err := skGet(c, a["url"])
		if err != nil {
			res.Answers["ERR:"+skErrClass(err)]++
			if len(res.Errors) < 5 {
				res.Errors = append(res.Errors, err.Error())
			}
			continue
		}
		res.Answers[body]++
	}
	return json.NewEncoder(out).Encode(res)
}

func skGet(c *http.Client, url string) (string, error) {
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("status %d: %s", resp.StatusCode, b)
	}
	return strings.TrimSpace(string(b)), nil
}

// skDialResult is what dial prints.
type skDialResult struct {
	// Outcome is "connected <pod>", or the error's class (refused,
	// timeout, ...).
	Outcome string `json:"outcome"`
	Ms      int64  `json:"ms"`
	Detail  string `json:"detail,omitempty"`
}

// skClientDial: <addr> <timeout-ms>. One TCP connect; when it connects,
// one GET / on it for the pod's name.
func skClientDial(args []string, out io.Writer) error {
	a, err := skArgs(args, "addr", "timeout-ms")
	if err != nil {
		return err
	}
	begin := time.Now()
	c, err := net.DialTimeout("tcp", a["addr"], time.Duration(skInt(a, "timeout-ms"))*time.Millisecond)
	res := skDialResult{Ms: time.Since(begin).Milliseconds()}
	if err != nil {
		res.Outcome, res.Detail = skErrClass(err), err.Error()
		return json.NewEncoder(out).Encode(res)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	fmt.Fprintf(c, "GET / HTTP/1.0\r\nHost: %s\r\n\r\n", a["addr"])
	b, _ := io.ReadAll(c)
	_, body, _ := strings.Cut(string(b), "\r\n\r\n")
	res.Outcome = "connected " + strings.TrimSpace(body)
	return json.NewEncoder(out).Encode(res)
}

// skClientResolver: <addr> <seconds> <interval-ms> <read-timeout-ms>. A
// resolver's loop: one connected UDP socket, a query every interval, the
// answer awaited read-timeout (then the next query); on any other error
// the socket is closed and a new one connected, as glibc's and Go's
// resolvers do. It stops when stdin closes or after seconds, and prints a
// line per event ("<unix ns> <event> ..."):
//
//	answer <pod>        the first answer, and each answer from another pod than the last
//	error <class> <op>  a socket error (then reconnect)
//	reconnect           a new socket
//	done exchanges=N answers=N timeouts=N errors=N
func skClientResolver(args []string, out io.Writer) error {
	a, err := skArgs(args, "addr", "seconds", "interval-ms", "read-timeout-ms")
	if err != nil {
		return err
	}
	end := time.Now().Add(time.Duration(skInt(a, "seconds")) * time.Second)
	interval := time.Duration(skInt(a, "interval-ms")) * time.Millisecond
	readTimeout := time.Duration(skInt(a, "read-timeout-ms")) * time.Millisecond
	var stopped atomic.Bool
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		stopped.Store(true)
	}()
	var mu sync.Mutex
	emit := func(format string, v ...any) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(out, "%d %s\n", time.Now().UnixNano(), fmt.Sprintf(format, v...))
	}
	var c net.Conn
	connect := func() {
		for c == nil && time.Now().Before(end) && !stopped.Load() {
			nc, err := net.Dial("udp", a["addr"])
			if err != nil {
				emit("error %s dial %v", skErrClass(err), err)
				time.Sleep(interval)
				continue
			}
			c = nc
		}
	}
	connect()
	buf := make([]byte, 2048)
	last := ""
	var exchanges, answers, timeouts, errs int
	for i := 0; c != nil && time.Now().Before(end) && !stopped.Load(); i++ {
		exchanges++
		payload := "q" + strconv.Itoa(i)
		_, err := c.Write([]byte(payload))
		if err == nil {
			_ = c.SetReadDeadline(time.Now().Add(readTimeout))
			for {
				var n int
				if n, err = c.Read(buf); err != nil {
					break
				}
				if pod, got := skPodOf(buf[:n]); got == payload {
					answers++
					if pod != last {
						emit("answer %s", pod)
						last = pod
					}
					break
				}
			}
		}
		switch cl := skErrClass(err); cl {
		case "":
		case "timeout":
			timeouts++
		default:
			errs++
			emit("error %s %v", cl, err)
			c.Close()
			c = nil
			connect()
			emit("reconnect")
		}
		time.Sleep(interval)
	}
	if c != nil {
		c.Close()
	}
	emit("done exchanges=%d answers=%d timeouts=%d errors=%d", exchanges, answers, timeouts, errs)
	return nil
}

// skInet6Result is what inet6 prints: per kind of AF_INET6 socket, the
// pod that answered, the peer getpeername (TCP, connected UDP) or
// recvfrom (unconnected UDP) showed, and the error if any.
type skInet6Result struct {
	TCP           skInet6Answer `json:"tcp"`
	UDP           skInet6Answer `json:"udp"`
	UDPUnconneced skInet6Answer `json:"udpUnconnected"`
}

type skInet6Answer struct {
	Pod  string `json:"pod,omitempty"`
	Peer string `json:"peer,omitempty"`
	Err  string `json:"err,omitempty"`
}

// skClientInet6: <ipv4> <tcp-port> <udp-port>. Raw AF_INET6 sockets to
// ::ffff:<ipv4> (Go's net package would pick AF_INET for a mapped
// address): a TCP connect, GET / and getpeername; a connected UDP socket,
// getpeername and one echo; an unconnected one, sendto and recvfrom.
func skClientInet6(args []string, out io.Writer) error {
	a, err := skArgs(args, "ipv4", "tcp-port", "udp-port")
	if err != nil {
		return err
	}
	v4, err := netip.ParseAddr(a["ipv4"])
	if err != nil || !v4.Is4() {
		return fmt.Errorf("not an IPv4 address: %q", a["ipv4"])
	}
	mapped := netip.AddrFrom16(v4.As16()).As16()
	tcpTo := &unix.SockaddrInet6{Port: skInt(a, "tcp-port"), Addr: mapped}
	udpTo := &unix.SockaddrInet6{Port: skInt(a, "udp-port"), Addr: mapped}
	res := skInet6Result{
		TCP:           skInet6TCP(tcpTo, a["ipv4"]),
		UDP:           skInet6UDP(udpTo, true),
		UDPUnconneced: skInet6UDP(udpTo, false),
	}
	return json.NewEncoder(out).Encode(res)
}

func skSockaddrString(sa unix.Sockaddr) string {
	switch s := sa.(type) {
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(s.Addr), uint16(s.Port)).String()
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(s.Addr), uint16(s.Port)).String()
	}
	return fmt.Sprintf("%T", sa)
}

// skInet6Socket is an AF_INET6 socket of typ with 3 s send and receive
// timeouts (Linux bounds a blocking connect by the send timeout).
func skInet6Socket(typ int) (int, error) {
	fd, err := unix.Socket(unix.AF_INET6, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("socket(AF_INET6): %w", err)
	}
	tv := unix.NsecToTimeval((3 * time.Second).Nanoseconds())
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv)
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	return fd, nil
}

func skInet6TCP(to *unix.SockaddrInet6, host string) skInet6Answer {
	fd, err := skInet6Socket(unix.SOCK_STREAM)
	if err != nil {
		return skInet6Answer{Err: err.Error()}
	}
	defer unix.Close(fd)
	if err := unix.Connect(fd, to); err != nil {
		return skInet6Answer{Err: "connect: " + err.Error()}
	}
	var ans skInet6Answer
	if sa, err := unix.Getpeername(fd); err != nil {
		ans.Err = "getpeername: " + err.Error()
	} else {
		ans.Peer = skSockaddrString(sa)
	}
	req := fmt.Sprintf("GET / HTTP/1.0\r\nHost: %s\r\n\r\n", host)
	if _, err := unix.Write(fd, []byte(req)); err != nil {
		ans.Err = "write: " + err.Error()
		return ans
	}
	var resp []byte
	buf := make([]byte, 4096)
	for {
		n, err := unix.Read(fd, buf)
		if n > 0 {
			resp = append(resp, buf[:n]...)
		}
		if err != nil {
			ans.Err = "read: " + err.Error()
			return ans
		}
		if n == 0 {
			break
		}
	}
	_, body, _ := strings.Cut(string(resp), "\r\n\r\n")
	ans.Pod = strings.TrimSpace(body)
	return ans
}

func skInet6UDP(to *unix.SockaddrInet6, connected bool) skInet6Answer {
	fd, err := skInet6Socket(unix.SOCK_DGRAM)
	if err != nil {
		return skInet6Answer{Err: err.Error()}
	}
	defer unix.Close(fd)
	var ans skInet6Answer
	if connected {
		if err := unix.Connect(fd, to); err != nil {
			return skInet6Answer{Err: "connect: " + err.Error()}
		}
		sa, err := unix.Getpeername(fd)
		if err != nil {
			return skInet6Answer{Err: "getpeername: " + err.Error()}
		}
		ans.Peer = skSockaddrString(sa)
	}
	buf := make([]byte, 2048)
	for try := range 3 { // the first datagram may wait for ARP
		payload := "v6-" + strconv.Itoa(try)
		if connected {
			err = unix.Send(fd, []byte(payload), 0)
		} else {
			err = unix.Sendto(fd, []byte(payload), 0, to)
		}
		if err != nil {
			ans.Err = "send: " + err.Error()
			return ans
		}
		n, from, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			ans.Err = "recv: " + err.Error()
			continue
		}
		pod, got := skPodOf(buf[:n])
		if got != payload {
			continue
		}
		ans.Err, ans.Pod = "", pod
		if !connected {
			ans.Peer = skSockaddrString(from)
		}
		return ans
	}
	return ans
}

// skStartAgent starts node-agent on node n only, with extra flags; at
// the end it is stopped and its pins and programs removed.
func skStartAgent(t *testing.T, b *framework.Bed, n testbed.Node, extra ...string) (*framework.Agents, *framework.Agent) {
	t.Helper()
	as := framework.StartAgentsOn(t, b, []testbed.Node{n}, extra...)
	return as, as.List[0]
}

// skMetricsURL is the agent's metrics address (framework.Agents.start).
func skMetricsURL(a *framework.Agent) string {
	return "http://" + a.Node.ENIs[0].Addr.Addr().String() + ":10249"
}

// skMetric reads one sample from the agent's /metrics: name with its
// labels exactly as exposed (e.g. `directlb_node_agent_bpf_map_entries{map="dlb_svc4"}`).
func skMetric(a *framework.Agent, sample string) (float64, error) {
	code, body, err := framework.HTTPGet(skMetricsURL(a) + "/metrics")
	if err != nil {
		return 0, fmt.Errorf("GET /metrics: %w", err)
	}
	if code != http.StatusOK {
		return 0, fmt.Errorf("GET /metrics: %d", code)
	}
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, sample+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	return 0, fmt.Errorf("no sample %s in /metrics", sample)
}

// skSockAddrHooks matches the socket-address attach types in bpftool's
// cgroup listing (cgroup_inet4_connect, cgroup_udp4_sendmsg, ...).
var skSockAddrHooks = regexp.MustCompile(`connect|sendmsg|recvmsg|getpeername`)

// skNoSocketHooks fails the test when any socket-address program applies
// to node n's cgroup (inherited included) or to any cgroup below it: a
// Service datapath (the chart's node-agent, an agent an earlier test left)
// would translate the clients instead of the one under test.
func skNoSocketHooks(t *testing.T, n testbed.Node) {
	t.Helper()
	for _, args := range [][]string{{"cgroup", "show", n.Cgroup, "effective"}, {"cgroup", "tree", n.Cgroup}} {
		out, err := exec.Command("bpftool", args...).CombinedOutput()
		if err != nil {
			// A pod's cgroup going away during the walk fails the
			// tree; what it listed still counts.
			t.Logf("bpftool %s: %v: %s", strings.Join(args, " "), err, out)
		}
		if skSockAddrHooks.Match(out) {
			t.Fatalf("%s: socket programs already apply (another node-agent?), so the test would not measure what it starts; bpftool %s:\n%s",
				n.Name, strings.Join(args, " "), out)
		}
	}
}

// skClientPod creates an echo pod on node (a sandbox to run clients in)
// and returns it Ready.
func skClientPod(t *testing.T, b *framework.Bed, ns, name, node string) framework.Sandbox {
	t.Helper()
	framework.CreatePod(t, b, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{framework.EchoContainer()},
			TerminationGracePeriodSeconds: ptr.To(int64(1))},
	})
	return framework.PodSandbox(t, b, framework.WaitPod(t, b, ns, name, 90*time.Second, "Ready", framework.Ready))
}

// skEchoService is a ClusterIP Service for app=<app>: 80/TCP → 8080 and
// 53/UDP → 9090.
func skEchoService(ns, name, app string) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": app},
			Ports: []corev1.ServicePort{
				{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)},
				{Name: "udp", Port: 53, Protocol: corev1.ProtocolUDP, TargetPort: intstr.FromInt32(9090)},
			},
		},
	}
}

func skNeedAgent(t *testing.T, b *framework.Bed) {
	t.Helper()
	if len(b.Topology.Nodes) < 3 {
		t.Skipf("needs 3 nodes, the test bed has %d", len(b.Topology.Nodes))
	}
	if _, err := os.Stat(filepath.Join(b.BinDir, "node-agent")); err != nil {
		t.Skipf("node-agent not built in %s (make build): %v", b.BinDir, err)
	}
}

// TestIPv6SocketToClusterIP: an AF_INET6 client addressing the ClusterIP
// as ::ffff:a.b.c.d — TCP, connected UDP and unconnected UDP — from a pod
// and from the node itself reaches the Service's pods, and the peer it is
// shown (getpeername; recvfrom's source for unconnected UDP) is the
// ClusterIP as ::ffff:a.b.c.d, not a pod's address.
func TestIPv6SocketToClusterIP(t *testing.T) {
	b := requireBed(t)
	skNeedAgent(t, b)
	node := b.Topology.Nodes[0]
	skNoSocketHooks(t, node)
	ns := framework.Namespace(t, b, fmt.Sprintf("e2e-inet6-%d", time.Now().Unix()%100000))
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	skStartAgent(t, b, node)

	if _, err := b.Client.AppsV1().Deployments(ns).Create(ctx, framework.EchoDeployment(ns, 3, map[string]string{"app": "echo"}, nil), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	svc, err := b.Client.CoreV1().Services(ns).Create(ctx, skEchoService(ns, "echo", "echo"), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cip := svc.Spec.ClusterIP
	pod := skClientPod(t, b, ns, "client", node.Name)
	var backends []corev1.Pod
	framework.Poll(t, 90*time.Second, "3 echo pods Ready", func(ctx context.Context) (bool, string) {
		var state string
		backends, state = framework.ReadyPods(ctx, b, ns, "app=echo")
		return len(backends) == 3, state
	})
	names := map[string]bool{}
	for _, p := range backends {
		names[p.Name] = true
	}
	wantTCP, wantUDP := "[::ffff:"+cip+"]:80", "[::ffff:"+cip+"]:53"
	for _, c := range []struct {
		name  string
		where framework.Sandbox
	}{{"pod", pod}, {"node", skHost(node)}} {
		t.Run(c.name, func(t *testing.T) {
			var res skInet6Result
			framework.Poll(t, 20*time.Second, "AF_INET6 clients reach "+cip, func(ctx context.Context) (bool, string) {
				if err := skRun(ctx, c.where, 20*time.Second, &res, "inet6", cip, "80", "53"); err != nil {
					return false, err.Error()
				}
				ok := names[res.TCP.Pod] && names[res.UDP.Pod] && names[res.UDPUnconneced.Pod]
				return ok, fmt.Sprintf("%+v", res)
			})
			t.Logf("%s: %+v", c.name, res)
			for _, k := range []struct {
				kind string
				got  skInet6Answer
				want string
			}{{"TCP getpeername", res.TCP, wantTCP}, {"connected UDP getpeername", res.UDP, wantUDP}, {"unconnected UDP recvfrom", res.UDPUnconneced, wantUDP}} {
				if k.got.Peer != k.want {
					t.Errorf("%s from the %s: %q, want the ClusterIP %s (answered by %q, error %q)", k.kind, c.name, k.got.Peer, k.want, k.got.Pod, k.got.Err)
				}
			}
		})
	}
}

// skJavaClient is the JVM's view: a single-file program (java
// Client.java) with an explicitly AF_INET6 SocketChannel and
// DatagramChannel (StandardProtocolFamily.INET6; an IPv4 address is then
// used as ::ffff:a.b.c.d) and the JVM's default Socket, which is AF_INET6
// on a host with IPv6 unless java.net.preferIPv4Stack is set.
const skJavaClient = `import java.net.*;
import java.nio.ByteBuffer;
import java.nio.channels.*;
import java.nio.charset.StandardCharsets;

public class Client {
    static String body(String resp) {
        int i = resp.indexOf("\r\n\r\n");
        return i < 0 ? "" : resp.substring(i + 4).trim();
    }

    static String http(ByteChannel ch, String host) throws Exception {
        ch.write(ByteBuffer.wrap(("GET / HTTP/1.0\r\nHost: " + host + "\r\n\r\n").getBytes(StandardCharsets.US_ASCII)));
        StringBuilder sb = new StringBuilder();
        ByteBuffer buf = ByteBuffer.allocate(4096);
        while (ch.read(buf) > 0) {
            buf.flip();
            sb.append(StandardCharsets.US_ASCII.decode(buf));
            buf.clear();
        }
        return body(sb.toString());
    }

    public static void main(String[] args) throws Exception {
        InetAddress ip = InetAddress.getByName(args[0]);
        int tcpPort = Integer.parseInt(args[1]), udpPort = Integer.parseInt(args[2]);
        try (SocketChannel ch = SocketChannel.open(StandardProtocolFamily.INET6)) {
            ch.socket().setSoTimeout(3000);
            ch.connect(new InetSocketAddress(ip, tcpPort));
            System.out.println("tcp6 " + http(ch, args[0]));
        } catch (Exception e) {
            System.out.println("tcp6-error " + e);
        }
        try (DatagramChannel ch = DatagramChannel.open(StandardProtocolFamily.INET6)) {
            ch.socket().setSoTimeout(3000);
            String pod = null, from = null;
            for (int i = 0; i < 3 && pod == null; i++) {
                ch.send(ByteBuffer.wrap(("jvm-" + i).getBytes(StandardCharsets.US_ASCII)), new InetSocketAddress(ip, udpPort));
                ByteBuffer buf = ByteBuffer.allocate(2048);
                DatagramPacket p = new DatagramPacket(new byte[2048], 2048);
                try {
                    ch.socket().receive(p);
                } catch (SocketTimeoutException e) {
                    continue;
                }
                String s = new String(p.getData(), 0, p.getLength(), StandardCharsets.US_ASCII);
                pod = s.split("\n", 2)[0];
                from = p.getAddress().getHostAddress();
            }
            System.out.println("udp6 " + pod + " " + from);
        } catch (Exception e) {
            System.out.println("udp6-error " + e);
        }
        try (Socket s = new Socket()) {
            s.setSoTimeout(3000);
            s.connect(new InetSocketAddress(ip, tcpPort), 3000);
            s.getOutputStream().write(("GET / HTTP/1.0\r\nHost: " + args[0] + "\r\n\r\n").getBytes(StandardCharsets.US_ASCII));
            String resp = new String(s.getInputStream().readAllBytes(), StandardCharsets.US_ASCII);
            System.out.println("tcp-default " + body(resp));
        } catch (Exception e) {
            System.out.println("tcp-default-error " + e);
        }
    }
}
`

// TestIPv6SocketToClusterIPFromJVM: a Java program (the JVM runs IPv4
// traffic over AF_INET6 sockets) in a pod reaches the Service over TCP and
// UDP through the ClusterIP, and a UDP reply shows the ClusterIP as its
// source. Needs java from a JDK (java Client.java); skips without it.
func TestIPv6SocketToClusterIPFromJVM(t *testing.T) {
	b := requireBed(t)
	skNeedAgent(t, b)
	java, err := exec.LookPath("java")
	if err != nil {
		t.Skip("no java on PATH: the JVM client needs a JDK's java (Debian: openjdk-17-jdk-headless) to run a single-file program")
	}
	if out, err := exec.Command(java, "--list-modules").CombinedOutput(); err != nil || !strings.Contains(string(out), "jdk.compiler") {
		t.Skipf("%s has no jdk.compiler module (a JRE, not a JDK): it cannot run java Client.java: %v", java, err)
	}
	node := b.Topology.Nodes[0]
	skNoSocketHooks(t, node)
	ns := framework.Namespace(t, b, fmt.Sprintf("e2e-jvm-%d", time.Now().Unix()%100000))
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	skStartAgent(t, b, node)
	if _, err := b.Client.AppsV1().Deployments(ns).Create(ctx, framework.EchoDeployment(ns, 3, map[string]string{"app": "echo"}, nil), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	svc, err := b.Client.CoreV1().Services(ns).Create(ctx, skEchoService(ns, "echo", "echo"), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cip := svc.Spec.ClusterIP
	pod := skClientPod(t, b, ns, "client", node.Name)
	var backends []corev1.Pod
	framework.Poll(t, 90*time.Second, "3 echo pods Ready", func(ctx context.Context) (bool, string) {
		var state string
		backends, state = framework.ReadyPods(ctx, b, ns, "app=echo")
		return len(backends) == 3, state
	})
	names := map[string]bool{}
	for _, p := range backends {
		names[p.Name] = true
	}
	// The JVM uses AF_INET6 sockets only where the namespace has an IPv6
	// address (OpenJDK's IPv6_supported reads /proc/net/if_inet6); the
	// bed's node namespaces have none, a pod's has ::1.
	if out, err := exec.Command("nsenter", "--net="+pod.NetNS, "--", "cat", "/proc/net/if_inet6").CombinedOutput(); err != nil || strings.TrimSpace(string(out)) == "" {
		t.Skipf("the client pod's network namespace has no IPv6 address (%v: %q): the JVM would use AF_INET sockets, not the AF_INET6 path under test", err, out)
	}
	src := filepath.Join(t.TempDir(), "Client.java")
	if err := os.WriteFile(src, []byte(skJavaClient), 0o644); err != nil {
		t.Fatal(err)
	}
	var lines map[string]string
	var out string
	framework.Poll(t, 2*time.Minute, "java Client.java "+cip+" in the pod", func(ctx context.Context) (bool, string) {
		rctx, rcancel := context.WithTimeout(ctx, time.Minute)
		defer rcancel()
		cmd := exec.CommandContext(rctx, "nsenter", "--net="+pod.NetNS, "--", java, src, cip, "80", "53")
		var buf strings.Builder
		cmd.Stdout, cmd.Stderr = &buf, &buf
		if err := framework.StartInCgroup(cmd, pod.Cgroup); err != nil {
			t.Fatalf("start java: %v", err)
		}
		err := cmd.Wait()
		out = buf.String()
		lines = map[string]string{}
		for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
			k, v, _ := strings.Cut(l, " ")
			lines[k] = v
		}
		udp := strings.Fields(lines["udp6"])
		return err == nil && names[lines["tcp6"]] && len(udp) == 2 && names[udp[0]], fmt.Sprintf("%v: %s", err, out)
	})
	t.Logf("java in the pod:\n%s", out)
	if udp := strings.Fields(lines["udp6"]); udp[1] != cip {
		t.Errorf("UDP reply to the JVM's AF_INET6 DatagramChannel came from %s, want the ClusterIP %s", udp[1], cip)
	}
	if !names[lines["tcp-default"]] {
		t.Errorf("the JVM's default Socket: %q (%s), want an echo pod's name", lines["tcp-default"], lines["tcp-default-error"])
	}
}

// skResolverEvent is one line of the resolver client.
type skResolverEvent struct {
	at   time.Time
	kind string // answer, error, reconnect, done
	arg  string
}

// skResolver is a running resolver client.
type skResolver struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	events chan skResolverEvent
	mu     sync.Mutex
	lines  []string
	done   chan error
	stderr strings.Builder
}

func skStartResolver(t *testing.T, where framework.Sandbox, addr string, bound time.Duration) *skResolver {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), bound+30*time.Second)
	t.Cleanup(cancel)
	cmd, err := skCommand(ctx, where, "resolver", addr, strconv.Itoa(int(bound.Seconds())), "20", "200")
	if err != nil {
		t.Fatal(err)
	}
	r := &skResolver{cmd: cmd, events: make(chan skResolverEvent, 1024), done: make(chan error, 1)}
	cmd.Stderr = &r.stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if r.stdin, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := framework.StartInCgroup(cmd, where.Cgroup); err != nil {
		t.Fatalf("start resolver client: %v", err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := sc.Text()
			r.mu.Lock()
			r.lines = append(r.lines, line)
			r.mu.Unlock()
			f := strings.SplitN(line, " ", 3)
			ns, err := strconv.ParseInt(f[0], 10, 64)
			if err != nil || len(f) < 2 {
				continue
			}
			ev := skResolverEvent{at: time.Unix(0, ns), kind: f[1]}
			if len(f) == 3 {
				ev.arg = f[2]
			}
			select {
			case r.events <- ev:
			default: // nobody is waiting for that many
			}
		}
		close(r.events)
		r.done <- cmd.Wait()
	}()
	return r
}

// stop closes the client's stdin and waits for it.
func (r *skResolver) stop(t *testing.T) {
	t.Helper()
	r.stdin.Close()
	for range r.events {
	}
	if err := <-r.done; err != nil {
		t.Errorf("resolver client: %v: %s", err, r.stderr.String())
	}
}

func (r *skResolver) log() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return strings.Join(r.lines, "\n")
}

// skRecovery is one measured recovery.
type skRecovery struct {
	victim, next string
	took         time.Duration
	errors       []string // the socket errors the client saw after the delete
}

// skMeasureRecovery runs the resolver client in where against addr, waits
// for its first answer, deletes the pod that gave it, and measures until
// an answer comes from another pod (bounded by bound).
func skMeasureRecovery(t *testing.T, b *framework.Bed, ns string, where framework.Sandbox, addr string, bound time.Duration) skRecovery {
	t.Helper()
	r := skStartResolver(t, where, addr, bound+30*time.Second)
	defer r.stop(t)
	var rec skRecovery
	first := time.After(20 * time.Second)
	for rec.victim == "" {
		select {
		case ev, ok := <-r.events:
			if !ok {
				t.Fatalf("resolver client ended before its first answer:\n%s\n%s", r.log(), r.stderr.String())
			}
			if ev.kind == "answer" {
				rec.victim = ev.arg
			}
		case <-first:
			t.Fatalf("resolver client: no answer from %s within 20s:\n%s", addr, r.log())
		}
	}
	// A second of steady answers from the victim, then it goes.
	time.Sleep(time.Second)
	t0 := time.Now()
	dctx, dcancel := context.WithTimeout(t.Context(), 30*time.Second)
	err := b.Client.CoreV1().Pods(ns).Delete(dctx, rec.victim, metav1.DeleteOptions{})
	dcancel()
	if err != nil {
		t.Fatalf("delete %s: %v", rec.victim, err)
	}
	limit := time.After(bound)
	for rec.next == "" {
		select {
		case ev, ok := <-r.events:
			if !ok {
				t.Fatalf("resolver client ended before an answer from another pod than %s:\n%s\n%s", rec.victim, r.log(), r.stderr.String())
			}
			switch {
			case ev.kind == "error" && ev.at.After(t0):
				rec.errors = append(rec.errors, ev.arg)
			case ev.kind == "answer" && ev.arg != rec.victim && ev.at.After(t0):
				rec.next, rec.took = ev.arg, ev.at.Sub(t0)
			}
		case <-limit:
			t.Errorf("no answer from another pod than %s within %s of deleting it; the client's events:\n%s", rec.victim, bound, r.log())
			return rec
		}
	}
	return rec
}

// TestConnectedUDPRecovery: a resolver-style client (one connected UDP
// socket, a query every 20 ms, 200 ms to answer, a new socket after an
// error) in a pod talks to a Service with 3 pods; the pod it talks to is
// deleted. That pod keeps answering through an 8 s preStop, so within
// those 8 s only the datapath can move the client.
//
// Under node-agent (node-1) the deleted pod's endpoint stops being used at
// once (it is terminating, and ready ones exist), the socket is destroyed
// (the client sees ECONNABORTED on recv, or EDESTADDRREQ on its next
// send), it reconnects and gets another pod: bound 5 s, less than the
// preStop. Under kube-proxy's nftables mode (node-3) new flows avoid the
// pod at once, but kube-proxy flushes a UDP flow's conntrack entry only
// when its endpoint stops serving, so the socket may stay on the pod
// until the preStop ends and the pod stops answering (port unreachable:
// the client reconnects); bound 8 s + 12 s. Both times are logged, and
// whether kube-proxy's came before the preStop's end.
func TestConnectedUDPRecovery(t *testing.T) {
	b := requireBed(t)
	skNeedAgent(t, b)
	if _, err := os.Stat(filepath.Join(b.BinDir, "kube-proxy")); err != nil {
		t.Skipf("kube-proxy not built in %s (make tools): %v", b.BinDir, err)
	}
	const preStop = 8
	const agentBound, kubeProxyBound = 5 * time.Second, (preStop + 12) * time.Second
	agentNode, kpNode := b.Topology.Nodes[0], b.Topology.Nodes[2]
	skNoSocketHooks(t, agentNode)
	skNoSocketHooks(t, kpNode)
	ns := framework.Namespace(t, b, fmt.Sprintf("e2e-udprecovery-%d", time.Now().Unix()%100000))
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()

	_, agent := skStartAgent(t, b, agentNode)
	kpcStartKubeProxy(t, b, kpNode)

	labels := map[string]string{"app": "dns"}
	hook := &corev1.LifecycleHandler{Sleep: &corev1.SleepAction{Seconds: preStop}}
	if _, err := b.Client.AppsV1().Deployments(ns).Create(ctx, framework.EchoDeployment(ns, 3, labels, hook), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	svc, err := b.Client.CoreV1().Services(ns).Create(ctx, skEchoService(ns, "dns", "dns"), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	addr := net.JoinHostPort(svc.Spec.ClusterIP, "53")
	agentPod := skClientPod(t, b, ns, "client-agent", agentNode.Name)
	kpPod := skClientPod(t, b, ns, "client-kube-proxy", kpNode.Name)
	ready := func() {
		framework.Poll(t, 90*time.Second, "3 dns pods Ready", func(ctx context.Context) (bool, string) {
			pods, state := framework.ReadyPods(ctx, b, ns, "app=dns")
			return len(pods) == 3, state
		})
	}
	ready()

	destroyed := func() float64 {
		v, err := skMetric(agent, "directlb_node_agent_udp_sockets_destroyed_total")
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	before := destroyed()
	na := skMeasureRecovery(t, b, ns, agentPod, addr, agentBound)
	t.Logf("node-agent (%s): answers moved from %s to %s %.0f ms after the delete; client saw %v",
		agentNode.Name, na.victim, na.next, float64(na.took.Microseconds())/1000, na.errors)
	if na.next != "" {
		if after := destroyed(); after <= before {
			t.Errorf("node-agent: udp_sockets_destroyed_total %v → %v: the client moved without its socket being destroyed", before, after)
		}
		if !slices.ContainsFunc(na.errors, func(e string) bool {
			return strings.HasPrefix(e, "aborted") || strings.HasPrefix(e, "destaddrreq")
		}) {
			t.Errorf("node-agent: the client saw errors %v after the delete, want ECONNABORTED or EDESTADDRREQ (its socket destroyed)", na.errors)
		}
	}

	ready()
	kp := skMeasureRecovery(t, b, ns, kpPod, addr, kubeProxyBound)
	t.Logf("kube-proxy (%s): answers moved from %s to %s %.0f ms after the delete (%s the %d s preStop ended); client saw %v",
		kpNode.Name, kp.victim, kp.next, float64(kp.took.Microseconds())/1000, map[bool]string{true: "after", false: "before"}[kp.took > preStop*time.Second], preStop, kp.errors)
	t.Logf("recovery of a connected UDP client after its backend's delete: node-agent %v (bound %v), kube-proxy %v (bound %v)",
		na.took.Round(time.Millisecond), agentBound, kp.took.Round(time.Millisecond), kubeProxyBound)
}

// skTableLines is the agent's /debug/services text.
func skTableLines(a *framework.Agent) ([]string, error) {
	code, body, err := framework.HTTPGet(skMetricsURL(a) + "/debug/services")
	if err != nil {
		return nil, fmt.Errorf("GET /debug/services: %w", err)
	}
	if code != http.StatusOK {
		return nil, fmt.Errorf("GET /debug/services: %d %s", code, body)
	}
	return strings.Split(strings.TrimSpace(body), "\n"), nil
}

// skBackendField is a backend in /debug/services (10.100.1.70:8080/TCP).
var skBackendField = regexp.MustCompile(`^\d+\.\d+\.\d+\.\d+:\d+/[A-Z]+$`)

// skProgrammed reports whether the table has <cip>:80/TCP with want
// backends (the frontend of skFillService) and none missing.
func skProgrammed(lines []string, cip string, want int) bool {
	for _, l := range lines {
		f := strings.Fields(l)
		if len(f) == 0 || f[0] != cip+":80/TCP" {
			continue
		}
		n := 0
		for _, x := range f[1:] {
			if skBackendField.MatchString(x) {
				n++
			}
		}
		return n == want && !strings.Contains(l, "missing")
	}
	return false
}

// skReported returns the table's lines that name the Service without
// being one of its ClusterIP's frontends: where the agent lists a Service
// it could not program, and why.
func skReported(lines []string, name, cip string) []string {
	var out []string
	for _, l := range lines {
		if strings.Contains(l, name) && !strings.HasPrefix(l, cip+":") && !strings.HasPrefix(l, cip+"/") {
			out = append(out, l)
		}
	}
	return out
}

func skFillService(ns, name string) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": "fill"},
			Ports:    []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}},
		},
	}
}

// TestServiceMapOverfill: node-agent on node-1 with dlb_svc4 sized
// (--map-size-services) for what the cluster already has plus 4 of this
// test's Services (one port, two pods: 4 entries each: address entry,
// master, 2 slots) and 3 entries to spare. Of 6 Services created one by
// one, the first 4 are programmed and answer from a pod on node-1; the
// last 2 do not fit: directlb_node_agent_services_not_programmed counts
// them, /debug/services names them (with their error), each gets a
// Warning Event NotProgrammed, and the 4 keep serving. After 2 of the 4
// are deleted, the 2 are programmed within 60 s (the agent retries every
// 30 s) and answer, the gauge is 0, and the other 2 still answer.
func TestServiceMapOverfill(t *testing.T) {
	b := requireBed(t)
	skNeedAgent(t, b)
	if out, _ := exec.Command(filepath.Join(b.BinDir, "node-agent"), "--help").CombinedOutput(); !strings.Contains(string(out), "--map-size-services") {
		t.Skipf("%s has no --map-size-services flag (rebuild with make build)", filepath.Join(b.BinDir, "node-agent"))
	}
	node := b.Topology.Nodes[0]
	skNoSocketHooks(t, node)
	skNoNamespaceTerminating(t, b)
	ns := framework.Namespace(t, b, fmt.Sprintf("e2e-mapfill-%d", time.Now().Unix()%100000))
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()

	r := &skFillRun{b: b, ns: ns, ctx: ctx, node: node}
	skFillPods(t, r)
	skFillSizeMap(t, r)
	skFillCreateServices(t, r)
	skFillOverflowReported(t, r)
	skFillDeletingMakesRoom(t, r)
}

// The sizes of TestServiceMapOverfill: each of its Services takes
// skFillPerService entries of dlb_svc4; skFillFitting fit, skFillExtra more
// do not, and skFillSpare entries are left over.
const skFillPerService, skFillFitting, skFillExtra, skFillSpare = 4, 4, 2, 3

// The node agent's metrics TestServiceMapOverfill reads.
const (
	skFillEntries       = `directlb_node_agent_bpf_map_entries{map="dlb_svc4"}`
	skFillNotProgrammed = "directlb_node_agent_services_not_programmed"
)

// skFillRun is what the steps of TestServiceMapOverfill share.
type skFillRun struct {
	b      *framework.Bed
	ns     string
	ctx    context.Context
	node   testbed.Node
	client framework.Sandbox
	names  map[string]bool // the fill pods
	agents *framework.Agents
	agent  *framework.Agent
	cips   map[string]string // Service name → ClusterIP
	order  []string          // the Services, as created
}

// skNoNamespaceTerminating waits for no namespace Terminating: Services of
// earlier tests' namespaces still being deleted would free room while
// TestServiceMapOverfill counts it.
func skNoNamespaceTerminating(t *testing.T, b *framework.Bed) {
	framework.Poll(t, 2*time.Minute, "no namespace Terminating", func(ctx context.Context) (bool, string) {
		l, err := b.Client.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err.Error()
		}
		var term []string
		for _, n := range l.Items {
			if n.Status.Phase == corev1.NamespaceTerminating {
				term = append(term, n.Name)
			}
		}
		return len(term) == 0, fmt.Sprint(term)
	})
}

// skFillPods creates the 2 fill pods and a client pod on the node.
func skFillPods(t *testing.T, r *skFillRun) {
	b, ns := r.b, r.ns
	labels := map[string]string{"app": "fill"}
	if _, err := b.Client.AppsV1().Deployments(ns).Create(r.ctx, framework.EchoDeployment(ns, 2, labels, nil), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	r.client = skClientPod(t, b, ns, "client", r.node.Name)
	var backends []corev1.Pod
	framework.Poll(t, 90*time.Second, "2 fill pods Ready", func(ctx context.Context) (bool, string) {
		var state string
		backends, state = framework.ReadyPods(ctx, b, ns, "app=fill")
		return len(backends) == 2, state
	})
	names := map[string]bool{}
	for _, p := range backends {
		names[p.Name] = true
	}
	r.names = names
}

// skFillSizeMap reads what the cluster takes before this test's Services,
// as the agent counts it; then starts the agent again with the map sized
// to it.
func skFillSizeMap(t *testing.T, r *skFillRun) {
	agents, agent := skStartAgent(t, r.b, r.node, "--map-size-services=4096")
	r.agents, r.agent = agents, agent
	var used float64
	framework.Poll(t, 20*time.Second, "dlb_svc4 entries read", func(context.Context) (bool, string) {
		var err error
		used, err = skMetric(agent, skFillEntries)
		return err == nil && used > 0, fmt.Sprint(used, err)
	})
	size := int(used) + skFillFitting*skFillPerService + skFillSpare
	agents.Stop(agent)
	if err := agents.Cleanup(agent); err != nil {
		t.Fatal(err)
	}
	agents.Extra = []string{"--map-size-services=" + strconv.Itoa(size)}
	agents.Start(agent)
	now, err := skMetric(agent, skFillEntries)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := skMetric(agent, skFillNotProgrammed); err != nil || n != 0 || now != used {
		t.Fatalf("restarted with --map-size-services=%d: %v entries (%v before), %v Services not programmed (%v): the cluster's Services changed meanwhile", size, now, used, n, err)
	}
	t.Logf("dlb_svc4: %v entries before this test's Services, size %d: room for %d Services of %d entries and %d spare", used, size, skFillFitting, skFillPerService, skFillSpare)
}

// skFillAnswers: 3 requests from the client pod to cip are all answered
// by fill pods.
func skFillAnswers(t *testing.T, r *skFillRun, cip string) (bool, string) {
	got := framework.Count(r.client.CurlN(t, "http://"+cip+"/", 3))
	for k := range got {
		if !r.names[k] {
			return false, fmt.Sprint(got)
		}
	}
	return true, fmt.Sprint(got)
}

// skFillCreateServices creates the Services one by one: the fitting ones
// get programmed, each further one raises the not-programmed gauge.
func skFillCreateServices(t *testing.T, r *skFillRun) {
	b, ns, agent := r.b, r.ns, r.agent
	cips := map[string]string{}
	r.cips = cips
	for i := range skFillFitting + skFillExtra {
		name := fmt.Sprintf("fill-%02d", i)
		svc, err := b.Client.CoreV1().Services(ns).Create(r.ctx, skFillService(ns, name), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		cips[name] = svc.Spec.ClusterIP
		r.order = append(r.order, name)
		if i < skFillFitting {
			framework.Poll(t, 30*time.Second, name+" programmed with 2 backends", func(context.Context) (bool, string) {
				lines, err := skTableLines(agent)
				return err == nil && skProgrammed(lines, svc.Spec.ClusterIP, 2), fmt.Sprintf("%v\n%s", err, strings.Join(lines, "\n"))
			})
			continue
		}
		want := float64(i - skFillFitting + 1)
		framework.Poll(t, 30*time.Second, fmt.Sprintf("%s not programmed (%s = %v)", name, skFillNotProgrammed, want), func(context.Context) (bool, string) {
			n, err := skMetric(agent, skFillNotProgrammed)
			return err == nil && n == want, fmt.Sprint(n, err)
		})
	}
	t.Logf("ClusterIPs: %v", cips)
}

// skFillOverflowReported: /debug/services names the Services that do not
// fit, each gets a Warning Event NotProgrammed and does not answer, and the
// programmed ones keep answering.
func skFillOverflowReported(t *testing.T, r *skFillRun) {
	b, ns, agent, names := r.b, r.ns, r.agent, r.names
	for _, name := range r.order[skFillFitting:] {
		cip := r.cips[name]
		framework.Poll(t, 30*time.Second, "/debug/services reports "+ns+"/"+name, func(context.Context) (bool, string) {
			lines, err := skTableLines(agent)
			return err == nil && len(skReported(lines, ns+"/"+name, cip)) > 0 && !skProgrammed(lines, cip, 2), fmt.Sprintf("%v\n%s", err, strings.Join(lines, "\n"))
		})
		lines, _ := skTableLines(agent)
		t.Logf("/debug/services on %s: %q", name, skReported(lines, ns+"/"+name, cip))
		rgWaitServiceEvent(t, b, ns, name, corev1.EventTypeWarning, "NotProgrammed")
		if got := r.client.CurlN(t, "http://"+cip+"/", 1); names[got[0]] {
			t.Errorf("%s (not programmed) answered %q from the pod", name, got[0])
		}
	}
	for _, name := range r.order[:skFillFitting] {
		if ok, got := skFillAnswers(t, r, r.cips[name]); !ok {
			t.Errorf("%s (programmed) with the map full: %s, want answers from %v", name, got, names)
		}
	}
}

// skFillDeletingMakesRoom deletes the first Services: the others are
// programmed within 60 s, the gauge is 0, and all left answer.
func skFillDeletingMakesRoom(t *testing.T, r *skFillRun) {
	agent, order, cips := r.agent, r.order, r.cips
	for _, name := range order[:skFillExtra] {
		if err := r.b.Client.CoreV1().Services(r.ns).Delete(r.ctx, name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	framework.Poll(t, 60*time.Second, "every Service programmed after deleting "+strings.Join(order[:skFillExtra], ", "), func(context.Context) (bool, string) {
		n, err := skMetric(agent, skFillNotProgrammed)
		if err != nil || n != 0 {
			return false, fmt.Sprintf("%s %v %v", skFillNotProgrammed, n, err)
		}
		lines, err := skTableLines(agent)
		for _, name := range order[skFillFitting:] {
			if err != nil || !skProgrammed(lines, cips[name], 2) {
				return false, fmt.Sprintf("%s not in the table: %v\n%s", name, err, strings.Join(lines, "\n"))
			}
		}
		return true, ""
	})
	for _, name := range order[skFillExtra:] {
		framework.Poll(t, 10*time.Second, name+" answers", func(context.Context) (bool, string) { return skFillAnswers(t, r, cips[name]) })
	}
	t.Logf("after deleting %v: %v all programmed and answering", order[:skFillExtra], order[skFillExtra:])
}

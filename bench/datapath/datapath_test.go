//go:build linux

// Package datapath_test benchmarks the node agent's ClusterIP datapath in
// process: programming Services into the real BPF maps, one endpoint change,
// and connect+request latency through a ClusterIP against the same request
// straight to the backend. Needs root; see docs/benchmarks.md.
package datapath_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
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

	"golang.org/x/sys/unix"

	"github.com/directlb/directlb/internal/privileged"
	"github.com/directlb/directlb/pkg/datapath"
)

const helperEnv = "DLBT_BENCH_DP_HELPER"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		os.Exit(latencyHelper(os.Args[len(os.Args)-4:]))
	}
	os.Exit(m.Run())
}

func suffix() string {
	b := make([]byte, 4)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// env is a private bpffs and a child cgroup.
type env struct {
	bpffs  string
	cgroup string
}

func newEnv(b *testing.B) *env {
	b.Helper()
	privileged.Require(b, "loads BPF programs, mounts a bpffs and makes a cgroup")
	privileged.RequireKernel(b, datapath.CheckKernel)
	dir := b.TempDir()
	if err := unix.Mount("bpffs", dir, "bpf", 0, "mode=0700"); err != nil {
		b.Fatalf("mount bpffs: %v", err)
	}
	b.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	cg := filepath.Join("/sys/fs/cgroup/unified", "dlbt-bench-dp-"+suffix())
	if err := os.Mkdir(cg, 0o755); err != nil {
		b.Fatalf("create cgroup: %v", err)
	}
	b.Cleanup(func() {
		for range 50 {
			if err := os.Remove(cg); err == nil || errors.Is(err, os.ErrNotExist) {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
	return &env{bpffs: dir, cgroup: cg}
}

func (e *env) load(b *testing.B, name string) *datapath.Datapath {
	b.Helper()
	root := filepath.Join(e.bpffs, name)
	dp, err := datapath.Load(datapath.Config{BPFRoot: root, Cgroup: e.cgroup})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		dp.Close()
		datapath.Cleanup(root)
	})
	return dp
}

// services makes n Services × per backends with distinct addresses.
func services(n, per int, port uint16) []datapath.Service {
	out := make([]datapath.Service, n)
	for i := range n {
		s := datapath.Service{Frontend: datapath.Frontend{
			Addr: netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)}), Port: port, Proto: datapath.TCP,
		}}
		for j := range per {
			k := i*per + j
			s.Backends = append(s.Backends, netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 128 + byte(k>>16), byte(k >> 8), byte(k)}), 8080))
		}
		out[i] = s
	}
	return out
}

// BenchmarkProgramServices: desired state → BPF maps (BatchUpdate) for
// 1,000 and 10,000 Services × 10 backends, on empty maps.
func BenchmarkProgramServices(b *testing.B) {
	e := newEnv(b)
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			svcs := services(n, 10, 80)
			var total time.Duration
			for i := range b.N {
				dp := e.load(b, fmt.Sprintf("prog-%d-%d", n, i))
				lb := datapath.NewLoadBalancer(datapath.LoadBalancerConfig{Maps: dp.Maps})
				start := time.Now()
				st, err := lb.Sync(svcs)
				total += time.Since(start)
				if err != nil {
					b.Fatal(err)
				}
				if want := n*10 + n*11; st.Writes != want {
					b.Fatalf("wrote %d entries, want %d", st.Writes, want)
				}
			}
			b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms/program")
			b.ReportMetric(float64(n*10)/total.Seconds()*float64(b.N), "endpoints/s")
		})
	}
}

// BenchmarkEndpointChange: with 10,000 Services × 10 programmed, replace one
// endpoint of one Service and program it.
func BenchmarkEndpointChange(b *testing.B) {
	e := newEnv(b)
	dp := e.load(b, "change")
	lb := datapath.NewLoadBalancer(datapath.LoadBalancerConfig{Maps: dp.Maps})
	svcs := services(10000, 10, 80)
	if _, err := lb.Sync(svcs); err != nil {
		b.Fatal(err)
	}
	var lat []time.Duration
	b.ResetTimer()
	for i := range b.N {
		// Bounded: at most 20,000 changes whatever b.N asks for.
		for j := range 2000 {
			k := (i*2000 + j) % len(svcs)
			s := svcs[k]
			s.Backends = slices.Clone(s.Backends)
			s.Backends[3] = netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 200, byte(j >> 8), byte(j)}), uint16(9000+i%1000))
			start := time.Now()
			st, err := lb.Apply([]datapath.Service{s}, nil)
			lat = append(lat, time.Since(start))
			if err != nil {
				b.Fatal(err)
			}
			if st.Writes != 3 {
				b.Fatalf("one endpoint change wrote %d entries, want 3", st.Writes)
			}
			svcs[k] = s
		}
		if i >= 9 {
			break
		}
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}

// latencyHelper runs in the test cgroup: it alternates connect+request
// to the ClusterIP and straight to the backend and prints both medians
// and 99th percentiles in microseconds. With family 6 both go from an
// AF_INET6 socket to the v4-mapped addresses (::ffff:a.b.c.d).
func latencyHelper(args []string) int {
	cip, direct, family := args[0], args[1], args[3]
	n, _ := strconv.Atoi(args[2])
	var viaCIP, viaDirect []time.Duration
	deadline := time.Now().Add(60 * time.Second)
	buf := make([]byte, 64)
	once := request4
	if family == "6" {
		once = request6
	}
	for i := 0; i < n && time.Now().Before(deadline); i++ {
		for _, t := range []struct {
			target string
			out    *[]time.Duration
		}{{cip, &viaCIP}, {direct, &viaDirect}} {
			start := time.Now()
			if err := once(t.target, buf); err != nil {
				fmt.Println("error", err)
				return 1
			}
			*t.out = append(*t.out, time.Since(start))
		}
	}
	pct := func(ds []time.Duration, p int) int64 {
		slices.Sort(ds)
		return ds[len(ds)*p/100].Microseconds()
	}
	fmt.Println(pct(viaCIP, 50), pct(viaCIP, 99), pct(viaDirect, 50), pct(viaDirect, 99), len(viaCIP))
	return 0
}

// request4 connects (AF_INET, through Go's net), sends a line and reads
// the answer.
func request4(target string, buf []byte) error {
	c, err := net.DialTimeout("tcp", target, 2*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte("GET\n")); err != nil {
		return err
	}
	_, err = c.Read(buf)
	return err
}

// request6 does the same from an AF_INET6 socket to ::ffff:<target>, with
// blocking syscalls (Go's net would dial a v4-mapped address as AF_INET):
// the connect6 hook's path, as the JVM takes it.
func request6(target string, buf []byte) error {
	ap, err := netip.ParseAddrPort(target)
	if err != nil {
		return err
	}
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0); err != nil {
		return err
	}
	tv := unix.Timeval{Sec: 2}
	for _, opt := range []int{unix.SO_RCVTIMEO, unix.SO_SNDTIMEO} {
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, opt, &tv); err != nil {
			return err
		}
	}
	if err := connect6(fd, &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}); err != nil {
		return err
	}
	if _, err := retryEINTR(func() (int, error) { return unix.Write(fd, []byte("GET\n")) }); err != nil {
		return err
	}
	_, err = retryEINTR(func() (int, error) { return unix.Read(fd, buf) })
	return err
}

// connect6 connects a blocking socket; a connect a signal interrupted goes
// on in the kernel, so it waits for it to finish.
func connect6(fd int, sa unix.Sockaddr) error {
	err := unix.Connect(fd, sa)
	if !errors.Is(err, unix.EINTR) {
		return err
	}
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
	if _, err := retryEINTR(func() (int, error) { return unix.Poll(pfd, 2000) }); err != nil {
		return err
	}
	if soerr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR); err != nil || soerr != 0 {
		return errors.Join(err, unix.Errno(soerr))
	}
	return nil
}

// retryEINTR calls f again while a signal interrupts it (the Go runtime's
// preemption signals reach blocking syscalls made directly).
func retryEINTR(f func() (int, error)) (int, error) {
	for {
		n, err := f()
		if !errors.Is(err, unix.EINTR) {
			return n, err
		}
	}
}

// BenchmarkConnectLatency: connect+request through a ClusterIP, with 10,000
// Services programmed, against the same request straight to the backend,
// from AF_INET sockets (the connect4 hook).
func BenchmarkConnectLatency(b *testing.B) { connectLatency(b, "4") }

// BenchmarkConnectLatency6: the same from AF_INET6 sockets to
// ::ffff:<ClusterIP> and ::ffff:<backend> (the connect6 hook).
func BenchmarkConnectLatency6(b *testing.B) { connectLatency(b, "6") }

func connectLatency(b *testing.B, family string) {
	e := newEnv(b)
	dp := e.load(b, "latency")
	if err := dp.Attach(); err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp4", "127.0.0.2:0")
	if err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	b.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		serveOK(ln)
	}()
	backend := ln.Addr().(*net.TCPAddr).AddrPort()

	lb := datapath.NewLoadBalancer(datapath.LoadBalancerConfig{Maps: dp.Maps})
	svcs := services(10000, 10, 80)
	// The measured Service: a loopback ClusterIP whose only backend is the
	// listener, among 10,000 others.
	fe := datapath.Frontend{Addr: netip.MustParseAddr("127.96.0.1"), Port: 80, Proto: datapath.TCP}
	svcs = append(svcs, datapath.Service{Frontend: fe, Backends: []netip.AddrPort{backend}})
	if _, err := lb.Sync(svcs); err != nil {
		b.Fatal(err)
	}
	cg, err := os.Open(e.cgroup)
	if err != nil {
		b.Fatal(err)
	}
	defer cg.Close()

	const perRun = 2000
	var cip50, cip99, dir50, dir99 float64
	b.ResetTimer()
	for range b.N {
		v := latencyRun(b, cg, netip.AddrPortFrom(fe.Addr, fe.Port), backend, perRun, family)
		cip50 += v[0]
		cip99 += v[1]
		dir50 += v[2]
		dir99 += v[3]
	}
	b.StopTimer()
	n := float64(b.N)
	b.ReportMetric(cip50/n, "clusterip-p50-µs")
	b.ReportMetric(cip99/n, "clusterip-p99-µs")
	b.ReportMetric(dir50/n, "direct-p50-µs")
	b.ReportMetric(dir99/n, "direct-p99-µs")
	b.ReportMetric(cip50/dir50, "p50-ratio")
	b.ReportMetric(cip99/dir99, "p99-ratio")
}

// latencyRun runs the latency helper once in the cgroup cg: perRun
// connect+requests from family's sockets to clusterIP and to backend. It
// returns the helper's clusterip p50, p99 and direct p50, p99 in µs.
func latencyRun(b *testing.B, cg *os.File, clusterIP, backend netip.AddrPort, perRun int, family string) []float64 {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$", "-test.bench=^$",
		clusterIP.String(), backend.String(), strconv.Itoa(perRun), family)
	cmd.Env = append(os.Environ(), helperEnv+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	out, err := cmd.Output()
	cancel()
	if err != nil {
		b.Fatalf("latency helper: %v: %s", err, out)
	}
	f := strings.Fields(string(out))
	if len(f) != 5 {
		b.Fatalf("latency helper printed %q", out)
	}
	v := make([]float64, 4)
	for i := range v {
		v[i], _ = strconv.ParseFloat(f[i], 64)
	}
	return v
}

// Package localcloudtest builds a small network for localcloud's privileged
// tests and benchmarks: a "cloud" namespace where localcloud runs, a
// "targets" namespace with echo servers, and routes from the host. Every
// name starts with dlbt-lc-; everything is removed in t.Cleanup.
//
// Test binaries using it must call Main from TestMain: the echo servers and
// localcloud run as re-executions of the test binary inside the namespaces.
package localcloudtest

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spf13/pflag"
	"go.uber.org/zap"

	"github.com/directlb/directlb/internal/namedns"
	"github.com/directlb/directlb/internal/privileged"
	"github.com/directlb/directlb/pkg/localcloud"
)

const (
	modeEnv  = "DLBT_LC_MODE"
	addrsEnv = "DLBT_LC_ADDRS"
	failEnv  = "DLBT_LC_FAILDIR"

	// EchoHTTPPort serves GET / (the target's address) and /healthz
	// (200, or 500 while Fail is set); EchoUDPPort echoes "<addr>:<payload>".
	EchoHTTPPort = 8080
	EchoUDPPort  = 5353
	// EchoBulkPort reads a decimal byte count and a newline, writes that
	// many bytes and closes: a throughput source.
	EchoBulkPort = 9000
	// APIPort is localcloud's API port on the cloud namespace's address.
	APIPort = 4566

	AccessKeyID     = "AKIDDLBTLC"
	SecretAccessKey = "dlbt-lc-secret"
)

// Main runs a helper mode if the environment asks for one, else the tests.
func Main(m *testing.M) {
	switch os.Getenv(modeEnv) {
	case "echo":
		runEcho(strings.Split(os.Getenv(addrsEnv), ","), os.Getenv(failEnv))
		os.Exit(0)
	case "localcloud":
		cfg := localcloud.DefaultConfig()
		fs := pflag.NewFlagSet("localcloud", pflag.ExitOnError)
		cfg.BindFlags(fs)
		_ = fs.Parse(os.Args[1:])
		log, _ := zap.NewDevelopment()
		srv, err := localcloud.New(cfg, log)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		ctx, stop := signalContext()
		defer stop()
		if err := srv.Run(ctx); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func runEcho(addrs []string, failDir string) {
	for _, a := range addrs {
		a := a
		mux := http.NewServeMux()
		mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, a) })
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
			if _, err := os.Stat(filepath.Join(failDir, a)); err == nil {
				http.Error(w, "failing on purpose", http.StatusInternalServerError)
				return
			}
			fmt.Fprint(w, "ok")
		})
		ln, err := net.Listen("tcp4", net.JoinHostPort(a, fmt.Sprint(EchoHTTPPort)))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		go http.Serve(ln, mux) //nolint:errcheck
		pc, err := net.ListenPacket("udp4", net.JoinHostPort(a, fmt.Sprint(EchoUDPPort)))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		bulk, err := net.Listen("tcp4", net.JoinHostPort(a, fmt.Sprint(EchoBulkPort)))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		go serveBulk(bulk)
		go func() {
			buf := make([]byte, 2048)
			for {
				n, from, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				_, _ = pc.WriteTo([]byte(a+":"+string(buf[:n])), from)
			}
		}()
	}
	fmt.Println("ready")
	select {}
}

func serveBulk(ln net.Listener) {
	chunk := make([]byte, 256<<10)
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer func() { _ = c.Close() }()
			var n int64
			if _, err := fmt.Fscanf(bufio.NewReader(c), "%d\n", &n); err != nil {
				return
			}
			for n > 0 {
				w := min(n, int64(len(chunk)))
				if _, err := c.Write(chunk[:w]); err != nil {
					return
				}
				n -= w
			}
		}()
	}
}

// Net is the test network.
type Net struct {
	t       testing.TB
	ID      string
	Cloud   string // netns of localcloud
	Targets string // netns of the echo servers
	HostIf  string
	// CloudAddr is localcloud's address as the host reaches it.
	CloudAddr string
	// TargetAddrs are the echo servers' addresses.
	TargetAddrs []string
	// LBCIDR is where load balancer addresses come from (routed to Cloud).
	LBCIDR  string
	FailDir string
	lc      *exec.Cmd
}

func run(t testing.TB, args ...string) {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// New builds the network with n targets; it skips if not root.
func New(t testing.TB, n int) *Net {
	t.Helper()
	privileged.Require(t, "creates network namespaces, veths and routes")
	privileged.RequireTools(t, "the network is built with iproute2's ip", "ip")
	x := rand.IntN(200) + 20
	id := fmt.Sprintf("%d%03d", os.Getpid()%100, x)
	nt := &Net{
		t: t, ID: id,
		Cloud:     "dlbt-lc-c" + id,
		Targets:   "dlbt-lc-t" + id,
		HostIf:    "dlbt-lc-h" + id,
		CloudAddr: fmt.Sprintf("10.251.%d.2", x),
		LBCIDR:    fmt.Sprintf("198.18.%d.0/24", x),
		FailDir:   t.TempDir(),
	}
	t.Cleanup(nt.teardown)
	for _, ns := range []string{nt.Cloud, nt.Targets} {
		if err := namedns.Create(ns); err != nil {
			t.Fatal(err)
		}
	}
	run(t, "ip", "link", "add", nt.HostIf, "type", "veth", "peer", "name", "up0", "netns", nt.Cloud)
	run(t, "ip", "addr", "add", fmt.Sprintf("10.251.%d.1/30", x), "dev", nt.HostIf)
	run(t, "ip", "link", "set", nt.HostIf, "up")
	run(t, "ip", "-n", nt.Cloud, "addr", "add", nt.CloudAddr+"/30", "dev", "up0")
	run(t, "ip", "-n", nt.Cloud, "link", "set", "up0", "up")
	run(t, "ip", "-n", nt.Cloud, "link", "set", "lo", "up")
	run(t, "ip", "-n", nt.Cloud, "link", "add", "tg0", "type", "veth", "peer", "name", "eth0", "netns", nt.Targets)
	run(t, "ip", "-n", nt.Cloud, "addr", "add", fmt.Sprintf("10.252.%d.1/24", x), "dev", "tg0")
	run(t, "ip", "-n", nt.Cloud, "link", "set", "tg0", "up")
	run(t, "ip", "netns", "exec", nt.Cloud, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	run(t, "ip", "-n", nt.Targets, "link", "set", "lo", "up")
	run(t, "ip", "-n", nt.Targets, "link", "set", "eth0", "up")
	for i := range n {
		a := fmt.Sprintf("10.252.%d.%d", x, 11+i)
		nt.TargetAddrs = append(nt.TargetAddrs, a)
		run(t, "ip", "-n", nt.Targets, "addr", "add", a+"/24", "dev", "eth0")
	}
	run(t, "ip", "-n", nt.Targets, "route", "add", "default", "via", fmt.Sprintf("10.252.%d.1", x))
	run(t, "ip", "route", "add", nt.LBCIDR, "via", nt.CloudAddr)
	run(t, "ip", "route", "add", fmt.Sprintf("10.252.%d.0/24", x), "via", nt.CloudAddr)
	nt.startEcho()
	return nt
}

func (nt *Net) teardown() {
	nt.StopLocalcloud()
	_ = exec.Command("ip", "link", "del", nt.HostIf).Run()
	for _, ns := range []string{nt.Cloud, nt.Targets} {
		if err := namedns.Delete(ns); err != nil {
			nt.t.Error(err)
		}
	}
}

func (nt *Net) startEcho() {
	cmd := exec.Command("ip", "netns", "exec", nt.Targets, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), modeEnv+"=echo", addrsEnv+"="+strings.Join(nt.TargetAddrs, ","), failEnv+"="+nt.FailDir)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		nt.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		nt.t.Fatal(err)
	}
	nt.t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	ready := make(chan bool, 1)
	go func() {
		s := bufio.NewScanner(out)
		ok := s.Scan() && s.Text() == "ready"
		ready <- ok
		for s.Scan() {
		}
	}()
	select {
	case ok := <-ready:
		if !ok {
			nt.t.Fatal("echo servers did not start")
		}
	case <-time.After(10 * time.Second):
		nt.t.Fatal("echo servers did not start in 10s")
	}
}

// SetHealth makes a target's /healthz answer 200 (true) or 500 (false).
func (nt *Net) SetHealth(addr string, healthy bool) {
	p := filepath.Join(nt.FailDir, addr)
	if healthy {
		_ = os.Remove(p)
		return
	}
	if err := os.WriteFile(p, nil, 0o644); err != nil {
		nt.t.Fatal(err)
	}
}

// APIEndpoint is localcloud's URL.
func (nt *Net) APIEndpoint() string { return fmt.Sprintf("http://%s:%d", nt.CloudAddr, APIPort) }

// StartLocalcloud runs localcloud with its datapath in the cloud namespace
// and waits for its API. stateDir survives restarts.
func (nt *Net) StartLocalcloud(stateDir string, extra ...string) {
	nt.t.Helper()
	args := append([]string{"netns", "exec", nt.Cloud, os.Args[0], "-test.run=^$",
		"--listen", fmt.Sprintf("%s:%d", nt.CloudAddr, APIPort),
		"--state-dir", stateDir, "--lb-cidr", nt.LBCIDR,
		"--access-key-id", AccessKeyID, "--secret-access-key", SecretAccessKey,
		"--datapath", "--datapath-interface", "lo"}, extra...)
	cmd := exec.Command("ip", args...)
	cmd.Env = append(os.Environ(), modeEnv+"=localcloud")
	logf, err := os.OpenFile(filepath.Join(stateDir, "localcloud.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		nt.t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		nt.t.Fatal(err)
	}
	nt.lc = cmd
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := http.Get(nt.APIEndpoint() + "/metrics")
		if err == nil {
			_ = resp.Body.Close()
			return
		}
		if time.Now().After(deadline) {
			nt.t.Fatalf("localcloud API did not come up in 15s: %v (log %s)", err, logf.Name())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// StopLocalcloud stops localcloud with SIGTERM (SIGKILL after 5 s).
func (nt *Net) StopLocalcloud() {
	if nt.lc == nil {
		return
	}
	_ = nt.lc.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = nt.lc.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		_ = nt.lc.Process.Kill()
		<-done
	}
	nt.lc = nil
}

func signalContext() (context.Context, func()) {
	ctx, cancel := context.WithCancel(context.Background())
	c := make(chan os.Signal, 1)
	signalNotify(c)
	go func() {
		select {
		case <-c:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

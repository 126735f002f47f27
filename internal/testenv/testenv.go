// Package testenv holds the building blocks that tests and benchmarks share
// to run directlb against real parts: an envtest control plane (etcd and
// kube-apiserver, one per package or one per test) and an in-process
// localcloud API server reached through the real AWS SDK client.
package testenv

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/aws/aws-sdk-go-v2/credentials"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	crzap "sigs.k8s.io/controller-runtime/pkg/log/zap"

	cloudaws "github.com/directlb/directlb/pkg/cloud/aws"
	"github.com/directlb/directlb/pkg/localcloud"
)

// The key an in-process localcloud accepts.
const (
	LocalcloudKeyID  = "AKIDDLBTESTENV"
	LocalcloudSecret = "dlbt-testenv-secret"
)

// EnvtestAssets makes a temporary directory of symlinks to etcd,
// kube-apiserver and kubectl for envtest (prefix names it), or says why it
// cannot. The binaries come from $KUBEBUILDER_ASSETS if set, else etcd from
// /usr/bin and the others from $DLB_BIN_DIR or the module's bin/. The
// caller removes the directory.
func EnvtestAssets(prefix string) (dir string, why string) {
	binDir := BinDir()
	want := map[string]string{
		"etcd":           "/usr/bin/etcd",
		"kube-apiserver": filepath.Join(binDir, "kube-apiserver"),
		"kubectl":        filepath.Join(binDir, "kubectl"),
	}
	if p := os.Getenv("KUBEBUILDER_ASSETS"); p != "" {
		for name := range want {
			want[name] = filepath.Join(p, name)
		}
	}
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		return "", err.Error()
	}
	for name, src := range want {
		if _, err := os.Stat(src); err != nil {
			os.RemoveAll(dir)
			return "", fmt.Sprintf("envtest needs %s at %s (run `make tools deps`): %v", name, src, err)
		}
		if err := os.Symlink(src, filepath.Join(dir, name)); err != nil {
			os.RemoveAll(dir)
			return "", err.Error()
		}
	}
	return dir, ""
}

// BinDir is where the project's pinned binaries are (kube-apiserver,
// kubectl, kube-proxy, helm): $DLB_BIN_DIR if set, else the module's bin/.
func BinDir() string {
	if d := os.Getenv("DLB_BIN_DIR"); d != "" {
		return d
	}
	return filepath.Join(moduleRoot(), "bin")
}

// RunEnvtest is the TestMain of a package whose tests share one envtest
// control plane: it starts etcd and kube-apiserver (assets in a temporary
// directory named by prefix), sets *cfg to reach them, runs the tests and
// stops them. Without a control plane (-short, or a binary is missing) *cfg
// stays nil and *skip says why, for the tests to skip with.
func RunEnvtest(m *testing.M, prefix string, cfg **rest.Config, skip *string) int {
	assets, why := EnvtestAssets(prefix)
	if why == "" && testing.Short() {
		os.RemoveAll(assets)
		why = "-short"
	}
	if why != "" {
		*skip = why
		return m.Run()
	}
	defer os.RemoveAll(assets)
	logf.SetLogger(crzap.New(crzap.WriteTo(os.Stderr), crzap.Level(zapcore.InfoLevel)))
	env := &envtest.Environment{BinaryAssetsDirectory: assets}
	c, err := env.Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, "start envtest:", err)
		return 1
	}
	*cfg = c
	code := m.Run()
	if err := env.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "stop envtest:", err)
	}
	return code
}

// StartEnvtest starts an envtest control plane for one test or benchmark
// and stops it at cleanup; it skips tb, saying why, when a binary is
// missing. configure, if not nil, adjusts the environment before it starts
// (apiserver flags, say).
func StartEnvtest(tb testing.TB, prefix string, configure func(*envtest.Environment)) (*envtest.Environment, *rest.Config) {
	tb.Helper()
	assets, why := EnvtestAssets(prefix)
	if why != "" {
		tb.Skip("needs a real kube-apiserver and etcd: " + why)
	}
	tb.Cleanup(func() { os.RemoveAll(assets) })
	env := &envtest.Environment{BinaryAssetsDirectory: assets}
	if configure != nil {
		configure(env)
	}
	cfg, err := env.Start()
	if err != nil {
		tb.Fatalf("start envtest: %v", err)
	}
	tb.Cleanup(func() {
		if err := env.Stop(); err != nil {
			tb.Errorf("stop envtest: %v", err)
		}
	})
	return env, cfg
}

// moduleRoot is the nearest directory above the working directory with a
// go.mod (go test runs in the package's directory), or ".".
func moduleRoot() string {
	dir, err := os.Getwd()
	if err != nil {
		return "."
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "."
		}
		dir = parent
	}
}

// Localcloud starts an in-process localcloud API server on a loopback port
// with no datapath and state in a temporary directory; mutate adjusts its
// Config. It is closed at cleanup.
func Localcloud(tb testing.TB, mutate func(*localcloud.Config)) *localcloud.Server {
	tb.Helper()
	cfg := localcloud.DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.StateDir = tb.TempDir()
	cfg.Datapath = false
	cfg.AccessKeyID, cfg.SecretAccessKey = LocalcloudKeyID, LocalcloudSecret
	if mutate != nil {
		mutate(&cfg)
	}
	srv, err := localcloud.New(cfg, zap.NewNop())
	if err != nil {
		tb.Fatal(err)
	}
	if err := srv.Start(context.Background()); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { srv.Close() })
	return srv
}

// SDKClient is the real pkg/cloud/aws client pointed at srv with its key;
// it starts from cloudaws.DefaultConfig (client-side rate limits on) and
// mutate adjusts it.
func SDKClient(tb testing.TB, srv *localcloud.Server, mutate func(*cloudaws.Config)) *cloudaws.Client {
	tb.Helper()
	cfg := cloudaws.DefaultConfig()
	cfg.Region = "us-east-1"
	cfg.Endpoint = "http://" + srv.Addr()
	cfg.Credentials = credentials.NewStaticCredentialsProvider(LocalcloudKeyID, LocalcloudSecret, "")
	if mutate != nil {
		mutate(&cfg)
	}
	c, err := cloudaws.New(context.Background(), cfg)
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

// Package testenv holds the building blocks that tests and benchmarks share
// to run directlb against real parts: the envtest binaries (etcd and
// kube-apiserver) and an in-process localcloud API server reached through
// the real AWS SDK client.
package testenv

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/aws/aws-sdk-go-v2/credentials"
	"go.uber.org/zap"

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
	binDir := os.Getenv("DLB_BIN_DIR")
	if binDir == "" {
		binDir = filepath.Join(moduleRoot(), "bin")
	}
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

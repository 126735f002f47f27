package cni_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/testutils"

	"github.com/directlb/directlb/pkg/cloud/fake"
)

// TestStatus: STATUS answers "available" with a fresh or a readable pool,
// and code 50 (plugin not available) when the pool cannot be read; an
// invalid configuration is code 7 whatever the command.
func TestStatus(t *testing.T) {
	dir := t.TempDir()
	status := func(conf []byte) error {
		return testutils.CmdStatus(func() error { return pluginMain(conf, fake.NewENIs()) })
	}
	if err := status(confIn(dir, 1, 0)); err != nil {
		t.Errorf("STATUS on a fresh data dir: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "node-1", "pool.json"), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	var e *types.Error
	if err := status(confIn(dir, 1, 0)); !errors.As(err, &e) || e.Code != types.ErrPluginNotAvailable {
		t.Errorf("STATUS with a corrupt pool: %v; want code %d", err, types.ErrPluginNotAvailable)
	}
	if err := status([]byte(`{"cniVersion":"1.1.0","name":"directlb","type":"directlb-cni"}`)); !errors.As(err, &e) || e.Code != types.ErrInvalidNetworkConfig {
		t.Errorf("STATUS with no instanceID: %v; want code %d", err, types.ErrInvalidNetworkConfig)
	}
}

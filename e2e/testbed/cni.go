package testbed

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/directlb/directlb/pkg/cni/install"
	localcloudcfg "github.com/directlb/directlb/pkg/localcloud"
)

// LocalcloudRegion is the region localcloud serves (its default).
var LocalcloudRegion = localcloudcfg.DefaultConfig().Region

// writeCNICredentials writes the shared credentials file directlb-cni signs
// localcloud's EC2 API with (localcloud's default key).
func writeCNICredentials(t *Topology) error {
	lc := localcloudcfg.DefaultConfig()
	b := fmt.Sprintf("[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n", lc.AccessKeyID, lc.SecretAccessKey)
	return os.WriteFile(filepath.Join(t.StateDir, "cni-credentials"), []byte(b), 0o600)
}

// CNIConfName is the conflist the bed writes into each node's CNI conf dir
// (the chart's installer writes the same name).
const CNIConfName = "10-directlb.conflist"

// installCNI puts node n's CNI plugins in its bin dir (directlb-cni from
// the bin dir, portmap from the reference plugins) and writes its conflist
// with the chart installer's Conflist: what a node image or `directlb-cni
// install` provides on a real node.
func installCNI(cfg Config, t *Topology, n Node) error {
	r := n.Runtime
	links := map[string]string{
		"directlb-cni": filepath.Join(cfg.BinDir, "directlb-cni"),
		"portmap":      filepath.Join(cfg.CNIPluginDir, "portmap"),
	}
	for name, target := range links {
		if _, err := os.Stat(target); err != nil {
			return fmt.Errorf("node %s: cni plugin %s: %w", n.Name, name, err)
		}
		if err := os.Symlink(target, filepath.Join(r.CNIBinDir, name)); err != nil && !os.IsExist(err) {
			return fmt.Errorf("node %s: cni plugin %s: %w", n.Name, name, err)
		}
	}
	b, err := install.Conflist(cniInstallConfig(t, n))
	if err != nil {
		return fmt.Errorf("node %s: %w", n.Name, err)
	}
	return os.WriteFile(filepath.Join(r.CNIConfDir, CNIConfName), b, 0o644)
}

// cniInstallConfig is node n's directlb-cni configuration: addresses from
// the node's ENIs through localcloud's EC2 API, none kept warm (so EC2
// follows the pods), the node's first ENI, portmap for hostPort. CNI 1.0.0:
// the runtime does not call 1.1's GC, which could race an ADD.
func cniInstallConfig(t *Topology, n Node) install.Config {
	c := install.DefaultConfig()
	c.CNIVersion = "1.0.0"
	c.ChainPortmap = true
	warm := 0
	c.Plugin.InstanceID = n.Name
	c.Plugin.DataDir = filepath.Join(nodeDir(t, n), "cni", "data")
	c.Plugin.LogFile = filepath.Join(t.StateDir, "logs", "cni-"+n.Name+".log")
	c.Plugin.WarmIPTarget = &warm
	c.Plugin.FirstENI = firstENI(t, n)
	c.Plugin.AWS.Endpoint = t.LocalcloudURL
	c.Plugin.AWS.Region = LocalcloudRegion
	c.Plugin.AWS.SharedCredentialsFile = filepath.Join(t.StateDir, "cni-credentials")
	return c
}

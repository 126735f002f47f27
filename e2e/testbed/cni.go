package testbed

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

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
// the bin dir, portmap from the reference plugins) and writes its conflist:
// what a node image or the chart's installer provides on a real node.
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
	b, err := json.MarshalIndent(cniConfList(t, n), "", "  ")
	if err != nil {
		return fmt.Errorf("node %s: cni config: %w", n.Name, err)
	}
	return os.WriteFile(filepath.Join(r.CNIConfDir, CNIConfName), b, 0o644)
}

// cniConfList is node n's conflist: directlb-cni gives the pod an address
// on one of the node's ENIs (through localcloud's EC2 API), portmap serves
// hostPort.
func cniConfList(t *Topology, n Node) map[string]any {
	plugin := map[string]any{
		"type":         "directlb-cni",
		"instanceID":   n.Name,
		"dataDir":      filepath.Join(nodeDir(t, n), "cni", "data"),
		"logFile":      filepath.Join(t.StateDir, "logs", "cni-"+n.Name+".log"),
		"warmIPTarget": 0,
		"firstENI":     firstENI(t, n),
	}
	if t.LocalcloudURL != "" {
		plugin["aws"] = map[string]any{
			"endpoint":              t.LocalcloudURL,
			"region":                LocalcloudRegion,
			"sharedCredentialsFile": filepath.Join(t.StateDir, "cni-credentials"),
		}
	}
	return map[string]any{
		"cniVersion": "1.0.0",
		"name":       "directlb",
		"plugins": []any{
			plugin,
			map[string]any{"type": "portmap", "capabilities": map[string]bool{"portMappings": true}, "snat": true},
		},
	}
}

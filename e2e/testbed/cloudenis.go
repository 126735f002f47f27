package testbed

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/directlb/directlb/pkg/localcloud/store"
)

// LocalcloudENIsFile is the file under the state dir that seeds
// localcloud's ENIs (its --network-interfaces-file).
const LocalcloudENIsFile = "localcloud-enis.json"

// TagNode is the tag localcloud's ENIs carry with their node's name.
const TagNode = "directlb.io/node"

// CloudENIs describes every node's ENIs for localcloud: the instance is the
// node's name (the last segment of its spec.providerID), the subnet the VPC,
// the pool the ENI's pod range, and the address limit the pool's size plus
// the primary address.
func CloudENIs(t *Topology) []store.NetworkInterface {
	var out []store.NetworkInterface
	for _, n := range t.Nodes {
		for _, e := range n.ENIs {
			out = append(out, store.NetworkInterface{
				ID:          e.ID,
				InstanceID:  n.Name,
				DeviceIndex: int32(e.DeviceIdx),
				MAC:         e.MAC,
				SubnetCIDR:  t.VPC.String(),
				PrivateIP:   e.Addr.Addr().String(),
				Pool:        e.PodRange.String(),
				Description: fmt.Sprintf("%s %s", n.Name, e.Device),
				Tags:        map[string]string{TagNode: n.Name},
			})
		}
	}
	return out
}

// writeCloudENIs writes CloudENIs to <StateDir>/localcloud-enis.json and
// returns its path.
func writeCloudENIs(t *Topology) (string, error) {
	b, err := json.MarshalIndent(CloudENIs(t), "", "  ")
	if err != nil {
		return "", fmt.Errorf("encode localcloud ENIs: %w", err)
	}
	path := filepath.Join(t.StateDir, LocalcloudENIsFile)
	if err := os.WriteFile(path, b, 0o644); err != nil {
		return "", fmt.Errorf("write localcloud ENIs: %w", err)
	}
	return path, nil
}

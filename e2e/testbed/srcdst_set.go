package testbed

import (
	"context"
	"fmt"
)

// SetSourceDestCheck turns the VPC's source/destination check on or off on
// a running test bed. A test that turns it on restores
// Topology.SourceDestCheck when it ends, for the tests after it.
func SetSourceDestCheck(ctx context.Context, t *Topology, on bool) error {
	if on {
		return applySourceDestCheck(ctx, t)
	}
	return nftInNetNS(ctx, t.VPCNetNS, fmt.Sprintf("table bridge %s\ndelete table bridge %s\n", srcDstTable, srcDstTable))
}

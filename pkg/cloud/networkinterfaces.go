package cloud

import (
	"context"
	"net/netip"
)

// NetworkInterface is an ENI attached to an instance, as the cloud reports
// it.
type NetworkInterface struct {
	ID         string
	InstanceID string
	// DeviceIndex is the attachment's device index (0 = primary ENI).
	DeviceIndex int
	// MAC is the ENI's MAC address, lower case with colons.
	MAC string
	// PrivateIP is the primary private address; SecondaryIPs the others.
	PrivateIP    netip.Addr
	SecondaryIPs []netip.Addr
	SubnetID     string
}

// NetworkInterfaces is the ENI API of the node agent and of VPC-CNI-style
// address management: a node's ENIs and their secondary addresses.
type NetworkInterfaces interface {
	// InstanceNetworkInterfaces returns the ENIs attached to the instance,
	// sorted by device index.
	InstanceNetworkInterfaces(ctx context.Context, instanceID string) ([]NetworkInterface, error)
	// AssignPrivateIPs assigns the given secondary addresses to the ENI,
	// or, when ips is empty, count free ones the cloud picks. It returns
	// the addresses this call assigned.
	AssignPrivateIPs(ctx context.Context, eniID string, ips []netip.Addr, count int) ([]netip.Addr, error)
	// UnassignPrivateIPs removes secondary addresses from the ENI.
	// Addresses the ENI does not hold, and an ENI that is gone, are not
	// errors (the addresses are free either way).
	UnassignPrivateIPs(ctx context.Context, eniID string, ips []netip.Addr) error
}

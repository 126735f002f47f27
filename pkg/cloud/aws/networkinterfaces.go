package aws

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/directlb/directlb/pkg/cloud"
)

var _ cloud.NetworkInterfaces = (*Client)(nil)

// InstanceNetworkInterfaces implements cloud.NetworkInterfaces with
// DescribeNetworkInterfaces filtered on attachment.instance-id (paginated).
func (c *Client) InstanceNetworkInterfaces(ctx context.Context, instanceID string) ([]cloud.NetworkInterface, error) {
	if instanceID == "" {
		return nil, errors.New("describe network interfaces: empty instance ID")
	}
	in := &ec2.DescribeNetworkInterfacesInput{
		Filters:    []ec2types.Filter{{Name: awssdk.String("attachment.instance-id"), Values: []string{instanceID}}},
		MaxResults: awssdk.Int32(min(max(c.pageSize, 5), 1000)),
	}
	var out []cloud.NetworkInterface
	p := ec2.NewDescribeNetworkInterfacesPaginator(c.EC2, in)
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, mapError("DescribeNetworkInterfaces", err)
		}
		for _, n := range page.NetworkInterfaces {
			ni, err := fromSDKNetworkInterface(n)
			if err != nil {
				return nil, fmt.Errorf("describe network interfaces of %s: %w", instanceID, err)
			}
			out = append(out, ni)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].DeviceIndex < out[j].DeviceIndex })
	return out, nil
}

func fromSDKNetworkInterface(n ec2types.NetworkInterface) (cloud.NetworkInterface, error) {
	out := cloud.NetworkInterface{
		ID:       awssdk.ToString(n.NetworkInterfaceId),
		MAC:      strings.ToLower(awssdk.ToString(n.MacAddress)),
		SubnetID: awssdk.ToString(n.SubnetId),
	}
	if n.Attachment != nil {
		out.InstanceID = awssdk.ToString(n.Attachment.InstanceId)
		out.DeviceIndex = int(awssdk.ToInt32(n.Attachment.DeviceIndex))
	}
	primary := awssdk.ToString(n.PrivateIpAddress)
	for _, a := range n.PrivateIpAddresses {
		ip, err := netip.ParseAddr(awssdk.ToString(a.PrivateIpAddress))
		if err != nil {
			return cloud.NetworkInterface{}, fmt.Errorf("%s: address %q: %w", out.ID, awssdk.ToString(a.PrivateIpAddress), err)
		}
		if awssdk.ToBool(a.Primary) || ip.String() == primary {
			out.PrivateIP = ip
			continue
		}
		out.SecondaryIPs = append(out.SecondaryIPs, ip)
	}
	if !out.PrivateIP.IsValid() && primary != "" {
		ip, err := netip.ParseAddr(primary)
		if err != nil {
			return cloud.NetworkInterface{}, fmt.Errorf("%s: primary address %q: %w", out.ID, primary, err)
		}
		out.PrivateIP = ip
	}
	return out, nil
}

func addrStrings(ips []netip.Addr) []string {
	out := make([]string, 0, len(ips))
	for _, ip := range ips {
		out = append(out, ip.String())
	}
	return out
}

// AssignPrivateIPs implements cloud.NetworkInterfaces.
func (c *Client) AssignPrivateIPs(ctx context.Context, eniID string, ips []netip.Addr, count int) ([]netip.Addr, error) {
	in := &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: awssdk.String(eniID)}
	switch {
	case len(ips) > 0:
		in.PrivateIpAddresses = addrStrings(ips)
	case count > 0:
		in.SecondaryPrivateIpAddressCount = awssdk.Int32(int32(count))
	default:
		return nil, nil
	}
	out, err := c.EC2.AssignPrivateIpAddresses(ctx, in)
	if err != nil {
		return nil, mapError("AssignPrivateIpAddresses", err)
	}
	var got []netip.Addr
	for _, a := range out.AssignedPrivateIpAddresses {
		ip, err := netip.ParseAddr(awssdk.ToString(a.PrivateIpAddress))
		if err != nil {
			return nil, fmt.Errorf("assign private addresses to %s: address %q: %w", eniID, awssdk.ToString(a.PrivateIpAddress), err)
		}
		got = append(got, ip)
	}
	return got, nil
}

// UnassignPrivateIPs implements cloud.NetworkInterfaces. EC2 refuses the
// whole call when one address is not on the ENI; then the ENI is read and
// only the addresses it still holds are unassigned.
func (c *Client) UnassignPrivateIPs(ctx context.Context, eniID string, ips []netip.Addr) error {
	if len(ips) == 0 {
		return nil
	}
	err := c.unassign(ctx, eniID, ips)
	var ae *cloud.APIError
	switch {
	case err == nil:
		return nil
	case errors.Is(err, cloud.ErrNotFound):
		return nil
	case !errors.As(err, &ae) || ae.Code != "InvalidParameterValue":
		return err
	}
	out, derr := c.EC2.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{NetworkInterfaceIds: []string{eniID}})
	if derr != nil {
		if errors.Is(mapError("DescribeNetworkInterfaces", derr), cloud.ErrNotFound) {
			return nil
		}
		return fmt.Errorf("unassign private addresses from %s: %w (then: %w)", eniID, err, mapError("DescribeNetworkInterfaces", derr))
	}
	var held []netip.Addr
	for _, n := range out.NetworkInterfaces {
		ni, cerr := fromSDKNetworkInterface(n)
		if cerr != nil {
			return cerr
		}
		for _, ip := range ips {
			if ip == ni.PrivateIP {
				return err // the primary address cannot go
			}
			if slices.Contains(ni.SecondaryIPs, ip) {
				held = append(held, ip)
			}
		}
	}
	if len(held) == len(ips) {
		return err // they are all held: the refusal was for another reason
	}
	if len(held) == 0 {
		return nil
	}
	return c.unassign(ctx, eniID, held)
}

func (c *Client) unassign(ctx context.Context, eniID string, ips []netip.Addr) error {
	_, err := c.EC2.UnassignPrivateIpAddresses(ctx, &ec2.UnassignPrivateIpAddressesInput{
		NetworkInterfaceId: awssdk.String(eniID),
		PrivateIpAddresses: addrStrings(ips),
	})
	return mapError("UnassignPrivateIpAddresses", err)
}

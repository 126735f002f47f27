package cni

import (
	"context"
	"fmt"
	"net/netip"
	"slices"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/directlb/directlb/pkg/cni/podnet"
)

// check verifies that the attachment holds its address in the pool, that
// the runtime's previous result names that address, and that the wiring
// (address, routes, neighbours, proxy entry) is in place.
func (r *run) check(ctx context.Context, args *skel.CmdArgs) error {
	h := holder(args)
	al, ok, err := r.ipam.Lookup(ctx, h)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("pool %s records no address for container %s interface %s", r.cfg.PoolDir(), args.ContainerID, args.IfName)
	}
	if err := prevResultHas(r.cfg, al.IP); err != nil {
		return err
	}
	devs, err := podnet.DevicesByMAC()
	if err != nil {
		return err
	}
	dev, ok := devs[al.MAC]
	if !ok {
		return fmt.Errorf("ENI %s (MAC %s) of address %s has no device in this network namespace", al.ENIID, al.MAC, al.IP)
	}
	return podnet.Verify(podnet.Attachment{Netns: args.Netns, IfName: args.IfName, HostVeth: h.Veth, ENIDevice: dev, IP: al.IP})
}

// prevResultHas checks that the runtime's cached result, when it passed
// one, names ip.
func prevResultHas(cfg *Config, ip netip.Addr) error {
	if cfg.RawPrevResult == nil {
		return nil
	}
	if err := version.ParsePrevResult(&cfg.PluginConf); err != nil {
		return fmt.Errorf("parse prevResult: %w", err)
	}
	prev, err := types100.NewResultFromResult(cfg.PrevResult)
	if err != nil {
		return fmt.Errorf("convert prevResult: %w", err)
	}
	if !slices.ContainsFunc(prev.IPs, func(c *types100.IPConfig) bool { return c.Address.IP.Equal(ip.AsSlice()) }) {
		return fmt.Errorf("prevResult does not list the pool's address %s", ip)
	}
	return nil
}

// status says whether ADD can be served: the configuration is valid (or
// the command would not get here) and the pool can be locked and read.
func (r *run) status(ctx context.Context, _ *skel.CmdArgs) error {
	if err := r.ipam.Check(ctx); err != nil {
		return types.NewError(types.ErrPluginNotAvailable, "address pool unavailable", err.Error())
	}
	return nil
}

package cni

import (
	"context"
	"fmt"
	"net"
	"strings"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"go.uber.org/zap"

	"github.com/directlb/directlb/pkg/cni/ipam"
	"github.com/directlb/directlb/pkg/cni/podnet"
)

// holder is the pool's record of the attachment args name.
func holder(args *skel.CmdArgs) ipam.Holder {
	h := ipam.Holder{ContainerID: args.ContainerID, IfName: args.IfName, Veth: podnet.HostVeth(args.ContainerID, args.IfName)}
	for _, kv := range strings.Split(args.Args, ";") {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "K8S_POD_NAMESPACE":
			h.Namespace = v
		case "K8S_POD_NAME":
			h.Pod = v
		}
	}
	return h
}

// add gives the pod an address (pool first, the cloud when the ENI's
// pool is empty), wires it, then tops the ENI's pool up to warmIPTarget.
// A failure to wire gives the address back to the pool and leaves no veth.
func (r *run) add(ctx context.Context, args *skel.CmdArgs) error {
	h := holder(args)
	log := r.log.With(zap.String("pod", h.Namespace+"/"+h.Pod))
	devs, err := podnet.DevicesByMAC()
	if err != nil {
		return err
	}
	usable := func(mac string) bool { _, ok := devs[mac]; return ok }
	al, err := r.ipam.Allocate(ctx, h, usable)
	if err != nil {
		return fmt.Errorf("allocate a pod address on instance %s: %w", r.cfg.InstanceID, err)
	}
	a := podnet.Attachment{Netns: args.Netns, IfName: args.IfName, HostVeth: h.Veth, ENIDevice: devs[al.MAC], IP: al.IP}
	links, err := podnet.Setup(a)
	if err != nil {
		if _, rerr := r.ipam.Release(ctx, h); rerr != nil {
			log.Error("give the address back after a failed ADD", zap.String("ip", al.IP.String()), zap.Error(rerr))
		}
		return fmt.Errorf("wire pod address %s on %s (%s): %w", al.IP, a.ENIDevice, al.ENIID, err)
	}
	if err := r.ipam.TopUp(ctx, al.ENIID); err != nil {
		log.Warn("pool top-up failed; the next ADD on this ENI may call the cloud", zap.String("eni", al.ENIID), zap.Error(err))
	}
	log.Info("pod address", zap.String("ip", al.IP.String()), zap.String("eni", al.ENIID),
		zap.String("device", a.ENIDevice), zap.String("veth", a.HostVeth))
	return types.PrintResult(result(a, al, links), r.cfg.CNIVersion)
}

// result is the ADD result: the node-side veth, the pod's interface (in
// its sandbox) and the ENI's device with the ENI's MAC, the /32 with its
// gateway, and the pod's routes.
func result(a podnet.Attachment, al ipam.Allocation, links podnet.Links) *types100.Result {
	gw := net.IP(podnet.Gateway.AsSlice())
	return &types100.Result{
		CNIVersion: types100.ImplementedSpecVersion,
		Interfaces: []*types100.Interface{
			{Name: a.HostVeth, Mac: links.HostMAC, Mtu: links.MTU},
			{Name: a.IfName, Mac: links.PodMAC, Mtu: links.MTU, Sandbox: a.Netns},
			{Name: a.ENIDevice, Mac: al.MAC},
		},
		IPs: []*types100.IPConfig{{
			Interface: types100.Int(1),
			Address:   net.IPNet{IP: al.IP.AsSlice(), Mask: net.CIDRMask(32, 32)},
			Gateway:   gw,
		}},
		Routes: []*types.Route{
			{Dst: net.IPNet{IP: gw, Mask: net.CIDRMask(32, 32)}},
			{Dst: net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}, GW: gw},
		},
	}
}

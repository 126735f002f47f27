package cni

import (
	"context"
	"errors"
	"fmt"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"go.uber.org/zap"

	"github.com/directlb/directlb/pkg/cni/ipam"
	"github.com/directlb/directlb/pkg/cni/podnet"
)

// del unwires the attachment and frees its address. What is already gone
// (the pool entry, the veth, the pod's namespace, the pool file) is
// success, as CNI requires of DEL. The node-side veth is removed even when
// the pool knows nothing of the container: its name is the container's.
func (r *run) del(ctx context.Context, args *skel.CmdArgs) error {
	h := holder(args)
	al, ok, err := r.ipam.Lookup(ctx, h)
	if err != nil {
		return err
	}
	if err := r.unwire(h, al, ok); err != nil {
		return err
	}
	if !ok {
		r.log.Info("no address recorded; nothing to free")
		return nil
	}
	if _, err := r.ipam.Release(ctx, h); err != nil {
		return err
	}
	r.log.Info("pod address freed", zap.String("ip", al.IP.String()), zap.String("eni", al.ENIID))
	return nil
}

// unwire removes the attachment's veth and, when its address is known,
// the proxy entry on its ENI's device.
func (r *run) unwire(h ipam.Holder, al ipam.Allocation, known bool) error {
	a := podnet.Attachment{HostVeth: h.Veth}
	if known {
		devs, err := podnet.DevicesByMAC()
		if err != nil {
			return err
		}
		a.IP, a.ENIDevice = al.IP, devs[al.MAC]
	}
	if err := podnet.Teardown(a); err != nil {
		return fmt.Errorf("unwire %s: %w", h.Veth, err)
	}
	return nil
}

// gc frees every address held by an attachment not in the runtime's list
// of valid ones (cni.dev/valid-attachments), with its wiring, and removes
// this plugin's veths that belong to no valid attachment.
func (r *run) gc(ctx context.Context, _ *skel.CmdArgs) error {
	valid := map[string]bool{} // node-side veth names
	for _, v := range r.cfg.ValidAttachments {
		valid[podnet.HostVeth(v.ContainerID, v.IfName)] = true
	}
	held, err := r.ipam.Held(ctx)
	if err != nil {
		return err
	}
	var stale []ipam.Holder
	var errs []error
	for h, al := range held {
		if valid[h.Veth] {
			continue
		}
		if err := r.unwire(h, al, true); err != nil {
			errs = append(errs, err)
			continue
		}
		stale = append(stale, h)
	}
	freed, err := r.ipam.Release(ctx, stale...)
	if err != nil {
		errs = append(errs, err)
	}
	veths, err := podnet.HostVeths()
	if err != nil {
		errs = append(errs, err)
	}
	for _, v := range veths {
		if !valid[v] {
			errs = append(errs, r.unwire(ipam.Holder{Veth: v}, ipam.Allocation{}, false))
		}
	}
	r.log.Info("garbage collected", zap.Int("valid", len(r.cfg.ValidAttachments)), zap.Int("freed", len(freed)))
	if err := errors.Join(errs...); err != nil {
		return types.NewError(types.ErrInternal, "garbage collection incomplete", err.Error())
	}
	return nil
}

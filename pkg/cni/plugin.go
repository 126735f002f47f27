// Package cni is directlb-cni, the CNI plugin that gives each pod an
// address on one of its node's ENIs, as the AWS VPC CNI does, but with no
// daemon: ADD takes an address from the node-local pool (package ipam),
// filling it from EC2 when it is empty, and wires the pod (package
// podnet); DEL undoes both and gives back to EC2 what the pool holds
// beyond warmIPTarget. node-agent's ENI policy routing reads the result
// from EC2 (the ENIs' secondary addresses) or from the proxy neighbour
// entries. See docs/cni.md.
package cni

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
	"go.uber.org/zap"

	"github.com/directlb/directlb/pkg/cloud"
	cloudaws "github.com/directlb/directlb/pkg/cloud/aws"
	"github.com/directlb/directlb/pkg/cni/ipam"
	"github.com/directlb/directlb/pkg/cni/podnet"
)

// Versions are the CNI spec versions the plugin speaks.
var Versions = version.PluginSupports("0.4.0", "1.0.0", "1.1.0")

// About is what the plugin prints when run without CNI_COMMAND.
const About = Type + ": pod addresses on the node's ENIs from a node-local pool (docs/cni.md)"

// opTimeout bounds one command: waiting for the pool's lock and the cloud
// calls (each bounded by cloudTimeout). The kubelet gives a sandbox 2m.
const opTimeout = 90 * time.Second

// Plugin is directlb-cni's commands.
type Plugin struct {
	// NewCloud builds the EC2 client; nil: pkg/cloud/aws with the
	// configuration's endpoint, region and credentials. It is called
	// only when a command needs the cloud.
	NewCloud func(ctx context.Context, s *Settings) (cloud.NetworkInterfaces, error)
}

// Funcs are the commands for skel.PluginMainFuncs.
func (p *Plugin) Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{
		Add:    p.command("ADD", (*run).add),
		Del:    p.command("DEL", (*run).del),
		Check:  p.command("CHECK", (*run).check),
		Status: p.command("STATUS", (*run).status),
		GC:     p.command("GC", (*run).gc),
	}
}

// run is one command's configuration, log and pool.
type run struct {
	cfg  *Config
	log  *zap.Logger
	ipam *ipam.IPAM
}

func (p *Plugin) command(name string, fn func(*run, context.Context, *skel.CmdArgs) error) func(*skel.CmdArgs) error {
	return func(args *skel.CmdArgs) error {
		cfg, err := LoadConfig(args.StdinData)
		if err != nil {
			return types.NewError(types.ErrInvalidNetworkConfig, "invalid "+Type+" configuration", err.Error())
		}
		log := newLogger(&cfg.Settings).With(zap.String("command", name))
		if args.ContainerID != "" {
			log = log.With(zap.String("containerID", args.ContainerID), zap.String("ifName", args.IfName))
		}
		defer func() { _ = log.Sync() }()
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		defer cancel()
		r := &run{cfg: cfg, log: log, ipam: ipam.New(ipam.Config{
			Dir:          cfg.PoolDir(),
			InstanceID:   cfg.InstanceID,
			Cloud:        &lazyCloud{build: func() (cloud.NetworkInterfaces, error) { return p.cloud(ctx, &cfg.Settings) }},
			WarmIPTarget: *cfg.WarmIPTarget,
			FirstENI:     cfg.FirstENI,
			CloudTimeout: cfg.CloudTimeout.Duration,
			Routed:       podnet.Routed,
			Logger:       log,
		})}
		start := time.Now()
		if err := fn(r, ctx, args); err != nil {
			log.Error(name+" failed", zap.Error(err), zap.Duration("took", time.Since(start)))
			return err
		}
		log.Debug(name+" done", zap.Duration("took", time.Since(start)))
		return nil
	}
}

func (p *Plugin) cloud(ctx context.Context, s *Settings) (cloud.NetworkInterfaces, error) {
	if p.NewCloud != nil {
		return p.NewCloud(ctx, s)
	}
	c, err := cloudaws.New(ctx, s.CloudConfig())
	if err != nil {
		return nil, fmt.Errorf("EC2 client: %w", err)
	}
	return c, nil
}

// lazyCloud builds the cloud client on its first call, so a command that
// needs no cloud call does not need working credentials either (a DEL
// after the credentials file is gone still succeeds).
type lazyCloud struct {
	build func() (cloud.NetworkInterfaces, error)
	once  sync.Once
	c     cloud.NetworkInterfaces
	err   error
}

func (l *lazyCloud) get() (cloud.NetworkInterfaces, error) {
	l.once.Do(func() { l.c, l.err = l.build() })
	return l.c, l.err
}

func (l *lazyCloud) InstanceNetworkInterfaces(ctx context.Context, instanceID string) ([]cloud.NetworkInterface, error) {
	c, err := l.get()
	if err != nil {
		return nil, err
	}
	return c.InstanceNetworkInterfaces(ctx, instanceID)
}

func (l *lazyCloud) AssignPrivateIPs(ctx context.Context, eniID string, ips []netip.Addr, count int) ([]netip.Addr, error) {
	c, err := l.get()
	if err != nil {
		return nil, err
	}
	return c.AssignPrivateIPs(ctx, eniID, ips, count)
}

func (l *lazyCloud) UnassignPrivateIPs(ctx context.Context, eniID string, ips []netip.Addr) error {
	c, err := l.get()
	if err != nil {
		return err
	}
	return c.UnassignPrivateIPs(ctx, eniID, ips)
}

//go:build linux

package datapath

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// Config says where the datapath keeps its pins and which cgroup it serves.
type Config struct {
	// BPFRoot is a directory on a bpffs; maps are pinned in BPFRoot/maps
	// and links in BPFRoot/links. If it lies under /sys/fs/bpf and that is
	// not a bpffs yet, Load mounts one there.
	BPFRoot string
	// Cgroup is the cgroup v2 directory whose processes (and its
	// descendants') get ClusterIP translation.
	Cgroup string
	// MapSizes overrides the maps' max entries; zero keeps the size in
	// sock_lb.c. A pinned map of another size cannot be reused: Load
	// fails until it is removed (node-agent --cleanup).
	MapSizes MapSizes
}

// MapSizes are the max entries of the maps that grow with the cluster.
type MapSizes struct {
	// Services is dlb_svc4: one entry per frontend, one per backend slot
	// and one address entry per ClusterIP (default 262,144).
	Services uint32
	// Backends is dlb_backends4 and dlb_affmatch4 (default 131,072).
	Backends uint32
	// RevNAT is dlb_revnat4, one entry per translated socket and peer
	// (LRU, default 65,536).
	RevNAT uint32
	// Sticky is dlb_sticky4, one per unconnected UDP socket and Service
	// (LRU, default 65,536).
	Sticky uint32
}

// DefaultMapSizes are the sizes compiled into sock_lb.c (TestDefaultMapSizes
// keeps them equal).
var DefaultMapSizes = MapSizes{Services: 262144, Backends: 131072, RevNAT: 65536, Sticky: 65536}

func (m MapSizes) apply(spec *ebpf.CollectionSpec) {
	set := func(n uint32, names ...string) {
		if n == 0 {
			return
		}
		for _, name := range names {
			if ms := spec.Maps[name]; ms != nil {
				ms.MaxEntries = n
			}
		}
	}
	set(m.Services, "dlb_svc4")
	set(m.Backends, "dlb_backends4", "dlb_affmatch4")
	set(m.RevNAT, "dlb_revnat4")
	set(m.Sticky, "dlb_sticky4")
}

// MapCapacities returns every loaded map's max entries, by map name.
func (d *Datapath) MapCapacities() map[string]uint32 {
	out := map[string]uint32{}
	for name, m := range map[string]*ebpf.Map{
		"dlb_svc4": d.objs.DlbSvc4, "dlb_backends4": d.objs.DlbBackends4,
		"dlb_affmatch4": d.objs.DlbAffmatch4, "dlb_revnat4": d.objs.DlbRevnat4,
		"dlb_affinity4": d.objs.DlbAffinity4, "dlb_sticky4": d.objs.DlbSticky4,
		"dlb_nodeaddr4": d.objs.DlbNodeaddr4, "dlb_nat4": d.objs.DlbNat4,
	} {
		out[name] = m.MaxEntries()
	}
	return out
}

// Datapath is the loaded programs and maps. Closing it leaves the pinned
// maps and links in place, so traffic keeps flowing while the agent is away.
type Datapath struct {
	cfg  Config
	objs sockLBObjects
	Maps *BPFMaps
	// destroyIter is the UDP socket iterator (DestroySockets), attached
	// on first use and not pinned.
	destroyIter *link.Iter
}

type hook struct {
	name   string
	attach ebpf.AttachType
	prog   func(*sockLBPrograms) *ebpf.Program
}

var hooks = []hook{
	{"connect4", ebpf.AttachCGroupInet4Connect, func(p *sockLBPrograms) *ebpf.Program { return p.DlbConnect4 }},
	{"sendmsg4", ebpf.AttachCGroupUDP4Sendmsg, func(p *sockLBPrograms) *ebpf.Program { return p.DlbSendmsg4 }},
	{"recvmsg4", ebpf.AttachCGroupUDP4Recvmsg, func(p *sockLBPrograms) *ebpf.Program { return p.DlbRecvmsg4 }},
	{"getpeername4", ebpf.AttachCgroupInet4GetPeername, func(p *sockLBPrograms) *ebpf.Program { return p.DlbGetpeername4 }},
	// IPv6 sockets to IPv4 Services (::ffff:a.b.c.d).
	{"connect6", ebpf.AttachCGroupInet6Connect, func(p *sockLBPrograms) *ebpf.Program { return p.DlbConnect6 }},
	{"sendmsg6", ebpf.AttachCGroupUDP6Sendmsg, func(p *sockLBPrograms) *ebpf.Program { return p.DlbSendmsg6 }},
	{"recvmsg6", ebpf.AttachCGroupUDP6Recvmsg, func(p *sockLBPrograms) *ebpf.Program { return p.DlbRecvmsg6 }},
	{"getpeername6", ebpf.AttachCgroupInet6GetPeername, func(p *sockLBPrograms) *ebpf.Program { return p.DlbGetpeername6 }},
}

// CheckKernel reports the first kernel feature the datapath needs and the
// running kernel lacks, in words an operator can act on.
func CheckKernel() error {
	if err := features.HaveProgramType(ebpf.CGroupSockAddr); err != nil {
		return fmt.Errorf("kernel lacks BPF cgroup sock_addr programs (Linux 4.17+): %w", err)
	}
	if err := features.HaveMapType(ebpf.LRUHash); err != nil {
		return fmt.Errorf("kernel lacks BPF LRU hash maps: %w", err)
	}
	if err := checkHelpers(ebpf.CGroupSockAddr, "cgroup sock_addr programs", []kernelHelper{
		{asm.FnGetSocketCookie, "bpf_get_socket_cookie (Linux 5.7+)"},
		{asm.FnGetNetnsCookie, "bpf_get_netns_cookie (Linux 5.7+)"},
		{asm.FnGetPrandomU32, "bpf_get_prandom_u32"},
		{asm.FnSetRetval, "bpf_set_retval (Linux 5.18+)"},
	}); err != nil {
		return err
	}
	return checkSockDestroyKernel()
}

// kernelHelper is a BPF helper a program type must offer, and how to name
// it to an operator.
type kernelHelper struct {
	fn   asm.BuiltinFunc
	what string
}

// checkHelpers reports the first helper the kernel lacks for programs of
// type pt (kind names the type in the error).
func checkHelpers(pt ebpf.ProgramType, kind string, helpers []kernelHelper) error {
	for _, h := range helpers {
		if err := features.HaveProgramHelper(pt, h.fn); err != nil {
			return fmt.Errorf("kernel lacks helper %s for %s: %w", h.what, kind, err)
		}
	}
	return nil
}

// IsCgroup2 reports whether dir is a directory of a cgroup v2 hierarchy.
func IsCgroup2(dir string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("cgroup %s: %w", dir, err)
	}
	if st.Type != unix.CGROUP2_SUPER_MAGIC {
		return fmt.Errorf("cgroup %s: not on a cgroup v2 file system", dir)
	}
	return nil
}

// EnsureBPFFS makes sure dir lies on a bpffs, mounting one at /sys/fs/bpf
// when dir is under it and nothing is mounted there yet, and creates dir.
func EnsureBPFFS(dir string) error {
	onBPFFS := func(p string) bool {
		var st unix.Statfs_t
		return unix.Statfs(p, &st) == nil && st.Type == unix.BPF_FS_MAGIC
	}
	// The nearest existing ancestor decides which file system dir is on.
	p := filepath.Clean(dir)
	for {
		if _, err := os.Stat(p); err == nil || p == "/" {
			break
		}
		p = filepath.Dir(p)
	}
	if !onBPFFS(p) {
		const std = "/sys/fs/bpf"
		if dir != std && !strings.HasPrefix(filepath.Clean(dir), std+"/") {
			return fmt.Errorf("bpf root %s: not on a bpffs", dir)
		}
		if !onBPFFS(std) {
			if err := os.MkdirAll(std, 0o755); err != nil {
				return fmt.Errorf("create %s: %w", std, err)
			}
			if err := unix.Mount("bpffs", std, "bpf", 0, "mode=0700"); err != nil {
				return fmt.Errorf("mount bpffs at %s: %w", std, err)
			}
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create bpf root %s: %w", dir, err)
	}
	return nil
}

func mapsDir(root string) string  { return filepath.Join(root, "maps") }
func linksDir(root string) string { return filepath.Join(root, "links") }

// Load loads the programs and opens (or creates and pins) the maps under
// cfg.BPFRoot. It does not attach anything; see Attach.
func Load(cfg Config) (*Datapath, error) {
	if err := EnsureBPFFS(cfg.BPFRoot); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(mapsDir(cfg.BPFRoot), 0o700); err != nil {
		return nil, fmt.Errorf("create maps dir: %w", err)
	}
	spec, err := loadSockLB()
	if err != nil {
		return nil, fmt.Errorf("load BPF spec: %w", err)
	}
	cfg.MapSizes.apply(spec)
	if err := checkPinned(spec, mapsDir(cfg.BPFRoot)); err != nil {
		return nil, err
	}
	d := &Datapath{cfg: cfg}
	opts := &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: mapsDir(cfg.BPFRoot)}}
	if err := spec.LoadAndAssign(&d.objs, opts); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("load BPF programs: %+v", ve) //nolint:errorlint // %+v prints the whole verifier log
		}
		return nil, fmt.Errorf("load BPF programs and maps (pinned in %s): %w", mapsDir(cfg.BPFRoot), err)
	}
	d.Maps = &BPFMaps{
		svc:      d.objs.DlbSvc4,
		backends: d.objs.DlbBackends4,
		affmatch: d.objs.DlbAffmatch4,
		revnat:   d.objs.DlbRevnat4,
		affinity: d.objs.DlbAffinity4,
		nodeaddr: d.objs.DlbNodeaddr4,
		nat:      d.objs.DlbNat4,
		devices:  d.objs.DlbDevices,
	}
	return d, nil
}

// checkPinned reports every map pinned in dir that the spec cannot reuse
// (another size, after --map-size-* changed, or another layout), naming
// each pin and what to do. Nothing is changed: the programs of the earlier
// run keep serving from the pinned maps as they are.
func checkPinned(spec *ebpf.CollectionSpec, dir string) error {
	var bad, pins []string
	for name, ms := range spec.Maps {
		if ms.Pinning != ebpf.PinByName {
			continue
		}
		pin := filepath.Join(dir, name)
		m, err := ebpf.LoadPinnedMap(pin, &ebpf.LoadPinOptions{ReadOnly: true})
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("open pinned map %s: %w", pin, err)
		}
		err = ms.Compatible(m)
		m.Close()
		if err != nil {
			bad = append(bad, fmt.Sprintf("%s (%s)", pin, strings.TrimSuffix(err.Error(), ": "+ebpf.ErrMapIncompatible.Error())))
			pins = append(pins, pin)
		}
	}
	if len(bad) == 0 {
		return nil
	}
	slices.Sort(bad)
	slices.Sort(pins)
	return fmt.Errorf("pinned maps this agent cannot reuse: %s: %w; "+
		"they and the programs of the earlier run are left as they are and keep serving, with no further changes; "+
		"remove those pins (rm %s) and start again to have them created at the new size and programmed from the apiserver, "+
		"or remove every pin with `node-agent --cleanup --bpf-root %s` (docs/node-agent.md, \"Map sizes\")",
		strings.Join(bad, "; "), ebpf.ErrMapIncompatible, strings.Join(pins, " "), filepath.Dir(dir))
}

// Attach attaches the programs to cfg.Cgroup with bpf_links pinned in
// BPFRoot/links. A link pinned by an earlier run on the same cgroup is
// updated in place to the new program, so there is no moment without a
// program; a pinned link on another cgroup is replaced.
func (d *Datapath) Attach() error {
	if err := IsCgroup2(d.cfg.Cgroup); err != nil {
		return err
	}
	var st unix.Stat_t
	if err := unix.Stat(d.cfg.Cgroup, &st); err != nil {
		return fmt.Errorf("stat cgroup %s: %w", d.cfg.Cgroup, err)
	}
	if err := os.MkdirAll(linksDir(d.cfg.BPFRoot), 0o700); err != nil {
		return fmt.Errorf("create links dir: %w", err)
	}
	for _, h := range hooks {
		pin := filepath.Join(linksDir(d.cfg.BPFRoot), h.name)
		prog := h.prog(&d.objs.sockLBPrograms)
		if l, err := link.LoadPinnedLink(pin, nil); err == nil {
			info, ierr := l.Info()
			if ierr == nil && info.Cgroup() != nil && info.Cgroup().CgroupId == st.Ino {
				err := l.Update(prog)
				l.Close()
				if err != nil {
					return fmt.Errorf("update pinned link %s: %w", pin, err)
				}
				continue
			}
			// Attached elsewhere: detach it and attach afresh.
			if err := l.Unpin(); err != nil {
				l.Close()
				return fmt.Errorf("unpin link %s: %w", pin, err)
			}
			l.Close()
		} else if !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("open pinned link %s: %w", pin, err)
		}
		l, err := link.AttachCgroup(link.CgroupOptions{Path: d.cfg.Cgroup, Attach: h.attach, Program: prog})
		if err != nil {
			return fmt.Errorf("attach %s to cgroup %s: %w", h.name, d.cfg.Cgroup, err)
		}
		if err := l.Pin(pin); err != nil {
			l.Close()
			return fmt.Errorf("pin link %s: %w", pin, err)
		}
		l.Close()
	}
	return nil
}

// tcxPrefix names the pins of the tc links: tcx-<device>-ingress/egress.
const tcxPrefix = "tcx-"

// AttachDevices attaches the north-south programs (NodePorts, externalIPs
// and load-balancer IPs reached from outside the node) to each device's
// tcx ingress and egress, with links pinned in BPFRoot/links, and records
// the devices in dlb_devices (a backend behind one of them is on another
// node). Pinned links on the same device are updated in place; those of
// devices no longer listed are detached.
func (d *Datapath) AttachDevices(devices []string) error {
	if err := os.MkdirAll(linksDir(d.cfg.BPFRoot), 0o700); err != nil {
		return fmt.Errorf("create links dir: %w", err)
	}
	want := map[string]bool{}
	ifindexes := map[uint32]bool{}
	for _, dev := range devices {
		iface, err := net.InterfaceByName(dev)
		if err != nil {
			return fmt.Errorf("nodeport device %s: %w", dev, err)
		}
		for _, dir := range []struct {
			name   string
			attach ebpf.AttachType
			prog   *ebpf.Program
		}{
			{"ingress", ebpf.AttachTCXIngress, d.objs.DlbNodeportIngress},
			{"egress", ebpf.AttachTCXEgress, d.objs.DlbNodeportEgress},
		} {
			name := tcxPrefix + dev + "-" + dir.name
			want[name] = true
			if err := d.attachTCX(filepath.Join(linksDir(d.cfg.BPFRoot), name), iface.Index, dir.attach, dir.prog); err != nil {
				return fmt.Errorf("attach %s to %s: %w", dir.name, dev, err)
			}
		}
		ifindexes[uint32(iface.Index)] = true
	}
	entries, err := os.ReadDir(linksDir(d.cfg.BPFRoot))
	if err != nil {
		return fmt.Errorf("read links dir: %w", err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), tcxPrefix) && !want[e.Name()] {
			if err := detachPin(filepath.Join(linksDir(d.cfg.BPFRoot), e.Name())); err != nil {
				return err
			}
		}
	}
	return d.Maps.setDevices(ifindexes)
}

func (d *Datapath) attachTCX(pin string, ifindex int, attach ebpf.AttachType, prog *ebpf.Program) error {
	if l, err := link.LoadPinnedLink(pin, nil); err == nil {
		info, ierr := l.Info()
		if ierr == nil && info.TCX() != nil && int(info.TCX().Ifindex) == ifindex && ebpf.AttachType(info.TCX().AttachType) == attach {
			err := l.Update(prog)
			l.Close()
			if err != nil {
				return fmt.Errorf("update pinned link %s: %w", pin, err)
			}
			return nil
		}
		// Another device (the name now means another interface).
		if err := l.Unpin(); err != nil {
			l.Close()
			return fmt.Errorf("unpin link %s: %w", pin, err)
		}
		l.Close()
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("open pinned link %s: %w", pin, err)
	}
	l, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: prog, Attach: attach})
	if err != nil {
		return fmt.Errorf("tcx attach (Linux 6.6+): %w", err)
	}
	if err := l.Pin(pin); err != nil {
		l.Close()
		return fmt.Errorf("pin link %s: %w", pin, err)
	}
	return l.Close()
}

// detachPin detaches a pinned link at once and removes its pin.
func detachPin(pin string) error {
	l, err := link.LoadPinnedLink(pin, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		if rerr := os.Remove(pin); rerr != nil {
			return fmt.Errorf("remove pin %s: %w", pin, rerr)
		}
		return nil
	}
	defer l.Close()
	var errs []error
	if err := l.Detach(); err != nil && !errors.Is(err, ebpf.ErrNotSupported) {
		errs = append(errs, fmt.Errorf("detach %s: %w", pin, err))
	}
	if err := l.Unpin(); err != nil {
		errs = append(errs, fmt.Errorf("unpin %s: %w", pin, err))
	}
	return errors.Join(errs...)
}

// Close releases the agent's handles. Pinned maps and links stay.
func (d *Datapath) Close() error {
	if d.destroyIter != nil {
		d.destroyIter.Close()
	}
	return d.objs.Close()
}

// Cleanup detaches every program this datapath pinned under bpfRoot and
// removes its pins. A missing bpfRoot is not an error.
func Cleanup(bpfRoot string) error {
	var errs []error
	// Detach at once, even if another process holds a link open: the
	// cgroup hooks and the tc links of the devices.
	pins := []string{}
	for _, h := range hooks {
		pins = append(pins, filepath.Join(linksDir(bpfRoot), h.name))
	}
	if entries, err := os.ReadDir(linksDir(bpfRoot)); err == nil {
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), tcxPrefix) {
				pins = append(pins, filepath.Join(linksDir(bpfRoot), e.Name()))
			}
		}
	}
	for _, pin := range pins {
		if err := detachPin(pin); err != nil {
			errs = append(errs, err)
		}
	}
	for _, dir := range []string{linksDir(bpfRoot), mapsDir(bpfRoot)} {
		entries, err := os.ReadDir(dir)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("read %s: %w", dir, err))
			continue
		}
		for _, e := range entries {
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
				errs = append(errs, fmt.Errorf("remove pin: %w", err))
			}
		}
		if err := os.Remove(dir); err != nil {
			errs = append(errs, fmt.Errorf("remove %s: %w", dir, err))
		}
	}
	if err := os.Remove(bpfRoot); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("remove %s: %w", bpfRoot, err))
	}
	return errors.Join(errs...)
}

// CheckNorthSouthKernel reports the first feature the tc programs
// (--nodeport-devices) need that the running kernel lacks: tc (sched_cls)
// programs with the helpers they call; tcx links need Linux 6.6, which
// AttachDevices reports if missing.
func CheckNorthSouthKernel() error {
	if err := features.HaveProgramType(ebpf.SchedCLS); err != nil {
		return fmt.Errorf("kernel lacks BPF tc (sched_cls) programs: %w", err)
	}
	return checkHelpers(ebpf.SchedCLS, "tc programs", []kernelHelper{
		{asm.FnFibLookup, "bpf_fib_lookup (Linux 4.18+; BPF_FIB_LOOKUP_SRC needs 6.7+)"},
		{asm.FnRedirectNeigh, "bpf_redirect_neigh (Linux 5.10+)"},
		{asm.FnSkbStoreBytes, "bpf_skb_store_bytes"},
		{asm.FnSkbLoadBytes, "bpf_skb_load_bytes"},
		{asm.FnL3CsumReplace, "bpf_l3_csum_replace"},
		{asm.FnL4CsumReplace, "bpf_l4_csum_replace"},
		{asm.FnGetPrandomU32, "bpf_get_prandom_u32"},
		{asm.FnKtimeGetNs, "bpf_ktime_get_ns"},
	})
}

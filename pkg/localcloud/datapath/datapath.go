// Package datapath is localcloud's NLB-like L4 datapath for ip targets:
// each load balancer's address on an interface of localcloud's network
// namespace, and per listener a userspace TCP proxy (half-close aware) and
// a UDP flow proxy to the healthy registered targets.
//
// Rules, as an NLB: a new flow goes to a healthy target; if no target is
// healthy it goes to any active (not draining) target (fail open); a
// draining target gets no new flows but keeps its open ones until its
// deregistration delay ends and it leaves the target group, when they are
// closed.
package datapath

import (
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"net/netip"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"
	"go.uber.org/zap"

	"github.com/directlb/directlb/pkg/localcloud/store"
)

// HealthView tells whether a target is healthy.
type HealthView interface {
	Healthy(tgARN string, t store.Target) bool
}

// Config configures the datapath.
type Config struct {
	// Interface gets the load balancer addresses (as /32).
	Interface string
	// LBCIDR: addresses in it on Interface that no load balancer owns are
	// removed. Invalid (zero) disables the cleanup.
	LBCIDR netip.Prefix
	// Selection is "flow-hash" or "round-robin".
	Selection string
	// Fallback: a TCP connect the chosen target refuses goes on to the
	// other healthy targets; without it the client is reset, as by an
	// NLB, whose flow is bound to the target it picked.
	Fallback       bool
	UDPIdleTimeout time.Duration
	DialTimeout    time.Duration
	Health         HealthView
	Log            *zap.Logger
	Registerer     prometheus.Registerer
}

// TargetKey names a target of a target group in stats.
func TargetKey(tgARN, ip string, port int32) string {
	return tgARN + "|" + net.JoinHostPort(ip, strconv.Itoa(int(port)))
}

type backend struct {
	addr string // ip:port
	key  string // TargetKey
}

// backends is one target group's view for new flows.
type backends struct {
	healthy []backend
	active  []backend       // not draining: the fail-open set
	present map[string]bool // every target still in the group, draining too
}

func (b *backends) pick(h uint32, rr *atomic.Uint64, roundRobin bool) []backend {
	set := b.healthy
	if len(set) == 0 {
		set = b.active
	}
	if len(set) == 0 {
		return nil
	}
	var i int
	if roundRobin {
		i = int(rr.Add(1) % uint64(len(set)))
	} else {
		i = int(h % uint32(len(set)))
	}
	// The chosen one first, then the others as fallbacks if it refuses.
	out := make([]backend, 0, len(set))
	out = append(out, set[i:]...)
	return append(out, set[:i]...)
}

// ListenerStats are a listener's counters.
type ListenerStats struct {
	Address     string `json:"address"`
	Protocol    string `json:"protocol"`
	Connections int64  `json:"connections"`
	Active      int64  `json:"active"`
	Refused     int64  `json:"refused"`
	UDPFlows    int64  `json:"udpFlows"`
}

// Datapath owns the addresses and listeners.
type Datapath struct {
	cfg  Config
	link netlink.Link

	mu        sync.Mutex
	listeners map[string]*listener // by listener ARN + "/" + protocol

	flows *prometheus.CounterVec
}

// New prepares the datapath on cfg.Interface.
func New(cfg Config) (*Datapath, error) {
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	if cfg.UDPIdleTimeout == 0 {
		cfg.UDPIdleTimeout = 120 * time.Second
	}
	link, err := netlink.LinkByName(cfg.Interface)
	if err != nil {
		return nil, fmt.Errorf("datapath interface %s: %w", cfg.Interface, err)
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		if err := netlink.LinkSetUp(link); err != nil {
			return nil, fmt.Errorf("set %s up: %w", cfg.Interface, err)
		}
	}
	d := &Datapath{
		cfg:       cfg,
		link:      link,
		listeners: map[string]*listener{},
		flows: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "localcloud_datapath_flows_total",
			Help: "Flows (TCP connections, UDP flows) by protocol and result (forwarded, refused, no_target).",
		}, []string{"protocol", "result"}),
	}
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(d.flows); err != nil {
			return nil, fmt.Errorf("register datapath metrics: %w", err)
		}
	}
	return d, nil
}

// ensureAddresses adds the wanted addresses that the interface lacks and
// removes addresses in the LB CIDR that no load balancer owns.
func (d *Datapath) ensureAddresses(want map[string]bool) error {
	have, err := netlink.AddrList(d.link, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("list addresses of %s: %w", d.cfg.Interface, err)
	}
	present := map[string]bool{}
	var errs []error
	for _, a := range have {
		ip, ok := netip.AddrFromSlice(a.IP.To4())
		ones, _ := a.Mask.Size()
		if !ok || ones != 32 {
			continue
		}
		present[ip.String()] = true
		if !d.cfg.LBCIDR.IsValid() || !d.cfg.LBCIDR.Contains(ip) || want[ip.String()] {
			continue
		}
		if err := netlink.AddrDel(d.link, &a); err != nil && !errors.Is(err, syscall.EADDRNOTAVAIL) {
			errs = append(errs, fmt.Errorf("remove %s from %s: %w", ip, d.cfg.Interface, err))
		}
	}
	for a := range want {
		ip := net.ParseIP(a)
		if ip == nil || present[a] {
			continue
		}
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: ip, Mask: net.CIDRMask(32, 32)}}
		if err := netlink.AddrReplace(d.link, addr); err != nil {
			errs = append(errs, fmt.Errorf("add %s to %s: %w", a, d.cfg.Interface, err))
		}
	}
	return errors.Join(errs...)
}

// Sync makes addresses, listeners and backends match st.
func (d *Datapath) Sync(st store.State) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	wantAddrs := map[string]bool{}
	for _, lb := range st.LoadBalancers {
		if lb.Address != "" {
			wantAddrs[lb.Address] = true
		}
	}
	errs := []error{d.ensureAddresses(wantAddrs)}

	sets := map[string]*backends{}
	for _, tg := range st.TargetGroups {
		b := &backends{present: map[string]bool{}}
		ts := append([]store.Target(nil), tg.Targets...)
		sort.Slice(ts, func(i, j int) bool {
			if ts[i].IP != ts[j].IP {
				return ts[i].IP < ts[j].IP
			}
			return ts[i].Port < ts[j].Port
		})
		for _, t := range ts {
			be := backend{addr: net.JoinHostPort(t.IP, strconv.Itoa(int(t.Port))), key: TargetKey(tg.ARN, t.IP, t.Port)}
			b.present[be.key] = true
			if t.Draining() {
				continue
			}
			b.active = append(b.active, be)
			if d.cfg.Health != nil && d.cfg.Health.Healthy(tg.ARN, t) {
				b.healthy = append(b.healthy, be)
			}
		}
		sets[tg.ARN] = b
	}

	want := map[string]bool{}
	for _, l := range st.Listeners {
		lb, ok := st.LoadBalancers[l.LoadBalancerARN]
		if !ok || lb.Address == "" {
			continue
		}
		protos := []string{l.Protocol}
		if l.Protocol == "TCP_UDP" {
			protos = []string{"TCP", "UDP"}
		}
		for _, proto := range protos {
			k := l.ARN + "/" + proto
			want[k] = true
			addr := net.JoinHostPort(lb.Address, strconv.Itoa(int(l.Port)))
			cur := d.listeners[k]
			if cur != nil && cur.addr != addr {
				cur.close()
				delete(d.listeners, k)
				cur = nil
			}
			if cur == nil {
				nl, err := d.listen(proto, addr)
				if err != nil {
					errs = append(errs, err)
					continue
				}
				d.listeners[k] = nl
				cur = nl
			}
			b := sets[l.TargetGroupARN]
			if b == nil {
				b = &backends{present: map[string]bool{}}
			}
			cur.setBackends(b)
		}
	}
	for k, l := range d.listeners {
		if !want[k] {
			l.close()
			delete(d.listeners, k)
		}
	}
	return errors.Join(errs...)
}

func (d *Datapath) listen(proto, addr string) (*listener, error) {
	l := &listener{dp: d, proto: proto, addr: addr, conns: map[*tcpConn]struct{}{}, flows: map[string]*udpFlow{}}
	l.backends.Store(&backends{present: map[string]bool{}})
	switch proto {
	case "TCP":
		ln, err := net.Listen("tcp4", addr)
		if err != nil {
			return nil, fmt.Errorf("listen tcp %s: %w", addr, err)
		}
		l.tcp = ln
		l.wg.Add(1)
		go l.acceptTCP()
	case "UDP":
		ua, err := net.ResolveUDPAddr("udp4", addr)
		if err != nil {
			return nil, err
		}
		pc, err := net.ListenUDP("udp4", ua)
		if err != nil {
			return nil, fmt.Errorf("listen udp %s: %w", addr, err)
		}
		l.udp = pc
		l.wg.Add(2)
		go l.serveUDP()
		go l.expireUDP()
	default:
		return nil, fmt.Errorf("protocol %q", proto)
	}
	d.cfg.Log.Info("listener up", zap.String("protocol", proto), zap.String("address", addr))
	return l, nil
}

// Close closes every listener and connection. Addresses stay.
func (d *Datapath) Close() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for k, l := range d.listeners {
		l.close()
		delete(d.listeners, k)
	}
}

// Stats returns each listener's counters, by address/protocol.
func (d *Datapath) Stats() map[string]ListenerStats {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := map[string]ListenerStats{}
	for _, l := range d.listeners {
		l.mu.Lock()
		s := ListenerStats{
			Address: l.addr, Protocol: l.proto,
			Connections: l.total.Load(), Refused: l.refused.Load(),
			Active: int64(len(l.conns)), UDPFlows: int64(len(l.flows)),
		}
		l.mu.Unlock()
		out[l.proto+"/"+l.addr] = s
	}
	return out
}

// ActiveByTarget returns open connections and UDP flows per TargetKey.
func (d *Datapath) ActiveByTarget() map[string]int64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := map[string]int64{}
	for _, l := range d.listeners {
		l.mu.Lock()
		for c := range l.conns {
			out[c.target]++
		}
		for _, f := range l.flows {
			out[f.target]++
		}
		l.mu.Unlock()
	}
	return out
}

func flowHash(remote net.Addr) uint32 {
	h := fnv.New32a()
	h.Write([]byte(remote.String()))
	return h.Sum32()
}

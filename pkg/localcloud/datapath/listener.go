package datapath

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// listener is one listener's socket (TCP or UDP) and its flows.
type listener struct {
	dp       *Datapath
	proto    string
	addr     string
	backends atomic.Pointer[backends]
	rr       atomic.Uint64
	total    atomic.Int64
	refused  atomic.Int64

	tcp net.Listener
	udp *net.UDPConn

	mu     sync.Mutex
	closed bool
	conns  map[*tcpConn]struct{}
	flows  map[string]*udpFlow // by client address
	wg     sync.WaitGroup
}

// setBackends installs the target group view and closes flows to targets
// that left the group (their deregistration delay is over).
func (l *listener) setBackends(b *backends) {
	l.backends.Store(b)
	l.mu.Lock()
	var gone []io.Closer
	for c := range l.conns {
		if !b.present[c.target] {
			gone = append(gone, c)
		}
	}
	for k, f := range l.flows {
		if !b.present[f.target] {
			gone = append(gone, f)
			delete(l.flows, k)
		}
	}
	l.mu.Unlock()
	for _, c := range gone {
		_ = c.Close()
	}
	if len(gone) > 0 {
		l.dp.cfg.Log.Info("closed flows of removed targets", zap.String("listener", l.addr), zap.Int("flows", len(gone)))
	}
}

func (l *listener) roundRobin() bool { return l.dp.cfg.Selection == "round-robin" }

func (l *listener) close() {
	l.mu.Lock()
	l.closed = true
	var all []io.Closer
	for c := range l.conns {
		all = append(all, c)
	}
	for k, f := range l.flows {
		all = append(all, f)
		delete(l.flows, k)
	}
	l.mu.Unlock()
	if l.tcp != nil {
		_ = l.tcp.Close()
	}
	if l.udp != nil {
		_ = l.udp.Close()
	}
	for _, c := range all {
		_ = c.Close()
	}
	l.wg.Wait()
}

// ---- TCP ----

type tcpConn struct {
	client, server *net.TCPConn
	target         string
	once           sync.Once
}

func (c *tcpConn) Close() error {
	c.once.Do(func() {
		_ = c.client.Close()
		_ = c.server.Close()
	})
	return nil
}

func (l *listener) acceptTCP() {
	defer l.wg.Done()
	for {
		conn, err := l.tcp.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			l.proxyTCP(conn.(*net.TCPConn))
		}()
	}
}

// tcpCandidates are the targets a new TCP flow may be dialled to, in
// order: only the chosen one, unless fallback.
func tcpCandidates(picked []backend, fallback bool) []backend {
	if !fallback && len(picked) > 1 {
		return picked[:1]
	}
	return picked
}

func (l *listener) proxyTCP(client *net.TCPConn) {
	b := l.backends.Load()
	var server net.Conn
	var chosen backend
	for _, be := range tcpCandidates(b.pick(flowHash(client.RemoteAddr()), &l.rr, l.roundRobin()), l.dp.cfg.Fallback) {
		c, err := net.DialTimeout("tcp4", be.addr, l.dp.cfg.DialTimeout)
		if err == nil {
			server, chosen = c, be
			break
		}
		l.dp.cfg.Log.Debug("target refused", zap.String("target", be.addr), zap.Error(err))
	}
	if server == nil {
		l.refused.Add(1)
		l.dp.flows.WithLabelValues("TCP", "no_target").Inc()
		// An NLB resets connections it cannot forward.
		_ = client.SetLinger(0)
		_ = client.Close()
		return
	}
	c := &tcpConn{client: client, server: server.(*net.TCPConn), target: chosen.key}
	l.mu.Lock()
	if l.closed || !l.backends.Load().present[chosen.key] {
		l.mu.Unlock()
		_ = c.Close()
		return
	}
	l.conns[c] = struct{}{}
	l.mu.Unlock()
	l.total.Add(1)
	l.dp.flows.WithLabelValues("TCP", "forwarded").Inc()

	var wg sync.WaitGroup
	wg.Add(2)
	// Each direction copies until EOF, then half-closes the other side so
	// the peer sees the end of the stream while the reverse direction goes on.
	go func() {
		defer wg.Done()
		_, _ = io.Copy(c.server, c.client) // splice on Linux
		_ = c.server.CloseWrite()
	}()
	go func() {
		defer wg.Done()
		_, _ = io.Copy(c.client, c.server)
		_ = c.client.CloseWrite()
	}()
	wg.Wait()
	_ = c.Close()
	l.mu.Lock()
	delete(l.conns, c)
	l.mu.Unlock()
}

// ---- UDP ----

type udpFlow struct {
	client   *net.UDPAddr
	server   *net.UDPConn
	target   string
	lastSeen atomic.Int64 // unix nanos
	once     sync.Once
}

func (f *udpFlow) Close() error {
	f.once.Do(func() { f.server.Close() })
	return nil
}

func (l *listener) serveUDP() {
	defer l.wg.Done()
	buf := make([]byte, 65535)
	for {
		n, client, err := l.udp.ReadFromUDP(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		f := l.flow(client)
		if f == nil {
			continue
		}
		f.lastSeen.Store(time.Now().UnixNano())
		_, _ = f.server.Write(buf[:n])
	}
}

// flow returns the client's flow, creating it on a target if new.
func (l *listener) flow(client *net.UDPAddr) *udpFlow {
	k := client.String()
	l.mu.Lock()
	f := l.flows[k]
	l.mu.Unlock()
	if f != nil {
		return f
	}
	b := l.backends.Load()
	cands := b.pick(flowHash(client), &l.rr, l.roundRobin())
	if len(cands) == 0 {
		l.refused.Add(1)
		l.dp.flows.WithLabelValues("UDP", "no_target").Inc()
		return nil
	}
	ra, err := net.ResolveUDPAddr("udp4", cands[0].addr)
	if err != nil {
		return nil
	}
	server, err := net.DialUDP("udp4", nil, ra)
	if err != nil {
		l.refused.Add(1)
		l.dp.flows.WithLabelValues("UDP", "refused").Inc()
		return nil
	}
	f = &udpFlow{client: client, server: server, target: cands[0].key}
	f.lastSeen.Store(time.Now().UnixNano())
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		_ = server.Close()
		return nil
	}
	l.flows[k] = f
	l.mu.Unlock()
	l.total.Add(1)
	l.dp.flows.WithLabelValues("UDP", "forwarded").Inc()
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		l.replies(f)
	}()
	return f
}

// replies copies the target's datagrams back to the client from the
// listener's address.
func (l *listener) replies(f *udpFlow) {
	buf := make([]byte, 65535)
	for {
		n, err := f.server.Read(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// ICMP errors (port unreachable) surface here; keep the flow.
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		f.lastSeen.Store(time.Now().UnixNano())
		_, _ = l.udp.WriteToUDP(buf[:n], f.client)
	}
}

func (l *listener) expireUDP() {
	defer l.wg.Done()
	tick := min(l.dp.cfg.UDPIdleTimeout/4, time.Second)
	for {
		time.Sleep(tick)
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			return
		}
		cutoff := time.Now().Add(-l.dp.cfg.UDPIdleTimeout).UnixNano()
		var idle []*udpFlow
		for k, f := range l.flows {
			if f.lastSeen.Load() < cutoff {
				idle = append(idle, f)
				delete(l.flows, k)
			}
		}
		l.mu.Unlock()
		for _, f := range idle {
			_ = f.Close()
		}
	}
}

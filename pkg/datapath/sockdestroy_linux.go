//go:build linux

package datapath

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// DestroyStats says what one DestroySockets did.
type DestroyStats struct {
	// Namespaces is the number of network namespaces searched.
	Namespaces int
	// Destroyed is the number of sockets destroyed.
	Destroyed int
}

// DestroySockets destroys the connected UDP sockets that the socket hooks
// translated from a Service to a backend that has left it (ApplyStats.Left):
// their next operation fails with ECONNABORTED, and a reconnect reaches a
// backend that serves. A socket iterator only sees the sockets of the
// network namespace it is opened in, so the iterator runs in each network
// namespace of a process in the datapath's cgroup (found through
// cgroup.procs and /proc; in a container the agent needs the host's PID
// namespace to see them). Sockets without a translation by these hooks are
// never touched, whatever their peer.
func (d *Datapath) DestroySockets(left []LeftBackend) (DestroyStats, error) {
	var st DestroyStats
	keys := make([]sockLBSockdestroy4Key, 0, len(left))
	seen := map[sockLBSockdestroy4Key]bool{}
	for _, l := range left {
		if l.Backend.Proto != UDP || !l.Backend.Addr.Is4() {
			continue
		}
		k := sockLBSockdestroy4Key{
			Addr:  addrToBPF(l.Backend.Addr),
			Port:  portToBPF(l.Backend.Port),
			SvcId: uint32(l.Service),
		}
		if !seen[k] {
			seen[k] = true
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return st, nil
	}
	m := d.objs.DlbSockdestroy4
	if limit := int(m.MaxEntries()); len(keys) > limit {
		// More than the map holds at once: in rounds.
		for len(keys) > 0 {
			n := min(len(keys), limit)
			part := make([]LeftBackend, 0, n)
			for _, k := range keys[:n] {
				part = append(part, LeftBackend{Service: ServiceID(k.SvcId), Backend: Backend{Addr: addrFromBPF(k.Addr), Port: portFromBPF(k.Port), Proto: UDP}})
			}
			s, err := d.DestroySockets(part)
			st.Namespaces = max(st.Namespaces, s.Namespaces)
			st.Destroyed += s.Destroyed
			if err != nil {
				return st, err
			}
			keys = keys[n:]
		}
		return st, nil
	}
	one := uint8(1)
	for _, k := range keys {
		if err := m.Put(&k, &one); err != nil {
			return st, fmt.Errorf("write sockets to destroy: %w", err)
		}
	}
	defer func() {
		for _, k := range keys {
			_ = m.Delete(&k)
		}
	}()
	if d.destroyIter == nil {
		l, err := link.AttachIter(link.IterOptions{Program: d.objs.DlbSockDestroyUdp})
		if err != nil {
			return st, fmt.Errorf("attach UDP socket iterator (Linux 6.5+ for bpf_sock_destroy): %w", err)
		}
		d.destroyIter = l
	}
	nss, err := cgroupNetns(d.cfg.Cgroup)
	if err != nil {
		return st, err
	}
	var errs []error
	for _, ns := range nss {
		n, err := d.destroyIn(ns)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ESRCH) {
				continue // the process went
			}
			errs = append(errs, err)
			continue
		}
		st.Namespaces++
		st.Destroyed += n
	}
	return st, errors.Join(errs...)
}

// destroyIn runs the socket iterator in the network namespace at nsPath
// and returns how many sockets it destroyed.
func (d *Datapath) destroyIn(nsPath string) (int, error) {
	type result struct {
		r   io.ReadCloser
		err error
	}
	ch := make(chan result, 1)
	// On its own goroutine and OS thread: if the thread cannot return to
	// its namespace it stays locked and exits with the goroutine.
	go func() {
		runtime.LockOSThread()
		r, restored, err := d.openIterIn(nsPath)
		if restored {
			runtime.UnlockOSThread()
		}
		ch <- result{r, err}
	}()
	res := <-ch
	if res.err != nil {
		return 0, res.err
	}
	defer res.r.Close()
	// The iterator runs as it is read; it writes the cookie (8 bytes) of
	// each socket it destroyed.
	n, err := io.Copy(io.Discard, res.r)
	if err != nil {
		return int(n / 8), fmt.Errorf("run UDP socket iterator in %s: %w", nsPath, err)
	}
	return int(n / 8), nil
}

// openIterIn opens the iterator in nsPath's network namespace from the
// calling (locked) thread; restored says the thread is back in its own.
func (d *Datapath) openIterIn(nsPath string) (io.ReadCloser, bool, error) {
	self, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		return nil, true, fmt.Errorf("open own network namespace: %w", err)
	}
	defer self.Close()
	target, err := os.Open(nsPath)
	if err != nil {
		return nil, true, err
	}
	defer target.Close()
	var a, b unix.Stat_t
	if unix.Fstat(int(self.Fd()), &a) == nil && unix.Fstat(int(target.Fd()), &b) == nil && a.Ino == b.Ino && a.Dev == b.Dev {
		r, err := d.destroyIter.Open()
		return r, true, err
	}
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		return nil, true, fmt.Errorf("enter network namespace %s: %w", nsPath, err)
	}
	r, oerr := d.destroyIter.Open()
	if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
		if r != nil {
			r.Close()
		}
		return nil, false, fmt.Errorf("return from network namespace %s: %w", nsPath, err)
	}
	if oerr != nil {
		return nil, true, fmt.Errorf("open UDP socket iterator in %s: %w", nsPath, oerr)
	}
	return r, true, nil
}

// cgroupNetns returns one /proc/<pid>/ns/net path for each network
// namespace that a process in cgroup dir or below it is in.
func cgroupNetns(dir string) ([]string, error) {
	type nsID struct{ dev, ino uint64 }
	seen := map[nsID]bool{}
	var out []string
	err := filepath.WalkDir(dir, func(path string, e fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) && path != dir {
				return nil // a cgroup removed while walking
			}
			return err
		}
		if !e.IsDir() {
			return nil
		}
		f, err := os.Open(filepath.Join(path, "cgroup.procs"))
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			pid, err := strconv.Atoi(strings.TrimSpace(sc.Text()))
			if err != nil || pid <= 0 {
				continue // 0: a process outside our PID namespace
			}
			p := "/proc/" + strconv.Itoa(pid) + "/ns/net"
			var st unix.Stat_t
			if err := unix.Stat(p, &st); err != nil {
				continue // gone, or not ours to see
			}
			id := nsID{st.Dev, st.Ino}
			if !seen[id] {
				seen[id] = true
				out = append(out, p)
			}
		}
		return sc.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("find network namespaces of cgroup %s: %w", dir, err)
	}
	return out, nil
}

// checkSockDestroyKernel reports what the UDP socket iterator needs and the
// kernel lacks: the UDP socket iterator and the bpf_sock_destroy kfunc,
// both found in the kernel's BTF (a tracing program cannot be probed
// without a target; loading dlb_sock_destroy_udp checks the rest).
func checkSockDestroyKernel() error {
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		return fmt.Errorf("read kernel BTF (needed for the UDP socket iterator and bpf_sock_destroy): %w", err)
	}
	for _, fn := range []struct{ name, what string }{
		{"bpf_iter_udp", "the BPF UDP socket iterator iter/udp (Linux 5.9+)"},
		{"bpf_sock_destroy", "the kfunc bpf_sock_destroy (Linux 6.5+)"},
	} {
		var f *btf.Func
		if err := spec.TypeByName(fn.name, &f); err != nil {
			return fmt.Errorf("kernel lacks %s: its BTF has no function %s; connected UDP sockets could not follow their backends", fn.what, fn.name)
		}
	}
	return nil
}

package kubelet

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// procSpec is a process to start inside a pod: first into its cgroup, then
// (through nsenter) into its network namespace.
type procSpec struct {
	Nsenter string
	Argv    []string
	Env     []string
	NetNS   string // path of the network namespace
	Cgroup  string // cgroup v2 directory
	LogPath string // stdout and stderr, appended
	Dir     string
}

// proc is a running process we started or adopted.
type proc struct {
	PID        int
	StartTicks uint64 // /proc/<pid>/stat start time, against pid reuse
	done       chan struct{}
	exitCode   int // valid after done; -1 when unknown (adopted)
	signaled   bool
}

func (p *proc) Done() <-chan struct{} { return p.done }

// startProc starts spec detached (own session) so it outlives the stand-in.
func startProc(spec procSpec) (*proc, error) {
	cg, err := os.Open(spec.Cgroup)
	if err != nil {
		return nil, fmt.Errorf("open cgroup %s: %w", spec.Cgroup, err)
	}
	defer cg.Close()
	var out *os.File
	if spec.LogPath != "" {
		if err := os.MkdirAll(filepath.Dir(spec.LogPath), 0o755); err != nil {
			return nil, err
		}
		out, err = os.OpenFile(spec.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return nil, fmt.Errorf("open log: %w", err)
		}
		defer out.Close()
	}
	args := append([]string{"--net=" + spec.NetNS, "--"}, spec.Argv...)
	cmd := exec.Command(spec.Nsenter, args...)
	cmd.Env = spec.Env
	cmd.Dir = spec.Dir
	if out != nil {
		cmd.Stdout, cmd.Stderr = out, out
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %v: %w", spec.Argv, err)
	}
	p := &proc{PID: cmd.Process.Pid, done: make(chan struct{}), exitCode: -1}
	p.StartTicks, _ = procStartTicks(p.PID)
	go func() {
		err := cmd.Wait()
		p.exitCode = 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				p.signaled = true
				p.exitCode = 128 + int(ws.Signal())
			} else {
				p.exitCode = ee.ExitCode()
			}
		} else if err != nil {
			p.exitCode = -1
		}
		close(p.done)
	}()
	return p, nil
}

// adoptProc watches a process started by an earlier stand-in: it cannot be
// waited for, so /proc is polled.
func adoptProc(pid int, startTicks uint64) *proc {
	p := &proc{PID: pid, StartTicks: startTicks, done: make(chan struct{}), exitCode: -1}
	go func() {
		for procAlive(pid, startTicks) {
			time.Sleep(250 * time.Millisecond)
		}
		close(p.done)
	}()
	return p
}

// procStat returns the state letter and start time of a process.
func procStat(pid int) (byte, uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, err
	}
	// The command name is in parentheses and may hold spaces: split after it.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return 0, 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	ticks, err := strconv.ParseUint(f[19], 10, 64) // field 22 overall
	if err != nil {
		return 0, 0, err
	}
	return f[0][0], ticks, nil
}

func procStartTicks(pid int) (uint64, error) {
	_, t, err := procStat(pid)
	return t, err
}

// procAlive: the process exists, is the same one (start time) and is not a
// zombie.
func procAlive(pid int, startTicks uint64) bool {
	if pid <= 0 {
		return false
	}
	st, t, err := procStat(pid)
	if err != nil {
		return false
	}
	return st != 'Z' && st != 'X' && (startTicks == 0 || t == startTicks)
}

// signalProc signals the process if it is still the one we started.
func signalProc(pid int, startTicks uint64, sig syscall.Signal) error {
	if !procAlive(pid, startTicks) {
		return nil
	}
	if err := syscall.Kill(pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("signal %d %s: %w", pid, sig, err)
	}
	return nil
}

// Cgroups.

func ensureCgroup(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create cgroup %s: %w", dir, err)
	}
	return nil
}

func cgroupPIDs(dir string) ([]int, error) {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return nil, err
	}
	var out []int
	for _, f := range strings.Fields(string(b)) {
		if n, err := strconv.Atoi(f); err == nil {
			out = append(out, n)
		}
	}
	return out, nil
}

// killCgroup kills every process in the cgroup (cgroup.kill), waits for it
// to empty (at most timeout) and removes it. A missing cgroup is success.
func killCgroup(dir string, timeout time.Duration) error {
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err := os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0o644); err != nil {
		// Older kernels: kill one by one.
		pids, _ := cgroupPIDs(dir)
		for _, p := range pids {
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
	}
	deadline := time.Now().Add(timeout)
	for {
		err := unix.Rmdir(dir)
		if err == nil || errors.Is(err, unix.ENOENT) {
			return nil
		}
		if time.Now().After(deadline) {
			pids, _ := cgroupPIDs(dir)
			return fmt.Errorf("remove cgroup %s (pids %v): %w", dir, pids, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

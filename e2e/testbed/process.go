package testbed

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/directlb/directlb/internal/namedns"
)

// daemon is a long-running process the test bed starts: detached (its own
// session), in a cgroup it is placed in before it runs, optionally inside a
// network namespace, with its output in <StateDir>/logs/<Name>.log and its
// pid in <StateDir>/run/<Name>.pid.
type daemon struct {
	Name   string   `json:"name"`
	Path   string   `json:"path"`
	Args   []string `json:"args"`
	Env    []string `json:"env,omitempty"` // added to the environment
	Cgroup string   `json:"cgroup"`
	NetNS  string   `json:"netns,omitempty"` // empty: the host's namespace
}

// running is a started daemon.
type running struct {
	daemon
	pid     int
	logPath string
	exited  chan struct{} // closed when the process exits
	err     error         // valid after exited is closed
}

func logPath(stateDir, name string) string {
	return filepath.Join(stateDir, "logs", name+".log")
}

func pidPath(stateDir, name string) string {
	return filepath.Join(stateDir, "run", name+".pid")
}

// specPath is where start records how it started a daemon, so that it can
// be started again the same way (Restart).
func specPath(stateDir, name string) string {
	return filepath.Join(stateDir, "run", name+".json")
}

// Kill kills the bed's daemon name (e.g. "kubelet-node-1") with SIGKILL, a
// crash, and waits until it is gone.
func Kill(stateDir, name string) error {
	pids, err := readPIDFiles(stateDir)
	if err != nil {
		return err
	}
	pid, ok := pids[name]
	if !ok || !pidInTestbed(pid) {
		return fmt.Errorf("kill %s: not running", name)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		return fmt.Errorf("kill %s: %w", name, err)
	}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil || strings.Contains(string(st), ") Z ") {
			return nil
		}
	}
	return fmt.Errorf("kill %s: pid %d still there after 10s", name, pid)
}

// Start starts the bed's daemon name again as 'up' started it (same
// command line, cgroup, namespace and log file) and returns its pid.
func Start(stateDir, name string) (int, error) {
	b, err := os.ReadFile(specPath(stateDir, name))
	if err != nil {
		return 0, fmt.Errorf("start %s: %w", name, err)
	}
	var d daemon
	if err := json.Unmarshal(b, &d); err != nil {
		return 0, fmt.Errorf("start %s: %s: %w", name, specPath(stateDir, name), err)
	}
	r, err := d.start(stateDir)
	if err != nil {
		return 0, err
	}
	return r.pid, nil
}

// start launches d. The process is put into its cgroup by clone3 (so it is
// there before it enters the namespace; 'ip netns exec' would remount /sys)
// and enters the namespace through nsenter, which then execs the daemon.
func (d daemon) start(stateDir string) (*running, error) {
	for _, dir := range []string{filepath.Join(stateDir, "logs"), filepath.Join(stateDir, "run")} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("start %s: %w", d.Name, err)
		}
	}
	if err := makeCgroup(d.Cgroup); err != nil {
		return nil, fmt.Errorf("start %s: %w", d.Name, err)
	}
	cg, err := os.Open(d.Cgroup)
	if err != nil {
		return nil, fmt.Errorf("start %s: open cgroup: %w", d.Name, err)
	}
	defer cg.Close()
	lp := logPath(stateDir, d.Name)
	logf, err := os.OpenFile(lp, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("start %s: log: %w", d.Name, err)
	}
	defer logf.Close()

	path, args := d.Path, d.Args
	if d.NetNS != "" {
		path, args = "nsenter", append([]string{"--net=" + namedns.Path(d.NetNS), "--", d.Path}, d.Args...)
	}
	cmd := exec.Command(path, args...)
	cmd.Env = append(os.Environ(), d.Env...)
	cmd.Dir = stateDir
	cmd.Stdin = nil
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	fmt.Fprintf(logf, "+ %s %s\n", path, strings.Join(args, " "))
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", d.Name, err)
	}
	r := &running{daemon: d, pid: cmd.Process.Pid, logPath: lp, exited: make(chan struct{})}
	go func() { // reap it, so a long-lived caller (TestMain) sees it exit
		r.err = cmd.Wait()
		close(r.exited)
	}()
	if err := os.WriteFile(pidPath(stateDir, d.Name), []byte(strconv.Itoa(r.pid)+"\n"), 0o644); err != nil {
		return r, fmt.Errorf("start %s: pid file: %w", d.Name, err)
	}
	spec, err := json.Marshal(d)
	if err != nil {
		return r, fmt.Errorf("start %s: %w", d.Name, err)
	}
	if err := os.WriteFile(specPath(stateDir, d.Name), spec, 0o644); err != nil {
		return r, fmt.Errorf("start %s: %w", d.Name, err)
	}
	return r, nil
}

// check returns an error with the log's tail if the daemon has exited.
func (r *running) check() error {
	select {
	case <-r.exited:
		return fmt.Errorf("%s exited (%w); last log lines:\n%s", r.Name, r.err, tail(r.logPath, 15))
	default:
		return nil
	}
}

// tail returns the last n lines of a file.
func tail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err.Error()
	}
	const window = 16 << 10
	off := max(st.Size()-window, 0)
	b, err := io.ReadAll(io.NewSectionReader(f, off, st.Size()-off))
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "  " + strings.Join(lines, "\n  ")
}

// readPIDFiles returns the pids recorded in <stateDir>/run.
func readPIDFiles(stateDir string) (map[string]int, error) {
	ents, err := os.ReadDir(filepath.Join(stateDir, "run"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read pid files: %w", err)
	}
	out := map[string]int{}
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), ".pid")
		if !ok {
			continue
		}
		b, err := os.ReadFile(filepath.Join(stateDir, "run", e.Name()))
		if err != nil {
			continue
		}
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 1 {
			out[name] = pid
		}
	}
	return out, nil
}

// pidInTestbed reports whether pid is alive and in the test bed's cgroup
// tree (guards against pid reuse when 'down' kills by pid file).
func pidInTestbed(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return false
	}
	rel := strings.TrimPrefix(CgroupRoot, "/sys/fs/cgroup/unified")
	for _, line := range strings.Split(string(b), "\n") {
		// cgroup v2 line: "0::/directlb/control-plane"
		if p, ok := strings.CutPrefix(line, "0::"); ok && (p == rel || strings.HasPrefix(p, rel+"/")) {
			return true
		}
	}
	return false
}

package testbed

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// makeCgroup creates a cgroup v2 directory and its parents.
func makeCgroup(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create cgroup %s: %w", dir, err)
	}
	return nil
}

// killCgroupTree kills every process in the cgroup subtree at root and waits
// (up to timeout) until it is empty. A missing root is success.
func killCgroupTree(root string, timeout time.Duration) error {
	if _, err := os.Stat(root); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	deadline := time.Now().Add(timeout)
	for {
		populated, err := cgroupPopulated(root)
		if err != nil {
			return err
		}
		if !populated {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("kill cgroup %s: still populated after %s", root, timeout)
		}
		// cgroup.kill kills the whole subtree at once (Linux 5.14+); the
		// per-pid SIGKILL covers older kernels and races with forks.
		if err := os.WriteFile(filepath.Join(root, "cgroup.kill"), []byte("1"), 0o644); err != nil {
			killPIDsIn(root)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// cgroupPopulated reads "populated" from cgroup.events.
func cgroupPopulated(dir string) (bool, error) {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.events"))
	if err != nil {
		return false, fmt.Errorf("read cgroup %s: %w", dir, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "populated "); ok {
			return v == "1", nil
		}
	}
	return false, fmt.Errorf("read cgroup %s: no populated in cgroup.events", dir)
}

// killPIDsIn sends SIGKILL to every process in the subtree at root.
func killPIDsIn(root string) {
	_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		for _, pid := range cgroupPIDs(p) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		return nil
	})
}

// cgroupPIDs lists the processes directly in a cgroup.
func cgroupPIDs(dir string) []int {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return nil
	}
	var pids []int
	for _, f := range bytes.Fields(b) {
		if pid, err := strconv.Atoi(string(f)); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

// removeCgroupTree removes the cgroup directories at and under root, deepest
// first. A missing root is success.
func removeCgroupTree(root string) error {
	var dirs []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("walk cgroup %s: %w", root, err)
	}
	sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
	var errs []error
	for _, d := range dirs {
		if err := os.Remove(d); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove cgroup %s: %w", d, err))
		}
	}
	return errors.Join(errs...)
}

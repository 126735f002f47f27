package testbed

import (
	"bytes"
	"errors"
	"fmt"
	"github.com/moby/sys/mountinfo"
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

// cgroupV1Root is where the cgroup v1 hierarchies are mounted.
const cgroupV1Root = "/sys/fs/cgroup"

// v1Hierarchies lists the mounted cgroup v1 hierarchies (directories under
// /sys/fs/cgroup other than the v2 "unified" one).
func v1Hierarchies() ([]string, error) {
	ms, err := mountinfo.GetMounts(mountinfo.FSTypeFilter("cgroup"))
	if err != nil {
		return nil, fmt.Errorf("read cgroup v1 mounts: %w", err)
	}
	var out []string
	for _, m := range ms {
		if filepath.Dir(m.Mountpoint) == cgroupV1Root {
			out = append(out, m.Mountpoint)
		}
	}
	sort.Strings(out)
	return out, nil
}

// makeV1Cgroups makes rel (e.g. /directlb/node-1) in every cgroup v1
// hierarchy, the kubelet's cgroupRoot; in cpuset each new level gets its
// parent's cpus and mems (an empty cpuset takes no tasks).
func makeV1Cgroups(rel string) error {
	hs, err := v1Hierarchies()
	if err != nil {
		return err
	}
	for _, h := range hs {
		dir := h
		for _, part := range strings.Split(strings.Trim(rel, "/"), "/") {
			parent := dir
			dir = filepath.Join(dir, part)
			if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("create cgroup %s: %w", dir, err)
			}
			if filepath.Base(h) != "cpuset" {
				continue
			}
			for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
				b, err := os.ReadFile(filepath.Join(parent, f))
				if err != nil {
					return fmt.Errorf("cgroup %s: %w", parent, err)
				}
				if cur, _ := os.ReadFile(filepath.Join(dir, f)); len(bytes.TrimSpace(cur)) > 0 {
					continue
				}
				if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
					return fmt.Errorf("cgroup %s: %w", dir, err)
				}
			}
		}
	}
	return nil
}

// removeV1Cgroups removes rel's tree (e.g. /directlb) from every cgroup v1
// hierarchy; its tasks must be gone (they are killed through cgroup v2).
func removeV1Cgroups(rel string) error {
	hs, err := v1Hierarchies()
	if err != nil {
		return err
	}
	var errs []error
	for _, h := range hs {
		errs = append(errs, removeCgroupTree(filepath.Join(h, rel)))
	}
	return errors.Join(errs...)
}

// cgroupRel is a cgroup v2 directory's path relative to the v2 mount (the
// same path names it in every v1 hierarchy).
func cgroupRel(dir string) string { return strings.TrimPrefix(dir, cgroupV1Root+"/unified") }

// CgroupV2Mount is where the bed expects cgroup v2: the hybrid layout
// (v1 controllers under /sys/fs/cgroup, v2 at unified) of this kind of
// machine.
const CgroupV2Mount = cgroupV1Root + "/unified"

// checkCgroups refuses a machine whose cgroup layout is not hybrid: on a
// pure v2 host /sys/fs/cgroup/unified would be a child cgroup, and the
// bed's tree, its kills and the kubelets' cgroupRoot would disagree.
func checkCgroups() error {
	ms, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(CgroupV2Mount))
	if err != nil {
		return fmt.Errorf("read mounts: %w", err)
	}
	if len(ms) != 1 || ms[0].FSType != "cgroup2" {
		return fmt.Errorf("cgroup v2 is not mounted at %s: the test bed needs hybrid cgroups (v1 controllers, v2 at %s); see docs/testbed.md", CgroupV2Mount, CgroupV2Mount)
	}
	return nil
}

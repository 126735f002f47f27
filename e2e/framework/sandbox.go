package framework

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// Sandbox is a pod's sandbox: where to run a command "inside" it.
type Sandbox struct {
	NetNS  string // a path: /proc/<pid>/ns/net of one of its processes
	Cgroup string // the pod's cgroup v2 directory
}

// PodSandbox finds the pod's cgroup under its node's kubepods tree (the
// kubelet's pod<uid>) and the network namespace of a process in it.
func PodSandbox(t *testing.T, b *Bed, p *corev1.Pod) Sandbox {
	t.Helper()
	n, ok := b.Topology.Node(p.Spec.NodeName)
	if !ok {
		t.Fatalf("pod %s: no node %q", p.Name, p.Spec.NodeName)
	}
	var sb Sandbox
	_ = filepath.WalkDir(filepath.Join(n.Cgroup, "kubepods"), func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() || sb.NetNS != "" {
			return nil
		}
		if d.Name() == "pod"+string(p.UID) {
			sb.Cgroup = path
			return nil
		}
		if sb.Cgroup == "" || filepath.Dir(path) != sb.Cgroup {
			return nil
		}
		procs, _ := os.ReadFile(filepath.Join(path, "cgroup.procs"))
		if f := strings.Fields(string(procs)); len(f) > 0 {
			sb.NetNS = "/proc/" + f[0] + "/ns/net"
		}
		return nil
	})
	if sb.NetNS == "" {
		t.Fatalf("no sandbox for pod %s on %s (cgroup %q)", p.Name, p.Spec.NodeName, sb.Cgroup)
	}
	return sb
}

// Sh runs a bash script in the pod's cgroup and network namespace.
func (p Sandbox) Sh(ctx context.Context, script string) (string, error) {
	cmd := exec.CommandContext(ctx, "nsenter", "--net="+p.NetNS, "--", "bash", "-c", script)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := StartInCgroup(cmd, p.Cgroup); err != nil {
		return "", err
	}
	err := cmd.Wait()
	return out.String(), err
}

// CurlN makes n requests to url from the pod, one curl each, and returns
// the answers ("ERR<exit code>" for a failed one).
func (p Sandbox) CurlN(t *testing.T, url string, n int) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Duration(n)*3*time.Second)
	defer cancel()
	script := fmt.Sprintf(`for i in $(seq %d); do r=$(curl -s -m 2 %s) || r="ERR$?"; echo "$r"; done`, n, url)
	out, err := p.Sh(ctx, script)
	if err != nil {
		t.Fatalf("curl loop in pod: %v: %s", err, out)
	}
	return strings.Split(strings.TrimSpace(out), "\n")
}

// Count counts each distinct answer.
func Count(answers []string) map[string]int {
	c := map[string]int{}
	for _, a := range answers {
		c[a]++
	}
	return c
}

// StartInCgroup starts cmd in the cgroup dir (before it enters any
// namespace).
func StartInCgroup(cmd *exec.Cmd, cgroup string) error {
	f, err := os.Open(cgroup)
	if err != nil {
		return fmt.Errorf("open cgroup %s: %w", cgroup, err)
	}
	defer f.Close()
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(f.Fd())}
	return cmd.Start()
}

// Tail returns the last 20 lines of the file at path (a process's log).
func Tail(path string) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 20 {
		lines = lines[len(lines)-20:]
	}
	return strings.Join(lines, "\n")
}

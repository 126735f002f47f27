package framework

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/directlb/directlb/e2e/testbed"
	"github.com/directlb/directlb/internal/namedns"
)

// Agent is one node-agent process on one node.
type Agent struct {
	Node    testbed.Node
	BPFRoot string
	log     string
	cmd     *exec.Cmd
	done    chan struct{} // closed when cmd exited, with exitErr
	exitErr error
}

// Agents are the node-agents of a test, one per node, run as host
// processes in the nodes' network namespaces.
type Agents struct {
	t    *testing.T
	b    *Bed
	List []*Agent
	// Extra are more node-agent flags, used by every later Start.
	Extra []string
}

// StartAgents starts a node-agent on every node (with the extra flags)
// and waits until each is healthy; at the end of the test they are
// stopped and cleaned up (node-agent --cleanup).
func StartAgents(t *testing.T, b *Bed, extra ...string) *Agents {
	t.Helper()
	return StartAgentsOn(t, b, b.Topology.Nodes, extra...)
}

// StartAgentsOn is StartAgents on the given nodes only (the others keep
// whatever datapath they have, kube-proxy say).
func StartAgentsOn(t *testing.T, b *Bed, nodes []testbed.Node, extra ...string) *Agents {
	t.Helper()
	as := &Agents{t: t, b: b, Extra: extra}
	logDir := t.TempDir()
	for _, n := range nodes {
		a := &Agent{Node: n, BPFRoot: filepath.Join(testbed.BPFPinPrefix, n.Name), log: filepath.Join(logDir, "node-agent-"+n.Name+".log")}
		as.List = append(as.List, a)
		as.Start(a)
	}
	t.Cleanup(func() {
		for _, a := range as.List {
			as.Stop(a)
			if err := as.Cleanup(a); err != nil {
				t.Error(err)
			}
		}
		if t.Failed() {
			for _, a := range as.List {
				t.Logf("node-agent %s log:\n%s", a.Node.Name, Tail(a.log))
			}
		}
	})
	return as
}

// Start starts the node's agent and waits until its /healthz answers 200
// (the initial sync is done).
func (as *Agents) Start(a *Agent) {
	as.t.Helper()
	b := as.b
	host := b.Topology.HostAddr.String()
	healthz := a.Node.ENIs[0].Addr.Addr().String()
	args := []string{
		"--net=" + namedns.Path(a.Node.NetNS), "--",
		filepath.Join(b.BinDir, "node-agent"),
		"--kubeconfig=" + b.Topology.Kubeconfig,
		"--k8s-service-host=" + host, "--k8s-service-port=6443",
		"--hostname-override=" + a.Node.Name,
		"--cgroup-root=" + a.Node.Cgroup,
		"--bpf-root=" + a.BPFRoot,
		"--cluster-cidr=" + b.Topology.VPC.String(),
		"--metrics-bind-address=" + healthz + ":10249",
		"--healthz-bind-address=" + healthz + ":10256",
	}
	args = append(args, as.Extra...)
	logf, err := os.OpenFile(a.log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		as.t.Fatal(err)
	}
	cmd := exec.Command("nsenter", args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// The agents are control-plane-like daemons: not in the node's
	// subtree, so their own connections are never translated, and
	// 'down' kills them with the rest.
	if err := StartInCgroup(cmd, b.Topology.ControlPlaneCgroup); err != nil {
		logf.Close()
		as.t.Fatalf("start node-agent on %s: %v", a.Node.Name, err)
	}
	logf.Close()
	a.cmd = cmd
	a.done = make(chan struct{})
	go func() { a.exitErr = cmd.Wait(); close(a.done) }()

	u := "http://" + healthz + ":10256/healthz"
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-a.done:
			a.cmd = nil
			as.t.Fatalf("node-agent on %s exited: %v\n%s", a.Node.Name, a.exitErr, Tail(a.log))
		default:
		}
		if code, body, err := HTTPGet(u); err == nil && code == http.StatusOK && strings.Contains(body, "lastUpdated") && !strings.Contains(body, `"lastUpdated":"0001-01-01`) {
			return
		}
		if time.Now().After(deadline) {
			as.t.Fatalf("node-agent on %s not healthy within 30s\n%s", a.Node.Name, Tail(a.log))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Stop sends SIGTERM and waits; the pins stay.
func (as *Agents) Stop(a *Agent) {
	as.t.Helper()
	if a.cmd == nil {
		return
	}
	_ = a.cmd.Process.Signal(syscall.SIGTERM) // fails only if it exited: done says how
	select {
	case <-a.done:
		if a.exitErr != nil {
			as.t.Errorf("node-agent on %s exited with %v after SIGTERM\n%s", a.Node.Name, a.exitErr, Tail(a.log))
		}
	case <-time.After(10 * time.Second):
		_ = a.cmd.Process.Kill()
		<-a.done
		as.t.Errorf("node-agent on %s did not stop within 10s of SIGTERM", a.Node.Name)
	}
	a.cmd = nil
}

// Cleanup runs node-agent --cleanup for the agent's node.
func (as *Agents) Cleanup(a *Agent) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "nsenter", "--net="+namedns.Path(a.Node.NetNS), "--",
		filepath.Join(as.b.BinDir, "node-agent"), "--cleanup", "--bpf-root="+a.BPFRoot).CombinedOutput()
	if err != nil {
		return fmt.Errorf("node-agent --cleanup on %s: %w: %s", a.Node.Name, err, out)
	}
	return nil
}

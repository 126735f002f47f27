package kubelet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/directlb/directlb/internal/namedns"
	"go.uber.org/zap"
	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/strategicpatch"
	"k8s.io/utils/ptr"
)

// minTermGrace is how long a container gets after SIGTERM even when the
// preStop hook used up the grace period (the kubelet's 2 s minimum).
const minTermGrace = 2 * time.Second

// container is one container's runtime state inside a pod worker.
type container struct {
	spec       v1.Container
	st         *ContainerState
	proc       *proc
	ready      bool
	stopProbe  context.CancelFunc
	nextStart  time.Time
	waiting    string // waiting reason when not running
	waitingMsg string
	final      bool      // exited and will not run again
	stopping   bool      // preStop / SIGTERM under way
	termAt     time.Time // when SIGTERM was sent
	killed     bool
}

// podWorker runs one pod from sandbox to final delete.
type podWorker struct {
	k   *Kubelet
	log *zap.Logger
	st  *PodState
	key types.NamespacedName

	poke chan struct{}

	mu          sync.Mutex
	ctrs        map[string]*container
	terminating bool
	deadline    time.Time
	lastStatus  []byte
	kubeconfig  string // the pod's kubeconfig, written before its first container starts
	stateDirty  bool
}

func newPodWorker(k *Kubelet, st *PodState) *podWorker {
	return &podWorker{
		k:    k,
		log:  k.log.With(zap.String("pod", st.Namespace+"/"+st.Name), zap.String("uid", string(st.UID))),
		st:   st,
		key:  types.NamespacedName{Namespace: st.Namespace, Name: st.Name},
		poke: make(chan struct{}, 1),
		ctrs: map[string]*container{},
	}
}

// Poke asks the worker to sync soon.
func (w *podWorker) Poke() {
	select {
	case w.poke <- struct{}{}:
	default:
	}
}

// run syncs the pod until it is gone (returns after cleanup) or ctx ends
// (returns leaving the processes running, to be adopted by the next
// stand-in).
func (w *podWorker) run(ctx context.Context) {
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		if done := w.sync(ctx); done {
			return
		}
		select {
		case <-ctx.Done():
			w.mu.Lock()
			for _, c := range w.ctrs {
				if c.stopProbe != nil {
					c.stopProbe()
				}
			}
			w.mu.Unlock()
			return
		case <-w.poke:
		case <-t.C:
		}
	}
}

func (w *podWorker) currentPod() (*v1.Pod, bool) {
	pod, err := w.k.lister.Pods(w.key.Namespace).Get(w.key.Name)
	if err != nil || pod.UID != w.st.UID {
		return nil, false
	}
	return pod, true
}

// sync does one step; true when the pod is finished and cleaned up.
func (w *podWorker) sync(ctx context.Context) bool {
	pod, ok := w.currentPod()
	if !ok {
		// Gone from the apiserver (force-deleted): kill at once and clean up.
		w.log.Info("pod gone from the apiserver; killing and cleaning up")
		w.stopProbes()
		if err := w.k.cleanup(w.st); err != nil {
			w.log.Error("cleanup", zap.Error(err))
			return false
		}
		return true
	}
	if !w.st.NetworkReady {
		if err := w.k.setupSandbox(w.st); err != nil {
			w.log.Error("pod sandbox", zap.Error(err))
			w.setWaitingAll("ContainerCreating", err.Error())
			w.patchStatus(ctx, pod)
			return false
		}
		w.st.NetworkReady = true
		w.saveState()
	}
	w.ensureContainers(pod)

	if pod.DeletionTimestamp != nil {
		if w.terminate(ctx, pod) {
			return true
		}
	} else {
		w.startDue(ctx, pod)
	}
	w.patchStatus(ctx, pod)
	w.mu.Lock()
	dirty := w.stateDirty
	w.stateDirty = false
	w.mu.Unlock()
	if dirty {
		w.saveState()
	}
	return false
}

func (w *podWorker) saveState() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.k.store.save(w.st); err != nil {
		w.log.Error("save pod state", zap.Error(err))
	}
}

func (w *podWorker) stopProbes() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, c := range w.ctrs {
		if c.stopProbe != nil {
			c.stopProbe()
		}
	}
}

func (w *podWorker) setWaitingAll(reason, msg string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, c := range w.ctrs {
		if c.proc == nil && !c.final {
			c.waiting, c.waitingMsg = reason, msg
		}
	}
}

// ensureContainers creates the runtime entries and adopts processes that an
// earlier stand-in started.
func (w *podWorker) ensureContainers(pod *v1.Pod) {
	var adopted []*container
	defer func() {
		for _, c := range adopted {
			w.watch(pod, c, c.proc)
		}
	}()
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, spec := range pod.Spec.Containers {
		if _, ok := w.ctrs[spec.Name]; ok {
			continue
		}
		cs := w.st.Containers[spec.Name]
		if cs == nil {
			cs = &ContainerState{}
			w.st.Containers[spec.Name] = cs
		}
		c := &container{spec: spec, st: cs, waiting: "ContainerCreating"}
		w.ctrs[spec.Name] = c
		if cs.PID != 0 {
			if procAlive(cs.PID, cs.StartTicks) {
				w.log.Info("adopting container process", zap.String("container", spec.Name), zap.Int("pid", cs.PID))
				c.proc = adoptProc(cs.PID, cs.StartTicks)
				adopted = append(adopted, c) // watched once w.mu is released
			} else {
				// It ended while no stand-in watched.
				cs.LastExit = &ExitState{ExitCode: -1, Reason: "Unknown", StartedAt: cs.StartedAt, FinishedAt: time.Now()}
				cs.PID, cs.StartTicks = 0, 0
				w.stateDirty = true
			}
		}
	}
}

// startDue starts containers that are not running and may (re)start now.
func (w *podWorker) startDue(ctx context.Context, pod *v1.Pod) {
	w.mu.Lock()
	var due []*container
	now := time.Now()
	for _, spec := range pod.Spec.Containers {
		c := w.ctrs[spec.Name]
		if c.proc == nil && !c.final && !now.Before(c.nextStart) {
			due = append(due, c)
		}
	}
	w.mu.Unlock()
	for _, c := range due {
		w.startContainer(ctx, pod, c)
	}
}

func (w *podWorker) startContainer(ctx context.Context, pod *v1.Pod, c *container) {
	ec := envContext{Pod: pod, PodIP: w.st.IP.String(), HostIP: w.k.node.ENIs[0].Addr.Addr().String()}
	ec.ServiceHost, ec.ServicePort = w.k.apiServiceEndpoint(ctx)
	if w.kubeconfig == "" {
		kc, err := podCredentials(ctx, w.k.client, pod, w.k.topo.APIServer, w.k.apiCA, filepath.Join(w.k.store.dir, string(w.st.UID), "serviceaccount"))
		if err != nil {
			w.startFailed(c, "CreateContainerConfigError", err)
			return
		}
		w.kubeconfig = kc
	}
	ec.Kubeconfig = w.kubeconfig
	env, err := containerEnv(ctx, w.k.client, ec, &c.spec)
	if err != nil {
		w.startFailed(c, "CreateContainerConfigError", err)
		return
	}
	argv, err := w.k.containerArgv(pod, &c.spec, env)
	if err != nil {
		w.startFailed(c, "ErrImagePull", err)
		return
	}
	p, err := startProc(procSpec{
		Nsenter: w.k.cfg.Nsenter,
		Argv:    argv,
		Env:     env,
		NetNS:   namedns.Path(w.st.NetNS),
		Cgroup:  w.st.Cgroup,
		LogPath: w.k.logPath(w.st, c.spec.Name),
		Dir:     "/",
	})
	if err != nil {
		w.startFailed(c, "RunContainerError", err)
		return
	}
	w.log.Info("container started", zap.String("container", c.spec.Name), zap.Int("pid", p.PID), zap.Strings("argv", argv))
	w.mu.Lock()
	if c.st.PID != 0 || c.st.LastExit != nil {
		// A restart: the count goes up with every new instance after the first.
		if !c.st.StartedAt.IsZero() {
			c.st.RestartCount++
		}
	}
	c.proc = p
	c.st.PID, c.st.StartTicks, c.st.StartedAt = p.PID, p.StartTicks, time.Now()
	c.waiting, c.waitingMsg = "", ""
	c.ready = false
	w.stateDirty = true
	w.mu.Unlock()
	w.saveState()
	w.watch(pod, c, p)
}

func (w *podWorker) startFailed(c *container, reason string, err error) {
	w.log.Warn("container start failed", zap.String("container", c.spec.Name), zap.String("reason", reason), zap.Error(err))
	w.mu.Lock()
	defer w.mu.Unlock()
	c.waiting, c.waitingMsg = reason, err.Error()
	c.nextStart = time.Now().Add(w.backoff(c))
}

// backoff is RestartBackoff doubled per restart, capped.
func (w *podWorker) backoff(c *container) time.Duration {
	d := w.k.cfg.RestartBackoff
	for i := int32(0); i < c.st.RestartCount && d < w.k.cfg.MaxRestartBackoff; i++ {
		d *= 2
	}
	return min(d, w.k.cfg.MaxRestartBackoff)
}

// watch starts the readiness prober and waits for the process to exit.
func (w *podWorker) watch(pod *v1.Pod, c *container, p *proc) {
	pctx, cancel := context.WithCancel(context.Background())
	w.mu.Lock()
	c.stopProbe = cancel
	if c.spec.ReadinessProbe == nil {
		c.ready = true
	}
	w.mu.Unlock()
	if c.spec.ReadinessProbe != nil {
		go w.probeLoop(pctx, c, p)
	}
	go func() {
		<-p.Done()
		cancel()
		w.exited(pod, c, p)
		w.Poke()
	}()
}

func (w *podWorker) exited(pod *v1.Pod, c *container, p *proc) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if c.proc != p {
		return
	}
	reason := "Completed"
	code := int32(p.exitCode)
	switch {
	case p.exitCode < 0:
		reason = "Unknown"
	case c.killed && p.signaled:
		reason = "Error"
	case p.exitCode != 0:
		reason = "Error"
	}
	c.st.LastExit = &ExitState{ExitCode: code, Reason: reason, StartedAt: c.st.StartedAt, FinishedAt: time.Now()}
	c.st.PID, c.st.StartTicks = 0, 0
	c.proc = nil
	c.ready = false
	w.stateDirty = true
	policy := pod.Spec.RestartPolicy
	restart := policy == v1.RestartPolicyAlways || policy == "" || (policy == v1.RestartPolicyOnFailure && code != 0)
	if w.terminating || c.stopping || !restart {
		c.final = true
		w.log.Info("container exited", zap.String("container", c.spec.Name), zap.Int32("exitCode", code))
		return
	}
	c.waiting = "CrashLoopBackOff"
	c.waitingMsg = fmt.Sprintf("back-off restarting failed container %s", c.spec.Name)
	c.nextStart = time.Now().Add(w.backoff(c))
	w.log.Info("container exited; restarting after back-off", zap.String("container", c.spec.Name), zap.Int32("exitCode", code), zap.Time("at", c.nextStart))
}

// probeLoop runs the readiness probe for one container instance.
func (w *podWorker) probeLoop(ctx context.Context, c *container, p *proc) {
	probe := c.spec.ReadinessProbe
	s := SettingsOf(probe)
	w.mu.Lock()
	started := c.st.StartedAt
	w.mu.Unlock()
	if d := time.Until(started.Add(s.InitialDelay)); d > 0 {
		select {
		case <-ctx.Done():
			return
		case <-time.After(d):
		}
	}
	prober := &Prober{Dial: w.k.dialer, Exec: w.execIn}
	var rs ReadinessState
	t := time.NewTicker(s.Period)
	defer t.Stop()
	for {
		err := prober.Probe(ctx, probe, w.st.IP.String(), &c.spec)
		if ctx.Err() != nil {
			return
		}
		if rs.Observe(err == nil, s) {
			w.log.Info("readiness changed", zap.String("container", c.spec.Name), zap.Bool("ready", rs.Ready), zap.Error(err))
			w.mu.Lock()
			if c.proc == p {
				c.ready = rs.Ready
			}
			w.mu.Unlock()
			w.Poke()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// execIn runs a command in the pod's cgroup and netns (exec probes, exec
// preStop hooks) and returns its exit code.
func (w *podWorker) execIn(ctx context.Context, cmd []string) (int, error) {
	if len(cmd) == 0 {
		return 0, errors.New("empty command")
	}
	argv := append([]string{w.k.resolveCommand(cmd[0], "")}, cmd[1:]...)
	p, err := startProc(procSpec{
		Nsenter: w.k.cfg.Nsenter,
		Argv:    argv,
		Env:     []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
		NetNS:   namedns.Path(w.st.NetNS),
		Cgroup:  w.st.Cgroup,
		LogPath: w.k.logPath(w.st, "exec"),
		Dir:     "/",
	})
	if err != nil {
		return -1, err
	}
	select {
	case <-p.Done():
		return p.exitCode, nil
	case <-ctx.Done():
		_ = signalProc(p.PID, p.StartTicks, syscall.SIGKILL)
		<-p.Done()
		return -1, ctx.Err()
	}
}

// terminate drives graceful termination; true when the pod is finished.
func (w *podWorker) terminate(ctx context.Context, pod *v1.Pod) bool {
	deadline := pod.DeletionTimestamp.Time
	if pod.DeletionGracePeriodSeconds != nil && *pod.DeletionGracePeriodSeconds == 0 {
		deadline = time.Now()
	}
	w.mu.Lock()
	if !w.terminating {
		w.terminating = true
		w.deadline = deadline
		w.log.Info("terminating", zap.Time("deadline", deadline))
	} else if deadline.Before(w.deadline) {
		w.deadline = deadline
	}
	now := time.Now()
	allDone := true
	for _, spec := range pod.Spec.Containers {
		c := w.ctrs[spec.Name]
		if c.proc == nil {
			if !c.final {
				c.final = true
				if c.waiting == "" {
					c.waiting = "ContainerCreating"
				}
			}
			continue
		}
		allDone = false
		if !c.stopping {
			c.stopping = true
			go w.stopContainer(pod, c, c.proc, w.deadline)
		}
		killAt := w.deadline
		if !c.termAt.IsZero() && c.termAt.Add(minTermGrace).After(killAt) {
			killAt = c.termAt.Add(minTermGrace)
		}
		if !c.killed && (now.After(killAt) || (c.termAt.IsZero() && now.After(w.deadline.Add(minTermGrace)))) {
			c.killed = true
			w.log.Info("grace period over: SIGKILL", zap.String("container", c.spec.Name))
			_ = signalProc(c.proc.PID, c.proc.StartTicks, syscall.SIGKILL)
		}
	}
	w.mu.Unlock()
	if !allDone {
		return false
	}
	// Every container has ended: final status, teardown, final delete.
	w.patchStatus(ctx, pod)
	w.stopProbes()
	if err := w.k.cleanup(w.st); err != nil {
		w.log.Error("teardown", zap.Error(err))
		return false
	}
	uid := w.st.UID
	err := w.k.client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{
		GracePeriodSeconds: ptr.To(int64(0)),
		Preconditions:      &metav1.Preconditions{UID: &uid},
	})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		w.log.Error("final delete", zap.Error(err))
		return false
	}
	w.log.Info("pod terminated and deleted")
	return true
}

// stopContainer runs the preStop hook (bounded by the deadline), then sends
// SIGTERM.
func (w *podWorker) stopContainer(pod *v1.Pod, c *container, p *proc, deadline time.Time) {
	if c.spec.Lifecycle != nil && c.spec.Lifecycle.PreStop != nil {
		ctx, cancel := context.WithDeadline(context.Background(), deadline)
		err := w.runHook(ctx, c.spec.Lifecycle.PreStop, c, p)
		cancel()
		if err != nil {
			w.log.Warn("preStop hook", zap.String("container", c.spec.Name), zap.Error(err))
		} else {
			w.log.Info("preStop hook done", zap.String("container", c.spec.Name))
		}
	}
	w.mu.Lock()
	c.termAt = time.Now()
	w.mu.Unlock()
	w.log.Info("SIGTERM", zap.String("container", c.spec.Name), zap.Int("pid", p.PID))
	if err := signalProc(p.PID, p.StartTicks, syscall.SIGTERM); err != nil {
		w.log.Warn("SIGTERM", zap.Error(err))
	}
	w.Poke()
}

func (w *podWorker) runHook(ctx context.Context, h *v1.LifecycleHandler, c *container, p *proc) error {
	switch {
	case h.Sleep != nil:
		t := time.NewTimer(time.Duration(h.Sleep.Seconds) * time.Second)
		defer t.Stop()
		select {
		case <-t.C:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		case <-p.Done():
			return errors.New("container exited during preStop")
		}
	case h.Exec != nil:
		code, err := w.execIn(ctx, h.Exec.Command)
		if err != nil {
			return err
		}
		if code != 0 {
			return fmt.Errorf("exit code %d", code)
		}
		return nil
	case h.HTTPGet != nil:
		pr := &Prober{Dial: w.k.dialer}
		return pr.httpGet(ctx, h.HTTPGet, w.st.IP.String(), &c.spec)
	}
	return errors.New("hook has no supported action (sleep, exec, httpGet)")
}

// patchStatus writes the pod's status through the status subresource with a
// strategic merge patch made from the difference, only when something changed.
func (w *podWorker) patchStatus(ctx context.Context, pod *v1.Pod) {
	next := w.computeStatus(pod)
	oldJSON, err := json.Marshal(v1.Pod{Status: pod.Status})
	if err != nil {
		return
	}
	newJSON, err := json.Marshal(v1.Pod{ObjectMeta: metav1.ObjectMeta{UID: pod.UID}, Status: next})
	if err != nil {
		return
	}
	patch, err := strategicpatch.CreateTwoWayMergePatch(oldJSON, newJSON, v1.Pod{})
	if err != nil {
		w.log.Error("status patch", zap.Error(err))
		return
	}
	if string(patch) == fmt.Sprintf(`{"metadata":{"uid":%q}}`, pod.UID) {
		return // no change
	}
	w.mu.Lock()
	same := string(newJSON) == string(w.lastStatus)
	w.mu.Unlock()
	if same {
		return // written already; the informer has not caught up
	}
	_, err = w.k.client.CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.StrategicMergePatchType, patch, metav1.PatchOptions{}, "status")
	if err != nil {
		if ctx.Err() == nil && !apierrors.IsNotFound(err) {
			w.log.Warn("patch status", zap.Error(err), zap.ByteString("patch", patch))
		}
		return
	}
	w.mu.Lock()
	w.lastStatus = newJSON
	w.mu.Unlock()
}

// computeStatus is the pod's status as this stand-in sees it.
func (w *podWorker) computeStatus(pod *v1.Pod) v1.PodStatus {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := *pod.Status.DeepCopy()
	hostIP := w.k.node.ENIs[0].Addr.Addr().String()
	s.HostIP = hostIP
	s.HostIPs = []v1.HostIP{{IP: hostIP}}
	if w.st.NetworkReady && w.st.IP.IsValid() {
		s.PodIP = w.st.IP.String()
		s.PodIPs = []v1.PodIP{{IP: s.PodIP}}
	}
	if s.StartTime == nil {
		s.StartTime = &metav1.Time{Time: w.st.StartTime.Truncate(time.Second)}
	}
	ready := map[string]bool{}
	var statuses []v1.ContainerStatus
	anyStarted, allFinal, allZero := false, true, true
	for _, spec := range pod.Spec.Containers {
		c := w.ctrs[spec.Name]
		cs := v1.ContainerStatus{Name: spec.Name, Image: spec.Image, ImageID: "testbed://" + spec.Image}
		if c == nil {
			cs.State.Waiting = &v1.ContainerStateWaiting{Reason: "ContainerCreating"}
			statuses = append(statuses, cs)
			allFinal = false
			continue
		}
		cs.RestartCount = c.st.RestartCount
		if !c.st.StartedAt.IsZero() {
			anyStarted = true
		}
		lastExit := func() *v1.ContainerStateTerminated {
			e := c.st.LastExit
			return &v1.ContainerStateTerminated{
				ExitCode: e.ExitCode, Reason: e.Reason,
				StartedAt:  metav1.Time{Time: e.StartedAt.Truncate(time.Second)},
				FinishedAt: metav1.Time{Time: e.FinishedAt.Truncate(time.Second)},
			}
		}
		switch {
		case c.proc != nil:
			cs.ContainerID = "testbed://" + strconv.Itoa(c.proc.PID)
			cs.State.Running = &v1.ContainerStateRunning{StartedAt: metav1.Time{Time: c.st.StartedAt.Truncate(time.Second)}}
			cs.Started = ptr.To(true)
			cs.Ready = c.ready
			allFinal = false
			if c.st.RestartCount > 0 && c.st.LastExit != nil {
				cs.LastTerminationState.Terminated = lastExit()
			}
		case c.final && c.st.LastExit != nil:
			cs.State.Terminated = lastExit()
			cs.Started = ptr.To(false)
			if c.st.LastExit.ExitCode != 0 {
				allZero = false
			}
		default:
			reason := c.waiting
			if reason == "" {
				reason = "ContainerCreating"
			}
			cs.State.Waiting = &v1.ContainerStateWaiting{Reason: reason, Message: c.waitingMsg}
			cs.Started = ptr.To(false)
			if !c.final {
				allFinal = false
			}
			if c.st.LastExit != nil {
				cs.LastTerminationState.Terminated = lastExit()
			}
		}
		ready[spec.Name] = cs.Ready
		statuses = append(statuses, cs)
	}
	s.ContainerStatuses = statuses
	switch {
	case allFinal && anyStarted && allZero:
		s.Phase = v1.PodSucceeded
	case allFinal && anyStarted:
		s.Phase = v1.PodFailed
	case anyStarted:
		s.Phase = v1.PodRunning
	default:
		s.Phase = v1.PodPending
	}
	now := metav1.Time{Time: time.Now().Truncate(time.Second)}
	s.Conditions = MergeConditions(s.Conditions, PodConditions(&pod.Spec, s.Conditions, s.Phase, ready, now))
	return s
}

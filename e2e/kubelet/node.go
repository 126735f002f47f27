package kubelet

import (
	"context"
	"fmt"
	"runtime"
	"time"

	"go.uber.org/zap"
	coordinationv1 "k8s.io/api/coordination/v1"
	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

const kubeletVersion = "v1.36.3-directlb-testbed"

// desiredNode is the Node object the stand-in registers.
func (k *Kubelet) desiredNode() *v1.Node {
	capacity := v1.ResourceList{
		v1.ResourceCPU:              resource.MustParse(k.cfg.CPU),
		v1.ResourceMemory:           resource.MustParse(k.cfg.Memory),
		v1.ResourcePods:             resource.MustParse(k.cfg.Pods),
		v1.ResourceEphemeralStorage: resource.MustParse("20Gi"),
	}
	return &v1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name: k.node.Name,
			Labels: map[string]string{
				v1.LabelHostname:      k.node.Name,
				v1.LabelOSStable:      runtime.GOOS,
				v1.LabelArchStable:    runtime.GOARCH,
				"directlb.io/testbed": "true",
			},
			Annotations: map[string]string{"directlb.io/primary-eni": k.node.ENIs[0].ID},
		},
		Spec: v1.NodeSpec{ProviderID: "directlb-testbed:///" + k.node.Name},
		Status: v1.NodeStatus{
			Capacity:    capacity,
			Allocatable: capacity,
			Addresses: []v1.NodeAddress{
				{Type: v1.NodeInternalIP, Address: k.node.ENIs[0].Addr.Addr().String()},
				{Type: v1.NodeHostName, Address: k.node.Name},
			},
			NodeInfo: v1.NodeSystemInfo{
				KubeletVersion:          kubeletVersion,
				OperatingSystem:         runtime.GOOS,
				Architecture:            runtime.GOARCH,
				ContainerRuntimeVersion: "directlb-testbed://1",
				OSImage:                 "directlb test bed",
			},
		},
	}
}

func (k *Kubelet) nodeConditions(now metav1.Time, old []v1.NodeCondition) []v1.NodeCondition {
	conds := []v1.NodeCondition{
		{Type: v1.NodeReady, Status: v1.ConditionTrue, Reason: "KubeletReady", Message: "kubelet stand-in is posting ready status"},
		{Type: v1.NodeMemoryPressure, Status: v1.ConditionFalse, Reason: "KubeletHasSufficientMemory", Message: "kubelet has sufficient memory available"},
		{Type: v1.NodeDiskPressure, Status: v1.ConditionFalse, Reason: "KubeletHasNoDiskPressure", Message: "kubelet has no disk pressure"},
		{Type: v1.NodePIDPressure, Status: v1.ConditionFalse, Reason: "KubeletHasSufficientPID", Message: "kubelet has sufficient PID available"},
	}
	for i := range conds {
		conds[i].LastHeartbeatTime = now
		conds[i].LastTransitionTime = now
		for _, o := range old {
			if o.Type == conds[i].Type && o.Status == conds[i].Status {
				conds[i].LastTransitionTime = o.LastTransitionTime
			}
		}
	}
	return conds
}

// registerNode creates the Node or brings an existing one up to date.
func (k *Kubelet) registerNode(ctx context.Context) error {
	nodes := k.client.CoreV1().Nodes()
	want := k.desiredNode()
	cur, err := nodes.Get(ctx, want.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		if _, err := nodes.Create(ctx, want, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create node %s: %w", want.Name, err)
		}
		cur, err = nodes.Get(ctx, want.Name, metav1.GetOptions{})
	}
	if err != nil {
		return fmt.Errorf("get node %s: %w", want.Name, err)
	}
	changed := false
	if cur.Labels == nil {
		cur.Labels = map[string]string{}
	}
	for key, v := range want.Labels {
		if cur.Labels[key] != v {
			cur.Labels[key], changed = v, true
		}
	}
	if cur.Spec.ProviderID == "" {
		cur.Spec.ProviderID, changed = want.Spec.ProviderID, true
	}
	if changed {
		if cur, err = nodes.Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("update node %s: %w", want.Name, err)
		}
	}
	return k.updateNodeStatus(ctx, cur)
}

func (k *Kubelet) updateNodeStatus(ctx context.Context, cur *v1.Node) error {
	want := k.desiredNode()
	cur = cur.DeepCopy()
	cur.Status.Capacity = want.Status.Capacity
	cur.Status.Allocatable = want.Status.Allocatable
	cur.Status.Addresses = want.Status.Addresses
	cur.Status.NodeInfo = want.Status.NodeInfo
	cur.Status.Conditions = k.nodeConditions(metav1.Now(), cur.Status.Conditions)
	if _, err := k.client.CoreV1().Nodes().UpdateStatus(ctx, cur, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("update node %s status: %w", cur.Name, err)
	}
	return nil
}

// renewLease creates or renews the node's Lease in kube-node-lease.
func (k *Kubelet) renewLease(ctx context.Context) error {
	leases := k.client.CoordinationV1().Leases(v1.NamespaceNodeLease)
	now := metav1.NewMicroTime(time.Now())
	l, err := leases.Get(ctx, k.node.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		node, err := k.client.CoreV1().Nodes().Get(ctx, k.node.Name, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("get node for lease owner: %w", err)
		}
		l = &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{
				Name:      k.node.Name,
				Namespace: v1.NamespaceNodeLease,
				OwnerReferences: []metav1.OwnerReference{{
					APIVersion: "v1", Kind: "Node", Name: node.Name, UID: node.UID,
				}},
			},
			Spec: coordinationv1.LeaseSpec{
				HolderIdentity:       ptr.To(k.node.Name),
				LeaseDurationSeconds: ptr.To(int32(k.cfg.LeaseDuration / time.Second)),
				RenewTime:            &now,
			},
		}
		if _, err := leases.Create(ctx, l, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create lease: %w", err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("get lease: %w", err)
	}
	l.Spec.RenewTime = &now
	l.Spec.HolderIdentity = ptr.To(k.node.Name)
	l.Spec.LeaseDurationSeconds = ptr.To(int32(k.cfg.LeaseDuration / time.Second))
	if _, err := leases.Update(ctx, l, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("renew lease: %w", err)
	}
	return nil
}

// heartbeat renews the Lease and refreshes the Node's conditions until ctx ends.
func (k *Kubelet) heartbeat(ctx context.Context) {
	t := time.NewTicker(k.cfg.HeartbeatInterval)
	defer t.Stop()
	for {
		if err := k.renewLease(ctx); err != nil && ctx.Err() == nil {
			k.log.Warn("lease", zap.String("node", k.node.Name), zap.Error(err))
		}
		if node, err := k.client.CoreV1().Nodes().Get(ctx, k.node.Name, metav1.GetOptions{}); err == nil {
			if err := k.updateNodeStatus(ctx, node); err != nil && ctx.Err() == nil {
				k.log.Warn("node status", zap.String("node", k.node.Name), zap.Error(err))
			}
		} else if apierrors.IsNotFound(err) {
			if err := k.registerNode(ctx); err != nil && ctx.Err() == nil {
				k.log.Warn("re-register node", zap.String("node", k.node.Name), zap.Error(err))
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

package testbed

import (
	"context"
	"fmt"
	"strconv"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/directlb/directlb/e2e/bedimages"
)

// The test bed's cluster DNS: CoreDNS (hack/coredns) as kube-system's
// kube-dns Service at ClusterDNS, the address every kubelet writes into
// pods' resolv.conf (docs/testbed.md, "Cluster DNS"). It reaches the
// apiserver at its VPC address, not through the kubernetes Service, so
// that DNS works whichever Service datapath (node-agent, kube-proxy or
// none yet) the bed runs: it is the bed's, not what is under test.

const (
	clusterDNSName = "coredns"
	clusterDNSNS   = metav1.NamespaceSystem
)

// corefile serves cluster.local and the reverse zones from the API; there
// is no upstream to forward to (the bed has no internet), so other names
// get NXDOMAIN or SERVFAIL at once.
const corefile = `.:53 {
    errors
    health {
        lameduck 5s
    }
    ready
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 30
    }
    cache 30
    loadbalance
}
`

// deployClusterDNS creates (or updates) CoreDNS's ServiceAccount, RBAC,
// Corefile, Deployment and the kube-dns Service. It does not wait for the
// pods: the nodes' first pods start alongside.
func deployClusterDNS(ctx context.Context, cs kubernetes.Interface, t *Topology) error {
	labels := map[string]string{"k8s-app": "kube-dns"}
	meta := metav1.ObjectMeta{Name: clusterDNSName, Namespace: clusterDNSNS, Labels: labels}
	steps := []struct {
		what string
		do   func() error
	}{
		{"ServiceAccount", func() error {
			_, err := cs.CoreV1().ServiceAccounts(clusterDNSNS).Create(ctx, &corev1.ServiceAccount{ObjectMeta: meta}, metav1.CreateOptions{})
			return err
		}},
		{"ClusterRole", func() error {
			_, err := cs.RbacV1().ClusterRoles().Create(ctx, clusterDNSRole(), metav1.CreateOptions{})
			return err
		}},
		{"ClusterRoleBinding", func() error {
			_, err := cs.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
				ObjectMeta: metav1.ObjectMeta{Name: "directlb-testbed:" + clusterDNSName},
				RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "directlb-testbed:" + clusterDNSName},
				Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: clusterDNSName, Namespace: clusterDNSNS}},
			}, metav1.CreateOptions{})
			return err
		}},
		{"ConfigMap", func() error {
			_, err := cs.CoreV1().ConfigMaps(clusterDNSNS).Create(ctx, &corev1.ConfigMap{ObjectMeta: meta, Data: map[string]string{"Corefile": corefile}}, metav1.CreateOptions{})
			return err
		}},
		{"Deployment", func() error {
			_, err := cs.AppsV1().Deployments(clusterDNSNS).Create(ctx, clusterDNSDeployment(t, meta), metav1.CreateOptions{})
			return err
		}},
		{"Service", func() error {
			_, err := cs.CoreV1().Services(clusterDNSNS).Create(ctx, clusterDNSService(labels), metav1.CreateOptions{})
			return err
		}},
	}
	for _, s := range steps {
		if err := s.do(); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("cluster DNS: %s: %w", s.what, err)
		}
	}
	return nil
}

func clusterDNSRole() *rbacv1.ClusterRole {
	return &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "directlb-testbed:" + clusterDNSName},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"services", "pods", "namespaces"}, Verbs: []string{"list", "watch"}},
			{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: []string{"list", "watch"}},
		},
	}
}

// clusterDNSDeployment runs two CoreDNS replicas (on different nodes where
// there are two) as a non-root user that may bind port 53.
func clusterDNSDeployment(t *Topology, meta metav1.ObjectMeta) *appsv1.Deployment {
	probe := func(path string, port int32) *corev1.Probe {
		return &corev1.Probe{
			ProbeHandler:     corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: path, Port: intstr.FromInt32(port)}},
			PeriodSeconds:    2,
			TimeoutSeconds:   2,
			FailureThreshold: 5,
		}
	}
	replicas := int32(min(2, len(t.Nodes)))
	host, port := t.apiServerHostPort()
	return &appsv1.Deployment{
		ObjectMeta: meta,
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: meta.Labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: meta.Labels},
				Spec: corev1.PodSpec{
					ServiceAccountName: clusterDNSName,
					PriorityClassName:  "system-cluster-critical",
					DNSPolicy:          corev1.DNSDefault,
					Affinity: &corev1.Affinity{PodAntiAffinity: &corev1.PodAntiAffinity{
						PreferredDuringSchedulingIgnoredDuringExecution: []corev1.WeightedPodAffinityTerm{{Weight: 100,
							PodAffinityTerm: corev1.PodAffinityTerm{TopologyKey: corev1.LabelHostname, LabelSelector: &metav1.LabelSelector{MatchLabels: meta.Labels}}}},
					}},
					SecurityContext: &corev1.PodSecurityContext{
						RunAsNonRoot: ptr.To(true),
						RunAsUser:    ptr.To[int64](65532),
						Sysctls:      []corev1.Sysctl{{Name: "net.ipv4.ip_unprivileged_port_start", Value: "53"}},
					},
					Containers: []corev1.Container{{
						Name:  "coredns",
						Image: bedimages.CoreDNSRef,
						Args:  []string{"-conf", "/etc/coredns/Corefile"},
						// The apiserver at its VPC address (see the top of this file).
						Env: []corev1.EnvVar{
							{Name: "KUBERNETES_SERVICE_HOST", Value: host},
							{Name: "KUBERNETES_SERVICE_PORT", Value: port},
						},
						Ports: []corev1.ContainerPort{
							{Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP},
							{Name: "dns-tcp", ContainerPort: 53, Protocol: corev1.ProtocolTCP},
						},
						VolumeMounts:   []corev1.VolumeMount{{Name: "config", MountPath: "/etc/coredns", ReadOnly: true}},
						LivenessProbe:  probe("/health", 8080),
						ReadinessProbe: probe("/ready", 8181),
						SecurityContext: &corev1.SecurityContext{
							AllowPrivilegeEscalation: ptr.To(false),
							ReadOnlyRootFilesystem:   ptr.To(true),
							Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
						},
					}},
					Volumes: []corev1.Volume{{Name: "config", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
						LocalObjectReference: corev1.LocalObjectReference{Name: clusterDNSName}}}}},
				},
			},
		},
	}
}

func clusterDNSService(labels map[string]string) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "kube-dns", Namespace: clusterDNSNS, Labels: labels},
		Spec: corev1.ServiceSpec{
			Selector:  labels,
			ClusterIP: ClusterDNS.String(),
			Ports: []corev1.ServicePort{
				{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP, TargetPort: intstr.FromInt32(53)},
				{Name: "dns-tcp", Port: 53, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromInt32(53)},
			},
		},
	}
}

// apiServerHostPort is the apiserver's VPC address and port as strings.
func (t *Topology) apiServerHostPort() (string, string) {
	return t.HostAddr.String(), strconv.Itoa(apiServerPort)
}

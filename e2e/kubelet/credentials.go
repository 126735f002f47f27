package kubelet

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	authenticationv1 "k8s.io/api/authentication/v1"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/utils/ptr"
)

// EnvKubeconfig is set in every container of a pod whose ServiceAccount
// token is mounted (automountServiceAccountToken not false): there is no
// mount namespace to put the token at
// /var/run/secrets/kubernetes.io/serviceaccount, so the pod gets a
// kubeconfig instead, which client-go and controller-runtime honour.
const EnvKubeconfig = "KUBECONFIG"

// tokenLifetime is the bound token's lifetime (the stand-in does not renew it).
const tokenLifetime = 24 * 60 * 60

// podCredentials requests a token bound to the pod for its ServiceAccount
// and writes, under dir: token, ca.crt, namespace (the files of a
// ServiceAccount volume) and kubeconfig (server, CA, token file). It returns
// the kubeconfig's path, or "" when the pod opts out of the token.
func podCredentials(ctx context.Context, client kubernetes.Interface, pod *v1.Pod, server string, fallbackCA []byte, dir string) (string, error) {
	if pod.Spec.AutomountServiceAccountToken != nil && !*pod.Spec.AutomountServiceAccountToken {
		return "", nil
	}
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	tr, err := client.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(ctx, sa, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{
			ExpirationSeconds: ptr.To(int64(tokenLifetime)),
			BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("token for service account %s/%s: %w", pod.Namespace, sa, err)
	}
	ca := fallbackCA
	if cm, err := client.CoreV1().ConfigMaps(pod.Namespace).Get(ctx, "kube-root-ca.crt", metav1.GetOptions{}); err == nil && cm.Data["ca.crt"] != "" {
		ca = []byte(cm.Data["ca.crt"])
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("credentials dir: %w", err)
	}
	files := map[string][]byte{
		"token":     []byte(tr.Status.Token),
		"ca.crt":    ca,
		"namespace": []byte(pod.Namespace),
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			return "", fmt.Errorf("write %s: %w", name, err)
		}
	}
	kc := clientcmdapi.NewConfig()
	kc.Clusters["testbed"] = &clientcmdapi.Cluster{Server: server, CertificateAuthority: filepath.Join(dir, "ca.crt")}
	kc.AuthInfos[sa] = &clientcmdapi.AuthInfo{TokenFile: filepath.Join(dir, "token")}
	kc.Contexts["pod"] = &clientcmdapi.Context{Cluster: "testbed", AuthInfo: sa, Namespace: pod.Namespace}
	kc.CurrentContext = "pod"
	path := filepath.Join(dir, "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		return "", fmt.Errorf("write kubeconfig: %w", err)
	}
	return path, nil
}

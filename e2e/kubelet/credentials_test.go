package kubelet

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
	authenticationv1 "k8s.io/api/authentication/v1"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"
)

func TestPodCredentials(t *testing.T) {
	client := fake.NewClientset(&v1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "kube-root-ca.crt", Namespace: "shop"},
		Data:       map[string]string{"ca.crt": "namespace-ca"},
	})
	var asked *authenticationv1.TokenRequest
	var askedSA string
	client.PrependReactor("create", "serviceaccounts", func(a k8stesting.Action) (bool, runtime.Object, error) {
		ca := a.(k8stesting.CreateAction)
		if ca.GetSubresource() != "token" {
			return false, nil, nil
		}
		asked = ca.GetObject().(*authenticationv1.TokenRequest).DeepCopy()
		askedSA = ca.(k8stesting.CreateActionImpl).Name
		out := asked.DeepCopy()
		out.Status.Token = "bound-token"
		return true, out, nil
	})
	pod := testPod()
	pod.Spec.ServiceAccountName = "web"
	dir := filepath.Join(t.TempDir(), "sa")
	path, err := podCredentials(context.Background(), client, pod, "https://10.100.0.2:6443", []byte("fallback-ca"), dir)
	if err != nil {
		t.Fatal(err)
	}
	if askedSA != "web" || asked.Spec.BoundObjectRef == nil || asked.Spec.BoundObjectRef.UID != pod.UID {
		t.Errorf("token request for %q: %+v, want bound to the pod, for SA web", askedSA, asked)
	}
	got := map[string]string{}
	for _, f := range []string{"token", "ca.crt", "namespace"} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		got[f] = string(b)
	}
	want := map[string]string{"token": "bound-token", "ca.crt": "namespace-ca", "namespace": "shop"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("files (-want +got):\n%s", diff)
	}
	rc, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		t.Fatalf("kubeconfig does not load: %v", err)
	}
	if rc.Host != "https://10.100.0.2:6443" || rc.BearerTokenFile != filepath.Join(dir, "token") || rc.CAFile != filepath.Join(dir, "ca.crt") {
		t.Errorf("kubeconfig: host %q token file %q CA %q", rc.Host, rc.BearerTokenFile, rc.CAFile)
	}

	pod.Spec.AutomountServiceAccountToken = ptr.To(false)
	if path, err := podCredentials(context.Background(), client, pod, "x", nil, t.TempDir()); path != "" || err != nil {
		t.Errorf("opted-out pod: %q, %v; want no kubeconfig", path, err)
	}
}

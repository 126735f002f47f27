package kubelet

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

func testPod() *v1.Pod {
	return &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web-1", Namespace: "shop", UID: "u-1", Labels: map[string]string{"app": "web"}},
		Spec:       v1.PodSpec{NodeName: "node-2"},
	}
}

func TestContainerEnv(t *testing.T) {
	client := fake.NewClientset(&v1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "cfg", Namespace: "shop"}, Data: map[string]string{"mode": "fast"}})
	c := &v1.Container{Env: []v1.EnvVar{
		{Name: "POD_NAME", ValueFrom: &v1.EnvVarSource{FieldRef: &v1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
		{Name: "POD_NAMESPACE", ValueFrom: &v1.EnvVarSource{FieldRef: &v1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}},
		{Name: "POD_IP", ValueFrom: &v1.EnvVarSource{FieldRef: &v1.ObjectFieldSelector{FieldPath: "status.podIP"}}},
		{Name: "NODE", ValueFrom: &v1.EnvVarSource{FieldRef: &v1.ObjectFieldSelector{FieldPath: "spec.nodeName"}}},
		{Name: "APP", ValueFrom: &v1.EnvVarSource{FieldRef: &v1.ObjectFieldSelector{FieldPath: "metadata.labels['app']"}}},
		{Name: "MODE", ValueFrom: &v1.EnvVarSource{ConfigMapKeyRef: &v1.ConfigMapKeySelector{LocalObjectReference: v1.LocalObjectReference{Name: "cfg"}, Key: "mode"}}},
		{Name: "LISTEN", Value: "$(POD_IP):8080"},
	}}
	got, err := containerEnv(context.Background(), client, envContext{Pod: testPod(), PodIP: "10.100.2.64", HostIP: "10.100.2.10", ServiceHost: "10.96.0.1", ServicePort: "443"}, c)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "HOSTNAME=web-1",
		"KUBERNETES_SERVICE_HOST=10.96.0.1", "KUBERNETES_SERVICE_PORT=443", "KUBERNETES_SERVICE_PORT_HTTPS=443", "KUBERNETES_PORT=tcp://10.96.0.1:443",
		"POD_NAME=web-1", "POD_NAMESPACE=shop", "POD_IP=10.100.2.64", "NODE=node-2", "APP=web", "MODE=fast", "LISTEN=10.100.2.64:8080",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("env (-want +got):\n%s", diff)
	}
	bad := &v1.Container{Env: []v1.EnvVar{{Name: "X", ValueFrom: &v1.EnvVarSource{ConfigMapKeyRef: &v1.ConfigMapKeySelector{LocalObjectReference: v1.LocalObjectReference{Name: "missing"}, Key: "k"}}}}}
	if _, err := containerEnv(context.Background(), client, envContext{Pod: testPod()}, bad); err == nil {
		t.Error("missing configmap: no error")
	}
}

func TestContainerArgv(t *testing.T) {
	bin := t.TempDir()
	for _, b := range []string{"lb-controller", "helper"} {
		if err := os.WriteFile(filepath.Join(bin, b), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	images, _ := ParseImageMap(DefaultImages)
	k := &Kubelet{cfg: Config{BinDir: bin, EchoCommand: []string{"/bin/dlb-testbed", "echo"}}, images: images}
	env := []string{"POD_IP=10.1.1.1"}
	cases := []struct {
		name string
		c    v1.Container
		want []string
		err  bool
	}{
		{
			name: "unmapped image runs echo on its ports",
			c: v1.Container{Image: "nginx", Command: []string{"nginx"}, Ports: []v1.ContainerPort{
				{ContainerPort: 8080}, {ContainerPort: 8443, Protocol: v1.ProtocolTCP}, {ContainerPort: 53, Protocol: v1.ProtocolUDP},
			}},
			want: []string{"/bin/dlb-testbed", "echo", "--pod-name", "web-1", "--tcp", "8080,8443", "--udp", "53"},
		},
		{
			name: "mapped image, args only",
			c:    v1.Container{Image: "ghcr.io/directlb/lb-controller:v1", Args: []string{"--bind=$(POD_IP)"}},
			want: []string{filepath.Join(bin, "lb-controller"), "--bind=10.1.1.1"},
		},
		{
			name: "mapped image, command naming the binary",
			c:    v1.Container{Image: "ghcr.io/directlb/lb-controller:v1", Command: []string{"/lb-controller", "run"}, Args: []string{"-v"}},
			want: []string{filepath.Join(bin, "lb-controller"), "run", "-v"},
		},
		{
			name: "mapped image, command naming another bin-dir binary",
			c:    v1.Container{Image: "ghcr.io/directlb/lb-controller:v1", Command: []string{"/usr/bin/helper"}},
			want: []string{filepath.Join(bin, "helper")},
		},
		{
			name: "mapped image whose binary is missing",
			c:    v1.Container{Image: "ghcr.io/directlb/node-agent:v1"},
			err:  true,
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := k.containerArgv(testPod(), &c.c, env)
			if (err != nil) != c.err {
				t.Fatalf("err = %v, want error %v", err, c.err)
			}
			if diff := cmp.Diff(c.want, got); diff != "" {
				t.Errorf("argv (-want +got):\n%s", diff)
			}
		})
	}
}

package kubelet

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// envContext is what the environment of a container is computed from.
type envContext struct {
	Pod         *v1.Pod
	PodIP       string
	HostIP      string
	ServiceHost string // the kubernetes Service's ClusterIP
	ServicePort string
	Kubeconfig  string // the pod's kubeconfig (ServiceAccount token), if any
}

// containerEnv builds the container's environment as the kubelet does:
// KUBERNETES_SERVICE_* first, then the spec's env in order (values with
// $(VAR) expanded against earlier ones; fieldRef, configMapKeyRef and
// secretKeyRef resolved).
func containerEnv(ctx context.Context, client kubernetes.Interface, ec envContext, c *v1.Container) ([]string, error) {
	vars := map[string]string{}
	var order []string
	set := func(k, v string) {
		if _, ok := vars[k]; !ok {
			order = append(order, k)
		}
		vars[k] = v
	}
	set("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	set("HOME", "/root")
	set("HOSTNAME", ec.Pod.Name)
	if ec.ServiceHost != "" {
		set("KUBERNETES_SERVICE_HOST", ec.ServiceHost)
		set("KUBERNETES_SERVICE_PORT", ec.ServicePort)
		set("KUBERNETES_SERVICE_PORT_HTTPS", ec.ServicePort)
		set("KUBERNETES_PORT", "tcp://"+ec.ServiceHost+":"+ec.ServicePort)
	}
	if ec.Kubeconfig != "" {
		set(EnvKubeconfig, ec.Kubeconfig)
	}
	for _, ef := range c.EnvFrom {
		data, err := envFromData(ctx, client, ec.Pod.Namespace, ef)
		if err != nil {
			return nil, err
		}
		keys := make([]string, 0, len(data))
		for k := range data {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			set(ef.Prefix+k, data[k])
		}
	}
	for _, e := range c.Env {
		if e.ValueFrom == nil {
			set(e.Name, expandVars(e.Value, vars))
			continue
		}
		v, err := envValueFrom(ctx, client, ec, e.ValueFrom)
		if err != nil {
			return nil, fmt.Errorf("env %s: %w", e.Name, err)
		}
		set(e.Name, v)
	}
	out := make([]string, 0, len(order))
	for _, k := range order {
		out = append(out, k+"="+vars[k])
	}
	return out, nil
}

func envFromData(ctx context.Context, client kubernetes.Interface, ns string, ef v1.EnvFromSource) (map[string]string, error) {
	switch {
	case ef.ConfigMapRef != nil:
		cm, err := client.CoreV1().ConfigMaps(ns).Get(ctx, ef.ConfigMapRef.Name, metav1.GetOptions{})
		if err != nil {
			if ef.ConfigMapRef.Optional != nil && *ef.ConfigMapRef.Optional {
				return nil, nil
			}
			return nil, fmt.Errorf("envFrom configmap %s: %w", ef.ConfigMapRef.Name, err)
		}
		return cm.Data, nil
	case ef.SecretRef != nil:
		s, err := client.CoreV1().Secrets(ns).Get(ctx, ef.SecretRef.Name, metav1.GetOptions{})
		if err != nil {
			if ef.SecretRef.Optional != nil && *ef.SecretRef.Optional {
				return nil, nil
			}
			return nil, fmt.Errorf("envFrom secret %s: %w", ef.SecretRef.Name, err)
		}
		out := map[string]string{}
		for k, v := range s.Data {
			out[k] = string(v)
		}
		return out, nil
	}
	return nil, nil
}

func envValueFrom(ctx context.Context, client kubernetes.Interface, ec envContext, vf *v1.EnvVarSource) (string, error) {
	pod := ec.Pod
	switch {
	case vf.FieldRef != nil:
		p := vf.FieldRef.FieldPath
		switch {
		case p == "metadata.name":
			return pod.Name, nil
		case p == "metadata.namespace":
			return pod.Namespace, nil
		case p == "metadata.uid":
			return string(pod.UID), nil
		case p == "spec.nodeName":
			return pod.Spec.NodeName, nil
		case p == "spec.serviceAccountName":
			return pod.Spec.ServiceAccountName, nil
		case p == "status.podIP" || p == "status.podIPs":
			return ec.PodIP, nil
		case p == "status.hostIP" || p == "status.hostIPs":
			return ec.HostIP, nil
		case strings.HasPrefix(p, "metadata.labels['") && strings.HasSuffix(p, "']"):
			return pod.Labels[strings.TrimSuffix(strings.TrimPrefix(p, "metadata.labels['"), "']")], nil
		case strings.HasPrefix(p, "metadata.annotations['") && strings.HasSuffix(p, "']"):
			return pod.Annotations[strings.TrimSuffix(strings.TrimPrefix(p, "metadata.annotations['"), "']")], nil
		}
		return "", fmt.Errorf("unsupported fieldRef %q", p)
	case vf.ConfigMapKeyRef != nil:
		r := vf.ConfigMapKeyRef
		cm, err := client.CoreV1().ConfigMaps(pod.Namespace).Get(ctx, r.Name, metav1.GetOptions{})
		if err != nil {
			if r.Optional != nil && *r.Optional {
				return "", nil
			}
			return "", fmt.Errorf("configmap %s: %w", r.Name, err)
		}
		v, ok := cm.Data[r.Key]
		if !ok && (r.Optional == nil || !*r.Optional) {
			return "", fmt.Errorf("configmap %s has no key %s", r.Name, r.Key)
		}
		return v, nil
	case vf.SecretKeyRef != nil:
		r := vf.SecretKeyRef
		s, err := client.CoreV1().Secrets(pod.Namespace).Get(ctx, r.Name, metav1.GetOptions{})
		if err != nil {
			if r.Optional != nil && *r.Optional {
				return "", nil
			}
			return "", fmt.Errorf("secret %s: %w", r.Name, err)
		}
		v, ok := s.Data[r.Key]
		if !ok && (r.Optional == nil || !*r.Optional) {
			return "", fmt.Errorf("secret %s has no key %s", r.Name, r.Key)
		}
		return string(v), nil
	case vf.ResourceFieldRef != nil:
		return "0", nil
	}
	return "", fmt.Errorf("unsupported valueFrom")
}

// expandVars expands $(VAR) from vars as Kubernetes does: $$ escapes, an
// unknown reference stays as written.
func expandVars(s string, vars map[string]string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' || i+1 >= len(s) {
			b.WriteByte(s[i])
			continue
		}
		switch s[i+1] {
		case '$':
			b.WriteByte('$')
			i++
		case '(':
			end := strings.IndexByte(s[i+2:], ')')
			if end < 0 {
				b.WriteString(s[i:])
				return b.String()
			}
			name := s[i+2 : i+2+end]
			if v, ok := vars[name]; ok {
				b.WriteString(v)
			} else {
				b.WriteString(s[i : i+3+end])
			}
			i += 2 + end
		default:
			b.WriteByte('$')
		}
	}
	return b.String()
}

func envMap(env []string) map[string]string {
	m := map[string]string{}
	for _, e := range env {
		if k, v, ok := strings.Cut(e, "="); ok {
			m[k] = v
		}
	}
	return m
}

// containerArgv is what a container runs: for an image in the map, the mapped
// binary (command/args honoured; a command whose base name is the binary's,
// or names a binary in the bin dir, runs that binary); for any other image,
// the echo server on the container's ports.
func (k *Kubelet) containerArgv(pod *v1.Pod, c *v1.Container, env []string) ([]string, error) {
	vars := envMap(env)
	expand := func(in []string) []string {
		out := make([]string, len(in))
		for i, s := range in {
			out[i] = expandVars(s, vars)
		}
		return out
	}
	bin := k.images.Lookup(c.Image)
	if bin == "" {
		argv := append([]string{}, k.cfg.EchoCommand...)
		argv = append(argv, "--pod-name", pod.Name)
		var tcp, udp []string
		for _, p := range c.Ports {
			switch p.Protocol {
			case v1.ProtocolUDP:
				udp = append(udp, strconv.Itoa(int(p.ContainerPort)))
			case "", v1.ProtocolTCP:
				tcp = append(tcp, strconv.Itoa(int(p.ContainerPort)))
			}
		}
		if len(tcp) > 0 {
			argv = append(argv, "--tcp", strings.Join(tcp, ","))
		}
		if len(udp) > 0 {
			argv = append(argv, "--udp", strings.Join(udp, ","))
		}
		return argv, nil
	}
	binPath := bin
	if !filepath.IsAbs(binPath) {
		binPath = filepath.Join(k.cfg.BinDir, bin)
	}
	if _, err := os.Stat(binPath); err != nil {
		return nil, fmt.Errorf("image %s maps to %s: %w", c.Image, binPath, err)
	}
	if len(c.Command) == 0 {
		return append([]string{binPath}, expand(c.Args)...), nil
	}
	cmd := expand(c.Command)
	cmd[0] = k.resolveCommand(cmd[0], binPath)
	return append(cmd, expand(c.Args)...), nil
}

// resolveCommand maps an in-image command to a host path.
func (k *Kubelet) resolveCommand(cmd, imageBinary string) string {
	base := filepath.Base(cmd)
	if imageBinary != "" && base == filepath.Base(imageBinary) {
		return imageBinary
	}
	if strings.Contains(cmd, "/") {
		if _, err := os.Stat(cmd); err == nil {
			return cmd
		}
		if p := filepath.Join(k.cfg.BinDir, base); fileExists(p) {
			return p
		}
		return base // e.g. /bin/sh that lives elsewhere: let nsenter search PATH
	}
	return cmd
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir()
}

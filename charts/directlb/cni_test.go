package chart_test

import (
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
)

// checkInstallCNI checks the install-cni init container, when there is
// one: no capability, and the host's CNI directories its flags name inside
// a host path mounted at the same path (the conflist names host paths to
// the runtime).
func checkInstallCNI(t *testing.T, ds *appsv1.DaemonSet) {
	t.Helper()
	hostPaths := map[string]string{} // volume → host path
	for _, v := range ds.Spec.Template.Spec.Volumes {
		if v.HostPath != nil {
			hostPaths[v.Name] = v.HostPath.Path
		}
	}
	for _, c := range ds.Spec.Template.Spec.InitContainers {
		sc := c.SecurityContext
		if sc == nil || sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) ||
			len(sc.Capabilities.Add) != 0 || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			t.Errorf("init container %s: security context %+v", c.Name, sc)
		}
		for _, a := range c.Args {
			for _, flag := range []string{"--bin-dir=", "--conf-dir="} {
				dir, ok := strings.CutPrefix(a, flag)
				if !ok {
					continue
				}
				dir = strings.ReplaceAll(dir, "$(NODE_NAME)", nodeName)
				if !slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool {
					return hostPaths[m.Name] == m.MountPath && strings.HasPrefix(dir+"/", strings.TrimSuffix(m.MountPath, "/")+"/")
				}) {
					t.Errorf("init container %s: %s is in no host path mounted at the same path (mounts %+v, host paths %v)", c.Name, a, c.VolumeMounts, hostPaths)
				}
			}
		}
	}
}

// TestCNI: cni.enabled adds the install-cni init container (and only
// then), gives it the credentials Secret when there is one, and lets the
// agent read Nodes when the init container looks up the instance ID.
func TestCNI(t *testing.T) {
	helm := helmBinary(t)
	for _, tc := range []struct {
		name      string
		args      []string
		init      bool
		wantArgs  []string // among the init container's args
		wantEnv   []string
		nodesRule bool
	}{
		// The agent watches its Node (nodeEligible) whatever cni says.
		{name: "off by default", nodesRule: true},
		{
			name: "on", args: []string{"--set", "cni.enabled=true"}, init: true, nodesRule: true,
			wantArgs: []string{"--node-name=$(NODE_NAME)", "--first-eni-label=directlb.io/first-eni", "--warm-ip-target=1", "--data-dir=/var/lib/directlb-cni"},
			wantEnv:  []string{"NODE_NAME"},
		},
		{
			name: "instance ID given, credentials from the Secret",
			args: []string{"--set", "cni.enabled=true", "--set-string", "cni.instanceID=$(NODE_NAME)", "--set", "cloud.credentials.existingSecret=creds"},
			init: true, nodesRule: true, wantArgs: []string{"--instance-id=$(NODE_NAME)", "--credentials-file=/etc/directlb/cni-credentials"},
			wantEnv: []string{"NODE_NAME", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			objs := render(t, helm, tc.args...)
			inits := initContainers(objs)
			if (len(inits) == 1) != tc.init || len(inits) > 1 {
				t.Fatalf("%d init containers, want %v", len(inits), tc.init)
			}
			if tc.init {
				for _, a := range tc.wantArgs {
					if !slices.Contains(inits[0].Args, a) {
						t.Errorf("init container args %q lack %q", inits[0].Args, a)
					}
				}
				var env []string
				for _, e := range inits[0].Env {
					env = append(env, e.Name)
				}
				if !slices.Equal(env, tc.wantEnv) {
					t.Errorf("init container env %v, want %v", env, tc.wantEnv)
				}
			}
			nodes := false
			for _, o := range objs {
				if r, ok := o.Decoded.(*rbacv1.ClusterRole); ok && strings.HasSuffix(r.Name, "node-agent") {
					nodes = slices.ContainsFunc(r.Rules, func(r rbacv1.PolicyRule) bool { return slices.Contains(r.Resources, "nodes") })
				}
			}
			if nodes != tc.nodesRule {
				t.Errorf("node-agent may get nodes: %v, want %v", nodes, tc.nodesRule)
			}
		})
	}
	_, err := runHelm(t, helm, "template", release, ".", "-n", namespace, "--set", "cni.enabled=true", "--set", "kubeProxyReplacement=false")
	if err == nil || !strings.Contains(err.Error(), "cni.enabled installs directlb-cni from the node-agent DaemonSet") {
		t.Errorf("cni.enabled without the node-agent DaemonSet: %v; want the chart to refuse", err)
	}
}

// TestInstallCNIBinary builds directlb-cni and runs the rendered
// install-cni command with --help at the end: a flag the binary does not
// take fails before --help.
func TestInstallCNIBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: skips building the binary")
	}
	helm := helmBinary(t)
	bin := filepath.Join(t.TempDir(), "directlb-cni")
	if out, err := exec.Command("go", "build", "-o", bin, "../../cmd/directlb-cni").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	for _, c := range initContainers(render(t, helm, "-f", "ci/testbed-values.yaml", "-f", "testdata/cni-values.yaml")) {
		args := []string{"install"}
		for _, a := range c.Args {
			args = append(args, strings.ReplaceAll(a, "$(NODE_NAME)", nodeName))
		}
		if out, err := exec.Command(bin, append(args, "--help")...).CombinedOutput(); err != nil {
			t.Errorf("directlb-cni %q --help: %v\n%s", args, err, out)
		}
	}
}

// Package chart_test checks the Helm chart: helm lint --strict, helm template
// with several value sets against values.schema.json, the rendered objects
// decoded strictly into their Kubernetes types, RBAC without wildcards, the
// webhook certificates, and every rendered container flag parsed by the
// binaries' own flag sets and validated by their Config.Validate.
package chart_test

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spf13/pflag"
	admissionv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/yaml"

	"github.com/directlb/directlb/pkg/agent"
	"github.com/directlb/directlb/pkg/certs"
	"github.com/directlb/directlb/pkg/cni/install"
	"github.com/directlb/directlb/pkg/controller"
	"github.com/directlb/directlb/pkg/readinessgate"
)

const (
	release   = "dlbt-chart"
	namespace = "directlb-system"
)

// helmBinary finds helm in $DLB_BIN_DIR or the repository's bin/.
func helmBinary(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("DLB_BIN_DIR")
	if dir == "" {
		dir = filepath.Join("..", "..", "bin")
	}
	p, err := filepath.Abs(filepath.Join(dir, "helm"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p); err != nil {
		t.Skipf("helm binary not found at %s (run `make tools`, or set DLB_BIN_DIR): %v", p, err)
	}
	return p
}

// requiredValues sets what the chart requires; runHelm passes it to
// template and lint before any other values, so a test's own -f or --set
// still wins.
const requiredValues = "testdata/cluster-name.yaml"

// runHelm runs helm with args; template and lint get requiredValues first.
func runHelm(t *testing.T, helm string, args ...string) (string, error) {
	t.Helper()
	if len(args) > 0 && (args[0] == "template" || args[0] == "lint") {
		args = append([]string{args[0], "-f", requiredValues}, args[1:]...)
	}
	return runHelmRaw(t, helm, args...)
}

// runHelmRaw runs helm with args as they are.
func runHelmRaw(t *testing.T, helm string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(helm, args...)
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+t.TempDir(), "HELM_CONFIG_HOME="+t.TempDir(), "HELM_DATA_HOME="+t.TempDir())
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("helm %s: %w: %s", strings.Join(args, " "), err, errb.String())
	}
	return out.String(), nil
}

// valueSets are the configurations the chart must render; each is a list of
// helm arguments (--set, -f).
var valueSets = []struct {
	name string
	args []string
	// kinds are counts of objects by kind that must be rendered (0: none).
	kinds map[string]int
}{
	{
		name: "defaults",
		kinds: map[string]int{"Deployment": 1, "DaemonSet": 1, "PodDisruptionBudget": 1, "ServiceAccount": 2,
			"ClusterRole": 2, "ClusterRoleBinding": 2, "Role": 1, "RoleBinding": 1, "Lease": 1,
			"MutatingWebhookConfiguration": 1, "ServiceMonitor": 0, "Certificate": 0, "Issuer": 0, "Secret": 1, "Service": 2},
	},
	{
		name:  "webhook off",
		args:  []string{"--set", "webhook.enabled=false"},
		kinds: map[string]int{"MutatingWebhookConfiguration": 0, "Secret": 0, "Service": 0, "Role": 1},
	},
	{
		name: "certManager",
		args: []string{"--set", "webhook.enabled=true", "--set", "certManager.enabled=true"},
		kinds: map[string]int{"MutatingWebhookConfiguration": 1, "Secret": 0, "Service": 2, "Certificate": 2,
			"Issuer": 2},
	},
	{
		name: "certManager with an existing issuer",
		args: []string{"--set", "webhook.enabled=true", "--set", "certManager.enabled=true",
			"--set", "certManager.issuerRef.name=corp-ca", "--set", "certManager.issuerRef.kind=ClusterIssuer"},
		kinds: map[string]int{"MutatingWebhookConfiguration": 1, "Secret": 0, "Certificate": 1, "Issuer": 0},
	},
	{
		name:  "drainHost",
		args:  []string{"--set", "controller.drainHost=10.0.0.7"},
		kinds: map[string]int{"Service": 1},
	},
	{
		name:  "serviceMonitor",
		args:  []string{"--set", "serviceMonitor.enabled=true", "--set", "serviceMonitor.labels.release=prom"},
		kinds: map[string]int{"ServiceMonitor": 2, "Service": 4},
	},
	{
		name: "kubeProxyReplacement=false",
		args: []string{"--set", "kubeProxyReplacement=false"},
		kinds: map[string]int{"Deployment": 1, "DaemonSet": 0, "ServiceAccount": 1, "ClusterRole": 1,
			"ClusterRoleBinding": 1},
	},
	{
		name:  "test bed",
		args:  []string{"-f", "ci/testbed-values.yaml"},
		kinds: map[string]int{"Deployment": 1, "DaemonSet": 1, "MutatingWebhookConfiguration": 1, "Secret": 1},
	},
	{
		name:  "cni",
		args:  []string{"--set", "cni.enabled=true", "--set", "nodeAgent.eniRouting=true"},
		kinds: map[string]int{"DaemonSet": 1, "ClusterRole": 2},
	},
	{
		name: "cni with every flag set",
		args: []string{"--set", "cni.enabled=true", "--set-string", "cni.instanceID=$(NODE_NAME)", "--set", "cni.warmIPTarget=0",
			"--set", "cni.firstENI=1", "--set", "cni.binDir=/host/opt/cni/bin", "--set", "cni.confName=05-directlb.conflist", "--set", "cni.chainPortmap=true",
			"--set-string", "cni.confDir=/var/lib/testbed/nodes/$(NODE_NAME)/cni/net.d", "--set-string", "cni.dataDir=/var/lib/testbed/nodes/$(NODE_NAME)/cni",
			"--set", "cni.logLevel=debug", "--set", "cloud.endpoint=http://10.100.0.3:4566", "--set", "cloud.credentials.existingSecret=creds"},
		kinds: map[string]int{"DaemonSet": 1},
	},
	{
		name:  "cni on the test bed",
		args:  []string{"-f", "ci/testbed-values.yaml", "-f", "testdata/cni-values.yaml"},
		kinds: map[string]int{"DaemonSet": 1},
	},
	{
		name: "every controller flag set",
		args: []string{"--set", "cloud.vpcID=vpc-123", "--set", "cloud.subnets={subnet-a,subnet-b}",
			"--set", "cloud.rateLimits=RegisterTargets=10:20\\,DescribeTargetHealth=5:10",
			"--set", "controller.loadBalancerClasses={directlb.io/nlb,example.com/lb}",
			"--set", "controller.manageDefaultClass=false", "--set", "controller.leaderElectionNamespace=kube-system",
			"--set-string", "controller.metricsBindAddress=0", "--set", "controller.extraArgs={--zap-devel}",
			"--set", "controller.podAntiAffinity=hard", "--set", "nodeAgent.metricsBindAddress=",
			"--set", "nodeAgent.extraArgs={--hostname-override=node-x}", "--set", "nodeAgent.logLevel=debug",
			"--set", "k8sServiceHost=10.0.0.1", "--set", "webhook.enabled=true"},
		kinds: map[string]int{"Role": 2, "RoleBinding": 2},
	},
	{
		// Large values come to the template as float64; they must render
		// as integers for the flags to parse (checkFlags).
		name: "every node-agent map size set",
		args: []string{"--set", "nodeAgent.mapSizes.services=16777216", "--set", "nodeAgent.mapSizes.backends=1048576",
			"--set", "nodeAgent.mapSizes.revNAT=4194304", "--set", "nodeAgent.mapSizes.sticky=1024"},
		kinds: map[string]int{"DaemonSet": 1},
	},
}

func TestLint(t *testing.T) {
	helm := helmBinary(t)
	for _, vs := range valueSets {
		t.Run(vs.name, func(t *testing.T) {
			args := append([]string{"lint", "--strict", "."}, vs.args...)
			out, err := runHelm(t, helm, args...)
			if err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
		})
	}
}

// object is one rendered manifest.
type object struct {
	Kind     string
	Name     string
	Raw      []byte
	Decoded  any // the typed object for kinds client-go knows
	Template string
}

// render runs helm template and decodes every object strictly: a field the
// Kubernetes type does not have fails the test.
func render(t *testing.T, helm string, args ...string) []object {
	t.Helper()
	out, err := runHelm(t, helm, append([]string{"template", release, ".", "-n", namespace}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	var objs []object
	for _, doc := range strings.Split(out, "\n---") {
		src := ""
		if i := strings.Index(doc, "# Source: "); i >= 0 {
			src, _, _ = strings.Cut(doc[i+len("# Source: "):], "\n")
		}
		var meta struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
			Metadata   struct {
				Name string `json:"name"`
			} `json:"metadata"`
		}
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			t.Fatalf("%s: %v", src, err)
		}
		if meta.Kind == "" {
			continue
		}
		o := object{Kind: meta.Kind, Name: meta.Metadata.Name, Raw: []byte(doc), Template: src}
		if meta.Metadata.Name == "" {
			t.Errorf("%s: %s without a name", src, meta.Kind)
		}
		gv, err := schema.ParseGroupVersion(meta.APIVersion)
		if err != nil {
			t.Fatalf("%s: %v", src, err)
		}
		if typed, err := scheme.Scheme.New(gv.WithKind(meta.Kind)); err == nil {
			if err := yaml.UnmarshalStrict([]byte(doc), typed); err != nil {
				t.Errorf("%s: %s %s does not decode strictly: %v", src, meta.Kind, o.Name, err)
			}
			o.Decoded = typed
		} else if !slices.Contains([]string{"cert-manager.io/v1", "monitoring.coreos.com/v1"}, meta.APIVersion) {
			t.Errorf("%s: unknown kind %s %s", src, meta.APIVersion, meta.Kind)
		}
		objs = append(objs, o)
	}
	return objs
}

func TestTemplate(t *testing.T) {
	helm := helmBinary(t)
	for _, vs := range valueSets {
		t.Run(vs.name, func(t *testing.T) {
			objs := render(t, helm, vs.args...)
			count := map[string]int{}
			for _, o := range objs {
				count[o.Kind]++
			}
			for kind, want := range vs.kinds {
				if count[kind] != want {
					t.Errorf("%d %s objects, want %d (rendered: %v)", count[kind], kind, want, count)
				}
			}
			checkRBAC(t, objs)
			checkFlags(t, objs)
			checkWebhook(t, objs)
			checkWorkloads(t, objs)
		})
	}
}

// checkRBAC fails on a "*" anywhere in a rule.
func checkRBAC(t *testing.T, objs []object) {
	t.Helper()
	for _, o := range objs {
		var rules []rbacv1.PolicyRule
		switch r := o.Decoded.(type) {
		case *rbacv1.ClusterRole:
			rules = r.Rules
			if r.AggregationRule != nil {
				t.Errorf("ClusterRole %s aggregates other roles", r.Name)
			}
		case *rbacv1.Role:
			rules = r.Rules
		default:
			continue
		}
		if len(rules) == 0 {
			t.Errorf("%s %s has no rules", o.Kind, o.Name)
		}
		for _, rule := range rules {
			for _, field := range [][]string{rule.APIGroups, rule.Resources, rule.Verbs, rule.ResourceNames, rule.NonResourceURLs} {
				for _, v := range field {
					if strings.Contains(v, "*") {
						t.Errorf("%s %s: wildcard %q in rule %+v", o.Kind, o.Name, v, rule)
					}
				}
			}
			if slices.Contains(rule.Resources, "secrets") && len(rule.ResourceNames) == 0 {
				t.Errorf("%s %s: secrets without resourceNames: %+v", o.Kind, o.Name, rule)
			}
		}
	}
}

// nodeName stands in for $(NODE_NAME), which the kubelet expands in args.
const nodeName = "node-1"

// controllerFlags is lb-controller's flag set, as its main builds it.
func controllerFlags() (*pflag.FlagSet, *controller.Config) {
	cfg := controller.DefaultConfig()
	fs := pflag.NewFlagSet("lb-controller", pflag.ContinueOnError)
	fs.SetOutput(&bytes.Buffer{})
	cfg.BindFlags(fs)
	return fs, &cfg
}

// controllerConfigOf parses the rendered lb-controller arguments.
func controllerConfigOf(t *testing.T, objs []object) *controller.Config {
	t.Helper()
	for _, c := range containers(objs) {
		if strings.HasPrefix(c.Image, "ghcr.io/directlb/lb-controller:") {
			fs, cfg := controllerFlags()
			if err := fs.Parse(c.Args); err != nil {
				t.Fatal(err)
			}
			return cfg
		}
	}
	t.Fatal("no lb-controller container")
	return nil
}

// agentFlags is node-agent's flag set, as its main builds it.
func agentFlags() (*pflag.FlagSet, *agent.Config) {
	cfg := agent.DefaultConfig()
	fs := pflag.NewFlagSet("node-agent", pflag.ContinueOnError)
	fs.SetOutput(&bytes.Buffer{})
	cfg.BindFlags(fs)
	return fs, &cfg
}

// installCNIFlags is directlb-cni install's flag set, as its main builds it.
func installCNIFlags() (*pflag.FlagSet, *install.Config) {
	cfg := install.DefaultConfig()
	fs := pflag.NewFlagSet("directlb-cni install", pflag.ContinueOnError)
	fs.SetOutput(&bytes.Buffer{})
	cfg.BindFlags(fs)
	return fs, &cfg
}

// installCNICommand is the install-cni init container's command: the
// binary the node-agent image carries, and its subcommand.
var installCNICommand = []string{"/usr/local/bin/directlb-cni", "install"}

// checkFlags parses each container's rendered args with the binary's own
// flag set (an unknown flag or a bad value fails) and validates the result.
func checkFlags(t *testing.T, objs []object) {
	t.Helper()
	for _, c := range append(containers(objs), initContainers(objs)...) {
		args := make([]string, len(c.Args))
		for i, a := range c.Args {
			args[i] = strings.ReplaceAll(a, "$(NODE_NAME)", nodeName)
			if !strings.HasPrefix(a, "--") {
				t.Errorf("container %s: argument %q is not a --flag", c.Name, a)
			}
		}
		var fs *pflag.FlagSet
		var cfg interface{ Validate() error }
		switch {
		case strings.HasPrefix(c.Image, "ghcr.io/directlb/node-agent:") && slices.Equal(c.Command, installCNICommand):
			fs, cfg = installCNIFlags()
		case len(c.Command) > 0:
			t.Errorf("container %s: unexpected command %q", c.Name, c.Command)
			continue
		case strings.HasPrefix(c.Image, "ghcr.io/directlb/lb-controller:"):
			fs, cfg = controllerFlags()
		case strings.HasPrefix(c.Image, "ghcr.io/directlb/node-agent:"):
			fs, cfg = agentFlags()
		default:
			t.Errorf("container %s: unexpected image %s", c.Name, c.Image)
			continue
		}
		err := fs.Parse(args)
		if err == nil {
			err = cfg.Validate()
		}
		if err != nil {
			t.Errorf("container %s (%s): rendered args %q: %v", c.Name, c.Image, c.Args, err)
		}
		fs.Visit(func(f *pflag.Flag) {
			if f.Deprecated != "" {
				t.Errorf("container %s: rendered flag --%s is deprecated: %s", c.Name, f.Name, f.Deprecated)
			}
		})
	}
}

func initContainers(objs []object) []corev1.Container {
	var out []corev1.Container
	for _, o := range objs {
		if w, ok := o.Decoded.(*appsv1.DaemonSet); ok {
			out = append(out, w.Spec.Template.Spec.InitContainers...)
		}
	}
	return out
}

func containers(objs []object) []corev1.Container {
	var out []corev1.Container
	for _, o := range objs {
		switch w := o.Decoded.(type) {
		case *appsv1.Deployment:
			out = append(out, w.Spec.Template.Spec.Containers...)
		case *appsv1.DaemonSet:
			out = append(out, w.Spec.Template.Spec.Containers...)
		}
	}
	return out
}

// checkWebhook checks that the webhook's Service exists, that the CA it
// trusts is the one in the Secret, and that the serving certificate is
// signed by it for the Service's DNS name.
func checkWebhook(t *testing.T, objs []object) {
	t.Helper()
	var hook *admissionv1.MutatingWebhookConfiguration
	var secret *corev1.Secret
	services := map[string]bool{}
	for _, o := range objs {
		switch v := o.Decoded.(type) {
		case *admissionv1.MutatingWebhookConfiguration:
			hook = v
		case *corev1.Secret:
			secret = v
		case *corev1.Service:
			services[v.Name] = true
		}
	}
	if hook == nil {
		return
	}
	if len(hook.Webhooks) != 1 {
		t.Fatalf("%d webhooks, want 1", len(hook.Webhooks))
	}
	wh := hook.Webhooks[0]
	svc := wh.ClientConfig.Service
	if svc == nil || !services[svc.Name] || svc.Namespace != namespace {
		t.Fatalf("webhook points at %+v; services rendered: %v", svc, services)
	}
	// The chart renders the configuration lb-controller keeps up to date
	// (--manage-webhook-configuration), so neither undoes the other.
	cfg := controllerConfigOf(t, objs)
	if !cfg.Gates.ManageWebhookConfiguration || cfg.Gates.WebhookConfigName != hook.Name || !cfg.Gates.WebhookEnabled() {
		t.Errorf("controller flags do not manage webhook %s: %+v", hook.Name, cfg.Gates)
	}
	if !slices.Contains(cfg.Gates.ExcludeNamespaces, namespace) {
		t.Errorf("webhook does not exclude its own namespace: %v", cfg.Gates.ExcludeNamespaces)
	}
	want, err := readinessgate.DesiredConfiguration(cfg.Gates, wh.ClientConfig.CABundle)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want.Webhooks, hook.Webhooks); diff != "" {
		t.Errorf("rendered webhook differs from lb-controller's (-controller +chart):\n%s", diff)
	}
	if secret == nil {
		if _, ok := hook.Annotations["cert-manager.io/inject-ca-from"]; !ok || len(wh.ClientConfig.CABundle) != 0 {
			t.Errorf("no chart certificate, and no cert-manager CA injection: %+v", hook.Annotations)
		}
		return
	}
	if !bytes.Equal(wh.ClientConfig.CABundle, secret.Data[certs.KeyCABundle]) {
		t.Errorf("caBundle is not the Secret's %s", certs.KeyCABundle)
	}
	// The controller keeps the chart's certificates: nothing is due.
	if cfg.Certs.Secret != namespace+"/"+secret.Name {
		t.Errorf("--webhook-cert-secret %q, want %s/%s", cfg.Certs.Secret, namespace, secret.Name)
	}
	if _, changed, err := certs.Renew(secret.Data, cfg.Gates.Hosts(), cfg.Certs.Validity, time.Now()); err != nil || changed {
		t.Errorf("lb-controller would renew the chart's certificates at once (changed %v, %v)", changed, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(secret.Data["ca.crt"]) {
		t.Fatalf("ca.crt holds no certificate")
	}
	block, _ := pem.Decode(secret.Data["tls.crt"])
	if block == nil {
		t.Fatalf("tls.crt holds no PEM block")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	dns := fmt.Sprintf("%s.%s.svc", svc.Name, namespace)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, DNSName: dns, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		t.Errorf("serving certificate does not verify for %s: %v", dns, err)
	}
	if k, _ := pem.Decode(secret.Data["tls.key"]); k == nil {
		t.Errorf("tls.key holds no PEM block")
	}
}

// checkWorkloads checks what the issue asks of the pods.
func checkWorkloads(t *testing.T, objs []object) {
	t.Helper()
	for _, o := range objs {
		switch w := o.Decoded.(type) {
		case *appsv1.Deployment:
			spec := w.Spec.Template.Spec
			if spec.Affinity == nil || spec.Affinity.PodAntiAffinity == nil {
				t.Errorf("Deployment %s: no pod anti-affinity", w.Name)
			}
			c := spec.Containers[0]
			if c.ReadinessProbe == nil || c.LivenessProbe == nil {
				t.Errorf("Deployment %s: probes missing", w.Name)
			}
			sc := c.SecurityContext
			if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
				sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
				sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) != 0 {
				t.Errorf("Deployment %s: container security context %+v", w.Name, sc)
			}
			if p := spec.SecurityContext; p == nil || p.RunAsNonRoot == nil || !*p.RunAsNonRoot {
				t.Errorf("Deployment %s: not run as non-root", w.Name)
			}
			if spec.ServiceAccountName == "" || spec.ServiceAccountName == "default" {
				t.Errorf("Deployment %s: service account %q", w.Name, spec.ServiceAccountName)
			}
		case *appsv1.DaemonSet:
			spec := w.Spec.Template.Spec
			if !spec.HostNetwork {
				t.Errorf("DaemonSet %s: not host network", w.Name)
			}
			if spec.PriorityClassName != "system-node-critical" {
				t.Errorf("DaemonSet %s: priority class %q", w.Name, spec.PriorityClassName)
			}
			if !slices.ContainsFunc(spec.Tolerations, func(t corev1.Toleration) bool {
				return t.Operator == corev1.TolerationOpExists && t.Key == "" && t.Effect == ""
			}) {
				t.Errorf("DaemonSet %s: does not tolerate every taint: %+v", w.Name, spec.Tolerations)
			}
			sc := spec.Containers[0].SecurityContext
			if sc == nil || sc.Privileged == nil || *sc.Privileged || sc.Capabilities == nil {
				t.Fatalf("DaemonSet %s: security context %+v", w.Name, sc)
			}
			if diff := cmp.Diff([]corev1.Capability{"BPF", "NET_ADMIN", "PERFMON", "SYS_ADMIN", "SYS_PTRACE"}, sc.Capabilities.Add); diff != "" {
				t.Errorf("DaemonSet %s: added capabilities (-want +got):\n%s", w.Name, diff)
			}
			var paths []string
			for _, v := range spec.Volumes {
				if v.HostPath != nil {
					paths = append(paths, v.HostPath.Path)
				}
			}
			if !slices.Contains(paths, "/sys/fs/bpf") || !slices.ContainsFunc(paths, func(p string) bool { return strings.HasPrefix(p, "/sys/fs/cgroup") }) {
				t.Errorf("DaemonSet %s: host paths %v, want the bpffs and the cgroup mount", w.Name, paths)
			}
			checkInstallCNI(t, w)
		}
	}
}

// TestControllerCredentials checks the two ways the controller gets cloud
// credentials: env from an existing Secret, or nothing (the pod's identity).
func TestControllerCredentials(t *testing.T) {
	helm := helmBinary(t)
	for _, tc := range []struct {
		name string
		args []string
		want []corev1.EnvVar
	}{
		{name: "pod identity"},
		{
			name: "existing secret",
			args: []string{"--set", "cloud.credentials.existingSecret=creds", "--set", "cloud.credentials.accessKeyIDKey=id"},
			want: []corev1.EnvVar{
				{Name: "AWS_ACCESS_KEY_ID", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
					LocalObjectReference: corev1.LocalObjectReference{Name: "creds"}, Key: "id"}}},
				{Name: "AWS_SECRET_ACCESS_KEY", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
					LocalObjectReference: corev1.LocalObjectReference{Name: "creds"}, Key: "AWS_SECRET_ACCESS_KEY"}}},
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []corev1.EnvVar
			for _, c := range containers(render(t, helm, tc.args...)) {
				if strings.Contains(c.Image, "lb-controller") {
					for _, e := range c.Env {
						if strings.HasPrefix(e.Name, "AWS_") {
							got = append(got, e)
						}
					}
				}
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("AWS env (-want +got):\n%s", diff)
			}
		})
	}
}

// TestSchemaRejects checks that values.schema.json refuses bad values
// before anything renders.
func TestSchemaRejects(t *testing.T) {
	helm := helmBinary(t)
	for _, tc := range []struct {
		name string
		args []string
		want string // in helm's error
	}{
		{"wrong type", []string{"--set", "controller.replicas=two"}, "/controller/replicas"},
		{"boolean as string", []string{"--set-string", "kubeProxyReplacement=yes"}, "/kubeProxyReplacement"},
		{"unknown value", []string{"--set", "controller.resyncPeriodd=1m"}, "resyncPeriodd"},
		{"unknown top-level value", []string{"--set", "kubeProxyReplacment=true"}, "kubeProxyReplacment"},
		{"bad duration", []string{"--set", "controller.resyncPeriod=ten minutes"}, "/controller/resyncPeriod"},
		{"bad cluster name", []string{"--set", "clusterName=Prod_1"}, "/clusterName"},
		{"concurrency out of range", []string{"--set", "controller.concurrency=0"}, "/controller/concurrency"},
		{"no apiserver budget", []string{"--set", "controller.kubeAPIQPS=0"}, "/controller/kubeAPIQPS"},
		{"fractional burst", []string{"--set", "controller.kubeAPIBurst=1.5"}, "/controller/kubeAPIBurst"},
		{"bad failure policy", []string{"--set", "webhook.failurePolicy=Sometimes"}, "/webhook/failurePolicy"},
		{"bad log level", []string{"--set", "nodeAgent.logLevel=verbose"}, "/nodeAgent/logLevel"},
		{"relative cgroup root", []string{"--set", "nodeAgent.cgroupRoot=sys/fs/cgroup"}, "/nodeAgent/cgroupRoot"},
		{"endpoint without scheme", []string{"--set", "cloud.endpoint=10.100.0.3:4566"}, "/cloud/endpoint"},
		{"extra arg not a flag", []string{"--set", "controller.extraArgs={verbose}"}, "/controller/extraArgs"},
		{"relative CNI bin dir", []string{"--set", "cni.binDir=opt/cni/bin"}, "/cni/binDir"},
		{"CNI conf name not a conflist", []string{"--set", "cni.confName=10-directlb.conf"}, "/cni/confName"},
		{"negative warm IP target", []string{"--set", "cni.warmIPTarget=-1"}, "/cni/warmIPTarget"},
		{"map size below the minimum", []string{"--set", "nodeAgent.mapSizes.services=8"}, "/nodeAgent/mapSizes/services"},
		{"LRU map size above the maximum", []string{"--set", "nodeAgent.mapSizes.revNAT=16777216"}, "/nodeAgent/mapSizes/revNAT"},
		{"unknown map", []string{"--set", "nodeAgent.mapSizes.nat=1024"}, "nat"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := runHelm(t, helm, append([]string{"template", release, ".", "-n", namespace}, tc.args...)...)
			if err == nil {
				t.Fatalf("rendered; want a schema error naming %q\n%.400s", tc.want, out)
			}
			if !strings.Contains(err.Error(), "schema") || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v; want a schema error naming %q", err, tc.want)
			}
		})
	}
}

// clusterName has no default: without it the chart refuses to render, with
// a message that says what to set and why.
func TestClusterNameRequired(t *testing.T) {
	helm := helmBinary(t)
	out, err := runHelmRaw(t, helm, "template", release, ".", "-n", namespace)
	if err == nil {
		t.Fatalf("rendered without clusterName:\n%.400s", out)
	}
	for _, want := range []string{"clusterName is required", "--set clusterName="} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %v; want it to say %q", err, want)
		}
	}
}

// TestControllerGracePeriod: the controller's grace period must cover its
// shutdown (drainShutdownDelay + 10s, 30s at the least); the chart refuses
// one that does not, naming both values, and takes one that does.
func TestControllerGracePeriod(t *testing.T) {
	helm := helmBinary(t)
	cases := []struct {
		delay string
		grace int
		want  string // the error, "" to render
	}{
		{delay: "25s", grace: 40},
		{delay: "25s", grace: 35},
		{delay: "25s", grace: 34, want: "want at least 35"},
		{delay: "1m30s", grace: 100},
		{delay: "1m30s", grace: 99, want: "want at least 100"},
		{delay: "30500ms", grace: 41},
		{delay: "30500ms", grace: 40, want: "want at least 41"},
		{delay: "3s", grace: 29, want: "want at least 30"},
	}
	for _, c := range cases {
		_, err := runHelm(t, helm, "template", release, ".", "-n", namespace,
			"--set", "controller.drainShutdownDelay="+c.delay, "--set", fmt.Sprintf("controller.terminationGracePeriodSeconds=%d", c.grace))
		switch {
		case c.want == "" && err != nil:
			t.Errorf("drainShutdownDelay %s, grace %ds: %v; want it rendered", c.delay, c.grace, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "controller.drainShutdownDelay "+c.delay)):
			t.Errorf("drainShutdownDelay %s, grace %ds: %v; want the chart to refuse, saying %q and naming the delay", c.delay, c.grace, err, c.want)
		}
	}
}

// TestBinariesAcceptFlags builds lb-controller and node-agent and runs them
// with the rendered args and --help at the end: an unknown flag or a bad
// value makes them fail before they reach --help. It complements
// checkFlags, which binds the same Configs in-process, by catching a main
// that wires its flags differently.
func TestBinariesAcceptFlags(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: skips building the binaries")
	}
	helm := helmBinary(t)
	bin := t.TempDir()
	build := exec.Command("go", "build", "-o", bin+string(filepath.Separator), "../../cmd/lb-controller", "../../cmd/node-agent")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	for _, c := range containers(render(t, helm, "-f", "ci/testbed-values.yaml", "--set", "webhook.enabled=true")) {
		name := strings.TrimPrefix(strings.Split(c.Image, ":")[0], "ghcr.io/directlb/")
		t.Run(name, func(t *testing.T) {
			args := make([]string, 0, len(c.Args)+1)
			for _, a := range c.Args {
				args = append(args, strings.ReplaceAll(a, "$(NODE_NAME)", nodeName))
			}
			out, err := exec.Command(filepath.Join(bin, name), append(args, "--help")...).CombinedOutput()
			if err != nil {
				t.Errorf("%s %q --help: %v\n%s", name, args, err, out)
			}
		})
	}
}

// TestNotes checks that the install notes show how to annotate a Service,
// warn about a missing k8sServiceHost, and give the uninstall order. helm
// template does not print NOTES.txt, so a copy of the chart renders it into
// a ConfigMap (every template is also a named template).
func TestNotes(t *testing.T) {
	helm := helmBinary(t)
	dir := filepath.Join(t.TempDir(), "directlb")
	if err := os.CopyFS(dir, os.DirFS(".")); err != nil {
		t.Fatal(err)
	}
	show := "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n  notes: {{ include \"directlb/templates/NOTES.txt\" . | quote }}\n"
	if err := os.WriteFile(filepath.Join(dir, "templates", "zz-notes.yaml"), []byte(show), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		args    []string
		want    []string
		notWant []string
	}{
		{
			name: "defaults",
			want: []string{`service.directlb.io/direct-access="true"`, "type: LoadBalancer", "WITHOUT kube-proxy",
				"WARNING: kubeProxyReplacement is on but k8sServiceHost is empty", "helm uninstall " + release},
		},
		{
			name:    "test bed",
			args:    []string{"-f", "ci/testbed-values.yaml"},
			want:    []string{"cluster name \"testbed\"", "credentials from Secret localcloud-credentials"},
			notWant: []string{"WARNING"},
		},
		{
			name:    "cni",
			args:    []string{"--set", "cni.enabled=true", "--set", "k8sServiceHost=10.0.0.1"},
			want:    []string{"directlb-cni:  installed on every node as its CNI (/etc/cni/net.d/10-directlb.conflist)", "WARNING: cni.enabled without nodeAgent.eniRouting"},
			notWant: []string{"WARNING: kubeProxyReplacement"},
		},
		{
			name:    "kube-proxy stays",
			args:    []string{"--set", "kubeProxyReplacement=false"},
			want:    []string{"kube-proxy keeps serving ClusterIPs"},
			notWant: []string{"WARNING"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := runHelm(t, helm, append([]string{"template", release, dir, "-n", namespace, "--show-only", "templates/zz-notes.yaml"}, tc.args...)...)
			if err != nil {
				t.Fatal(err)
			}
			var cm corev1.ConfigMap
			if err := yaml.Unmarshal([]byte(out), &cm); err != nil {
				t.Fatal(err)
			}
			notes := cm.Data["notes"]
			for _, w := range tc.want {
				if !strings.Contains(notes, w) {
					t.Errorf("NOTES lack %q:\n%s", w, notes)
				}
			}
			for _, w := range tc.notWant {
				if strings.Contains(notes, w) {
					t.Errorf("NOTES contain %q:\n%s", w, notes)
				}
			}
		})
	}
}

// TestENIRouting: nodeAgent.eniRouting passes --eni-routing and grants the
// agent list/watch of pods; off, neither.
func TestENIRouting(t *testing.T) {
	helm := helmBinary(t)
	for _, on := range []bool{false, true} {
		t.Run(fmt.Sprint(on), func(t *testing.T) {
			objs := render(t, helm, "--set", fmt.Sprintf("nodeAgent.eniRouting=%v", on))
			flag := false
			for _, c := range containers(objs) {
				if strings.HasPrefix(c.Image, "ghcr.io/directlb/node-agent") {
					flag = slices.Contains(c.Args, "--eni-routing")
				}
			}
			pods := false
			for _, o := range objs {
				r, ok := o.Decoded.(*rbacv1.ClusterRole)
				if !ok || !strings.Contains(r.Name, "node-agent") {
					continue
				}
				for _, rule := range r.Rules {
					if slices.Contains(rule.Resources, "pods") && slices.Contains(rule.Verbs, "watch") && slices.Contains(rule.Verbs, "list") {
						pods = true
					}
				}
			}
			if flag != on || pods != on {
				t.Errorf("eniRouting=%v: --eni-routing %v, pods list/watch %v; want both %v", on, flag, pods, on)
			}
		})
	}
}

// TestDrainService: by default the injected hook calls the chart's drain
// Service, which selects the controller pods on their drain port; a
// drainHost replaces it.
func TestDrainService(t *testing.T) {
	helm := helmBinary(t)
	objs := render(t, helm)
	var drainSvc *corev1.Service
	for _, o := range objs {
		if s, ok := o.Decoded.(*corev1.Service); ok && strings.HasSuffix(s.Name, "-drain") {
			drainSvc = s
		}
	}
	if drainSvc == nil {
		t.Fatal("no drain Service rendered")
	}
	var ctrlArgs []string
	var drainPort int32
	for _, o := range objs {
		d, ok := o.Decoded.(*appsv1.Deployment)
		if !ok {
			continue
		}
		c := d.Spec.Template.Spec.Containers[0]
		ctrlArgs = c.Args
		for _, p := range c.Ports {
			if p.Name == "drain" {
				drainPort = p.ContainerPort
			}
		}
		for k, v := range drainSvc.Spec.Selector {
			if d.Spec.Template.Labels[k] != v {
				t.Errorf("drain Service selector %v does not select the controller pods %v", drainSvc.Spec.Selector, d.Spec.Template.Labels)
			}
		}
	}
	if want := "--drain-service=" + namespace + "/" + drainSvc.Name; !slices.Contains(ctrlArgs, want) {
		t.Errorf("controller args %v lack %s", ctrlArgs, want)
	}
	if p := drainSvc.Spec.Ports; len(p) != 1 || p[0].TargetPort.StrVal != "drain" || drainPort == 0 || !slices.Contains(ctrlArgs, fmt.Sprintf("--drain-port=%d", p[0].Port)) {
		t.Errorf("drain Service ports %+v, container drain port %d, args %v", p, drainPort, ctrlArgs)
	}
	for _, c := range containers(render(t, helm, "--set", "controller.drainHost=10.0.0.7")) {
		if slices.ContainsFunc(c.Args, func(a string) bool { return strings.HasPrefix(a, "--drain-service") }) {
			t.Errorf("with drainHost, %s args %v still name a drain Service", c.Name, c.Args)
		}
	}
}

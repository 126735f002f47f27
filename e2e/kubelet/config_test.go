package kubelet

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestImageMap(t *testing.T) {
	m, err := ParseImageMap(append(DefaultImages, "registry.local/tools/*=tool", "exact:1.0=/opt/exact"))
	if err != nil {
		t.Fatal(err)
	}
	cases := map[string]string{
		"ghcr.io/directlb/lb-controller:v0.1.0":       "lb-controller",
		"ghcr.io/directlb/node-agent:latest":          "node-agent",
		"ghcr.io/directlb/localcloud@sha256:abcdef":   "localcloud",
		"ghcr.io/directlb/localcloud":                 "localcloud",
		"registry.local/tools/x:3":                    "tool",
		"exact:1.0":                                   "/opt/exact",
		"exact:2.0":                                   "",
		"nginx:1.27":                                  "",
		"ghcr.io/directlb/lb-controller-extra:v1":     "",
		"registry.k8s.io/e2e-test-images/agnhost:2.5": "",
	}
	got := map[string]string{}
	for img := range cases {
		got[img] = m.Lookup(img)
	}
	if diff := cmp.Diff(cases, got); diff != "" {
		t.Errorf("lookup (-want +got):\n%s", diff)
	}
	for _, bad := range [][]string{{"noequals"}, {"=bin"}, {"img="}, {"[=bin"}} {
		if _, err := ParseImageMap(bad); err == nil {
			t.Errorf("ParseImageMap(%q): no error", bad)
		}
	}
}

func TestExpandVars(t *testing.T) {
	vars := map[string]string{"A": "1", "POD_IP": "10.0.0.5"}
	cases := map[string]string{
		"$(A)":                "1",
		"--addr=$(POD_IP):80": "--addr=10.0.0.5:80",
		"$$(A)":               "$(A)",
		"$(MISSING)":          "$(MISSING)",
		"cost $5":             "cost $5",
		"open $(A":            "open $(A",
	}
	for in, want := range cases {
		if got := expandVars(in, vars); got != want {
			t.Errorf("expandVars(%q) = %q, want %q", in, got, want)
		}
	}
}

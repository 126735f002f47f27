package bedimages

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestE2ERefs(t *testing.T) {
	got, err := E2ERefs("testdata/manifest.go")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"Agnhost": "registry.k8s.io/e2e-test-images/agnhost:2.63.0",
		"BusyBox": "registry.k8s.io/e2e-test-images/busybox:1.37.0-1",
		"Pause":   "registry.k8s.io/pause:3.10.2",
		"Nginx":   "registry.k8s.io/e2e-test-images/nginx:1.15-4",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("refs (-want +got):\n%s", diff)
	}
}

func TestE2ERefsUnknownRegistry(t *testing.T) {
	src := "package image\nvar r = RegistryList{GcRegistry: \"registry.k8s.io\"}\n" +
		"func f() { configs[X] = Config{list.Elsewhere, \"x\", \"1\"} }\n"
	name := filepath.Join(t.TempDir(), "manifest.go")
	if err := os.WriteFile(name, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := E2ERefs(name); err == nil || !strings.Contains(err.Error(), "no default for registry Elsewhere") {
		t.Errorf("E2ERefs: %v, want an error naming the registry", err)
	}
}

// The manifest of the pinned k8s.io/kubernetes still has the shape E2ERefs
// reads, and names the images the test bed builds.
func TestPinnedManifest(t *testing.T) {
	manifest, err := LocateManifest(t.Context(), "go", "../../hack/tools")
	if err != nil {
		t.Skipf("pinned k8s.io/kubernetes not available: %v", err)
	}
	refs, err := E2ERefs(manifest)
	if err != nil {
		t.Fatal(err)
	}
	for id, prefix := range map[string]string{
		"Agnhost": "registry.k8s.io/e2e-test-images/agnhost:",
		"BusyBox": "registry.k8s.io/e2e-test-images/busybox:",
		"Pause":   "registry.k8s.io/pause:",
	} {
		if !strings.HasPrefix(refs[id], prefix) || len(refs[id]) == len(prefix) {
			t.Errorf("%s = %q, want %s<tag>", id, refs[id], prefix)
		}
	}
}

func TestAppVersion(t *testing.T) {
	got, err := AppVersion("../../charts/directlb/Chart.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if got == "" {
		t.Error("empty appVersion")
	}
	name := filepath.Join(t.TempDir(), "Chart.yaml")
	if err := os.WriteFile(name, []byte("name: x\nversion: 0.1.0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := AppVersion(name); err == nil || !strings.Contains(err.Error(), "no appVersion") {
		t.Errorf("chart without appVersion: %v", err)
	}
}

// TestCoreDNSRefPinned: the cluster DNS image's tag is the CoreDNS version
// that hack/coredns builds.
func TestCoreDNSRefPinned(t *testing.T) {
	data, err := os.ReadFile("../../hack/coredns/go.mod")
	if err != nil {
		t.Fatal(err)
	}
	_, tag, _ := strings.Cut(CoreDNSRef, ":")
	if !strings.Contains(string(data), "github.com/coredns/coredns "+tag+"\n") {
		t.Errorf("hack/coredns/go.mod does not require github.com/coredns/coredns %s (CoreDNSRef %s)", tag, CoreDNSRef)
	}
}
